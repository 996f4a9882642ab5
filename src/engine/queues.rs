//! The queue registry: declaring queues (with the settings a store holds), their settings,
//! pause and resume, clear and delete, and forgetting queues deleted elsewhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::config::QueueConfig;
use super::timers::TimerKey;
use super::{Engine, QueueEntry};
use crate::error::{QueueError, Result};
use crate::job::{now, validate_queue_name};
use crate::sync::RwLock;

impl Engine {
    /// Creates a queue, or changes the settings of an existing one (stored with the queue, for
    /// the processes that did not declare it).
    pub fn create_queue(&self, name: &str, config: QueueConfig) -> Result<()> {
        self.check_open()?;
        validate_queue_name(name)?;
        config.validate()?;
        let entry = {
            let name: Arc<str> = Arc::from(name);
            self.backend
                .declare_queue(&name, &config.declaration(), true)?;
            let _changing = self.queue_changes.lock();
            let entry = self.insert_entry(&name, config.clone());
            *entry.config.write() = Arc::new(config);
            entry.declared_here.store(true, Ordering::Release);
            entry
        };
        self.settings_changed(&entry);
        Ok(())
    }

    /// The queue's record in this process, added with `config` if missing.
    pub(super) fn insert_entry(&self, name: &Arc<str>, config: QueueConfig) -> Arc<QueueEntry> {
        let entry = self
            .queues
            .write()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(QueueEntry {
                    name: name.clone(),
                    config: RwLock::new(Arc::new(config)),
                    declared_here: AtomicBool::new(false),
                    metrics: self.metrics.of(name),
                })
            })
            .clone();
        // Delayed jobs or retention a persistent backend already holds get their timer.
        self.timers.arm(TimerKey::Queue(name.clone()), now());
        entry
    }

    /// The queue, created with the defaults if it does not exist (with the stored settings if
    /// another process declared it).
    pub(super) fn ensure_queue(&self, name: &str) -> Result<Arc<QueueEntry>> {
        if let Some(entry) = self.queues.read().get(name) {
            return Ok(entry.clone());
        }
        validate_queue_name(name)?;
        let name: Arc<str> = Arc::from(name);
        let defaults = &self.options.defaults;
        // Two first uses at once both declare it: declaring an existing queue changes nothing.
        let stored = self
            .backend
            .declare_queue(&name, &defaults.declaration(), false)?;
        let _changing = self.queue_changes.lock();
        Ok(self.insert_entry(&name, QueueConfig::from_declaration(&stored, defaults)))
    }

    /// Declares the queue again after it vanished from the store (deleted, maybe by another
    /// process, while this one still used it), with the settings this process has for it.
    pub(super) fn redeclare(&self, entry: &Arc<QueueEntry>) -> Result<()> {
        let config = entry.config.read().clone();
        let here = entry.declared_here.load(Ordering::Acquire);
        self.backend
            .declare_queue(&entry.name, &config.declaration(), here)?;
        let _changing = self.queue_changes.lock();
        self.queues
            .write()
            .entry(entry.name.clone())
            .or_insert_with(|| entry.clone());
        Ok(())
    }

    pub fn declare_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        self.ensure_queue(name).map(|_| ())
    }

    /// `declare_queue` without waiting for the store (for callers on an event loop): the queue
    /// is known here at once with the defaults, and declared by the timer thread, which then
    /// takes the stored settings.
    pub fn declare_queue_later(&self, name: &str) -> Result<()> {
        self.check_open()?;
        validate_queue_name(name)?;
        if self.queues.read().contains_key(name) {
            return Ok(());
        }
        let name: Arc<str> = Arc::from(name);
        self.insert_entry(&name, self.options.defaults.clone());
        self.timers.arm(TimerKey::Declare(name), now());
        Ok(())
    }

    pub(super) fn declare_in_background(&self, name: &Arc<str>) {
        let entry = self.queues.read().get(name).cloned();
        let Some(entry) = entry else { return };
        if entry.declared_here.load(Ordering::Acquire) {
            return;
        }
        let defaults = &self.options.defaults;
        match self
            .backend
            .declare_queue(name, &defaults.declaration(), false)
        {
            Ok(stored) => {
                *entry.config.write() = Arc::new(QueueConfig::from_declaration(&stored, defaults));
                self.settings_changed(&entry);
            }
            Err(error) => {
                log::warn!(
                    target: "rnode_queue",
                    "queue {:?} could not be declared ({error}); trying again in 1 s",
                    &**name
                );
                self.timers
                    .arm(TimerKey::Declare(name.clone()), now() + 1.0);
            }
        }
    }

    /// A queue's settings changed: its workers follow the new concurrency.
    pub(super) fn settings_changed(&self, entry: &QueueEntry) {
        let pool = self.pools.lock().get(&entry.name).cloned();
        if let (Some(pool), Some(host)) = (pool, self.worker_host()) {
            let concurrency = entry.config.read().concurrency;
            if pool.concurrency() != concurrency {
                pool.resize(&host, concurrency);
            }
        }
    }

    pub fn queue_config(&self, name: &str) -> Result<QueueConfig> {
        self.check_open()?;
        validate_queue_name(name)?;
        let entry = self.queues.read().get(name).cloned();
        Ok(match entry {
            Some(entry) => (**entry.config.read()).clone(),
            None => self.options.defaults.clone(),
        })
    }

    /// Every queue's settings, and whether this process declared it (`create_queue`).
    pub fn queue_configs(&self) -> Result<Vec<(String, QueueConfig, bool)>> {
        self.check_open()?;
        Ok(self
            .queues
            .read()
            .values()
            .map(|entry| {
                let config = (**entry.config.read()).clone();
                let here = entry.declared_here.load(Ordering::Acquire);
                (entry.name.to_string(), config, here)
            })
            .collect())
    }

    /// The queue's settings and this process's counters of it, in one look-up.
    pub(super) fn config_and_metrics_of(
        &self,
        queue: &str,
    ) -> (Arc<QueueConfig>, Option<Arc<super::metrics::QueueMetrics>>) {
        match self.queues.read().get(queue) {
            Some(entry) => (entry.config.read().clone(), entry.metrics.clone()),
            None => (
                Arc::new(self.options.defaults.clone()),
                self.metrics.of(queue),
            ),
        }
    }

    pub fn queue_names(&self) -> Result<Vec<String>> {
        self.check_open()?;
        self.backend.queue_names()
    }

    /// A clear error for a queue that exists nowhere.
    pub(super) fn known_queue(&self, name: &str) -> Result<()> {
        validate_queue_name(name)?;
        if self.queues.read().contains_key(name) {
            return Ok(());
        }
        // Another process may have created it in a shared store.
        if self.backend.queue_names()?.iter().any(|n| n == name) {
            return Ok(());
        }
        Err(QueueError::UnknownQueue(name.to_string()))
    }

    pub fn pause_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let entry = self.ensure_queue(name)?;
        self.with_queue(&entry, || self.backend.set_paused(name, true))
    }

    pub fn resume_queue(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let entry = self.ensure_queue(name)?;
        self.with_queue(&entry, || self.backend.set_paused(name, false))
    }

    /// Runs `op` on the queue, declaring it again first if it vanished meanwhile.
    fn with_queue<T>(&self, entry: &Arc<QueueEntry>, op: impl Fn() -> Result<T>) -> Result<T> {
        match op() {
            Err(QueueError::UnknownQueue(_)) => {
                self.redeclare(entry)?;
                op()
            }
            other => other,
        }
    }

    pub fn clear_queue(&self, name: &str) -> Result<usize> {
        self.check_open()?;
        self.known_queue(name)?;
        let cleared = self.backend.clear(name);
        self.finished.notify();
        match cleared {
            // Deleted since: nothing left to clear.
            Err(QueueError::UnknownQueue(_)) => Ok(0),
            other => other,
        }
    }

    /// Stops the queue's workers (after their current job) and removes the queue and its jobs.
    pub fn delete_queue(&self, name: &str) -> Result<bool> {
        self.check_open()?;
        validate_queue_name(name)?;
        let pool = {
            let _changing = self.queue_changes.lock();
            self.queues.write().remove(name);
            self.timers.disarm(&TimerKey::Queue(Arc::from(name)));
            self.pools.lock().remove(name)
        };
        if let Some(pool) = &pool {
            pool.request_stop(self);
        }
        let deleted = self.backend.delete(name);
        self.finished.notify();
        deleted
    }

    /// Takes the stored settings of the queues this process did not declare (another process
    /// may have changed them), and forgets the queues deleted elsewhere that it does not use.
    pub(super) fn reload_settings(&self) {
        let undeclared: Vec<Arc<QueueEntry>> = self
            .queues
            .read()
            .values()
            .filter(|e| !e.declared_here.load(Ordering::Acquire))
            .cloned()
            .collect();
        if undeclared.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = undeclared.iter().map(|e| e.name.clone()).collect();
        let stored = match self.backend.stored_declarations(&names) {
            Ok(stored) => stored,
            Err(error) => {
                log::debug!(target: "rnode_queue", "queue settings not reloaded: {error}");
                return;
            }
        };
        let defaults = &self.options.defaults;
        for (entry, stored) in undeclared.iter().zip(stored) {
            match stored {
                Some(declaration) => {
                    let config = QueueConfig::from_declaration(&declaration, defaults);
                    if **entry.config.read() != config {
                        *entry.config.write() = Arc::new(config);
                        self.settings_changed(entry);
                    }
                }
                None => {
                    // Deleted elsewhere: keep no record of it unless its workers run here.
                    let _changing = self.queue_changes.lock();
                    if !self.pools.lock().contains_key(&entry.name) {
                        self.queues.write().remove(&entry.name);
                    }
                }
            }
        }
    }
}
