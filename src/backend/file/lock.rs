//! One process at a time holds a store: it has an advisory lock (`flock`) on the directory's
//! `lock` file, which names its pid for whoever finds the store taken.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::Result;

/// What taking the lock found.
pub enum Acquired {
    Held(DirLock),
    /// Another process holds it: the message names its pid.
    Busy(String),
}

pub struct DirLock {
    file: File,
    /// The process that took the lock; a forked child inherits the descriptor, not the lock's
    /// ownership, and must not release it.
    pid: u32,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<Acquired> {
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| super::writer::io_error(dir, "could not open the lock file", e))?;
        // SAFETY: a plain syscall on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(super::writer::io_error(
                    dir,
                    "could not lock the store",
                    error,
                ));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "?" } else { holder };
            return Ok(Acquired::Busy(format!(
                "the file store {} is held by process {holder} (it holds {})",
                dir.display(),
                path.display()
            )));
        }
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()));
        if let Err(error) = written {
            return Err(super::writer::io_error(
                dir,
                "could not write the lock file",
                error,
            ));
        }
        super::fork::close_in_child(&file);
        Ok(Acquired::Held(DirLock { file, pid }))
    }

    pub fn is_ours(&self) -> bool {
        self.pid == std::process::id()
    }

    /// Lets go at once, also for descriptors a forked child still holds.
    pub fn release(self) {
        if self.is_ours() {
            // SAFETY: a plain syscall on an open descriptor.
            unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        super::fork::forget(self.file.as_raw_fd());
    }
}
