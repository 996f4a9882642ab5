//! A worker's batch and run state. Workers claim a batch's jobs one at a time; the watchdog (or
//! a stop) takes the unstarted rest; a `Slot` is what the watchdog sees of a busy worker.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::job::{Job, JobId};
use crate::sync::Mutex;

use super::executor::{RunOutcome, Session};
use super::WorkerHost;

/// A fetched batch. Workers claim its jobs one at a time with `fetch_add`; the watchdog (or a
/// stop) takes the unstarted rest with `swap`, so each job goes exactly one way.
pub struct Batch {
    pub jobs: Vec<Job>,
    next: AtomicUsize,
}

impl Batch {
    pub fn new(jobs: Vec<Job>) -> Self {
        Batch {
            jobs,
            next: AtomicUsize::new(0),
        }
    }

    pub(super) fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        (i < self.jobs.len()).then_some(i)
    }

    /// The jobs nobody has started; afterwards `claim` finds nothing.
    pub fn take_rest(&self) -> &[Job] {
        let i = self.next.swap(self.jobs.len(), Ordering::AcqRel);
        &self.jobs[i.min(self.jobs.len())..]
    }
}

const IDLE: u64 = 0;
const RUNNING: u64 = 1;
const ABANDONED: u64 = 2;

/// One worker thread's run state, shared with the watchdog. `state` packs a run counter with
/// IDLE/RUNNING/ABANDONED so that a watchdog decision about an old run can never hit a new one.
pub struct Slot {
    pub(super) state: AtomicU64,
    /// Nanoseconds since the engine's epoch; 0 = no deadline.
    pub(super) deadline: AtomicU64,
    pub(super) current: AtomicUsize,
    /// When the current run began, in nanoseconds since the engine's epoch.
    pub(super) started: AtomicU64,
    /// The last run (counter of `state`) reported to the backend as started.
    pub(super) marked_run: AtomicU64,
    pub(super) work: Mutex<SlotWork>,
}

/// A worker's current batch and its runs that ended but are not settled yet (indices into the
/// batch). One lock for both, so that whoever settles them pairs each index with its batch: the
/// worker at the end of its batch, or the timer when the worker is stuck on a long job.
#[derive(Default)]
pub(super) struct SlotWork {
    pub(super) batch: Option<Arc<Batch>>,
    pub(super) finished: Vec<(usize, RunOutcome)>,
}

/// Ended runs taken from a worker, with the batch their indices point into.
pub(super) type EndedRuns = (Arc<Batch>, Vec<(usize, RunOutcome)>);

impl SlotWork {
    /// Takes the ended runs, paired with their jobs, for `WorkerHost::settle`.
    pub(super) fn take_finished(&mut self) -> Option<EndedRuns> {
        if self.finished.is_empty() {
            return None;
        }
        let batch = self.batch.clone()?;
        Some((batch, std::mem::take(&mut self.finished)))
    }
}

pub(super) fn settle_finished(host: &dyn WorkerHost, queue: &str, taken: Option<EndedRuns>) {
    if let Some((batch, finished)) = taken {
        let mut runs = finished
            .into_iter()
            .map(|(i, outcome)| (&batch.jobs[i], outcome));
        host.settle(queue, &mut runs);
    }
}

impl Slot {
    pub(super) fn new() -> Self {
        Slot {
            state: AtomicU64::new(IDLE),
            deadline: AtomicU64::new(0),
            current: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            marked_run: AtomicU64::new(0),
            work: Mutex::new(SlotWork::default()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) & 3 == RUNNING
    }

    /// Marks the run of `batch.jobs[index]` as begun. The caller then tells the watchdog its
    /// deadline (`WorkerHost::watch_deadline`), which loads the watchdog's next wake-up: the fence
    /// orders this store before that load (the watchdog, `Pool::check_timeouts`, is the other side).
    pub(super) fn begin(&self, index: usize, now: u64, deadline: u64) -> u64 {
        let run = (self.state.load(Ordering::Relaxed) >> 2) + 1;
        self.current.store(index, Ordering::Relaxed);
        self.started.store(now, Ordering::Relaxed);
        self.deadline.store(deadline, Ordering::Relaxed);
        self.state.store(run << 2 | RUNNING, Ordering::Release);
        fence(Ordering::SeqCst);
        run
    }

    /// False if the watchdog abandoned this run meanwhile.
    pub(super) fn end(&self, run: u64) -> bool {
        self.state
            .compare_exchange(
                run << 2 | RUNNING,
                run << 2 | IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// If the current run is past its deadline, marks it abandoned, counts it in `stuck`, and
    /// returns the batch and the job's index in it.
    pub(super) fn abandon_if_late(
        &self,
        now: u64,
        stuck: &AtomicUsize,
    ) -> Option<(Arc<Batch>, usize)> {
        let state = self.state.load(Ordering::Acquire);
        if state & 3 != RUNNING {
            return None;
        }
        let deadline = self.deadline.load(Ordering::Acquire);
        let index = self.current.load(Ordering::Acquire);
        if deadline == 0 || now < deadline {
            return None;
        }
        let batch = self.work.lock().batch.clone()?;
        // Counted before the switch: the worker may return and uncount itself right after it.
        stuck.fetch_add(1, Ordering::AcqRel);
        let abandoned = self.state.compare_exchange(
            state,
            (state & !3) | ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if abandoned.is_err() {
            stuck.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some((batch, index))
    }

    /// Records an ended run; waits for the lock (rarely held: only by the watchdog) unlocked.
    pub(super) fn record(&self, session: &mut dyn Session, index: usize, outcome: RunOutcome) {
        match self.work.try_lock() {
            Some(mut work) => work.finished.push((index, outcome)),
            None => {
                let mut outcome = Some(outcome);
                session.unlocked(&mut || {
                    if let Some(outcome) = outcome.take() {
                        self.work.lock().finished.push((index, outcome));
                    }
                });
            }
        }
    }

    pub(super) fn deadline_if_running(&self) -> Option<u64> {
        let deadline = self.deadline.load(Ordering::Acquire);
        (self.is_running() && deadline > 0).then_some(deadline)
    }

    /// The job this slot is running, with its attempt.
    pub(super) fn running_job(&self) -> Option<(JobId, u32)> {
        if !self.is_running() {
            return None;
        }
        let index = self.current.load(Ordering::Acquire);
        let batch = self.work.lock().batch.clone()?;
        batch.jobs.get(index).map(|job| (job.id, job.attempts))
    }

    /// The running job, if it was not reported as started yet.
    pub(super) fn unmarked_start(&self) -> Option<(JobId, u32)> {
        let run = self.state.load(Ordering::Acquire) >> 2;
        if self.marked_run.swap(run, Ordering::AcqRel) == run {
            return None;
        }
        self.running_job()
    }
}
