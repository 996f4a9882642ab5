//! Cron schedules: parsing (croner, with the usual macros), declaring, firing each tick once
//! (retrying a tick whose push fails until the next one is due), and reloading the schedules
//! other processes store.

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use std::collections::HashSet;
use std::sync::Arc;

use crate::backend::ScheduleRecord;
use crate::error::{QueueError, Result};
use crate::job::{now, validate_queue_name, Job, JobOptions, Payload, Timestamp};

use super::timers::TimerKey;
use super::Engine;

/// A failed cron tick's push is tried again after this, doubling up to `CRON_RETRY_MAX`, until
/// the next tick is due.
const CRON_RETRY_FIRST: f64 = 0.25;
const CRON_RETRY_MAX: f64 = 5.0;

/// The same schedule, whatever the layout of its JSON (a store may give it back with its keys
/// sorted and its spaces gone).
fn same_schedule(a: &ScheduleRecord, b: &ScheduleRecord) -> bool {
    fn json(bytes: &[u8]) -> Option<serde_json::Value> {
        serde_json::from_slice(bytes).ok()
    }
    let same_json = |x: &[u8], y: &[u8]| x == y || json(x).is_some_and(|v| Some(v) == json(y));
    a.id == b.id
        && a.name == b.name
        && a.queue == b.queue
        && a.cron == b.cron
        && a.priority == b.priority
        && a.attempts == b.attempts
        && a.timeout == b.timeout
        && a.tags == b.tags
        && same_json(&a.data, &b.data)
        && match (&a.metadata, &b.metadata) {
            (Some(x), Some(y)) => same_json(x, y),
            (None, None) => true,
            _ => false,
        }
}

/// A schedule of `queue` that pushes `data` with `options` on each tick of `cron`. A `name` is
/// its id; without one the id derives from the queue, cron and data (`schedule_id`).
pub fn new_schedule(
    queue: &str,
    cron: &str,
    data: Payload,
    name: Option<&str>,
    options: JobOptions,
) -> Result<ScheduleRecord> {
    if let Some(name) = name {
        if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(QueueError::InvalidJob(
                "schedule name must be 1 to 200 characters without control characters".into(),
            ));
        }
    }
    let id = match name {
        Some(name) => name.to_string(),
        None => schedule_id(queue, cron, &data),
    };
    Ok(ScheduleRecord {
        id: Arc::from(id),
        name: name.map(str::to_string),
        queue: Arc::from(queue),
        cron: cron.to_string(),
        data,
        priority: options.priority,
        attempts: options.attempts,
        timeout: options.timeout,
        tags: options.tags,
        metadata: options.metadata,
    })
}

/// A schedule's id when it has no name: the same queue, cron and data give the same id, so that
/// every process can declare its schedules at start-up.
pub fn schedule_id(queue: &str, cron: &str, data: &[u8]) -> String {
    // Key order must not matter: hash the data with its keys sorted.
    let canonical = serde_json::from_slice::<serde_json::Value>(data)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_else(|_| data.to_vec());
    let mut key = Vec::with_capacity(queue.len() + cron.len() + canonical.len() + 2);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key.extend_from_slice(
        cron.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .as_bytes(),
    );
    key.push(0);
    key.extend_from_slice(&canonical);
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &key).to_string()
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

/// A schedule as listed to users.
#[derive(Clone, Debug)]
pub struct ScheduleInfo {
    pub record: ScheduleRecord,
    pub next_run: Option<Timestamp>,
}

/// A failed tick waiting to be pushed again.
#[derive(Clone, Copy, Debug)]
struct TickRetry {
    tick: Timestamp,
    failures: u32,
}

pub(super) struct CronEntry {
    record: ScheduleRecord,
    cron: CronSchedule,
    next_run: Option<Timestamp>,
    retry: Option<TickRetry>,
}

impl Engine {
    /// Declares a cron schedule; declaring the same one again changes nothing.
    pub fn schedule(&self, record: ScheduleRecord) -> Result<Arc<str>> {
        self.check_open()?;
        validate_queue_name(&record.queue)?;
        CronSchedule::parse(&record.cron)?;
        // Every tick would be refused: say so now, not at each tick.
        let options = Self::tick_options(&record, now());
        options.validate()?;
        let job = Job::new(record.queue.clone(), record.data.clone(), options, 1, 1.0);
        self.check_size(&job)?;
        self.ensure_queue(&record.queue)?;
        let id = record.id.clone();
        let _changing = self.schedule_changes.lock();
        if let Some(existing) = self.schedules.lock().get(&id) {
            if same_schedule(&existing.record, &record) {
                return Ok(id);
            }
        }
        self.backend.save_schedule(&record)?;
        self.install_schedule(record)?;
        Ok(id)
    }

    /// Installs the schedules another process stored since this one started or last looked
    /// (one declared by a deploy script, say), so that they fire here too.
    /// Drops those another process removed (they would otherwise stay listed until their next
    /// tick, a year for a yearly one).
    pub(super) fn reload_schedules(&self) {
        // Not interleaved with this process's own declarations.
        let _changing = self.schedule_changes.lock();
        let records = match self.backend.load_schedules() {
            Ok(records) => records,
            Err(error) => {
                log::debug!(target: "rnode_queue", "schedules not reloaded: {error}");
                return;
            }
        };
        let stored: HashSet<Arc<str>> = records.iter().map(|r| r.id.clone()).collect();
        let gone: Vec<Arc<str>> = self
            .schedules
            .lock()
            .keys()
            .filter(|id| !stored.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.schedules.lock().remove(&id);
            self.timers.disarm(&TimerKey::Cron(id));
        }
        for record in records {
            let known = self
                .schedules
                .lock()
                .get(&record.id)
                .is_some_and(|entry| same_schedule(&entry.record, &record));
            if !known {
                // One that does not parse was stored by a newer version: it stays stored.
                if let Err(error) = self.install_schedule(record) {
                    log::debug!(target: "rnode_queue", "a stored schedule is skipped: {error}");
                }
            }
        }
    }

    pub(super) fn install_schedule(&self, record: ScheduleRecord) -> Result<()> {
        let cron = CronSchedule::parse(&record.cron)?;
        let next_run = cron.next_after(now());
        let id = record.id.clone();
        self.schedules.lock().insert(
            id.clone(),
            CronEntry {
                record,
                cron,
                next_run,
                retry: None,
            },
        );
        if let Some(at) = next_run {
            self.timers.disarm(&TimerKey::Cron(id.clone()));
            self.timers.arm(TimerKey::Cron(id), at);
        }
        Ok(())
    }

    pub fn unschedule(&self, id: &str) -> Result<bool> {
        self.check_open()?;
        let _changing = self.schedule_changes.lock();
        let known = self.schedules.lock().remove(id).is_some();
        self.timers.disarm(&TimerKey::Cron(Arc::from(id)));
        let stored = self.backend.remove_schedule(id)?;
        Ok(known || stored)
    }

    pub fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        self.check_open()?;
        let mut list: Vec<ScheduleInfo> = self
            .schedules
            .lock()
            .values()
            .map(|e| ScheduleInfo {
                record: e.record.clone(),
                next_run: e.next_run,
            })
            .collect();
        list.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(list)
    }

    fn tick_options(record: &ScheduleRecord, tick: Timestamp) -> JobOptions {
        JobOptions {
            priority: record.priority,
            scheduled_at: Some(tick),
            attempts: record.attempts,
            timeout: record.timeout,
            tags: record.tags.clone(),
            metadata: record.metadata.clone(),
            schedule_id: Some(record.id.clone()),
            ..JobOptions::default()
        }
    }

    /// Pushes the due tick of a schedule, or tries again a tick whose push failed. A failed
    /// push is tried again (backing off) until the next tick is due; then it is given up, and
    /// logged.
    pub(super) fn fire_schedule(&self, id: &Arc<str>) {
        let now = now();
        let (record, tick, failures) = {
            let mut schedules = self.schedules.lock();
            let Some(entry) = schedules.get_mut(id) else {
                return;
            };
            let retry = entry.retry.take();
            match retry {
                Some(retry) if entry.next_run.is_none_or(|next| next > now) => {
                    (entry.record.clone(), retry.tick, retry.failures)
                }
                _ => {
                    if let Some(lost) = retry {
                        log::error!(
                            target: "rnode_queue",
                            "schedule {:?}: the job of the tick at {} was not pushed after {} \
                             tries, and the next tick is due: that tick is given up",
                            &**id,
                            lost.tick,
                            lost.failures
                        );
                    }
                    let Some(tick) = entry.next_run else {
                        return;
                    };
                    if tick > now {
                        // Woken early (a re-declared schedule): keep waiting.
                        self.timers.arm(TimerKey::Cron(id.clone()), tick);
                        return;
                    }
                    // Ticks missed while nothing ran are skipped: the next run is the next
                    // future tick.
                    entry.next_run = entry.cron.next_after(now.max(tick));
                    (entry.record.clone(), tick, 0)
                }
            }
        };
        if matches!(self.backend.has_schedule(id), Ok(false)) {
            // Unscheduled by another process: stop firing it here too (unless this process
            // declared it again meanwhile).
            let mut schedules = self.schedules.lock();
            if schedules.get(id).is_some_and(|e| e.record == record) {
                schedules.remove(id);
            }
            return;
        }
        let options = Self::tick_options(&record, tick);
        // The tick is claimed and its job stored in one step: one run per tick, whichever
        // process gets there first.
        let pushed = self.push_jobs(
            &record.queue,
            &[(record.data.clone(), options)],
            super::jobs::PushMode::Wait,
            Some((id, tick)),
        );
        let mut schedules = self.schedules.lock();
        let Some(entry) = schedules.get_mut(id) else {
            return;
        };
        let mut wake_at = entry.next_run;
        match pushed {
            Err(error) if error.is_backend() && entry.next_run.is_some() => {
                let failures = failures + 1;
                if failures == 1 {
                    log::warn!(
                        target: "rnode_queue",
                        "schedule {:?}: the job of the tick at {tick} could not be pushed \
                         ({error}); trying again until the next tick",
                        &**id
                    );
                }
                let backoff =
                    (CRON_RETRY_FIRST * 2f64.powi(failures as i32 - 1)).min(CRON_RETRY_MAX);
                entry.retry = Some(TickRetry { tick, failures });
                wake_at = wake_at.map(|next| next.min(now + backoff));
            }
            Err(QueueError::Closed) => return,
            Err(error) => log::error!(
                target: "rnode_queue",
                "schedule {:?}: the job of the tick at {tick} was not pushed ({error}); that \
                 tick is given up",
                &**id
            ),
            Ok(_) => {
                if failures > 0 {
                    log::info!(
                        target: "rnode_queue",
                        "schedule {:?}: the tick at {tick} was pushed after {failures} failed \
                         tries",
                        &**id
                    );
                }
            }
        }
        if let Some(at) = wake_at {
            self.timers.arm(TimerKey::Cron(id.clone()), at);
        }
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
}
