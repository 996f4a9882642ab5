//! Engine records as the dicts Python sees: queue settings, queue stats, schedules.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::backoff::Backoff;
use crate::engine::{
    QueueConfig, QueueReport, QueueStats, ScheduleInfo, WorkerInfo, DURATION_BOUNDS,
};
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

/// One queue's metrics (see `Engine::metrics_report`); the store's counts are None when it
/// could not be reached.
pub fn queue_report_dict<'py>(
    py: Python<'py>,
    report: &QueueReport,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    let counters = &report.counters;
    dict.set_item("queue", &report.queue)?;
    dict.set_item("pushed", counters.pushed)?;
    dict.set_item("processed", counters.processed)?;
    dict.set_item("failed", counters.failed)?;
    dict.set_item("retried", counters.retried)?;
    let bounds = DURATION_BOUNDS.iter().copied().chain([f64::INFINITY]);
    let mut buckets: Vec<(f64, u64)> = bounds
        .zip(counters.duration_buckets.iter().copied())
        .collect();
    if buckets.len() < DURATION_BOUNDS.len() + 1 {
        // Counting is off: every bucket is empty.
        buckets = DURATION_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .map(|b| (b, 0))
            .collect();
    }
    dict.set_item("duration_buckets", buckets)?;
    dict.set_item("duration_sum", counters.duration_sum.as_secs_f64())?;
    dict.set_item("duration_count", counters.duration_count())?;
    dict.set_item("busy", report.busy)?;
    let counts = report.counts.as_ref();
    dict.set_item("waiting", counts.map(|c| c.waiting))?;
    dict.set_item("delayed", counts.map(|c| c.delayed))?;
    dict.set_item("active", counts.map(|c| c.active))?;
    dict.set_item("paused", counts.map(|c| c.paused))?;
    Ok(dict)
}

pub fn worker_dict<'py>(py: Python<'py>, info: &WorkerInfo) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("id", &info.id)?;
    dict.set_item("host", &info.host)?;
    dict.set_item("pid", info.pid)?;
    dict.set_item("queues", &info.queues)?;
    dict.set_item("concurrency", info.concurrency.clone())?;
    dict.set_item("running", info.running)?;
    dict.set_item("started_at", datetime(py, Some(info.started_at))?)?;
    dict.set_item("last_seen", datetime(py, Some(info.last_seen))?)?;
    Ok(dict)
}

/// Records as a list of dicts.
pub fn dict_list<'py, T>(
    py: Python<'py>,
    items: &[T],
    to_dict: impl Fn(Python<'py>, &T) -> PyResult<Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyList>> {
    let dicts = items
        .iter()
        .map(|item| to_dict(py, item))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, dicts)
}
