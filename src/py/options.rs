//! Push options, `push_batch` items and queue settings as Python passes them, converted to the
//! engine's types. The rules (ranges, defaults) are the engine's; this only converts.

use std::sync::Arc;

use pyo3::exceptions::PyKeyError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDateTime, PyDict, PyInt, PyMapping, PyString, PyTzInfo};

use crate::engine::{BackoffChoice, QueueSettings, MAX_CONCURRENCY};
use crate::job::{JobOptions, Payload, Priority, Timestamp};
use crate::py::args::{optional_whole, seconds, whole, Kind};
use crate::py::convert::to_payload;
use crate::py::dispatch::PyDelayFunction;
use crate::py::errors::invalid_job;

pub fn payload(object: &Bound<'_, PyAny>, what: &str) -> PyResult<Payload> {
    to_payload(object).map_err(|message| invalid_job(format!("{what}: {message}")))
}

fn priority(value: Option<&Bound<'_, PyAny>>) -> PyResult<Priority> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Priority::Normal);
    };
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(text.to_str()?.parse::<Priority>()?);
    }
    if value.is_instance_of::<PyInt>() && !value.is_instance_of::<PyBool>() {
        let level: i64 = value
            .extract()
            .map_err(|_| invalid_job("unknown priority: use 0, 5, 10 or 15"))?;
        return Ok(Priority::from_level(level)?);
    }
    Err(invalid_job(format!(
        "priority must be \"low\", \"normal\", \"high\", \"critical\" or 0/5/10/15, got {}",
        value.repr()?
    )))
}

fn tags(value: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Vec::new());
    };
    if value.is_instance_of::<PyString>() {
        return Err(invalid_job("tags must be a list of str, not a str"));
    }
    let mut out = Vec::new();
    for item in value
        .try_iter()
        .map_err(|_| invalid_job("tags must be a list of str"))?
    {
        let item = item?;
        let text = item
            .cast::<PyString>()
            .map_err(|_| invalid_job("tags must be a list of str"))?;
        let text = text
            .to_str()
            .map_err(|_| invalid_job("a tag contains characters that cannot be encoded"))?;
        out.push(text.to_owned());
    }
    Ok(out)
}

fn metadata(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Payload>> {
    match value.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) if v.is_instance_of::<PyDict>() => payload(v, "metadata").map(Some),
        Some(v) => Err(invalid_job(format!(
            "metadata must be a dict, got {}",
            v.get_type().name()?
        ))),
    }
}

/// A datetime as a Unix timestamp; a naive datetime is taken as UTC.
fn timestamp(value: &Bound<'_, PyAny>) -> PyResult<Timestamp> {
    let py = value.py();
    if !value.is_instance_of::<PyDateTime>() {
        return Err(invalid_job(format!(
            "expected a datetime, got {}",
            value.get_type().name()?
        )));
    }
    let aware = if value.getattr("tzinfo")?.is_none() {
        let kwargs = PyDict::new(py);
        kwargs.set_item("tzinfo", PyTzInfo::utc(py)?)?;
        value.call_method("replace", (), Some(&kwargs))?
    } else {
        value.clone()
    };
    // Before the year 1 in UTC (a date near the start of the calendar, with an offset), the
    // conversion itself may fail: that is a bad option too.
    aware
        .call_method0("timestamp")
        .and_then(|t| t.extract())
        .map_err(|_| invalid_job("scheduled_at must be a time from the year 1 to the year 9999"))
}

/// The options of one push, by name.
#[derive(Default)]
pub struct PushArgs<'a, 'py> {
    pub priority: Option<&'a Bound<'py, PyAny>>,
    pub delay: Option<&'a Bound<'py, PyAny>>,
    pub attempts: Option<&'a Bound<'py, PyAny>>,
    pub timeout: Option<&'a Bound<'py, PyAny>>,
    pub tags: Option<&'a Bound<'py, PyAny>>,
    pub metadata: Option<&'a Bound<'py, PyAny>>,
    pub scheduled_at: Option<&'a Bound<'py, PyAny>>,
}

impl PushArgs<'_, '_> {
    pub fn parse(&self) -> PyResult<JobOptions> {
        let options = JobOptions {
            priority: priority(self.priority)?,
            delay: seconds(self.delay, "delay", Kind::Job)?.unwrap_or(0.0),
            scheduled_at: match self.scheduled_at.filter(|v| !v.is_none()) {
                Some(at) => Some(timestamp(at)?),
                None => None,
            },
            attempts: optional_whole(self.attempts, "attempts", 1, u32::MAX.into(), Kind::Job)?
                .map(|n| n as u32),
            timeout: seconds(self.timeout, "timeout", Kind::Job)?,
            tags: tags(self.tags)?,
            metadata: metadata(self.metadata)?,
            schedule_id: None,
        };
        options.validate()?;
        Ok(options)
    }
}

const OPTION_KEYS: [&str; 7] = [
    "priority",
    "delay",
    "attempts",
    "timeout",
    "tags",
    "metadata",
    "scheduled_at",
];
const ITEM_KEYS: [&str; 2] = ["data", "options"];

/// The keys of a dict or mapping, as text.
fn keys_of(mapping: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let keys = match mapping.cast::<PyDict>() {
        Ok(dict) => dict.keys().into_any(),
        Err(_) => mapping.call_method0(intern!(mapping.py(), "keys"))?,
    };
    keys.try_iter()?
        .map(|key| Ok(key?.str()?.to_string_lossy().into_owned()))
        .collect()
}

/// One `push_batch` item: `{"data": ..., "options": {...}}`; any other key is refused (a typo
/// such as `"option"` would otherwise drop the options without a word).
pub fn batch_item<'py>(item: &Bound<'py, PyAny>, index: usize) -> PyResult<(Payload, JobOptions)> {
    let py = item.py();
    let at = |message: String| invalid_job(format!("push_batch item {index}: {message}"));
    let shape = || at("each item must be a dict like {\"data\": ..., \"options\": {...}}".into());
    // A dict (the usual case) is read without raising KeyError; other mappings go through the
    // mapping protocol.
    if item.cast::<PyDict>().is_err() && item.cast::<PyMapping>().is_err() {
        return Err(shape());
    }
    for key in keys_of(item)? {
        if !ITEM_KEYS.contains(&key.as_str()) {
            return Err(at(format!(
                "unknown key {key:?} (an item has \"data\" and \"options\")"
            )));
        }
    }
    let lookup = |key: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Ok(dict) = item.cast::<PyDict>() {
            return dict.get_item(key);
        }
        let mapping = item.cast::<PyMapping>().map_err(|_| shape())?;
        match mapping.get_item(key) {
            Ok(value) => Ok(Some(value)),
            Err(err) if err.is_instance_of::<PyKeyError>(py) => Ok(None),
            Err(err) => Err(err),
        }
    };
    let data = lookup(intern!(py, "data"))?.ok_or_else(|| at("missing \"data\"".into()))?;
    let data = to_payload(&data).map_err(at)?;
    let Some(options) = lookup(intern!(py, "options"))?.filter(|o| !o.is_none()) else {
        return Ok((data, JobOptions::default()));
    };
    let options = options
        .cast::<PyDict>()
        .map_err(|_| at("\"options\" must be a dict".into()))?;
    for key in keys_of(options.as_any())? {
        if !OPTION_KEYS.contains(&key.as_str()) {
            return Err(at(format!(
                "unknown option {key:?} (known: {})",
                OPTION_KEYS.join(", ")
            )));
        }
    }
    let parsed = options_from_dict(options).map_err(|e| at(e.value(py).to_string()))?;
    Ok((data, parsed))
}

/// Push options from a dict of known keys (`priority`, `delay`, ...), checked as `push` checks
/// its keyword arguments.
pub fn options_from_dict(options: &Bound<'_, PyDict>) -> PyResult<JobOptions> {
    let get = |key: &str| options.get_item(key).ok().flatten();
    let (priority, delay, attempts, timeout, tags, metadata, scheduled_at) = (
        get("priority"),
        get("delay"),
        get("attempts"),
        get("timeout"),
        get("tags"),
        get("metadata"),
        get("scheduled_at"),
    );
    PushArgs {
        priority: priority.as_ref(),
        delay: delay.as_ref(),
        attempts: attempts.as_ref(),
        timeout: timeout.as_ref(),
        tags: tags.as_ref(),
        metadata: metadata.as_ref(),
        scheduled_at: scheduled_at.as_ref(),
    }
    .parse()
}

/// A queue's settings by name; `None`: the base's value.
#[derive(Default)]
pub struct QueueArgs<'a, 'py> {
    pub concurrency: Option<&'a Bound<'py, PyAny>>,
    pub max_retries: Option<&'a Bound<'py, PyAny>>,
    pub timeout: Option<&'a Bound<'py, PyAny>>,
    pub retry_delay: Option<&'a Bound<'py, PyAny>>,
    /// `"fixed"`, `"exponential"`, `"custom"`, or a function `(attempt, error) -> seconds`.
    pub backoff: Option<&'a Bound<'py, PyAny>>,
    pub custom_delays: Option<&'a Bound<'py, PyAny>>,
    pub backoff_cap: Option<&'a Bound<'py, PyAny>>,
    pub jitter: Option<&'a Bound<'py, PyAny>>,
    pub ttl: Option<&'a Bound<'py, PyAny>>,
    pub keep_completed: Option<&'a Bound<'py, PyAny>>,
    pub keep_failed: Option<&'a Bound<'py, PyAny>>,
}

impl QueueArgs<'_, '_> {
    /// The settings as the engine takes them (`QueueSettings::over` merges and checks them).
    pub fn convert(&self) -> PyResult<QueueSettings> {
        let setting = Kind::Setting;
        let count = |value: Option<&Bound<'_, PyAny>>, what: &str, min: i64, max: u64| {
            optional_whole(value, what, min, max, setting)
        };
        let backoff = match self.backoff.filter(|v| !v.is_none()) {
            None => None,
            Some(value) if value.is_instance_of::<PyString>() => {
                Some(BackoffChoice::Named(value.extract::<String>()?))
            }
            Some(value) if value.is_callable() => Some(BackoffChoice::Function(Arc::new(
                PyDelayFunction::new(value.clone().unbind()),
            ))),
            Some(value) => {
                return Err(setting.error(format!(
                    "backoff must be \"fixed\", \"exponential\", \"custom\" or a function \
                     (attempt, error) -> seconds, got {}",
                    value.repr()?
                )))
            }
        };
        let custom_delays = match self.custom_delays.filter(|v| !v.is_none()) {
            None => None,
            Some(list) => Some(
                list.try_iter()
                    .map_err(|_| setting.error("custom_delays must be a list of seconds".into()))?
                    .map(|item| {
                        seconds(Some(&item?), "custom_delays", setting)
                            .map(|s| s.unwrap_or_default())
                    })
                    .collect::<PyResult<Vec<f64>>>()?,
            ),
        };
        let jitter = match self.jitter.filter(|v| !v.is_none()) {
            Some(v) if v.is_instance_of::<PyBool>() => {
                return Err(setting.error("jitter must be a number from 0 to 1".into()))
            }
            Some(v) => Some(
                v.extract::<f64>()
                    .map_err(|_| setting.error("jitter must be a number from 0 to 1".into()))?,
            ),
            None => None,
        };
        Ok(QueueSettings {
            concurrency: count(self.concurrency, "concurrency", 1, MAX_CONCURRENCY as u64)?
                .map(|n| n as usize),
            max_retries: count(self.max_retries, "max_retries", 0, u32::MAX as u64 - 1)?
                .map(|n| n as u32),
            timeout: seconds(self.timeout, "timeout", setting)?,
            retry_delay: seconds(self.retry_delay, "retry_delay", setting)?,
            backoff,
            custom_delays,
            backoff_cap: seconds(self.backoff_cap, "backoff_cap", setting)?,
            jitter,
            ttl: seconds(self.ttl, "ttl", setting)?,
            keep_completed: count(self.keep_completed, "keep_completed", 0, i64::MAX as u64)?
                .map(|n| n as usize),
            keep_failed: count(self.keep_failed, "keep_failed", 0, i64::MAX as u64)?
                .map(|n| n as usize),
        })
    }
}

/// A whole-number argument of a call (`limit`, `offset`): `ConfigError` when it is not one;
/// `default` when it is not given.
pub fn count_arg(value: Option<&Bound<'_, PyAny>>, name: &str, default: usize) -> PyResult<usize> {
    match value.filter(|value| !value.is_none()) {
        Some(value) => Ok(whole(value, name, 0, Kind::Setting)?.min(usize::MAX as u64) as usize),
        None => Ok(default),
    }
}
