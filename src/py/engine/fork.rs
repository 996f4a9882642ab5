//! The engine behind a `PyEngine`, and a forked child's: threads do not survive `fork`, so the
//! child opens its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use super::PyEngine;
use crate::backend::store::StoreConfig;
use crate::engine::Engine;
use crate::error::QueueError;
use crate::py::gil;

impl PyEngine {
    /// The engine this object stands for (a forked child's own, once it has one).
    pub(super) fn engine(&self) -> &Engine {
        // SAFETY: see the field: the pointer comes from `Arc::into_raw` and outlives `self`.
        unsafe { &*self.engine.load(Ordering::Acquire) }
    }

    /// A fresh engine with this object's store and options (a forked child's).
    pub(super) fn create_engine(&self) -> Result<Arc<Engine>, QueueError> {
        Engine::new(self.store.open()?, self.options.clone())
    }

    /// Notes the queue settings for a child (`os.register_at_fork(before=...)`).
    pub(super) fn snapshot_for_fork(&self) {
        if let Ok(configs) = self.engine().queue_configs() {
            *self.fork_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = configs;
        }
    }

    /// After `fork` (`os.register_at_fork(after_in_*=...)`). Threads do not survive `fork`, and
    /// the parent's locks may be held by threads the child does not have: the child gets a
    /// fresh engine with the same settings and queue settings, and no jobs (they stay the
    /// parent's, so none runs twice), schedules or workers. (Job ids are drawn afresh in every
    /// forked child by `id::JobId` itself.)
    pub(super) fn reopen_after_fork(&self, py: Python<'_>, in_child: bool) -> PyResult<()> {
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
                let closed = Engine::new(StoreConfig::Memory.open()?, self.options.clone())?;
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
}
