//! `Job` and `Stats` as Python sees them: frozen snapshots, converted to Python objects only
//! when a field is read (a no-op handler never pays for `job.data`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDateTime, PyDict, PyTzInfo};

use crate::engine::EngineStats;
use crate::job::{Job as CoreJob, JobState, Payload, Timestamp};
use crate::py::convert::from_json;

#[pyclass(frozen, name = "Job", module = "rnode_queue")]
pub struct PyJob {
    job: CoreJob,
    data: PyOnceLock<Py<PyAny>>,
    metadata: PyOnceLock<Py<PyAny>>,
}

impl PyJob {
    pub fn new(job: CoreJob) -> Self {
        PyJob {
            job,
            data: PyOnceLock::new(),
            metadata: PyOnceLock::new(),
        }
    }
}

pub fn datetime(py: Python<'_>, at: Option<Timestamp>) -> PyResult<Option<Bound<'_, PyDateTime>>> {
    match at {
        Some(at) => {
            let utc = PyTzInfo::utc(py)?;
            PyDateTime::from_timestamp(py, at, Some(&utc.to_owned())).map(Some)
        }
        None => Ok(None),
    }
}

fn json_or_none<'py>(py: Python<'py>, payload: Option<&Payload>) -> PyResult<Bound<'py, PyAny>> {
    match payload {
        Some(bytes) => from_json(py, bytes),
        None => Ok(py.None().into_bound(py)),
    }
}

#[pymethods]
impl PyJob {
    #[getter]
    fn id(&self) -> String {
        self.job.id.to_string()
    }

    #[getter]
    fn queue(&self) -> &str {
        &self.job.queue
    }

    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data
            .get_or_try_init(py, || from_json(py, &self.job.data).map(Bound::unbind))
            .map(|data| data.clone_ref(py))
    }

    #[getter]
    fn priority(&self) -> &'static str {
        self.job.priority.as_str()
    }

    #[getter]
    fn status(&self) -> &'static str {
        self.job.state.as_str()
    }

    #[getter]
    fn attempts(&self) -> u32 {
        self.job.attempts
    }

    #[getter]
    fn max_attempts(&self) -> u32 {
        self.job.max_attempts
    }

    #[getter]
    fn delay(&self) -> f64 {
        self.job.extras().map_or(0.0, |e| e.delay)
    }

    #[getter]
    fn timeout(&self) -> f64 {
        self.job.timeout
    }

    #[getter]
    fn created_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDateTime>>> {
        datetime(py, Some(self.job.created_at))
    }

    #[getter]
    fn scheduled_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDateTime>>> {
        datetime(py, self.job.scheduled_at.get())
    }

    #[getter]
    fn started_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDateTime>>> {
        datetime(py, self.job.started_at.get())
    }

    #[getter]
    fn completed_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDateTime>>> {
        let completed = self.job.state == JobState::Completed;
        datetime(py, self.job.finished_at.get().filter(|_| completed))
    }

    #[getter]
    fn failed_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDateTime>>> {
        let failed = self.job.state == JobState::Failed;
        datetime(py, self.job.finished_at.get().filter(|_| failed))
    }

    #[getter]
    fn error(&self) -> Option<&str> {
        self.job.extras().and_then(|e| e.error.as_deref())
    }

    #[getter]
    fn traceback(&self) -> Option<&str> {
        self.job.extras().and_then(|e| e.traceback.as_deref())
    }

    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_or_none(py, self.job.extras().and_then(|e| e.result.as_ref()))
    }

    #[getter]
    fn tags(&self) -> Vec<String> {
        self.job
            .extras()
            .map(|e| e.tags.clone())
            .unwrap_or_default()
    }

    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.metadata
            .get_or_try_init(py, || {
                match self.job.extras().and_then(|e| e.metadata.as_ref()) {
                    Some(bytes) => from_json(py, bytes).map(Bound::unbind),
                    None => Ok(PyDict::new(py).into_any().unbind()),
                }
            })
            .map(|m| m.clone_ref(py))
    }

    #[getter]
    fn schedule_id(&self) -> Option<&str> {
        self.job.extras().and_then(|e| e.schedule_id.as_deref())
    }

    /// Every field, as a plain dict.
    fn to_dict<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for field in FIELDS {
            dict.set_item(field, slf.getattr(field)?)?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "Job(id='{}', queue={:?}, status='{}', priority='{}', attempts={}/{})",
            self.job.id,
            &*self.job.queue,
            self.job.state.as_str(),
            self.job.priority.as_str(),
            self.job.attempts,
            self.job.max_attempts
        )
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<PyJob>()
            .map(|o| o.get().job == self.job)
            .unwrap_or(false)
    }

    fn __hash__(&self) -> u64 {
        self.job.id.0.as_u64_pair().0
    }
}

const FIELDS: [&str; 20] = [
    "id",
    "queue",
    "data",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "delay",
    "timeout",
    "created_at",
    "scheduled_at",
    "started_at",
    "completed_at",
    "failed_at",
    "error",
    "traceback",
    "result",
    "tags",
    "metadata",
    "schedule_id",
];

#[pyclass(frozen, name = "Stats", module = "rnode_queue")]
pub struct PyStats {
    stats: EngineStats,
}

impl PyStats {
    pub fn new(stats: EngineStats) -> Self {
        PyStats { stats }
    }
}

#[pymethods]
impl PyStats {
    #[getter]
    fn jobs_processed(&self) -> u64 {
        self.stats.totals.processed
    }

    #[getter]
    fn jobs_failed(&self) -> u64 {
        self.stats.totals.failed
    }

    #[getter]
    fn jobs_retried(&self) -> u64 {
        self.stats.totals.retried
    }

    #[getter]
    fn active_workers(&self) -> u64 {
        self.stats.active_workers
    }

    #[getter]
    fn queue_sizes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, size) in &self.stats.queue_sizes {
            dict.set_item(name, size)?;
        }
        Ok(dict)
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("jobs_processed", self.jobs_processed())?;
        dict.set_item("jobs_failed", self.jobs_failed())?;
        dict.set_item("jobs_retried", self.jobs_retried())?;
        dict.set_item("active_workers", self.active_workers())?;
        dict.set_item("queue_sizes", self.queue_sizes(py)?)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        format!(
            "Stats(jobs_processed={}, jobs_failed={}, jobs_retried={}, active_workers={}, queues={})",
            self.stats.totals.processed,
            self.stats.totals.failed,
            self.stats.totals.retried,
            self.stats.active_workers,
            self.stats.queue_sizes.len()
        )
    }
}
