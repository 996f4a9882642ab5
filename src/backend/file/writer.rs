//! The log being written: the newest segment, mapped into memory. An event is encoded and
//! copied into the mapping under a short lock, so it is in the kernel's page cache the moment
//! it is recorded — a crash of the process loses nothing — and reaches the disk when the
//! policy syncs: before a push returns (`always`, one sync shared by every push waiting then:
//! group commit), once a second (`everysec`), or when the kernel writes back (`never`).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memmap2::MmapRaw;

use super::codec;
use super::segment::{self, Kind, END_FRAME_LEN, END_PAYLOAD, FRAME_OVERHEAD, HEADER_LEN};
use super::Fsync;
use crate::backend::memory::{Event, Journal, Lsn};
use crate::error::{QueueError, Result};
use crate::sync::{Condvar, Mutex};

/// The first segment a process writes; each next one is twice as large, up to `MAX_SEGMENT`.
const FIRST_SEGMENT: usize = 4 << 20;
const MAX_SEGMENT: usize = 64 << 20;

/// A segment file and its mapping.
struct Segment {
    number: u64,
    map: MmapRaw,
}

impl Segment {
    /// A new segment file of `capacity` bytes, its blocks reserved (a full disk is an error
    /// here, not a crash later) and its header written, made durable with its directory entry.
    fn create(dir: &Path, number: u64, capacity: usize) -> std::io::Result<Segment> {
        let path = dir.join(segment::file_name(Kind::Log, number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let made = (|| {
            reserve(&file, capacity)?;
            let map = MmapRaw::map_raw(&file)?;
            let header = segment::header(Kind::Log, number);
            // SAFETY: the mapping is `capacity` bytes long, and nothing else writes this file.
            unsafe { std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_mut_ptr(), HEADER_LEN) };
            map.flush_range(0, HEADER_LEN)?;
            file.sync_all()?;
            segment::sync_dir(dir)?;
            Ok(Segment { number, map })
        })();
        if made.is_err() {
            // A full disk, say: the next try (once there is room) makes the file again.
            let _ = std::fs::remove_file(&path);
        }
        made
    }

    /// Writes a frame of `payload` at `at`.
    fn put_frame(&self, at: usize, payload: &[u8]) {
        let len = FRAME_OVERHEAD + payload.len();
        assert!(at + len <= self.map.len(), "a frame past the segment");
        // SAFETY: in bounds (checked above), and the tail lock gives each writer its own
        // range; a sync only reads ranges already written.
        let out = unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(at), len) };
        segment::put_frame(out, payload);
    }
}

/// Reserves the file's blocks (zeros), so that writes through the mapping never meet a full
/// disk (which would kill the process with SIGBUS).
fn reserve(file: &File, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    let code = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match code {
        0 => Ok(()),
        // Filesystems without fallocate: extend the file (blocks are then taken on write).
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

/// Written but not yet synced: a range of a segment.
struct Dirty {
    segment: Arc<Segment>,
    from: usize,
    to: usize,
}

struct Tail {
    segment: Arc<Segment>,
    /// Where the next frame goes.
    offset: usize,
    /// Where the unsynced part of `segment` starts.
    synced_offset: usize,
    /// Bytes recorded since the log was opened (an event's `Lsn` is this after it).
    lsn: Lsn,
    /// Earlier segments' unsynced ranges, oldest first.
    dirty: Vec<Dirty>,
    next_capacity: usize,
    /// Bytes written since the last snapshot (or since the store was opened).
    since_snapshot: u64,
}

struct SyncState {
    synced: Lsn,
    syncing: bool,
}

/// The file backend's journal.
pub struct FileLog {
    dir: PathBuf,
    fsync: Fsync,
    tail: Mutex<Tail>,
    sync: Mutex<SyncState>,
    synced_changed: Condvar,
    closed: AtomicBool,
    /// A sync failed: what it covered may not be on disk, and no later sync can tell, so the
    /// log takes nothing more (the store must be opened again).
    failed: AtomicBool,
    /// Held by a compaction; closing waits for it before letting go of the directory.
    compacting: Mutex<()>,
    /// Tests: the next sync fails, as a disk error would make it.
    #[cfg(test)]
    pub(super) fail_next_sync: AtomicBool,
    /// The directory's lock: held while this log is open (see `lock.rs`).
    lock: Mutex<Option<super::lock::DirLock>>,
}

thread_local! {
    /// Events are encoded here before the tail lock is taken.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl FileLog {
    /// A log that writes to a new segment `number` of `dir`.
    pub(super) fn create(
        dir: &Path,
        number: u64,
        fsync: Fsync,
        lock: super::lock::DirLock,
    ) -> Result<FileLog> {
        let segment = Segment::create(dir, number, FIRST_SEGMENT)
            .map_err(|e| io_error(dir, "could not create a log segment", e))?;
        Ok(FileLog {
            dir: dir.to_path_buf(),
            fsync,
            tail: Mutex::new(Tail {
                segment: Arc::new(segment),
                offset: HEADER_LEN,
                synced_offset: HEADER_LEN,
                lsn: 0,
                dirty: Vec::new(),
                next_capacity: FIRST_SEGMENT * 2,
                since_snapshot: 0,
            }),
            sync: Mutex::new(SyncState {
                synced: 0,
                syncing: false,
            }),
            synced_changed: Condvar::new(),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            compacting: Mutex::new(()),
            #[cfg(test)]
            fail_next_sync: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn append(&self, event: &Event<'_>, may_wait: bool) -> Result<Option<Lsn>> {
        SCRATCH.with(|scratch| {
            let mut payload = scratch.borrow_mut();
            payload.clear();
            codec::encode(event, &mut payload);
            let mut tail = self.tail.lock();
            self.check_writable()?;
            if payload.len() > u32::MAX as usize - FRAME_OVERHEAD {
                return Err(QueueError::Backend(format!(
                    "a change of {} bytes is too large for the log",
                    payload.len()
                )));
            }
            let needed = FRAME_OVERHEAD + payload.len();
            if tail.offset + needed + END_FRAME_LEN > tail.segment.map.len() {
                if !may_wait {
                    return Ok(None);
                }
                self.roll(&mut tail, needed, true)?;
            }
            tail.segment.put_frame(tail.offset, &payload);
            tail.offset += needed;
            tail.lsn += needed as u64;
            tail.since_snapshot += needed as u64;
            Ok(Some(tail.lsn))
        })
    }

    /// Ends the current segment with the end mark and starts the next, large enough for a
    /// frame of `needed` bytes: twice as large as the last when it filled up (a busy log rolls
    /// less often), back to the first size after a compaction's cut. Returns its number.
    fn roll(&self, tail: &mut Tail, needed: usize, filled: bool) -> Result<u64> {
        let number = tail.segment.number + 1;
        if !filled {
            tail.next_capacity = FIRST_SEGMENT;
        }
        let capacity = tail
            .next_capacity
            .max((HEADER_LEN + needed + END_FRAME_LEN).next_power_of_two());
        let next = Segment::create(&self.dir, number, capacity)
            .map_err(|e| io_error(&self.dir, "could not create a log segment", e))?;
        tail.segment.put_frame(tail.offset, &END_PAYLOAD);
        let finished = std::mem::replace(&mut tail.segment, Arc::new(next));
        // With `never`, the kernel writes the finished segment back in its own time.
        if self.fsync != Fsync::Never {
            tail.dirty.push(Dirty {
                segment: finished,
                from: tail.synced_offset,
                to: tail.offset + END_FRAME_LEN,
            });
        }
        tail.offset = HEADER_LEN;
        tail.synced_offset = HEADER_LEN;
        tail.lsn += END_FRAME_LEN as u64;
        if filled {
            tail.next_capacity = (tail.next_capacity * 2).min(MAX_SEGMENT);
        }
        Ok(number)
    }

    fn check_writable(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(QueueError::Backend(format!(
                "the file store {} could not sync its log to disk earlier and takes no more \
                 changes: open it again (its log is replayed)",
                self.dir.display()
            )));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Backend(format!(
                "the file store {} is closed",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Held while a compaction runs (see `compacting`).
    pub(super) fn compaction(&self) -> crate::sync::MutexGuard<'_, ()> {
        self.compacting.lock()
    }

    /// Starts a new segment at once (a compaction's cut): everything recorded so far is in
    /// segments numbered below the one returned.
    pub(super) fn cut(&self) -> Result<u64> {
        let mut tail = self.tail.lock();
        self.check_writable()?;
        let number = self.roll(&mut tail, 0, false)?;
        tail.since_snapshot = 0;
        Ok(number)
    }

    /// Counts bytes of the log replayed at opening as written since the last snapshot.
    pub(super) fn add_since_snapshot(&self, bytes: u64) {
        self.tail.lock().since_snapshot += bytes;
    }

    /// Bytes recorded since the last snapshot.
    pub(super) fn since_snapshot(&self) -> u64 {
        self.tail.lock().since_snapshot
    }

    pub(super) fn recorded(&self) -> Lsn {
        self.tail.lock().lsn
    }

    /// Makes everything recorded up to `lsn` durable. Callers that arrive while a sync runs
    /// wait for it, then one of them syncs for all that came meanwhile (group commit).
    pub(super) fn sync_to(&self, lsn: Lsn) -> Result<()> {
        let mut state = self.sync.lock();
        loop {
            if state.synced >= lsn {
                return Ok(());
            }
            if !state.syncing {
                break;
            }
            state = self.synced_changed.wait(state);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(QueueError::Backend(format!(
                "the file store {} could not sync its log to disk: changes since the last \
                 sync may not be durable",
                self.dir.display()
            )));
        }
        state.syncing = true;
        drop(state);
        let (target, work) = {
            let mut tail = self.tail.lock();
            let mut work = std::mem::take(&mut tail.dirty);
            work.push(Dirty {
                segment: tail.segment.clone(),
                from: tail.synced_offset,
                to: tail.offset,
            });
            tail.synced_offset = tail.offset;
            (tail.lsn, work)
        };
        #[cfg(test)]
        if self.fail_next_sync.swap(false, Ordering::AcqRel) {
            self.failed.store(true, Ordering::Release);
        }
        let result = work
            .iter()
            .filter(|_| !self.failed.load(Ordering::Acquire))
            .filter(|range| range.to > range.from)
            .try_for_each(|range| {
                range
                    .segment
                    .map
                    .flush_range(range.from, range.to - range.from)
            });
        let result = match result {
            Ok(()) if self.failed.load(Ordering::Acquire) => {
                Err(std::io::Error::other("an earlier sync of the log failed"))
            }
            other => other,
        };
        let mut state = self.sync.lock();
        state.syncing = false;
        match result {
            Ok(()) => state.synced = state.synced.max(target),
            Err(_) => self.failed.store(true, Ordering::Release),
        }
        self.synced_changed.notify_all();
        drop(state);
        result.map_err(|e| {
            let error = io_error(&self.dir, "could not sync the log to disk", e);
            log::error!(target: "rnode_queue", "{error}: changes since the last sync may be lost if the machine stops");
            error
        })
    }

    /// Syncs all and lets go of the directory; later records are refused.
    pub(super) fn shut(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // A compaction under way finishes (or fails at its next step) first: it must not touch
        // the directory once another process may hold it.
        let _compaction = self.compacting.lock();
        let lsn = self.recorded();
        if let Err(error) = self.sync_to(lsn) {
            log::error!(target: "rnode_queue", "closing the file store: {error}");
        }
        if let Some(lock) = self.lock.lock().take() {
            lock.release();
        }
    }

    /// Stops as a killed process would: nothing more is synced, the lock is let go.
    #[cfg(test)]
    pub(super) fn abandon(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(lock) = self.lock.lock().take() {
            lock.release();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Journal for FileLog {
    fn record(&self, event: &Event<'_>) -> Result<Lsn> {
        Ok(self
            .append(event, true)?
            .expect("a waiting append always appends"))
    }

    fn try_record(&self, event: &Event<'_>) -> Result<Option<Lsn>> {
        self.append(event, false)
    }

    fn commit(&self, lsn: Lsn) -> Result<()> {
        match self.fsync {
            Fsync::Always => self.sync_to(lsn),
            Fsync::EverySecond | Fsync::Never => Ok(()),
        }
    }

    fn commits_at_once(&self) -> bool {
        self.fsync != Fsync::Always
    }

    fn close(&self) {
        self.shut();
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        // In a forked child the log is the parent's: leave its files and lock alone.
        if self.lock.lock().as_ref().is_some_and(|lock| lock.is_ours()) {
            self.shut();
        }
    }
}

pub(super) fn io_error(dir: &Path, what: &str, error: std::io::Error) -> QueueError {
    QueueError::Backend(format!("{what} in {}: {error}", dir.display()))
}
