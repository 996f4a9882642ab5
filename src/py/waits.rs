//! Waits from Python (`wait_for`, `join`): their timeout, and cut into slices so that Ctrl-C
//! is handled while they wait.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::error::QueueError;
use crate::py::args::{seconds, Kind};
use crate::py::errors::config_error;
use crate::py::gil;

/// A call's timeout: `None` or infinity waits for ever; otherwise seconds (or a timedelta)
/// from 0.
pub fn wait_timeout(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    match seconds(value, "timeout", Kind::Setting)? {
        None => Ok(None),
        Some(t) if t == f64::INFINITY => Ok(None),
        Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
        Some(t) => Err(config_error(format!(
            "timeout must be a number of seconds >= 0 (or None), got {t}"
        ))),
    }
}

/// Python runs signal handlers (Ctrl-C) only between bytecodes: long waits are cut into
/// slices, and pending signals are handled between them.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// Calls `attempt` with the time it may wait, until it returns `Some` or `timeout` passes.
pub fn wait_interruptibly<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, QueueError> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(SIGNAL_SLICE),
            None => SIGNAL_SLICE,
        };
        if let Some(found) = gil::detach(py, || attempt(slice))? {
            return Ok(Some(found));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}
