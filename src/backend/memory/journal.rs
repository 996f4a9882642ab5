//! What a memory store tells its journal of each change, under the lock that guards the change:
//! the file backend writes these events to its log and, at start-up, replays them into a fresh
//! store through the same code that made them. The memory backend's journal keeps nothing
//! (`NoJournal`), at no cost.

use std::borrow::Cow;

use crate::backend::{Ack, QueueDeclaration, ScheduleRecord};
use crate::error::Result;
use crate::job::{Job, JobId, Timestamp};

/// A position in a journal: an event is durable once the journal has synced up to it.
pub type Lsn = u64;

/// One change of the store. Borrowed when recorded, owned when read back from a log.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// Jobs stored as they are (waiting or delayed when pushed; any state in a compacted log),
    /// with the cron tick they were pushed for, claimed in the same step.
    Push {
        queue: Cow<'a, str>,
        jobs: Cow<'a, [Job]>,
        tick: Option<(Cow<'a, str>, f64)>,
    },
    /// Waiting jobs taken by a worker at `at`: (id, attempt) each.
    Claim {
        queue: Cow<'a, str>,
        at: Timestamp,
        runs: Cow<'a, [(JobId, u32)]>,
    },
    Settle {
        queue: Cow<'a, str>,
        acks: Cow<'a, [Ack]>,
    },
    /// Taken jobs handed back unstarted.
    Release {
        queue: Cow<'a, str>,
        runs: Cow<'a, [(JobId, u32)]>,
    },
    /// Runs given up on (at exit, or found running when a log is opened): waiting again with
    /// the run counted, or failed when no attempt is left.
    Lost {
        queue: Cow<'a, str>,
        at: Timestamp,
        runs: Cow<'a, [(JobId, u32)]>,
    },
    /// One job removed (it was not running).
    RemoveJob {
        queue: Cow<'a, str>,
        id: JobId,
    },
    RetryFailed {
        queue: Cow<'a, str>,
        id: JobId,
    },
    Paused {
        queue: Cow<'a, str>,
        paused: bool,
    },
    Clear {
        queue: Cow<'a, str>,
    },
    Delete {
        queue: Cow<'a, str>,
    },
    Declare {
        queue: Cow<'a, str>,
        declaration: Cow<'a, QueueDeclaration>,
    },
    /// A queue's counters since it was created (written when a log is compacted).
    Totals {
        queue: Cow<'a, str>,
        completed: u64,
        failed: u64,
    },
    SaveSchedule(Cow<'a, ScheduleRecord>),
    RemoveSchedule(Cow<'a, str>),
}

/// Where a store's changes go. `record` is called with the changed state's lock held, before
/// the change is made: an error leaves the store as it was.
pub trait Journal: Send + Sync + 'static {
    /// False for a journal that keeps nothing: callers skip building its events.
    const RECORDS: bool = true;

    fn record(&self, event: &Event<'_>) -> Result<Lsn>;

    /// `record`, unless that would have to wait (for the disk): then `Ok(None)`.
    fn try_record(&self, event: &Event<'_>) -> Result<Option<Lsn>>;

    /// Returns once what was recorded up to `lsn` is as durable as the journal promises an
    /// acknowledged change. Called without any lock held.
    fn commit(&self, lsn: Lsn) -> Result<()>;

    /// Whether `commit` returns at once: a push that holds the Python GIL may then run in place.
    fn commits_at_once(&self) -> bool;

    /// The store is closed: what was recorded is made durable, and nothing more is recorded.
    fn close(&self) {}
}

/// The memory backend's journal: nothing is kept, nothing waits.
#[derive(Default)]
pub struct NoJournal;

impl Journal for NoJournal {
    const RECORDS: bool = false;

    #[inline]
    fn record(&self, _: &Event<'_>) -> Result<Lsn> {
        Ok(0)
    }

    #[inline]
    fn try_record(&self, _: &Event<'_>) -> Result<Option<Lsn>> {
        Ok(Some(0))
    }

    #[inline]
    fn commit(&self, _: Lsn) -> Result<()> {
        Ok(())
    }

    fn commits_at_once(&self) -> bool {
        true
    }
}
