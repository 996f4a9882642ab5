//! Stats: one queue's, and the manager's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Engine, MetricsSnapshot};
use crate::backend::{QueueCounts, Totals};
use crate::error::{QueueError, Result};
use crate::job::validate_queue_name;

/// Queue stats as users see them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Not started yet: waiting, delayed, or taken in a worker's batch but not begun.
    pub size: u64,
    /// Running right now in this process's workers.
    pub processing: u64,
    pub completed: u64,
    pub failed: u64,
    pub waiting: u64,
    pub delayed: u64,
    pub paused: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub totals: Totals,
    pub active_workers: u64,
    pub queue_sizes: Vec<(String, u64)>,
}

/// One queue as Prometheus sees it: this process's counters, its handlers running now (`None`
/// where this process runs none: it is no worker of the queue), and the store's counts
/// (`None` when the store could not be reached).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueReport {
    pub queue: String,
    pub counters: MetricsSnapshot,
    pub busy: Option<u64>,
    pub counts: Option<QueueCounts>,
}

impl Engine {
    /// Every queue of the store, and every queue this process counted: its counters (zero when
    /// counting is off), its busy workers here, and its counts in the store (one call for all).
    /// A store that cannot be reached leaves the counts out, logged: the counters still go out.
    pub fn metrics_report(&self) -> Result<Vec<QueueReport>> {
        self.check_open()?;
        let mut reports: BTreeMap<String, QueueReport> = self
            .metrics()
            .into_iter()
            .map(|(name, counters)| {
                let report = QueueReport {
                    queue: name.to_string(),
                    counters,
                    ..QueueReport::default()
                };
                (name.to_string(), report)
            })
            .collect();
        for (name, pool) in self.pools.lock().iter() {
            reports
                .entry(name.to_string())
                .or_insert_with(|| QueueReport {
                    queue: name.to_string(),
                    ..QueueReport::default()
                })
                .busy = Some(pool.running() as u64);
        }
        let stored = self.backend.queue_names().and_then(|names| {
            let counts = self.backend.counts_of(&names)?;
            Ok(names.into_iter().zip(counts).collect::<Vec<_>>())
        });
        match stored {
            Ok(stored) => {
                if self.metrics_backend_down.swap(false, Ordering::AcqRel) {
                    log::info!(target: "rnode_queue", "metrics: queue counts are back");
                }
                for (name, counts) in stored {
                    let Some(counts) = counts else { continue };
                    reports
                        .entry(name.clone())
                        .or_insert_with(|| QueueReport {
                            queue: name,
                            ..QueueReport::default()
                        })
                        .counts = Some(counts);
                }
            }
            // Once per outage, not per scrape.
            Err(error) if !self.metrics_backend_down.swap(true, Ordering::AcqRel) => log::warn!(
                target: "rnode_queue",
                "metrics: queue counts left out while the backend cannot be reached ({error})"
            ),
            Err(error) => log::debug!(target: "rnode_queue", "metrics: no queue counts: {error}"),
        }
        Ok(reports.into_values().collect())
    }

    /// A queue's stats; a queue that does not exist (deleted, maybe while this ran) holds
    /// nothing.
    pub fn queue_stats(&self, name: &str) -> Result<QueueStats> {
        self.check_open()?;
        validate_queue_name(name)?;
        let counts = match self.backend.counts(name) {
            Err(QueueError::UnknownQueue(_)) => QueueCounts::default(),
            other => other?,
        };
        let running = self.pools.lock().get(name).map_or(0, |p| p.running()) as u64;
        Ok(self.stats_from(counts, running))
    }

    /// `running`: this process's runs. A shared store counts every process's runs as active.
    pub(super) fn stats_from(&self, counts: QueueCounts, running: u64) -> QueueStats {
        let running = if self.backend.shared() {
            counts.active
        } else {
            running.min(counts.active)
        };
        QueueStats {
            size: counts.waiting + counts.delayed + (counts.active - running),
            processing: running,
            completed: counts.completed,
            failed: counts.failed,
            waiting: counts.waiting,
            delayed: counts.delayed,
            paused: counts.paused,
        }
    }

    pub fn stats(&self) -> Result<EngineStats> {
        self.check_open()?;
        let running: HashMap<Arc<str>, u64> = self
            .pools
            .lock()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.running() as u64))
            .collect();
        let names = self.backend.queue_names()?;
        let all_counts = self.backend.counts_of(&names)?;
        let mut queue_sizes = Vec::with_capacity(names.len());
        let mut active_workers = 0;
        for (name, counts) in names.into_iter().zip(all_counts) {
            // A queue deleted while this ran is left out.
            let Some(counts) = counts else { continue };
            let stats = self.stats_from(counts, running.get(name.as_str()).copied().unwrap_or(0));
            active_workers += stats.processing;
            queue_sizes.push((name, stats.size));
        }
        if !self.backend.shared() {
            active_workers = running.values().sum();
        }
        Ok(EngineStats {
            totals: self.backend.totals()?,
            active_workers,
            queue_sizes,
        })
    }
}
