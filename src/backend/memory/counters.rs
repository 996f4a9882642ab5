//! What an in-process store keeps beside its queues: the totals of settled runs, and the
//! registry of live worker processes (their heartbeats). Neither is journaled: a worker beats
//! again within seconds, and a durable store's totals come from its queues' (which are).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::queue::{MemoryQueue, Settled};
use crate::backend::Totals;
use crate::job::{now, Payload, Timestamp};
use crate::sync::Mutex;

#[derive(Default)]
pub(super) struct RunTotals {
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

impl RunTotals {
    pub fn add(&self, settled: &Settled) {
        self.processed
            .fetch_add(settled.processed, Ordering::Relaxed);
        self.failed.fetch_add(settled.failed, Ordering::Relaxed);
        self.retried.fetch_add(settled.retried, Ordering::Relaxed);
    }

    /// The totals since the store was opened; with `queues`, processed and failed are theirs
    /// instead (since each was created: a durable store's outlive a restart).
    pub fn get(&self, queues: Option<&[(Arc<str>, Arc<MemoryQueue>)]>) -> Totals {
        let mut totals = Totals {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
        };
        if let Some(queues) = queues {
            (totals.processed, totals.failed) = (0, 0);
            for (_, queue) in queues {
                let counts = queue.state.lock().counts();
                totals.processed += counts.completed;
                totals.failed += counts.failed;
            }
        }
        totals
    }
}

/// Each worker's description and when it expires.
#[derive(Default)]
pub(super) struct WorkerRegistry(Mutex<HashMap<String, (Payload, Timestamp)>>);

impl WorkerRegistry {
    /// Also drops the expired entries: workers killed without a word do not pile up.
    pub fn beat(&self, worker: &str, info: &Payload, ttl: f64) {
        let at = now();
        let mut workers = self.0.lock();
        workers.retain(|_, (_, expires)| *expires > at);
        workers.insert(worker.to_string(), (info.clone(), at + ttl));
    }

    /// The descriptions not expired (the expired ones are dropped).
    pub fn live(&self) -> Vec<Payload> {
        let at = now();
        let mut workers = self.0.lock();
        workers.retain(|_, (_, expires)| *expires > at);
        workers.values().map(|(info, _)| info.clone()).collect()
    }

    pub fn leave(&self, worker: &str) {
        self.0.lock().remove(worker);
    }
}
