//! The file backend: the memory store, with every change written to an append-only log on
//! local disk and replayed into a fresh store when the directory is opened again. No server:
//! the first process to open a directory holds it (`lock.rs`) and serves the store to the
//! other processes that open it (`server.rs`, `client.rs`, `protocol.rs`); when it goes away,
//! one of them takes over (`shared.rs`).
//!
//! `segment.rs` is the on-disk format (files, headers, checksummed frames), `codec.rs` the
//! events' bytes, `writer.rs` the log being written (the store's journal, with its fsync policy),
//! `open.rs` the replay at start-up (and what it does with damage), `compact.rs` the rewrite of
//! the live state when dead records dominate, `fork.rs` what a forked child lets go of.

mod client;
mod codec;
#[cfg(test)]
mod codec_tests;
mod compact;
mod fork;
mod lock;
mod open;
mod protocol;
#[cfg(test)]
mod review_tests;
mod segment;
mod server;
mod shared;
#[cfg(test)]
mod tests;
mod writer;

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::memory::MemoryBackend;
use crate::error::{QueueError, Result};

pub use shared::FileStore;
pub use writer::FileLog;

/// The memory store, journaled to its log.
pub type FileBackend = MemoryBackend<FileLog>;

/// When the log reaches the disk (`fsync=` of the user's settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Before each push (and each admin change) returns; concurrent pushes share one sync.
    Always,
    /// Once a second: a machine crash loses at most the last second.
    EverySecond,
    /// When the kernel writes back (a machine crash may lose more; a process crash nothing).
    Never,
}

impl Fsync {
    pub fn parse(text: &str) -> Result<Fsync> {
        match text {
            "always" => Ok(Fsync::Always),
            "everysec" => Ok(Fsync::EverySecond),
            "never" => Ok(Fsync::Never),
            other => Err(QueueError::config(format!(
                "fsync must be \"always\", \"everysec\" or \"never\", got {other:?}"
            ))),
        }
    }
}

/// Once the log written since the last compaction is this large and larger than the last
/// snapshot (dead records then dominate), the live state is rewritten.
pub const DEFAULT_COMPACT_MIN_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct FileOptions {
    pub path: PathBuf,
    pub fsync: Fsync,
    pub compact_min_bytes: u64,
    /// How long a process that takes the store over waits for the others to claim the runs
    /// they took from the holder before it (see `shared.rs`), before running the rest again.
    pub lost_run_grace: Duration,
}

/// `FileOptions::lost_run_grace` unless set.
pub const DEFAULT_LOST_RUN_GRACE: Duration = Duration::from_secs(2);

/// What opening a directory found.
pub(crate) enum Opened {
    /// This process holds the store now; the listener is bound for the others.
    Held(Arc<FileBackend>, UnixListener),
    /// Another process holds it (the message says which).
    Busy(String),
}

/// Takes the directory's lock if no process holds it; then binds the store's socket (`bind`,
/// before the replay, so that clients wait for it instead of failing) and opens the store.
pub(crate) fn open_held(
    options: &FileOptions,
    bind: impl FnOnce() -> std::io::Result<UnixListener>,
) -> Result<Opened> {
    std::fs::create_dir_all(&options.path).map_err(|e| {
        writer::io_error(&options.path, "could not create the store's directory", e)
    })?;
    let lock = match lock::DirLock::acquire(&options.path)? {
        lock::Acquired::Held(lock) => lock,
        lock::Acquired::Busy(message) => return Ok(Opened::Busy(message)),
    };
    let listener = bind()
        .map_err(|e| writer::io_error(&options.path, "could not bind the store's socket", e))?;
    match open_locked(options, lock) {
        Ok(store) => Ok(Opened::Held(store, listener)),
        Err(error) => {
            use std::os::fd::AsRawFd;
            fork::forget(listener.as_raw_fd());
            Err(error)
        }
    }
}

/// Opens the store in `options.path` in this process only (no socket for others): an error
/// when another process holds it.
pub fn open(options: &FileOptions) -> Result<Arc<FileBackend>> {
    std::fs::create_dir_all(&options.path).map_err(|e| {
        writer::io_error(&options.path, "could not create the store's directory", e)
    })?;
    let store = match lock::DirLock::acquire(&options.path)? {
        lock::Acquired::Held(lock) => open_locked(options, lock)?,
        lock::Acquired::Busy(message) => return Err(QueueError::Backend(message)),
    };
    // No other process can be running them: the runs found active were lost.
    let lost = store.recover_lost_runs(&store.active_runs())?;
    log_lost(&options.path, lost);
    Ok(store)
}

/// Logs runs found lost with the process that ran them.
fn log_lost(path: &std::path::Path, lost: usize) {
    if lost > 0 {
        log::warn!(
            target: "rnode_queue",
            "file store {}: {lost} job(s) were running in a process that stopped; they run \
             again (the lost run counts as an attempt) or failed, out of attempts",
            path.display()
        );
    }
}

/// Replays the log and starts the upkeep thread (the `everysec` sync and compaction).
fn open_locked(options: &FileOptions, lock: lock::DirLock) -> Result<Arc<FileBackend>> {
    let (backend, snapshot_bytes) = open::open(options, lock)?;
    let backend = Arc::new(backend);
    let weak = Arc::downgrade(&backend);
    let options = options.clone();
    std::thread::Builder::new()
        .name("rnq-file-upkeep".into())
        .spawn(move || upkeep(weak, options, snapshot_bytes))
        .map_err(|e| QueueError::Backend(format!("could not start the log's thread: {e}")))?;
    Ok(backend)
}

/// How often the upkeep thread looks whether the store was closed.
const UPKEEP_STEP: Duration = Duration::from_millis(50);
const SYNC_EVERY: Duration = Duration::from_secs(1);

fn upkeep(backend: Weak<FileBackend>, options: FileOptions, mut snapshot_bytes: u64) {
    let mut last_sync = Instant::now();
    loop {
        std::thread::sleep(UPKEEP_STEP);
        let Some(backend) = backend.upgrade() else {
            return;
        };
        let log = backend.journal();
        if log.is_closed() {
            return;
        }
        if options.fsync == Fsync::EverySecond && last_sync.elapsed() >= SYNC_EVERY {
            last_sync = Instant::now();
            // A failure is logged by the sync; the next second tries again.
            let _ = log.sync_to(log.recorded());
        }
        let written = log.since_snapshot();
        if written >= options.compact_min_bytes.max(snapshot_bytes) {
            match compact::compact(&backend, None) {
                Ok(bytes) => snapshot_bytes = bytes,
                Err(error) => {
                    log::error!(
                        target: "rnode_queue",
                        "compacting the file store failed ({error}); the log keeps growing \
                         until a later try succeeds"
                    );
                    // Not again before as much has been written once more.
                    snapshot_bytes = snapshot_bytes.max(written.saturating_mul(2));
                }
            }
        }
    }
}

/// A job as one byte string (the log's encoding, with its queue): how the Redis spill keeps
/// the jobs it could not push.
pub fn job_bytes(job: &crate::job::Job) -> Vec<u8> {
    let mut out = Vec::new();
    codec::Writer(&mut out).jobs_with_queues(std::slice::from_ref(job));
    out
}

/// The job `job_bytes` wrote.
pub fn job_from_bytes(bytes: &[u8]) -> Result<crate::job::Job> {
    let mut reader = codec::Reader(bytes);
    match reader.jobs_with_queues() {
        Ok(mut jobs) if jobs.len() == 1 && reader.0.is_empty() => Ok(jobs.remove(0)),
        Ok(_) => Err(QueueError::Backend("a spilled job holds no job".into())),
        Err(error) => Err(QueueError::Backend(format!(
            "a spilled job cannot be read: {}",
            error.0
        ))),
    }
}
