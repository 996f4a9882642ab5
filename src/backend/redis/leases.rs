//! Leases: the jobs a process fetched stay in Redis, held by its token, until it records how
//! their runs ended. A keeper thread renews the process's leases while it lives; when a process
//! dies (or loses Redis for a lease), any process's sweeper takes its jobs back.
//!
//! One lease per process and queue, not per job, so that renewing costs one command however many
//! jobs run. The worker registry (`lua/workers.lua`) lists each live token with the queues it
//! leased jobs in, so that finding dead processes costs the same however many queues exist:
//! sweeps touch only the queues of tokens that expired.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::codec::bytes_of;
use super::keys::RedisQueue;
use super::scripts::eval_cmd;
use super::Shared;
use crate::error::Result;
use crate::job::{now, JobId};

/// The error a job taken back from a dead worker keeps.
pub(super) const RUN_LOST: &str = "WorkerLost: the run was lost: the worker process running it \
     stopped renewing its lease (it died, or lost Redis)";
/// How many expired tokens one sweep looks at.
const SWEEP_TOKENS: usize = 100;

/// A leased job this process no longer lists as held is taken back only this long (and a
/// lease) after it was leased: a fetch's reply is used within `COMMAND_TIMEOUT` of the script
/// running or not at all, so it cannot still be on its way then.
pub(super) const ORPHAN_AFTER: Duration =
    Duration::from_secs(super::connection::COMMAND_TIMEOUT.as_secs() + 2);

impl Shared {
    /// Runs the worker-registry script.
    fn workers<T: redis::FromRedisValue>(&self, op: &str, args: &[String]) -> Result<T> {
        let script = &self.scripts.workers;
        let mut cmd = eval_cmd(script, &self.keys.workers);
        cmd.arg(&self.keys.worker_queues).arg(op);
        for arg in args {
            cmd.arg(arg);
        }
        self.eval(script, cmd)
    }

    fn lease_ms(&self) -> String {
        self.lease.as_millis().to_string()
    }

    /// Before this process leases jobs of a queue for the first time: its token is listed as
    /// live with that queue, so that a sweeper finds the queue should it die.
    pub(super) fn register(&self, queue: &RedisQueue) -> Result<()> {
        if queue.registered.load(Ordering::Acquire) {
            return Ok(());
        }
        self.upgrade_layout(queue)?;
        let _: i64 = self.workers(
            "register",
            &[self.token.clone(), self.lease_ms(), queue.name.to_string()],
        )?;
        queue.registered.store(true, Ordering::Release);
        Ok(())
    }

    /// Renews this process's leases and, every sweep interval, takes back expired ones.
    pub(super) fn keep_leases(self: Arc<Self>) {
        let renew_every = self.lease / 3;
        let sweep_every = (self.lease / 2).clamp(Duration::from_millis(50), Duration::from_secs(5));
        let mut next_sweep = Instant::now();
        let mut next_renew = Instant::now() + renew_every;
        let mut sweep_failing = false;
        loop {
            {
                let until = next_sweep.min(next_renew);
                let mut stopping = self.stopping.lock();
                while !*stopping && Instant::now() < until {
                    stopping = self.stop.wait_until(stopping, until).0;
                }
                if *stopping {
                    drop(stopping);
                    self.stop.notify_all();
                    return;
                }
            }
            let now_instant = Instant::now();
            if now_instant >= next_renew {
                // A connection lost (a Redis restart): a new one, with the scripts loaded again
                // (the notes cannot load them). Bounded well within a lease.
                if self.redis.open_notes(self.lease / 4) {
                    let _ = self.load_scripts();
                }
                self.renew_leases();
                next_renew = now_instant + renew_every;
            }
            if now_instant >= next_sweep {
                // Logged once when sweeps start failing (Redis away), and when they work again.
                match self.sweep(sweep_every) {
                    Ok(()) if std::mem::take(&mut sweep_failing) => log::info!(
                        target: "rnode_queue",
                        "sweeps for the jobs of dead worker processes work again"
                    ),
                    Ok(()) => {}
                    Err(error) if !sweep_failing => {
                        sweep_failing = true;
                        log::warn!(
                            target: "rnode_queue",
                            "the sweep for the jobs of dead worker processes failed ({error}); \
                             trying again every {:.1} s",
                            sweep_every.as_secs_f64()
                        );
                    }
                    Err(error) => {
                        log::debug!(target: "rnode_queue", "sweep failed again: {error}")
                    }
                }
                next_sweep = now_instant + sweep_every;
            }
        }
    }

    fn renew_leases(&self) {
        // The queues' leases first, then the registry's: the registry's never expires before
        // theirs, so a sweeper that finds the token expired finds their leases expired too.
        self.renew_queue_leases();
        // A process that never leased a job is not in the registry: nothing to renew.
        let registered = self
            .queues
            .read()
            .values()
            .any(|queue| queue.registered.load(Ordering::Acquire));
        if !registered {
            return;
        }
        match self.workers::<i64>("renew", &[self.token.clone(), self.lease_ms()]) {
            Ok(1) => {
                // Found expired and dropped (this process lost Redis for a lease): the token is
                // back, with no queues. Those where this process holds jobs now (fetched since,
                // with a stale `registered`) are listed again at once, so that a sweeper finds
                // them should it die; the others as their jobs are next fetched.
                log::warn!(
                    target: "rnode_queue",
                    "this process's leases had expired (Redis unreachable for {} s?): the jobs \
                     it held were taken back and run again elsewhere",
                    self.lease.as_secs_f64()
                );
                let queues: Vec<Arc<RedisQueue>> = self.queues.read().values().cloned().collect();
                for queue in queues {
                    queue.registered.store(false, Ordering::Release);
                    let holds =
                        !queue.held.lock().is_empty() || queue.unsure.load(Ordering::Acquire);
                    if holds {
                        if let Err(error) = self.register(&queue) {
                            log::warn!(
                                target: "rnode_queue",
                                "queue {:?} could not be registered again ({error})",
                                &*queue.name
                            );
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(error) => log::warn!(
                target: "rnode_queue",
                "the leases of this process could not be renewed ({error}); its jobs run again \
                 elsewhere if that lasts {} s",
                self.lease.as_secs_f64()
            ),
        }
    }

    fn renew_queue_leases(&self) {
        let queues: Vec<Arc<RedisQueue>> = self.queues.read().values().cloned().collect();
        for queue in queues {
            if *self.stopping.lock() {
                return;
            }
            let held: Vec<(JobId, u32)> = queue
                .held
                .lock()
                .iter()
                .map(|(id, run)| (*id, *run))
                .collect();
            if held.is_empty() && !queue.unsure.load(Ordering::Acquire) {
                continue;
            }
            let at = now();
            let renewed: Result<i64> = self.invoke(&self.scripts.renew, &queue, |cmd| {
                cmd.arg(&self.token)
                    .arg(self.lease.as_millis() as u64)
                    .arg(at.to_string())
                    .arg(RUN_LOST)
                    .arg(ORPHAN_AFTER.as_millis() as u64);
                for (id, _) in &held {
                    cmd.arg(id.to_string());
                }
            });
            match renewed {
                Ok(-1) => {
                    // Expired and swept: those runs are someone else's now (a fetch made since
                    // then holds a new lease and stays).
                    let mut current = queue.held.lock();
                    for (id, run) in held {
                        if current.get(&id) == Some(&run) {
                            current.remove(&id);
                        }
                    }
                    queue.unsure.store(false, Ordering::Release);
                }
                Ok(left) => {
                    if left == 0 && queue.held.lock().is_empty() {
                        queue.unsure.store(false, Ordering::Release);
                    }
                }
                Err(error) => log::debug!(
                    target: "rnode_queue",
                    "lease of queue {:?} not renewed: {error}",
                    &*queue.name
                ),
            }
        }
    }

    /// Takes back the jobs of processes whose token expired (at most one sweep per interval
    /// across all processes).
    fn sweep(&self, every: Duration) -> Result<()> {
        let reply: Value = self.workers(
            "expired",
            &[
                self.token.clone(),
                every.as_millis().max(1).to_string(),
                SWEEP_TOKENS.to_string(),
            ],
        )?;
        let Value::Array(items) = reply else {
            return Ok(());
        };
        for pair in items.chunks_exact(2) {
            if *self.stopping.lock() {
                return Ok(());
            }
            let Some(token) = bytes_of(&pair[0]).map(|b| String::from_utf8_lossy(b).into_owned())
            else {
                continue;
            };
            let queues: Vec<String> = match &pair[1] {
                Value::Array(names) => names
                    .iter()
                    .filter_map(bytes_of)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect(),
                _ => Vec::new(),
            };
            match self.sweep_token(&token, &queues) {
                Ok((taken, done)) => {
                    if taken > 0 {
                        log::warn!(
                            target: "rnode_queue",
                            "a worker process stopped renewing its leases (it died or lost \
                             Redis): {taken} of its jobs were taken back"
                        );
                    }
                    if done {
                        let _: Result<i64> = self.workers("forget", &[token]);
                    }
                }
                Err(error) => log::warn!(
                    target: "rnode_queue",
                    "the jobs of an expired worker could not all be taken back ({error}); the \
                     next sweep tries again"
                ),
            }
        }
        Ok(())
    }

    /// Sweeps every queue of one expired token. Returns how many jobs it had there, and
    /// whether it is done with them all (a queue lease renewed a moment after the registry's
    /// leaves the token for the next sweep).
    fn sweep_token(&self, token: &str, queues: &[String]) -> Result<(u64, bool)> {
        let mut taken = 0;
        let mut done = true;
        for name in queues {
            let queue = self.queue(name);
            // A queue an older version stored is converted before its jobs are taken back.
            self.upgrade_layout(&queue)?;
            let mut before = i64::MAX;
            loop {
                let (count, left): (u64, i64) =
                    self.invoke(&self.scripts.sweep, &queue, |cmd| {
                        cmd.arg(now().to_string()).arg(RUN_LOST).arg(token);
                    })?;
                taken += count;
                if left < 0 {
                    done = false;
                }
                if left <= 0 {
                    break;
                }
                if left >= before {
                    // No progress (never expected: each call removes what it samples): the
                    // next sweep tries again rather than this one spinning.
                    done = false;
                    break;
                }
                before = left;
            }
        }
        Ok((taken, done))
    }

    /// At close, holding no jobs: this process's token leaves the registry.
    pub(super) fn leave(&self) {
        let holds = self
            .queues
            .read()
            .values()
            .any(|q| !q.held.lock().is_empty() || q.unsure.load(Ordering::Acquire));
        if !holds {
            // Brief: a Redis that does not answer must not hold a close up (the token then
            // expires by itself).
            let script = &self.scripts.workers;
            let mut cmd = eval_cmd(script, &self.keys.workers);
            cmd.arg(&self.keys.worker_queues)
                .arg("leave")
                .arg(&self.token);
            let _: Result<i64> = self.eval_for(Duration::from_millis(250), script, cmd);
        }
    }
}
