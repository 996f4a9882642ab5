//! Async workers: a feeder thread that submits jobs to the executor (an event loop) while fewer
//! than `concurrency` are in flight, and an acker thread that settles them as they complete.

use std::sync::mpsc;
use std::sync::Arc;

use crate::job::Job;

use super::{Completion, FetchRequest, Pool, RunOutcome, WorkerHost, FETCH_WAIT, MAX_BATCH};

impl Pool {
    pub(super) fn feed_async(
        self: &Arc<Self>,
        host: &Arc<dyn WorkerHost>,
        done: mpsc::Sender<(Job, RunOutcome)>,
    ) {
        let executor = self.executor.clone();
        executor.enter(&mut |session| loop {
            let mut fetched = Ok(Vec::new());
            session.unlocked(&mut || {
                let free = {
                    let mut in_flight = self.in_flight.lock();
                    while *in_flight >= self.concurrency() && !self.stopped() {
                        in_flight = self.capacity.wait_for(in_flight, FETCH_WAIT).0;
                    }
                    self.concurrency().saturating_sub(*in_flight)
                };
                if self.stopped() || free == 0 {
                    return;
                }
                let request = FetchRequest {
                    share: 1,
                    ..self.fetch_request(free.min(MAX_BATCH))
                };
                fetched = host.backend().fetch(&self.queue, request, &self.stop);
                if let Ok(jobs) = &fetched {
                    *self.in_flight.lock() += jobs.len();
                }
            });
            if self.stopped() {
                if let Ok(jobs) = &fetched {
                    let jobs = jobs.clone();
                    session.unlocked(&mut || {
                        host.release(&self.queue, &jobs);
                        self.finish_async(jobs.len());
                    });
                }
                return;
            }
            if fetched.is_ok() {
                host.backend_ok(&self.queue);
            }
            match fetched {
                Ok(jobs) if jobs.is_empty() => {}
                Ok(jobs) => {
                    self.in_flight_jobs
                        .lock()
                        .extend(jobs.iter().map(|job| (job.id, job.attempts)));
                    let started = jobs
                        .into_iter()
                        .map(|job| {
                            let completion =
                                Completion::new(job.clone(), done.clone(), self.metrics.clone());
                            (job, completion)
                        })
                        .collect();
                    session.submit(started);
                }
                Err(error) => {
                    if !self.back_off(&**host, session, &error) {
                        return;
                    }
                }
            }
        });
    }

    pub(super) fn ack_async(
        self: &Arc<Self>,
        host: &Arc<dyn WorkerHost>,
        done: mpsc::Receiver<(Job, RunOutcome)>,
    ) {
        loop {
            let first = match done.recv_timeout(FETCH_WAIT) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.stopped() && *self.in_flight.lock() == 0 {
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut outcomes = vec![first];
            outcomes.extend(done.try_iter().take(MAX_BATCH));
            let count = outcomes.len();
            {
                let mut in_flight = self.in_flight_jobs.lock();
                for (job, _) in &outcomes {
                    in_flight.remove(&job.id);
                }
            }
            host.settle(
                &self.queue,
                &mut outcomes.iter().map(|(job, o)| (job, o.clone())),
            );
            self.finish_async(count);
            if self.stopped() && *self.in_flight.lock() == 0 {
                return;
            }
        }
    }

    pub(super) fn finish_async(&self, count: usize) {
        let mut in_flight = self.in_flight.lock();
        *in_flight = in_flight.saturating_sub(count);
        self.capacity.notify_all();
        self.exited.notify_all();
    }
}
