//! A memory queue: its waiting lanes, delayed jobs by due time, job store and retention lists,
//! behind one lock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use crate::backend::{QueueCounts, QueueDeclaration, Retention};
use crate::job::{IdMap, Job, JobId, JobState, MaybeTime, Priority, Timestamp};
use crate::sync::{Condvar, Mutex, MutexGuard};

/// Waiting jobs: one FIFO lane per priority, the highest served first. Pushing and popping are
/// O(1) and sequential in memory, unlike a heap over a million entries.
#[derive(Default)]
pub(super) struct Lanes {
    pub(super) lanes: [VecDeque<(u64, JobId)>; 4],
}

impl Lanes {
    pub(super) fn lane(priority: Priority) -> usize {
        priority as usize / 5
    }

    pub(super) fn push_back(&mut self, priority: Priority, seq: u64, id: JobId) {
        self.lanes[Self::lane(priority)].push_back((seq, id));
    }

    /// For a job handed back unrun: it goes back to the head of its lane.
    pub(super) fn push_front(&mut self, priority: Priority, seq: u64, id: JobId) {
        self.lanes[Self::lane(priority)].push_front((seq, id));
    }

    pub(super) fn pop(&mut self) -> Option<(u64, JobId)> {
        self.lanes.iter_mut().rev().find_map(VecDeque::pop_front)
    }

    pub(super) fn clear(&mut self) {
        self.lanes.iter_mut().for_each(VecDeque::clear);
    }
}

/// A delayed job's place: its due time, then its sequence (FIFO among jobs due together).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) struct Due {
    pub(super) at: Timestamp,
    pub(super) seq: u64,
}

impl Eq for Due {}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .total_cmp(&other.at)
            .then_with(|| self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The lanes may hold entries that went stale (a cleared or moved job); an entry counts only if
/// the stored job is still in the state and place the entry describes. The delayed jobs and the
/// active set are exact: listing them never walks past what it returns.
pub(super) struct QueueState {
    /// Boxed: the table moves small entries when it grows, and stays dense when mostly empty.
    pub(super) jobs: IdMap<Box<Job>>,
    pub(super) waiting: Lanes,
    pub(super) delayed: BTreeMap<Due, JobId>,
    /// The jobs taken by a worker (few: at most the workers' batches).
    pub(super) active: IdMap<()>,
    pub(super) waiting_count: u64,
    pub(super) delayed_count: u64,
    pub(super) active_count: u64,
    pub(super) completed: VecDeque<(Timestamp, JobId)>,
    pub(super) failed: VecDeque<(Timestamp, JobId)>,
    pub(super) completed_total: u64,
    pub(super) failed_total: u64,
    pub(super) paused: bool,
    pub(super) next_seq: u64,
    /// Workers blocked in `fetch`, so pushes skip the notify when nobody listens.
    pub(super) fetchers_waiting: usize,
    pub(super) retention: Retention,
    /// The engine's settings, kept for `stored_declarations`.
    pub(super) declaration: QueueDeclaration,
}

impl QueueState {
    pub(super) fn new(declaration: QueueDeclaration) -> Self {
        QueueState {
            jobs: IdMap::default(),
            waiting: Lanes::default(),
            delayed: BTreeMap::new(),
            active: IdMap::default(),
            waiting_count: 0,
            delayed_count: 0,
            active_count: 0,
            completed: VecDeque::new(),
            failed: VecDeque::new(),
            completed_total: 0,
            failed_total: 0,
            paused: false,
            next_seq: 0,
            fetchers_waiting: 0,
            retention: declaration.retention,
            declaration,
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn insert(&mut self, mut job: Job) {
        if job.seq == 0 {
            job.seq = self.next_seq();
        }
        match job.state {
            JobState::Delayed => {
                let due = Due {
                    at: job.due_at(),
                    seq: job.seq,
                };
                self.delayed.insert(due, job.id);
                self.delayed_count += 1;
            }
            _ => {
                job.state = JobState::Waiting;
                self.waiting.push_back(job.priority, job.seq, job.id);
                self.waiting_count += 1;
            }
        }
        self.jobs.insert(job.id, Box::new(job));
    }

    /// Pops the next live waiting job and marks it active.
    pub(super) fn take_next(&mut self, started_at: Timestamp) -> Option<Job> {
        while let Some((seq, id)) = self.waiting.pop() {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state != JobState::Waiting || job.seq != seq {
                continue;
            }
            job.state = JobState::Active;
            job.attempts += 1;
            job.started_at = MaybeTime::from(Some(started_at));
            self.waiting_count -= 1;
            self.active_count += 1;
            self.active.insert(id, ());
            return Some((**job).clone());
        }
        None
    }

    /// Due delayed jobs become waiting, at the back of their priority (as if pushed now, so
    /// that a job handed back later never jumps ahead of jobs that waited before it).
    pub(super) fn promote_due(&mut self, now: Timestamp) -> usize {
        let mut promoted = 0;
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().at > now {
                break;
            }
            let id = entry.remove();
            let seq = self.next_seq();
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            job.state = JobState::Waiting;
            job.seq = seq;
            self.delayed_count -= 1;
            self.waiting_count += 1;
            self.waiting.push_back(job.priority, seq, id);
            promoted += 1;
        }
        promoted
    }

    /// Drops finished jobs beyond the retention count or age.
    pub(super) fn expire(&mut self, now: Timestamp) {
        let cutoff = now - self.retention.ttl;
        let keep_completed = self.retention.keep_completed;
        let keep_failed = self.retention.keep_failed;
        for (list, keep, state) in [
            (&mut self.completed, keep_completed, JobState::Completed),
            (&mut self.failed, keep_failed, JobState::Failed),
        ] {
            while let Some(&(at, id)) = list.front() {
                if list.len() <= keep && at > cutoff {
                    break;
                }
                list.pop_front();
                // The job may have moved on (a retried failure): only drop it if it has not.
                if let Some(job) = self.jobs.remove(&id) {
                    if job.state != state || job.finished_at.get() != Some(at) {
                        self.jobs.insert(id, job);
                    }
                }
            }
        }
    }

    pub(super) fn next_event(&self) -> Option<Timestamp> {
        let ttl = self.retention.ttl;
        [
            self.delayed.first_key_value().map(|(due, _)| due.at),
            self.completed.front().map(|(at, _)| at + ttl),
            self.failed.front().map(|(at, _)| at + ttl),
        ]
        .into_iter()
        .flatten()
        .min_by(f64::total_cmp)
    }

    pub(super) fn is_idle(&self) -> bool {
        self.waiting_count == 0 && self.delayed_count == 0 && self.active_count == 0
    }

    pub(super) fn counts(&self) -> QueueCounts {
        QueueCounts {
            waiting: self.waiting_count,
            delayed: self.delayed_count,
            active: self.active_count,
            completed: self.completed_total,
            failed: self.failed_total,
            paused: self.paused,
        }
    }
}

pub(super) struct MemoryQueue {
    pub(super) state: Mutex<QueueState>,
    /// Signalled when jobs become waiting (or on `wake`), for workers blocked in `fetch`.
    pub(super) ready: Condvar,
}

impl MemoryQueue {
    pub(super) fn notify_fetchers(&self, state: &QueueState, count: usize) {
        if state.fetchers_waiting == 0 || state.paused {
            return;
        }
        if count == 1 {
            self.ready.notify_one();
        } else {
            self.ready.notify_all();
        }
    }
}

pub(super) fn lock_state(
    queue: &MemoryQueue,
    may_block: bool,
) -> Option<MutexGuard<'_, QueueState>> {
    if may_block {
        Some(queue.state.lock())
    } else {
        queue.state.try_lock()
    }
}
