//! This process's counters per queue, for Prometheus: jobs pushed, runs completed, failed for
//! good, retried, and a histogram of handler run times. Plain atomics, bumped where the engine
//! already is (a push, a settle, the end of a run): no lock and no Python per job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sync::RwLock;

/// Upper bounds of the run-time histogram, in seconds: from 100 µs to 10 minutes.
pub const DURATION_BOUNDS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The bounds in nanoseconds, for the comparison on each observation.
const BOUNDS_NS: [u64; 21] = {
    let mut bounds = [0u64; 21];
    let mut i = 0;
    while i < 21 {
        bounds[i] = (DURATION_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    bounds
};

/// One queue's counters in this process.
#[derive(Default)]
pub struct QueueMetrics {
    pushed: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    /// Runs per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; 22],
    duration_sum_ns: AtomicU64,
}

impl QueueMetrics {
    pub fn pushed(&self, jobs: usize) {
        self.pushed.fetch_add(jobs as u64, Ordering::Relaxed);
    }

    pub fn settled(&self, processed: u64, failed: u64, retried: u64) {
        for (counter, n) in [
            (&self.processed, processed),
            (&self.failed, failed),
            (&self.retried, retried),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// A handler ran this long (whatever its outcome).
    pub fn observe(&self, nanos: u64) {
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|count| {
                cumulative += count.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        MetricsSnapshot {
            pushed: self.pushed.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            duration_buckets: buckets,
            duration_sum: Duration::from_nanos(self.duration_sum_ns.load(Ordering::Relaxed)),
        }
    }
}

/// One queue's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub pushed: u64,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    /// Cumulative counts at each of `DURATION_BOUNDS`, then the total.
    pub duration_buckets: Vec<u64>,
    pub duration_sum: Duration,
}

impl MetricsSnapshot {
    pub fn duration_count(&self) -> u64 {
        self.duration_buckets.last().copied().unwrap_or(0)
    }
}

/// The counters of every queue this process used. A queue's counters outlive its deletion
/// (Prometheus counters never go down); `None` when the manager counts nothing.
pub struct Metrics {
    queues: Option<RwLock<HashMap<Arc<str>, Arc<QueueMetrics>>>>,
}

impl Metrics {
    pub fn new(enabled: bool) -> Self {
        Metrics {
            queues: enabled.then(|| RwLock::new(HashMap::new())),
        }
    }

    /// The counters of `queue` (made on first use); `None` when counting is off.
    pub fn of(&self, queue: &str) -> Option<Arc<QueueMetrics>> {
        let queues = self.queues.as_ref()?;
        if let Some(metrics) = queues.read().get(queue) {
            return Some(metrics.clone());
        }
        Some(queues.write().entry(Arc::from(queue)).or_default().clone())
    }

    pub fn snapshot(&self) -> Vec<(Arc<str>, MetricsSnapshot)> {
        let Some(queues) = &self.queues else {
            return Vec::new();
        };
        queues
            .read()
            .iter()
            .map(|(name, metrics)| (name.clone(), metrics.snapshot()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_land_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        let metrics = QueueMetrics::default();
        metrics.observe(50_000); // 50 µs
        metrics.observe(100_000); // exactly 100 µs: le="0.0001"
        metrics.observe(100_001);
        metrics.observe(700_000_000_000); // 700 s: above every bound
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.duration_buckets[0], 2);
        assert_eq!(snapshot.duration_buckets[1], 3);
        assert_eq!(snapshot.duration_buckets[20], 3);
        assert_eq!(snapshot.duration_count(), 4);
        assert_eq!(
            snapshot.duration_sum,
            Duration::from_nanos(50_000 + 100_000 + 100_001 + 700_000_000_000)
        );
    }

    #[test]
    fn counting_off_keeps_nothing() {
        let metrics = Metrics::new(false);
        assert!(metrics.of("q").is_none());
        assert!(metrics.snapshot().is_empty());
    }
}
