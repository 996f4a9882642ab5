//! The in-process backend: one lock per queue around the waiting lanes, the delayed jobs by due
//! time, the job store and the retention lists. Jobs last until the process exits — unless a
//! journal keeps them: the file backend is this store with its log as the journal.
//!
//! `queue.rs` holds one queue's state and its state moves; `push.rs` the storing of new jobs;
//! `journal.rs` what each move tells the journal; `replay.rs` applies a journal's events to a fresh store; this file the backend:
//! the queue map, totals, schedules, and the `Backend` trait.

mod by_id;
mod counters;
mod journal;
mod push;
mod queue;
mod replay;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Instant;

use crate::sync::{Mutex, RwLock};

use super::{
    Ack, Backend, FetchRequest, NonBlockingPush, QueueCounts, QueueDeclaration, Removal,
    ScheduleRecord, Totals,
};
use crate::error::{QueueError, Result};
use crate::job::{now, Job, JobId, JobState, Payload, Timestamp};

use counters::{RunTotals, WorkerRegistry};
pub use journal::{Event, Journal, Lsn, NoJournal};
use push::Stored;
use queue::MemoryQueue;

pub struct MemoryBackend<J: Journal = NoJournal> {
    queues: RwLock<HashMap<Arc<str>, Arc<MemoryQueue>>>,
    totals: RunTotals,
    schedules: Mutex<HashMap<Arc<str>, ScheduleRecord>>,
    last_ticks: Mutex<HashMap<Arc<str>, Timestamp>>,
    /// Live worker processes. Not journaled: a worker beats again within seconds.
    workers: WorkerRegistry,
    journal: J,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::with_journal(NoJournal)
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl<J: Journal> MemoryBackend<J> {
    /// A store whose changes are all told to `journal`, under the lock of what they change.
    pub fn with_journal(journal: J) -> Self {
        MemoryBackend {
            queues: RwLock::default(),
            totals: RunTotals::default(),
            schedules: Mutex::default(),
            last_ticks: Mutex::default(),
            workers: WorkerRegistry::default(),
            journal,
        }
    }

    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// Records an event built only when the journal keeps events.
    fn record<'a>(&self, event: impl FnOnce() -> Event<'a>) -> Result<Lsn> {
        if J::RECORDS {
            self.journal.record(&event())
        } else {
            Ok(0)
        }
    }

    fn queue(&self, name: &str) -> Result<Arc<MemoryQueue>> {
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| QueueError::UnknownQueue(name.to_string()))
    }

    /// The queue, made (and its declaration recorded) if it does not exist; under the map's
    /// lock, which a delete takes too.
    fn queue_or_create(
        &self,
        queue: &Arc<str>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<Arc<MemoryQueue>> {
        if let Some(handle) = self.queues.read().get(queue).cloned() {
            return Ok(handle);
        }
        let mut queues = self.queues.write();
        if let Some(handle) = queues.get(queue) {
            return Ok(handle.clone());
        }
        let declaration = declare();
        let lsn = self.record(|| Event::Declare {
            queue: Cow::Borrowed(queue),
            declaration: Cow::Borrowed(&declaration),
        })?;
        let handle = Arc::new(MemoryQueue::new(declaration));
        queues.insert(queue.clone(), handle.clone());
        drop(queues);
        self.journal.commit(lsn)?;
        Ok(handle)
    }

    /// `Backend::release` of runs (id, attempt).
    pub fn release_runs(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        let handle = self.queue(queue)?;
        let mut state = handle.state.lock();
        live(&state, queue)?;
        self.record(|| Event::Release {
            queue: Cow::Borrowed(queue),
            runs: Cow::Borrowed(runs),
        })?;
        let released = state.release(runs);
        handle.notify_fetchers(&state, released);
        Ok(())
    }

    /// Every queue with its name, the map's lock let go (each is then locked on its own).
    fn named_queues(&self) -> Vec<(Arc<str>, Arc<MemoryQueue>)> {
        self.queues
            .read()
            .iter()
            .map(|(name, q)| (name.clone(), q.clone()))
            .collect()
    }

    /// The queue holding job `id`.
    fn queue_holding(&self, id: JobId) -> Option<(Arc<str>, Arc<MemoryQueue>)> {
        self.named_queues()
            .into_iter()
            .find(|(_, q)| q.state.lock().jobs.contains_key(&id))
    }
}

#[cfg(test)]
impl<J: Journal> MemoryBackend<J> {
    /// Holds a queue's lock on another thread until the returned sender is dropped: moves that
    /// looked the queue up wait for it (tests of races).
    pub(crate) fn hold_queue(&self, name: &str) -> std::sync::mpsc::Sender<()> {
        let handle = self.queue(name).expect("the queue exists");
        let (locked, is_locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _state = handle.state.lock();
            let _ = locked.send(());
            let _ = released.recv();
        });
        is_locked.recv().expect("locked");
        release
    }
}

/// `UnknownQueue` for a queue deleted after its handle was looked up.
fn live(state: &queue::QueueState, queue: &str) -> Result<()> {
    if state.deleted {
        return Err(QueueError::UnknownQueue(queue.to_string()));
    }
    Ok(())
}

impl<J: Journal> NonBlockingPush for MemoryBackend<J> {
    fn try_push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        // A push that must wait for the disk before it returns cannot be done in place.
        if !self.journal.commits_at_once() {
            return Ok(false);
        }
        Ok(matches!(
            self.store(queue, jobs, false, declare, None)?,
            Stored::At(_)
        ))
    }

    fn try_push_uncommitted(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<Option<u64>> {
        match self.store(queue, jobs, false, declare, None)? {
            // Nothing to wait for: ticket 0 is always committed.
            Stored::At(_) if self.journal.commits_at_once() => Ok(Some(0)),
            Stored::At(lsn) => Ok(Some(lsn)),
            Stored::WouldWait | Stored::TickTaken => Ok(None),
        }
    }

    fn commit(&self, ticket: u64) -> Result<()> {
        self.journal.commit(ticket)
    }
}

/// A push stored (it may run) whose record could not be made durable: neither pushed for sure
/// nor not pushed.
fn unknown_outcome(error: QueueError, ids: Vec<JobId>) -> QueueError {
    QueueError::PushOutcomeUnknown {
        message: format!(
            "the jobs were stored but may not survive a crash of the machine ({error}); \
             get_job tells whether each is there"
        ),
        ids,
    }
}

impl<J: Journal> Backend for MemoryBackend<J> {
    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        let lsn;
        let stored = loop {
            let handle = self.queue_or_create(queue, &|| declaration.clone())?;
            let mut state = handle.state.lock();
            if state.deleted {
                continue; // deleted since it was looked up: made again
            }
            if replace && state.declaration != *declaration {
                lsn = self.record(|| Event::Declare {
                    queue: Cow::Borrowed(queue),
                    declaration: Cow::Borrowed(declaration),
                })?;
                state.declare(declaration.clone());
            } else {
                lsn = 0;
            }
            break state.declaration.clone();
        };
        self.journal.commit(lsn)?;
        Ok(stored)
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
        match self.store(queue, jobs, true, declare, Some((schedule, tick)))? {
            Stored::At(lsn) => {
                self.journal.commit(lsn)?;
                Ok(true)
            }
            Stored::TickTaken | Stored::WouldWait => Ok(false),
        }
    }

    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        // Only a commit that waits for the disk can fail after the jobs are stored.
        let ids: Vec<JobId> = if J::RECORDS && !self.journal.commits_at_once() {
            jobs.iter().map(|job| job.id).collect()
        } else {
            Vec::new()
        };
        if let Stored::At(lsn) = self.store(queue, jobs, true, declare, None)? {
            self.journal
                .commit(lsn)
                .map_err(|error| unknown_outcome(error, ids))?;
        }
        Ok(())
    }

    fn nonblocking(&self) -> Option<&dyn NonBlockingPush> {
        Some(self)
    }

    fn fetch(&self, queue: &str, request: FetchRequest, cancel: &AtomicBool) -> Result<Vec<Job>> {
        let handle = self.queue(queue)?;
        let deadline = Instant::now() + request.wait;
        let mut state = handle.state.lock();
        loop {
            live(&state, queue)?;
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
        if J::RECORDS && !jobs.is_empty() {
            let runs: Vec<(JobId, u32)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
            let recorded = self.journal.record(&Event::Claim {
                queue: Cow::Borrowed(queue),
                at: started_at,
                runs: Cow::Borrowed(&runs),
            });
            if let Err(error) = recorded {
                // Not taken after all: back in their places, as if never fetched.
                state.release(&runs);
                return Err(error);
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
        {
            let mut state = handle.state.lock();
            live(&state, queue)?;
            self.record(|| Event::Settle {
                queue: Cow::Borrowed(queue),
                acks: Cow::Borrowed(&acks),
            })?;
            let settled = state.settle(acks);
            // Counted before the lock goes: whoever sees the queue idle sees these totals.
            self.totals.add(&settled);
            let now = now();
            if state.promote_due(now) > 0 {
                handle.notify_fetchers(&state, usize::MAX);
            }
            state.expire(now);
            next_event = state.next_event();
        }
        Ok(next_event)
    }

    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        let runs: Vec<(JobId, u32)> = jobs.iter().map(|job| (job.id, job.attempts)).collect();
        self.release_runs(queue, &runs)
    }

    fn hand_back(&self, queue: &str, runs: &[(JobId, u32)]) -> Result<Vec<JobId>> {
        // A store that ends with this process keeps nothing to hand back to.
        if !J::RECORDS || runs.is_empty() {
            return Ok(Vec::new());
        }
        let handle = self.queue(queue)?;
        let (lost, lsn) = {
            let mut state = handle.state.lock();
            live(&state, queue)?;
            let at = now();
            let lsn = self.journal.record(&Event::Lost {
                queue: Cow::Borrowed(queue),
                at,
                runs: Cow::Borrowed(runs),
            })?;
            let lost = state.lose(runs, at);
            // Those that wait again are for the workers blocked on this queue.
            handle.notify_fetchers(&state, usize::MAX);
            (lost, lsn)
        };
        self.journal.commit(lsn)?;
        Ok(lost)
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
        let queues: Vec<Arc<MemoryQueue>> = self.queues.read().values().cloned().collect();
        Ok(queues
            .iter()
            .find_map(|q| q.state.lock().jobs.get(&id).map(|job| (**job).clone())))
    }

    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        Ok(self.queue(queue)?.state.lock().list(state, offset, limit))
    }

    fn retry_failed(&self, id: JobId) -> Result<bool> {
        self.retry_one(id)
    }

    fn remove_job(&self, id: JobId) -> Result<Removal> {
        self.remove_one(id)
    }

    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let handle = self.queue(queue)?;
        let lsn;
        {
            let mut state = handle.state.lock();
            live(&state, queue)?;
            lsn = self.record(|| Event::Paused {
                queue: Cow::Borrowed(queue),
                paused,
            })?;
            state.paused = paused;
            if !paused && state.waiting_count > 0 {
                handle.ready.notify_all();
            }
        }
        self.journal.commit(lsn)
    }

    fn clear(&self, queue: &str) -> Result<usize> {
        let handle = self.queue(queue)?;
        let (removed, lsn) = {
            let mut state = handle.state.lock();
            live(&state, queue)?;
            let lsn = self.record(|| Event::Clear {
                queue: Cow::Borrowed(queue),
            })?;
            (state.clear(), lsn)
        };
        self.journal.commit(lsn)?;
        Ok(removed)
    }

    fn delete(&self, queue: &str) -> Result<bool> {
        let lsn = {
            let mut queues = self.queues.write();
            let Some(handle) = queues.get(queue).cloned() else {
                return Ok(false);
            };
            // Marked under its own lock before the event: a move that looked the queue up
            // before the delete finds it gone, and neither happens nor is recorded after it.
            let mut state = handle.state.lock();
            let lsn = self.record(|| Event::Delete {
                queue: Cow::Borrowed(queue),
            })?;
            state.deleted = true;
            queues.remove(queue);
            handle.ready.notify_all();
            lsn
        };
        self.journal.commit(lsn)?;
        Ok(true)
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
        // A durable store sums its queues' totals, which the log keeps across restarts.
        let queues = J::RECORDS.then(|| self.named_queues());
        Ok(self.totals.get(queues.as_deref()))
    }

    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        let queues: Vec<Arc<MemoryQueue>> = match queue {
            Some(name) => self.queues.read().get(name).cloned().into_iter().collect(),
            None => self.queues.read().values().cloned().collect(),
        };
        Ok(queues.iter().all(|q| q.state.lock().is_idle()))
    }

    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        let lsn = {
            let mut schedules = self.schedules.lock();
            if schedules.get(&schedule.id) == Some(schedule) {
                return Ok(());
            }
            let lsn = self.record(|| Event::SaveSchedule(Cow::Borrowed(schedule)))?;
            schedules.insert(schedule.id.clone(), schedule.clone());
            lsn
        };
        self.journal.commit(lsn)
    }

    fn remove_schedule(&self, id: &str) -> Result<bool> {
        let (removed, lsn) = {
            let mut schedules = self.schedules.lock();
            if !schedules.contains_key(id) {
                return Ok(false);
            }
            let lsn = self.record(|| Event::RemoveSchedule(Cow::Borrowed(id)))?;
            self.last_ticks.lock().remove(id);
            (schedules.remove(id).is_some(), lsn)
        };
        self.journal.commit(lsn)?;
        Ok(removed)
    }

    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        Ok(self.schedules.lock().values().cloned().collect())
    }

    fn has_schedule(&self, id: &str) -> Result<bool> {
        Ok(self.schedules.lock().contains_key(id))
    }

    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()> {
        self.workers.beat(worker, info, ttl);
        Ok(())
    }

    fn workers(&self) -> Result<Vec<Payload>> {
        Ok(self.workers.live())
    }

    fn leave(&self, worker: &str) -> Result<()> {
        self.workers.leave(worker);
        Ok(())
    }

    fn close(&self) {
        self.journal.close();
    }
}
