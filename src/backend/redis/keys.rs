//! The key layout. Per queue, all keys share the hash tag `{queue}` (one Cluster slot); what
//! each holds, and how a job moves through them, is described once, in `lua/common.lua` (the
//! scripts are what reads and writes them). The keys the scripts take, in order: `jobs`,
//! `delayed`, `leases`, `completed`, `failed`, `meta`, `wake`, and the queue's key prefix, from
//! which they derive the others (`w<priority>`, `active:<token>`, `hist`, `err`, `tb`, `fin`,
//! `ticks`, `forwarded`).
//!
//! Global keys: `queues` (set of names), `schedules` (hash), and the worker-process registry in
//! its own slot, `{workers}:leases` (tokens by expiry) and `{workers}:queues:<token>`, with the
//! heartbeats operators see: `{workers}:beats` (ids by expiry) and `{workers}:info` (hash).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::job::JobId;
use crate::sync::{Condvar, Mutex};

use super::combine::Combiner;
use super::connection::Conn;

/// Indices into `RedisQueue::keys`, in the order the scripts take them.
pub(super) const WAKE: usize = 6;
pub(super) const BASE: usize = 7;

/// What this process knows about one queue.
pub(super) struct RedisQueue {
    pub name: Arc<str>,
    /// jobs, delayed, leases, completed, failed, meta, wake, and the key prefix itself.
    pub keys: [String; 8],
    /// Jobs this process holds a lease on, with the run it holds.
    pub held: Mutex<HashMap<JobId, u32>>,
    /// This process registered (in the worker registry) that it leases jobs here.
    pub registered: AtomicBool,
    /// Its layout was checked (and converted from an older one if need be) in this process.
    pub layout_checked: AtomicBool,
    /// A fetch or settle whose reply never came may have left jobs leased here that this
    /// process does not know of: its lease is renewed (which takes them back) until none remain.
    pub unsure: AtomicBool,
    pub listen: Mutex<Listen>,
    pub heard: Condvar,
    /// Cluster mode: the connection this queue's listener blocks on, kept between waits.
    pub blocking: Mutex<Option<Conn>>,
    /// Small pushes from many threads, sent together (see `combine.rs`).
    pub combiner: Combiner,
}

/// Wake-ups of the workers of one queue: a generation bumped by whoever hears one.
#[derive(Default)]
pub(super) struct Listen {
    /// Cluster mode: a thread of this process is blocked on the queue's wake list.
    pub listening: bool,
    /// Bumped at each wake-up.
    pub generation: u64,
}

impl RedisQueue {
    pub fn new(prefix: &str, name: &str) -> Self {
        let base = format!("{prefix}:{{{}}}:", hash_tag(name));
        let key = |suffix: &str| format!("{base}{suffix}");
        RedisQueue {
            name: Arc::from(name),
            keys: [
                key("jobs"),
                key("delayed"),
                key("leases"),
                key("completed"),
                key("failed"),
                key("meta"),
                key("wake"),
                base.clone(),
            ],
            held: Mutex::new(HashMap::new()),
            registered: AtomicBool::new(false),
            layout_checked: AtomicBool::new(false),
            unsure: AtomicBool::new(false),
            listen: Mutex::new(Listen::default()),
            heard: Condvar::new(),
            blocking: Mutex::new(None),
            combiner: Combiner::default(),
        }
    }

    /// The hash of the queue's job bodies, by id.
    pub fn jobs_key(&self) -> &str {
        &self.keys[0]
    }

    /// The wake list of this queue's idle workers.
    pub fn wake_key(&self) -> &str {
        &self.keys[WAKE]
    }

    /// Cluster mode: a process's own wake list for this queue (same slot), for a stop.
    pub fn own_wake_key(&self, token: &str) -> String {
        format!("{}wake:{token}", self.keys[BASE])
    }

    /// Bumps the generation and wakes the waiters.
    pub fn heard(&self) {
        let mut listen = self.listen.lock();
        listen.generation += 1;
        self.heard.notify_all();
    }
}

/// The hash tag of a queue: its name, unless braces in it would end the tag early (then `#`
/// and its bytes in hex, as for a name that starts with `#`, so no two names share a tag), so
/// that all keys of a queue land in one Cluster slot.
pub(super) fn hash_tag(name: &str) -> String {
    if name.contains(['{', '}']) || name.starts_with('#') {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("#{hex}")
    } else {
        name.to_string()
    }
}

/// Keys outside any queue.
pub(super) struct GlobalKeys {
    pub queues: String,
    pub schedules: String,
    /// The worker registry: its sorted set, its sweep lock, the prefix of its queue sets.
    pub workers: [String; 2],
    pub worker_queues: String,
    /// The heartbeats of worker processes: their expiry (sorted set) and descriptions (hash).
    pub beats: [String; 2],
    /// This process's own wake list (single-node mode), for the shared listener.
    pub own_wake: String,
}

impl GlobalKeys {
    pub fn new(prefix: &str, token: &str) -> Self {
        GlobalKeys {
            queues: format!("{prefix}:queues"),
            schedules: format!("{prefix}:schedules"),
            workers: [
                format!("{prefix}:{{workers}}:leases"),
                format!("{prefix}:{{workers}}:sweeper"),
            ],
            worker_queues: format!("{prefix}:{{workers}}:queues:"),
            beats: [
                format!("{prefix}:{{workers}}:beats"),
                format!("{prefix}:{{workers}}:info"),
            ],
            own_wake: format!("{prefix}:{{workers}}:wake:{token}"),
        }
    }
}
