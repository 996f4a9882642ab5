//! Sync workers: one thread per slot, each running the handlers of its batch one by one, and
//! the timer's two looks at them: results settled behind a long job, and runs past their
//! deadline abandoned.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::batch::{settle_finished, Batch, Slot};
use super::{Pool, RunOutcome, WorkerHost, MAX_BATCH};

/// A sync worker takes as many jobs as it runs in about this long: enough to amortise the
/// fetch and the GIL hand-over for fast handlers, short enough that results are recorded,
/// and pauses and higher priorities honoured, within about this delay.
const BATCH_BUDGET: Duration = Duration::from_millis(1);

impl Pool {
    pub(super) fn spawn_sync_worker(self: &Arc<Self>, host: &Arc<dyn WorkerHost>) {
        let slot = self.new_slot();
        self.workers.fetch_add(1, Ordering::AcqRel);
        self.spawn(host, "worker", move |pool, host| pool.run_sync(&host, slot));
    }

    pub(super) fn new_slot(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::new());
        self.slots.lock().push(slot.clone());
        slot
    }

    pub(super) fn run_sync(self: &Arc<Self>, host: &Arc<dyn WorkerHost>, first_slot: Arc<Slot>) {
        let executor = self.executor.clone();
        let mut batch_size = 1;
        let mut slot = first_slot;
        // Whether this thread is counted in `workers` (not while stuck in an abandoned run).
        let mut counted = true;
        executor.enter(&mut |session| loop {
            if self.stopped() {
                return;
            }
            if self.retire_if_surplus() {
                counted = false;
                return;
            }
            let mut fetched = Ok(None);
            session.unlocked(&mut || {
                let request = self.fetch_request(batch_size);
                fetched = host
                    .backend()
                    .fetch(&self.queue, request, &self.stop)
                    .map(|jobs| {
                        (!jobs.is_empty()).then(|| {
                            let batch = Arc::new(Batch::new(jobs));
                            slot.work.lock().batch = Some(batch.clone());
                            if batch.jobs.len() > 1 {
                                host.settle_later(&self.queue, 2 * BATCH_BUDGET);
                            }
                            batch
                        })
                    });
            });
            if fetched.is_ok() {
                host.backend_ok(&self.queue);
            }
            let batch = match fetched {
                Ok(Some(batch)) => batch,
                Ok(None) => continue,
                Err(error) => {
                    if !self.back_off(&**host, session, &error) {
                        return;
                    }
                    continue;
                }
            };
            let started = host.clock();
            let budget = BATCH_BUDGET.as_nanos() as u64;
            let mut now = started;
            let mut ran = 0;
            let mut abandoned = false;
            // The batch ends early once its budget is spent (a slow job among fast ones): the
            // rest goes back, so pauses, priorities and results wait at most for the job at hand.
            while !self.stopped() && (ran == 0 || now - started < budget) {
                let Some(index) = batch.claim() else { break };
                let job = &batch.jobs[index];
                let deadline = now.saturating_add(host.timeout_ns(job));
                let run = slot.begin(index, now, deadline);
                host.watch_deadline(deadline);
                if index == 0 {
                    // Counted as an attempt from now on should this process die (the later jobs
                    // of the batch: see `settle_stalled`).
                    slot.marked_run.store(run, Ordering::Release);
                    host.backend()
                        .note_started(&self.queue, (job.id, job.attempts));
                }
                let outcome = catch_unwind(AssertUnwindSafe(|| session.run(job)))
                    .unwrap_or_else(RunOutcome::from_panic);
                // One clock read per job: the end of this one, the start of the next.
                let ended = host.clock();
                if !slot.end(run) {
                    // The watchdog settled this run (and counted its time) and the finished
                    // ones before it, and started a replacement worker.
                    abandoned = true;
                    break;
                }
                if let Some(metrics) = &self.metrics {
                    metrics.observe(ended.saturating_sub(now));
                }
                slot.record(session, index, outcome);
                ran += 1;
                now = ended;
            }
            if abandoned {
                // Back from a run the watchdog gave up on (and replaced, unless too many were
                // stuck; the watchdog uncounted this thread): work again only in a place that
                // is owed.
                counted = false;
                self.stuck.fetch_sub(1, Ordering::AcqRel);
                let owed = self
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                if self.stopped() || owed.is_err() {
                    return;
                }
                self.workers.fetch_add(1, Ordering::AcqRel);
                counted = true;
                slot = self.new_slot();
                continue;
            }
            let elapsed = Duration::from_nanos(now - started);
            session.unlocked(&mut || {
                host.release(&self.queue, batch.take_rest());
                let taken = {
                    let mut work = slot.work.lock();
                    let taken = work.take_finished();
                    work.batch = None;
                    taken
                };
                settle_finished(&**host, &self.queue, taken);
            });
            batch_size = next_batch_size(batch_size, ran, elapsed);
        });
        if counted {
            self.workers.fetch_sub(1, Ordering::AcqRel);
        }
        self.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
    }

    /// Settles the ended runs of workers busy with a job that began over `BATCH_BUDGET` ago,
    /// so that a long job does not hold back the results of the fast ones before it, and
    /// reports that job as started (see `Backend::mark_started`). Returns
    /// how long to wait before looking again while a worker is busy (at most a budget: the
    /// timer wakes about once per batch while jobs run).
    pub fn settle_stalled(&self, host: &dyn WorkerHost, now: u64) -> Option<Duration> {
        let budget = BATCH_BUDGET.as_nanos() as u64;
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut again: Option<u64> = None;
        for slot in slots {
            if !slot.is_running() {
                // Between two jobs (or waiting for the GIL) with a batch in hand: look again.
                if slot.work.lock().batch.is_some() {
                    again = Some(again.map_or(budget, |a| a.min(budget)));
                }
                continue;
            }
            let running_for = now.saturating_sub(slot.started.load(Ordering::Acquire));
            if running_for >= budget {
                let taken = slot.work.lock().take_finished();
                settle_finished(host, &self.queue, taken);
                // A long run inside a batch: its attempt must count should this process die.
                if let Some(run) = slot.unmarked_start() {
                    host.mark_started(&self.queue, &[run]);
                }
            } else {
                // Results may still pile up behind a job that starts later in this batch.
                let wait = budget - running_for;
                again = Some(again.map_or(wait, |a| a.min(wait)));
            }
        }
        again.map(Duration::from_nanos)
    }

    /// Abandons sync runs past their deadline: settles them as timed out, hands back the rest
    /// of their batch, and starts a replacement worker. Returns the earliest live deadline.
    pub fn check_timeouts(self: &Arc<Self>, host: &Arc<dyn WorkerHost>, now: u64) -> Option<u64> {
        if self.is_async() {
            return None;
        }
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut earliest: Option<u64> = None;
        for slot in slots {
            if let Some((batch, index)) = slot.abandon_if_late(now, &self.stuck) {
                if let Some(metrics) = &self.metrics {
                    metrics.observe(now.saturating_sub(slot.started.load(Ordering::Acquire)));
                }
                host.release(&self.queue, batch.take_rest());
                let taken = slot.work.lock().take_finished();
                settle_finished(&**host, &self.queue, taken);
                host.settle(
                    &self.queue,
                    &mut std::iter::once((&batch.jobs[index], RunOutcome::TimedOut)),
                );
                self.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
                // The stuck thread no longer counts as a worker.
                self.workers.fetch_sub(1, Ordering::AcqRel);
                // At most `concurrency` stuck threads get a replacement: a handler that hangs
                // on every job must not grow the process thread by thread.
                if !self.stopped() {
                    if self.stuck.load(Ordering::Acquire) <= self.concurrency() {
                        self.spawn_sync_worker(host);
                    } else {
                        self.owed.fetch_add(1, Ordering::AcqRel);
                    }
                }
            } else if let Some(deadline) = slot.deadline_if_running() {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }
}

/// The next batch: as many jobs as fit in `BATCH_BUDGET` at the last batch's pace, growing
/// at most twofold per batch.
pub(super) fn next_batch_size(current: usize, ran: usize, elapsed: Duration) -> usize {
    if ran == 0 {
        return current;
    }
    let per_job = elapsed.as_nanos().max(1) / ran as u128;
    let fits = (BATCH_BUDGET.as_nanos() / per_job).max(1) as usize;
    fits.min(current.saturating_mul(2)).clamp(1, MAX_BATCH)
}
