//! Descriptors a forked child must not keep: the directory's lock, the store's socket and its
//! connections. Kept by a child that lives on, they would hold the lock (no process could take
//! the store over when the parent dies) or keep a dead client's session open (its runs never
//! handed back). In the child each is pointed at `/dev/null`: the number stays valid (whatever
//! still holds it may close it), the socket or lock is no longer referenced.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

const SLOTS: usize = 1024;
const FREE: i32 = -1;

static TRACKED: [AtomicI32; SLOTS] = [const { AtomicI32::new(FREE) }; SLOTS];

/// Notes a descriptor to let go of in forked children (until `forget` is called for it).
pub fn close_in_child(fd: &impl AsRawFd) {
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only makes async-signal-safe calls.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
    let fd = fd.as_raw_fd();
    for slot in &TRACKED {
        if slot
            .compare_exchange(FREE, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
    log::warn!(
        target: "rnode_queue",
        "file store: more than {SLOTS} open descriptors to hand over at fork; a forked child \
         keeps descriptor {fd}"
    );
}

/// The descriptor is being closed: no longer a concern of forked children.
pub fn forget(fd: RawFd) {
    for slot in &TRACKED {
        if slot
            .compare_exchange(fd, FREE, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

extern "C" fn in_child() {
    // SAFETY: open, dup2 and close are async-signal-safe.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        for slot in &TRACKED {
            let fd = slot.swap(FREE, Ordering::AcqRel);
            if fd != FREE {
                libc::dup2(null, fd);
            }
        }
        libc::close(null);
    }
}
