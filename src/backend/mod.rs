//! Storage backends. The engine decides *what* happens to a job (retry, fail, complete); a
//! backend only stores jobs and moves them between states atomically.
//!
//! Every method may block (a lock, a round trip to Redis, a disk write), so callers run them
//! without the Python GIL; only `NonBlockingPush`, where a store offers it, never waits.
//! Waiting for a job or for idle queues is the engine's (`engine/waiting.rs`), not a backend's.

pub mod file;
pub mod memory;
pub mod redis;
pub mod spill;
pub mod store;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::job::{Job, JobId, JobState, Payload, Priority, Timestamp};

/// How long finished jobs are kept, per queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retention {
    /// Seconds after finishing.
    pub ttl: f64,
    pub keep_completed: usize,
    pub keep_failed: usize,
}

/// The queues' default retention (the engine's `QueueConfig::default` takes it from here).
impl Default for Retention {
    fn default() -> Self {
        Retention {
            ttl: 86_400.0,
            keep_completed: 10_000,
            keep_failed: 100_000,
        }
    }
}

/// How one run of a job ended, as decided by the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Settlement {
    Completed {
        result: Option<Payload>,
    },
    /// The run failed and attempts remain: the job waits until `due`, then runs again.
    Retry {
        due: Timestamp,
        error: String,
        traceback: Option<String>,
    },
    /// The run failed and no attempts remain.
    Failed {
        error: String,
        traceback: Option<String>,
    },
}

/// The end of one run, sent back to the backend.
#[derive(Clone, Debug, PartialEq)]
pub struct Ack {
    pub id: JobId,
    /// The attempt this run was; an ack for an older attempt (a run the backend already gave up
    /// on) is ignored.
    pub attempt: u32,
    pub at: Timestamp,
    pub settlement: Settlement,
}

/// What `fetch` should take.
#[derive(Clone, Copy, Debug)]
pub struct FetchRequest {
    /// At most this many jobs.
    pub max: usize,
    /// How many workers share the queue: a fetch takes about `waiting / share` jobs, so one
    /// worker does not hoard a backlog its peers could run.
    pub share: usize,
    /// Block at most this long for a first job.
    pub wait: Duration,
    /// Every job fetched starts at once (async workers); otherwise only the first does, and
    /// the others when the worker reaches them (`Backend::mark_started`).
    pub start_all: bool,
}

/// What a queue is declared with. The backend keeps `settings` for other processes (the
/// engine's JSON; opaque here) and uses `retention` itself.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDeclaration {
    pub retention: Retention,
    pub settings: Payload,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub waiting: u64,
    pub delayed: u64,
    /// Taken by a worker (running, or about to run in its current batch).
    pub active: u64,
    /// Totals since the queue was created.
    pub completed: u64,
    pub failed: u64,
    pub paused: bool,
}

/// What `Backend::remove_job` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// A worker runs it: it stays (removing it would leave the run nowhere to report).
    Running,
    NotFound,
}

/// Manager-wide totals since the backend was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
}

/// A cron schedule as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    pub id: Arc<str>,
    pub name: Option<String>,
    pub queue: Arc<str>,
    pub cron: String,
    pub data: Payload,
    pub priority: Priority,
    pub attempts: Option<u32>,
    pub timeout: Option<f64>,
    pub tags: Vec<String>,
    pub metadata: Option<Payload>,
}

pub trait Backend: Send + Sync + 'static {
    /// True when other processes share the store: its counts include their workers' runs, and
    /// they change schedules, settings and jobs without telling this process. The engine then
    /// re-reads schedules and settings now and then, and its waits poll as well.
    fn shared(&self) -> bool {
        false
    }

    /// Makes sure the queue exists with a declaration: `declaration` always with `replace`,
    /// otherwise only if the queue had none yet. Returns the declaration the store now holds.
    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration>;

    /// The declarations stored for these queues (`None`: no such queue), without creating any.
    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>>;

    /// Stores new jobs (waiting or delayed) all together or not at all. A job whose id the queue
    /// already holds is an error (`DuplicateJob`), never an overwrite. A queue that does not
    /// exist (deleted, maybe by another process, while this one still used it) is created with
    /// `declare()` in the same step: a push racing a delete lands before it or re-creates the
    /// queue, whole.
    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()>;

    /// A push that never waits, where the store can offer one (an in-process store, when no
    /// lock is contended). `None`, the default: every push may wait (a round trip).
    fn nonblocking(&self) -> Option<&dyn NonBlockingPush> {
        None
    }

    /// Stores the job of a cron tick, unless that tick of `schedule` was pushed before (by any
    /// process sharing the store): then `Ok(false)`. The claim and the push are one step, so
    /// that a crash between them cannot lose the tick.
    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool>;

    /// Takes waiting jobs (highest priority first, FIFO within one) and marks them active with one
    /// more attempt. Blocks up to `request.wait` for a first job; returns early, maybe empty, when
    /// `cancel` is set and `wake` is called.
    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>>;

    /// Records how runs ended. Returns when the queue next has something to do (a retry due,
    /// a finished job to expire), so that the engine can make sure its timer fires by then.
    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>>;

    /// Hands back jobs that were fetched but never started: waiting again, in their old place,
    /// with the attempt not counted.
    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()>;

    /// Notes that these fetched jobs (id, attempt) have started, so that their run counts as an
    /// attempt if this process dies before it records how they ended.
    fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<()> {
        let _ = (queue, runs);
        Ok(())
    }

    /// `mark_started` for one run, without waiting for the store (the caller holds the GIL and
    /// is about to run the job). Written before the job runs, so that a handler that kills its
    /// process at once has its run counted; best effort all the same: a note that cannot be
    /// written at once leaves the run uncounted should the process die.
    fn note_started(&self, queue: &str, run: (JobId, u32)) {
        let _ = (queue, run);
    }

    /// Hands back runs this process gives up on at exit (still running past the shutdown
    /// timeout): they run again at once elsewhere, the run counted (or fail, out of attempts).
    /// Returns those handed back (a run that ended meanwhile is not).
    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        let _ = (queue, runs);
        Ok(Vec::new())
    }

    /// Makes due delayed jobs waiting and drops finished jobs past their retention. Returns when
    /// it next has something to do.
    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>>;

    /// Wakes workers blocked in `fetch` on this queue so they can see a cancel flag.
    fn wake(&self, queue: &str);

    fn get_job(&self, id: JobId) -> Result<Option<Job>>;
    /// Up to `limit` jobs of `state` (or of every state), after the first `offset` of them:
    /// a page, read without loading the jobs before it. The engine passes an `offset` only
    /// with a `state`.
    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>>;
    /// A failed job back to waiting with its attempts reset; false if it is not failed.
    fn retry_failed(&self, id: JobId) -> Result<bool>;
    /// Removes one job, whatever its state, unless it is running.
    fn remove_job(&self, id: JobId) -> Result<Removal>;
    fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;
    /// Removes waiting and delayed jobs; returns how many.
    fn clear(&self, queue: &str) -> Result<usize>;
    /// Removes the queue and all its jobs.
    fn delete(&self, queue: &str) -> Result<bool>;
    fn counts(&self, queue: &str) -> Result<QueueCounts>;
    /// `counts` of many queues at once (`None`: the queue does not exist any more).
    fn counts_of(&self, queues: &[String]) -> Result<Vec<Option<QueueCounts>>> {
        queues
            .iter()
            .map(|name| match self.counts(name) {
                Ok(counts) => Ok(Some(counts)),
                Err(crate::error::QueueError::UnknownQueue(_)) => Ok(None),
                Err(error) => Err(error),
            })
            .collect()
    }
    fn queue_names(&self) -> Result<Vec<String>>;
    fn totals(&self) -> Result<Totals>;

    /// Whether the queue (or every queue) has no waiting, delayed or active job. A queue that
    /// does not exist is idle.
    fn is_idle(&self, queue: Option<&str>) -> Result<bool>;

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()>;
    fn remove_schedule(&self, id: &str) -> Result<bool>;
    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>>;
    /// Whether the schedule is still stored: another process sharing the store may have removed
    /// it. A store that only this process sees knows that already.
    fn has_schedule(&self, id: &str) -> Result<bool> {
        let _ = id;
        Ok(true)
    }

    /// Lists a worker process in the store's registry of live workers (or refreshes it) until
    /// `ttl` seconds from now. `info` is the engine's description (JSON; opaque here). The
    /// registry is for operators (`rnode-queue workers`); leases are what recover jobs.
    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()>;
    /// The descriptions of the worker processes whose last beat has not expired.
    fn workers(&self) -> Result<Vec<Payload>>;
    /// Takes a worker process off the registry (it closed).
    fn leave(&self, worker: &str) -> Result<()>;

    /// The engine has stopped its workers: background upkeep (lease renewal) ends.
    fn close(&self) {}
}

/// `Backend::push` without waiting: for a caller that holds the Python GIL, which pushes in
/// place when nothing is contended and lets go of Python only otherwise.
pub trait NonBlockingPush {
    /// `Ok(false)`, with nothing changed, where the push would have to wait for a lock (or
    /// for the disk, before it may count as acknowledged).
    fn try_push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool>;

    /// `try_push`, leaving the wait for the disk to the caller: `Some(ticket)` once stored; the
    /// push counts as acknowledged after `commit(ticket)`. An asynchronous caller stores many
    /// pushes this way and waits for one commit (one sync) for all of them.
    fn try_push_uncommitted(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<Option<u64>> {
        Ok(self.try_push(queue, jobs, declare)?.then_some(0))
    }

    /// Returns once the pushes stored with tickets up to `ticket` are durable.
    fn commit(&self, ticket: u64) -> Result<()> {
        let _ = ticket;
        Ok(())
    }
}
