//! Storing new jobs: the one move that may create its queue, claim a cron tick, or (for a
//! caller holding the Python GIL) give up rather than wait.

use std::borrow::Cow;
use std::sync::Arc;

use super::queue::{lock_state, MemoryQueue, QueueState};
use super::{Event, Journal, Lsn, MemoryBackend};
use crate::backend::QueueDeclaration;
use crate::error::{QueueError, Result};
use crate::job::{Job, Timestamp};
use crate::sync::MutexGuard;

/// How a push went.
pub(super) enum Stored {
    At(Lsn),
    /// Not stored: it would have had to wait (`try_push`).
    WouldWait,
    /// Not stored: the cron tick was pushed before.
    TickTaken,
}

impl<J: Journal> MemoryBackend<J> {
    /// Stores jobs; with `may_block` false, `WouldWait` instead of waiting for a lock or the
    /// journal.
    pub(super) fn store(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        may_block: bool,
        declare: &dyn Fn() -> QueueDeclaration,
        tick: Option<(&str, Timestamp)>,
    ) -> Result<Stored> {
        loop {
            let handle = if may_block {
                self.queue_or_create(queue, declare)?
            } else {
                match self.queues.try_read() {
                    Some(map) => match map.get(queue) {
                        Some(handle) => handle.clone(),
                        None => return Ok(Stored::WouldWait),
                    },
                    None => return Ok(Stored::WouldWait),
                }
            };
            let Some(state) = lock_state(&handle, may_block) else {
                return Ok(Stored::WouldWait);
            };
            // Deleted since it was looked up: made again (or found made again).
            if state.deleted {
                if !may_block {
                    return Ok(Stored::WouldWait);
                }
                continue;
            }
            return self.store_locked(queue, &handle, state, jobs, may_block, tick);
        }
    }

    fn store_locked(
        &self,
        queue: &Arc<str>,
        handle: &MemoryQueue,
        mut state: MutexGuard<'_, QueueState>,
        jobs: &mut Vec<Job>,
        may_block: bool,
        tick: Option<(&str, Timestamp)>,
    ) -> Result<Stored> {
        // A cron tick is claimed with its job, in one step (and one event), under the queue's
        // lock: the timers of every manager sharing the store may fire it.
        let mut ticks = tick.map(|_| self.last_ticks.lock());
        if let (Some((schedule, at)), Some(ticks)) = (tick, &ticks) {
            if ticks.get(schedule).is_some_and(|last| *last >= at) {
                return Ok(Stored::TickTaken);
            }
        }
        if let Some(job) = jobs.iter().find(|job| state.jobs.contains_key(&job.id)) {
            return Err(QueueError::DuplicateJob(format!(
                "queue {queue:?} already holds a job with id {}: nothing was pushed",
                job.id
            )));
        }
        let lsn = if J::RECORDS {
            let event = Event::Push {
                queue: Cow::Borrowed(queue),
                jobs: Cow::Borrowed(jobs),
                tick: tick.map(|(schedule, at)| (Cow::Borrowed(schedule), at)),
            };
            if may_block {
                self.journal.record(&event)?
            } else {
                match self.journal.try_record(&event)? {
                    Some(lsn) => lsn,
                    None => return Ok(Stored::WouldWait),
                }
            }
        } else {
            0
        };
        if let (Some((schedule, at)), Some(ticks)) = (tick, &mut ticks) {
            ticks.insert(Arc::from(schedule), at);
        }
        let before = state.waiting_count;
        for job in jobs.drain(..) {
            state.insert(job);
        }
        let became_waiting = (state.waiting_count - before) as usize;
        if became_waiting > 0 {
            handle.notify_fetchers(&state, became_waiting);
        }
        Ok(Stored::At(lsn))
    }
}
