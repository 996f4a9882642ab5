//! The in-process backend: one lock per queue around the waiting lanes, the delayed jobs by due
//! time, the job store and the retention lists. Jobs last until the process exits.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex, MutexGuard, RwLock};

use super::{
    Ack, Backend, FetchRequest, FinishSignal, QueueCounts, QueueDeclaration, Retention,
    ScheduleRecord, Settlement, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, IdMap, Job, JobId, JobState, MaybeTime, Priority, Timestamp};

/// Waiting jobs: one FIFO lane per priority, the highest served first. Pushing and popping are
/// O(1) and sequential in memory, unlike a heap over a million entries.
#[derive(Default)]
struct Lanes {
    lanes: [VecDeque<(u64, JobId)>; 4],
}

impl Lanes {
    fn lane(priority: Priority) -> usize {
        priority as usize / 5
    }

    fn push_back(&mut self, priority: Priority, seq: u64, id: JobId) {
        self.lanes[Self::lane(priority)].push_back((seq, id));
    }

    /// For a job handed back unrun: it goes back to the head of its lane.
    fn push_front(&mut self, priority: Priority, seq: u64, id: JobId) {
        self.lanes[Self::lane(priority)].push_front((seq, id));
    }

    fn pop(&mut self) -> Option<(u64, JobId)> {
        self.lanes.iter_mut().rev().find_map(VecDeque::pop_front)
    }

    fn clear(&mut self) {
        self.lanes.iter_mut().for_each(VecDeque::clear);
    }
}

/// A delayed job's place: its due time, then its sequence (FIFO among jobs due together).
#[derive(Clone, Copy, PartialEq, Debug)]
struct Due {
    at: Timestamp,
    seq: u64,
}

impl Eq for Due {}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .total_cmp(&other.at)
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The lanes may hold entries that went stale (a cleared or moved job); an entry counts only if
/// the stored job is still in the state and place the entry describes. The delayed jobs and the
/// active set are exact: listing them never walks past what it returns.
struct QueueState {
    /// Boxed: the table moves small entries when it grows, and stays dense when mostly empty.
    jobs: IdMap<Box<Job>>,
    waiting: Lanes,
    delayed: BTreeMap<Due, JobId>,
    /// The jobs taken by a worker (few: at most the workers' batches).
    active: IdMap<()>,
    waiting_count: u64,
    delayed_count: u64,
    active_count: u64,
    completed: VecDeque<(Timestamp, JobId)>,
    failed: VecDeque<(Timestamp, JobId)>,
    completed_total: u64,
    failed_total: u64,
    paused: bool,
    next_seq: u64,
    /// Workers blocked in `fetch`, so pushes skip the notify when nobody listens.
    fetchers_waiting: usize,
    retention: Retention,
    /// The engine's settings, kept for `stored_declarations`.
    declaration: QueueDeclaration,
}

impl QueueState {
    fn new(declaration: QueueDeclaration) -> Self {
        QueueState {
            jobs: IdMap::default(),
            waiting: Lanes::default(),
            delayed: BTreeMap::new(),
            active: IdMap::default(),
            waiting_count: 0,
            delayed_count: 0,
            active_count: 0,
            completed: VecDeque::new(),
            failed: VecDeque::new(),
            completed_total: 0,
            failed_total: 0,
            paused: false,
            next_seq: 0,
            fetchers_waiting: 0,
            retention: declaration.retention,
            declaration,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn insert(&mut self, mut job: Job) {
        if job.seq == 0 {
            job.seq = self.next_seq();
        }
        match job.state {
            JobState::Delayed => {
                let due = Due {
                    at: job.due_at(),
                    seq: job.seq,
                };
                self.delayed.insert(due, job.id);
                self.delayed_count += 1;
            }
            _ => {
                job.state = JobState::Waiting;
                self.waiting.push_back(job.priority, job.seq, job.id);
                self.waiting_count += 1;
            }
        }
        self.jobs.insert(job.id, Box::new(job));
    }

    /// Pops the next live waiting job and marks it active.
    fn take_next(&mut self, started_at: Timestamp) -> Option<Job> {
        while let Some((seq, id)) = self.waiting.pop() {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state != JobState::Waiting || job.seq != seq {
                continue;
            }
            job.state = JobState::Active;
            job.attempts += 1;
            job.started_at = MaybeTime::from(Some(started_at));
            self.waiting_count -= 1;
            self.active_count += 1;
            self.active.insert(id, ());
            return Some((**job).clone());
        }
        None
    }

    /// Due delayed jobs become waiting, at the back of their priority (as if pushed now, so
    /// that a job handed back later never jumps ahead of jobs that waited before it).
    fn promote_due(&mut self, now: Timestamp) -> usize {
        let mut promoted = 0;
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().at > now {
                break;
            }
            let id = entry.remove();
            let seq = self.next_seq();
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.state = JobState::Waiting;
            job.seq = seq;
            self.delayed_count -= 1;
            self.waiting_count += 1;
            self.waiting.push_back(job.priority, seq, id);
            promoted += 1;
        }
        promoted
    }

    /// Drops finished jobs beyond the retention count or age.
    fn expire(&mut self, now: Timestamp) {
        let cutoff = now - self.retention.ttl;
        let keep_completed = self.retention.keep_completed;
        let keep_failed = self.retention.keep_failed;
        for (list, keep, state) in [
            (&mut self.completed, keep_completed, JobState::Completed),
            (&mut self.failed, keep_failed, JobState::Failed),
        ] {
            while let Some(&(at, id)) = list.front() {
                if list.len() <= keep && at > cutoff {
                    break;
                }
                list.pop_front();
                // The job may have moved on (a retried failure): only drop it if it has not.
                if let Some(job) = self.jobs.remove(&id) {
                    if job.state != state || job.finished_at.get() != Some(at) {
                        self.jobs.insert(id, job);
                    }
                }
            }
        }
    }

    fn next_event(&self) -> Option<Timestamp> {
        let ttl = self.retention.ttl;
        [
            self.delayed.first_key_value().map(|(due, _)| due.at),
            self.completed.front().map(|(at, _)| at + ttl),
            self.failed.front().map(|(at, _)| at + ttl),
        ]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp)
    }

    fn is_idle(&self) -> bool {
        self.waiting_count == 0 && self.delayed_count == 0 && self.active_count == 0
    }

    fn counts(&self) -> QueueCounts {
        QueueCounts {
            waiting: self.waiting_count,
            delayed: self.delayed_count,
            active: self.active_count,
            completed: self.completed_total,
            failed: self.failed_total,
            paused: self.paused,
        }
    }
}

struct MemoryQueue {
    state: Mutex<QueueState>,
    /// Signalled when jobs become waiting (or on `wake`), for workers blocked in `fetch`.
    ready: Condvar,
}

impl MemoryQueue {
    fn notify_fetchers(&self, state: &QueueState, count: usize) {
        if state.fetchers_waiting == 0 || state.paused {
            return;
        }
        if count == 1 {
            self.ready.notify_one();
        } else {
            self.ready.notify_all();
        }
    }
}

#[derive(Default)]
pub struct MemoryBackend {
    queues: RwLock<HashMap<Arc<str>, Arc<MemoryQueue>>>,
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    finished: FinishSignal,
    schedules: Mutex<HashMap<Arc<str>, ScheduleRecord>>,
    last_ticks: Mutex<HashMap<Arc<str>, Timestamp>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Result<Arc<MemoryQueue>> {
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::UnknownQueue(name.to_string()))
    }

    fn find<T>(&self, f: impl Fn(&mut QueueState) -> Option<T>) -> Option<T> {
        let queues: Vec<Arc<MemoryQueue>> = self.queues.read().values().cloned().collect();
        queues.iter().find_map(|q| f(&mut q.state.lock()))
    }
}

fn lock_state(queue: &MemoryQueue, may_block: bool) -> Option<MutexGuard<'_, QueueState>> {
    if may_block {
        Some(queue.state.lock())
    } else {
        queue.state.try_lock()
    }
}

impl Backend for MemoryBackend {
    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        let existing = self.queues.read().get(queue).cloned();
        let handle = match existing {
            Some(handle) => handle,
            None => self
                .queues
                .write()
                .entry(queue.clone())
                .or_insert_with(|| {
                    Arc::new(MemoryQueue {
                        state: Mutex::new(QueueState::new(declaration.clone())),
                        ready: Condvar::new(),
                    })
                })
                .clone(),
        };
        let mut state = handle.state.lock();
        if replace {
            state.retention = declaration.retention;
            state.declaration = declaration.clone();
        }
        Ok(state.declaration.clone())
    }

    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>> {
        Ok(queues
            .iter()
            .map(|name| {
                let handle = self.queues.read().get(name).cloned();
                handle.map(|h| h.state.lock().declaration.clone())
            })
            .collect())
    }

    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        // One process, and one timer thread firing ticks: nothing can come between the check
        // and the push. The tick is claimed once its job is stored.
        if self
            .last_ticks
            .lock()
            .get(schedule)
            .is_some_and(|last| *last >= tick)
        {
            return Ok(false);
        }
        self.push(queue, jobs, true, declare)?;
        self.last_ticks.lock().insert(Arc::from(schedule), tick);
        Ok(true)
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        may_block: bool,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        let handle = if may_block {
            self.queues.read().get(queue).cloned()
        } else {
            match self.queues.try_read() {
                Some(map) => map.get(queue).cloned(),
                None => return Ok(false),
            }
        };
        let handle = match handle {
            Some(handle) => handle,
            None if !may_block => return Ok(false),
            // Deleted meanwhile: made again, under the map's lock (a delete takes it too).
            None => self
                .queues
                .write()
                .entry(queue.clone())
                .or_insert_with(|| {
                    Arc::new(MemoryQueue {
                        state: Mutex::new(QueueState::new(declare())),
                        ready: Condvar::new(),
                    })
                })
                .clone(),
        };
        let Some(mut state) = lock_state(&handle, may_block) else {
            return Ok(false);
        };
        if let Some(job) = jobs.iter().find(|job| state.jobs.contains_key(&job.id)) {
            return Err(QueueError::DuplicateJob(format!(
                "queue {queue:?} already holds a job with id {}: nothing was pushed",
                job.id
            )));
        }
        let before = state.waiting_count;
        for job in jobs.drain(..) {
            state.insert(job);
        }
        let became_waiting = (state.waiting_count - before) as usize;
        if became_waiting > 0 {
            handle.notify_fetchers(&state, became_waiting);
        }
        Ok(true)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        let handle = self.queue(queue)?;
        let deadline = Instant::now() + request.wait;
        let mut state = handle.state.lock();
        loop {
            if cancel.load(AtomicOrdering::Acquire) {
                return Ok(Vec::new());
            }
            if !state.paused && state.waiting_count > 0 {
                break;
            }
            state.fetchers_waiting += 1;
            let timed_out;
            (state, timed_out) = handle.ready.wait_until(state, deadline);
            state.fetchers_waiting -= 1;
            if timed_out {
                return Ok(Vec::new());
            }
        }
        let share = request.share.max(1) as u64;
        let fair = state.waiting_count.div_ceil(share) as usize;
        let take = fair.clamp(1, request.max.max(1));
        let started_at = now();
        let mut jobs = Vec::with_capacity(take);
        while jobs.len() < take {
            match state.take_next(started_at) {
                Some(job) => jobs.push(job),
                None => break,
            }
        }
        // More work remains: let the next blocked worker have it.
        if state.waiting_count > 0 && state.fetchers_waiting > 0 {
            handle.ready.notify_one();
        }
        Ok(jobs)
    }

    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        let handle = self.queue(queue)?;
        let next_event;
        let (mut processed, mut failed, mut retried) = (0u64, 0u64, 0u64);
        {
            let mut state = handle.state.lock();
            for ack in acks {
                let Some(job) = state.jobs.get_mut(&ack.id) else {
                    continue;
                };
                if job.state != JobState::Active || job.attempts != ack.attempt {
                    continue;
                }
                let id = ack.id;
                match ack.settlement {
                    Settlement::Completed { result } => {
                        job.state = JobState::Completed;
                        job.finished_at = Some(ack.at).into();
                        // Most jobs return nothing and never failed: no extras to allocate.
                        if result.is_some() || job.extras.is_some() {
                            let extras = job.extras_mut();
                            extras.result = result;
                            extras.error = None;
                            extras.traceback = None;
                        }
                        state.completed.push_back((ack.at, ack.id));
                        state.completed_total += 1;
                        processed += 1;
                    }
                    Settlement::Retry {
                        due,
                        error,
                        traceback,
                    } => {
                        let extras = job.extras_mut();
                        extras.error = Some(error);
                        extras.traceback = traceback;
                        job.scheduled_at = Some(due).into();
                        job.state = JobState::Delayed;
                        // A retry queues behind the jobs pushed meanwhile.
                        let seq = state.next_seq();
                        let job = state.jobs.get_mut(&id).expect("present");
                        job.seq = seq;
                        state.delayed.insert(Due { at: due, seq }, id);
                        state.delayed_count += 1;
                        retried += 1;
                    }
                    Settlement::Failed { error, traceback } => {
                        job.state = JobState::Failed;
                        let extras = job.extras_mut();
                        extras.error = Some(error);
                        extras.traceback = traceback;
                        job.finished_at = Some(ack.at).into();
                        state.failed.push_back((ack.at, ack.id));
                        state.failed_total += 1;
                        failed += 1;
                    }
                }
                state.active_count -= 1;
                state.active.remove(&id);
            }
            let now = now();
            if state.promote_due(now) > 0 {
                handle.notify_fetchers(&state, usize::MAX);
            }
            state.expire(now);
            next_event = state.next_event();
        }
        self.processed.fetch_add(processed, AtomicOrdering::Relaxed);
        self.failed.fetch_add(failed, AtomicOrdering::Relaxed);
        self.retried.fetch_add(retried, AtomicOrdering::Relaxed);
        self.finished.notify();
        Ok(next_event)
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let handle = self.queue(queue)?;
        let mut state = handle.state.lock();
        let mut released = 0;
        // Latest first, each to the head of its lane: the lanes keep their FIFO order.
        let mut jobs: Vec<&Job> = jobs.iter().collect();
        jobs.sort_by_key(|job| std::cmp::Reverse(job.seq));
        for returned in jobs {
            let Some(job) = state.jobs.get_mut(&returned.id) else {
                continue;
            };
            if job.state != JobState::Active || job.attempts != returned.attempts {
                continue;
            }
            job.state = JobState::Waiting;
            job.attempts -= 1;
            job.started_at = MaybeTime::NONE;
            let (priority, seq, id) = (job.priority, job.seq, job.id);
            state.waiting.push_front(priority, seq, id);
            state.active.remove(&id);
            state.active_count -= 1;
            state.waiting_count += 1;
            released += 1;
        }
        handle.notify_fetchers(&state, released);
        Ok(())
    }

    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
        let handle = self.queue(queue)?;
        let mut state = handle.state.lock();
        let promoted = state.promote_due(now);
        if promoted > 0 {
            handle.notify_fetchers(&state, promoted);
        }
        state.expire(now);
        Ok(state.next_event())
    }

    fn wake(&self, queue: &str) {
        if let Ok(handle) = self.queue(queue) {
            let _state = handle.state.lock();
            handle.ready.notify_all();
        }
    }

    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.find(|state| state.jobs.get(&id).map(|j| (**j).clone())))
    }

    fn list_jobs(&self, queue: &str, state: Option<JobState>, limit: usize) -> Result<Vec<Job>> {
        let handle = self.queue(queue)?;
        let guard = handle.state.lock();
        // Each state in run order, touching no more entries than needed: this holds the lock.
        let mut jobs = Vec::new();
        let wanted = |s: JobState| state.is_none_or(|w| w == s);
        if wanted(JobState::Active) {
            let mut active: Vec<&Job> = guard
                .active
                .keys()
                .filter_map(|id| guard.jobs.get(id).map(|job| &**job))
                .collect();
            active.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
            jobs.extend(active.into_iter().take(limit).cloned());
        }
        if wanted(JobState::Waiting) {
            let live = guard
                .waiting
                .lanes
                .iter()
                .rev()
                .flatten()
                .filter_map(|(seq, id)| {
                    let job = guard.jobs.get(id)?;
                    (job.state == JobState::Waiting && job.seq == *seq).then_some(&**job)
                });
            jobs.extend(live.take(limit.saturating_sub(jobs.len())).cloned());
        }
        if wanted(JobState::Delayed) && jobs.len() < limit {
            let due = guard.delayed.values().filter_map(|id| guard.jobs.get(id));
            jobs.extend(due.take(limit - jobs.len()).map(|job| (**job).clone()));
        }
        for (list, finished) in [
            (&guard.completed, JobState::Completed),
            (&guard.failed, JobState::Failed),
        ] {
            if !wanted(finished) || jobs.len() >= limit {
                continue;
            }
            // Newest first; skip entries whose job has moved on.
            let live = list.iter().rev().filter_map(|(at, id)| {
                let job = guard.jobs.get(id)?;
                (job.state == finished && job.finished_at.get() == Some(*at)).then_some(&**job)
            });
            jobs.extend(live.take(limit - jobs.len()).cloned());
        }
        jobs.truncate(limit);
        Ok(jobs)
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        let retried = self.find(|state| {
            let job = state.jobs.get_mut(&id)?;
            if job.state != JobState::Failed {
                return Some(false);
            }
            job.attempts = 0;
            job.started_at = MaybeTime::NONE;
            job.scheduled_at = MaybeTime::NONE;
            job.seq = 0;
            job.finished_at = MaybeTime::NONE;
            // Rare (a manual retry): an O(n) removal keeps the retention list exact.
            state.failed.retain(|(_, failed)| *failed != id);
            let job = state.jobs.remove(&id).expect("present");
            state.insert(*job);
            Some(true)
        });
        if retried == Some(true) {
            // `insert` bumped the waiting count; wake a worker of that queue.
            let queues: Vec<Arc<MemoryQueue>> = self.queues.read().values().cloned().collect();
            for q in queues {
                let state = q.state.lock();
                if state.jobs.contains_key(&id) {
                    q.notify_fetchers(&state, 1);
                }
            }
        }
        Ok(retried.unwrap_or(false))
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let handle = self.queue(queue)?;
        let mut state = handle.state.lock();
        state.paused = paused;
        if !paused && state.waiting_count > 0 {
            handle.ready.notify_all();
        }
        Ok(())
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        let handle = self.queue(queue)?;
        let removed = {
            let mut state = handle.state.lock();
            let before = state.jobs.len();
            state
                .jobs
                .retain(|_, job| !matches!(job.state, JobState::Waiting | JobState::Delayed));
            state.waiting.clear();
            state.delayed.clear();
            state.waiting_count = 0;
            state.delayed_count = 0;
            before - state.jobs.len()
        };
        self.finished.notify();
        Ok(removed)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        let removed = self.queues.write().remove(queue);
        if let Some(handle) = &removed {
            handle.ready.notify_all();
        }
        self.finished.notify();
        Ok(removed.is_some())
    }

    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        Ok(self.queue(queue)?.state.lock().counts())
    }

    fn queue_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.queues.read().keys().map(|k| k.to_string()).collect();
        names.sort();
        Ok(names)
    }

    fn totals(&self) -> Result<Totals> {
        Ok(Totals {
            processed: self.processed.load(AtomicOrdering::Relaxed),
            failed: self.failed.load(AtomicOrdering::Relaxed),
            retried: self.retried.load(AtomicOrdering::Relaxed),
        })
    }

    fn wait_finished(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
        // Outer `None`: keep waiting. Inner `None`: the job is unknown (or gone).
        let found = self.finished.wait_until(timeout, None, || {
            match self.find(|state| state.jobs.get(&id).map(|j| (**j).clone())) {
                Some(job) if job.state.is_finished() => Some(Some(job)),
                Some(_) => None,
                None => Some(None),
            }
        });
        Ok(found.flatten())
    }

    fn wait_idle(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
        let idle = self.finished.wait_until(timeout, None, || {
            let queues: Vec<Arc<MemoryQueue>> = match queue {
                Some(name) => self.queues.read().get(name).cloned().into_iter().collect(),
                None => self.queues.read().values().cloned().collect(),
            };
            queues
                .iter()
                .all(|q| q.state.lock().is_idle())
                .then_some(())
        });
        Ok(idle.is_some())
    }

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        self.schedules
            .lock()
            .insert(schedule.id.clone(), schedule.clone());
        Ok(())
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        self.last_ticks.lock().remove(id);
        Ok(self.schedules.lock().remove(id).is_some())
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.schedules.lock().values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobOptions, Payload};

    const RETENTION: Retention = Retention {
        ttl: 3600.0,
        keep_completed: 2,
        keep_failed: 10,
    };

    fn declaration() -> QueueDeclaration {
        QueueDeclaration {
            retention: RETENTION,
            settings: Payload::from(&b"{}"[..]),
        }
    }

    fn setup() -> (MemoryBackend, Arc<str>) {
        let backend = MemoryBackend::new();
        let queue: Arc<str> = Arc::from("q");
        backend.declare_queue(&queue, &declaration(), true).unwrap();
        (backend, queue)
    }

    fn job(queue: &Arc<str>, n: u32, priority: Priority, delay: f64) -> Job {
        let data: Payload = Arc::from(format!("{{\"n\":{n}}}").into_bytes());
        let options = JobOptions {
            priority,
            delay,
            ..Default::default()
        };
        Job::new(queue.clone(), data, options, 3, 300.0)
    }

    fn fetch_all(backend: &MemoryBackend, queue: &str) -> Vec<Job> {
        let request = FetchRequest {
            max: 1000,
            share: 1,
            wait: Duration::ZERO,
            start_all: false,
        };
        backend
            .fetch(queue, request, &AtomicBool::new(false))
            .unwrap()
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| String::from_utf8(j.data.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn heap_orders_by_priority_then_fifo() {
        let (backend, queue) = setup();
        let order = [
            (1, Priority::Low),
            (2, Priority::Normal),
            (3, Priority::Critical),
            (4, Priority::Normal),
            (5, Priority::High),
            (6, Priority::Critical),
            (7, Priority::Low),
        ];
        let mut jobs: Vec<Job> = order
            .iter()
            .map(|(n, p)| job(&queue, *n, *p, 0.0))
            .collect();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let fetched = fetch_all(&backend, &queue);
        let expected: Vec<String> = [3, 6, 5, 2, 4, 1, 7]
            .iter()
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect();
        assert_eq!(names(&fetched), expected);
        assert!(fetched
            .iter()
            .all(|j| j.attempts == 1 && j.state == JobState::Active));
    }

    #[test]
    fn released_jobs_keep_their_place() {
        let (backend, queue) = setup();
        let mut jobs: Vec<Job> = (1..=3)
            .map(|n| job(&queue, n, Priority::Normal, 0.0))
            .collect();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let request = FetchRequest {
            max: 2,
            share: 1,
            wait: Duration::ZERO,
            start_all: false,
        };
        let first = backend
            .fetch(&queue, request, &AtomicBool::new(false))
            .unwrap();
        backend.release(&queue, &first).unwrap();
        let again = fetch_all(&backend, &queue);
        assert_eq!(names(&again), vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
        assert_eq!(again[0].attempts, 1, "a released run is not counted");
    }

    #[test]
    fn delayed_jobs_wait_for_tick() {
        let (backend, queue) = setup();
        let mut jobs = vec![job(&queue, 1, Priority::Normal, 60.0)];
        let due = jobs[0].due_at();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        assert!(fetch_all(&backend, &queue).is_empty());
        assert_eq!(backend.tick(&queue, due - 1.0).unwrap(), Some(due));
        assert!(fetch_all(&backend, &queue).is_empty());
        backend.tick(&queue, due).unwrap();
        assert_eq!(fetch_all(&backend, &queue).len(), 1);
    }

    #[test]
    fn retention_keeps_the_newest_completed_jobs() {
        let (backend, queue) = setup();
        let mut jobs: Vec<Job> = (1..=4)
            .map(|n| job(&queue, n, Priority::Normal, 0.0))
            .collect();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let fetched = fetch_all(&backend, &queue);
        let at = now();
        let acks = fetched
            .iter()
            .map(|j| Ack {
                id: j.id,
                attempt: 1,
                at,
                settlement: Settlement::Completed { result: None },
            })
            .collect();
        backend.settle(&queue, acks).unwrap();
        let kept = backend
            .list_jobs(&queue, Some(JobState::Completed), 10)
            .unwrap();
        assert_eq!(names(&kept), vec!["{\"n\":4}", "{\"n\":3}"]);
        let counts = backend.counts(&queue).unwrap();
        assert_eq!((counts.completed, counts.active), (4, 0));
        // Age: everything finished more than `ttl` ago goes.
        backend.tick(&queue, at + RETENTION.ttl + 1.0).unwrap();
        assert!(backend
            .list_jobs(&queue, Some(JobState::Completed), 10)
            .unwrap()
            .is_empty());
        assert!(backend.get_job(fetched[3].id).unwrap().is_none());
    }

    #[test]
    fn stale_acks_are_ignored_and_failed_jobs_retry() {
        let (backend, queue) = setup();
        let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
        let id = jobs[0].id;
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        fetch_all(&backend, &queue);
        let fail = |attempt| Ack {
            id,
            attempt,
            at: now(),
            settlement: Settlement::Failed {
                error: "E: boom".into(),
                traceback: None,
            },
        };
        backend.settle(&queue, vec![fail(7)]).unwrap();
        assert_eq!(
            backend.get_job(id).unwrap().unwrap().state,
            JobState::Active
        );
        backend.settle(&queue, vec![fail(1)]).unwrap();
        let failed = backend.get_job(id).unwrap().unwrap();
        assert_eq!(failed.state, JobState::Failed);
        assert_eq!(failed.extras().unwrap().error.as_deref(), Some("E: boom"));
        assert!(backend.retry_failed(id).unwrap());
        let again = fetch_all(&backend, &queue);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        assert!(
            !backend.retry_failed(id).unwrap(),
            "only failed jobs can be retried"
        );
    }

    #[test]
    fn blocked_fetch_wakes_on_push() {
        let (backend, queue) = setup();
        let backend = Arc::new(backend);
        let worker = {
            let backend = backend.clone();
            let queue = queue.clone();
            std::thread::spawn(move || {
                let request = FetchRequest {
                    max: 10,
                    share: 1,
                    wait: Duration::from_secs(30),
                    start_all: false,
                };
                backend
                    .fetch(&queue, request, &AtomicBool::new(false))
                    .unwrap()
            })
        };
        // Wait until the worker is really blocked, then push.
        while backend.queue(&queue).unwrap().state.lock().fetchers_waiting == 0 {
            std::thread::yield_now();
        }
        let started = Instant::now();
        let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let got = worker.join().unwrap();
        assert_eq!(got.len(), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn paused_queues_hand_out_nothing() {
        let (backend, queue) = setup();
        backend.set_paused(&queue, true).unwrap();
        let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        assert!(fetch_all(&backend, &queue).is_empty());
        assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
        backend.set_paused(&queue, false).unwrap();
        assert_eq!(fetch_all(&backend, &queue).len(), 1);
    }

    #[test]
    fn fair_share_splits_a_backlog() {
        let (backend, queue) = setup();
        let mut jobs: Vec<Job> = (1..=10)
            .map(|n| job(&queue, n, Priority::Normal, 0.0))
            .collect();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let request = FetchRequest {
            max: 256,
            share: 5,
            wait: Duration::ZERO,
            start_all: false,
        };
        let got = backend
            .fetch(&queue, request, &AtomicBool::new(false))
            .unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn an_id_the_queue_holds_is_never_pushed_again() {
        let (backend, queue) = setup();
        let first = job(&queue, 1, Priority::Normal, 0.0);
        let mut again = first.clone();
        again.data = Arc::from(&b"\"other\""[..]);
        backend
            .push(&queue, &mut vec![first.clone()], true, &declaration)
            .unwrap();
        let pushed = backend.push(
            &queue,
            &mut vec![job(&queue, 2, Priority::Normal, 0.0), again],
            true,
            &declaration,
        );
        assert!(
            matches!(pushed, Err(QueueError::DuplicateJob(_))),
            "{pushed:?}"
        );
        // Nothing of the refused batch was stored, and the first job is intact.
        assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
        assert_eq!(backend.get_job(first.id).unwrap().unwrap().data, first.data);
    }

    #[test]
    fn a_push_to_a_deleted_queue_creates_it_again() {
        let (backend, queue) = setup();
        backend.delete(&queue).unwrap();
        let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        assert_eq!(backend.queue_names().unwrap(), ["q"]);
        assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
    }

    #[test]
    fn a_promoted_job_handed_back_stays_behind_jobs_that_waited_before_it() {
        let (backend, queue) = setup();
        let delayed = job(&queue, 1, Priority::Normal, 0.5);
        let due = delayed.due_at();
        backend
            .push(&queue, &mut vec![delayed], true, &declaration)
            .unwrap();
        backend
            .push(
                &queue,
                &mut vec![job(&queue, 2, Priority::Normal, 0.0)],
                true,
                &declaration,
            )
            .unwrap();
        backend.tick(&queue, due).unwrap();
        let first = fetch_all(&backend, &queue);
        assert_eq!(names(&first), vec!["{\"n\":2}", "{\"n\":1}"]);
        backend.release(&queue, &first).unwrap();
        // Promoted after job 2 was pushed, job 1 queues behind it, also once handed back.
        assert_eq!(
            names(&fetch_all(&backend, &queue)),
            vec!["{\"n\":2}", "{\"n\":1}"]
        );
    }

    #[test]
    fn listings_return_the_first_jobs_of_each_state_in_order() {
        let (backend, queue) = setup();
        // Delayed jobs pushed in a shuffled order of due times: listed by due time.
        let mut delays: Vec<u32> = (1..=200).collect();
        fastrand::shuffle(&mut delays);
        let mut jobs: Vec<Job> = delays
            .iter()
            .map(|n| job(&queue, *n, Priority::Normal, 100.0 + f64::from(*n)))
            .collect();
        backend.push(&queue, &mut jobs, true, &declaration).unwrap();
        let listed = backend
            .list_jobs(&queue, Some(JobState::Delayed), 5)
            .unwrap();
        assert_eq!(
            names(&listed),
            (1..=5)
                .map(|n| format!("{{\"n\":{n}}}"))
                .collect::<Vec<_>>()
        );
        // Active: the fetched ones, by priority then push order.
        let mut waiting = vec![
            job(&queue, 300, Priority::Low, 0.0),
            job(&queue, 301, Priority::High, 0.0),
        ];
        backend
            .push(&queue, &mut waiting, true, &declaration)
            .unwrap();
        fetch_all(&backend, &queue);
        let active = backend
            .list_jobs(&queue, Some(JobState::Active), 10)
            .unwrap();
        assert_eq!(names(&active), vec!["{\"n\":301}", "{\"n\":300}"]);
    }

    #[test]
    fn cron_ticks_are_claimed_once() {
        let (backend, queue) = setup();
        let pushed: Vec<bool> = [100.0, 100.0, 101.0]
            .into_iter()
            .map(|tick| {
                let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
                backend
                    .push_tick(&queue, &mut jobs, "s", tick, &declaration)
                    .unwrap()
            })
            .collect();
        assert_eq!(pushed, [true, false, true]);
        assert_eq!(backend.counts(&queue).unwrap().waiting, 2);
    }
}
