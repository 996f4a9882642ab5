//! The engine behind a `QueueManager`: the queue registry and its settings, pushes, settling
//! runs (retry with backoff, or fail), worker pools, cron schedules, stats and shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::sync::{Mutex, RwLock};

use crate::backend::{
    Ack, Backend, QueueCounts, QueueDeclaration, Retention, ScheduleRecord, Settlement, Totals,
};
use crate::backoff::{Backoff, BackoffSpec};
use crate::error::{QueueError, Result};
use crate::job::{
    check_setting_seconds, now, validate_queue_name, Job, JobId, JobOptions, JobState, Payload,
    Timestamp,
};
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

/// A queue's settings as the store keeps them (JSON), so that processes that did not declare
/// the queue use them. A function backoff cannot be stored: others see its `retry_delay`.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredSettings {
    concurrency: Option<usize>,
    max_retries: Option<u32>,
    timeout: Option<f64>,
    backoff: Option<String>,
    retry_delay: Option<f64>,
    backoff_cap: Option<f64>,
    jitter: Option<f64>,
    custom_delays: Option<Vec<f64>>,
}

impl QueueConfig {
    pub fn validate(&self) -> Result<()> {
        check_concurrency(self.concurrency)?;
        check_setting_seconds("timeout", self.timeout)?;
        if self.timeout == 0.0 {
            return Err(QueueError::config("timeout must be > 0 seconds"));
        }
        check_setting_seconds("ttl", self.retention.ttl)?;
        Ok(())
    }

    /// The declaration a backend stores for this queue.
    pub fn declaration(&self) -> QueueDeclaration {
        let (cap, jitter, custom) = match &self.backoff {
            Backoff::Exponential { cap, jitter, .. } => (Some(*cap), Some(*jitter), None),
            Backoff::Custom { delays } => (None, None, Some(delays.clone())),
            _ => (None, None, None),
        };
        let kind = match &self.backoff {
            Backoff::Function { .. } => "fixed",
            other => other.kind(),
        };
        let stored = StoredSettings {
            concurrency: Some(self.concurrency),
            max_retries: Some(self.max_retries),
            timeout: Some(self.timeout),
            backoff: Some(kind.into()),
            retry_delay: Some(self.backoff.base()),
            backoff_cap: cap,
            jitter,
            custom_delays: custom,
        };
        QueueDeclaration {
            retention: self.retention,
            settings: Payload::from(serde_json::to_vec(&stored).unwrap_or_default()),
        }
    }

    /// The settings a store holds, completed with `defaults` where it says nothing (or says
    /// something this version cannot read).
    pub fn from_declaration(declaration: &QueueDeclaration, defaults: &QueueConfig) -> Self {
        let stored: StoredSettings =
            serde_json::from_slice(&declaration.settings).unwrap_or_else(|error| {
                if !declaration.settings.is_empty() {
                    log::warn!(
                        target: "rnode_queue",
                        "stored queue settings cannot be read ({error}); using the defaults"
                    );
                }
                StoredSettings::default()
            });
        let backoff = match stored.backoff {
            Some(kind) => Backoff::parse(BackoffSpec {
                kind,
                base: stored.retry_delay.unwrap_or(defaults.backoff.base()),
                cap: stored.backoff_cap,
                jitter: stored.jitter,
                custom: stored.custom_delays,
                function: None,
            })
            .unwrap_or_else(|_| defaults.backoff.clone()),
            None => defaults.backoff.clone(),
        };
        let config = QueueConfig {
            concurrency: stored.concurrency.unwrap_or(defaults.concurrency),
            max_retries: stored.max_retries.unwrap_or(defaults.max_retries),
            timeout: stored.timeout.unwrap_or(defaults.timeout),
            backoff,
            retention: declaration.retention,
        };
        if config.validate().is_ok() {
            config
        } else {
            QueueConfig {
                retention: declaration.retention,
                ..defaults.clone()
            }
        }
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

/// A schedule's id when it has no name: the same queue, cron and data give the same id, so that
/// every process can declare its schedules at start-up.
pub fn schedule_id(queue: &str, cron: &str, data: &[u8]) -> String {
    // Key order must not matter: hash the data with its keys sorted.
    let canonical = serde_json::from_slice::<serde_json::Value>(data)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_else(|_| data.to_vec());
    let mut key = Vec::with_capacity(queue.len() + cron.len() + canonical.len() + 2);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key.extend_from_slice(
        cron.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_bytes(),
    );
    key.push(0);
    key.extend_from_slice(&canonical);
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &key).to_string()
}

/// How often an engine on a shared backend looks for schedules other processes stored and
/// re-reads the settings of the queues it did not declare.
const RELOAD_EVERY: f64 = 5.0;

/// Each sync slot is an OS thread with a Python thread state: keep their number sane.
pub const MAX_CONCURRENCY: usize = 1024;

/// Error texts and tracebacks longer than this are cut (a handler's exception can carry
/// megabytes; every attempt stores it).
const MAX_ERROR_TEXT: usize = 64 * 1024;

/// `close` gives the timer thread at least this long to stop (it may be in a backend call).
const TIMER_STOP_MIN: Duration = Duration::from_millis(100);

/// A failed cron tick's push is tried again after this, doubling up to `CRON_RETRY_MAX`, until
/// the next tick is due.
const CRON_RETRY_FIRST: f64 = 0.25;
const CRON_RETRY_MAX: f64 = 5.0;

fn check_concurrency(concurrency: usize) -> Result<()> {
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(QueueError::config(format!(
            "concurrency must be from 1 to {MAX_CONCURRENCY}, got {concurrency}"
        )));
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub defaults: QueueConfig,
    /// The largest job (data, tags, metadata, queue name) and the largest result accepted.
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
    /// `create_queue` ran in this process: its settings win here over the stored ones.
    declared_here: AtomicBool,
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

/// A failed tick waiting to be pushed again.
#[derive(Clone, Copy, Debug)]
struct TickRetry {
    tick: Timestamp,
    failures: u32,
}

struct CronEntry {
    record: ScheduleRecord,
    cron: CronSchedule,
    next_run: Option<Timestamp>,
    retry: Option<TickRetry>,
}

/// What `close` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloseReport {
    /// Every running handler finished within the timeout.
    pub finished: bool,
    /// Runs still going at the timeout, handed back to the store (queue, job id): they run
    /// again elsewhere.
    pub handed_back: Vec<(Arc<str>, JobId)>,
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

/// Cuts `text` to at most `MAX_ERROR_TEXT` bytes (at a character boundary), saying so.
fn bounded_text(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!("\n... (cut: {total} bytes in all)"));
    }
    text
}

impl Engine {
    pub fn new(backend: Arc<dyn Backend>, options: EngineOptions) -> Result<Arc<Engine>> {
        options.defaults.validate()?;
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
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            this: this.clone(),
        });
        engine.timers.start(Arc::downgrade(&engine));
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

    /// Creates a queue, or changes the settings of an existing one (stored with the queue, for
    /// the processes that did not declare it).
    pub fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        self.check_open()?;
        validate_queue_name(name)?;
        config.validate()?;
        let entry = {
            let name: Arc<str> = Arc::from(name);
            self.backend
                .declare_queue(&name, &config.declaration(), true)?;
            let _changing = self.queue_changes.lock();
            let entry = self.insert_entry(&name, config.clone());
            *entry.config.write() = Arc::new(config);
            entry.declared_here.store(true, Ordering::Release);
            entry
        };
        self.settings_changed(&entry);
        Ok(())
    }

    /// The queue's record in this process, added with `config` if missing.
    fn insert_entry(&self, name: &Arc<str>, config: QueueConfig) -> Arc<QueueEntry> {
        let entry = self
            .queues
            .write()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(QueueEntry {
                    name: name.clone(),
                    config: RwLock::new(Arc::new(config)),
                    declared_here: AtomicBool::new(false),
                })
            })
            .clone();
        // Delayed jobs or retention a persistent backend already holds get their timer.
        self.timers.arm(TimerKey::Queue(name.clone()), now());
        entry
    }

    /// The queue, created with the defaults if it does not exist (with the stored settings if
    /// another process declared it).
    fn ensure_queue(&self, name: &str) -> Result<Arc<QueueEntry>> {
        if let Some(entry) = self.queues.read().get(name) {
            return Ok(entry.clone());
        }
        validate_queue_name(name)?;
        let name: Arc<str> = Arc::from(name);
        let defaults = &self.options.defaults;
        // Two first uses at once both declare it: declaring an existing queue changes nothing.
        let stored = self
            .backend
            .declare_queue(&name, &defaults.declaration(), false)?;
        let _changing = self.queue_changes.lock();
        Ok(self.insert_entry(&name, QueueConfig::from_declaration(&stored, defaults)))
    }

    /// Declares the queue again after it vanished from the store (deleted, maybe by another
    /// process, while this one still used it), with the settings this process has for it.
    fn redeclare(&self, entry: &Arc<QueueEntry>) -> Result<()> {
        let config = entry.config.read().clone();
        let here = entry.declared_here.load(Ordering::Acquire);
        self.backend
            .declare_queue(&entry.name, &config.declaration(), here)?;
        let _changing = self.queue_changes.lock();
        self.queues
            .write()
            .entry(entry.name.clone())
            .or_insert_with(|| entry.clone());
        Ok(())
    }

    pub fn declare_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.ensure_queue(name).map(|_| ())
    }

    /// `declare_queue` without waiting for the store (for callers on an event loop): the queue
    /// is known here at once with the defaults, and declared by the timer thread, which then
    /// takes the stored settings.
    pub fn declare_queue_later(&self, name: &str) -> Result<()> {
        self.check_open()?;
        validate_queue_name(name)?;
        if self.queues.read().contains_key(name) {
            return Ok(());
        }
        let name: Arc<str> = Arc::from(name);
        self.insert_entry(&name, self.options.defaults.clone());
        self.timers.arm(TimerKey::Declare(name), now());
        Ok(())
    }

    fn declare_in_background(&self, name: &Arc<str>) {
        let entry = self.queues.read().get(name).cloned();
        let Some(entry) = entry else { return };
        if entry.declared_here.load(Ordering::Acquire) {
            return;
        }
        let defaults = &self.options.defaults;
        match self
            .backend
            .declare_queue(name, &defaults.declaration(), false)
        {
            Ok(stored) => {
                *entry.config.write() = Arc::new(QueueConfig::from_declaration(&stored, defaults));
                self.settings_changed(&entry);
            }
            Err(error) => {
                log::warn!(
                    target: "rnode_queue",
                    "queue {:?} could not be declared ({error}); trying again in 1 s",
                    &**name
                );
                self.timers
                    .arm(TimerKey::Declare(name.clone()), now() + 1.0);
            }
        }
    }

    /// A queue's settings changed: its workers follow the new concurrency.
    fn settings_changed(&self, entry: &QueueEntry) {
        let pool = self.pools.lock().get(&entry.name).cloned();
        if let (Some(pool), Some(engine)) = (pool, self.this.upgrade()) {
            let concurrency = entry.config.read().concurrency;
            if pool.concurrency() != concurrency {
                pool.resize(&engine, concurrency);
            }
        }
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

    /// Every queue's settings, and whether this process declared it (`create_queue`).
    pub fn queue_configs(&self) -> Result<Vec<(String, QueueConfig, bool)>> {
        self.check_open()?;
        Ok(self
            .queues
            .read()
            .values()
            .map(|entry| {
                let config = (**entry.config.read()).clone();
                let here = entry.declared_here.load(Ordering::Acquire);
                (entry.name.to_string(), config, here)
            })
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

    /// A clear error for a queue that exists nowhere.
    fn known_queue(&self, name: &str) -> Result<()> {
        validate_queue_name(name)?;
        if self.queues.read().contains_key(name) {
            return Ok(());
        }
        // Another process may have created it in a shared store.
        if self.backend.shared() && self.backend.queue_names()?.iter().any(|n| n == name) {
            return Ok(());
        }
        Err(QueueError::UnknownQueue(name.to_string()))
    }

    pub fn pause_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let entry = self.ensure_queue(name)?;
        self.with_queue(&entry, || self.backend.set_paused(name, true))
    }

    pub fn resume_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let entry = self.ensure_queue(name)?;
        self.with_queue(&entry, || self.backend.set_paused(name, false))
    }

    /// Runs `op` on the queue, declaring it again first if it vanished meanwhile.
    fn with_queue<T>(&self, entry: &Arc<QueueEntry>, op: impl Fn() -> Result<T>) -> Result<T> {
        match op() {
            Err(QueueError::UnknownQueue(_)) => {
                self.redeclare(entry)?;
                op()
            }
            other => other,
        }
    }

    pub fn clear_queue(&self, name: &str) -> Result<usize> {
        self.check_open()?;
        self.known_queue(name)?;
        match self.backend.clear(name) {
            // Deleted since: nothing left to clear.
            Err(QueueError::UnknownQueue(_)) => Ok(0),
            other => other,
        }
    }

    /// Stops the queue's workers (after their current job) and removes the queue and its jobs.
    pub fn delete_queue(&self, name: &str) -> Result<bool> {
        self.check_open()?;
        validate_queue_name(name)?;
        let pool = {
            let _changing = self.queue_changes.lock();
            self.queues.write().remove(name);
            self.timers.disarm(&TimerKey::Queue(Arc::from(name)));
            self.pools.lock().remove(name)
        };
        if let Some(pool) = &pool {
            pool.request_stop(self);
        }
        self.backend.delete(name)
    }

    /// A queue's stats; a queue that does not exist (deleted, maybe while this ran) holds
    /// nothing.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats> {
        self.check_open()?;
        validate_queue_name(name)?;
        let counts = match self.backend.counts(name) {
            Err(QueueError::UnknownQueue(_)) => QueueCounts::default(),
            other => other?,
        };
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
        let running: HashMap<Arc<str>, u64> = self
            .pools
            .lock()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.running() as u64))
            .collect();
        let names = self.backend.queue_names()?;
        let all_counts = self.backend.counts_of(&names)?;
        let mut queue_sizes = Vec::with_capacity(names.len());
        let mut active_workers = 0;
        for (name, counts) in names.into_iter().zip(all_counts) {
            // A queue deleted while this ran is left out.
            let Some(counts) = counts else { continue };
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
            self.check_size(&job)?;
            if job.state == JobState::Delayed {
                let due = job.due_at();
                earliest_due = Some(earliest_due.map_or(due, |e| e.min(due)));
            }
            jobs.push(job);
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        // A queue deleted meanwhile (here or by another process) is created again by the
        // backend, in the same step, with the settings this process has for it.
        let declare = || config.declaration();
        let pushed = match tick {
            Some((schedule, at)) => {
                let pushed =
                    self.backend
                        .push_tick(&entry.name, &mut jobs, schedule, at, &declare)?;
                Pushed::Done(if pushed { ids } else { Vec::new() })
            }
            None => {
                if !self
                    .backend
                    .push(&entry.name, &mut jobs, may_block, &declare)?
                {
                    return Ok(Pushed::WouldBlock);
                }
                Pushed::Done(ids)
            }
        };
        if let Some(due) = earliest_due {
            self.timers.arm(TimerKey::Queue(entry.name.clone()), due);
        }
        Ok(pushed)
    }

    fn check_size(&self, job: &Job) -> Result<()> {
        let size = job.encoded_len();
        if size > self.options.max_job_bytes {
            return Err(QueueError::JobTooLarge {
                size,
                limit: self.options.max_job_bytes,
            });
        }
        Ok(())
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
        match self.backend.list_jobs(queue, state, limit) {
            // Deleted meanwhile: it holds no jobs.
            Err(QueueError::UnknownQueue(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    pub fn retry_job(&self, id: JobId) -> Result<bool> {
        self.check_open()?;
        self.backend.retry_failed(id)
    }

    /// Waits until the job is completed or finally failed: `Some(job)`, or `None` when the
    /// timeout passed first. An id no backend holds is `JobNotFound`.
    pub fn wait_for_job(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
        self.check_open()?;
        match self.backend.wait_finished(id, timeout)? {
            Some(job) => Ok(Some(job)),
            None if self.backend.get_job(id)?.is_none() => Err(QueueError::JobNotFound(format!(
                "no job with id {id} (unknown, or no longer retained)"
            ))),
            None => Ok(None),
        }
    }

    pub fn join(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
        self.check_open()?;
        if let Some(name) = queue {
            validate_queue_name(name)?;
        }
        self.backend.wait_idle(queue, timeout)
    }

    // ---- running jobs ------------------------------------------------------------------------

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
        let engine = self.this.upgrade().ok_or(QueueError::Closed)?;
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
            &engine,
            entry.name.clone(),
            executor,
            slots,
            concurrency.is_some(),
        );
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
        let limit = self.options.max_job_bytes;
        let acks: Vec<Ack> = runs
            .map(|(job, outcome)| {
                let settlement = match outcome {
                    RunOutcome::Success(Some(result)) if result.len() > limit => {
                        let error = format!(
                            "JobTooLargeError: the handler's result is {} bytes, more than \
                             max_job_bytes ({limit}); it was not stored",
                            result.len()
                        );
                        Self::failure(&config, job, at, error, None)
                    }
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
        let count = acks.len();
        match self.backend.settle(queue, acks) {
            Ok(Some(due)) => self.timers.arm(TimerKey::Queue(Arc::from(queue)), due),
            Ok(None) => {}
            Err(error) => log::error!(
                target: "rnode_queue",
                "the results of {count} run(s) of queue {queue:?} could not be recorded \
                 ({error}); those jobs run again once their lease expires"
            ),
        }
    }

    fn failure(
        config: &QueueConfig,
        job: &Job,
        at: Timestamp,
        error: String,
        traceback: Option<String>,
    ) -> Settlement {
        let error = bounded_text(error);
        let traceback = traceback.map(bounded_text);
        if job.attempts < job.max_attempts {
            Settlement::Retry {
                due: at + config.backoff.delay(job.attempts, &error),
                error,
                traceback,
            }
        } else {
            Settlement::Failed { error, traceback }
        }
    }

    pub fn release(&self, queue: &str, jobs: &[Job]) {
        if let Err(error) = self.backend.release(queue, jobs) {
            log::warn!(
                target: "rnode_queue",
                "{} unstarted job(s) of queue {queue:?} could not be handed back ({error}); \
                 they run again once their lease expires",
                jobs.len()
            );
        }
    }

    /// Reports runs that started after their fetch (see `Backend::mark_started`).
    pub fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]) {
        if let Err(error) = self.backend.mark_started(queue, runs) {
            log::debug!(
                target: "rnode_queue",
                "could not note that {} run(s) of queue {queue:?} started: {error}",
                runs.len()
            );
        }
    }

    /// A worker's fetch failed. Returns whether it should keep going (after a pause).
    pub fn backend_failed(&self, queue: &str, error: &QueueError) -> bool {
        if self.is_closed() {
            return false;
        }
        let registered = || self.pools.lock().contains_key(queue);
        match error {
            QueueError::Backend(_) | QueueError::Indeterminate(_) => {
                log::warn!(
                    target: "rnode_queue",
                    "workers of queue {queue:?} cannot fetch jobs ({error}); retrying in 0.5 s"
                );
                // Back off instead of spinning while the backend is down.
                std::thread::sleep(Duration::from_millis(500));
                registered()
            }
            // Deleted while its workers ran (by another process): declared again, they go on.
            QueueError::UnknownQueue(_) if registered() => {
                let entry = self.queues.read().get(queue).cloned();
                match entry {
                    Some(entry) => self.redeclare(&entry).is_ok(),
                    None => false,
                }
            }
            _ => false,
        }
    }

    pub fn on_timer(&self, key: &TimerKey) {
        if self.is_closed() {
            return;
        }
        match key {
            TimerKey::Queue(queue) => match self.backend.tick(queue, now()) {
                Ok(Some(next)) => self.timers.arm(key.clone(), next),
                Ok(None) | Err(QueueError::UnknownQueue(_)) => {}
                // Backend down: try again shortly.
                Err(error) => {
                    log::warn!(
                        target: "rnode_queue",
                        "queue {:?}: due jobs could not be promoted nor old ones expired \
                         ({error}); trying again in 1 s",
                        &**queue
                    );
                    self.timers.arm(key.clone(), now() + 1.0);
                }
            },
            TimerKey::Cron(id) => self.fire_schedule(id),
            TimerKey::Watchdog => self.check_timeouts(),
            TimerKey::Reload => {
                self.reload_schedules();
                self.reload_settings();
                self.timers.arm(TimerKey::Reload, now() + RELOAD_EVERY);
            }
            TimerKey::Declare(queue) => self.declare_in_background(queue),
            TimerKey::Settle(queue) => {
                let pool = self.pools.lock().get(queue).cloned();
                if let Some(wait) = pool.and_then(|p| p.settle_stalled(self, self.clock())) {
                    self.settle_later(queue, wait);
                }
            }
        }
    }

    /// Takes the stored settings of the queues this process did not declare (another process
    /// may have changed them), and forgets the queues deleted elsewhere that it does not use.
    fn reload_settings(&self) {
        let undeclared: Vec<Arc<QueueEntry>> = self
            .queues
            .read()
            .values()
            .filter(|e| !e.declared_here.load(Ordering::Acquire))
            .cloned()
            .collect();
        if undeclared.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = undeclared.iter().map(|e| e.name.clone()).collect();
        let stored = match self.backend.stored_declarations(&names) {
            Ok(stored) => stored,
            Err(error) => {
                log::debug!(target: "rnode_queue", "queue settings not reloaded: {error}");
                return;
            }
        };
        let defaults = &self.options.defaults;
        for (entry, stored) in undeclared.iter().zip(stored) {
            match stored {
                Some(declaration) => {
                    let config = QueueConfig::from_declaration(&declaration, defaults);
                    if **entry.config.read() != config {
                        *entry.config.write() = Arc::new(config);
                        self.settings_changed(entry);
                    }
                }
                None => {
                    // Deleted elsewhere: keep no record of it unless its workers run here.
                    let _changing = self.queue_changes.lock();
                    if !self.pools.lock().contains_key(&entry.name) {
                        self.queues.write().remove(&entry.name);
                    }
                }
            }
        }
    }

    /// Makes sure the watchdog wakes by `deadline` (engine clock). Called as each sync run
    /// begins (after `Slot::begin`); costs an atomic load unless this deadline is the earliest.
    ///
    /// This load and the watchdog's store of "unset" (`check_timeouts`) form a store-load pair
    /// on each side: `begin` stores the run then loads `watchdog_at`; the watchdog stores
    /// `watchdog_at` then loads the runs. With only acquire/release both loads may see the old
    /// values — the run thinks the watchdog is set, the watchdog misses the run — and a hung run
    /// is never abandoned. The SeqCst fences on both sides forbid that outcome.
    pub fn watch_deadline(&self, deadline: u64) {
        if deadline < self.watchdog_at.load(Ordering::SeqCst)
            && deadline < self.watchdog_at.fetch_min(deadline, Ordering::SeqCst)
        {
            let wait = deadline.saturating_sub(self.clock()) as f64 / 1e9;
            self.timers.arm(TimerKey::Watchdog, now() + wait);
        }
    }

    fn check_timeouts(&self) {
        let Some(engine) = self.this.upgrade() else {
            return;
        };
        // Runs that begin from now on set the watchdog themselves (see `watch_deadline`).
        self.watchdog_at.store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
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
        // Every tick would be refused: say so now, not at each tick.
        let options = Self::tick_options(&record, now());
        options.validate()?;
        let job = Job::new(record.queue.clone(), record.data.clone(), options, 1, 1.0);
        self.check_size(&job)?;
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
        let records = match self.backend.load_schedules() {
            Ok(records) => records,
            Err(error) => {
                log::debug!(target: "rnode_queue", "schedules not reloaded: {error}");
                return;
            }
        };
        let stored: HashSet<Arc<str>> = records.iter().map(|r| r.id.clone()).collect();
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
                retry: None,
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

    fn tick_options(record: &ScheduleRecord, tick: Timestamp) -> JobOptions {
        JobOptions {
            priority: record.priority,
            scheduled_at: Some(tick),
            attempts: record.attempts,
            timeout: record.timeout,
            tags: record.tags.clone(),
            metadata: record.metadata.clone(),
            schedule_id: Some(record.id.clone()),
            ..JobOptions::default()
        }
    }

    /// Pushes the due tick of a schedule, or tries again a tick whose push failed. A failed
    /// push is tried again (backing off) until the next tick is due; then it is given up, and
    /// logged.
    fn fire_schedule(&self, id: &Arc<str>) {
        let now = now();
        let (record, tick, failures) = {
            let mut schedules = self.schedules.lock();
            let Some(entry) = schedules.get_mut(id) else {
                return;
            };
            let retry = entry.retry.take();
            match retry {
                Some(retry) if entry.next_run.is_none_or(|next| next > now) => {
                    (entry.record.clone(), retry.tick, retry.failures)
                }
                _ => {
                    if let Some(lost) = retry {
                        log::error!(
                            target: "rnode_queue",
                            "schedule {:?}: the job of the tick at {} was not pushed after {} \
                             tries, and the next tick is due: that tick is given up",
                            &**id,
                            lost.tick,
                            lost.failures
                        );
                    }
                    let Some(tick) = entry.next_run else {
                        return;
                    };
                    if tick > now {
                        // Woken early (a re-declared schedule): keep waiting.
                        self.timers.arm(TimerKey::Cron(id.clone()), tick);
                        return;
                    }
                    // Ticks missed while nothing ran are skipped: the next run is the next
                    // future tick.
                    entry.next_run = entry.cron.next_after(now.max(tick));
                    (entry.record.clone(), tick, 0)
                }
            }
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
        let options = Self::tick_options(&record, tick);
        // The tick is claimed and its job stored in one step: one run per tick, whichever
        // process gets there first.
        let pushed = self.push_jobs(
            &record.queue,
            &[(record.data.clone(), options)],
            true,
            Some((id, tick)),
        );
        let mut schedules = self.schedules.lock();
        let Some(entry) = schedules.get_mut(id) else {
            return;
        };
        let mut wake_at = entry.next_run;
        match pushed {
            Err(error) if error.is_backend() && entry.next_run.is_some() => {
                let failures = failures + 1;
                if failures == 1 {
                    log::warn!(
                        target: "rnode_queue",
                        "schedule {:?}: the job of the tick at {tick} could not be pushed \
                         ({error}); trying again until the next tick",
                        &**id
                    );
                }
                let backoff =
                    (CRON_RETRY_FIRST * 2f64.powi(failures as i32 - 1)).min(CRON_RETRY_MAX);
                entry.retry = Some(TickRetry { tick, failures });
                wake_at = wake_at.map(|next| next.min(now + backoff));
            }
            Err(QueueError::Closed) => return,
            Err(error) => log::error!(
                target: "rnode_queue",
                "schedule {:?}: the job of the tick at {tick} was not pushed ({error}); that \
                 tick is given up",
                &**id
            ),
            Ok(_) => {
                if failures > 0 {
                    log::info!(
                        target: "rnode_queue",
                        "schedule {:?}: the tick at {tick} was pushed after {failures} failed \
                         tries",
                        &**id
                    );
                }
            }
        }
        if let Some(at) = wake_at {
            self.timers.arm(TimerKey::Cron(id.clone()), at);
        }
    }

    // ---- shutdown ----------------------------------------------------------------------------

    /// Stops taking jobs and waits up to `timeout` for running ones. Runs still going then are
    /// handed back to the store, to run again elsewhere at once (their run counted). Called
    /// again, it waits again for workers that had not finished.
    pub fn close(&self, timeout: Duration) -> CloseReport {
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
        let mut handed_back = Vec::new();
        if finished {
            self.pools.lock().clear();
        } else if self.backend.shared() {
            for pool in &pools {
                let runs = pool.wind_down(self);
                if runs.is_empty() {
                    continue;
                }
                match self.backend.hand_back(&pool.queue, &runs) {
                    Ok(ids) => {
                        handed_back.extend(ids.into_iter().map(|id| (pool.queue.clone(), id)))
                    }
                    Err(error) => log::error!(
                        target: "rnode_queue",
                        "{} running job(s) of queue {:?} could not be handed back ({error}); \
                         they run again once their lease expires",
                        runs.len(),
                        &*pool.queue
                    ),
                }
            }
        }
        self.timers.stop(
            deadline
                .saturating_duration_since(Instant::now())
                .max(TIMER_STOP_MIN),
        );
        // Only now: leases stay renewed while running jobs finish.
        self.backend.close();
        CloseReport {
            finished,
            handed_back,
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
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
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
        assert!(engine.close(Duration::from_secs(5)).finished);
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
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
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
        assert!(engine.close(Duration::from_secs(5)).finished);
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
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
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
        assert!(engine.close(Duration::from_secs(5)).finished);
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
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
            .unwrap();
        for i in 0..40 {
            push(&engine, "q", &i.to_string(), JobOptions::default());
        }
        assert!(engine.join(Some("q"), WAIT).unwrap());
        assert_eq!(peak.load(Ordering::SeqCst), 4);
        assert_eq!(engine.queue_stats("q").unwrap().completed, 40);
        assert!(engine.close(Duration::from_secs(5)).finished);
    }

    #[test]
    fn delayed_jobs_run_on_time() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 10.0)).unwrap();
        let handler: Arc<Handler> = Arc::new(|_job: &Job| RunOutcome::Success(None));
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
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
        assert!(engine.close(Duration::from_secs(5)).finished);
    }

    #[test]
    fn panics_in_handlers_fail_the_job() {
        let engine = engine();
        engine.create_queue("q", config(1, 0, 10.0)).unwrap();
        let handler: Arc<Handler> = Arc::new(|_job: &Job| panic!("handler bug"));
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), None, false)
            .unwrap();
        let id = push(&engine, "q", "1", JobOptions::default());
        let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(error_of(&job).contains("handler bug"));
        assert!(engine.close(Duration::from_secs(5)).finished);
    }

    /// The memory backend, with `push_tick` failing (as a Redis that is away would) while
    /// `failing` says so. Records each tick it was asked to push.
    struct FlakyTicks {
        inner: MemoryBackend,
        failing: AtomicUsize,
        asked: Mutex<Vec<Timestamp>>,
    }

    impl Backend for FlakyTicks {
        fn declare_queue(
            &self,
            queue: &Arc<str>,
            declaration: &QueueDeclaration,
            replace: bool,
        ) -> Result<QueueDeclaration> {
            self.inner.declare_queue(queue, declaration, replace)
        }
        fn stored_declarations(
            &self,
            queues: &[Arc<str>],
        ) -> Result<Vec<Option<QueueDeclaration>>> {
            self.inner.stored_declarations(queues)
        }
        fn push(
            &self,
            queue: &Arc<str>,
            jobs: &mut Vec<Job>,
            may_block: bool,
            declare: &dyn Fn() -> QueueDeclaration,
        ) -> Result<bool> {
            self.inner.push(queue, jobs, may_block, declare)
        }
        fn push_tick(
            &self,
            queue: &Arc<str>,
            jobs: &mut Vec<Job>,
            schedule: &str,
            tick: Timestamp,
            declare: &dyn Fn() -> QueueDeclaration,
        ) -> Result<bool> {
            self.asked.lock().push(tick);
            let fail = self
                .failing
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                // The first failure is a push whose outcome stayed unknown (Redis paused), the
                // others a refused connection: both are tried again.
                if self.asked.lock().len() == 1 {
                    return Err(QueueError::PushOutcomeUnknown {
                        message: "redis: no answer".into(),
                        ids: jobs.iter().map(|job| job.id).collect(),
                    });
                }
                return Err(QueueError::Backend("redis: connection refused".into()));
            }
            self.inner.push_tick(queue, jobs, schedule, tick, declare)
        }
        fn fetch(
            &self,
            queue: &str,
            request: crate::backend::FetchRequest,
            cancel: &AtomicBool,
        ) -> Result<Vec<Job>> {
            self.inner.fetch(queue, request, cancel)
        }
        fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
            self.inner.settle(queue, acks)
        }
        fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
            self.inner.release(queue, jobs)
        }
        fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
            self.inner.tick(queue, now)
        }
        fn wake(&self, queue: &str) {
            self.inner.wake(queue)
        }
        fn get_job(&self, id: JobId) -> Result<Option<Job>> {
            self.inner.get_job(id)
        }
        fn list_jobs(
            &self,
            queue: &str,
            state: Option<JobState>,
            limit: usize,
        ) -> Result<Vec<Job>> {
            self.inner.list_jobs(queue, state, limit)
        }
        fn retry_failed(&self, id: JobId) -> Result<bool> {
            self.inner.retry_failed(id)
        }
        fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
            self.inner.set_paused(queue, paused)
        }
        fn clear(&self, queue: &str) -> Result<usize> {
            self.inner.clear(queue)
        }
        fn delete(&self, queue: &str) -> Result<bool> {
            self.inner.delete(queue)
        }
        fn counts(&self, queue: &str) -> Result<QueueCounts> {
            self.inner.counts(queue)
        }
        fn queue_names(&self) -> Result<Vec<String>> {
            self.inner.queue_names()
        }
        fn totals(&self) -> Result<Totals> {
            self.inner.totals()
        }
        fn wait_finished(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
            self.inner.wait_finished(id, timeout)
        }
        fn wait_idle(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
            self.inner.wait_idle(queue, timeout)
        }
        fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
            self.inner.save_schedule(schedule)
        }
        fn remove_schedule(&self, id: &str) -> Result<bool> {
            self.inner.remove_schedule(id)
        }
        fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
            self.inner.load_schedules()
        }
    }

    fn flaky(failing: usize) -> (Arc<Engine>, Arc<FlakyTicks>) {
        let backend = Arc::new(FlakyTicks {
            inner: MemoryBackend::new(),
            failing: AtomicUsize::new(failing),
            asked: Mutex::new(Vec::new()),
        });
        let engine = Engine::new(backend.clone(), EngineOptions::default()).unwrap();
        (engine, backend)
    }

    fn every_second(queue: &str) -> ScheduleRecord {
        ScheduleRecord {
            id: Arc::from("tick"),
            name: None,
            queue: Arc::from(queue),
            cron: "* * * * * *".into(),
            data: Payload::from(&b"1"[..]),
            priority: crate::job::Priority::Normal,
            attempts: None,
            timeout: None,
            tags: Vec::new(),
            metadata: None,
        }
    }

    #[test]
    fn a_tick_whose_push_fails_is_pushed_again_until_it_lands() {
        let (engine, backend) = flaky(2);
        engine.schedule(every_second("cron")).unwrap();
        let pushed = engine
            .backend()
            .list_jobs("cron", None, 10)
            .map(|jobs| jobs.len())
            .unwrap_or(0);
        assert_eq!(pushed, 0);
        // The first tick fails twice, then lands (before: it was dropped without a word).
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = loop {
            let jobs = engine.list_jobs("cron", None, 10).unwrap();
            if let Some(job) = jobs.first() {
                break job.clone();
            }
            assert!(Instant::now() < deadline, "no tick was pushed");
            std::thread::sleep(Duration::from_millis(20));
        };
        let asked = backend.asked.lock().clone();
        assert!(asked.len() >= 3, "{asked:?}");
        assert_eq!(
            asked[0], asked[1],
            "the failed tick was tried again: {asked:?}"
        );
        assert_eq!(asked[1], asked[2], "{asked:?}");
        assert_eq!(
            first.scheduled_at.get(),
            Some(asked[0]),
            "the failed tick, not a later one"
        );
        engine.close(Duration::from_secs(1));
    }

    #[test]
    fn a_tick_that_never_lands_is_given_up_when_the_next_is_due() {
        let (engine, backend) = flaky(usize::MAX);
        engine.schedule(every_second("cron")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(6);
        loop {
            let asked = backend.asked.lock().clone();
            let ticks: std::collections::BTreeSet<u64> = asked.iter().map(|t| *t as u64).collect();
            if ticks.len() >= 2 {
                // Retried (several tries of the first tick), then the next tick's turn.
                let first = *ticks.iter().next().unwrap() as f64;
                assert!(
                    asked.iter().filter(|t| **t == first).count() >= 2,
                    "{asked:?}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{asked:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        engine.close(Duration::from_secs(1));
    }

    #[test]
    fn a_schedule_whose_job_is_too_large_is_refused_when_declared() {
        let engine = Engine::new(
            Arc::new(MemoryBackend::new()),
            EngineOptions {
                max_job_bytes: 100,
                ..EngineOptions::default()
            },
        )
        .unwrap();
        let mut record = every_second("cron");
        record.data = Payload::from(format!("\"{}\"", "x".repeat(200)).into_bytes());
        assert!(matches!(
            engine.schedule(record),
            Err(QueueError::JobTooLarge { .. })
        ));
        assert!(engine.schedules().unwrap().is_empty());
    }

    #[test]
    fn pushes_racing_deletes_of_their_queue_never_fail() {
        let engine = engine();
        let stop = Arc::new(AtomicBool::new(false));
        let pushers: Vec<_> = (0..2)
            .map(|_| {
                let (engine, stop) = (engine.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut pushed = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let spec = (Payload::from(&b"1"[..]), JobOptions::default());
                        // Before: a push could find the engine knowing a queue the backend had
                        // deleted, and every later push failed with "does not exist".
                        engine.push("churn", &[spec], true).expect("push");
                        pushed += 1;
                    }
                    pushed
                })
            })
            .collect();
        for _ in 0..300 {
            engine.delete_queue("churn").unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        for pusher in pushers {
            assert!(pusher.join().unwrap() > 0);
        }
        // The queue works afterwards: a handler runs what is pushed.
        let handler: Arc<Handler> = Arc::new(|_job: &Job| RunOutcome::Success(None));
        engine
            .process("churn", Arc::new(ClosureExecutor(handler)), None, false)
            .unwrap();
        let id = push(&engine, "churn", "2", JobOptions::default());
        let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed);
        assert!(engine.close(Duration::from_secs(5)).finished);
    }

    #[test]
    fn a_hung_run_is_abandoned_whenever_it_begins() {
        // Stress for the watchdog handshake: a run that hangs right after fast ones (each of
        // which re-arms or clears the watchdog) must still be abandoned at its deadline.
        let engine = engine();
        engine.create_queue("q", config(1, 0, 0.05)).unwrap();
        let released = Arc::new(AtomicUsize::new(0));
        let r = released.clone();
        let handler: Arc<Handler> = Arc::new(move |job: &Job| {
            let text = String::from_utf8_lossy(&job.data);
            if let Some(round) = text.strip_prefix("\"hang ") {
                let round: usize = round.trim_end_matches('"').parse().unwrap();
                while r.load(Ordering::SeqCst) < round {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            RunOutcome::Success(None)
        });
        engine
            .process("q", Arc::new(ClosureExecutor(handler)), Some(1), false)
            .unwrap();
        for round in 1..=40 {
            for _ in 0..(round % 5) {
                push(&engine, "q", "1", JobOptions::default());
            }
            let data = format!("\"hang {round}\"");
            let hung = push(&engine, "q", &data, JobOptions::default());
            let job = engine.wait_for_job(hung, WAIT).unwrap().expect("abandoned");
            assert_eq!(job.state, JobState::Failed, "round {round}");
            assert!(error_of(&job).contains("timed out"));
            released.store(round, Ordering::SeqCst);
        }
        assert!(engine.close(Duration::from_secs(5)).finished);
    }

    #[test]
    fn closed_engines_refuse_work() {
        let engine = engine();
        assert!(engine.close(Duration::from_secs(1)).finished);
        let spec = (Payload::from(&b"1"[..]), JobOptions::default());
        assert!(matches!(
            engine.push("q", &[spec], true),
            Err(QueueError::Closed)
        ));
    }
}
