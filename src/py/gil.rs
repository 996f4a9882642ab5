//! Calls into Python from the engine's own threads, safe at interpreter exit.
//!
//! Up to CPython 3.13 a thread that takes the GIL back while the interpreter finalizes is ended
//! with `pthread_exit`, a forced unwind; through Rust frames that aborts the process. pyo3's own
//! attach and detach already keep such a thread from unwinding; the Python code we call does
//! not (a handler sleeping in a loop takes the GIL back at every wake-up). So every call into
//! Python from an engine thread goes through `call`, which on Linux/glibc runs it inside the C
//! shim of `exit_guard.c`: the unwind stops there and the thread is parked, its handler
//! abandoned; the process exits with the status its main thread chose.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

#[cfg(rnq_exit_guard)]
mod shim {
    use pyo3::ffi::PyObject;

    // "C", not "C-unwind": the shim stops a forced unwind inside its own frame, so no unwind
    // ever leaves it.
    extern "C" {
        pub fn rnq_guarded_call(
            callable: *mut PyObject,
            args: *mut PyObject,
            kwargs: *mut PyObject,
        ) -> *mut PyObject;
    }
}

/// `callable(*args)`, guarded against the forced unwind of interpreter exit.
pub fn call<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = callable.py();
    // SAFETY: both pointers are live objects (borrowed for the call); the GIL is held.
    unsafe {
        #[cfg(rnq_exit_guard)]
        let result = shim::rnq_guarded_call(callable.as_ptr(), args.as_ptr(), std::ptr::null_mut());
        #[cfg(not(rnq_exit_guard))]
        let result = ffi::PyObject_Call(callable.as_ptr(), args.as_ptr(), std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// `callable(arg)`, guarded (see `call`).
pub fn call1<'py>(
    callable: &Bound<'py, PyAny>,
    arg: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    call(callable, &PyTuple::new(callable.py(), [arg])?)
}

/// Runs `f` attached to Python, unless the interpreter is gone or going: then `None`.
pub fn attach<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    // SAFETY: reads the interpreter's state; no GIL needed.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        return None;
    }
    Python::try_attach(f)
}

/// Runs `f` with the GIL released (pyo3's detach: it re-attaches safely at exit).
pub fn detach<T, F>(py: Python<'_>, f: F) -> T
where
    F: pyo3::marker::Ungil + FnOnce() -> T,
    T: pyo3::marker::Ungil,
{
    py.detach(f)
}
