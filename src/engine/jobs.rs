//! Pushing jobs, and looking them up: get, list, retry, wait.

use crate::backend::Removal;
use crate::error::{QueueError, Result};
use crate::job::{now, validate_queue_name, Job, JobId, JobOptions, JobState, Payload, Timestamp};

use super::timers::TimerKey;
use super::{Engine, Pushed};

/// A commit for the commit thread: the ticket, and who hears how it went.
pub(super) type Commit = (u64, Box<dyn FnOnce(Result<()>) + Send>);

/// How a push may proceed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PushMode {
    /// Waits for locks and the store as long as needed.
    Wait,
    /// Never waits (the caller holds the Python GIL): `WouldBlock` instead.
    InPlace,
    /// `InPlace`, leaving the wait for the disk to a later `commit`.
    Uncommitted,
}

impl Engine {
    /// Validates and stores new jobs, all or none. With `may_block` false nothing waits for a
    /// lock: the caller gets `WouldBlock` and tries again where waiting is allowed.
    pub fn push(
        &self,
        queue: &str,
        specs: &[(Payload, JobOptions)],
        may_block: bool,
    ) -> Result<Pushed> {
        let mode = if may_block {
            PushMode::Wait
        } else {
            PushMode::InPlace
        };
        self.push_jobs(queue, specs, mode, None)
    }

    /// `push` in place, made durable later: `Uncommitted(ids, ticket)` once stored, and the
    /// push counts as acknowledged only after `commit(ticket)` (which may wait for the disk).
    /// `WouldBlock` where that cannot be done without waiting: push with `push` then.
    pub fn push_uncommitted(&self, queue: &str, specs: &[(Payload, JobOptions)]) -> Result<Pushed> {
        self.push_jobs(queue, specs, PushMode::Uncommitted, None)
    }

    /// Makes the jobs of an uncommitted push as durable as the store promises a push.
    pub fn commit(&self, ticket: u64) -> Result<()> {
        match self.backend.nonblocking() {
            Some(store) => store.commit(ticket),
            None => Ok(()),
        }
    }

    /// `commit` on the engine's commit thread, which hands the outcome to `done`: an event
    /// loop waits for the disk without giving a thread of its own to each wait.
    pub fn commit_in_background(
        &self,
        ticket: u64,
        done: impl FnOnce(Result<()>) + Send + 'static,
    ) -> Result<()> {
        self.check_open()?;
        let mut committer = self.committer.lock();
        if committer.is_none() {
            let (send, receive) = std::sync::mpsc::channel::<Commit>();
            let engine = self.this.clone();
            std::thread::Builder::new()
                .name("rnq-commit".into())
                .spawn(move || {
                    // Ends when the engine (and so the sender) is dropped.
                    for (ticket, done) in receive {
                        let outcome = match engine.upgrade() {
                            Some(engine) => engine.commit(ticket),
                            None => Err(QueueError::Closed),
                        };
                        done(outcome);
                    }
                })
                .map_err(|e| QueueError::Backend(format!("could not start a thread: {e}")))?;
            *committer = Some(send);
        }
        let sender = committer.as_ref().expect("just made");
        sender
            .send((ticket, Box::new(done)))
            .map_err(|_| QueueError::Closed)
    }

    /// `push`; with a cron tick, only if no process has pushed that tick yet.
    pub(super) fn push_jobs(
        &self,
        queue: &str,
        specs: &[(Payload, JobOptions)],
        mode: PushMode,
        tick: Option<(&str, Timestamp)>,
    ) -> Result<Pushed> {
        self.check_open()?;
        let may_block = mode == PushMode::Wait;
        if !may_block && self.backend.nonblocking().is_none() {
            // Every push to this store may wait (a round trip): the caller lets go of Python
            // first.
            validate_queue_name(queue)?;
            return Ok(Pushed::WouldBlock);
        }
        let entry = match self.queues.try_read() {
            Some(map) => map.get(queue).cloned(),
            None if may_block => self.queues.read().get(queue).cloned(),
            None => return Ok(Pushed::WouldBlock),
        };
        let entry = match entry {
            Some(entry) => entry,
            None if may_block => self.ensure_queue(queue)?,
            None => {
                validate_queue_name(queue)?;
                return Ok(Pushed::WouldBlock);
            }
        };
        let config = match entry.config.try_read() {
            Some(config) => config.clone(),
            None if may_block => entry.config.read().clone(),
            None => return Ok(Pushed::WouldBlock),
        };
        let mut jobs = Vec::with_capacity(specs.len());
        let mut earliest_due: Option<Timestamp> = None;
        let created_at = now();
        for (data, options) in specs {
            options.validate()?;
            let job = Job::created_at(
                created_at,
                entry.name.clone(),
                data.clone(),
                options.clone(),
                config.max_retries.saturating_add(1),
                config.timeout,
            );
            self.check_size(&job)?;
            if job.state == JobState::Delayed {
                let due = job.due_at();
                earliest_due = Some(earliest_due.map_or(due, |e| e.min(due)));
            }
            jobs.push(job);
        }
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        // A queue deleted meanwhile (here or by another process) is created again by the
        // backend, in the same step, with the settings this process has for it.
        let declare = || config.declaration();
        let pushed = match tick {
            Some((schedule, at)) => {
                let pushed =
                    self.backend
                        .push_tick(&entry.name, &mut jobs, schedule, at, &declare)?;
                Pushed::Done(if pushed { ids } else { Vec::new() })
            }
            None if may_block => {
                self.backend.push(&entry.name, &mut jobs, &declare)?;
                Pushed::Done(ids)
            }
            None => match (self.backend.nonblocking(), mode) {
                (Some(store), PushMode::Uncommitted) => {
                    match store.try_push_uncommitted(&entry.name, &mut jobs, &declare)? {
                        Some(ticket) => Pushed::Uncommitted(ids, ticket),
                        None => return Ok(Pushed::WouldBlock),
                    }
                }
                (Some(store), _) if store.try_push(&entry.name, &mut jobs, &declare)? => {
                    Pushed::Done(ids)
                }
                _ => return Ok(Pushed::WouldBlock),
            },
        };
        if let (Some(metrics), Pushed::Done(ids) | Pushed::Uncommitted(ids, _)) =
            (&entry.metrics, &pushed)
        {
            metrics.pushed(ids.len());
        }
        if let Some(due) = earliest_due {
            self.timers.arm(TimerKey::Queue(entry.name.clone()), due);
        }
        Ok(pushed)
    }

    pub(super) fn check_size(&self, job: &Job) -> Result<()> {
        let size = job.encoded_len();
        if size > self.options.max_job_bytes {
            return Err(QueueError::JobTooLarge {
                size,
                limit: self.options.max_job_bytes,
            });
        }
        Ok(())
    }

    pub fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.check_open()?;
        self.backend.get_job(id)
    }

    pub fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.check_open()?;
        validate_queue_name(queue)?;
        if offset > 0 && state.is_none() {
            // Pages run through one state's order; every state at once has no single order.
            return Err(QueueError::Config(
                "get_jobs: an offset needs a status (waiting, delayed, active, completed or \
                 failed)"
                    .into(),
            ));
        }
        match self.backend.list_jobs(queue, state, offset, limit) {
            // Deleted meanwhile: it holds no jobs.
            Err(QueueError::UnknownQueue(_)) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Removes a job that is not running; false if no job has this id. A running job stays
    /// (its run must have somewhere to report): a `QueueError` says so.
    pub fn delete_job(&self, id: JobId) -> Result<bool> {
        self.check_open()?;
        match self.backend.remove_job(id)? {
            Removal::Removed => {
                // A `join` may be waiting for just this job to go.
                self.finished.notify();
                Ok(true)
            }
            Removal::NotFound => Ok(false),
            Removal::Running => Err(QueueError::Other(format!(
                "job {id} is running: it can be deleted once its run ends"
            ))),
        }
    }

    pub fn retry_job(&self, id: JobId) -> Result<bool> {
        self.check_open()?;
        self.backend.retry_failed(id)
    }
}
