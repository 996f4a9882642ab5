//! rnode-queue: a job queue engine for Python.
//!
//! The engine (`job`, `backoff`, `backend`, `engine`) is plain Rust that
//! `cargo test` exercises without Python; `py` is the PyO3 boundary, and this file the module
//! `rnode_queue._core` that the Python package wraps.

pub mod backend;
pub mod backoff;
pub mod engine;
pub mod error;
pub mod id;
pub mod job;
pub mod sync;

mod py;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
fn rnode_queue_core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add(
        "DEFAULT_CLOSE_TIMEOUT",
        engine::DEFAULT_CLOSE_TIMEOUT.as_secs_f64(),
    )?;
    module.add("DEFAULT_REDIS_PREFIX", backend::store::DEFAULT_PREFIX)?;
    module.add("MAX_CONCURRENCY", engine::MAX_CONCURRENCY)?;
    py::logging::install(module.py())?;
    py::errors::register(module)?;
    module.add_class::<py::engine::PyEngine>()?;
    module.add_class::<py::job::PyJob>()?;
    module.add_class::<py::job::PyStats>()?;
    module.add_class::<py::dispatch::PyCompletion>()?;
    Ok(())
}
