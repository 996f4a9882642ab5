//! A memory queue: its waiting lanes, delayed jobs by due time, job store and retention lists,
//! behind one lock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use crate::backend::{Ack, QueueCounts, QueueDeclaration, Retention, Settlement};
use crate::job::{IdMap, Job, JobId, JobState, MaybeTime, Priority, Timestamp};
use crate::sync::{Condvar, Mutex, MutexGuard};

/// The error a run keeps when its process gave it up (it ended, or closed, before the run did).
pub(super) const RUN_LOST: &str =
    "WorkerLost: the run was lost: the process running it ended before the run did";

/// Runs settled, by outcome, for the backend's totals.
#[derive(Default)]
pub(super) struct Settled {
    pub(super) processed: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
}

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
    /// Removed from the backend: a push that found it before then looks again.
    pub(super) deleted: bool,
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
            deleted: false,
        }
    }

    pub(super) fn declare(&mut self, declaration: QueueDeclaration) {
        self.retention = declaration.retention;
        self.declaration = declaration;
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Stores a job in the place its state gives it (pushed jobs are waiting or delayed; a
    /// compacted log holds jobs in every state). A job read back from a log keeps its place.
    pub(super) fn insert(&mut self, mut job: Job) {
        if job.seq == 0 {
            job.seq = self.next_seq();
        } else {
            self.next_seq = self.next_seq.max(job.seq);
        }
        match job.state {
            JobState::Waiting => {
                self.waiting.push_back(job.priority, job.seq, job.id);
                self.waiting_count += 1;
            }
            JobState::Delayed => {
                let due = Due {
                    at: job.due_at(),
                    seq: job.seq,
                };
                self.delayed.insert(due, job.id);
                self.delayed_count += 1;
            }
            JobState::Active => {
                self.active.insert(job.id, ());
                self.active_count += 1;
            }
            JobState::Completed | JobState::Failed => {
                let at = job.finished_at.get().unwrap_or(job.created_at);
                let list = if job.state == JobState::Completed {
                    &mut self.completed
                } else {
                    &mut self.failed
                };
                list.push_back((at, job.id));
            }
        }
        self.jobs.insert(job.id, Box::new(job));
    }

    /// Removes a job from the store and from the counts of its state (its entries in the
    /// lanes and retention lists go stale and are skipped).
    pub(super) fn remove(&mut self, id: &JobId) -> Option<Box<Job>> {
        let job = self.jobs.remove(id)?;
        match job.state {
            JobState::Waiting => self.waiting_count -= 1,
            JobState::Delayed => {
                self.delayed.remove(&Due {
                    at: job.due_at(),
                    seq: job.seq,
                });
                self.delayed_count -= 1;
            }
            JobState::Active => {
                self.active.remove(id);
                self.active_count -= 1;
            }
            JobState::Completed | JobState::Failed => {}
        }
        Some(job)
    }

    /// Marks taken jobs active, as a fetch did (for a log read back: the fetch's choice is
    /// known). A job that is not waiting or delayed any more is left alone.
    pub(super) fn claim(&mut self, runs: &[(JobId, u32)], at: Timestamp) {
        for &(id, attempt) in runs {
            if !self
                .jobs
                .get(&id)
                .is_some_and(|job| matches!(job.state, JobState::Waiting | JobState::Delayed))
            {
                continue;
            }
            let mut job = self.remove(&id).expect("present");
            job.state = JobState::Active;
            job.attempts = attempt;
            job.started_at = MaybeTime::from(Some(at));
            self.active.insert(id, ());
            self.active_count += 1;
            self.jobs.insert(id, job);
        }
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

    /// Records how runs ended. An ack for a run that is not the job's current one is ignored.
    pub(super) fn settle(&mut self, acks: impl IntoIterator<Item = Ack>) -> Settled {
        let mut settled = Settled::default();
        for ack in acks {
            let Some(job) = self.jobs.get_mut(&ack.id) else {
                continue;
            };
            if job.state != JobState::Active || job.attempts != ack.attempt {
                continue;
            }
            let id = ack.id;
            match ack.settlement {
                Settlement::Completed { result } => {
                    job.state = JobState::Completed;
                    job.finished_at = Some(ack.at).into();
                    // Most jobs return nothing and never failed: no extras to allocate.
                    if result.is_some() || job.extras.is_some() {
                        let extras = job.extras_mut();
                        extras.result = result;
                        extras.error = None;
                        extras.traceback = None;
                    }
                    self.completed.push_back((ack.at, id));
                    self.completed_total += 1;
                    settled.processed += 1;
                }
                Settlement::Retry {
                    due,
                    error,
                    traceback,
                } => {
                    let extras = job.extras_mut();
                    extras.error = Some(error);
                    extras.traceback = traceback;
                    job.scheduled_at = Some(due).into();
                    job.state = JobState::Delayed;
                    // A retry queues behind the jobs pushed meanwhile.
                    let seq = self.next_seq();
                    let job = self.jobs.get_mut(&id).expect("present");
                    job.seq = seq;
                    self.delayed.insert(Due { at: due, seq }, id);
                    self.delayed_count += 1;
                    settled.retried += 1;
                }
                Settlement::Failed { error, traceback } => {
                    self.fail(id, ack.at, error, traceback);
                    settled.failed += 1;
                }
            }
            self.active_count -= 1;
            self.active.remove(&id);
        }
        settled
    }

    fn fail(&mut self, id: JobId, at: Timestamp, error: String, traceback: Option<String>) {
        let job = self.jobs.get_mut(&id).expect("present");
        job.state = JobState::Failed;
        let extras = job.extras_mut();
        extras.error = Some(error);
        extras.traceback = traceback;
        job.finished_at = Some(at).into();
        self.failed.push_back((at, id));
        self.failed_total += 1;
    }

    /// Taken jobs back to waiting unstarted, in their old place, the attempt not counted.
    /// Returns how many went back.
    pub(super) fn release(&mut self, runs: &[(JobId, u32)]) -> usize {
        let mut returned: Vec<(u64, JobId)> = runs
            .iter()
            .filter_map(|&(id, attempt)| {
                let job = self.jobs.get(&id)?;
                (job.state == JobState::Active && job.attempts == attempt).then_some((job.seq, id))
            })
            .collect();
        // Latest first, each to the head of its lane: the lanes keep their FIFO order.
        returned.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        for &(seq, id) in &returned {
            let job = self.jobs.get_mut(&id).expect("present");
            job.state = JobState::Waiting;
            job.attempts -= 1;
            job.started_at = MaybeTime::NONE;
            let priority = job.priority;
            self.waiting.push_front(priority, seq, id);
            self.active.remove(&id);
            self.active_count -= 1;
            self.waiting_count += 1;
        }
        returned.len()
    }

    /// Runs given up on: waiting again at the head of their lane with the run counted, or
    /// failed when that was the last attempt. Returns the jobs given up on.
    pub(super) fn lose(&mut self, runs: &[(JobId, u32)], at: Timestamp) -> Vec<JobId> {
        let mut lost = Vec::new();
        for &(id, attempt) in runs {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if job.state != JobState::Active || job.attempts != attempt {
                continue;
            }
            if job.attempts < job.max_attempts {
                job.state = JobState::Waiting;
                job.started_at = MaybeTime::NONE;
                job.extras_mut().error = Some(RUN_LOST.to_string());
                let (priority, seq) = (job.priority, job.seq);
                self.waiting.push_front(priority, seq, id);
                self.waiting_count += 1;
            } else {
                self.fail(id, at, RUN_LOST.to_string(), None);
            }
            self.active.remove(&id);
            self.active_count -= 1;
            lost.push(id);
        }
        lost
    }

    /// A failed job back to waiting with its attempts reset; false if it is not failed.
    pub(super) fn retry_failed(&mut self, id: JobId) -> bool {
        if !self
            .jobs
            .get(&id)
            .is_some_and(|job| job.state == JobState::Failed)
        {
            return false;
        }
        let mut job = self.jobs.remove(&id).expect("present");
        job.attempts = 0;
        job.started_at = MaybeTime::NONE;
        job.scheduled_at = MaybeTime::NONE;
        job.seq = 0;
        job.finished_at = MaybeTime::NONE;
        job.state = JobState::Waiting;
        // Rare (a manual retry): an O(n) removal keeps the retention list exact.
        self.failed.retain(|(_, failed)| *failed != id);
        self.insert(*job);
        true
    }

    /// Removes waiting and delayed jobs; returns how many.
    pub(super) fn clear(&mut self) -> usize {
        let before = self.jobs.len();
        self.jobs
            .retain(|_, job| !matches!(job.state, JobState::Waiting | JobState::Delayed));
        self.waiting.clear();
        self.delayed.clear();
        self.waiting_count = 0;
        self.delayed_count = 0;
        before - self.jobs.len()
    }

    /// Up to `limit` jobs of one state (or all), each state in run order, after the first
    /// `offset`: skipped ones are only counted, and no more entries are touched than needed
    /// (this holds the queue's lock).
    pub(super) fn list(&self, state: Option<JobState>, offset: usize, limit: usize) -> Vec<Job> {
        let mut page = Page {
            skip: offset,
            limit,
            jobs: Vec::new(),
        };
        let wanted = |s: JobState| state.is_none_or(|w| w == s);
        if wanted(JobState::Active) {
            let mut active: Vec<&Job> = self
                .active
                .keys()
                .filter_map(|id| self.jobs.get(id).map(|job| &**job))
                .collect();
            active.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
            page.take(active.into_iter());
        }
        if wanted(JobState::Waiting) {
            let live = self
                .waiting
                .lanes
                .iter()
                .rev()
                .flatten()
                .filter_map(|(seq, id)| {
                    let job = self.jobs.get(id)?;
                    (job.state == JobState::Waiting && job.seq == *seq).then_some(&**job)
                });
            page.take(live);
        }
        if wanted(JobState::Delayed) {
            page.take(
                self.delayed
                    .values()
                    .filter_map(|id| self.jobs.get(id).map(|j| &**j)),
            );
        }
        for (list, finished) in [
            (&self.completed, JobState::Completed),
            (&self.failed, JobState::Failed),
        ] {
            if !wanted(finished) {
                continue;
            }
            // Newest first; skip entries whose job has moved on.
            let live = list.iter().rev().filter_map(|(at, id)| {
                let job = self.jobs.get(id)?;
                (job.state == finished && job.finished_at.get() == Some(*at)).then_some(&**job)
            });
            page.take(live);
        }
        page.jobs
    }

    /// Every job, in an order that `insert` puts back in the same places: active, the lanes
    /// front to back, delayed, then the retention lists oldest first.
    pub(super) fn in_place_order(&self) -> Vec<Job> {
        let mut jobs = self.list(Some(JobState::Active), 0, usize::MAX);
        let mut waiting = self.list(Some(JobState::Waiting), 0, usize::MAX);
        waiting.sort_by_key(|job| job.seq);
        jobs.extend(waiting);
        jobs.extend(self.list(Some(JobState::Delayed), 0, usize::MAX));
        for finished in [JobState::Completed, JobState::Failed] {
            let mut done = self.list(Some(finished), 0, usize::MAX);
            done.reverse();
            jobs.extend(done);
        }
        jobs
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
    pub(super) fn new(declaration: QueueDeclaration) -> Self {
        MemoryQueue {
            state: Mutex::new(QueueState::new(declaration)),
            ready: Condvar::new(),
        }
    }

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

/// A page of a listing: the first `skip` jobs are passed over (counted, not copied), then up
/// to `limit` are kept.
struct Page {
    skip: usize,
    limit: usize,
    jobs: Vec<Job>,
}

impl Page {
    fn take<'a>(&mut self, jobs: impl Iterator<Item = &'a Job>) {
        for job in jobs {
            if self.jobs.len() >= self.limit {
                return;
            }
            if self.skip > 0 {
                self.skip -= 1;
            } else {
                self.jobs.push(job.clone());
            }
        }
    }
}
