//! What a finished run means for its job: completed, retried after the backoff, or failed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Ack, Settlement};
use crate::error::QueueError;
use crate::job::{now, Job, JobId, Timestamp};
use crate::sync::Mutex;

use super::config::QueueConfig;
use super::timers::TimerKey;
use super::workers::RunOutcome;
use super::Engine;

/// Error texts and tracebacks longer than this are cut (a handler's exception can carry
/// megabytes; every attempt stores it).
const MAX_ERROR_TEXT: usize = 64 * 1024;

/// A traceback on the lines after a failure's log message.
fn traceback_lines(traceback: &Option<String>) -> String {
    match traceback {
        Some(traceback) if !traceback.trim().is_empty() => format!("\n{}", traceback.trim_end()),
        _ => String::new(),
    }
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

/// The queues whose workers cannot fetch (see `Engine::backend_failed`); `count` lets a
/// successful fetch skip the lock while none fails.
#[derive(Default)]
pub(super) struct FailingQueues {
    queues: Mutex<HashSet<String>>,
    count: AtomicUsize,
}

impl Engine {
    /// Decides what each finished run means for its job and records it.
    pub fn settle<'a>(&self, queue: &str, runs: impl IntoIterator<Item = (&'a Job, RunOutcome)>) {
        let mut runs = runs.into_iter().peekable();
        if runs.peek().is_none() {
            return;
        }
        let (config, metrics) = self.config_and_metrics_of(queue);
        let at = now();
        let limit = self.options.max_job_bytes;
        let log_jobs = self.log_jobs.load(Ordering::Relaxed);
        // Completed, failed for good, retried.
        let mut counts = (0, 0, 0);
        let mut records: Vec<(log::Level, String)> = Vec::new();
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
                // Told once the results are stored: a record may wait for the GIL.
                let record = match &settlement {
                    Settlement::Completed { .. } => {
                        counts.0 += 1;
                        log_jobs.then(|| {
                            let text = format!(
                                "job {} of queue {queue:?} completed (attempt {} of {})",
                                job.id, job.attempts, job.max_attempts
                            );
                            (log::Level::Info, text)
                        })
                    }
                    Settlement::Failed { error, traceback } => {
                        counts.1 += 1;
                        let text = format!(
                            "job {} of queue {queue:?} failed for good after {} attempt(s): \
                             {error}{}",
                            job.id,
                            job.attempts,
                            traceback_lines(traceback)
                        );
                        Some((log::Level::Error, text))
                    }
                    Settlement::Retry {
                        due,
                        error,
                        traceback,
                    } => {
                        counts.2 += 1;
                        let text = format!(
                            "job {} of queue {queue:?} failed (attempt {} of {}), retrying in \
                             {:.3} s: {error}{}",
                            job.id,
                            job.attempts,
                            job.max_attempts,
                            (due - at).max(0.0),
                            traceback_lines(traceback)
                        );
                        Some((log::Level::Warn, text))
                    }
                };
                records.extend(record);
                Ack {
                    id: job.id,
                    attempt: job.attempts,
                    at,
                    settlement,
                }
            })
            .collect();
        let count = acks.len();
        // Counted before the store has them: whoever sees the jobs finished (a `join` on
        // another thread) sees them counted. Should the store fail to record them, the jobs
        // run again and those runs count too.
        if let Some(metrics) = metrics {
            metrics.settled(counts.0, counts.1, counts.2);
        }
        let settled = self.backend.settle(queue, acks);
        self.finished.notify();
        for (level, text) in records {
            log::log!(target: "rnode_queue", level, "{text}");
        }
        match settled {
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

    /// A fetch of `queue` succeeded: once no queue fails any more, says that the backend is back.
    pub fn backend_ok(&self, queue: &str) {
        if self.backend_down.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut failing = self.backend_down.queues.lock();
        if failing.remove(queue) {
            self.backend_down
                .count
                .store(failing.len(), Ordering::Relaxed);
            if failing.is_empty() {
                log::info!(
                    target: "rnode_queue",
                    "the backend is reachable again: workers fetch jobs"
                );
            }
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
                // Once when the backend goes away (every queue's workers notice), not per try.
                let first = {
                    let mut failing = self.backend_down.queues.lock();
                    let first = failing.is_empty();
                    failing.insert(queue.to_string());
                    self.backend_down
                        .count
                        .store(failing.len(), Ordering::Relaxed);
                    first
                };
                if first {
                    log::warn!(
                        target: "rnode_queue",
                        "lost the backend: workers of queue {queue:?} cannot fetch jobs \
                         ({error}); retrying every 0.5 s until it is back"
                    );
                } else {
                    log::debug!(
                        target: "rnode_queue",
                        "workers of queue {queue:?} still cannot fetch jobs ({error})"
                    );
                }
                // Back off instead of spinning while the backend is down.
                std::thread::sleep(Duration::from_millis(500));
                let keep_going = registered();
                if !keep_going {
                    // Its workers stop: it no longer counts among the failing queues.
                    let mut failing = self.backend_down.queues.lock();
                    failing.remove(queue);
                    self.backend_down
                        .count
                        .store(failing.len(), Ordering::Relaxed);
                }
                keep_going
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
}
