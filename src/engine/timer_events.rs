//! What the engine does when one of its timers fires: promote due jobs and expire old ones,
//! fire a cron tick, check run deadlines, reload shared settings, declare a queue, settle
//! the results behind a long job.

use crate::error::QueueError;
use crate::job::now;

use super::timers::{TimerHost, TimerKey};
use super::{Engine, RELOAD_EVERY};

impl TimerHost for Engine {
    fn on_timer(&self, key: &TimerKey) {
        if self.is_closed() {
            return;
        }
        match key {
            TimerKey::Queue(queue) => match self.backend.tick(queue, now()) {
                Ok(Some(next)) => self.timers.arm(key.clone(), next),
                Ok(None) | Err(QueueError::UnknownQueue(_)) => {}
                // Backend down: try again shortly.
                Err(error) => {
                    log::warn!(
                        target: "rnode_queue",
                        "queue {:?}: due jobs could not be promoted nor old ones expired \
                         ({error}); trying again in 1 s",
                        &**queue
                    );
                    self.timers.arm(key.clone(), now() + 1.0);
                }
            },
            TimerKey::Cron(id) => self.fire_schedule(id),
            TimerKey::Watchdog => self.check_timeouts(),
            TimerKey::Reload => {
                self.reload_schedules();
                self.reload_settings();
                self.timers.arm(TimerKey::Reload, now() + RELOAD_EVERY);
            }
            TimerKey::Declare(queue) => self.declare_in_background(queue),
            TimerKey::Heartbeat => self.beat(),
            TimerKey::Settle(queue) => {
                let pool = self.pools.lock().get(queue).cloned();
                if let Some(wait) = pool.and_then(|p| p.settle_stalled(self, self.clock())) {
                    self.settle_later(queue, wait);
                }
            }
        }
    }
}
