//! The in-process backend: one lock per queue around the waiting lanes, the delayed jobs by due
//! time, the job store and the retention lists. Jobs last until the process exits.
//!
//! `queue.rs` holds one queue's state; this file the backend: the queue map, totals,
//! schedules, and the `Backend` trait.

mod queue;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Instant;

use crate::sync::{Condvar, Mutex, RwLock};

use super::{
    Ack, Backend, FetchRequest, NonBlockingPush, QueueCounts, QueueDeclaration, ScheduleRecord,
    Settlement, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobState, MaybeTime, Timestamp};

use queue::{lock_state, Due, MemoryQueue, QueueState};

#[derive(Default)]
pub struct MemoryBackend {
    queues: RwLock<HashMap<Arc<str>, Arc<MemoryQueue>>>,
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
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

    /// Stores jobs; with `may_block` false, `Ok(false)` instead of waiting for a lock.
    fn store(
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
}

impl NonBlockingPush for MemoryBackend {
    fn try_push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        self.store(queue, jobs, false, declare)
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
        self.push(queue, jobs, declare)?;
        self.last_ticks.lock().insert(Arc::from(schedule), tick);
        Ok(true)
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        self.store(queue, jobs, true, declare).map(|_| ())
    }

    fn nonblocking(&self) -> Option<&dyn NonBlockingPush> {
        Some(self)
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
        Ok(removed)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        let removed = self.queues.write().remove(queue);
        if let Some(handle) = &removed {
            handle.ready.notify_all();
        }
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

    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        let queues: Vec<Arc<MemoryQueue>> = match queue {
            Some(name) => self.queues.read().get(name).cloned().into_iter().collect(),
            None => self.queues.read().values().cloned().collect(),
        };
        Ok(queues.iter().all(|q| q.state.lock().is_idle()))
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
