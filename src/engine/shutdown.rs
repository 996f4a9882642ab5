//! Shutdown: stop taking jobs, let running ones finish, hand back what is still running.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::workers::Pool;
use super::{Engine, TIMER_STOP_MIN};
use crate::job::JobId;

/// How long `close` waits for running jobs when the caller does not say.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What `close` did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CloseReport {
    /// Every running handler finished within the timeout.
    pub finished: bool,
    /// Runs still going at the timeout, handed back to the store (queue, job id): they run
    /// again elsewhere.
    pub handed_back: Vec<(Arc<str>, JobId)>,
}

impl Engine {
    /// Stops taking jobs and waits up to `timeout` for running ones. Runs still going then are
    /// handed back to the store, to run again elsewhere at once (their run counted). Called
    /// again, it waits again for workers that had not finished.
    pub fn close(&self, timeout: Duration) -> CloseReport {
        let deadline = Instant::now() + timeout;
        let pools: Vec<Arc<Pool>> = {
            let pools = self.pools.lock();
            self.closed.store(true, Ordering::Release);
            pools.values().cloned().collect()
        };
        for pool in &pools {
            pool.request_stop(self);
        }
        let finished = pools.iter().all(|pool| pool.wait_stopped(deadline));
        let mut handed_back = Vec::new();
        if finished {
            self.pools.lock().clear();
        } else {
            // Runs still going are handed back to a store other processes share (a private
            // store ends with this process: its `hand_back` keeps nothing).
            for pool in &pools {
                let runs = pool.wind_down(self);
                if runs.is_empty() {
                    continue;
                }
                match self.backend.hand_back(&pool.queue, &runs) {
                    Ok(ids) => {
                        handed_back.extend(ids.into_iter().map(|id| (pool.queue.clone(), id)))
                    }
                    Err(error) => log::error!(
                        target: "rnode_queue",
                        "{} running job(s) of queue {:?} could not be handed back ({error}); \
                         they run again once their lease expires",
                        runs.len(),
                        &*pool.queue
                    ),
                }
            }
        }
        self.timers.stop(
            deadline
                .saturating_duration_since(Instant::now())
                .max(TIMER_STOP_MIN),
        );
        self.stop_heartbeat();
        // Only now: leases stay renewed while running jobs finish.
        self.backend.close();
        CloseReport {
            finished,
            handed_back,
        }
    }
}
