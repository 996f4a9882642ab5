//! `Engine`: the engine's Python face. Arguments are checked and converted here with the GIL;
//! everything that may wait runs with the GIL released.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyKeyError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDateTime, PyDict, PyInt, PyList, PyMapping, PyString, PyTzInfo};

use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{RedisBackend, RedisOptions};
use crate::backend::{Backend, Retention, ScheduleRecord};
use crate::backoff::Backoff;
use crate::error::QueueError;
use crate::job::{JobId, JobOptions, JobState, Payload, Priority, Timestamp};
use crate::manager::{Engine, EngineOptions, Pushed, QueueConfig, QueueStats};
use crate::py::convert::to_payload;
use crate::py::dispatch::PyExecutor;
use crate::py::errors::invalid_job;
use crate::py::job::{datetime, PyJob, PyStats};

const BACKENDS: [&str; 3] = ["memory", "redis", "file"];
const FSYNC_POLICIES: [&str; 3] = ["always", "everysec", "never"];

#[pyclass(frozen, name = "Engine", module = "rnode_queue._core")]
pub struct PyEngine {
    /// From `Arc::into_raw`. Replaced only in a forked child, where the parent's engine is
    /// leaked: its locks may be held by threads that do not exist there. Never freed before
    /// `self` is dropped, so a `&Engine` taken from it stays valid while `self` lives.
    engine: AtomicPtr<Engine>,
    backend: &'static str,
    store: StoreOptions,
    options: EngineOptions,
    /// Queue settings taken just before `fork`, for the child's fresh engine.
    fork_snapshot: std::sync::Mutex<Vec<(String, QueueConfig)>>,
}

/// A whole number setting (taken as `i64` so that a negative one is our error, not an
/// `OverflowError`).
fn count(value: i64, what: &str, min: i64) -> PyResult<usize> {
    if value < min {
        return Err(invalid_job(format!(
            "{what} must be at least {min}, got {value}"
        )));
    }
    usize::try_from(value).map_err(|_| invalid_job(format!("{what} is too large: {value}")))
}

fn retries(value: i64) -> PyResult<u32> {
    u32::try_from(count(value, "max_retries", 0)?)
        .map_err(|_| invalid_job(format!("max_retries is too large: {value}")))
}

fn payload(object: &Bound<'_, PyAny>, what: &str) -> PyResult<Payload> {
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

fn seconds(value: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<f64>> {
    match value.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) if v.is_instance_of::<PyBool>() => Err(invalid_job(format!(
            "{what} must be a number of seconds, got a bool"
        ))),
        Some(v) => v.extract::<f64>().map(Some).map_err(|_| {
            invalid_job(format!(
                "{what} must be a number of seconds, got {}",
                v.repr().map(|r| r.to_string()).unwrap_or_default()
            ))
        }),
    }
}

fn attempts(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u32>> {
    match value.filter(|v| !v.is_none()) {
        None => Ok(None),
        Some(v) if v.is_instance_of::<PyInt>() && !v.is_instance_of::<PyBool>() => {
            let n: i64 = v
                .extract()
                .map_err(|_| invalid_job("attempts is too large"))?;
            if n < 1 {
                return Err(invalid_job(format!("attempts must be at least 1, got {n}")));
            }
            Ok(Some(
                u32::try_from(n).map_err(|_| invalid_job("attempts is too large"))?,
            ))
        }
        Some(v) => Err(invalid_job(format!(
            "attempts must be an int, got {}",
            v.repr()?
        ))),
    }
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
        out.push(text.to_str()?.to_owned());
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
    aware.call_method0("timestamp")?.extract()
}

#[allow(clippy::too_many_arguments)]
fn job_options(
    priority_value: Option<&Bound<'_, PyAny>>,
    delay: Option<&Bound<'_, PyAny>>,
    attempts_value: Option<&Bound<'_, PyAny>>,
    timeout: Option<&Bound<'_, PyAny>>,
    tags_value: Option<&Bound<'_, PyAny>>,
    metadata_value: Option<&Bound<'_, PyAny>>,
    scheduled_at: Option<&Bound<'_, PyAny>>,
) -> PyResult<JobOptions> {
    let options = JobOptions {
        priority: priority(priority_value)?,
        delay: seconds(delay, "delay")?.unwrap_or(0.0),
        scheduled_at: match scheduled_at.filter(|v| !v.is_none()) {
            Some(at) => Some(timestamp(at)?),
            None => None,
        },
        attempts: attempts(attempts_value)?,
        timeout: seconds(timeout, "timeout")?,
        tags: tags(tags_value)?,
        metadata: metadata(metadata_value)?,
        schedule_id: None,
    };
    options.validate()?;
    Ok(options)
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

/// One `push_batch` item: `{"data": ..., "options": {...}}`.
fn batch_item<'py>(item: &Bound<'py, PyAny>, index: usize) -> PyResult<(Payload, JobOptions)> {
    let py = item.py();
    let at = |message: String| invalid_job(format!("push_batch item {index}: {message}"));
    // A dict (the usual case) is read without raising KeyError; other mappings go through the
    // mapping protocol.
    let lookup = |key: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyAny>>> {
        if let Ok(dict) = item.cast::<PyDict>() {
            return dict.get_item(key);
        }
        let mapping = item.cast::<PyMapping>().map_err(|_| {
            at("each item must be a dict like {\"data\": ..., \"options\": {...}}".into())
        })?;
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
    for key in options.keys() {
        let key = key.str()?.to_string();
        if !OPTION_KEYS.contains(&key.as_str()) {
            return Err(at(format!(
                "unknown option {key:?} (known: {})",
                OPTION_KEYS.join(", ")
            )));
        }
    }
    let get = |key: &str| options.get_item(key).ok().flatten();
    let parsed = job_options(
        get("priority").as_ref(),
        get("delay").as_ref(),
        get("attempts").as_ref(),
        get("timeout").as_ref(),
        get("tags").as_ref(),
        get("metadata").as_ref(),
        get("scheduled_at").as_ref(),
    )
    .map_err(|e| at(e.value(py).to_string()))?;
    Ok((data, parsed))
}

impl PyEngine {
    fn engine(&self) -> &Engine {
        // SAFETY: see the field: the pointer comes from `Arc::into_raw` and outlives `self`.
        unsafe { &*self.engine.load(Ordering::Acquire) }
    }

    fn create_engine(&self) -> Result<Arc<Engine>, QueueError> {
        open_engine(&self.store, self.options.clone())
    }

    /// Pushes without releasing the GIL when no lock is contended; otherwise waits detached.
    fn push_specs(
        &self,
        py: Python<'_>,
        queue: &str,
        specs: &[(Payload, JobOptions)],
    ) -> PyResult<Vec<JobId>> {
        if let Pushed::Done(ids) = self.engine().push(queue, specs, false)? {
            return Ok(ids);
        }
        match py.detach(|| self.engine().push(queue, specs, true))? {
            Pushed::Done(ids) => Ok(ids),
            Pushed::WouldBlock => unreachable!("a blocking push always completes"),
        }
    }

    fn duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
        match timeout {
            None => Ok(None),
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
            Some(t) => Err(invalid_job(format!(
                "timeout must be >= 0 seconds, got {t}"
            ))),
        }
    }
}

/// Python runs signal handlers (Ctrl-C) only between bytecodes: long waits are cut into
/// slices, and pending signals are handled between them.
const SIGNAL_SLICE: Duration = Duration::from_millis(100);

/// Calls `attempt` with the time it may wait, until it returns `Some` or `timeout` passes.
fn wait_interruptibly<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut attempt: impl FnMut(Duration) -> Result<Option<T>, QueueError> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(std::time::Instant::now())
                .min(SIGNAL_SLICE),
            None => SIGNAL_SLICE,
        };
        if let Some(found) = py.detach(|| attempt(slice))? {
            return Ok(Some(found));
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}

fn queue_stats_dict<'py>(py: Python<'py>, stats: QueueStats) -> PyResult<Bound<'py, PyDict>> {
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

/// Same queue, cron and data → same id, so every process can declare its schedules at start.
fn schedule_id(queue: &str, cron: &str, data: &[u8]) -> String {
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

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (
        backend = "memory", *, path = None, url = None, prefix = "rnode:queue",
        max_job_bytes = 1_048_576, lease = 30.0, fsync = "everysec", concurrency = 5,
        max_retries = 3, timeout = 300.0, retry_delay = 1.0, backoff = "exponential",
        ttl = 86_400.0, keep_completed = 10_000, keep_failed = 100_000
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: &str,
        path: Option<&str>,
        url: Option<&str>,
        prefix: &str,
        max_job_bytes: i64,
        lease: f64,
        fsync: &str,
        concurrency: i64,
        max_retries: i64,
        timeout: f64,
        retry_delay: f64,
        backoff: &str,
        ttl: f64,
        keep_completed: i64,
        keep_failed: i64,
    ) -> PyResult<Self> {
        let _ = path;
        if !BACKENDS.contains(&backend) {
            return Err(QueueError::Backend(format!(
                "unknown backend {backend:?}: use \"memory\", \"redis\" or \"file\""
            ))
            .into());
        }
        if !FSYNC_POLICIES.contains(&fsync) {
            return Err(invalid_job(format!(
                "fsync must be \"always\", \"everysec\" or \"never\", got {fsync:?}"
            )));
        }
        if !(lease.is_finite() && lease > 0.0) {
            return Err(invalid_job(format!(
                "lease must be > 0 seconds, got {lease}"
            )));
        }
        let defaults = QueueConfig {
            concurrency: count(concurrency, "concurrency", 1)?,
            max_retries: retries(max_retries)?,
            timeout,
            backoff: Backoff::parse(backoff, retry_delay, None, None, None)?,
            retention: Retention {
                ttl,
                keep_completed: count(keep_completed, "keep_completed", 0)?,
                keep_failed: count(keep_failed, "keep_failed", 0)?,
            },
        };
        let options = EngineOptions {
            defaults,
            max_job_bytes: count(max_job_bytes, "max_job_bytes", 1)?,
        };
        let backend = BACKENDS
            .iter()
            .find(|b| **b == backend)
            .copied()
            .unwrap_or("memory");
        let store = match backend {
            "redis" => StoreOptions::Redis(RedisOptions {
                url: url.unwrap_or("redis://127.0.0.1:6379/0").to_string(),
                prefix: prefix.to_string(),
                lease: Duration::from_secs_f64(lease.min(1e9)),
            }),
            "memory" => StoreOptions::Memory,
            other => StoreOptions::Unavailable(other),
        };
        let engine = py.detach(|| open_engine(&store, options.clone()))?;
        Ok(PyEngine {
            engine: AtomicPtr::new(Arc::into_raw(engine).cast_mut()),
            backend,
            store,
            options,
            fork_snapshot: std::sync::Mutex::new(Vec::new()),
        })
    }

    #[getter]
    fn backend(&self) -> &'static str {
        self.backend
    }

    #[getter]
    fn closed(&self) -> bool {
        self.engine().is_closed()
    }

    /// Creates queue `name` with these settings (unset: the manager's defaults), or updates it.
    #[pyo3(signature = (
        name, *, concurrency = None, retry_delay = None, max_retries = None, timeout = None,
        backoff = None, custom_delays = None, backoff_cap = None, jitter = None, ttl = None,
        keep_completed = None, keep_failed = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create_queue(
        &self,
        py: Python<'_>,
        name: &str,
        concurrency: Option<i64>,
        retry_delay: Option<f64>,
        max_retries: Option<i64>,
        timeout: Option<f64>,
        backoff: Option<&str>,
        custom_delays: Option<Vec<f64>>,
        backoff_cap: Option<f64>,
        jitter: Option<f64>,
        ttl: Option<f64>,
        keep_completed: Option<i64>,
        keep_failed: Option<i64>,
    ) -> PyResult<()> {
        let defaults = self.engine().defaults();
        let base = match &defaults.backoff {
            Backoff::Fixed { delay } => *delay,
            Backoff::Exponential { base, .. } => *base,
            Backoff::Custom { delays } => delays.first().copied().unwrap_or(1.0),
        };
        let config = QueueConfig {
            concurrency: match concurrency {
                Some(n) => count(n, "concurrency", 1)?,
                None => defaults.concurrency,
            },
            max_retries: match max_retries {
                Some(n) => retries(n)?,
                None => defaults.max_retries,
            },
            timeout: timeout.unwrap_or(defaults.timeout),
            backoff: Backoff::parse(
                backoff.unwrap_or(defaults.backoff.kind()),
                retry_delay.unwrap_or(base),
                backoff_cap,
                jitter,
                custom_delays,
            )?,
            retention: Retention {
                ttl: ttl.unwrap_or(defaults.retention.ttl),
                keep_completed: match keep_completed {
                    Some(n) => count(n, "keep_completed", 0)?,
                    None => defaults.retention.keep_completed,
                },
                keep_failed: match keep_failed {
                    Some(n) => count(n, "keep_failed", 0)?,
                    None => defaults.retention.keep_failed,
                },
            },
        };
        py.detach(|| self.engine().create_queue(name, config))?;
        Ok(())
    }

    /// Creates queue `name` with the defaults if it does not exist.
    fn ensure_queue(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        Ok(py.detach(|| self.engine().declare_queue(name))?)
    }

    /// The names of every queue.
    fn queue_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.engine().queue_names())?)
    }

    /// The settings of queue `name` (the defaults if it does not exist).
    fn queue_config<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let config = py.detach(|| self.engine().queue_config(name))?;
        let dict = PyDict::new(py);
        dict.set_item("concurrency", config.concurrency)?;
        dict.set_item("max_retries", config.max_retries)?;
        dict.set_item("timeout", config.timeout)?;
        dict.set_item("backoff", config.backoff.kind())?;
        match &config.backoff {
            Backoff::Fixed { delay } => dict.set_item("retry_delay", delay)?,
            Backoff::Exponential { base, cap, jitter } => {
                dict.set_item("retry_delay", base)?;
                dict.set_item("backoff_cap", cap)?;
                dict.set_item("jitter", jitter)?;
            }
            Backoff::Custom { delays } => dict.set_item("custom_delays", delays.clone())?,
        }
        dict.set_item("ttl", config.retention.ttl)?;
        dict.set_item("keep_completed", config.retention.keep_completed)?;
        dict.set_item("keep_failed", config.retention.keep_failed)?;
        Ok(dict)
    }

    /// Adds a job; returns its id. See `QueueManager.push` for the options.
    #[pyo3(signature = (
        queue, data, *, priority = None, delay = None, attempts = None, timeout = None,
        tags = None, metadata = None, scheduled_at = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        py: Python<'_>,
        queue: &str,
        data: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
        delay: Option<&Bound<'_, PyAny>>,
        attempts: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        scheduled_at: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyString>> {
        let options = job_options(
            priority,
            delay,
            attempts,
            timeout,
            tags,
            metadata,
            scheduled_at,
        )?;
        let data = payload(data, "job data")?;
        let ids = self.push_specs(py, queue, &[(data, options)])?;
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = ids[0].0.hyphenated().encode_lower(&mut text);
        Ok(PyString::new(py, id).unbind())
    }

    /// Adds `[{"data": ..., "options": {...}}, ...]` all together or not at all; returns the ids.
    fn push_batch<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        items: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut specs = Vec::with_capacity(items.len().unwrap_or(0));
        if let Ok(list) = items.cast::<PyList>() {
            for (index, item) in list.iter().enumerate() {
                specs.push(batch_item(&item, index)?);
            }
        } else {
            for (index, item) in items.try_iter()?.enumerate() {
                specs.push(batch_item(&item?, index)?);
            }
        }
        if specs.is_empty() {
            crate::job::validate_queue_name(queue)?;
            return Ok(PyList::empty(py));
        }
        let ids = self.push_specs(py, queue, &specs)?;
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        PyList::new(
            py,
            ids.iter()
                .map(|id| PyString::new(py, id.0.hyphenated().encode_lower(&mut text))),
        )
    }

    /// Declares a cron schedule (5 fields, or 6 with seconds; UTC); returns its id. Idempotent.
    #[pyo3(signature = (
        queue, data, cron, *, name = None, priority = None, attempts = None, timeout = None,
        tags = None, metadata = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &self,
        py: Python<'_>,
        queue: &str,
        data: &Bound<'_, PyAny>,
        cron: &str,
        name: Option<&str>,
        priority: Option<&Bound<'_, PyAny>>,
        attempts: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let options = job_options(priority, None, attempts, timeout, tags, metadata, None)?;
        let data = payload(data, "job data")?;
        if let Some(name) = name {
            if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
                return Err(invalid_job(
                    "schedule name must be 1 to 200 characters without control characters",
                ));
            }
        }
        let id = match name {
            Some(name) => name.to_string(),
            None => schedule_id(queue, cron, &data),
        };
        let record = ScheduleRecord {
            id: Arc::from(id.as_str()),
            name: name.map(str::to_string),
            queue: Arc::from(queue),
            cron: cron.to_string(),
            data,
            priority: options.priority,
            attempts: options.attempts,
            timeout: options.timeout,
            tags: options.tags,
            metadata: options.metadata,
        };
        py.detach(|| self.engine().schedule(record))?;
        Ok(id)
    }

    /// Removes a schedule; false if there is none with that id.
    fn unschedule(&self, py: Python<'_>, schedule_id: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.engine().unschedule(schedule_id))?)
    }

    /// Every schedule, as dicts with id, name, queue, cron, data, priority and next_run.
    fn list_schedules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let schedules = py.detach(|| self.engine().schedules())?;
        let list = PyList::empty(py);
        for info in schedules {
            let dict = PyDict::new(py);
            let record = &info.record;
            dict.set_item("id", &*record.id)?;
            dict.set_item("name", record.name.as_deref())?;
            dict.set_item("queue", &*record.queue)?;
            dict.set_item("cron", &record.cron)?;
            dict.set_item("data", crate::py::convert::from_json(py, &record.data)?)?;
            dict.set_item("priority", record.priority.as_str())?;
            dict.set_item("next_run", datetime(py, info.next_run)?)?;
            list.append(dict)?;
        }
        Ok(list)
    }

    /// Manager-wide counters and the size of every queue.
    fn get_stats(&self, py: Python<'_>) -> PyResult<PyStats> {
        Ok(PyStats::new(py.detach(|| self.engine().stats())?))
    }

    /// A snapshot of the job, or None if it is unknown (or no longer retained).
    fn get_job(&self, py: Python<'_>, job_id: &str) -> PyResult<Option<PyJob>> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(None);
        };
        Ok(py.detach(|| self.engine().get_job(id))?.map(PyJob::new))
    }

    /// Jobs of `queue`, optionally only those with `status`, at most `limit`.
    #[pyo3(signature = (queue, status = None, limit = 100))]
    fn get_jobs(
        &self,
        py: Python<'_>,
        queue: &str,
        status: Option<&str>,
        limit: i64,
    ) -> PyResult<Vec<PyJob>> {
        let limit = count(limit, "limit", 0)?;
        let state = status.map(str::parse::<JobState>).transpose()?;
        let jobs = py.detach(|| self.engine().list_jobs(queue, state, limit))?;
        Ok(jobs.into_iter().map(PyJob::new).collect())
    }

    /// Puts a failed job back to waiting with a fresh count of attempts; false if not failed.
    fn retry_job(&self, py: Python<'_>, job_id: &str) -> PyResult<bool> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(false);
        };
        Ok(py.detach(|| self.engine().retry_job(id))?)
    }

    /// Stops starting jobs of `name`; running ones finish, waiting ones stay waiting.
    fn pause_queue(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        Ok(py.detach(|| self.engine().pause_queue(name))?)
    }

    /// Starts running the jobs of `name` again.
    fn resume_queue(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        Ok(py.detach(|| self.engine().resume_queue(name))?)
    }

    /// Removes the waiting and delayed jobs of `name`; returns how many.
    fn clear_queue(&self, py: Python<'_>, name: &str) -> PyResult<usize> {
        Ok(py.detach(|| self.engine().clear_queue(name))?)
    }

    /// Stops the queue's workers and removes the queue with all its jobs.
    fn delete_queue(&self, py: Python<'_>, name: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.engine().delete_queue(name))?)
    }

    /// size, processing, completed, failed, waiting, delayed and paused for queue `name`.
    fn queue_stats<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| self.engine().queue_stats(name))?;
        queue_stats_dict(py, stats)
    }

    /// Runs `handler` for the jobs of `queue` with `concurrency` slots (default: the queue's).
    #[pyo3(signature = (queue, handler, *, concurrency = None, async_submit = None))]
    fn process(
        &self,
        py: Python<'_>,
        queue: &str,
        handler: Py<PyAny>,
        concurrency: Option<i64>,
        async_submit: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        if !handler.bind(py).is_callable() {
            return Err(QueueError::Other("the handler must be callable".into()).into());
        }
        let concurrency = concurrency
            .map(|n| count(n, "concurrency", 1))
            .transpose()?;
        let executor = Arc::new(PyExecutor::new(handler, async_submit));
        Ok(py.detach(|| self.engine().process(queue, executor, concurrency))?)
    }

    /// Blocks until the job is completed or finally failed; None on timeout or an unknown id.
    #[pyo3(signature = (job_id, timeout = None))]
    fn wait_for_job(
        &self,
        py: Python<'_>,
        job_id: &str,
        timeout: Option<f64>,
    ) -> PyResult<Option<PyJob>> {
        let timeout = Self::duration(timeout)?;
        let Some(id) = JobId::parse(job_id) else {
            return Ok(None);
        };
        let engine = self.engine();
        // Outer `Some`: done waiting; inner `None`: the job is unknown (or was removed).
        let found = wait_interruptibly(py, timeout, |slice| {
            if let Some(job) = engine.wait_for_job(id, Some(slice))? {
                return Ok(Some(Some(job)));
            }
            Ok(engine.get_job(id)?.is_none().then_some(None))
        })?;
        Ok(found.flatten().map(PyJob::new))
    }

    /// Blocks until `queue` (or every queue) has no waiting, delayed or active job.
    #[pyo3(signature = (queue = None, timeout = None))]
    fn join(&self, py: Python<'_>, queue: Option<&str>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = Self::duration(timeout)?;
        let engine = self.engine();
        let idle = wait_interruptibly(py, timeout, |slice| {
            Ok(engine.join(queue, Some(slice))?.then_some(()))
        })?;
        Ok(idle.is_some())
    }

    /// Stops taking jobs and waits up to `timeout` s for running ones; true if all finished.
    #[pyo3(signature = (timeout = 30.0))]
    fn close(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let timeout = Self::duration(Some(timeout))?.unwrap_or_default();
        Ok(py.detach(|| self.engine().close(timeout)))
    }

    /// For `os.register_at_fork(before=...)`: notes the queue settings for a child.
    fn _before_fork(&self) {
        if let Ok(configs) = self.engine().queue_configs() {
            *self.fork_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = configs;
        }
    }

    /// For `os.register_at_fork(after_in_child=...)`. Threads do not survive `fork`, and
    /// the parent's locks may be held by threads the child does not have: the child gets a
    /// fresh engine with the same settings and queue settings, and no jobs (they stay the
    /// parent's, so none runs twice), schedules or workers.
    fn _after_fork(&self, py: Python<'_>, in_child: bool) -> PyResult<()> {
        let configs =
            std::mem::take(&mut *self.fork_snapshot.lock().unwrap_or_else(|e| e.into_inner()));
        if !in_child {
            return Ok(());
        }
        // The child would otherwise hand out the parent's next ids.
        crate::job::JobId::reseed();
        if self.engine().is_closed() {
            return Ok(());
        }
        // Opening a backend may wait for the network: without the GIL.
        let opened = py.detach(|| {
            let fresh = self.create_engine()?;
            for (name, config) in configs {
                fresh.create_queue(&name, config)?;
            }
            Ok::<_, QueueError>(fresh)
        });
        let (fresh, failure) = match opened {
            Ok(fresh) => (fresh, None),
            Err(error) => {
                // The parent's engine cannot work here (its threads do not exist in the
                // child): a closed one makes every call fail at once instead of hanging.
                let closed = Engine::new(Arc::new(MemoryBackend::new()), self.options.clone())?;
                closed.close(Duration::ZERO);
                (closed, Some(error))
            }
        };
        // The old engine is leaked on purpose (dropping it would take its locks).
        self.engine
            .store(Arc::into_raw(fresh).cast_mut(), Ordering::Release);
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(backend='{}', closed={})",
            self.backend,
            self.engine().is_closed()
        )
    }
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Arc::into_raw` and nothing else will use it.
        let engine = unsafe { Arc::from_raw(*self.engine.get_mut()) };
        // Unclosed and unreachable: stop the workers without waiting for them. Stopping may
        // still talk to a backend (Redis), so Python is let go of meanwhile where it can be.
        let mut engine = Some(engine);
        let mut shut_down = || {
            if let Some(engine) = engine.take() {
                if !engine.is_closed() {
                    engine.close(Duration::ZERO);
                }
            }
        };
        if Python::try_attach(|py| py.detach(&mut shut_down)).is_none() {
            shut_down();
        }
    }
}

/// Where an engine keeps its jobs; kept to open a fresh engine in a forked child.
enum StoreOptions {
    Memory,
    Redis(RedisOptions),
    Unavailable(&'static str),
}

fn open_engine(store: &StoreOptions, options: EngineOptions) -> Result<Arc<Engine>, QueueError> {
    let backend: Arc<dyn Backend> = match store {
        StoreOptions::Memory => Arc::new(MemoryBackend::new()),
        StoreOptions::Redis(redis) => Arc::new(RedisBackend::connect(redis)?),
        StoreOptions::Unavailable(other) => {
            return Err(QueueError::Backend(format!(
                "the {other} backend is not available in this build yet; use backend=\"memory\" or \"redis\""
            )))
        }
    };
    Engine::new(backend, options)
}
