//! The worker pool of a queue: dispatcher threads that take jobs from the backend in batches, run
//! them through an `Executor`, and hand the results to the engine to settle.
//!
//! Nothing here knows about Python, nor about the engine as a whole: the pool sees it through
//! `WorkerHost`, the few things a worker asks of it.

mod async_workers;
mod batch;
mod executor;
mod sync_workers;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::backend::{Backend, FetchRequest};
use crate::error::QueueError;
use crate::job::{IdMap, Job, JobId};
use crate::sync::{Condvar, Mutex};

use super::metrics::QueueMetrics;
use batch::{settle_finished, Slot};
pub use executor::{Completion, Executor, RunOutcome, Session};

/// Jobs taken per fetch at most: one GIL acquisition runs up to this many handlers.
pub const MAX_BATCH: usize = 256;
/// Idle workers are woken by a push or a stop; this bound only makes them look at their stop
/// flag now and then should a wake-up ever be missed.
pub(super) const FETCH_WAIT: Duration = Duration::from_secs(10);

/// What workers ask of the engine that runs them.
pub trait WorkerHost: Send + Sync + 'static {
    fn backend(&self) -> &dyn Backend;
    /// Records ended runs: done, or failed and retried or dead.
    fn settle(&self, queue: &str, runs: &mut dyn Iterator<Item = (&Job, RunOutcome)>);
    /// Hands back fetched jobs that were never started.
    fn release(&self, queue: &str, jobs: &[Job]);
    /// Reports runs as started, so that their attempt counts should this process die.
    fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]);
    /// Asks for `Pool::settle_stalled` to run after `after`.
    fn settle_later(&self, queue: &Arc<str>, after: Duration);
    /// Nanoseconds on the engine's clock, in which run deadlines are given.
    fn clock(&self) -> u64;
    /// How long the job may run, in nanoseconds; 0: no limit.
    fn timeout_ns(&self, job: &Job) -> u64;
    /// A run began with this deadline: the watchdog wakes for it.
    fn watch_deadline(&self, deadline: u64);
    /// A fetch failed: logs it and waits before the next try. False: stop.
    fn backend_failed(&self, queue: &str, error: &QueueError) -> bool;
    /// A fetch of `queue` succeeded (logs that the backend is back, after `backend_failed`).
    fn backend_ok(&self, queue: &str);
}

/// A queue's workers.
pub struct Pool {
    pub queue: Arc<str>,
    /// Handlers running at once: sync worker threads, or async runs in flight. Changes when the
    /// queue's settings do, unless `pinned` (set by `process(concurrency=...)`).
    concurrency: AtomicUsize,
    pub pinned: bool,
    executor: Arc<dyn Executor>,
    stop: AtomicBool,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Sync worker threads taking jobs (not counting those stuck in an abandoned run).
    workers: AtomicUsize,
    /// Live threads, and a signal for `close` to wait on.
    live: Mutex<usize>,
    exited: Condvar,
    /// Async pools: runs started and not yet reported.
    in_flight: Mutex<usize>,
    /// Async pools: the runs in flight (id, attempt), to hand back at exit.
    in_flight_jobs: Mutex<IdMap<u32>>,
    capacity: Condvar,
    /// Sync threads still inside a handler the watchdog gave up on.
    stuck: AtomicUsize,
    /// Replacement workers not started because `concurrency` threads were already stuck: the
    /// next stuck thread to come back takes the place.
    owed: AtomicUsize,
    /// Where run times are counted (`None`: counting is off).
    metrics: Option<Arc<QueueMetrics>>,
}

impl Pool {
    pub fn start(
        host: &Arc<dyn WorkerHost>,
        queue: Arc<str>,
        executor: Arc<dyn Executor>,
        concurrency: usize,
        pinned: bool,
        metrics: Option<Arc<QueueMetrics>>,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            queue,
            concurrency: AtomicUsize::new(concurrency.max(1)),
            pinned,
            executor,
            stop: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
            workers: AtomicUsize::new(0),
            live: Mutex::new(0),
            exited: Condvar::new(),
            in_flight: Mutex::new(0),
            in_flight_jobs: Mutex::new(IdMap::default()),
            capacity: Condvar::new(),
            stuck: AtomicUsize::new(0),
            owed: AtomicUsize::new(0),
            metrics,
        });
        if pool.executor.is_async() {
            let (done_tx, done_rx) = mpsc::channel();
            pool.spawn(host, "feeder", move |pool, host| {
                pool.feed_async(&host, done_tx)
            });
            pool.spawn(host, "acker", move |pool, host| {
                pool.ack_async(&host, done_rx)
            });
        } else {
            for _ in 0..pool.concurrency() {
                pool.spawn_sync_worker(host);
            }
        }
        pool
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Acquire)
    }

    /// A new concurrency (the queue's settings changed): more threads now, or fewer as the
    /// surplus ones finish their batch.
    pub fn resize(self: &Arc<Self>, host: &Arc<dyn WorkerHost>, concurrency: usize) {
        let concurrency = concurrency.max(1);
        if self.pinned || self.stopped() {
            return;
        }
        self.concurrency.store(concurrency, Ordering::Release);
        if self.is_async() {
            let _guard = self.in_flight.lock();
            self.capacity.notify_all();
            return;
        }
        let running = self.workers.load(Ordering::Acquire);
        for _ in running..concurrency {
            self.spawn_sync_worker(host);
        }
    }

    /// A sync worker leaves if there are more of them than the concurrency asks for.
    fn retire_if_surplus(&self) -> bool {
        self.workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > self.concurrency()).then(|| n - 1)
            })
            .is_ok()
    }

    pub fn is_async(&self) -> bool {
        self.executor.is_async()
    }

    fn spawn(
        self: &Arc<Self>,
        host: &Arc<dyn WorkerHost>,
        role: &str,
        body: impl FnOnce(Arc<Pool>, Arc<dyn WorkerHost>) + Send + 'static,
    ) {
        *self.live.lock() += 1;
        let pool = self.clone();
        let host = host.clone();
        let name = format!("rnq-{role}-{}", self.queue);
        let role_name = role.to_string();
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let exiting = pool.clone();
            // A panic in the loop itself (not in a handler) must not kill the process.
            if catch_unwind(AssertUnwindSafe(|| body(pool, host))).is_err() {
                log::error!(
                    target: "rnode_queue",
                    "a {role_name} thread of queue {:?} stopped on an internal error (a panic); \
                     the queue runs with one fewer",
                    &*exiting.queue
                );
            }
            *exiting.live.lock() -= 1;
            exiting.exited.notify_all();
        });
        if let Err(error) = spawned {
            *self.live.lock() -= 1;
            log::error!(
                target: "rnode_queue",
                "a {role} thread of queue {:?} could not be started: {error}",
                &*self.queue
            );
        }
    }

    fn fetch_request(&self, max: usize) -> FetchRequest {
        FetchRequest {
            max,
            share: self.concurrency(),
            wait: FETCH_WAIT,
            start_all: self.is_async(),
        }
    }

    /// After a failed fetch: waits (Python let go of) before the next try. False: stop.
    fn back_off(
        &self,
        host: &dyn WorkerHost,
        session: &mut dyn Session,
        error: &QueueError,
    ) -> bool {
        let mut keep_going = false;
        session.unlocked(&mut || keep_going = host.backend_failed(&self.queue, error));
        keep_going
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every thread to stop after its current job.
    pub fn request_stop(&self, host: &dyn WorkerHost) {
        self.stop.store(true, Ordering::Release);
        host.backend().wake(&self.queue);
        let _guard = self.in_flight.lock();
        self.capacity.notify_all();
    }

    /// Waits until every thread has exited (and every async run reported); false on timeout.
    pub fn wait_stopped(&self, deadline: Instant) -> bool {
        let mut live = self.live.lock();
        while *live > 0 {
            let timed_out;
            (live, timed_out) = self.exited.wait_until(live, deadline);
            if timed_out {
                return *live == 0;
            }
        }
        true
    }

    pub fn running(&self) -> usize {
        if self.is_async() {
            return *self.in_flight.lock();
        }
        self.slots.lock().iter().filter(|s| s.is_running()).count()
    }

    /// For a close that timed out: hands back the unstarted rest of each busy worker's batch,
    /// records the runs that ended before the one at hand, and returns the runs still in
    /// progress (id, attempt), which the caller hands back.
    pub fn wind_down(&self, host: &dyn WorkerHost) -> Vec<(JobId, u32)> {
        if self.is_async() {
            let in_flight = self.in_flight_jobs.lock();
            return in_flight
                .iter()
                .map(|(id, attempt)| (*id, *attempt))
                .collect();
        }
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut running = Vec::new();
        for slot in slots {
            let Some(run) = slot.running_job() else {
                continue;
            };
            let batch = slot.work.lock().batch.clone();
            if let Some(batch) = batch {
                host.release(&self.queue, batch.take_rest());
            }
            let taken = slot.work.lock().take_finished();
            settle_finished(host, &self.queue, taken);
            running.push(run);
        }
        running
    }
}

#[cfg(test)]
mod tests {
    use super::batch::{Batch, Slot};
    use super::sync_workers::next_batch_size;
    use super::*;

    #[test]
    fn batches_adapt_to_handler_speed() {
        // Fast handlers: the batch doubles up to the cap.
        let mut size = 1;
        for _ in 0..20 {
            size = next_batch_size(size, size, Duration::from_micros(size as u64));
        }
        assert_eq!(size, MAX_BATCH);
        // A slow handler: back to one job per batch at once.
        assert_eq!(next_batch_size(MAX_BATCH, 1, Duration::from_millis(50)), 1);
        // Half a millisecond per job: two fit in the budget.
        assert_eq!(next_batch_size(8, 4, Duration::from_millis(2)), 2);
    }

    #[test]
    fn batch_hands_each_job_out_once() {
        let queue: Arc<str> = Arc::from("q");
        let jobs = (0..5)
            .map(|_| {
                Job::new(
                    queue.clone(),
                    Arc::from(&b"1"[..]),
                    Default::default(),
                    1,
                    1.0,
                )
            })
            .collect();
        let batch = Batch::new(jobs);
        assert_eq!(batch.claim(), Some(0));
        assert_eq!(batch.claim(), Some(1));
        assert_eq!(batch.take_rest().len(), 3);
        assert_eq!(batch.claim(), None);
        assert!(batch.take_rest().is_empty());
    }

    #[test]
    fn slot_abandons_only_late_current_runs() {
        let slot = Slot::new();
        let queue: Arc<str> = Arc::from("q");
        let job = Job::new(queue, Arc::from(&b"1"[..]), Default::default(), 1, 1.0);
        slot.work.lock().batch = Some(Arc::new(Batch::new(vec![job])));
        let run = slot.begin(0, 0, 100);
        let stuck = AtomicUsize::new(0);
        assert!(slot.abandon_if_late(99, &stuck).is_none());
        assert!(slot.abandon_if_late(100, &stuck).is_some());
        assert_eq!(stuck.load(Ordering::SeqCst), 1);
        assert!(!slot.end(run), "an abandoned run cannot end normally");
        let run = slot.begin(0, 0, 100);
        assert!(slot.end(run));
        assert!(
            slot.abandon_if_late(1000, &stuck).is_none(),
            "an idle slot is never abandoned"
        );
        assert_eq!(stuck.load(Ordering::SeqCst), 1);
    }
}
