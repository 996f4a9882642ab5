//! `Engine`: the engine's Python face. Arguments are converted here (`args`, `options`) with
//! the GIL; everything that may wait runs with the GIL released.

use std::sync::atomic::AtomicPtr;
use std::sync::Arc;
use std::time::Duration;

mod fork;
mod push;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::backend::store::{StoreConfig, StoreSettings};
use crate::engine::{new_schedule, Engine, EngineOptions, QueueConfig, DEFAULT_CLOSE_TIMEOUT};
use crate::error::QueueError;
use crate::job::{JobId, JobState};
use crate::py::args::{bounded, seconds, Kind, QueueName};
use crate::py::dispatch::PyExecutor;
use crate::py::errors::config_error;
use crate::py::gil;
use crate::py::job::{PyJob, PyStats};
use crate::py::options::{count_arg, payload, PushArgs, QueueArgs};
use crate::py::views::{
    dict_list, queue_config_dict, queue_report_dict, queue_stats_dict, schedule_dict, worker_dict,
};
use crate::py::waits::{wait_interruptibly, wait_timeout};

#[pyclass(frozen, name = "Engine", module = "rnode_queue._core")]
pub struct PyEngine {
    /// From `Arc::into_raw`. Replaced only in a forked child, where the parent's engine is
    /// leaked: its locks may be held by threads that do not exist there. Never freed before
    /// `self` is dropped, so a `&Engine` taken from it stays valid while `self` lives.
    engine: AtomicPtr<Engine>,
    store: StoreConfig,
    options: EngineOptions,
    /// Queue settings taken just before `fork`, for the child's fresh engine.
    fork_snapshot: std::sync::Mutex<Vec<(String, QueueConfig, bool)>>,
}

#[pymethods]
impl PyEngine {
    #[new]
    #[pyo3(signature = (
        backend = None, *, path = None, url = None, prefix = None,
        max_job_bytes = None, lease = None, fsync = None, spill_path = None, concurrency = None,
        max_retries = None, timeout = None, retry_delay = None, backoff = None,
        ttl = None, keep_completed = None, keep_failed = None, metrics = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        backend: Option<&str>,
        path: Option<std::path::PathBuf>,
        url: Option<&str>,
        prefix: Option<&str>,
        max_job_bytes: Option<&Bound<'_, PyAny>>,
        lease: Option<&Bound<'_, PyAny>>,
        fsync: Option<&str>,
        spill_path: Option<std::path::PathBuf>,
        concurrency: Option<&Bound<'_, PyAny>>,
        max_retries: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        retry_delay: Option<&Bound<'_, PyAny>>,
        backoff: Option<&Bound<'_, PyAny>>,
        ttl: Option<&Bound<'_, PyAny>>,
        keep_completed: Option<&Bound<'_, PyAny>>,
        keep_failed: Option<&Bound<'_, PyAny>>,
        metrics: Option<bool>,
    ) -> PyResult<Self> {
        let (path, spill_path) = (
            path_text("path", path.as_deref())?,
            path_text("spill_path", spill_path.as_deref())?,
        );
        let store = StoreConfig::choose(&StoreSettings {
            backend,
            url,
            path,
            prefix,
            lease: seconds(lease, "lease", Kind::Setting)?,
            fsync,
            spill_path,
        })?;
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
        .convert()?
        .over(&QueueConfig::default())?;
        let max_job_bytes = match max_job_bytes.filter(|v| !v.is_none()) {
            Some(value) => bounded(value, "max_job_bytes", 1, 1 << 40, Kind::Setting)? as usize,
            None => EngineOptions::default().max_job_bytes,
        };
        let options = EngineOptions {
            defaults,
            max_job_bytes,
            metrics: metrics.unwrap_or(true),
        };
        options.defaults.validate()?;
        let engine = gil::detach(py, || Engine::new(store.open()?, options.clone()))?;
        Ok(PyEngine {
            engine: AtomicPtr::new(Arc::into_raw(engine).cast_mut()),
            store,
            options,
            fork_snapshot: std::sync::Mutex::new(Vec::new()),
        })
    }

    #[getter]
    fn backend(&self) -> &'static str {
        self.store.name()
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
        .convert()?
        .over(self.engine().defaults())?;
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
        queue_config_dict(py, &config)
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

    /// `push_batch` stored in place (never waiting) and made durable by `commit(ticket)`:
    /// `(ids, ticket)`, or `None` where the store cannot do that without waiting.
    fn push_uncommitted<'py>(
        &self,
        py: Python<'py>,
        queue: QueueName,
        items: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyList>, u64)>> {
        self.push_many_uncommitted(py, &queue, items)
    }

    /// `push(queue, data, **options)` stored in place, durable after `commit(ticket)`: `(id,
    /// ticket)`, or `None` where that needs a wait. `options`: `push`'s keyword arguments,
    /// their keys checked by the caller (an async push: no batch item to build and read).
    fn push_one_uncommitted<'py>(
        &self,
        py: Python<'py>,
        queue: QueueName,
        data: &Bound<'_, PyAny>,
        options: &Bound<'_, PyDict>,
    ) -> PyResult<Option<(Bound<'py, PyString>, u64)>> {
        self.push_one_in_place(py, &queue, data, options)
    }

    /// Returns once the pushes stored with tickets up to `ticket` are durable (without the GIL).
    fn commit(&self, py: Python<'_>, ticket: u64) -> PyResult<()> {
        Ok(gil::detach(py, || self.engine().commit(ticket))?)
    }

    /// `commit` in the background: once done, one byte is written to `fd` (which this call
    /// owns and closes): 0 if the pushes are durable, 1 if not (`commit` then says why). The
    /// thread never takes the GIL: an event loop watching the pipe resolves its waiters.
    fn commit_in_background(&self, ticket: u64, fd: i32) -> PyResult<()> {
        self.commit_to_pipe(ticket, fd)
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
        let record = new_schedule(&queue, cron, data, name, options)?;
        Ok(gil::detach(py, || self.engine().schedule(record))?.to_string())
    }

    /// Removes a schedule; false if there is none with that id.
    fn unschedule(&self, py: Python<'_>, schedule_id: &str) -> PyResult<bool> {
        Ok(gil::detach(py, || self.engine().unschedule(schedule_id))?)
    }

    /// Every schedule, as dicts with id, name, queue, cron, data, priority and next_run.
    fn list_schedules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let schedules = gil::detach(py, || self.engine().schedules())?;
        PyList::new(
            py,
            schedules
                .iter()
                .map(|info| schedule_dict(py, info))
                .collect::<PyResult<Vec<_>>>()?,
        )
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

    /// Jobs of `queue` (only those with `status`, if given): at most `limit`, after `offset`.
    #[pyo3(signature = (queue, status = None, limit = None, offset = None))]
    fn get_jobs(
        &self,
        py: Python<'_>,
        queue: QueueName,
        status: Option<&str>,
        limit: Option<&Bound<'_, PyAny>>,
        offset: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyJob>> {
        let limit = count_arg(limit, "limit", 100)?;
        let offset = count_arg(offset, "offset", 0)?;
        let state = status.map(str::parse::<JobState>).transpose()?;
        let jobs = gil::detach(py, || self.engine().list_jobs(&queue, state, offset, limit))?;
        Ok(jobs.into_iter().map(PyJob::new).collect())
    }

    /// Removes a job that is not running; false if there is none with this id.
    fn delete_job(&self, py: Python<'_>, job_id: &str) -> PyResult<bool> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(false);
        };
        Ok(gil::detach(py, || self.engine().delete_job(id))?)
    }

    /// Puts a failed job back to waiting with a fresh count of attempts; false if not failed.
    fn retry_job(&self, py: Python<'_>, job_id: &str) -> PyResult<bool> {
        let Some(id) = JobId::parse(job_id) else {
            return Ok(false);
        };
        Ok(gil::detach(py, || self.engine().retry_job(id))?)
    }

    /// The live worker processes sharing the backend.
    fn get_workers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let workers = gil::detach(py, || self.engine().workers())?;
        dict_list(py, &workers, worker_dict)
    }

    /// Per queue: this process's counters and run-time histogram, and the store's counts.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let reports = gil::detach(py, || self.engine().metrics_report())?;
        dict_list(py, &reports, queue_report_dict)
    }

    /// One INFO record per completed run, through the `rnode_queue` logger (off by default).
    fn set_job_logging(&self, enabled: bool) {
        self.engine().set_job_logging(enabled);
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
        let timeout = wait_timeout(timeout)?;
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
        let timeout = wait_timeout(timeout)?;
        let engine = self.engine();
        let queue = queue.as_deref();
        let idle = wait_interruptibly(py, timeout, |slice| {
            Ok(engine.join(queue, Some(slice))?.then_some(()))
        })?;
        Ok(idle.is_some())
    }

    /// Checks a close timeout without closing (the caller changes nothing unless it is valid).
    fn check_close_timeout(&self, timeout: &Bound<'_, PyAny>) -> PyResult<f64> {
        match wait_timeout(Some(timeout))? {
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
            Some(value) => wait_timeout(Some(value))?.unwrap_or(Duration::from_secs(1 << 30)),
            None => DEFAULT_CLOSE_TIMEOUT,
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
        self.snapshot_for_fork();
    }

    /// For `os.register_at_fork(after_in_child=...)`: see `reopen_after_fork`.
    fn _after_fork(&self, py: Python<'_>, in_child: bool) -> PyResult<()> {
        self.reopen_after_fork(py, in_child)
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(backend='{}', closed={})",
            self.store.name(),
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

/// A directory setting as text (the store's settings are text).
fn path_text<'a>(name: &str, path: Option<&'a std::path::Path>) -> PyResult<Option<&'a str>> {
    match path {
        Some(path) => path.to_str().map(Some).ok_or_else(|| {
            config_error(format!("{name} must be valid text, got {}", path.display()))
        }),
        None => Ok(None),
    }
}
