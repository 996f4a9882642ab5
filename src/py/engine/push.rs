//! Pushing from Python: in place when nothing is contended, else with the GIL released.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use super::PyEngine;
use crate::engine::Pushed;
use crate::job::{JobId, JobOptions, Payload};
use crate::py::gil;
use crate::py::options::{batch_item, options_from_dict, payload, PushArgs};

impl PyEngine {
    /// Pushes without releasing the GIL when no lock is contended; otherwise waits detached.
    pub(super) fn push_specs(
        &self,
        py: Python<'_>,
        queue: &str,
        specs: &[(Payload, JobOptions)],
    ) -> PyResult<Vec<JobId>> {
        if let Pushed::Done(ids) = self.engine().push(queue, specs, false)? {
            return Ok(ids);
        }
        match gil::detach(py, || self.engine().push(queue, specs, true))? {
            Pushed::Done(ids) => Ok(ids),
            Pushed::WouldBlock | Pushed::Uncommitted(..) => {
                unreachable!("a blocking push always completes")
            }
        }
    }

    /// The items of `push_batch`, stored in place and made durable by a later `commit`: the
    /// ids and the ticket, or `None` where that cannot be done without waiting.
    pub(super) fn push_many_uncommitted<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        items: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Bound<'py, PyList>, u64)>> {
        let specs = Self::batch_specs(queue, items)?;
        if specs.is_empty() {
            return Ok(Some((PyList::empty(py), 0)));
        }
        match self.engine().push_uncommitted(queue, &specs)? {
            Pushed::Uncommitted(ids, ticket) => {
                let ids = PyList::new(py, ids.iter().map(|id| Self::id_text(py, *id)))?;
                Ok(Some((ids, ticket)))
            }
            Pushed::Done(_) => unreachable!("an uncommitted push is committed by its caller"),
            Pushed::WouldBlock => Ok(None),
        }
    }

    /// `TypeError` for keyword arguments the public method does not take, naming it.
    pub(super) fn refuse_unknown(method: &str, extra: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        match extra.and_then(|extra| extra.keys().iter().next()) {
            Some(key) => Err(PyTypeError::new_err(format!(
                "{method}() got an unexpected keyword argument {}",
                key.repr()?
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn id_text(py: Python<'_>, id: JobId) -> Bound<'_, PyString> {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        PyString::new(py, id.0.hyphenated().encode_lower(&mut text))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn push_one(
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

    /// The items of `push_batch` as jobs to push (none: the queue name is still checked).
    fn batch_specs(queue: &str, items: &Bound<'_, PyAny>) -> PyResult<Vec<(Payload, JobOptions)>> {
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
        }
        Ok(specs)
    }

    pub(super) fn push_many<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        items: &Bound<'_, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let specs = Self::batch_specs(queue, items)?;
        if specs.is_empty() {
            return Ok(PyList::empty(py));
        }
        let ids = self.push_specs(py, queue, &specs)?;
        PyList::new(py, ids.iter().map(|id| Self::id_text(py, *id)))
    }

    /// One job stored in place, made durable by a later `commit`: its id and the ticket, or
    /// `None` where that cannot be done without waiting.
    pub(super) fn push_one_in_place<'py>(
        &self,
        py: Python<'py>,
        queue: &str,
        data: &Bound<'_, PyAny>,
        options: &Bound<'_, PyDict>,
    ) -> PyResult<Option<(Bound<'py, PyString>, u64)>> {
        let options = options_from_dict(options)?;
        let data = payload(data, "job data")?;
        match self.engine().push_uncommitted(queue, &[(data, options)])? {
            Pushed::Uncommitted(ids, ticket) => Ok(Some((Self::id_text(py, ids[0]), ticket))),
            Pushed::Done(_) => unreachable!("an uncommitted push is committed by its caller"),
            Pushed::WouldBlock => Ok(None),
        }
    }

    /// `commit` on the engine's commit thread, which then writes one byte to `fd` (owned and
    /// closed here): 0 if the pushes are durable, 1 if not. That thread never takes the GIL.
    pub(super) fn commit_to_pipe(&self, ticket: u64, fd: i32) -> PyResult<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: the caller hands over a descriptor of its own (a dup of a pipe's write end).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(self.engine().commit_in_background(ticket, move |outcome| {
            let byte = [u8::from(outcome.is_err())];
            // A reader gone meanwhile (the manager closed) is no error worth a word.
            // SAFETY: a one-byte write from a live buffer to a descriptor owned here.
            let _ = unsafe { libc::write(fd.as_raw_fd(), byte.as_ptr().cast(), 1) };
        })?)
    }
}
