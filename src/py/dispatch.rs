//! Running Python handlers on the engine's worker threads.
//!
//! A worker thread attaches to Python once and keeps its thread state for its whole life; it
//! releases the GIL (`detach`) for every fetch, ack and wait, and holds it while running a batch
//! of handlers. Async handlers are handed, a batch at a time, to an asyncio loop that the Python
//! package runs; each reports back through a `Completion`. Every call into Python here goes
//! through `gil::call` (safe at interpreter exit).

use crate::sync::Mutex;
use pyo3::exceptions::PyBaseException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::backoff::DelayFunction;
use crate::engine::{Completion, Executor, RunOutcome, Session};
use crate::job::Job;
use crate::py::args::{seconds, Kind};
use crate::py::convert::to_payload;
use crate::py::gil;
use crate::py::job::PyJob;

pub struct PyExecutor {
    handler: Py<PyAny>,
    /// Set for async handlers: called with `[(job, timeout, completion), ...]`.
    async_submit: Option<Py<PyAny>>,
}

impl PyExecutor {
    pub fn new(handler: Py<PyAny>, async_submit: Option<Py<PyAny>>) -> Self {
        PyExecutor {
            handler,
            async_submit,
        }
    }
}

impl Executor for PyExecutor {
    fn is_async(&self) -> bool {
        self.async_submit.is_some()
    }

    fn enter(&self, body: &mut dyn FnMut(&mut dyn Session)) {
        // `try_attach`: at interpreter shutdown the thread just ends instead of attaching.
        let _ = Python::try_attach(|py| {
            let mut session = PySession {
                py,
                handler: self.handler.bind(py),
                submit: self.async_submit.as_ref().map(|s| s.bind(py)),
            };
            body(&mut session);
        });
    }
}

struct PySession<'a, 'py> {
    py: Python<'py>,
    handler: &'a Bound<'py, PyAny>,
    submit: Option<&'a Bound<'py, PyAny>>,
}

impl Session for PySession<'_, '_> {
    fn unlocked(&mut self, f: &mut (dyn FnMut() + Send)) {
        self.py.detach(f);
    }

    fn run(&mut self, job: &Job) -> RunOutcome {
        let py = self.py;
        let job = match Bound::new(py, PyJob::new(job.clone())) {
            Ok(job) => job,
            Err(err) => return failure_from(py, &err),
        };
        match gil::call1(self.handler, job.into_any()) {
            Ok(value) => result_outcome(&value),
            Err(err) => failure_from(py, &err),
        }
    }

    fn submit(&mut self, jobs: Vec<(Job, Completion)>) {
        let py = self.py;
        let Some(submit) = self.submit else {
            return;
        };
        let mut completions = Vec::with_capacity(jobs.len());
        let items: PyResult<Vec<Bound<'_, PyTuple>>> = jobs
            .into_iter()
            .map(|(job, completion)| {
                let timeout = job.timeout;
                let py_job = Bound::new(py, PyJob::new(job))?;
                let completion = Bound::new(
                    py,
                    PyCompletion {
                        inner: Mutex::new(Some(completion)),
                    },
                )?;
                completions.push(completion.clone());
                PyTuple::new(
                    py,
                    [
                        py_job.into_any(),
                        timeout.into_pyobject(py)?.into_any(),
                        completion.into_any(),
                    ],
                )
            })
            .collect();
        let submitted = items
            .and_then(|items| PyList::new(py, items))
            .and_then(|list| gil::call1(submit, list.into_any()));
        if let Err(err) = submitted {
            // The runner refused the batch: fail the attempts rather than lose the jobs.
            let outcome = failure_from(py, &err);
            for completion in completions {
                if let Some(mut inner) = completion.get().inner.lock().take() {
                    inner.complete(outcome.clone());
                }
            }
        }
    }
}

/// A handler's return value: stored as the job's result if it is JSON.
fn result_outcome(value: &Bound<'_, PyAny>) -> RunOutcome {
    if value.is_none() {
        return RunOutcome::Success(None);
    }
    // An `async def` hidden behind a plain wrapper was run as a sync handler.
    if value
        .hasattr(intern!(value.py(), "__await__"))
        .unwrap_or(false)
    {
        let _ = value.call_method0(intern!(value.py(), "close"));
        return RunOutcome::Failure {
            error: "TypeError: the handler returned an awaitable; an async handler must be an \
                    `async def` function (or a callable whose __call__ is one)"
                .into(),
            traceback: None,
        };
    }
    match to_payload(value) {
        Ok(payload) => RunOutcome::Success(Some(payload)),
        Err(message) => RunOutcome::Failure {
            error: format!(
                "InvalidJobError: the handler's return value cannot be stored: {message}"
            ),
            traceback: None,
        },
    }
}

static FORMAT_EXCEPTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// "ExcType: message" and the formatted traceback of a handler's exception.
fn failure_from(py: Python<'_>, err: &PyErr) -> RunOutcome {
    let kind = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    // `str()` runs the exception's own `__str__`: guarded.
    let str_type = py.get_type::<PyString>().into_any();
    let message = gil::call1(&str_type, err.value(py).clone().into_any())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let error = if message.is_empty() {
        kind
    } else {
        format!("{kind}: {message}")
    };
    let traceback = FORMAT_EXCEPTION
        .get_or_try_init(py, || {
            py.import("traceback")
                .and_then(|m| m.getattr("format_exception"))
                .map(Bound::unbind)
        })
        .and_then(|format| {
            let traceback = err.traceback(py).map(Bound::into_any);
            // Python code on an engine thread: guarded, like the handler's call.
            let args = (err.get_type(py), err.value(py), traceback).into_pyobject(py)?;
            gil::call(format.bind(py), &args)
        })
        .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)))
        .and_then(|text| text.extract::<String>())
        .ok();
    RunOutcome::Failure { error, traceback }
}

/// A queue's backoff given as a Python function `(attempt, error) -> seconds` (a number or a
/// `timedelta`). Called from the engine's threads when a run fails.
pub struct PyDelayFunction {
    function: Py<PyAny>,
    name: String,
}

impl PyDelayFunction {
    pub fn new(function: Py<PyAny>) -> Self {
        let name = Python::attach(|py| {
            let function = function.bind(py);
            let qualname = function
                .getattr("__qualname__")
                .and_then(|n| n.extract::<String>())
                .unwrap_or_else(|_| "<callable>".into());
            match function
                .getattr("__module__")
                .and_then(|m| m.extract::<String>())
            {
                Ok(module) => format!("{module}.{qualname}"),
                Err(_) => qualname,
            }
        });
        PyDelayFunction { function, name }
    }
}

impl std::fmt::Debug for PyDelayFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl DelayFunction for PyDelayFunction {
    fn delay(&self, failures: u32, error: &str) -> Result<f64, String> {
        gil::attach(|py| {
            let args = (failures, error)
                .into_pyobject(py)
                .map_err(|e| e.to_string())?;
            let value =
                gil::call(self.function.bind(py), &args).map_err(|err| {
                    match failure_from(py, &err) {
                        RunOutcome::Failure { error, .. } => format!("it raised {error}"),
                        _ => "it raised".into(),
                    }
                })?;
            match seconds(Some(&value), "the backoff function's result", Kind::Setting) {
                Ok(Some(seconds)) => Ok(seconds),
                Ok(None) => Err("it returned None".into()),
                Err(err) => Err(err.value(py).to_string()),
            }
        })
        .unwrap_or_else(|| Err("the interpreter is shutting down".into()))
    }
}

/// How an async handler reports its end. Exactly one call counts; later ones are ignored.
#[pyclass(frozen, name = "Completion", module = "rnode_queue._core")]
pub struct PyCompletion {
    inner: Mutex<Option<Completion>>,
}

impl PyCompletion {
    fn finish(&self, outcome: RunOutcome) {
        // Never contended: only Python code calls this, one thread at a time, and the lock is
        // held for a `take`.
        let completion = self.inner.lock().take();
        if let Some(mut completion) = completion {
            completion.complete(outcome);
        }
    }
}

#[pymethods]
impl PyCompletion {
    fn success(&self, result: &Bound<'_, PyAny>) {
        self.finish(result_outcome(result));
    }

    fn failure(&self, error: &Bound<'_, PyBaseException>) {
        let err = PyErr::from_value(error.clone().into_any());
        self.finish(failure_from(error.py(), &err));
    }

    fn timed_out(&self) {
        self.finish(RunOutcome::TimedOut);
    }

    fn __repr__(&self) -> String {
        match self.inner.lock().as_ref().and_then(|c| c.job()) {
            Some(job) => format!("Completion(job='{}')", job.id),
            None => "Completion(done)".into(),
        }
    }
}
