//! Time: one timer thread per engine that sleeps until the next thing is due — a delayed job to
//! promote, a finished job to expire, a cron tick, a run to time out — and is woken early when
//! something due sooner arrives. No polling: between events the thread waits on a condvar.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::job::{now, Timestamp};
use crate::sync::{Condvar, Mutex};

/// What the timer thread fires into.
pub trait TimerHost: Send + Sync + 'static {
    fn on_timer(&self, key: &TimerKey);
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum TimerKey {
    /// Promote due delayed jobs and expire retained ones.
    Queue(Arc<str>),
    /// Fire a cron schedule.
    Cron(Arc<str>),
    /// Abandon sync runs past their timeout.
    Watchdog,
    /// Settle what the queue's workers finished before a job that is taking long.
    Settle(Arc<str>),
    /// Pick up the schedules and queue settings other processes stored (shared backends).
    Reload,
    /// Declare a queue first used where waiting for the store was not allowed.
    Declare(Arc<str>),
    /// Renew this worker process's entry in the backend's registry.
    Heartbeat,
}

#[derive(PartialEq)]
struct Entry {
    at: Timestamp,
    key: TimerKey,
}

impl Eq for Entry {}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.total_cmp(&other.at)
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<Reverse<Entry>>,
    /// The earliest time each key is already set for; an arm for a later time is a no-op.
    armed: HashMap<TimerKey, Timestamp>,
    stopped: bool,
    /// The timer thread has returned.
    exited: bool,
}

#[derive(Default)]
pub struct Timers {
    state: Mutex<TimerState>,
    wake: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Timers {
    /// Makes sure `key` fires at `at` or earlier.
    pub fn arm(&self, key: TimerKey, at: Timestamp) {
        let mut state = self.state.lock();
        if state.stopped || state.armed.get(&key).is_some_and(|t| *t <= at) {
            return;
        }
        let earliest = state.heap.peek().map(|Reverse(e)| e.at);
        state.armed.insert(key.clone(), at);
        state.heap.push(Reverse(Entry { at, key }));
        if earliest.is_none_or(|e| at < e) {
            self.wake.notify_one();
        }
    }

    pub fn disarm(&self, key: &TimerKey) {
        // Its heap entry stays and is skipped when it comes up unarmed.
        self.state.lock().armed.remove(key);
    }

    pub fn start(self: &Arc<Self>, host: Weak<dyn TimerHost>) {
        let timers = self.clone();
        let handle = thread::Builder::new()
            .name("rnq-timer".into())
            .spawn(move || timers.run(host))
            .expect("spawn the timer thread");
        *self.thread.lock() = Some(handle);
    }

    /// Stops the timer thread and waits for it, `within` at most: a timer busy with a slow
    /// backend (a Redis that does not answer) finishes by itself, since it fires nothing more.
    pub fn stop(&self, within: Duration) {
        {
            let mut state = self.state.lock();
            state.stopped = true;
            self.wake.notify_all();
        }
        let deadline = std::time::Instant::now() + within;
        let mut state = self.state.lock();
        while !state.exited && std::time::Instant::now() < deadline {
            state = self.wake.wait_until(state, deadline).0;
        }
        let exited = state.exited;
        drop(state);
        if let Some(handle) = self.thread.lock().take() {
            if exited && handle.thread().id() != thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    fn run(&self, host: Weak<dyn TimerHost>) {
        self.run_until_stopped(host);
        self.state.lock().exited = true;
        self.wake.notify_all();
    }

    fn run_until_stopped(&self, host: Weak<dyn TimerHost>) {
        loop {
            let due = {
                let mut state = self.state.lock();
                loop {
                    if state.stopped {
                        return;
                    }
                    let now = now();
                    match state.heap.peek() {
                        Some(Reverse(entry)) if entry.at <= now => break,
                        Some(Reverse(entry)) => {
                            let wait = Duration::from_secs_f64((entry.at - now).min(3600.0));
                            state = self.wake.wait_for(state, wait).0;
                        }
                        None => state = self.wake.wait(state),
                    }
                }
                let now = now();
                let mut due = Vec::new();
                while let Some(Reverse(entry)) = state.heap.peek() {
                    if entry.at > now {
                        break;
                    }
                    let Reverse(entry) = state.heap.pop().expect("peeked");
                    // Fire only entries that are still what the key is armed for.
                    if state.armed.get(&entry.key) == Some(&entry.at) {
                        state.armed.remove(&entry.key);
                        due.push(entry.key);
                    }
                }
                due
            };
            let Some(host) = host.upgrade() else {
                return;
            };
            for key in due {
                // A panic in one timer must not stop the others.
                let _ =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| host.on_timer(&key)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_order_and_disarm() {
        let timers = Timers::default();
        timers.arm(TimerKey::Watchdog, 10.0);
        timers.arm(TimerKey::Watchdog, 20.0); // later: ignored
        timers.arm(TimerKey::Queue(Arc::from("q")), 5.0);
        timers.disarm(&TimerKey::Queue(Arc::from("q")));
        let state = timers.state.lock();
        assert_eq!(state.armed.get(&TimerKey::Watchdog), Some(&10.0));
        assert!(!state.armed.contains_key(&TimerKey::Queue(Arc::from("q"))));
    }
}
