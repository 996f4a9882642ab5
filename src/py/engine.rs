//! `Engine`: the engine's Python face. Arguments are converted here (`args`, `options`) with
//! the GIL; everything that may wait runs with the GIL released.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::backend::memory::MemoryBackend;
use crate::backend::redis::{RedisBackend, RedisOptions};
use crate::backend::{Backend, ScheduleRecord};
use crate::backoff::Backoff;
use crate::engine::{schedule_id, Engine, EngineOptions, Pushed, QueueConfig, QueueStats};
use crate::error::QueueError;
use crate::job::{JobId, JobState, Payload};
use crate::py::args::{bounded, seconds, Kind, QueueName};
use crate::py::dispatch::PyExecutor;
use crate::py::errors::{config_error, invalid_job};
use crate::py::gil;
use crate::py::job::{datetime, PyJob, PyStats};
use crate::py::options::{batch_item, limit, payload, PushArgs, QueueArgs};

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
    fork_snapshot: std::sync::Mutex<Vec<(String, QueueConfig, bool)>>,
}

/// Which backend the arguments select: `backend` when given, else the one `url` (redis) or
/// `path` (file) implies, else memory. Arguments that belong to another backend are an error.
fn choose_backend(
    backend: Option<&str>,
    url: Option<&str>,
    path: Option<&str>,
) -> Result<&'static str, QueueError> {
    let implied = match (url.is_some(), path.is_some()) {
        (true, true) => {
            return Err(QueueError::config(
                "url (redis) and path (file) select different backends: give one",
            ))
        }
        (true, false) => Some("redis"),
        (false, true) => Some("file"),
        (false, false) => None,
    };
    let chosen = match backend {
        None => implied.unwrap_or("memory"),
        Some("memory") => "memory",
        Some("redis") => "redis",
        Some("file") => "file",
        Some(other) => {
            return Err(QueueError::config(format!(
                "unknown backend {other:?}: use \"memory\", \"redis\" or \"file\""
            )))
        }
    };
    if let Some(implied) = implied.filter(|implied| *implied != chosen) {
        let given = if implied == "redis" { "url" } else { "path" };
        return Err(QueueError::config(format!(
            "{given} is a setting of the {implied} backend, but backend={chosen:?} was given"
        )));
    }
    Ok(chosen)
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
        specs: &[(Payload, crate::job::JobOptions)],
    ) -> PyResult<Vec<JobId>> {
        if let Pushed::Done(ids) = self.engine().push(queue, specs, false)? {
            return Ok(ids);
        }
        match gil::detach(py, || self.engine().push(queue, specs, true))? {
            Pushed::Done(ids) => Ok(ids),
            Pushed::WouldBlock => unreachable!("a blocking push always completes"),
        }
    }

    /// A call's timeout: `None` or infinity waits for ever; otherwise seconds (or a timedelta)
    /// from 0.
    fn timeout(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
        match seconds(value, "timeout", Kind::Setting)? {
            None => Ok(None),
            Some(t) if t == f64::INFINITY => Ok(None),
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(Duration::from_secs_f64(t.min(1e9)))),
            Some(t) => Err(config_error(format!(
                "timeout must be a number of seconds >= 0 (or None), got {t}"
            ))),
        }
    }

    /// `TypeError` for keyword arguments the public method does not take, naming it.
    fn refuse_unknown(method: &str, extra: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        match extra.and_then(|extra| extra.keys().iter().next()) {
            Some(key) => Err(PyTypeError::new_err(format!(
                "{method}() got an unexpected keyword argument {}",
                key.repr()?
            ))),
            None => Ok(()),
        }
    }

    fn id_text(py: Python<'_>, id: JobId) -> Bound<'_, PyString> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        PyString::new(py, id.0.hyphenated().encode_lower(&mut text))
    }

    #[allow(clippy::too_many_arguments)]
    fn push_one(
        &self,
        py: Python<'_>,
        queue: &str,
        data: &Bound<'_, PyAny>,
        push: PushArgs<'_, '_>,
    ) -> PyResult<Py<PyString>> {
        let options = push.parse()?;
        let data = payload(data, "job data")?;
        let ids = self.push_specs(py, queue, &[(data, options)])?;
        Ok(Self::id_text(py, ids[0]).unbind())
    }

    fn push_many<'py>(
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
        PyList::new(py, ids.iter().map(|id| Self::id_text(py, *id)))
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
        if let Some(found) = gil::detach(py, || attempt(slice))? {
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

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (
        backend = None, *, path = None, url = None, prefix = "rnode:queue",
        max_job_bytes = None, lease = None, fsync = "everysec", concurrency = None,
        max_retries = None, timeout = None, retry_delay = None, backoff = None,
        ttl = None, keep_completed = None, keep_failed = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: Option<&str>,
        path: Option<&str>,
        url: Option<&str>,
        prefix: &str,
        max_job_bytes: Option<&Bound<'_, PyAny>>,
        lease: Option<&Bound<'_, PyAny>>,
        fsync: &str,
        concurrency: Option<&Bound<'_, PyAny>>,
        max_retries: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        retry_delay: Option<&Bound<'_, PyAny>>,
        backoff: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
        keep_completed: Option<&Bound<'_, PyAny>>,
        keep_failed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let backend = choose_backend(backend, url, path)?;
        if !FSYNC_POLICIES.contains(&fsync) {
            return Err(config_error(format!(
                "fsync must be \"always\", \"everysec\" or \"never\", got {fsync:?}"
            )));
        }
        let lease = seconds(lease, "lease", Kind::Setting)?.unwrap_or(30.0);
        if !(lease.is_finite() && lease > 0.0) {
            return Err(config_error(format!(
                "lease must be > 0 seconds, got {lease}"
            )));
        }
        let defaults = QueueArgs {
            concurrency,
            max_retries,
            timeout,
            retry_delay,
            backoff,
            ttl,
            keep_completed,
            keep_failed,
            ..QueueArgs::default()
        }
        .parse(&QueueConfig::default())?;
        let max_job_bytes = match max_job_bytes.filter(|v| !v.is_none()) {
            Some(value) => bounded(value, "max_job_bytes", 1, 1 << 40, Kind::Setting)? as usize,
            None => EngineOptions::default().max_job_bytes,
        };
        let options = EngineOptions {
            defaults,
            max_job_bytes,
        };
        options.defaults.validate()?;
        let store = match backend {
            "redis" => StoreOptions::Redis(RedisOptions {
                // No silent default: a forgotten url must not reach whatever Redis happens to
                // listen on this host.
                url: url
                    .ok_or_else(|| {
                        config_error(
                            "backend=\"redis\" needs url=\"redis://host:port/db\" (or \
                             QueueManager.from_env() with REDIS_URL set)",
                        )
                    })?
                    .to_string(),
                prefix: prefix.to_string(),
                lease: Duration::from_secs_f64(lease.min(1e9)),
            }),
            "memory" => StoreOptions::Memory,
            other => StoreOptions::Unavailable(other),
        };
        let engine = gil::detach(py, || open_engine(&store, options.clone()))?;
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
        name: QueueName,
        concurrency: Option<&Bound<'_, PyAny>>,
        retry_delay: Option<&Bound<'_, PyAny>>,
        max_retries: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        backoff: Option<&Bound<'_, PyAny>>,
        custom_delays: Option<&Bound<'_, PyAny>>,
        backoff_cap: Option<&Bound<'_, PyAny>>,
        jitter: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
        keep_completed: Option<&Bound<'_, PyAny>>,
        keep_failed: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let config = QueueArgs {
            concurrency,
            max_retries,
            timeout,
            retry_delay,
            backoff,
            custom_delays,
            backoff_cap,
            jitter,
            ttl,
            keep_completed,
            keep_failed,
        }
        .parse(self.engine().defaults())?;
        gil::detach(py, || self.engine().create_queue(&name, config))?;
        Ok(())
    }

    /// Creates queue `name` with the defaults (or the stored settings) if it does not exist.
    /// With `later`, nothing waits for the store: the queue is declared in the background (for
    /// callers on an event loop).
    #[pyo3(signature = (name, *, later = false))]
    fn ensure_queue(&self, py: Python<'_>, name: QueueName, later: bool) -> PyResult<()> {
        if later {
            return Ok(self.engine().declare_queue_later(&name)?);
        }
        Ok(gil::detach(py, || self.engine().declare_queue(&name))?)
    }

    /// The names of every queue.
    fn queue_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(gil::detach(py, || self.engine().queue_names())?)
    }

    /// The settings of queue `name` (the defaults if it does not exist).
    fn queue_config<'py>(&self, py: Python<'py>, name: QueueName) -> PyResult<Bound<'py, PyDict>> {
        let config = gil::detach(py, || self.engine().queue_config(&name))?;
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

    /// `QueueManager.push(queue, data, **options)`: adds a job; returns its id.
    #[pyo3(signature = (
        queue, data, *, priority = None, delay = None, attempts = None, timeout = None,
        tags = None, metadata = None, scheduled_at = None, **extra
    ))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        py: Python<'_>,
        queue: QueueName,
        data: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
        delay: Option<&Bound<'_, PyAny>>,
        attempts: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        scheduled_at: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyString>> {
        Self::refuse_unknown("QueueManager.push", extra)?;
        let push = PushArgs {
            priority,
            delay,
            attempts,
            timeout,
            tags,
            metadata,
            scheduled_at,
        };
        self.push_one(py, &queue, data, push)
    }

    /// `Queue.push(data, **options)` (the handle's queue first): adds a job; returns its id.
    #[pyo3(signature = (
        queue, data, *, priority = None, delay = None, attempts = None, timeout = None,
        tags = None, metadata = None, scheduled_at = None, **extra
    ))]
    #[allow(clippy::too_many_arguments)]
    fn queue_push(
        &self,
        py: Python<'_>,
        queue: QueueName,
        data: &Bound<'_, PyAny>,
        priority: Option<&Bound<'_, PyAny>>,
        delay: Option<&Bound<'_, PyAny>>,
        attempts: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
        scheduled_at: Option<&Bound<'_, PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyString>> {
        Self::refuse_unknown("Queue.push", extra)?;
        let push = PushArgs {
            priority,
            delay,
            attempts,
            timeout,
            tags,
            metadata,
            scheduled_at,
        };
        self.push_one(py, &queue, data, push)
    }

    /// Adds `[{"data": ..., "options": {...}}, ...]` all together or not at all; returns the ids.
    fn push_batch<'py>(
        &self,
        py: Python<'py>,
        queue: QueueName,
        items: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.push_many(py, &queue, items)
    }

    /// Declares a cron schedule (5 fields, 6 with seconds, or a macro; UTC); returns its id.
    /// Idempotent.
    #[pyo3(signature = (
        queue, data, cron, *, name = None, priority = None, attempts = None, timeout = None,
        tags = None, metadata = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn schedule(
        &self,
        py: Python<'_>,
        queue: QueueName,
        data: &Bound<'_, PyAny>,
        cron: &Bound<'_, PyString>,
        name: Option<&str>,
        priority: Option<&Bound<'_, PyAny>>,
        attempts: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        tags: Option<&Bound<'_, PyAny>>,
        metadata: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let cron = cron.to_str().map_err(|_| {
            QueueError::InvalidCron("the cron expression contains a lone surrogate".into())
        })?;
        let options = PushArgs {
            priority,
            attempts,
            timeout,
            tags,
            metadata,
            ..PushArgs::default()
        }
        .parse()?;
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
            None => schedule_id(&queue, cron, &data),
        };
        let record = ScheduleRecord {
            id: Arc::from(id.as_str()),
            name: name.map(str::to_string),
            queue: Arc::from(&*queue),
            cron: cron.to_string(),
            data,
            priority: options.priority,
            attempts: options.attempts,
            timeout: options.timeout,
            tags: options.tags,
            metadata: options.metadata,
        };
        gil::detach(py, || self.engine().schedule(record))?;
        Ok(id)
    }

    /// Removes a schedule; false if there is none with that id.
    fn unschedule(&self, py: Python<'_>, schedule_id: &str) -> PyResult<bool> {
        Ok(gil::detach(py, || self.engine().unschedule(schedule_id))?)
    }

    /// Every schedule, as dicts with id, name, queue, cron, data, priority and next_run.
    fn list_schedules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let schedules = gil::detach(py, || self.engine().schedules())?;
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
        Ok(PyStats::new(gil::detach(py, || self.engine().stats())?))
    }

    /// A snapshot of the job, or None if it is unknown (or no longer retained).
    fn get_job(&self, py: Python<'_>, job_id: &str) -> PyResult<Option<PyJob>> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(None);
        };
        Ok(gil::detach(py, || self.engine().get_job(id))?.map(PyJob::new))
    }

    /// Jobs of `queue`, optionally only those with `status`, at most `limit`.
    #[pyo3(signature = (queue, status = None, limit = None))]
    fn get_jobs(
        &self,
        py: Python<'_>,
        queue: QueueName,
        status: Option<&str>,
        limit: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyJob>> {
        let limit = match limit {
            Some(value) => self::limit(value)?,
            None => 100,
        };
        let state = status.map(str::parse::<JobState>).transpose()?;
        let jobs = gil::detach(py, || self.engine().list_jobs(&queue, state, limit))?;
        Ok(jobs.into_iter().map(PyJob::new).collect())
    }

    /// Puts a failed job back to waiting with a fresh count of attempts; false if not failed.
    fn retry_job(&self, py: Python<'_>, job_id: &str) -> PyResult<bool> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(false);
        };
        Ok(gil::detach(py, || self.engine().retry_job(id))?)
    }

    /// Stops starting jobs of `name`; running ones finish, waiting ones stay waiting.
    fn pause_queue(&self, py: Python<'_>, name: QueueName) -> PyResult<()> {
        Ok(gil::detach(py, || self.engine().pause_queue(&name))?)
    }

    /// Starts running the jobs of `name` again.
    fn resume_queue(&self, py: Python<'_>, name: QueueName) -> PyResult<()> {
        Ok(gil::detach(py, || self.engine().resume_queue(&name))?)
    }

    /// Removes the waiting and delayed jobs of `name`; returns how many.
    fn clear_queue(&self, py: Python<'_>, name: QueueName) -> PyResult<usize> {
        Ok(gil::detach(py, || self.engine().clear_queue(&name))?)
    }

    /// Stops the queue's workers and removes the queue with all its jobs.
    fn delete_queue(&self, py: Python<'_>, name: QueueName) -> PyResult<bool> {
        Ok(gil::detach(py, || self.engine().delete_queue(&name))?)
    }

    /// size, processing, completed, failed, waiting, delayed and paused for queue `name`.
    fn queue_stats<'py>(&self, py: Python<'py>, name: QueueName) -> PyResult<Bound<'py, PyDict>> {
        let stats = gil::detach(py, || self.engine().queue_stats(&name))?;
        queue_stats_dict(py, stats)
    }

    /// Runs `handler` for the jobs of `queue` with `concurrency` slots (default: the queue's,
    /// following its settings). With `later`, nothing waits for the store.
    #[pyo3(signature = (queue, handler, *, concurrency = None, async_submit = None, later = false))]
    fn process(
        &self,
        py: Python<'_>,
        queue: QueueName,
        handler: Py<PyAny>,
        concurrency: Option<&Bound<'_, PyAny>>,
        async_submit: Option<Py<PyAny>>,
        later: bool,
    ) -> PyResult<()> {
        if !handler.bind(py).is_callable() {
            return Err(QueueError::Other("the handler must be callable".into()).into());
        }
        let concurrency = match concurrency.filter(|v| !v.is_none()) {
            Some(value) => Some(bounded(
                value,
                "concurrency",
                1,
                crate::engine::MAX_CONCURRENCY as u64,
                Kind::Setting,
            )? as usize),
            None => None,
        };
        let executor = Arc::new(PyExecutor::new(handler, async_submit));
        Ok(gil::detach(py, || {
            self.engine().process(&queue, executor, concurrency, later)
        })?)
    }

    /// Blocks until the job is completed or finally failed and returns it; None on timeout.
    /// An id no job has raises `JobNotFoundError`.
    #[pyo3(signature = (job_id, timeout = None))]
    fn wait_for_job(
        &self,
        py: Python<'_>,
        job_id: &str,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PyJob>> {
        let timeout = Self::timeout(timeout)?;
        let Some(id) = JobId::parse(job_id) else {
            return Err(QueueError::JobNotFound(format!(
                "no job with id {job_id:?} (not a job id)"
            ))
            .into());
        };
        let engine = self.engine();
        let found = wait_interruptibly(py, timeout, |slice| engine.wait_for_job(id, Some(slice)))?;
        Ok(found.map(PyJob::new))
    }

    /// Blocks until `queue` (or every queue) has no waiting, delayed or active job.
    #[pyo3(signature = (queue = None, timeout = None))]
    fn join(
        &self,
        py: Python<'_>,
        queue: Option<QueueName>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let timeout = Self::timeout(timeout)?;
        let engine = self.engine();
        let queue = queue.as_deref();
        let idle = wait_interruptibly(py, timeout, |slice| {
            Ok(engine.join(queue, Some(slice))?.then_some(()))
        })?;
        Ok(idle.is_some())
    }

    /// Checks a close timeout without closing (the caller changes nothing unless it is valid).
    fn check_close_timeout(&self, timeout: &Bound<'_, PyAny>) -> PyResult<f64> {
        match Self::timeout(Some(timeout))? {
            Some(t) => Ok(t.as_secs_f64()),
            None => Ok(f64::INFINITY),
        }
    }

    /// Stops taking jobs and waits up to `timeout` s for running ones; true if all finished.
    #[pyo3(signature = (timeout = None))]
    fn close(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        Ok(self.close_report(py, timeout)?.0)
    }

    /// `close`, and the runs still going at the timeout, handed back to the store to run
    /// again elsewhere: `(finished, [(queue, job id), ...])`.
    #[pyo3(signature = (timeout = None))]
    fn close_report(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(bool, Vec<(String, String)>)> {
        let timeout = match timeout.filter(|v| !v.is_none()) {
            Some(value) => Self::timeout(Some(value))?.unwrap_or(Duration::from_secs(1 << 30)),
            None => Duration::from_secs(30),
        };
        let report = gil::detach(py, || self.engine().close(timeout));
        let handed_back = report
            .handed_back
            .iter()
            .map(|(queue, id)| (queue.to_string(), id.to_string()))
            .collect();
        Ok((report.finished, handed_back))
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
    /// parent's, so none runs twice), schedules or workers. (Job ids are drawn afresh in every
    /// forked child by `job::JobId` itself.)
    fn _after_fork(&self, py: Python<'_>, in_child: bool) -> PyResult<()> {
        let configs =
            std::mem::take(&mut *self.fork_snapshot.lock().unwrap_or_else(|e| e.into_inner()));
        if !in_child || self.engine().is_closed() {
            return Ok(());
        }
        // Opening a backend may wait for the network: without the GIL.
        let opened = gil::detach(py, || {
            let fresh = self.create_engine()?;
            for (name, config, declared_here) in configs {
                // What the parent declared, the child declares; a queue the parent only used
                // keeps the settings stored with it (another process's, maybe).
                if declared_here {
                    fresh.create_queue(&name, config)?;
                } else {
                    fresh.declare_queue(&name)?;
                }
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
        if Python::try_attach(|py| gil::detach(py, &mut shut_down)).is_none() {
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
                "the {other} backend is planned but not available in this version; use \
                 backend=\"memory\" or \"redis\""
            )))
        }
    };
    Engine::new(backend, options)
}
