//! Where handlers run. An `Executor` (Python, in `py/`; a closure in Rust tests) enters a worker
//! thread once and hands the loop a `Session`; every wait in the loop goes through
//! `Session::unlocked` (Python: the GIL released).

use std::any::Any;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use super::super::metrics::QueueMetrics;

use crate::job::{Job, Payload};

/// How one run of a handler ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Success(Option<Payload>),
    Failure {
        error: String,
        traceback: Option<String>,
    },
    TimedOut,
}

impl RunOutcome {
    pub fn from_panic(panic: Box<dyn Any + Send>) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        RunOutcome::Failure {
            error: format!("PanicException: {text}"),
            traceback: None,
        }
    }
}

/// Where handlers run: Python, or a plain closure in Rust tests.
pub trait Executor: Send + Sync + 'static {
    /// Async executors get batches through `Session::submit`; sync ones run jobs one by one.
    fn is_async(&self) -> bool;
    /// Runs `body` on the current thread, inside whatever context the handler needs.
    fn enter(&self, body: &mut dyn FnMut(&mut dyn Session));
}

pub trait Session {
    /// Runs `f` outside the handler's context (Python: without the GIL). Every wait goes here.
    fn unlocked(&mut self, f: &mut (dyn FnMut() + Send));
    /// Runs one job's handler to its end (sync executors).
    fn run(&mut self, job: &Job) -> RunOutcome;
    /// Starts jobs that will report through their `Completion` (async executors). Must not block.
    fn submit(&mut self, jobs: Vec<(Job, Completion)>);
}

/// Reports one async run. Dropping it unused reports a failure, so a job is never left active.
pub struct Completion {
    job: Option<Job>,
    done: mpsc::Sender<(Job, RunOutcome)>,
    /// Where the run's time is counted, from `started`.
    metrics: Option<Arc<QueueMetrics>>,
    started: Instant,
}

impl Completion {
    pub(super) fn new(
        job: Job,
        done: mpsc::Sender<(Job, RunOutcome)>,
        metrics: Option<Arc<QueueMetrics>>,
    ) -> Self {
        Completion {
            job: Some(job),
            done,
            metrics,
            started: Instant::now(),
        }
    }

    pub fn job(&self) -> Option<&Job> {
        self.job.as_ref()
    }

    pub fn complete(&mut self, outcome: RunOutcome) -> bool {
        match self.job.take() {
            Some(job) => {
                if let Some(metrics) = &self.metrics {
                    let took = self.started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                    metrics.observe(took);
                }
                // The receiver is gone only once the pool has stopped waiting; nothing to do.
                let _ = self.done.send((job, outcome));
                true
            }
            None => false,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.complete(RunOutcome::Failure {
            error: "RuntimeError: the async runner dropped the job without reporting it".into(),
            traceback: None,
        });
    }
}
