//! The worker pool: dispatcher threads that take jobs from a backend in batches, run them through
//! an `Executor` (the Python handler, in `py/`), and settle the results; plus the watchdog that
//! abandons sync runs past their timeout.
//!
//! Nothing here knows about Python. An executor enters its thread once (Python attaches once, so
//! the thread keeps its state) and hands the loop a `Session`; every wait in the loop goes
//! through `Session::unlocked` (Python: the GIL released).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};

use crate::backend::FetchRequest;
use crate::error::QueueError;
use crate::job::{IdMap, Job, JobId, Payload};
use crate::manager::Engine;

/// Jobs taken per fetch at most: one GIL acquisition runs up to this many handlers.
pub const MAX_BATCH: usize = 256;
/// A sync worker takes as many jobs as it runs in about this long: enough to amortise the
/// fetch and the GIL hand-over for fast handlers, short enough that results are recorded,
/// and pauses and higher priorities honoured, within about this delay.
const BATCH_BUDGET: Duration = Duration::from_millis(1);
/// Idle workers are woken by a push or a stop; this bound only makes them look at their stop
/// flag now and then should a wake-up ever be missed.
const FETCH_WAIT: Duration = Duration::from_secs(10);

/// How one run of a handler ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Success(Option<Payload>),
    Failure {
        error: String,
        traceback: Option<String>,
    },
    TimedOut,
}

impl RunOutcome {
    pub fn from_panic(panic: Box<dyn Any + Send>) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        RunOutcome::Failure {
            error: format!("PanicException: {text}"),
            traceback: None,
        }
    }
}

/// Where handlers run: Python, or a plain closure in Rust tests.
pub trait Executor: Send + Sync + 'static {
    /// Async executors get batches through `Session::submit`; sync ones run jobs one by one.
    fn is_async(&self) -> bool;
    /// Runs `body` on the current thread, inside whatever context the handler needs.
    fn enter(&self, body: &mut dyn FnMut(&mut dyn Session));
}

pub trait Session {
    /// Runs `f` outside the handler's context (Python: without the GIL). Every wait goes here.
    fn unlocked(&mut self, f: &mut (dyn FnMut() + Send));
    /// Runs one job's handler to its end (sync executors).
    fn run(&mut self, job: &Job) -> RunOutcome;
    /// Starts jobs that will report through their `Completion` (async executors). Must not block.
    fn submit(&mut self, jobs: Vec<(Job, Completion)>);
}

/// A fetched batch. Workers claim its jobs one at a time with `fetch_add`; the watchdog (or a
/// stop) takes the unstarted rest with `swap`, so each job goes exactly one way.
pub struct Batch {
    pub jobs: Vec<Job>,
    next: AtomicUsize,
}

impl Batch {
    pub fn new(jobs: Vec<Job>) -> Self {
        Batch {
            jobs,
            next: AtomicUsize::new(0),
        }
    }

    fn claim(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        (i < self.jobs.len()).then_some(i)
    }

    /// The jobs nobody has started; afterwards `claim` finds nothing.
    pub fn take_rest(&self) -> &[Job] {
        let i = self.next.swap(self.jobs.len(), Ordering::AcqRel);
        &self.jobs[i.min(self.jobs.len())..]
    }
}

const IDLE: u64 = 0;
const RUNNING: u64 = 1;
const ABANDONED: u64 = 2;

/// One worker thread's run state, shared with the watchdog. `state` packs a run counter with
/// IDLE/RUNNING/ABANDONED so that a watchdog decision about an old run can never hit a new one.
pub struct Slot {
    state: AtomicU64,
    /// Nanoseconds since the engine's epoch; 0 = no deadline.
    deadline: AtomicU64,
    current: AtomicUsize,
    /// When the current run began, in nanoseconds since the engine's epoch.
    started: AtomicU64,
    /// The last run (counter of `state`) reported to the backend as started.
    marked_run: AtomicU64,
    work: Mutex<SlotWork>,
}

/// A worker's current batch and its runs that ended but are not settled yet (indices into the
/// batch). One lock for both, so that whoever settles them pairs each index with its batch: the
/// worker at the end of its batch, or the timer when the worker is stuck on a long job.
#[derive(Default)]
struct SlotWork {
    batch: Option<Arc<Batch>>,
    finished: Vec<(usize, RunOutcome)>,
}

/// Ended runs taken from a worker, with the batch their indices point into.
type EndedRuns = (Arc<Batch>, Vec<(usize, RunOutcome)>);

impl SlotWork {
    /// Takes the ended runs, paired with their jobs, for `Engine::settle`.
    fn take_finished(&mut self) -> Option<EndedRuns> {
        if self.finished.is_empty() {
            return None;
        }
        let batch = self.batch.clone()?;
        Some((batch, std::mem::take(&mut self.finished)))
    }
}

fn settle_finished(engine: &Engine, queue: &str, taken: Option<EndedRuns>) {
    if let Some((batch, finished)) = taken {
        let runs = finished
            .into_iter()
            .map(|(i, outcome)| (&batch.jobs[i], outcome));
        engine.settle(queue, runs);
    }
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicU64::new(IDLE),
            deadline: AtomicU64::new(0),
            current: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            marked_run: AtomicU64::new(0),
            work: Mutex::new(SlotWork::default()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) & 3 == RUNNING
    }

    /// Marks the run of `batch.jobs[index]` as begun. The caller then tells the watchdog its
    /// deadline (`Engine::watch_deadline`), which loads the watchdog's next wake-up: the fence
    /// orders this store before that load (see `Engine::check_timeouts` for the other side).
    fn begin(&self, index: usize, now: u64, deadline: u64) -> u64 {
        let run = (self.state.load(Ordering::Relaxed) >> 2) + 1;
        self.current.store(index, Ordering::Relaxed);
        self.started.store(now, Ordering::Relaxed);
        self.deadline.store(deadline, Ordering::Relaxed);
        self.state.store(run << 2 | RUNNING, Ordering::Release);
        fence(Ordering::SeqCst);
        run
    }

    /// False if the watchdog abandoned this run meanwhile.
    fn end(&self, run: u64) -> bool {
        self.state
            .compare_exchange(
                run << 2 | RUNNING,
                run << 2 | IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// If the current run is past its deadline, marks it abandoned, counts it in `stuck`, and
    /// returns the batch and the job's index in it.
    fn abandon_if_late(&self, now: u64, stuck: &AtomicUsize) -> Option<(Arc<Batch>, usize)> {
        let state = self.state.load(Ordering::Acquire);
        if state & 3 != RUNNING {
            return None;
        }
        let deadline = self.deadline.load(Ordering::Acquire);
        let index = self.current.load(Ordering::Acquire);
        if deadline == 0 || now < deadline {
            return None;
        }
        let batch = self.work.lock().batch.clone()?;
        // Counted before the switch: the worker may return and uncount itself right after it.
        stuck.fetch_add(1, Ordering::AcqRel);
        let abandoned = self.state.compare_exchange(
            state,
            (state & !3) | ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if abandoned.is_err() {
            stuck.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some((batch, index))
    }

    /// Records an ended run; waits for the lock (rarely held: only by the watchdog) unlocked.
    fn record(&self, session: &mut dyn Session, index: usize, outcome: RunOutcome) {
        match self.work.try_lock() {
            Some(mut work) => work.finished.push((index, outcome)),
            None => {
                let mut outcome = Some(outcome);
                session.unlocked(&mut || {
                    if let Some(outcome) = outcome.take() {
                        self.work.lock().finished.push((index, outcome));
                    }
                });
            }
        }
    }

    fn deadline_if_running(&self) -> Option<u64> {
        let deadline = self.deadline.load(Ordering::Acquire);
        (self.is_running() && deadline > 0).then_some(deadline)
    }

    /// The job this slot is running, with its attempt.
    fn running_job(&self) -> Option<(JobId, u32)> {
        if !self.is_running() {
            return None;
        }
        let index = self.current.load(Ordering::Acquire);
        let batch = self.work.lock().batch.clone()?;
        batch.jobs.get(index).map(|job| (job.id, job.attempts))
    }

    /// The running job, if it was not reported as started yet.
    fn unmarked_start(&self) -> Option<(JobId, u32)> {
        let run = self.state.load(Ordering::Acquire) >> 2;
        if self.marked_run.swap(run, Ordering::AcqRel) == run {
            return None;
        }
        self.running_job()
    }
}

/// Reports one async run. Dropping it unused reports a failure, so a job is never left active.
pub struct Completion {
    job: Option<Job>,
    done: mpsc::Sender<(Job, RunOutcome)>,
}

impl Completion {
    pub fn job(&self) -> Option<&Job> {
        self.job.as_ref()
    }

    pub fn complete(&mut self, outcome: RunOutcome) -> bool {
        match self.job.take() {
            Some(job) => {
                // The receiver is gone only once the pool has stopped waiting; nothing to do.
                let _ = self.done.send((job, outcome));
                true
            }
            None => false,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.complete(RunOutcome::Failure {
            error: "RuntimeError: the async runner dropped the job without reporting it".into(),
            traceback: None,
        });
    }
}

/// A queue's workers.
pub struct Pool {
    pub queue: Arc<str>,
    /// Handlers running at once: sync worker threads, or async runs in flight. Changes when the
    /// queue's settings do, unless `pinned` (set by `process(concurrency=...)`).
    concurrency: AtomicUsize,
    pub pinned: bool,
    executor: Arc<dyn Executor>,
    stop: AtomicBool,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Sync worker threads taking jobs (not counting those stuck in an abandoned run).
    workers: AtomicUsize,
    /// Live threads, and a signal for `close` to wait on.
    live: Mutex<usize>,
    exited: Condvar,
    /// Async pools: runs started and not yet reported.
    in_flight: Mutex<usize>,
    /// Async pools: the runs in flight (id, attempt), to hand back at exit.
    in_flight_jobs: Mutex<IdMap<u32>>,
    capacity: Condvar,
    /// Sync threads still inside a handler the watchdog gave up on.
    stuck: AtomicUsize,
    /// Replacement workers not started because `concurrency` threads were already stuck: the
    /// next stuck thread to come back takes the place.
    owed: AtomicUsize,
}

impl Pool {
    pub fn start(
        engine: &Arc<Engine>,
        queue: Arc<str>,
        executor: Arc<dyn Executor>,
        concurrency: usize,
        pinned: bool,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            queue,
            concurrency: AtomicUsize::new(concurrency.max(1)),
            pinned,
            executor,
            stop: AtomicBool::new(false),
            slots: Mutex::new(Vec::new()),
            workers: AtomicUsize::new(0),
            live: Mutex::new(0),
            exited: Condvar::new(),
            in_flight: Mutex::new(0),
            in_flight_jobs: Mutex::new(IdMap::default()),
            capacity: Condvar::new(),
            stuck: AtomicUsize::new(0),
            owed: AtomicUsize::new(0),
        });
        if pool.executor.is_async() {
            let (done_tx, done_rx) = mpsc::channel();
            pool.spawn(engine, "feeder", move |pool, engine| {
                pool.feed_async(&engine, done_tx)
            });
            pool.spawn(engine, "acker", move |pool, engine| {
                pool.ack_async(&engine, done_rx)
            });
        } else {
            for _ in 0..pool.concurrency() {
                pool.spawn_sync_worker(engine);
            }
        }
        pool
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Acquire)
    }

    /// A new concurrency (the queue's settings changed): more threads now, or fewer as the
    /// surplus ones finish their batch.
    pub fn resize(self: &Arc<Self>, engine: &Arc<Engine>, concurrency: usize) {
        let concurrency = concurrency.max(1);
        if self.pinned || self.stopped() {
            return;
        }
        self.concurrency.store(concurrency, Ordering::Release);
        if self.is_async() {
            let _guard = self.in_flight.lock();
            self.capacity.notify_all();
            return;
        }
        let running = self.workers.load(Ordering::Acquire);
        for _ in running..concurrency {
            self.spawn_sync_worker(engine);
        }
    }

    /// A sync worker leaves if there are more of them than the concurrency asks for.
    fn retire_if_surplus(&self) -> bool {
        self.workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > self.concurrency()).then(|| n - 1)
            })
            .is_ok()
    }

    pub fn is_async(&self) -> bool {
        self.executor.is_async()
    }

    fn spawn(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        role: &str,
        body: impl FnOnce(Arc<Pool>, Arc<Engine>) + Send + 'static,
    ) {
        *self.live.lock() += 1;
        let pool = self.clone();
        let engine = engine.clone();
        let name = format!("rnq-{role}-{}", self.queue);
        let spawned = thread::Builder::new().name(name).spawn(move || {
            let exiting = pool.clone();
            // A panic in the loop itself (not in a handler) must not kill the process.
            let _ = catch_unwind(AssertUnwindSafe(|| body(pool, engine)));
            *exiting.live.lock() -= 1;
            exiting.exited.notify_all();
        });
        if spawned.is_err() {
            *self.live.lock() -= 1;
        }
    }

    fn spawn_sync_worker(self: &Arc<Self>, engine: &Arc<Engine>) {
        let slot = self.new_slot();
        self.workers.fetch_add(1, Ordering::AcqRel);
        self.spawn(engine, "worker", move |pool, engine| {
            pool.run_sync(&engine, slot)
        });
    }

    fn new_slot(&self) -> Arc<Slot> {
        let slot = Arc::new(Slot::new());
        self.slots.lock().push(slot.clone());
        slot
    }

    fn fetch_request(&self, max: usize) -> FetchRequest {
        FetchRequest {
            max,
            share: self.concurrency(),
            wait: FETCH_WAIT,
            start_all: self.is_async(),
        }
    }

    fn run_sync(self: &Arc<Self>, engine: &Arc<Engine>, first_slot: Arc<Slot>) {
        let executor = self.executor.clone();
        let mut batch_size = 1;
        let mut slot = first_slot;
        // Whether this thread is counted in `workers` (not while stuck in an abandoned run).
        let mut counted = true;
        executor.enter(&mut |session| loop {
            if self.stopped() {
                return;
            }
            if self.retire_if_surplus() {
                counted = false;
                return;
            }
            let mut fetched = Ok(None);
            session.unlocked(&mut || {
                let request = self.fetch_request(batch_size);
                fetched = engine
                    .backend()
                    .fetch(&self.queue, request, &self.stop)
                    .map(|jobs| {
                        (!jobs.is_empty()).then(|| {
                            let batch = Arc::new(Batch::new(jobs));
                            slot.work.lock().batch = Some(batch.clone());
                            if batch.jobs.len() > 1 {
                                engine.settle_later(&self.queue, 2 * BATCH_BUDGET);
                            }
                            batch
                        })
                    });
            });
            let batch = match fetched {
                Ok(Some(batch)) => batch,
                Ok(None) => continue,
                Err(error) => {
                    if !self.back_off(engine, session, &error) {
                        return;
                    }
                    continue;
                }
            };
            let started = engine.clock();
            let budget = BATCH_BUDGET.as_nanos() as u64;
            let mut now = started;
            let mut ran = 0;
            let mut abandoned = false;
            // The batch ends early once its budget is spent (a slow job among fast ones): the
            // rest goes back, so pauses, priorities and results wait at most for the job at hand.
            while !self.stopped() && (ran == 0 || now - started < budget) {
                let Some(index) = batch.claim() else { break };
                let job = &batch.jobs[index];
                let deadline = now.saturating_add(engine.timeout_ns(job));
                let run = slot.begin(index, now, deadline);
                engine.watch_deadline(deadline);
                if index == 0 {
                    // Counted as an attempt from now on should this process die (the later jobs
                    // of the batch: see `settle_stalled`).
                    slot.marked_run.store(run, Ordering::Release);
                    engine
                        .backend()
                        .note_started(&self.queue, (job.id, job.attempts));
                }
                let outcome = catch_unwind(AssertUnwindSafe(|| session.run(job)))
                    .unwrap_or_else(RunOutcome::from_panic);
                if !slot.end(run) {
                    // The watchdog settled this run and the finished ones before it, and
                    // started a replacement worker.
                    abandoned = true;
                    break;
                }
                slot.record(session, index, outcome);
                ran += 1;
                // One clock read per job: the end of this one, the start of the next.
                now = engine.clock();
            }
            if abandoned {
                // Back from a run the watchdog gave up on (and replaced, unless too many were
                // stuck; the watchdog uncounted this thread): work again only in a place that
                // is owed.
                counted = false;
                self.stuck.fetch_sub(1, Ordering::AcqRel);
                let owed = self
                    .owed
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                if self.stopped() || owed.is_err() {
                    return;
                }
                self.workers.fetch_add(1, Ordering::AcqRel);
                counted = true;
                slot = self.new_slot();
                continue;
            }
            let elapsed = Duration::from_nanos(now - started);
            session.unlocked(&mut || {
                engine.release(&self.queue, batch.take_rest());
                let taken = {
                    let mut work = slot.work.lock();
                    let taken = work.take_finished();
                    work.batch = None;
                    taken
                };
                settle_finished(engine, &self.queue, taken);
            });
            batch_size = next_batch_size(batch_size, ran, elapsed);
        });
        if counted {
            self.workers.fetch_sub(1, Ordering::AcqRel);
        }
        self.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
    }

    fn feed_async(self: &Arc<Self>, engine: &Arc<Engine>, done: mpsc::Sender<(Job, RunOutcome)>) {
        let executor = self.executor.clone();
        executor.enter(&mut |session| loop {
            let mut fetched = Ok(Vec::new());
            session.unlocked(&mut || {
                let free = {
                    let mut in_flight = self.in_flight.lock();
                    while *in_flight >= self.concurrency() && !self.stopped() {
                        in_flight = self.capacity.wait_for(in_flight, FETCH_WAIT).0;
                    }
                    self.concurrency().saturating_sub(*in_flight)
                };
                if self.stopped() || free == 0 {
                    return;
                }
                let request = FetchRequest {
                    share: 1,
                    ..self.fetch_request(free.min(MAX_BATCH))
                };
                fetched = engine.backend().fetch(&self.queue, request, &self.stop);
                if let Ok(jobs) = &fetched {
                    *self.in_flight.lock() += jobs.len();
                }
            });
            if self.stopped() {
                if let Ok(jobs) = &fetched {
                    let jobs = jobs.clone();
                    session.unlocked(&mut || {
                        engine.release(&self.queue, &jobs);
                        self.finish_async(jobs.len());
                    });
                }
                return;
            }
            match fetched {
                Ok(jobs) if jobs.is_empty() => {}
                Ok(jobs) => {
                    self.in_flight_jobs
                        .lock()
                        .extend(jobs.iter().map(|job| (job.id, job.attempts)));
                    let started = jobs
                        .into_iter()
                        .map(|job| {
                            let completion = Completion {
                                job: Some(job.clone()),
                                done: done.clone(),
                            };
                            (job, completion)
                        })
                        .collect();
                    session.submit(started);
                }
                Err(error) => {
                    if !self.back_off(engine, session, &error) {
                        return;
                    }
                }
            }
        });
    }

    /// After a failed fetch: waits (Python let go of) before the next try. False: stop.
    fn back_off(&self, engine: &Engine, session: &mut dyn Session, error: &QueueError) -> bool {
        let mut keep_going = false;
        session.unlocked(&mut || keep_going = engine.backend_failed(&self.queue, error));
        keep_going
    }

    fn ack_async(self: &Arc<Self>, engine: &Arc<Engine>, done: mpsc::Receiver<(Job, RunOutcome)>) {
        loop {
            let first = match done.recv_timeout(FETCH_WAIT) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.stopped() && *self.in_flight.lock() == 0 {
                        return;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut outcomes = vec![first];
            outcomes.extend(done.try_iter().take(MAX_BATCH));
            let count = outcomes.len();
            {
                let mut in_flight = self.in_flight_jobs.lock();
                for (job, _) in &outcomes {
                    in_flight.remove(&job.id);
                }
            }
            engine.settle(
                &self.queue,
                outcomes.iter().map(|(job, o)| (job, o.clone())),
            );
            self.finish_async(count);
            if self.stopped() && *self.in_flight.lock() == 0 {
                return;
            }
        }
    }

    fn finish_async(&self, count: usize) {
        let mut in_flight = self.in_flight.lock();
        *in_flight = in_flight.saturating_sub(count);
        self.capacity.notify_all();
        self.exited.notify_all();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every thread to stop after its current job.
    pub fn request_stop(&self, engine: &Engine) {
        self.stop.store(true, Ordering::Release);
        engine.backend().wake(&self.queue);
        let _guard = self.in_flight.lock();
        self.capacity.notify_all();
    }

    /// Waits until every thread has exited (and every async run reported); false on timeout.
    pub fn wait_stopped(&self, deadline: Instant) -> bool {
        let mut live = self.live.lock();
        while *live > 0 {
            let timed_out;
            (live, timed_out) = self.exited.wait_until(live, deadline);
            if timed_out {
                return *live == 0;
            }
        }
        true
    }

    pub fn running(&self) -> usize {
        if self.is_async() {
            return *self.in_flight.lock();
        }
        self.slots.lock().iter().filter(|s| s.is_running()).count()
    }

    /// For a close that timed out: hands back the unstarted rest of each busy worker's batch,
    /// records the runs that ended before the one at hand, and returns the runs still in
    /// progress (id, attempt), which the caller hands back.
    pub fn wind_down(&self, engine: &Engine) -> Vec<(JobId, u32)> {
        if self.is_async() {
            let in_flight = self.in_flight_jobs.lock();
            return in_flight
                .iter()
                .map(|(id, attempt)| (*id, *attempt))
                .collect();
        }
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut running = Vec::new();
        for slot in slots {
            let Some(run) = slot.running_job() else {
                continue;
            };
            let batch = slot.work.lock().batch.clone();
            if let Some(batch) = batch {
                engine.release(&self.queue, batch.take_rest());
            }
            let taken = slot.work.lock().take_finished();
            settle_finished(engine, &self.queue, taken);
            running.push(run);
        }
        running
    }

    /// Settles the ended runs of workers busy with a job that began over `BATCH_BUDGET` ago,
    /// so that a long job does not hold back the results of the fast ones before it, and
    /// reports that job as started (see `Backend::mark_started`). Returns
    /// how long to wait before looking again while a worker is busy (at most a budget: the
    /// timer wakes about once per batch while jobs run).
    pub fn settle_stalled(&self, engine: &Engine, now: u64) -> Option<Duration> {
        let budget = BATCH_BUDGET.as_nanos() as u64;
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut again: Option<u64> = None;
        for slot in slots {
            if !slot.is_running() {
                // Between two jobs (or waiting for the GIL) with a batch in hand: look again.
                if slot.work.lock().batch.is_some() {
                    again = Some(again.map_or(budget, |a| a.min(budget)));
                }
                continue;
            }
            let running_for = now.saturating_sub(slot.started.load(Ordering::Acquire));
            if running_for >= budget {
                let taken = slot.work.lock().take_finished();
                settle_finished(engine, &self.queue, taken);
                // A long run inside a batch: its attempt must count should this process die.
                if let Some(run) = slot.unmarked_start() {
                    engine.mark_started(&self.queue, &[run]);
                }
            } else {
                // Results may still pile up behind a job that starts later in this batch.
                let wait = budget - running_for;
                again = Some(again.map_or(wait, |a| a.min(wait)));
            }
        }
        again.map(Duration::from_nanos)
    }

    /// Abandons sync runs past their deadline: settles them as timed out, hands back the rest
    /// of their batch, and starts a replacement worker. Returns the earliest live deadline.
    pub fn check_timeouts(self: &Arc<Self>, engine: &Arc<Engine>, now: u64) -> Option<u64> {
        if self.is_async() {
            return None;
        }
        let slots: Vec<Arc<Slot>> = self.slots.lock().clone();
        let mut earliest: Option<u64> = None;
        for slot in slots {
            if let Some((batch, index)) = slot.abandon_if_late(now, &self.stuck) {
                engine.release(&self.queue, batch.take_rest());
                let taken = slot.work.lock().take_finished();
                settle_finished(engine, &self.queue, taken);
                engine.settle(&self.queue, [(&batch.jobs[index], RunOutcome::TimedOut)]);
                self.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
                // The stuck thread no longer counts as a worker.
                self.workers.fetch_sub(1, Ordering::AcqRel);
                // At most `concurrency` stuck threads get a replacement: a handler that hangs
                // on every job must not grow the process thread by thread.
                if !self.stopped() {
                    if self.stuck.load(Ordering::Acquire) <= self.concurrency() {
                        self.spawn_sync_worker(engine);
                    } else {
                        self.owed.fetch_add(1, Ordering::AcqRel);
                    }
                }
            } else if let Some(deadline) = slot.deadline_if_running() {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
            }
        }
        earliest
    }
}

/// The next batch: as many jobs as fit in `BATCH_BUDGET` at the last batch's pace, growing
/// at most twofold per batch.
fn next_batch_size(current: usize, ran: usize, elapsed: Duration) -> usize {
    if ran == 0 {
        return current;
    }
    let per_job = elapsed.as_nanos().max(1) / ran as u128;
    let fits = (BATCH_BUDGET.as_nanos() / per_job).max(1) as usize;
    fits.min(current.saturating_mul(2)).clamp(1, MAX_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_adapt_to_handler_speed() {
        // Fast handlers: the batch doubles up to the cap.
        let mut size = 1;
        for _ in 0..20 {
            size = next_batch_size(size, size, Duration::from_micros(size as u64));
        }
        assert_eq!(size, MAX_BATCH);
        // A slow handler: back to one job per batch at once.
        assert_eq!(next_batch_size(MAX_BATCH, 1, Duration::from_millis(50)), 1);
        // Half a millisecond per job: two fit in the budget.
        assert_eq!(next_batch_size(8, 4, Duration::from_millis(2)), 2);
    }

    #[test]
    fn batch_hands_each_job_out_once() {
        let queue: Arc<str> = Arc::from("q");
        let jobs = (0..5)
            .map(|_| {
                Job::new(
                    queue.clone(),
                    Arc::from(&b"1"[..]),
                    Default::default(),
                    1,
                    1.0,
                )
            })
            .collect();
        let batch = Batch::new(jobs);
        assert_eq!(batch.claim(), Some(0));
        assert_eq!(batch.claim(), Some(1));
        assert_eq!(batch.take_rest().len(), 3);
        assert_eq!(batch.claim(), None);
        assert!(batch.take_rest().is_empty());
    }

    #[test]
    fn slot_abandons_only_late_current_runs() {
        let slot = Slot::new();
        let queue: Arc<str> = Arc::from("q");
        let job = Job::new(queue, Arc::from(&b"1"[..]), Default::default(), 1, 1.0);
        slot.work.lock().batch = Some(Arc::new(Batch::new(vec![job])));
        let run = slot.begin(0, 0, 100);
        let stuck = AtomicUsize::new(0);
        assert!(slot.abandon_if_late(99, &stuck).is_none());
        assert!(slot.abandon_if_late(100, &stuck).is_some());
        assert_eq!(stuck.load(Ordering::SeqCst), 1);
        assert!(!slot.end(run), "an abandoned run cannot end normally");
        let run = slot.begin(0, 0, 100);
        assert!(slot.end(run));
        assert!(
            slot.abandon_if_late(1000, &stuck).is_none(),
            "an idle slot is never abandoned"
        );
        assert_eq!(stuck.load(Ordering::SeqCst), 1);
    }
}
