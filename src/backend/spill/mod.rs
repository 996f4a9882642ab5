//! A Redis store that keeps taking pushes while Redis cannot be reached: they are written to a
//! local file store (the spill, `spill_path=`) instead of failing, and a thread forwards them
//! to Redis, in order, once it answers again.
//!
//! While anything waits in the spill, new pushes go there too, so that none overtakes an
//! earlier one. A spilled job keeps its id; in the spill it is held whole as the data of a job
//! with that id (so that the spill's own retries and attempts never touch it). Forwarding takes
//! a batch from the spill, pushes it to Redis, then marks it done: a crash in between leaves
//! the batch in the spill, and pushing it again finds its ids in Redis (`DuplicateJob`), so no
//! job is pushed twice and none is lost. Every other call goes to Redis.

mod carried;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::file::{self, FileOptions, FileStore, Fsync};
use super::redis::{RedisBackend, RedisOptions};
use super::{
    Ack, Backend, FetchRequest, QueueCounts, QueueDeclaration, Removal, Retention, ScheduleRecord,
    Settlement, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobOptions, JobState, Payload, Timestamp};
use crate::sync::{Condvar, Mutex, RwLock};
use carried::{carried_declaration, spill_declaration};

/// Jobs forwarded per push to Redis.
const FORWARD_BATCH: usize = 500;
/// How long the forwarder waits before trying an unreachable Redis again (at most).
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct SpillingBackend {
    /// `None` while Redis could not be reached since this process started (the forwarder
    /// connects as soon as it can).
    redis: RwLock<Option<Arc<RedisBackend>>>,
    redis_options: RedisOptions,
    spill: Arc<FileStore>,
    path: String,
    /// Jobs in the spill not forwarded yet (as far as this process knows).
    pending: AtomicU64,
    wake: Condvar,
    woken: Mutex<bool>,
    closed: AtomicBool,
    /// The declarations this process made, sent with forwarded jobs of a queue Redis lost.
    declared: Mutex<HashMap<Arc<str>, QueueDeclaration>>,
}

impl SpillingBackend {
    pub fn open(redis: &RedisOptions, spill_path: &str) -> Result<Arc<SpillingBackend>> {
        let spill = FileStore::open(&FileOptions {
            path: spill_path.into(),
            // A spilled push is acknowledged like one Redis took: on disk first.
            fsync: Fsync::Always,
            compact_min_bytes: file::DEFAULT_COMPACT_MIN_BYTES,
            // Batches a dead forwarder had taken go again at once, while Redis still holds
            // what it pushed of them (and says so): later, retention may have dropped those.
            lost_run_grace: Duration::ZERO,
        })?;
        let connected = match RedisBackend::connect(redis) {
            Ok(connected) => Some(Arc::new(connected)),
            // Down at start-up: pushes go to the spill until the forwarder gets through.
            Err(error) if error.is_backend() => {
                log::warn!(
                    target: "rnode_queue",
                    "Redis cannot be reached ({error}); pushes go to the spill {spill_path} \
                     until it can; other calls fail until then"
                );
                None
            }
            Err(error) => return Err(error),
        };
        let waiting = spilled(&spill)?;
        let backend = Arc::new(SpillingBackend {
            redis: RwLock::new(connected),
            redis_options: redis.clone(),
            spill,
            path: spill_path.to_string(),
            pending: AtomicU64::new(waiting),
            wake: Condvar::new(),
            woken: Mutex::new(false),
            closed: AtomicBool::new(false),
            declared: Mutex::default(),
        });
        let weak = Arc::downgrade(&backend);
        std::thread::Builder::new()
            .name("rnq-spill".into())
            .spawn(move || forward(weak))
            .map_err(|e| QueueError::Backend(format!("could not start the spill's thread: {e}")))?;
        if waiting > 0 {
            log::warn!(
                target: "rnode_queue",
                "{waiting} job(s) spilled while Redis could not be reached wait in {}; they are \
                 forwarded to Redis now",
                spill_path
            );
        }
        Ok(backend)
    }

    /// Redis, once it could be reached.
    fn redis(&self) -> Result<Arc<RedisBackend>> {
        self.redis.read().clone().ok_or_else(|| {
            QueueError::Backend(format!(
                "Redis at {} has not been reachable since this process started",
                self.redis_options.url
            ))
        })
    }

    /// Connects to Redis if this process could not yet; false while it still cannot.
    fn connect(&self) -> bool {
        if self.redis.read().is_some() {
            return true;
        }
        match RedisBackend::connect(&self.redis_options) {
            Ok(connected) => {
                log::info!(target: "rnode_queue", "Redis can be reached now");
                *self.redis.write() = Some(Arc::new(connected));
                true
            }
            Err(error) => {
                log::debug!(target: "rnode_queue", "Redis still cannot be reached: {error}");
                false
            }
        }
    }

    fn spill(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        why: &QueueError,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        let count = jobs.len() as u64;
        let mut held: Vec<Job> = jobs.iter().map(held_in_spill).collect();
        // The queue's declaration goes into the spill with its first jobs: Redis gets it with
        // them should it hold none by then, whichever process forwards them.
        let declare_in_spill = || spill_declaration(&declare());
        self.spill.push(queue, &mut held, &declare_in_spill)?;
        if self.pending.fetch_add(count, Ordering::AcqRel) == 0 {
            log::warn!(
                target: "rnode_queue",
                "Redis cannot take pushes ({why}); pushes go to the spill {} until it can, then \
                 are forwarded in order",
                self.path
            );
        }
        jobs.clear();
        self.nudge();
        Ok(())
    }

    fn nudge(&self) {
        *self.woken.lock() = true;
        self.wake.notify_one();
    }

    /// Forwards what waits in the spill; returns false when Redis could not take it.
    fn forward_all(&self) -> bool {
        let names = match self.spill.queue_names() {
            Ok(names) => names,
            Err(error) => {
                log::error!(target: "rnode_queue", "the spill {} cannot be read: {error}", self.path);
                return false;
            }
        };
        for name in names {
            let queue: Arc<str> = Arc::from(name.as_str());
            loop {
                let request = FetchRequest {
                    max: FORWARD_BATCH,
                    share: 1,
                    wait: Duration::ZERO,
                    start_all: true,
                };
                let taken = match self.spill.fetch(&queue, request, &AtomicBool::new(false)) {
                    Ok(taken) if taken.is_empty() => break,
                    Ok(taken) => taken,
                    Err(error) => {
                        log::error!(target: "rnode_queue", "the spill {} cannot be read: {error}", self.path);
                        return false;
                    }
                };
                if !self.forward_batch(&queue, &taken) {
                    if let Err(error) = self.spill.release(&queue, &taken) {
                        // They stay taken in the spill until its next open: forwarded then.
                        log::warn!(
                            target: "rnode_queue",
                            "{} spilled job(s) of queue {queue:?} could not be handed back to the \
                             spill ({error}); they are forwarded after the next restart",
                            taken.len()
                        );
                    }
                    return false;
                }
            }
        }
        true
    }

    /// Pushes a batch taken from the spill to Redis and marks it done in the spill.
    fn forward_batch(&self, queue: &Arc<str>, taken: &[Job]) -> bool {
        let mut originals = Vec::with_capacity(taken.len());
        for held in taken {
            match file::job_from_bytes(&held.data) {
                Ok(job) => originals.push(job),
                // Marked done with the others below: it cannot be read, now or later.
                Err(error) => {
                    log::error!(target: "rnode_queue", "spilled job {} is lost: {error}", held.id)
                }
            }
        }
        let Ok(redis) = self.redis() else {
            return false;
        };
        let stored_in = |store: &dyn Backend| {
            store
                .stored_declarations(std::slice::from_ref(queue))
                .ok()
                .and_then(|mut found| found.pop().flatten())
        };
        let declaration = stored_in(&*redis)
            .or_else(|| self.declared.lock().get(queue).cloned())
            .or_else(|| stored_in(&*self.spill).and_then(|held| carried_declaration(&held)))
            .unwrap_or_else(|| {
                log::warn!(
                    target: "rnode_queue",
                    "the spill holds no settings for queue {:?}: it is created in Redis with the \
                     default retention",
                    &**queue
                );
                QueueDeclaration {
                    retention: Retention::default(),
                    settings: Payload::from(&b"{}"[..]),
                }
            });
        let pushed = match redis.push_forwarded(queue, &originals, &declaration) {
            Ok(()) => true,
            // Some were pushed before (a crash came between forwarding and marking them
            // done): one by one, those are found and skipped.
            Err(QueueError::DuplicateJob(_)) => originals.iter().all(|job| {
                match redis.push_forwarded(queue, std::slice::from_ref(job), &declaration) {
                    Ok(()) | Err(QueueError::DuplicateJob(_)) => true,
                    Err(error) => {
                        log::debug!(target: "rnode_queue", "forwarding the spill: {error}");
                        false
                    }
                }
            }),
            Err(error) => {
                log::debug!(target: "rnode_queue", "forwarding the spill: {error}");
                false
            }
        };
        if !pushed {
            return false;
        }
        let at = now();
        let acks = taken
            .iter()
            .map(|held| Ack {
                id: held.id,
                attempt: held.attempts,
                at,
                settlement: Settlement::Completed { result: None },
            })
            .collect();
        if let Err(error) = self.spill.settle(queue, acks) {
            // Pushed, not marked: the next round finds them in Redis and skips them.
            log::warn!(target: "rnode_queue", "the spill {} could not mark forwarded jobs: {error}", self.path);
        }
        let count = taken.len() as u64;
        let before = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(count))
            })
            .unwrap_or(0);
        if before <= count {
            log::info!(target: "rnode_queue", "the spill {} is forwarded: pushes go to Redis again", self.path);
        }
        true
    }
}

/// Jobs in the spill not forwarded yet, by whichever process shares it.
fn spilled(spill: &FileStore) -> Result<u64> {
    spill
        .queue_names()?
        .iter()
        .map(|queue| match spill.counts(queue) {
            Ok(c) => Ok(c.waiting + c.delayed + c.active),
            Err(QueueError::UnknownQueue(_)) => Ok(0),
            Err(error) => Err(error),
        })
        .sum()
}

/// The spill holds each job whole as the data of a job with its id, queue and priority (the
/// order it is forwarded in), which the spill's own bookkeeping never changes.
fn held_in_spill(job: &Job) -> Job {
    let mut held = Job::created_at(
        job.created_at,
        job.queue.clone(),
        Payload::from(file::job_bytes(job)),
        JobOptions {
            priority: job.priority,
            attempts: Some(u32::MAX),
            ..JobOptions::default()
        },
        u32::MAX,
        f64::MAX,
    );
    held.id = job.id;
    held
}

fn forward(backend: Weak<SpillingBackend>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let Some(backend) = backend.upgrade() else {
            return;
        };
        if backend.closed.load(Ordering::Acquire) {
            return;
        }
        if backend.pending.load(Ordering::Acquire) > 0 || backend.redis.read().is_none() {
            if backend.connect() && backend.forward_all() {
                pause = Duration::from_millis(100);
            } else {
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
        // The count is this process's view; another process sharing the spill may have
        // forwarded (or spilled) jobs: it is taken from the spill again.
        match spilled(&backend.spill) {
            Ok(waiting) => backend.pending.store(waiting, Ordering::Release),
            Err(error) => {
                log::debug!(target: "rnode_queue", "the spill cannot be counted: {error}")
            }
        }
        let mut woken = backend.woken.lock();
        if !*woken {
            let wait = if backend.pending.load(Ordering::Acquire) > 0 {
                pause
            } else {
                Duration::from_secs(1)
            };
            woken = backend.wake.wait_for(woken, wait).0;
        }
        *woken = false;
    }
}

impl Backend for SpillingBackend {
    fn shared(&self) -> bool {
        true
    }

    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        self.declared
            .lock()
            .insert(queue.clone(), declaration.clone());
        let declared = self
            .redis()
            .and_then(|redis| redis.declare_queue(queue, declaration, replace));
        match declared {
            // Pushes to the queue can still be spilled; Redis gets the declaration with them.
            Err(error) if error.is_backend() => {
                log::warn!(
                    target: "rnode_queue",
                    "queue {:?} could not be declared in Redis ({error}); its pushes go to the \
                     spill {} until Redis is back",
                    &**queue,
                    self.path
                );
                Ok(declaration.clone())
            }
            other => other,
        }
    }

    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>> {
        self.redis()?.stored_declarations(queues)
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        if self.pending.load(Ordering::Acquire) > 0 {
            let behind = QueueError::Backend("earlier pushes wait in the spill".into());
            return self.spill(queue, jobs, &behind, declare);
        }
        match self
            .redis()
            .and_then(|redis| redis.push(queue, jobs, declare))
        {
            Err(error) if error.is_backend() => self.spill(queue, jobs, &error, declare),
            other => other,
        }
    }

    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        // Not spilled: a tick is claimed in Redis with its job (the engine tries it again).
        self.redis()?
            .push_tick(queue, jobs, schedule, tick, declare)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        self.redis()?.fetch(queue, request, cancel)
    }

    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        self.redis()?.settle(queue, acks)
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        self.redis()?.release(queue, jobs)
    }

    fn mark_started(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<()> {
        self.redis()?.mark_started(queue, runs)
    }

    fn note_started(&self, queue: &str, run: (JobId, u32)) {
        if let Ok(redis) = self.redis() {
            redis.note_started(queue, run)
        }
    }

    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        self.redis()?.hand_back(queue, runs)
    }

    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
        self.redis()?.tick(queue, now)
    }

    fn wake(&self, queue: &str) {
        if let Ok(redis) = self.redis() {
            redis.wake(queue)
        }
    }

    /// From Redis; a job still waiting in the spill (or any, while Redis cannot be reached)
    /// from the spill.
    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        let from_redis = self.redis().and_then(|redis| redis.get_job(id));
        if let Ok(Some(job)) = from_redis {
            return Ok(Some(job));
        }
        let spilled = self
            .spill
            .get_job(id)?
            .filter(|held| !held.state.is_finished())
            .map(|held| file::job_from_bytes(&held.data))
            .transpose()?;
        match (spilled, from_redis) {
            (Some(job), _) => Ok(Some(job)),
            (None, found) => found,
        }
    }

    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.redis()?.list_jobs(queue, state, offset, limit)
    }

    fn remove_job(&self, id: JobId) -> Result<Removal> {
        // A job still in the spill is removed there: it is then never forwarded.
        match self.spill.remove_job(id)? {
            Removal::NotFound => self.redis()?.remove_job(id),
            Removal::Removed => {
                // Another process sharing the spill may have spilled it: never below zero.
                let less = |n: u64| Some(n.saturating_sub(1));
                let _ = (self.pending).fetch_update(Ordering::AcqRel, Ordering::Acquire, less);
                // A crash between forwarding a batch and marking it done leaves a copy in
                // Redis too: it goes as well.
                if let Some(redis) = self.redis.read().clone() {
                    if let Err(error) = redis.remove_job(id) {
                        log::warn!(
                            target: "rnode_queue",
                            "job {id} was removed from the spill; a copy Redis may hold could \
                             not be checked ({error})"
                        );
                    }
                }
                Ok(Removal::Removed)
            }
            Removal::Running => Ok(Removal::Running),
        }
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        self.redis()?.retry_failed(id)
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.redis()?.set_paused(queue, paused)
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        self.redis()?.clear(queue)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        self.redis()?.delete(queue)
    }

    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        self.redis()?.counts(queue)
    }

    fn counts_of(&self, queues: &[String]) -> Result<Vec<Option<QueueCounts>>> {
        self.redis()?.counts_of(queues)
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        self.redis()?.queue_names()
    }

    fn totals(&self) -> Result<Totals> {
        self.redis()?.totals()
    }

    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        // A job waiting in the spill is not done.
        if self.pending.load(Ordering::Acquire) > 0 {
            return Ok(false);
        }
        self.redis()?.is_idle(queue)
    }

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        self.redis()?.save_schedule(schedule)
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        self.redis()?.remove_schedule(id)
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        match self.redis.read().clone() {
            Some(redis) => redis.load_schedules(),
            // Loaded with the engine's next reload, once Redis can be reached.
            None => Ok(Vec::new()),
        }
    }

    fn has_schedule(&self, id: &str) -> Result<bool> {
        self.redis()?.has_schedule(id)
    }

    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()> {
        self.redis()?.beat(worker, info, ttl)
    }

    fn workers(&self) -> Result<Vec<Payload>> {
        self.redis()?.workers()
    }

    fn leave(&self, worker: &str) -> Result<()> {
        self.redis()?.leave(worker)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.nudge();
        if let Some(redis) = self.redis.read().clone() {
            redis.close();
        }
        self.spill.close();
    }
}
