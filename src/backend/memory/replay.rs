//! A journal read back: its events applied to a fresh store by the same state moves that made
//! them, recording nothing. Events that no longer fit (a job that moved on) are skipped, as the
//! live moves skip them.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Event, Journal, MemoryBackend, MemoryQueue, QueueDeclaration};
use crate::error::Result;
use crate::job::JobId;

/// About how large one event of a snapshot gets.
const SNAPSHOT_EVENT_BYTES: usize = 4 << 20;

impl<J: Journal> MemoryBackend<J> {
    /// Applies one event read back from the journal.
    pub fn replay(&self, event: Event<'_>) {
        match event {
            Event::Push { queue, jobs, tick } => {
                if !jobs.is_empty() {
                    let handle = self.replayed_queue(&queue, None);
                    let mut state = handle.state.lock();
                    for job in jobs.into_owned() {
                        // A job dropped by retention meanwhile may come back with its id.
                        state.remove(&job.id);
                        state.insert(job);
                    }
                }
                if let Some((schedule, at)) = tick {
                    self.last_ticks.lock().insert(Arc::from(&*schedule), at);
                }
            }
            Event::Declare { queue, declaration } => {
                let declaration = declaration.into_owned();
                let handle = self.replayed_queue(&queue, Some(&declaration));
                handle.state.lock().declare(declaration);
            }
            Event::Delete { queue } => {
                self.queues.write().remove(&*queue);
            }
            Event::SaveSchedule(schedule) => {
                let schedule = schedule.into_owned();
                self.schedules.lock().insert(schedule.id.clone(), schedule);
            }
            Event::RemoveSchedule(id) => {
                self.schedules.lock().remove(&*id);
                self.last_ticks.lock().remove(&*id);
            }
            event => {
                let queue = match &event {
                    Event::Claim { queue, .. }
                    | Event::Settle { queue, .. }
                    | Event::Release { queue, .. }
                    | Event::Lost { queue, .. }
                    | Event::RetryFailed { queue, .. }
                    | Event::RemoveJob { queue, .. }
                    | Event::Paused { queue, .. }
                    | Event::Clear { queue }
                    | Event::Totals { queue, .. } => queue.clone(),
                    _ => unreachable!("handled above"),
                };
                let Ok(handle) = self.queue(&queue) else {
                    return;
                };
                let mut state = handle.state.lock();
                match event {
                    Event::Claim { at, runs, .. } => state.claim(&runs, at),
                    Event::Settle { acks, .. } => {
                        state.settle(acks.into_owned());
                    }
                    Event::Release { runs, .. } => {
                        state.release(&runs);
                    }
                    Event::Lost { at, runs, .. } => {
                        state.lose(&runs, at);
                    }
                    Event::RetryFailed { id, .. } => {
                        state.retry_failed(id);
                    }
                    Event::RemoveJob { id, .. } => {
                        state.remove(&id);
                    }
                    Event::Paused { paused, .. } => state.paused = paused,
                    Event::Clear { .. } => {
                        state.clear();
                    }
                    Event::Totals {
                        completed, failed, ..
                    } => {
                        state.completed_total = completed;
                        state.failed_total = failed;
                    }
                    _ => unreachable!("handled above"),
                }
            }
        }
    }

    /// The queue an event read back names, made if the log did not declare it (a damaged log).
    fn replayed_queue(
        &self,
        queue: &str,
        declaration: Option<&QueueDeclaration>,
    ) -> Arc<MemoryQueue> {
        if let Ok(handle) = self.queue(queue) {
            return handle;
        }
        let declaration = declaration.cloned().unwrap_or_else(|| QueueDeclaration {
            retention: crate::backend::Retention {
                ttl: f64::INFINITY,
                keep_completed: usize::MAX,
                keep_failed: usize::MAX,
            },
            settings: Arc::from(&b"{}"[..]),
        });
        self.queues
            .write()
            .entry(Arc::from(queue))
            .or_insert_with(|| Arc::new(MemoryQueue::new(declaration)))
            .clone()
    }

    /// The runs active now: (queue, id, attempt).
    pub fn active_runs(&self) -> Vec<(Arc<str>, JobId, u32)> {
        let mut runs = Vec::new();
        for (name, handle) in self.named_queues() {
            let state = handle.state.lock();
            runs.extend(
                state
                    .active
                    .keys()
                    .filter_map(|id| state.jobs.get(id))
                    .map(|job| (name.clone(), job.id, job.attempts)),
            );
        }
        runs
    }

    /// Runs lost with the process that ran them: waiting again (the run counted) or failed,
    /// out of attempts; recorded, so that a later replay agrees. Returns how many there were.
    pub fn recover_lost_runs(&self, runs: &[(Arc<str>, JobId, u32)]) -> Result<usize> {
        let mut by_queue: HashMap<&Arc<str>, Vec<(JobId, u32)>> = HashMap::new();
        for (queue, id, attempt) in runs {
            by_queue.entry(queue).or_default().push((*id, *attempt));
        }
        let mut lost = 0;
        for (queue, runs) in by_queue {
            match crate::backend::Backend::hand_back(self, queue, &runs) {
                Ok(ids) => lost += ids.len(),
                Err(crate::error::QueueError::UnknownQueue(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(lost)
    }

    /// Everything the store holds, as events that rebuild it (for compacting a log), taken
    /// under every lock at once so that the picture is whole; `cut` runs while the locks are
    /// held (the journal starts a new segment there).
    pub fn snapshot(&self, cut: impl FnOnce() -> Result<()>) -> Result<Vec<Event<'static>>> {
        use std::borrow::Cow;
        let queues = self.queues.read();
        let mut names: Vec<&Arc<str>> = queues.keys().collect();
        names.sort();
        let handles: Vec<(&Arc<str>, &Arc<MemoryQueue>)> =
            names.iter().map(|name| (*name, &queues[*name])).collect();
        let states: Vec<_> = handles
            .iter()
            .map(|(name, handle)| (*name, handle.state.lock()))
            .collect();
        let schedules = self.schedules.lock();
        let last_ticks = self.last_ticks.lock();
        cut()?;
        let mut events = Vec::new();
        for (name, state) in &states {
            let queue = || Cow::Owned(name.to_string());
            events.push(Event::Declare {
                queue: queue(),
                declaration: Cow::Owned(state.declaration.clone()),
            });
            events.push(Event::Totals {
                queue: queue(),
                completed: state.completed_total,
                failed: state.failed_total,
            });
            if state.paused {
                events.push(Event::Paused {
                    queue: queue(),
                    paused: true,
                });
            }
            // In events of a few MiB each, however large the jobs.
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for job in state.in_place_order() {
                bytes += job.encoded_len()
                    + job.extras().map_or(0, |e| {
                        e.result.as_ref().map_or(0, |r| r.len())
                            + e.error.as_ref().map_or(0, String::len)
                            + e.traceback.as_ref().map_or(0, String::len)
                    })
                    + 128;
                chunk.push(job);
                if bytes >= SNAPSHOT_EVENT_BYTES {
                    events.push(Event::Push {
                        queue: queue(),
                        jobs: Cow::Owned(std::mem::take(&mut chunk)),
                        tick: None,
                    });
                    bytes = 0;
                }
            }
            if !chunk.is_empty() {
                events.push(Event::Push {
                    queue: queue(),
                    jobs: Cow::Owned(chunk),
                    tick: None,
                });
            }
        }
        for schedule in schedules.values() {
            events.push(Event::SaveSchedule(Cow::Owned(schedule.clone())));
        }
        for (schedule, at) in last_ticks.iter() {
            // A tick claimed with no job: the next push of that schedule is later.
            events.push(Event::Push {
                queue: Cow::Owned(String::new()),
                jobs: Cow::Owned(Vec::new()),
                tick: Some((Cow::Owned(schedule.to_string()), *at)),
            });
        }
        Ok(events)
    }
}
