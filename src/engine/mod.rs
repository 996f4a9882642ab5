//! The engine behind a `QueueManager`: it decides what happens to jobs (pushed, run, retried
//! or failed, expired) and keeps the queues, their settings, the workers and the schedules; a
//! `Backend` only stores jobs and moves them between states.
//!
//! One file per concern: `config` (a queue's settings), `queues` (the registry), `jobs` (push
//! and look-ups), `settle` (retry with backoff, or fail), `pools` (starting workers),
//! `workers/` (the worker pool itself), `timers` (the timer thread), `timer_events` (what a
//! timer does when it fires), `watchdog` (run deadlines), `cron`, `waiting` (`wait_for` and
//! `join`), `stats`, `shutdown`. Workers and the timer thread see the engine only through
//! narrow traits (`workers::WorkerHost`, `timers::TimerHost`), not the whole `Engine`.

mod config;
mod cron;
mod heartbeat;
mod jobs;
mod metrics;
mod pools;
mod queues;
mod settle;
mod shutdown;
mod stats;
mod timer_events;
mod timers;
mod waiting;
mod watchdog;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::error::{QueueError, Result};
use crate::job::{now, JobId};
use crate::sync::{Mutex, RwLock};

pub use config::{BackoffChoice, QueueConfig, QueueSettings, MAX_CONCURRENCY};
pub use cron::{new_schedule, schedule_id, CronSchedule, ScheduleInfo};
pub use heartbeat::{WorkerInfo, HEARTBEAT_EVERY, HEARTBEAT_TTL};
pub use metrics::{MetricsSnapshot, DURATION_BOUNDS};
pub use shutdown::{CloseReport, DEFAULT_CLOSE_TIMEOUT};
pub use stats::{EngineStats, QueueReport, QueueStats};
pub use workers::{Completion, Executor, RunOutcome, Session, MAX_BATCH};

use cron::CronEntry;
use timers::{TimerKey, Timers};
use waiting::FinishSignal;
use workers::Pool;

/// How often an engine on a shared backend looks for schedules other processes stored and
/// re-reads the settings of the queues it did not declare.
const RELOAD_EVERY: f64 = 5.0;

/// `close` gives the timer thread at least this long to stop (it may be in a backend call).
const TIMER_STOP_MIN: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub defaults: QueueConfig,
    /// The largest job (data, tags, metadata, queue name) and the largest result accepted.
    pub max_job_bytes: usize,
    /// Counts pushes, runs and run times per queue (for Prometheus).
    pub metrics: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            defaults: QueueConfig::default(),
            max_job_bytes: 1 << 20,
            metrics: true,
        }
    }
}

struct QueueEntry {
    name: Arc<str>,
    config: RwLock<Arc<QueueConfig>>,
    /// `create_queue` ran in this process: its settings win here over the stored ones.
    declared_here: AtomicBool,
    /// This process's counters of the queue (`None`: counting is off).
    metrics: Option<Arc<metrics::QueueMetrics>>,
}

pub struct Engine {
    backend: Arc<dyn Backend>,
    options: EngineOptions,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueEntry>>>,
    /// Held (never across a backend call) while the records of a queue and of its workers
    /// change together: a delete and a `process` of one queue do not interleave. A push that
    /// races a delete heals by itself: it lands before the delete, or finds the queue gone and
    /// declares it again.
    queue_changes: Mutex<()>,
    pools: Mutex<HashMap<Arc<str>, Arc<Pool>>>,
    schedules: Mutex<HashMap<Arc<str>, CronEntry>>,
    /// Held while schedules are declared, removed or reloaded, so that those never interleave.
    schedule_changes: Mutex<()>,
    timers: Arc<Timers>,
    /// Wakes `wait_for_job` and `join` when this process settles runs or empties a queue.
    finished: FinishSignal,
    closed: AtomicBool,
    /// Sync run deadlines are nanoseconds since this instant.
    epoch: Instant,
    /// The deadline (engine clock) the watchdog is set for; `u64::MAX`: not set.
    watchdog_at: AtomicU64,
    this: Weak<Engine>,
    /// Feeds the thread that runs `commit_in_background` (made on first use).
    committer: Mutex<Option<std::sync::mpsc::Sender<jobs::Commit>>>,
    metrics: metrics::Metrics,
    /// One INFO record per completed run (`set_job_logging`).
    log_jobs: AtomicBool,
    /// The queues whose fetches fail (the backend is away, or one queue's data is broken):
    /// logged when the first one fails and when the last one recovers, not per retry.
    backend_down: settle::FailingQueues,
    /// A metrics report found the backend away (logged once per outage).
    metrics_backend_down: AtomicBool,
    /// This process's entry in the backend's list of worker processes, once it runs handlers.
    heartbeat: heartbeat::Heartbeat,
}

/// Why a push did not happen yet.
pub enum Pushed {
    Done(Vec<JobId>),
    /// Stored, not yet durable (`push_uncommitted`): acknowledged after `commit(ticket)`.
    Uncommitted(Vec<JobId>, u64),
    /// Only with `may_block = false`: it would have had to wait for a lock. Nothing changed.
    WouldBlock,
}

impl Engine {
    pub fn new(backend: Arc<dyn Backend>, options: EngineOptions) -> Result<Arc<Engine>> {
        options.defaults.validate()?;
        let options_metrics = options.metrics;
        let engine = Arc::new_cyclic(|this| Engine {
            backend,
            watchdog_at: AtomicU64::new(u64::MAX),
            options,
            queues: RwLock::new(HashMap::new()),
            queue_changes: Mutex::new(()),
            pools: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            schedule_changes: Mutex::new(()),
            timers: Arc::new(Timers::default()),
            finished: FinishSignal::default(),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            this: this.clone(),
            committer: Mutex::new(None),
            metrics: metrics::Metrics::new(options_metrics),
            log_jobs: AtomicBool::new(false),
            backend_down: settle::FailingQueues::default(),
            metrics_backend_down: AtomicBool::new(false),
            heartbeat: heartbeat::Heartbeat::default(),
        });
        let host: Weak<dyn timers::TimerHost> = Arc::downgrade(&engine) as _;
        engine.timers.start(host);
        // Schedules kept by a persistent backend start ticking again (one this version cannot
        // parse, stored by another, stays stored and is skipped).
        for record in engine.backend.load_schedules()? {
            if let Err(error) = engine.install_schedule(record.clone()) {
                log::warn!(
                    target: "rnode_queue",
                    "stored schedule {:?} is skipped: {error}",
                    &*record.id
                );
            }
        }
        // A queue's timer (promotions, retention) is armed when this process first uses the
        // queue, not for every queue a shared store holds: starting a process costs the same
        // however many queues exist.
        if engine.backend.shared() {
            engine.timers.arm(TimerKey::Reload, now() + RELOAD_EVERY);
        }
        Ok(engine)
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn defaults(&self) -> &QueueConfig {
        &self.options.defaults
    }

    pub fn max_job_bytes(&self) -> usize {
        self.options.max_job_bytes
    }

    /// Logs one INFO record per completed run (off by default: it costs a call into Python's
    /// `logging` per job).
    pub fn set_job_logging(&self, enabled: bool) {
        self.log_jobs.store(enabled, Ordering::Relaxed);
    }

    /// This process's counters of every queue it used (empty when counting is off).
    pub fn metrics(&self) -> Vec<(Arc<str>, MetricsSnapshot)> {
        self.metrics.snapshot()
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        for pool in self.pools.lock().values() {
            pool.request_stop(self);
        }
        self.timers.stop(TIMER_STOP_MIN);
    }
}
