//! The Python exception classes. They are built at import with `type()` because two of them
//! inherit from both `QueueError` and `ValueError`, which `create_exception!` cannot express.

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::QueueError;

struct ErrorClass {
    name: &'static str,
    doc: &'static str,
    cell: PyOnceLock<Py<PyType>>,
}

const fn class(name: &'static str, doc: &'static str) -> ErrorClass {
    ErrorClass {
        name,
        doc,
        cell: PyOnceLock::new(),
    }
}

static QUEUE_ERROR: ErrorClass = class(
    "QueueError",
    "Base class of every error rnode-queue raises.",
);
static INVALID_JOB: ErrorClass = class(
    "InvalidJobError",
    "Job data or options are invalid (not JSON-serialisable, bad priority, negative delay, ...).",
);
static JOB_TOO_LARGE: ErrorClass = class(
    "JobTooLargeError",
    "The serialised job is larger than the manager's max_job_bytes.",
);
static INVALID_QUEUE_NAME: ErrorClass = class(
    "InvalidQueueNameError",
    "A queue name is empty, longer than 200 characters or contains control characters.",
);
static INVALID_CRON: ErrorClass =
    class("InvalidCronError", "A cron expression could not be parsed.");
static BACKEND_ERROR: ErrorClass = class(
    "BackendError",
    "The storage backend is unreachable or failed.",
);
static QUEUE_CLOSED: ErrorClass = class("QueueClosedError", "The manager was closed.");

fn make(py: Python<'_>, class: &ErrorClass, bases: &[&Bound<'_, PyAny>]) -> PyResult<Py<PyType>> {
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "rnode_queue")?;
    namespace.set_item("__doc__", class.doc)?;
    let bases = PyTuple::new(py, bases)?;
    let made = py
        .get_type::<PyType>()
        .call1((class.name, bases, namespace))?
        .cast_into::<PyType>()?;
    Ok(made.unbind())
}

/// Creates the classes and adds them to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let exception = py.get_type::<PyException>().into_any();
    let value_error = py.get_type::<PyValueError>().into_any();
    let base = QUEUE_ERROR
        .cell
        .get_or_try_init(py, || make(py, &QUEUE_ERROR, &[&exception]))?
        .bind(py)
        .clone()
        .into_any();
    let invalid_job = INVALID_JOB
        .cell
        .get_or_try_init(py, || make(py, &INVALID_JOB, &[&base, &value_error]))?
        .bind(py)
        .clone()
        .into_any();
    JOB_TOO_LARGE
        .cell
        .get_or_try_init(py, || make(py, &JOB_TOO_LARGE, &[&invalid_job]))?;
    for class in [&INVALID_QUEUE_NAME, &INVALID_CRON] {
        class
            .cell
            .get_or_try_init(py, || make(py, class, &[&base, &value_error]))?;
    }
    for class in [&BACKEND_ERROR, &QUEUE_CLOSED] {
        class
            .cell
            .get_or_try_init(py, || make(py, class, &[&base]))?;
    }
    for class in [
        &QUEUE_ERROR,
        &INVALID_JOB,
        &JOB_TOO_LARGE,
        &INVALID_QUEUE_NAME,
        &INVALID_CRON,
        &BACKEND_ERROR,
        &QUEUE_CLOSED,
    ] {
        let ty = class.cell.get(py).expect("created above");
        module.add(class.name, ty.clone_ref(py))?;
    }
    Ok(())
}

fn raise(class: &ErrorClass, message: String) -> PyErr {
    Python::attach(|py| match class.cell.get(py) {
        Some(ty) => PyErr::from_type(ty.bind(py).clone(), message),
        None => PyException::new_err(message),
    })
}

impl From<QueueError> for PyErr {
    fn from(error: QueueError) -> PyErr {
        let message = error.to_string();
        let class = match error {
            QueueError::InvalidJob(_) => &INVALID_JOB,
            QueueError::JobTooLarge { .. } => &JOB_TOO_LARGE,
            QueueError::InvalidQueueName(_) => &INVALID_QUEUE_NAME,
            QueueError::InvalidCron(_) => &INVALID_CRON,
            QueueError::Backend(_) => &BACKEND_ERROR,
            QueueError::Closed => &QUEUE_CLOSED,
            QueueError::Other(_) => &QUEUE_ERROR,
        };
        raise(class, message)
    }
}

/// An `InvalidJobError` with this message.
pub fn invalid_job(message: impl Into<String>) -> PyErr {
    QueueError::InvalidJob(message.into()).into()
}
