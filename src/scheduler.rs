//! Time: one timer thread per engine that sleeps until the next thing is due — a delayed job to
//! promote, a finished job to expire, a cron tick, a run to time out — and is woken early when
//! something due sooner arrives. No polling: between events the thread waits on a condvar.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::sync::{Condvar, Mutex};
use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::error::{QueueError, Result};
use crate::job::{now, Timestamp};
use crate::manager::Engine;

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

    pub fn start(self: &Arc<Self>, engine: Weak<Engine>) {
        let timers = self.clone();
        let handle = thread::Builder::new()
            .name("rnq-timer".into())
            .spawn(move || timers.run(engine))
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

    fn run(&self, engine: Weak<Engine>) {
        self.run_until_stopped(engine);
        self.state.lock().exited = true;
        self.wake.notify_all();
    }

    fn run_until_stopped(&self, engine: Weak<Engine>) {
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
            let Some(engine) = engine.upgrade() else {
                return;
            };
            for key in due {
                // A panic in one timer must not stop the others.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    engine.on_timer(&key)
                }));
            }
        }
    }
}

/// A parsed cron expression: 5 fields, or 6 with leading seconds; evaluated in UTC.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
}

/// The `@` macros cron users know, as 5-field expressions (croner knows all but `@midnight`).
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<Self> {
        let invalid = |why: String| {
            QueueError::InvalidCron(format!(
                "invalid cron expression {}: {why}",
                expression.escape_debug()
            ))
        };
        if let Some(c) = expression.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(invalid(format!(
                "it contains the control character {}",
                c.escape_unicode()
            )));
        }
        let trimmed = expression.trim();
        let pattern = if trimmed.starts_with('@') {
            MACROS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
                .map(|(_, pattern)| *pattern)
                .ok_or_else(|| {
                    invalid(
                        "the macros are @yearly, @annually, @monthly, @weekly, @daily, \
                         @midnight and @hourly"
                            .into(),
                    )
                })?
        } else {
            let fields = trimmed.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                return Err(invalid(format!(
                    "expected 5 fields (minute hour day month weekday), 6 with leading \
                     seconds, or a macro such as @daily; got {fields}"
                )));
            }
            trimmed
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| invalid(e.to_string()))?;
        let schedule = CronSchedule { cron };
        // `0 0 31 2 *` parses but names a day that never comes.
        if schedule.next_after(now()).is_none() {
            return Err(invalid("it never fires (no such date)".into()));
        }
        Ok(schedule)
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Ticks fall on whole seconds: search from the start of `after`'s second.
        let start: DateTime<Utc> = Utc.timestamp_opt(after.floor() as i64, 0).single()?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(next.timestamp() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp() as f64
    }

    #[test]
    fn five_field_cron_fires_on_the_minute() {
        let cron = CronSchedule::parse("0 2 * * *").unwrap();
        let next = cron.next_after(ts("2026-01-01T03:00:00Z")).unwrap();
        assert_eq!(next, ts("2026-01-02T02:00:00Z"));
        let every_5 = CronSchedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            every_5.next_after(ts("2026-01-01T00:07:30Z")).unwrap(),
            ts("2026-01-01T00:10:00Z")
        );
    }

    #[test]
    fn six_field_cron_has_seconds() {
        let cron = CronSchedule::parse("*/10 * * * * *").unwrap();
        let base = ts("2026-01-01T00:00:00Z");
        assert_eq!(cron.next_after(base).unwrap(), base + 10.0);
        assert_eq!(cron.next_after(base + 10.5).unwrap(), base + 20.0);
        let every_second = CronSchedule::parse("* * * * * *").unwrap();
        assert_eq!(every_second.next_after(base + 0.25).unwrap(), base + 1.0);
    }

    #[test]
    fn bad_cron_is_rejected() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "* * * * * * * *",
            "hello world * * *",
            "@reboot",
            "0 0 31 2 *",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?}");
        }
        let nul = CronSchedule::parse("0 2 * *\0 *").unwrap_err().to_string();
        assert!(nul.contains("control character \\u{0}"), "{nul}");
        let never = CronSchedule::parse("0 0 30 2 *").unwrap_err().to_string();
        assert!(never.contains("never fires"), "{never}");
    }

    #[test]
    fn macros_are_the_usual_schedules() {
        let daily = CronSchedule::parse("@daily").unwrap();
        let midnight = CronSchedule::parse("@MIDNIGHT").unwrap();
        let at = ts("2026-01-01T03:00:00Z");
        assert_eq!(daily.next_after(at), Some(ts("2026-01-02T00:00:00Z")));
        assert_eq!(midnight.next_after(at), daily.next_after(at));
        let hourly = CronSchedule::parse(" @hourly ").unwrap();
        assert_eq!(hourly.next_after(at), Some(ts("2026-01-01T04:00:00Z")));
        let weekly = CronSchedule::parse("@weekly").unwrap();
        // 2026-01-01 is a Thursday: the next Sunday is the 4th.
        assert_eq!(weekly.next_after(at), Some(ts("2026-01-04T00:00:00Z")));
        let yearly = CronSchedule::parse("@annually").unwrap();
        assert_eq!(yearly.next_after(at), Some(ts("2027-01-01T00:00:00Z")));
    }

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
