//! Waiting for a job to finish or for queues to drain. Settles made here wake the waiters at
//! once; where other processes share the store, waiters also look again now and then, since
//! those processes' settles cannot wake them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::{QueueError, Result};
use crate::job::{validate_queue_name, Job, JobId};
use crate::sync::{Condvar, Mutex};

use super::Engine;

/// How often a wait re-reads state that other processes change: the first and the last
/// interval (doubling in between).
const SHARED_POLL: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(25));

impl Engine {
    fn poll(&self) -> Option<(Duration, Duration)> {
        self.backend.shared().then_some(SHARED_POLL)
    }

    /// Waits until the job is completed or finally failed: `Some(job)`, or `None` when the
    /// timeout passed first. An id no backend holds is `JobNotFound`.
    pub fn wait_for_job(&self, id: JobId, timeout: Option<Duration>) -> Result<Option<Job>> {
        self.check_open()?;
        // A finished job, an unknown one, or an error ends the wait.
        let found =
            self.finished
                .wait_until(timeout, self.poll(), || match self.backend.get_job(id) {
                    Ok(Some(job)) if !job.state.is_finished() => None,
                    other => Some(other),
                });
        match found {
            None => Ok(None),
            Some(Ok(None)) => Err(QueueError::JobNotFound(format!(
                "no job with id {id} (unknown, or no longer retained)"
            ))),
            Some(other) => other,
        }
    }

    /// Waits until the queue (or every queue) has no waiting, delayed or active job; false when
    /// the timeout passed first.
    pub fn join(&self, queue: Option<&str>, timeout: Option<Duration>) -> Result<bool> {
        self.check_open()?;
        if let Some(name) = queue {
            validate_queue_name(name)?;
        }
        let idle =
            self.finished
                .wait_until(timeout, self.poll(), || match self.backend.is_idle(queue) {
                    Ok(false) => None,
                    other => Some(other),
                });
        idle.unwrap_or(Ok(false))
    }
}

/// Wakes callers of `wait_for_job` / `join` when this process records a result (or clears or
/// deletes a queue); notifying costs an atomic load unless someone waits.
#[derive(Default)]
pub(super) struct FinishSignal {
    generation: Mutex<u64>,
    changed: Condvar,
    waiters: AtomicUsize,
}

impl FinishSignal {
    pub(super) fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            *self.generation.lock() += 1;
            self.changed.notify_all();
        }
    }

    /// Runs `check` until it returns `Some`, waiting for a notification between tries, or, with
    /// `poll` (first, last interval, doubling), no longer than that: for state that other
    /// processes change without notifying. At the timeout, returns what a last `check` gives.
    pub(super) fn wait_until<T>(
        &self,
        timeout: Option<Duration>,
        poll: Option<(Duration, Duration)>,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut interval = poll.map(|(first, _)| first);
        // Registered before the first check: a finish after it bumps the generation.
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let seen = *self.generation.lock();
            if let Some(found) = check() {
                break Some(found);
            }
            let generation = self.generation.lock();
            if *generation != seen {
                continue;
            }
            let wake_at = match (deadline, interval) {
                (Some(deadline), Some(every)) => Some(deadline.min(Instant::now() + every)),
                (deadline, every) => deadline.or_else(|| every.map(|e| Instant::now() + e)),
            };
            match wake_at {
                Some(wake_at) => {
                    let (generation, timed_out) = self.changed.wait_until(generation, wake_at);
                    let expired = deadline.is_some_and(|d| Instant::now() >= d);
                    if timed_out && expired && *generation == seen {
                        drop(generation);
                        break check();
                    }
                }
                None => drop(self.changed.wait(generation)),
            }
            if let (Some(every), Some((_, last))) = (interval.as_mut(), poll) {
                *every = (*every * 2).min(last);
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}
