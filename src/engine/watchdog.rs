//! The watchdog: abandons sync runs past their timeout. It sleeps on the timer thread until the
//! earliest deadline of a running job.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use crate::job::now;

use super::timers::TimerKey;
use super::workers::Pool;
use super::Engine;

impl Engine {
    /// Makes sure the watchdog wakes by `deadline` (engine clock). Called as each sync run
    /// begins (after `Slot::begin`); costs an atomic load unless this deadline is the earliest.
    ///
    /// This load and the watchdog's store of "unset" (`check_timeouts`) form a store-load pair
    /// on each side: `begin` stores the run then loads `watchdog_at`; the watchdog stores
    /// `watchdog_at` then loads the runs. With only acquire/release both loads may see the old
    /// values — the run thinks the watchdog is set, the watchdog misses the run — and a hung run
    /// is never abandoned. The SeqCst fences on both sides forbid that outcome.
    pub fn watch_deadline(&self, deadline: u64) {
        if deadline < self.watchdog_at.load(Ordering::SeqCst)
            && deadline < self.watchdog_at.fetch_min(deadline, Ordering::SeqCst)
        {
            let wait = deadline.saturating_sub(self.clock()) as f64 / 1e9;
            self.timers.arm(TimerKey::Watchdog, now() + wait);
        }
    }

    pub(super) fn check_timeouts(&self) {
        let Some(host) = self.worker_host() else {
            return;
        };
        // Runs that begin from now on set the watchdog themselves (see `watch_deadline`).
        self.watchdog_at.store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let pools: Vec<Arc<Pool>> = self.pools.lock().values().cloned().collect();
        let now_ns = self.clock();
        let earliest = pools
            .iter()
            .filter_map(|pool| pool.check_timeouts(&host, now_ns))
            .min();
        if let Some(deadline) = earliest {
            self.watch_deadline(deadline);
        }
    }
}
