//! Worker pools per queue (`process`), the clock of runs, and the watchdog that abandons sync runs
//! past their timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId};

use super::config::check_concurrency;
use super::timers::TimerKey;
use super::workers::Executor;
use super::workers::{Pool, RunOutcome, WorkerHost};
use super::Engine;

impl Engine {
    /// Starts workers for a queue. One handler per queue. `concurrency` pins the number of
    /// slots; without it the pool follows the queue's settings. With `later`, nothing waits for
    /// the store (see `declare_queue_later`).
    pub fn process(
        &self,
        queue: &str,
        executor: Arc<dyn Executor>,
        concurrency: Option<usize>,
        later: bool,
    ) -> Result<()> {
        self.check_open()?;
        if let Some(n) = concurrency {
            check_concurrency(n)?;
        }
        if later {
            self.declare_queue_later(queue)?;
        }
        let host = self.worker_host().ok_or(QueueError::Closed)?;
        // Not interleaved with a delete of the same queue: the pool is started for a queue
        // that exists, or the delete stops it.
        let entry = self.ensure_queue(queue)?;
        let _changing = self.queue_changes.lock();
        let mut pools = self.pools.lock();
        // `close` sets the flag under this lock: a pool is either seen by it or never started.
        self.check_open()?;
        if pools.contains_key(&entry.name) {
            return Err(QueueError::Other(format!(
                "queue {:?} already has a handler",
                &*entry.name
            )));
        }
        if !self.queues.read().contains_key(&entry.name) {
            // Deleted between the declaration and here: declare it again.
            drop(pools);
            drop(_changing);
            self.redeclare(&entry)?;
            return self.process(queue, executor, concurrency, false);
        }
        let slots = concurrency.unwrap_or(entry.config.read().concurrency);
        let pool = Pool::start(
            &host,
            entry.name.clone(),
            executor,
            slots,
            concurrency.is_some(),
            entry.metrics.clone(),
        );
        pools.insert(entry.name.clone(), pool);
        drop(pools);
        self.start_heartbeat();
        Ok(())
    }

    /// This engine as its workers see it; `None` once it is being dropped.
    pub(super) fn worker_host(&self) -> Option<Arc<dyn WorkerHost>> {
        self.this
            .upgrade()
            .map(|engine| engine as Arc<dyn WorkerHost>)
    }

    /// Nanoseconds since the engine started: the clock of run starts and deadlines.
    pub fn clock(&self) -> u64 {
        self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    /// How long a run of `job` may take, in nanoseconds.
    pub fn timeout_ns(&self, job: &Job) -> u64 {
        Duration::from_secs_f64(job.timeout.min(1e9)).as_nanos() as u64
    }

    /// Asks the timer to settle, `after` from now, what the queue's workers have finished if
    /// they are then busy with a long job.
    pub fn settle_later(&self, queue: &Arc<str>, after: Duration) {
        self.timers
            .arm(TimerKey::Settle(queue.clone()), now() + after.as_secs_f64());
    }
}

impl WorkerHost for Engine {
    fn backend(&self) -> &dyn Backend {
        Engine::backend(self)
    }

    fn settle(&self, queue: &str, runs: &mut dyn Iterator<Item = (&Job, RunOutcome)>) {
        Engine::settle(self, queue, runs)
    }

    fn release(&self, queue: &str, jobs: &[Job]) {
        Engine::release(self, queue, jobs)
    }

    fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]) {
        Engine::mark_started(self, queue, runs)
    }

    fn settle_later(&self, queue: &Arc<str>, after: Duration) {
        Engine::settle_later(self, queue, after)
    }

    fn clock(&self) -> u64 {
        Engine::clock(self)
    }

    fn timeout_ns(&self, job: &Job) -> u64 {
        Engine::timeout_ns(self, job)
    }

    fn watch_deadline(&self, deadline: u64) {
        Engine::watch_deadline(self, deadline)
    }

    fn backend_failed(&self, queue: &str, error: &QueueError) -> bool {
        Engine::backend_failed(self, queue, error)
    }

    fn backend_ok(&self, queue: &str) {
        Engine::backend_ok(self, queue)
    }
}
