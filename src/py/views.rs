//! Engine records as the dicts Python sees: queue settings, queue stats, schedules.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::backoff::Backoff;
use crate::engine::{QueueConfig, QueueStats, ScheduleInfo};
use crate::py::convert::from_json;
use crate::py::job::datetime;

pub fn queue_stats_dict<'py>(py: Python<'py>, stats: QueueStats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("size", stats.size)?;
    dict.set_item("processing", stats.processing)?;
    dict.set_item("completed", stats.completed)?;
    dict.set_item("failed", stats.failed)?;
    dict.set_item("waiting", stats.waiting)?;
    dict.set_item("delayed", stats.delayed)?;
    dict.set_item("paused", stats.paused)?;
    Ok(dict)
}

pub fn queue_config_dict<'py>(
    py: Python<'py>,
    config: &QueueConfig,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("concurrency", config.concurrency)?;
    dict.set_item("max_retries", config.max_retries)?;
    dict.set_item("timeout", config.timeout)?;
    dict.set_item("backoff", config.backoff.kind())?;
    dict.set_item("retry_delay", config.backoff.base())?;
    match &config.backoff {
        Backoff::Exponential { cap, jitter, .. } => {
            dict.set_item("backoff_cap", cap)?;
            dict.set_item("jitter", jitter)?;
        }
        Backoff::Custom { delays } => dict.set_item("custom_delays", delays.clone())?,
        Backoff::Fixed { .. } | Backoff::Function { .. } => {}
    }
    dict.set_item("ttl", config.retention.ttl)?;
    dict.set_item("keep_completed", config.retention.keep_completed)?;
    dict.set_item("keep_failed", config.retention.keep_failed)?;
    Ok(dict)
}

pub fn schedule_dict<'py>(py: Python<'py>, info: &ScheduleInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let record = &info.record;
    dict.set_item("id", &*record.id)?;
    dict.set_item("name", record.name.as_deref())?;
    dict.set_item("queue", &*record.queue)?;
    dict.set_item("cron", &record.cron)?;
    dict.set_item("data", from_json(py, &record.data)?)?;
    dict.set_item("priority", record.priority.as_str())?;
    dict.set_item("next_run", datetime(py, info.next_run)?)?;
    Ok(dict)
}
