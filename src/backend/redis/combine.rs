//! Small pushes from many threads share round trips (group commit): while one push of a queue
//! is on its way to Redis, the pushes that arrive meanwhile gather, and the first of them to
//! see the way clear sends them all as one script call. A push alone goes at once, as before;
//! under load each round trip carries every job that arrived during the one before, so Redis
//! runs one script for many jobs instead of one each.
//!
//! A round is all or none, like any push: every caller of a round gets its outcome, and on an
//! error its own jobs back (the spill stores them). A `PushOutcomeUnknown` lists every id of
//! the round (the caller's among them).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::keys::RedisQueue;
use super::Shared;
use crate::backend::QueueDeclaration;
use crate::error::{QueueError, Result};
use crate::job::{Job, JobId};
use crate::sync::{Condvar, Mutex};

/// Pushes of at most this many jobs are combined; larger ones are a round trip of their own.
pub(super) const COMBINED_AT_MOST: usize = 64;
/// Rounds on their way at once: while one is answered the next is sent (a thread's own pushes
/// stay in order: it waits for each).
const IN_FLIGHT: usize = 2;

#[derive(Default)]
pub(super) struct Combiner {
    state: Mutex<Rounds>,
    finished: Condvar,
}

#[derive(Default)]
struct Rounds {
    /// Rounds being sent.
    in_flight: usize,
    /// The round the jobs in `pending` belong to, and how many callers they came from.
    forming: u64,
    callers: usize,
    pending: Vec<Job>,
    /// Outcomes of sent rounds not yet collected by all their callers, and how many callers
    /// are still to come.
    outcomes: HashMap<u64, (Option<Failed>, usize)>,
}

/// A round that failed: the error, and the round's jobs (each caller takes its own back).
type Failed = (QueueError, Vec<Job>);

impl Combiner {
    /// Pushes `jobs` in the next round of `queue`; returns when that round is stored (or failed:
    /// then `jobs` holds them again).
    pub fn push(
        &self,
        shared: &Shared,
        queue: &RedisQueue,
        jobs: &mut Vec<Job>,
        declaration: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        let ids: Vec<_> = jobs.iter().map(|job| job.id).collect();
        let mut rounds = self.state.lock();
        let round = rounds.forming;
        rounds.pending.append(jobs);
        rounds.callers += 1;
        loop {
            if let Some(entry) = rounds.outcomes.get_mut(&round) {
                entry.1 -= 1;
                let outcome = match &mut entry.0 {
                    None => Ok(()),
                    Some((error, batch)) => {
                        jobs.extend(take_own(batch, &ids));
                        Err(error.clone())
                    }
                };
                if entry.1 == 0 {
                    rounds.outcomes.remove(&round);
                }
                return outcome;
            }
            if rounds.in_flight < IN_FLIGHT && rounds.forming == round {
                rounds.in_flight += 1;
                let mut batch = std::mem::take(&mut rounds.pending);
                let others = std::mem::take(&mut rounds.callers) - 1;
                rounds.forming += 1;
                drop(rounds);
                // A panic must not leave the round in flight for ever (its callers would wait).
                let stored = catch_unwind(AssertUnwindSafe(|| {
                    shared.store(queue, &batch, None, &declaration(), false)
                }))
                .unwrap_or_else(|_| Err(QueueError::Backend("a push panicked".into())))
                .map(|_| ());
                if stored.is_ok() {
                    shared.remember_pushed(&queue.name, &batch);
                }
                let mut rounds = self.state.lock();
                rounds.in_flight -= 1;
                let outcome = match stored {
                    Ok(()) => Ok(()),
                    Err(error) => {
                        jobs.extend(take_own(&mut batch, &ids));
                        Err((error, batch))
                    }
                };
                if others > 0 {
                    let kept = outcome.as_ref().err().cloned();
                    rounds.outcomes.insert(round, (kept, others));
                }
                drop(rounds);
                self.finished.notify_all();
                return outcome.map_err(|(error, _)| error);
            }
            rounds = self.finished.wait(rounds);
        }
    }
}

/// The jobs of `batch` with these ids, taken out of it.
fn take_own(batch: &mut Vec<Job>, ids: &[JobId]) -> Vec<Job> {
    let (own, rest): (Vec<Job>, Vec<Job>) = batch.drain(..).partition(|job| ids.contains(&job.id));
    *batch = rest;
    own
}
