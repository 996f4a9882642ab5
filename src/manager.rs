//! The engine behind a `QueueManager`: the queue registry and its settings, pushes, settling
//! runs (retry with backoff, or fail), worker pools, cron schedules, stats and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sync::{Mutex, RwLock};

use crate::backend::{Ack, Backend, QueueCounts, Retention, ScheduleRecord, Settlement, Totals};
use crate::backoff::Backoff;
use crate::error::{QueueError, Result};
use crate::job::{now, validate_queue_name, Job, JobId, JobOptions, JobState, Payload, Timestamp};
use crate::scheduler::{CronSchedule, TimerKey, Timers};
use crate::worker::{Executor, Pool, RunOutcome};

/// A queue's settings. Also the engine's defaults for queues nobody configured.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    pub concurrency: usize,
    /// Retries after the first run: a job runs at most `max_retries + 1` times by default.
    pub max_retries: u32,
    pub timeout: f64,
    pub backoff: Backoff,
    pub retention: Retention,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 5,
            max_retries: 3,
            timeout: 300.0,
            backoff: Backoff::Exponential {
                base: 1.0,
                cap: crate::backoff::DEFAULT_CAP,
                jitter: 0.0,
            },
            retention: Retention {
                ttl: 86_400.0,
                keep_completed: 10_000,
                keep_failed: 100_000,
            },
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<()> {
        check_concurrency(self.concurrency)?;
        crate::job::check_seconds("timeout", self.timeout)?;
        if self.timeout == 0.0 {
            return Err(QueueError::InvalidJob("timeout must be > 0 seconds".into()));
        }
        crate::job::check_seconds("ttl", self.retention.ttl)?;
        Ok(())
    }
}

/// The same schedule, whatever the layout of its JSON (a store may give it back with its keys
/// sorted and its spaces gone).
fn same_schedule(a: &ScheduleRecord, b: &ScheduleRecord) -> bool {
    fn json(bytes: &[u8]) -> Option<serde_json::Value> {
        serde_json::from_slice(bytes).ok()
    }
    let same_json = |x: &[u8], y: &[u8]| x == y || json(x).is_some_and(|v| Some(v) == json(y));
    a.id == b.id
        && a.name == b.name
        && a.queue == b.queue
        && a.cron == b.cron
        && a.priority == b.priority
        && a.attempts == b.attempts
        && a.timeout == b.timeout
        && a.tags == b.tags
        && same_json(&a.data, &b.data)
        && match (&a.metadata, &b.metadata) {
            (Some(x), Some(y)) => same_json(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// How often an engine on a shared backend looks for schedules other processes stored.
const SCHEDULE_RELOAD: f64 = 5.0;

/// Each sync slot is an OS thread with a Python thread state: keep their number sane.
pub const MAX_CONCURRENCY: usize = 1024;

fn check_concurrency(concurrency: usize) -> Result<()> {
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(QueueError::InvalidJob(format!(
            "concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency}"
        )));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub defaults: QueueConfig,
    pub max_job_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            defaults: QueueConfig::default(),
            max_job_bytes: 1 << 20,
        }
    }
}

struct QueueEntry {
    name: Arc<str>,
    config: RwLock<Arc<QueueConfig>>,
}

/// Queue stats as users see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Not started yet: waiting, delayed, or taken in a worker's batch but not begun.
    pub size: u64,
    /// Running right now in this process's workers.
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub waiting: u64,
    pub delayed: u64,
    pub paused: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub totals: Totals,
    pub active_workers: u64,
    pub queue_sizes: Vec<(String, u64)>,
}

/// A schedule as listed to users.
#[derive(Clone, Debug)]
pub struct ScheduleInfo {
    pub record: ScheduleRecord,
    pub next_run: Option<Timestamp>,
}

struct CronEntry {
    record: ScheduleRecord,
    cron: CronSchedule,
    next_run: Option<Timestamp>,
}

pub struct Engine {
    backend: Arc<dyn Backend>,
    options: EngineOptions,
    queues: RwLock<HashMap<Arc<str>, Arc<QueueEntry>>>,
    pools: Mutex<HashMap<Arc<str>, Arc<Pool>>>,
    schedules: Mutex<HashMap<Arc<str>, CronEntry>>,
    /// Held while schedules are declared, removed or reloaded, so that those never interleave.
    schedule_changes: Mutex<()>,
    timers: Arc<Timers>,
    closed: AtomicBool,
    /// Sync run deadlines are nanoseconds since this instant.
    epoch: Instant,
    /// The deadline (engine clock) the watchdog is set for; `u64::MAX`: not set.
    watchdog_at: AtomicU64,
    this: Weak<Engine>,
}

/// Why a push did not happen yet.
pub enum Pushed {
    Done(Vec<JobId>),
    /// Only with `may_block = false`: it would have had to wait for a lock. Nothing changed.
    WouldBlock,
}

impl Engine {
    pub fn new(backend: Arc<dyn Backend>, options: EngineOptions) -> Result<Arc<Engine>> {
        options.defaults.validate()?;
        let engine = Arc::new_cyclic(|this| Engine {
            backend,
            watchdog_at: AtomicU64::new(u64::MAX),
            options,
            queues: RwLock::new(HashMap::new()),
            pools: Mutex::new(HashMap::new()),
            schedules: Mutex::new(HashMap::new()),
            schedule_changes: Mutex::new(()),
            timers: Arc::new(Timers::default()),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            this: this.clone(),
        });
        engine.timers.start(Arc::downgrade(&engine));
        // Schedules kept by a persistent backend start ticking again (one this version cannot
        // parse, stored by another, stays stored and is skipped).
        for record in engine.backend.load_schedules()? {
            let _ = engine.install_schedule(record);
        }
        for name in engine.backend.queue_names()? {
            engine.ensure_queue(&name)?;
        }
        if engine.backend.shared() {
            engine
                .timers
                .arm(TimerKey::Schedules, now() + SCHEDULE_RELOAD);
        }
        Ok(engine)
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    pub fn defaults(&self) -> &QueueConfig {
        &self.options.defaults
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(QueueError::Closed)
        } else {
            Ok(())
        }
    }

    // ---- queues ------------------------------------------------------------------------------

    /// Creates a queue, or changes the settings of an existing one.
    pub fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        self.check_open()?;
        validate_queue_name(name)?;
        config.validate()?;
        let entry = self.ensure_queue(name)?;
        self.backend
            .declare_queue(&entry.name, config.retention, true)?;
        *entry.config.write() = Arc::new(config);
        Ok(())
    }

    /// The queue, created with the defaults if it does not exist.
    fn ensure_queue(&self, name: &str) -> Result<Arc<QueueEntry>> {
        if let Some(entry) = self.queues.read().get(name) {
            return Ok(entry.clone());
        }
        validate_queue_name(name)?;
        let name: Arc<str> = Arc::from(name);
        self.backend
            .declare_queue(&name, self.options.defaults.retention, false)?;
        let entry = self
            .queues
            .write()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(QueueEntry {
                    name: name.clone(),
                    config: RwLock::new(Arc::new(self.options.defaults.clone())),
                })
            })
            .clone();
        // Delayed jobs or retention a persistent backend already holds get their timer.
        self.timers.arm(TimerKey::Queue(name), now());
        Ok(entry)
    }

    pub fn declare_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.ensure_queue(name).map(|_| ())
    }

    pub fn queue_config(&self, name: &str) -> Result<QueueConfig> {
        self.check_open()?;
        validate_queue_name(name)?;
        let entry = self.queues.read().get(name).cloned();
        Ok(match entry {
            Some(entry) => (**entry.config.read()).clone(),
            None => self.options.defaults.clone(),
        })
    }

    /// Every queue's settings.
    pub fn queue_configs(&self) -> Result<Vec<(String, QueueConfig)>> {
        self.check_open()?;
        Ok(self
            .queues
            .read()
            .values()
            .map(|entry| (entry.name.to_string(), (**entry.config.read()).clone()))
            .collect())
    }

    fn config_of(&self, queue: &str) -> Arc<QueueConfig> {
        match self.queues.read().get(queue) {
            Some(entry) => entry.config.read().clone(),
            None => Arc::new(self.options.defaults.clone()),
        }
    }

    pub fn queue_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        self.backend.queue_names()
    }

    fn known_queue(&self, name: &str) -> Result<()> {
        validate_queue_name(name)?;
        if self.queues.read().contains_key(name) {
            return Ok(());
        }
        // Another process may have created it in a shared store.
        if self.backend.shared() && self.backend.queue_names()?.iter().any(|n| n == name) {
            return self.ensure_queue(name).map(|_| ());
        }
        Err(QueueError::Other(format!("queue {name:?} does not exist")))
    }

    pub fn pause_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.ensure_queue(name)?;
        self.backend.set_paused(name, true)
    }

    pub fn resume_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.ensure_queue(name)?;
        self.backend.set_paused(name, false)
    }

    pub fn clear_queue(&self, name: &str) -> Result<usize> {
        self.check_open()?;
        self.known_queue(name)?;
        self.backend.clear(name)
    }

    /// Stops the queue's workers (after their current job) and removes the queue and its jobs.
    pub fn delete_queue(&self, name: &str) -> Result<bool> {
        self.check_open()?;
        validate_queue_name(name)?;
        let pool = self.pools.lock().remove(name);
        if let Some(pool) = &pool {
            pool.request_stop(self);
        }
        self.queues.write().remove(name);
        self.timers.disarm(&TimerKey::Queue(Arc::from(name)));
        self.backend.delete(name)
    }

    pub fn queue_stats(&self, name: &str) -> Result<QueueStats> {
        self.check_open()?;
        self.known_queue(name)?;
        let counts = self.backend.counts(name)?;
        let running = self.pools.lock().get(name).map_or(0, |p| p.running()) as u64;
        Ok(self.stats_from(counts, running))
    }

    /// `running`: this process's runs. A shared store counts every process's runs as active.
    fn stats_from(&self, counts: QueueCounts, running: u64) -> QueueStats {
        let running = if self.backend.shared() {
            counts.active
        } else {
            running.min(counts.active)
        };
        QueueStats {
            size: counts.waiting + counts.delayed + (counts.active - running),
            processing: running,
            completed: counts.completed,
            failed: counts.failed,
            waiting: counts.waiting,
            delayed: counts.delayed,
            paused: counts.paused,
        }
    }

    pub fn stats(&self) -> Result<EngineStats> {
        self.check_open()?;
        let pools: Vec<(Arc<str>, Arc<Pool>)> = self
            .pools
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let running: HashMap<Arc<str>, u64> = pools
            .iter()
            .map(|(name, pool)| (name.clone(), pool.running() as u64))
            .collect();
        let mut queue_sizes = Vec::new();
        let mut active_workers = 0;
        for name in self.backend.queue_names()? {
            let counts = self.backend.counts(&name)?;
            let stats = self.stats_from(counts, running.get(name.as_str()).copied().unwrap_or(0));
            active_workers += stats.processing;
            queue_sizes.push((name, stats.size));
        }
        if !self.backend.shared() {
            active_workers = running.values().sum();
        }
        Ok(EngineStats {
            totals: self.backend.totals()?,
            active_workers,
            queue_sizes,
        })
    }

    // ---- jobs --------------------------------------------------------------------------------

    /// Validates and stores new jobs, all or none. With `may_block` false nothing waits for a
    /// lock: the caller gets `WouldBlock` and tries again where waiting is allowed.
    pub fn push(
        &self,
        queue: &str,
        specs: &[(Payload, JobOptions)],
        may_block: bool,
    ) -> Result<Pushed> {
        self.push_jobs(queue, specs, may_block, None)
    }

    /// `push`; with a cron tick, only if no process has pushed that tick yet.
    fn push_jobs(
        &self,
        queue: &str,
        specs: &[(Payload, JobOptions)],
        may_block: bool,
        tick: Option<(&str, Timestamp)>,
    ) -> Result<Pushed> {
        self.check_open()?;
        if !may_block && self.backend.shared() {
            // Every push to a shared store is a round trip: the caller lets go of Python first.
            validate_queue_name(queue)?;
            return Ok(Pushed::WouldBlock);
        }
        let entry = match self.queues.try_read() {
            Some(map) => map.get(queue).cloned(),
            None if may_block => self.queues.read().get(queue).cloned(),
            None => return Ok(Pushed::WouldBlock),
        };
        let entry = match entry {
            Some(entry) => entry,
            None if may_block => self.ensure_queue(queue)?,
            None => {
                validate_queue_name(queue)?;
                return Ok(Pushed::WouldBlock);
            }
        };
        let config = match entry.config.try_read() {
            Some(config) => config.clone(),
            None if may_block => entry.config.read().clone(),
            None => return Ok(Pushed::WouldBlock),
        };
        let mut jobs = Vec::with_capacity(specs.len());
        let mut earliest_due: Option<Timestamp> = None;
        let created_at = now();
        for (data, options) in specs {
            options.validate()?;
            let job = Job::created_at(
                created_at,
                entry.name.clone(),
                data.clone(),
                options.clone(),
                config.max_retries.saturating_add(1),
                config.timeout,
            );
            let size = job.encoded_len();
            if size > self.options.max_job_bytes {
                return Err(QueueError::JobTooLarge {
                    size,
                    limit: self.options.max_job_bytes,
                });
            }
            if job.state == JobState::Delayed {
                let due = job.due_at();
                earliest_due = Some(earliest_due.map_or(due, |e| e.min(due)));
            }
            jobs.push(job);
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        match tick {
            Some((schedule, at)) => {
                if !self
                    .backend
                    .push_tick(&entry.name, &mut jobs, schedule, at)?
                {
                    return Ok(Pushed::Done(Vec::new()));
                }
            }
            None => {
                if !self.backend.push(&entry.name, &mut jobs, may_block)? {
                    return Ok(Pushed::WouldBlock);
                }
            }
        }
        if let Some(due) = earliest_due {
            self.timers.arm(TimerKey::Queue(entry.name.clone()), due);
        }
        Ok(Pushed::Done(ids))
    }

    pub fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.check_open()?;
        self.backend.get_job(id)
    }

    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.check_open()?;
        validate_queue_name(queue)?;
        if !self.backend.shared() && !self.queues.read().contains_key(queue) {
            return Ok(Vec::new());
        }
        self.backend.list_jobs(queue, state, limit)
    }

    pub fn retry_job(&self, id: JobId) -> Result<bool> {
        self.check_open()?;
        self.backend.retry_failed(id)
    }

    pub fn wait_for_job(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
        self.check_open()?;
        self.backend.wait_finished(id, timeout)
    }

    pub fn join(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
        self.check_open()?;
        if let Some(name) = queue {
            validate_queue_name(name)?;
        }
        self.backend.wait_idle(queue, timeout)
    }

    // ---- running jobs ------------------------------------------------------------------------

    /// Starts workers for a queue. One handler per queue.
    pub fn process(
        &self,
        queue: &str,
        executor: Arc<dyn Executor>,
        concurrency: Option<usize>,
    ) -> Result<()> {
        self.check_open()?;
        let entry = self.ensure_queue(queue)?;
        let concurrency = concurrency.unwrap_or(entry.config.read().concurrency);
        check_concurrency(concurrency)?;
        let engine = self.this.upgrade().ok_or(QueueError::Closed)?;
        let mut pools = self.pools.lock();
        // `close` sets the flag under this lock: a pool is either seen by it or never started.
        self.check_open()?;
        if pools.contains_key(&entry.name) {
            return Err(QueueError::Other(format!(
                "queue {:?} already has a handler",
                &*entry.name
            )));
        }
        let pool = Pool::start(&engine, entry.name.clone(), executor, concurrency);
        pools.insert(entry.name.clone(), pool);
        Ok(())
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

    /// Decides what each finished run means for its job and records it.
    pub fn settle<'a>(&self, queue: &str, runs: impl IntoIterator<Item = (&'a Job, RunOutcome)>) {
        let mut runs = runs.into_iter().peekable();
        if runs.peek().is_none() {
            return;
        }
        let config = self.config_of(queue);
        let at = now();
        let acks = runs
            .map(|(job, outcome)| {
                let settlement = match outcome {
                    RunOutcome::Success(result) => Settlement::Completed { result },
                    RunOutcome::Failure { error, traceback } => {
                        Self::failure(&config, job, at, error, traceback)
                    }
                    RunOutcome::TimedOut => {
                        let limit = job.timeout;
                        let error = format!("TimeoutError: job timed out after {limit}s");
                        Self::failure(&config, job, at, error, None)
                    }
                };
                Ack {
                    id: job.id,
                    attempt: job.attempts,
                    at,
                    settlement,
                }
            })
            .collect();
        if let Ok(Some(due)) = self.backend.settle(queue, acks) {
            self.timers.arm(TimerKey::Queue(Arc::from(queue)), due);
        }
    }

    fn failure(
        config: &QueueConfig,
        job: &Job,
        at: Timestamp,
        error: String,
        traceback: Option<String>,
    ) -> Settlement {
        if job.attempts < job.max_attempts {
            Settlement::Retry {
                due: at + config.backoff.delay(job.attempts),
                error,
                traceback,
            }
        } else {
            Settlement::Failed { error, traceback }
        }
    }

    pub fn release(&self, queue: &str, jobs: &[Job]) {
        let _ = self.backend.release(queue, jobs);
    }

    /// A worker's fetch failed. Returns whether it should keep going (after a pause).
    pub fn backend_failed(&self, queue: &str, error: &QueueError) -> bool {
        match error {
            QueueError::Backend(_) if !self.is_closed() => {
                // Back off instead of spinning while the backend is down.
                std::thread::sleep(Duration::from_millis(500));
                self.queues.read().contains_key(queue)
            }
            _ => false,
        }
    }

    pub fn on_timer(&self, key: &TimerKey) {
        if self.is_closed() {
            return;
        }
        match key {
            TimerKey::Queue(queue) => {
                if !self.queues.read().contains_key(queue) {
                    return;
                }
                match self.backend.tick(queue, now()) {
                    Ok(Some(next)) => self.timers.arm(key.clone(), next),
                    Ok(None) => {}
                    // Backend down: try again shortly.
                    Err(_) => self.timers.arm(key.clone(), now() + 1.0),
                }
            }
            TimerKey::Cron(id) => self.fire_schedule(id),
            TimerKey::Watchdog => self.check_timeouts(),
            TimerKey::Schedules => {
                self.reload_schedules();
                self.timers
                    .arm(TimerKey::Schedules, now() + SCHEDULE_RELOAD);
            }
            TimerKey::Settle(queue) => {
                let pool = self.pools.lock().get(queue).cloned();
                if let Some(wait) = pool.and_then(|p| p.settle_stalled(self, self.clock())) {
                    self.settle_later(queue, wait);
                }
            }
        }
    }

    /// Makes sure the watchdog wakes by `deadline` (engine clock). Called as each sync run
    /// begins; costs an atomic load unless this deadline is the earliest.
    pub fn watch_deadline(&self, deadline: u64) {
        if deadline < self.watchdog_at.load(Ordering::Acquire)
            && deadline < self.watchdog_at.fetch_min(deadline, Ordering::AcqRel)
        {
            let wait = deadline.saturating_sub(self.clock()) as f64 / 1e9;
            self.timers.arm(TimerKey::Watchdog, now() + wait);
        }
    }

    fn check_timeouts(&self) {
        let Some(engine) = self.this.upgrade() else {
            return;
        };
        // Runs that begin from now on set the watchdog themselves.
        self.watchdog_at.store(u64::MAX, Ordering::Release);
        let pools: Vec<Arc<Pool>> = self.pools.lock().values().cloned().collect();
        let now_ns = self.clock();
        let earliest = pools
            .iter()
            .filter_map(|pool| pool.check_timeouts(&engine, now_ns))
            .min();
        if let Some(deadline) = earliest {
            self.watch_deadline(deadline);
        }
    }

    // ---- cron --------------------------------------------------------------------------------

    /// Declares a cron schedule; declaring the same one again changes nothing.
    pub fn schedule(&self, record: ScheduleRecord) -> Result<Arc<str>> {
        self.check_open()?;
        validate_queue_name(&record.queue)?;
        CronSchedule::parse(&record.cron)?;
        self.ensure_queue(&record.queue)?;
        let id = record.id.clone();
        let _changing = self.schedule_changes.lock();
        if let Some(existing) = self.schedules.lock().get(&id) {
            if same_schedule(&existing.record, &record) {
                return Ok(id);
            }
        }
        self.backend.save_schedule(&record)?;
        self.install_schedule(record)?;
        Ok(id)
    }

    /// Installs the schedules another process stored since this one started or last looked
    /// (one declared by a deploy script, say), so that they fire here too.
    /// Drops those another process removed (they would otherwise stay listed until their next
    /// tick, a year for a yearly one).
    fn reload_schedules(&self) {
        // Not interleaved with this process's own declarations.
        let _changing = self.schedule_changes.lock();
        let Ok(records) = self.backend.load_schedules() else {
            return;
        };
        let stored: std::collections::HashSet<Arc<str>> =
            records.iter().map(|r| r.id.clone()).collect();
        let gone: Vec<Arc<str>> = self
            .schedules
            .lock()
            .keys()
            .filter(|id| !stored.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.schedules.lock().remove(&id);
            self.timers.disarm(&TimerKey::Cron(id));
        }
        for record in records {
            let known = self
                .schedules
                .lock()
                .get(&record.id)
                .is_some_and(|entry| same_schedule(&entry.record, &record));
            if !known {
                // One that does not parse was stored by a newer version: it stays stored.
                let _ = self.install_schedule(record);
            }
        }
    }

    fn install_schedule(&self, record: ScheduleRecord) -> Result<()> {
        let cron = CronSchedule::parse(&record.cron)?;
        let next_run = cron.next_after(now());
        let id = record.id.clone();
        self.schedules.lock().insert(
            id.clone(),
            CronEntry {
                record,
                cron,
                next_run,
            },
        );
        if let Some(at) = next_run {
            self.timers.disarm(&TimerKey::Cron(id.clone()));
            self.timers.arm(TimerKey::Cron(id), at);
        }
        Ok(())
    }

    pub fn unschedule(&self, id: &str) -> Result<bool> {
        self.check_open()?;
        let _changing = self.schedule_changes.lock();
        let known = self.schedules.lock().remove(id).is_some();
        self.timers.disarm(&TimerKey::Cron(Arc::from(id)));
        let stored = self.backend.remove_schedule(id)?;
        Ok(known || stored)
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        self.check_open()?;
        let mut list: Vec<ScheduleInfo> = self
            .schedules
            .lock()
            .values()
            .map(|e| ScheduleInfo {
                record: e.record.clone(),
                next_run: e.next_run,
            })
            .collect();
        list.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(list)
    }

    fn fire_schedule(&self, id: &Arc<str>) {
        let (record, tick, next) = {
            let mut schedules = self.schedules.lock();
            let Some(entry) = schedules.get_mut(id) else {
                return;
            };
            let Some(tick) = entry.next_run else {
                return;
            };
            if tick > now() {
                // Woken early (a re-declared schedule): keep waiting.
                self.timers.arm(TimerKey::Cron(id.clone()), tick);
                return;
            }
            // Ticks missed while nothing ran are skipped: the next run is the next future tick.
            entry.next_run = entry.cron.next_after(now().max(tick));
            (entry.record.clone(), tick, entry.next_run)
        };
        if self.backend.shared() && matches!(self.backend.has_schedule(id), Ok(false)) {
            // Unscheduled by another process: stop firing it here too (unless this process
            // declared it again meanwhile).
            let mut schedules = self.schedules.lock();
            if schedules.get(id).is_some_and(|e| e.record == record) {
                schedules.remove(id);
            }
            return;
        }
        if let Some(next) = next {
            self.timers.arm(TimerKey::Cron(id.clone()), next);
        }
        let options = JobOptions {
            priority: record.priority,
            scheduled_at: Some(tick),
            attempts: record.attempts,
            timeout: record.timeout,
            tags: record.tags.clone(),
            metadata: record.metadata.clone(),
            schedule_id: Some(record.id.clone()),
            ..JobOptions::default()
        };
        // The tick is claimed and its job stored in one step: one run per tick, whichever
        // process gets there first.
        let _ = self.push_jobs(
            &record.queue,
            &[(record.data.clone(), options)],
            true,
            Some((id, tick)),
        );
    }

    // ---- shutdown ----------------------------------------------------------------------------

    /// Stops taking jobs and waits up to `timeout` for running ones. True if all finished.
    /// Called again, it waits again for workers that had not finished.
    pub fn close(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let pools: Vec<Arc<Pool>> = {
            let pools = self.pools.lock();
            self.closed.store(true, Ordering::Release);
            pools.values().cloned().collect()
        };
        for pool in &pools {
            pool.request_stop(self);
        }
        let finished = pools.iter().all(|pool| pool.wait_stopped(deadline));
        if finished {
            self.pools.lock().clear();
        }
        self.timers.stop();
        // Only now: leases stay renewed while running jobs finish.
        self.backend.close();
        finished
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        for pool in self.pools.lock().values() {
            pool.request_stop(self);
        }
        self.timers.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::worker::{Completion, Session};
    use std::sync::atomic::AtomicUsize;

    type Handler = dyn Fn(&Job) -> RunOutcome + Send + Sync;

    /// Runs handlers as plain Rust closures on the worker threads.
    struct ClosureExecutor(Arc<Handler>);

    struct ClosureSession(Arc<Handler>);

    impl Executor for ClosureExecutor {
        fn is_async(&self) -> bool {
            false
        }
        fn enter(&self, body: &mut dyn FnMut(&mut dyn Session)) {
            body(&mut ClosureSession(self.0.clone()));
        }
    }

    impl Session for ClosureSession {
        fn unlocked(&mut self, f: &mut (dyn FnMut() + Send)) {
            f();
        }
        fn run(&mut self, job: &Job) -> RunOutcome {
            (self.0)(job)
        }
        fn submit(&mut self, _jobs: Vec<(Job, Completion)>) {
            unreachable!("sync executor")
        }
    }

    /// A door handlers block on until the test opens it.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: crate::sync::Condvar,
    }

    impl Gate {
        fn wait(&self) {
            let mut open = self.open.lock();
            while !*open {
                open = self.opened.wait(open);
            }
        }

        fn open(&self) {
            *self.open.lock() = true;
            self.opened.notify_all();
        }
    }

    fn engine() -> Arc<Engine> {
        Engine::new(Arc::new(MemoryBackend::new()), EngineOptions::default()).unwrap()
    }

    fn config(concurrency: usize, max_retries: u32, timeout: f64) -> QueueConfig {
        QueueConfig {
            concurrency,
            max_retries,
            timeout,
            backoff: Backoff::Fixed { delay: 0.01 },
            ..QueueConfig::default()
        }
    }

    fn push(engine: &Engine, queue: &str, data: &str, options: JobOptions) -> JobId {
        let spec = (Payload::from(data.as_bytes()), options);
        match engine.push(queue, &[spec], true).unwrap() {
            Pushed::Done(ids) => ids[0],
            Pushed::WouldBlock => unreachable!(),
        }
    }

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    fn error_of(job: &Job) -> &str {
        job.extras()
            .and_then(|e| e.error.as_deref())
            .expect("the job has an error")
    }

    #[test]
    fn failing_jobs_retry_then_fail_then_retry_on_request() {
        let engine = engine();
        engine.create_queue("q", config(1, 2, 10.0)).unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
            counter.fetch_add(1, Ordering::SeqCst);
            RunOutcome::Failure {
                error: "ValueError: boom".into(),
                traceback: None,
            }
        });
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        let id = push(&engine, "q", "1", JobOptions::default());
        let job = engine.wait_for_job(id, WAIT).unwrap().expect("finished");
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.attempts, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            job.extras().unwrap().error.as_deref(),
            Some("ValueError: boom")
        );
        let totals = engine.stats().unwrap().totals;
        assert_eq!((totals.failed, totals.retried), (1, 2));
        assert!(engine.retry_job(id).unwrap());
        // Wait for the second round to fail again.
        assert!(engine.join(Some("q"), WAIT).unwrap());
        assert_eq!(runs.load(Ordering::SeqCst), 6);
        assert!(engine.close(Duration::from_secs(5)));
    }

    #[test]
    fn sync_runs_past_their_timeout_are_abandoned_and_replaced() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 0.2)).unwrap();
        let release = Arc::new(Gate::default());
        let gate = release.clone();
        let handler: Arc<Handler> = Arc::new(move |job: &Job| {
            if &*job.data == b"\"stuck\"" {
                gate.wait();
            }
            RunOutcome::Success(None)
        });
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        let stuck = push(&engine, "q", "\"stuck\"", JobOptions::default());
        let job = engine.wait_for_job(stuck, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(error_of(&job).contains("timed out"));
        // The only slot is stuck, yet a replacement worker runs the next job.
        let next = push(&engine, "q", "\"fine\"", JobOptions::default());
        let job = engine.wait_for_job(next, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        release.open();
        // The late result of the abandoned run changes nothing.
        assert!(engine.close(Duration::from_secs(5)));
        assert_eq!(
            engine.backend().get_job(stuck).unwrap().unwrap().state,
            JobState::Failed
        );
    }

    #[test]
    fn stuck_threads_are_replaced_at_most_concurrency_times() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 0.1)).unwrap();
        let gate = Arc::new(Gate::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let (g, n) = (gate.clone(), inside.clone());
        let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
            n.fetch_add(1, Ordering::SeqCst);
            g.wait();
            RunOutcome::Success(None)
        });
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        let first = push(&engine, "q", "1", JobOptions::default());
        let second = push(&engine, "q", "2", JobOptions::default());
        let third = push(&engine, "q", "3", JobOptions::default());
        for id in [first, second] {
            let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
            assert_eq!(job.state, JobState::Failed, "timed out");
        }
        // One replacement for the first stuck thread, none for the second (concurrency 1).
        assert_eq!(inside.load(Ordering::SeqCst), 2);
        let waiting = engine.backend().get_job(third).unwrap().unwrap();
        assert_ne!(waiting.state, JobState::Completed);
        // When the stuck handlers return, one thread takes the owed place and runs the job.
        gate.open();
        let job = engine.wait_for_job(third, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        assert!(engine.close(Duration::from_secs(5)));
    }

    #[test]
    fn concurrency_is_reached_and_never_exceeded() {
        let engine = engine();
        engine.create_queue("q", config(4, 0, 10.0)).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            r.fetch_sub(1, Ordering::SeqCst);
            RunOutcome::Success(None)
        });
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        for i in 0..40 {
            push(&engine, "q", &i.to_string(), JobOptions::default());
        }
        assert!(engine.join(Some("q"), WAIT).unwrap());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        assert_eq!(engine.queue_stats("q").unwrap().completed, 40);
        assert!(engine.close(Duration::from_secs(5)));
    }

    #[test]
    fn delayed_jobs_run_on_time() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 10.0)).unwrap();
        let handler: Arc<Handler> = Arc::new(|_job: &Job| RunOutcome::Success(None));
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        let options = JobOptions {
            delay: 0.2,
            ..JobOptions::default()
        };
        let id = push(&engine, "q", "1", options);
        let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
        let started = job.started_at.get().unwrap();
        let due = job.due_at();
        assert!(started >= due, "started {started} before due {due}");
        assert!(started - due < 0.5, "started {:.3}s late", started - due);
        assert!(engine.close(Duration::from_secs(5)));
    }

    #[test]
    fn panics_in_handlers_fail_the_job() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 10.0)).unwrap();
        let handler: Arc<Handler> = Arc::new(|_job: &Job| panic!("handler bug"));
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None)
            .unwrap();
        let id = push(&engine, "q", "1", JobOptions::default());
        let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(error_of(&job).contains("handler bug"));
        assert!(engine.close(Duration::from_secs(5)));
    }

    #[test]
    fn closed_engines_refuse_work() {
        let engine = engine();
        assert!(engine.close(Duration::from_secs(1)));
        let spec = (Payload::from(&b"1"[..]), JobOptions::default());
        assert!(matches!(
            engine.push("q", &[spec], true),
            Err(QueueError::Closed)
        ));
    }
}
