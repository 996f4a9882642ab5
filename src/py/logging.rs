//! The engine's records (the `log` crate) reach Python's `logging`, under the `rnode_queue`
//! logger, as granian's do through pyo3-log. Our own bridge rather than pyo3-log: it attaches
//! through the exit guard (`gil::attach`, never during interpreter finalization), and it passes
//! only our own records — redis-rs logs from its tokio thread, which must never wait for the GIL.

use log::{Level, LevelFilter, Log, Metadata, Record};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::py::gil;

/// Records whose target starts with this are ours.
const TARGET: &str = "rnode_queue";

struct Bridge;

static BRIDGE: Bridge = Bridge;
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Installs the bridge as the process's `log` logger (once; a logger another extension
/// installed first stays, and our records go to it), and looks the Python logger up now, while
/// the module is imported, not on an engine thread at exit.
pub fn install(py: Python<'_>) -> PyResult<()> {
    LOGGER.get_or_try_init(py, || {
        py.import("logging")?
            .call_method1("getLogger", (TARGET,))
            .map(Bound::unbind)
    })?;
    if log::set_logger(&BRIDGE).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
    Ok(())
}

fn python_level(level: Level) -> u32 {
    match level {
        Level::Error => 40,
        Level::Warn => 30,
        Level::Info => 20,
        Level::Debug => 10,
        Level::Trace => 5,
    }
}

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with(TARGET)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = python_level(record.level());
        // At interpreter exit nothing is logged (there is no Python to log to).
        gil::attach(|py| {
            let Some(logger) = LOGGER.get(py) else { return };
            // A record must never replace an exception being raised on this thread.
            let pending = PyErr::take(py);
            let logged = (|| -> PyResult<()> {
                // `Logger.log` checks the level itself. It runs handlers that write to files
                // and sockets: guarded, like any call that may release the GIL on an engine
                // thread.
                let log = logger.bind(py).getattr(intern!(py, "log"))?;
                let message = record.args().to_string();
                gil::call(&log, &(level, "%s", message).into_pyobject(py)?)?;
                Ok(())
            })();
            if let Err(error) = logged {
                // Logging itself failed (a broken handler): Python's own fallback reports it.
                error.write_unraisable(py, None);
            }
            if let Some(pending) = pending {
                pending.restore(py);
            }
        });
    }

    fn flush(&self) {}
}
