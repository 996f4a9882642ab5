//! The heartbeat of a process that runs handlers: its description (host, pid, queues,
//! concurrency, jobs running) in the backend's registry of live workers, renewed by the timer
//! thread, so that operators can list the worker processes (`rnode-queue workers`) of a shared
//! backend. Informational only: leases, not heartbeats, recover the jobs of a dead process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::timers::TimerKey;
use super::Engine;
use crate::error::Result;
use crate::job::{now, Payload, Timestamp};
use crate::sync::Mutex;

/// How often a worker process renews its entry.
pub const HEARTBEAT_EVERY: f64 = 5.0;
/// An entry not renewed for this long is no longer listed (three beats missed).
pub const HEARTBEAT_TTL: f64 = 15.0;

/// A worker process as the registry lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    pub concurrency: BTreeMap<String, usize>,
    /// Handlers running at the last beat.
    pub running: u64,
    pub started_at: Timestamp,
    pub last_seen: Timestamp,
}

/// This process's registry entry, once it runs handlers.
#[derive(Default)]
pub(super) struct Heartbeat {
    /// The id and start time, from the first `process`.
    started: Mutex<Option<(String, Timestamp)>>,
}

impl Engine {
    /// Lists this process as a worker (from its first handler on), at once and then every
    /// `HEARTBEAT_EVERY` on the timer thread. Each new handler beats at once: the listing
    /// shows its queue without waiting for the next beat.
    pub(super) fn start_heartbeat(&self) {
        let mut started = self.heartbeat.started.lock();
        if started.is_none() {
            let id = format!(
                "{}:{}:{}",
                host_name(),
                std::process::id(),
                fastrand::u32(..)
            );
            *started = Some((id, now()));
        }
        self.timers.arm(TimerKey::Heartbeat, now());
    }

    /// The timer's beat: renews the entry and arms the next one.
    pub(super) fn beat(&self) {
        let Some((id, started_at)) = self.heartbeat.started.lock().clone() else {
            return;
        };
        let info = self.describe_worker(id.clone(), started_at);
        let payload = Payload::from(serde_json::to_vec(&info).unwrap_or_default());
        if let Err(error) = self.backend.beat(&id, &payload, HEARTBEAT_TTL) {
            // The workers log the backend's outage themselves; this only costs the listing.
            log::debug!(target: "rnode_queue", "worker heartbeat not recorded: {error}");
        }
        if self.heartbeat.started.lock().is_none() {
            // `close` took this process off while the beat was on its way: off again.
            if let Err(error) = self.backend.leave(&id) {
                log::debug!(target: "rnode_queue", "worker {id} not taken off again: {error}");
            }
        }
        self.timers
            .arm(TimerKey::Heartbeat, now() + HEARTBEAT_EVERY);
    }

    fn describe_worker(&self, id: String, started_at: Timestamp) -> WorkerInfo {
        let pools = self.pools.lock();
        let mut queues: Vec<String> = pools.keys().map(|name| name.to_string()).collect();
        queues.sort();
        WorkerInfo {
            id,
            host: host_name(),
            pid: std::process::id(),
            queues,
            concurrency: pools
                .iter()
                .map(|(name, pool)| (name.to_string(), pool.concurrency()))
                .collect(),
            running: pools.values().map(|pool| pool.running() as u64).sum(),
            started_at,
            last_seen: now(),
        }
    }

    /// Takes this process off the registry (at close).
    pub(super) fn stop_heartbeat(&self) {
        let Some((id, _)) = self.heartbeat.started.lock().take() else {
            return;
        };
        if let Err(error) = self.backend.leave(&id) {
            log::debug!(
                target: "rnode_queue",
                "worker {id} not taken off the registry ({error}); it drops out in {HEARTBEAT_TTL} s"
            );
        }
    }

    /// The live worker processes of the backend (entries this version cannot read are skipped).
    pub fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.check_open()?;
        let mut workers: Vec<WorkerInfo> = self
            .backend
            .workers()?
            .iter()
            .filter_map(|info| serde_json::from_slice(info).ok())
            .collect();
        workers.sort_by(|a, b| (&a.host, a.pid, &a.id).cmp(&(&b.host, b.pid, &b.id)));
        Ok(workers)
    }
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // fails.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..end]) {
        Ok(name) if ok && !name.is_empty() => name.to_string(),
        _ => "unknown".to_string(),
    }
}
