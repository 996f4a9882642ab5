//! Arguments from Python, checked and converted: each bad value becomes the typed error its
//! context calls for (`InvalidJobError` for job data and options, `ConfigError` for settings,
//! `InvalidQueueNameError` for queue names), never a raw `OverflowError` or `UnicodeError`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDelta, PyFloat, PyInt, PyString};

use crate::error::QueueError;

/// Which error class a bad value raises.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Job data and push options: `InvalidJobError`.
    Job,
    /// Settings of the manager, a queue or a call: `ConfigError`.
    Setting,
}

impl Kind {
    pub fn error(self, message: String) -> PyErr {
        match self {
            Kind::Job => QueueError::InvalidJob(message),
            Kind::Setting => QueueError::Config(message),
        }
        .into()
    }
}

fn repr(value: &Bound<'_, PyAny>) -> String {
    value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// A duration: seconds (int or float) or a `datetime.timedelta`. `None` passes through. The
/// range is checked where the value is used.
pub fn seconds(value: Option<&Bound<'_, PyAny>>, what: &str, kind: Kind) -> PyResult<Option<f64>> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    if value.is_instance_of::<PyBool>() {
        return Err(kind.error(format!(
            "{what} must be a number of seconds or a timedelta, got a bool"
        )));
    }
    if value.is_instance_of::<PyDelta>() {
        return value
            .call_method0("total_seconds")?
            .extract::<f64>()
            .map(Some);
    }
    if value.is_instance_of::<PyFloat>() || value.is_instance_of::<PyInt>() {
        if let Ok(number) = value.extract::<f64>() {
            return Ok(Some(number));
        }
        // An int past a float's range.
        return Ok(Some(f64::INFINITY));
    }
    Err(kind.error(format!(
        "{what} must be a number of seconds or a timedelta, got {}",
        repr(value)
    )))
}

/// A whole number of at least `min` (bools refused, and ints of any size turned into a clear
/// error rather than an `OverflowError`).
pub fn whole(value: &Bound<'_, PyAny>, what: &str, min: i64, kind: Kind) -> PyResult<u64> {
    if value.is_instance_of::<PyBool>() || !value.is_instance_of::<PyInt>() {
        return Err(kind.error(format!(
            "{what} must be a whole number, got {}",
            repr(value)
        )));
    }
    match value.extract::<i64>() {
        Ok(n) if n < min => Err(kind.error(format!("{what} must be at least {min}, got {n}"))),
        Ok(n) => Ok(n as u64),
        Err(_) if value.lt(0)? => Err(kind.error(format!(
            "{what} must be at least {min}, got {}",
            repr(value)
        ))),
        Err(_) => Err(kind.error(format!(
            "{what} is too large: {} (at most {})",
            repr(value),
            i64::MAX
        ))),
    }
}

/// `whole`, bounded above.
pub fn bounded(
    value: &Bound<'_, PyAny>,
    what: &str,
    min: i64,
    max: u64,
    kind: Kind,
) -> PyResult<u64> {
    let n = whole(value, what, min, kind)?;
    if n > max {
        return Err(kind.error(format!("{what} is too large: {n} (at most {max})")));
    }
    Ok(n)
}

/// `whole` for an optional argument.
pub fn optional_whole(
    value: Option<&Bound<'_, PyAny>>,
    what: &str,
    min: i64,
    max: u64,
    kind: Kind,
) -> PyResult<Option<u64>> {
    value
        .filter(|v| !v.is_none())
        .map(|v| bounded(v, what, min, max, kind))
        .transpose()
}

/// A queue name as Python passes it: a `str` whose text Rust can read. A lone surrogate (or
/// anything not a `str`) is an `InvalidQueueNameError`, not a `UnicodeEncodeError`. The other
/// rules (length, control characters) are the engine's (`job::validate_queue_name`).
pub struct QueueName(pub String);

impl<'a, 'py> FromPyObject<'a, 'py> for QueueName {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        let Ok(text) = obj.cast::<PyString>() else {
            return Err(QueueError::InvalidQueueName(format!(
                "a queue name must be a str, got {}",
                obj.get_type().name()?
            ))
            .into());
        };
        match text.to_str() {
            Ok(name) => Ok(QueueName(name.to_owned())),
            Err(_) => Err(QueueError::InvalidQueueName(format!(
                "queue name {} contains characters that cannot be encoded (a lone surrogate?)",
                text.repr()?
            ))
            .into()),
        }
    }
}

impl std::ops::Deref for QueueName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}
