//! The Python exception classes. They are built at import with `type()` because several of them
//! inherit from both `QueueError` and a builtin (`ValueError`, `LookupError`), which
//! `create_exception!` cannot express.

use pyo3::exceptions::{PyException, PyLookupError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

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
static INVALID_CRON: ErrorClass = class(
    "InvalidCronError",
    "A cron expression could not be parsed, or never fires.",
);
static CONFIG_ERROR: ErrorClass = class(
    "ConfigError",
    "A setting is invalid: of the manager, a queue, or a call (concurrency=0, lease=-1, a bad \
     prefix, a negative timeout, ...).",
);
static BACKEND_ERROR: ErrorClass = class(
    "BackendError",
    "The storage backend is unreachable or failed.",
);
static PUSH_OUTCOME_UNKNOWN: ErrorClass = class(
    "PushOutcomeUnknownError",
    "A push got no answer from the backend, even when tried again: its jobs may or may not be \
     stored. ``job_ids`` lists their ids; ``get_job`` tells, for each.",
);
static JOB_NOT_FOUND: ErrorClass = class(
    "JobNotFoundError",
    "No job has this id (it never existed, or is no longer retained).",
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
    let lookup_error = py.get_type::<PyLookupError>().into_any();
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
    for class in [&INVALID_QUEUE_NAME, &INVALID_CRON, &CONFIG_ERROR] {
        class
            .cell
            .get_or_try_init(py, || make(py, class, &[&base, &value_error]))?;
    }
    JOB_NOT_FOUND
        .cell
        .get_or_try_init(py, || make(py, &JOB_NOT_FOUND, &[&base, &lookup_error]))?;
    let backend = BACKEND_ERROR
        .cell
        .get_or_try_init(py, || make(py, &BACKEND_ERROR, &[&base]))?
        .bind(py)
        .clone()
        .into_any();
    PUSH_OUTCOME_UNKNOWN
        .cell
        .get_or_try_init(py, || make(py, &PUSH_OUTCOME_UNKNOWN, &[&backend]))?;
    QUEUE_CLOSED
        .cell
        .get_or_try_init(py, || make(py, &QUEUE_CLOSED, &[&base]))?;
    for class in [
        &QUEUE_ERROR,
        &INVALID_JOB,
        &JOB_TOO_LARGE,
        &INVALID_QUEUE_NAME,
        &INVALID_CRON,
        &CONFIG_ERROR,
        &BACKEND_ERROR,
        &PUSH_OUTCOME_UNKNOWN,
        &JOB_NOT_FOUND,
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
        let class = match &error {
            QueueError::InvalidJob(_) => &INVALID_JOB,
            QueueError::JobTooLarge { .. } => &JOB_TOO_LARGE,
            QueueError::InvalidQueueName(_) => &INVALID_QUEUE_NAME,
            QueueError::InvalidCron(_) => &INVALID_CRON,
            QueueError::Config(_) => &CONFIG_ERROR,
            QueueError::Backend(_) | QueueError::Indeterminate(_) => &BACKEND_ERROR,
            QueueError::PushOutcomeUnknown { .. } => &PUSH_OUTCOME_UNKNOWN,
            QueueError::JobNotFound(_) => &JOB_NOT_FOUND,
            QueueError::Closed => &QUEUE_CLOSED,
            QueueError::UnknownQueue(_) | QueueError::DuplicateJob(_) | QueueError::Other(_) => {
                &QUEUE_ERROR
            }
        };
        let raised = raise(class, message);
        if let QueueError::PushOutcomeUnknown { ids, .. } = error {
            // The caller can look each of them up.
            Python::attach(|py| {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                let list = PyList::new(py, ids).ok();
                if let Some(list) = list {
                    let _ = raised.value(py).setattr("job_ids", list);
                }
            });
        }
        raised
    }
}

/// An `InvalidJobError` with this message.
pub fn invalid_job(message: impl Into<String>) -> PyErr {
    QueueError::InvalidJob(message.into()).into()
}

/// A `ConfigError` with this message.
pub fn config_error(message: impl Into<String>) -> PyErr {
    QueueError::Config(message.into()).into()
}
