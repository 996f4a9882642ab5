//! Jobs, priorities, states and push options: the data every backend stores.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{QueueError, Result};

pub use crate::id::{IdMap, JobId};

/// Serialised JSON, shared between the store and the workers without copying.
pub type Payload = Arc<[u8]>;

/// Seconds since the Unix epoch (UTC); `f64` keeps microseconds for centuries.
pub type Timestamp = f64;

/// An optional time in 8 bytes instead of 16 (NaN = none): a queued job stays small.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MaybeTime(f64);

impl MaybeTime {
    pub const NONE: MaybeTime = MaybeTime(f64::NAN);

    pub fn get(self) -> Option<Timestamp> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

impl From<Option<Timestamp>> for MaybeTime {
    fn from(value: Option<Timestamp>) -> Self {
        MaybeTime(value.unwrap_or(f64::NAN))
    }
}

pub fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub enum Priority {
    Low = 0,
    #[default]
    Normal = 5,
    High = 10,
    Critical = 15,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    pub fn from_level(level: i64) -> Result<Self> {
        Priority::ALL
            .into_iter()
            .find(|p| *p as i64 == level)
            .ok_or_else(|| {
                QueueError::InvalidJob(format!(
                    "unknown priority {level}: use 0 (low), 5 (normal), 10 (high) or 15 (critical)"
                ))
            })
    }
}

impl FromStr for Priority {
    type Err = QueueError;
    fn from_str(text: &str) -> Result<Self> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                QueueError::InvalidJob(format!(
                    "unknown priority {text:?}: use \"low\", \"normal\", \"high\" or \"critical\""
                ))
            })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum JobState {
    Waiting,
    Delayed,
    Active,
    Completed,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Waiting,
        JobState::Delayed,
        JobState::Active,
        JobState::Completed,
        JobState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Delayed => "delayed",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }
}

impl FromStr for JobState {
    type Err = QueueError;
    fn from_str(text: &str) -> Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                QueueError::InvalidJob(format!(
                    "unknown status {text:?}: use waiting, delayed, active, completed or failed"
                ))
            })
    }
}

/// What a push may say about one job. `None` means "the queue's default".
#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    pub priority: Priority,
    /// Seconds from now before the job becomes visible.
    pub delay: f64,
    /// Absolute due time; wins over `delay` when both are given.
    pub scheduled_at: Option<Timestamp>,
    /// Total runs allowed.
    pub attempts: Option<u32>,
    pub timeout: Option<f64>,
    pub tags: Vec<String>,
    /// A JSON object.
    pub metadata: Option<Payload>,
    pub schedule_id: Option<Arc<str>>,
}

impl JobOptions {
    pub fn validate(&self) -> Result<()> {
        let invalid = QueueError::InvalidJob;
        seconds_error("delay", self.delay).map_or(Ok(()), |e| Err(invalid(e)))?;
        if let Some(timeout) = self.timeout {
            seconds_error("timeout", timeout).map_or(Ok(()), |e| Err(invalid(e)))?;
            if timeout == 0.0 {
                return Err(invalid("timeout must be > 0 seconds".into()));
            }
        }
        if let Some(at) = self.scheduled_at {
            if !at.is_finite() || !(MIN_TIMESTAMP..=MAX_TIMESTAMP).contains(&at) {
                return Err(invalid(
                    "scheduled_at must be a time from the year 1 to the year 9999 (UTC)".into(),
                ));
            }
        }
        if self.attempts == Some(0) {
            return Err(invalid("attempts must be at least 1".into()));
        }
        Ok(())
    }
}

/// Ten years: longer delays or timeouts are almost certainly mistakes, and due times must stay
/// within what a Python `datetime` can show.
pub const MAX_SECONDS: f64 = 10.0 * 365.25 * 86_400.0;
/// 9999-12-31T23:59:59Z, the last second a `datetime` can hold.
pub const MAX_TIMESTAMP: Timestamp = 253_402_300_799.0;
/// 0001-01-01T00:00:00Z, the first.
pub const MIN_TIMESTAMP: Timestamp = -62_135_596_800.0;

/// Why `value` is not a valid duration for `what`, if it is not.
pub fn seconds_error(what: &str, value: f64) -> Option<String> {
    (!value.is_finite() || !(0.0..=MAX_SECONDS).contains(&value)).then(|| {
        format!(
            "{what} must be a number of seconds from 0 to {MAX_SECONDS} (ten years), got {value}"
        )
    })
}

/// A duration setting (a queue's timeout, retry delay, ttl): `ConfigError` when out of range.
pub fn check_setting_seconds(what: &str, value: f64) -> Result<f64> {
    match seconds_error(what, value) {
        Some(error) => Err(QueueError::Config(error)),
        None => Ok(value),
    }
}

/// Fields that most jobs never set live behind one pointer, which keeps a queued job small.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobExtras {
    pub tags: Vec<String>,
    pub metadata: Option<Payload>,
    pub result: Option<Payload>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub schedule_id: Option<Arc<str>>,
    /// The delay asked for at push, in seconds.
    pub delay: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub queue: Arc<str>,
    pub data: Payload,
    pub priority: Priority,
    pub state: JobState,
    /// Runs started so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Seconds a run may take.
    pub timeout: f64,
    pub created_at: Timestamp,
    /// When the job becomes (or became) visible, if it was delayed, retried or scheduled.
    pub scheduled_at: MaybeTime,
    pub started_at: MaybeTime,
    /// When the job completed or finally failed (which one: `state`).
    pub finished_at: MaybeTime,
    /// Position in the FIFO order within a priority; kept when a job is handed back unrun.
    pub seq: u64,
    pub extras: Option<Box<JobExtras>>,
}

impl Job {
    /// A new job, waiting or delayed according to `options` (already validated).
    pub fn new(
        queue: Arc<str>,
        data: Payload,
        options: JobOptions,
        default_attempts: u32,
        default_timeout: f64,
    ) -> Self {
        Self::created_at(
            now(),
            queue,
            data,
            options,
            default_attempts,
            default_timeout,
        )
    }

    /// `new`, with the creation time given (one clock read for a whole batch).
    pub fn created_at(
        created_at: Timestamp,
        queue: Arc<str>,
        data: Payload,
        options: JobOptions,
        default_attempts: u32,
        default_timeout: f64,
    ) -> Self {
        let due = options
            .scheduled_at
            .or((options.delay > 0.0).then_some(created_at + options.delay));
        let extras = (!options.tags.is_empty()
            || options.metadata.is_some()
            || options.schedule_id.is_some()
            || options.delay > 0.0)
            .then(|| {
                Box::new(JobExtras {
                    tags: options.tags,
                    metadata: options.metadata,
                    schedule_id: options.schedule_id,
                    delay: options.delay,
                    ..JobExtras::default()
                })
            });
        Job {
            id: JobId::new(created_at),
            queue,
            data,
            priority: options.priority,
            state: if due.is_some_and(|d| d > created_at) {
                JobState::Delayed
            } else {
                JobState::Waiting
            },
            attempts: 0,
            max_attempts: options.attempts.unwrap_or(default_attempts).max(1),
            timeout: options.timeout.unwrap_or(default_timeout),
            created_at,
            scheduled_at: due.into(),
            started_at: MaybeTime::NONE,
            finished_at: MaybeTime::NONE,
            seq: 0,
            extras,
        }
    }

    pub fn extras(&self) -> Option<&JobExtras> {
        self.extras.as_deref()
    }

    pub fn extras_mut(&mut self) -> &mut JobExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// When a delayed job becomes visible.
    pub fn due_at(&self) -> Timestamp {
        self.scheduled_at.get().unwrap_or(self.created_at)
    }

    /// Rough serialised size, checked against `max_job_bytes`.
    pub fn encoded_len(&self) -> usize {
        let extras = self.extras().map_or(0, |e| {
            e.tags.iter().map(|t| t.len() + 3).sum::<usize>()
                + e.metadata.as_ref().map_or(0, |m| m.len())
        });
        self.data.len() + extras + self.queue.len()
    }
}

/// Queue names end up in Redis keys and file names: keep them printable and bounded.
pub fn validate_queue_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(QueueError::InvalidQueueName(
            "queue name must not be empty".into(),
        ));
    }
    if name.chars().count() > 200 {
        return Err(QueueError::InvalidQueueName(format!(
            "queue name is longer than 200 characters ({})",
            name.chars().count()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(QueueError::InvalidQueueName(format!(
            "queue name {name:?} contains control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_and_order() {
        assert_eq!("high".parse::<Priority>().unwrap(), Priority::High);
        assert_eq!(Priority::from_level(15).unwrap(), Priority::Critical);
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Priority::from_level(3).is_err());
        assert!(Priority::Critical > Priority::High && Priority::High > Priority::Normal);
    }

    #[test]
    fn queue_names_are_checked() {
        assert!(validate_queue_name("emails").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name(&"x".repeat(201)).is_err());
        assert!(validate_queue_name(&"é".repeat(200)).is_ok());
        assert!(validate_queue_name("a\nb").is_err());
    }

    #[test]
    fn options_are_validated() {
        let bad = [
            JobOptions {
                delay: -1.0,
                ..Default::default()
            },
            JobOptions {
                delay: f64::NAN,
                ..Default::default()
            },
            JobOptions {
                timeout: Some(-2.0),
                ..Default::default()
            },
            JobOptions {
                timeout: Some(0.0),
                ..Default::default()
            },
            JobOptions {
                attempts: Some(0),
                ..Default::default()
            },
        ];
        for options in bad {
            assert!(options.validate().is_err(), "{options:?}");
        }
        assert!(JobOptions::default().validate().is_ok());
    }

    #[test]
    fn delayed_jobs_start_delayed() {
        let queue: Arc<str> = Arc::from("q");
        let data: Payload = Arc::from(&b"{}"[..]);
        let options = JobOptions {
            delay: 5.0,
            ..Default::default()
        };
        let job = Job::new(queue.clone(), data.clone(), options, 4, 300.0);
        assert_eq!(job.state, JobState::Delayed);
        assert!(job.due_at() >= job.created_at + 5.0);
        let job = Job::new(queue, data, JobOptions::default(), 4, 300.0);
        assert_eq!(job.state, JobState::Waiting);
        assert_eq!(job.max_attempts, 4);
    }

    #[test]
    fn queued_jobs_stay_small() {
        // 120 bytes fit a 128-byte allocation: the memory target (1M jobs < 400 MB) needs it.
        assert!(
            std::mem::size_of::<Job>() <= 120,
            "{}",
            std::mem::size_of::<Job>()
        );
    }
}
