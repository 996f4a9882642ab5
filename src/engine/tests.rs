//! The engine end to end on the memory backend, with handlers as Rust closures.

mod operations;

use super::*;
use crate::backend::memory::MemoryBackend;
use crate::backend::{Ack, QueueCounts, QueueDeclaration, ScheduleRecord, Totals};
use crate::backoff::Backoff;
use crate::job::{Job, JobOptions, JobState, Payload, Timestamp};
use std::sync::atomic::AtomicUsize;

type Handler = dyn Fn(&Job) -> RunOutcome + Send + Sync;

/// Runs handlers as plain Rust closures on the worker threads.
struct ClosureExecutor(Arc<Handler>);

struct ClosureSession(Arc<Handler>);

impl Executor for ClosureExecutor {
    fn is_async(&self) -> bool {
        false
    }
    fn enter(&self, body: &mut dyn FnMut(&mut dyn Session)) {
        body(&mut ClosureSession(self.0.clone()));
    }
}

impl Session for ClosureSession {
    fn unlocked(&mut self, f: &mut (dyn FnMut() + Send)) {
        f();
    }
    fn run(&mut self, job: &Job) -> RunOutcome {
        (self.0)(job)
    }
    fn submit(&mut self, _jobs: Vec<(Job, Completion)>) {
        unreachable!("sync executor")
    }
}

/// A door handlers block on until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: crate::sync::Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock();
        while !*open {
            open = self.opened.wait(open);
        }
    }

    fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

fn engine() -> Arc<Engine> {
    Engine::new(Arc::new(MemoryBackend::new()), EngineOptions::default()).unwrap()
}

fn config(concurrency: usize, max_retries: u32, timeout: f64) -> QueueConfig {
    QueueConfig {
        concurrency,
        max_retries,
        timeout,
        backoff: Backoff::Fixed { delay: 0.01 },
        ..QueueConfig::default()
    }
}

fn push(engine: &Engine, queue: &str, data: &str, options: JobOptions) -> JobId {
    let spec = (Payload::from(data.as_bytes()), options);
    match engine.push(queue, &[spec], true).unwrap() {
        Pushed::Done(ids) => ids[0],
        Pushed::WouldBlock | Pushed::Uncommitted(..) => unreachable!(),
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn error_of(job: &Job) -> &str {
    job.extras()
        .and_then(|e| e.error.as_deref())
        .expect("the job has an error")
}

#[test]
fn failing_jobs_retry_then_fail_then_retry_on_request() {
    let engine = engine();
    engine.create_queue("q", config(1, 2, 10.0)).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
        counter.fetch_add(1, Ordering::SeqCst);
        RunOutcome::Failure {
            error: "ValueError: boom".into(),
            traceback: None,
        }
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let id = push(&engine, "q", "1", JobOptions::default());
    let job = engine.wait_for_job(id, WAIT).unwrap().expect("finished");
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(job.attempts, 3);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        job.extras().unwrap().error.as_deref(),
        Some("ValueError: boom")
    );
    let totals = engine.stats().unwrap().totals;
    assert_eq!((totals.failed, totals.retried), (1, 2));
    assert!(engine.retry_job(id).unwrap());
    // Wait for the second round to fail again.
    assert!(engine.join(Some("q"), WAIT).unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 6);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn sync_runs_past_their_timeout_are_abandoned_and_replaced() {
    let engine = engine();
    engine.create_queue("q", config(1, 0, 0.2)).unwrap();
    let release = Arc::new(Gate::default());
    let gate = release.clone();
    let handler: Arc<Handler> = Arc::new(move |job: &Job| {
        if &*job.data == b"\"stuck\"" {
            gate.wait();
        }
        RunOutcome::Success(None)
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let stuck = push(&engine, "q", "\"stuck\"", JobOptions::default());
    let job = engine.wait_for_job(stuck, WAIT).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(error_of(&job).contains("timed out"));
    // The only slot is stuck, yet a replacement worker runs the next job.
    let next = push(&engine, "q", "\"fine\"", JobOptions::default());
    let job = engine.wait_for_job(next, WAIT).unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    release.open();
    // The late result of the abandoned run changes nothing.
    assert!(engine.close(Duration::from_secs(5)).finished);
    assert_eq!(
        engine.backend().get_job(stuck).unwrap().unwrap().state,
        JobState::Failed
    );
}

#[test]
fn stuck_threads_are_replaced_at_most_concurrency_times() {
    let engine = engine();
    engine.create_queue("q", config(1, 0, 0.1)).unwrap();
    let gate = Arc::new(Gate::default());
    let inside = Arc::new(AtomicUsize::new(0));
    let (g, n) = (gate.clone(), inside.clone());
    let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
        n.fetch_add(1, Ordering::SeqCst);
        g.wait();
        RunOutcome::Success(None)
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let first = push(&engine, "q", "1", JobOptions::default());
    let second = push(&engine, "q", "2", JobOptions::default());
    let third = push(&engine, "q", "3", JobOptions::default());
    for id in [first, second] {
        let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
        assert_eq!(job.state, JobState::Failed, "timed out");
    }
    // One replacement for the first stuck thread, none for the second (concurrency 1).
    assert_eq!(inside.load(Ordering::SeqCst), 2);
    let waiting = engine.backend().get_job(third).unwrap().unwrap();
    assert_ne!(waiting.state, JobState::Completed);
    // When the stuck handlers return, one thread takes the owed place and runs the job.
    gate.open();
    let job = engine.wait_for_job(third, WAIT).unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn concurrency_is_reached_and_never_exceeded() {
    let engine = engine();
    engine.create_queue("q", config(4, 0, 10.0)).unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        p.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        r.fetch_sub(1, Ordering::SeqCst);
        RunOutcome::Success(None)
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    for i in 0..40 {
        push(&engine, "q", &i.to_string(), JobOptions::default());
    }
    assert!(engine.join(Some("q"), WAIT).unwrap());
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(engine.queue_stats("q").unwrap().completed, 40);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn delayed_jobs_run_on_time() {
    let engine = engine();
    engine.create_queue("q", config(1, 0, 10.0)).unwrap();
    let handler: Arc<Handler> = Arc::new(|_job: &Job| RunOutcome::Success(None));
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let options = JobOptions {
        delay: 0.2,
        ..JobOptions::default()
    };
    let id = push(&engine, "q", "1", options);
    let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
    let started = job.started_at.get().unwrap();
    let due = job.due_at();
    assert!(started >= due, "started {started} before due {due}");
    assert!(started - due < 0.5, "started {:.3}s late", started - due);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn panics_in_handlers_fail_the_job() {
    let engine = engine();
    engine.create_queue("q", config(1, 0, 10.0)).unwrap();
    let handler: Arc<Handler> = Arc::new(|_job: &Job| panic!("handler bug"));
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let id = push(&engine, "q", "1", JobOptions::default());
    let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(error_of(&job).contains("handler bug"));
    assert!(engine.close(Duration::from_secs(5)).finished);
}

/// The memory backend, with `push_tick` failing (as a Redis that is away would) while
/// `failing` says so. Records each tick it was asked to push.
struct FlakyTicks {
    inner: MemoryBackend,
    failing: AtomicUsize,
    asked: Mutex<Vec<Timestamp>>,
}

impl Backend for FlakyTicks {
    fn declare_queue(
        &self,
        queue: &Arc<str>,
        declaration: &QueueDeclaration,
        replace: bool,
    ) -> Result<QueueDeclaration> {
        self.inner.declare_queue(queue, declaration, replace)
    }
    fn stored_declarations(&self, queues: &[Arc<str>]) -> Result<Vec<Option<QueueDeclaration>>> {
        self.inner.stored_declarations(queues)
    }
    fn push(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<()> {
        self.inner.push(queue, jobs, declare)
    }
    fn push_tick(
        &self,
        queue: &Arc<str>,
        jobs: &mut Vec<Job>,
        schedule: &str,
        tick: Timestamp,
        declare: &dyn Fn() -> QueueDeclaration,
    ) -> Result<bool> {
        self.asked.lock().push(tick);
        let fail = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            // The first failure is a push whose outcome stayed unknown (Redis paused), the
            // others a refused connection: both are tried again.
            if self.asked.lock().len() == 1 {
                return Err(QueueError::PushOutcomeUnknown {
                    message: "redis: no answer".into(),
                    ids: jobs.iter().map(|job| job.id).collect(),
                });
            }
            return Err(QueueError::Backend("redis: connection refused".into()));
        }
        self.inner.push_tick(queue, jobs, schedule, tick, declare)
    }
    fn fetch(
        &self,
        queue: &str,
        request: crate::backend::FetchRequest,
        cancel: &AtomicBool,
    ) -> Result<Vec<Job>> {
        self.inner.fetch(queue, request, cancel)
    }
    fn settle(&self, queue: &str, acks: Vec<Ack>) -> Result<Option<Timestamp>> {
        self.inner.settle(queue, acks)
    }
    fn release(&self, queue: &str, jobs: &[Job]) -> Result<()> {
        self.inner.release(queue, jobs)
    }
    fn tick(&self, queue: &str, now: Timestamp) -> Result<Option<Timestamp>> {
        self.inner.tick(queue, now)
    }
    fn wake(&self, queue: &str) {
        self.inner.wake(queue)
    }
    fn get_job(&self, id: JobId) -> Result<Option<Job>> {
        self.inner.get_job(id)
    }
    fn list_jobs(
        &self,
        queue: &str,
        state: Option<JobState>,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<Job>> {
        self.inner.list_jobs(queue, state, offset, limit)
    }
    fn remove_job(&self, id: JobId) -> Result<crate::backend::Removal> {
        self.inner.remove_job(id)
    }
    fn retry_failed(&self, id: JobId) -> Result<bool> {
        self.inner.retry_failed(id)
    }
    fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.inner.set_paused(queue, paused)
    }
    fn clear(&self, queue: &str) -> Result<usize> {
        self.inner.clear(queue)
    }
    fn delete(&self, queue: &str) -> Result<bool> {
        self.inner.delete(queue)
    }
    fn counts(&self, queue: &str) -> Result<QueueCounts> {
        self.inner.counts(queue)
    }
    fn queue_names(&self) -> Result<Vec<String>> {
        self.inner.queue_names()
    }
    fn totals(&self) -> Result<Totals> {
        self.inner.totals()
    }
    fn is_idle(&self, queue: Option<&str>) -> Result<bool> {
        self.inner.is_idle(queue)
    }
    fn save_schedule(&self, schedule: &ScheduleRecord) -> Result<()> {
        self.inner.save_schedule(schedule)
    }
    fn remove_schedule(&self, id: &str) -> Result<bool> {
        self.inner.remove_schedule(id)
    }
    fn load_schedules(&self) -> Result<Vec<ScheduleRecord>> {
        self.inner.load_schedules()
    }
    fn beat(&self, worker: &str, info: &Payload, ttl: f64) -> Result<()> {
        self.inner.beat(worker, info, ttl)
    }
    fn workers(&self) -> Result<Vec<Payload>> {
        self.inner.workers()
    }
    fn leave(&self, worker: &str) -> Result<()> {
        self.inner.leave(worker)
    }
}

fn flaky(failing: usize) -> (Arc<Engine>, Arc<FlakyTicks>) {
    let backend = Arc::new(FlakyTicks {
        inner: MemoryBackend::new(),
        failing: AtomicUsize::new(failing),
        asked: Mutex::new(Vec::new()),
    });
    let engine = Engine::new(backend.clone(), EngineOptions::default()).unwrap();
    (engine, backend)
}

fn every_second(queue: &str) -> ScheduleRecord {
    ScheduleRecord {
        id: Arc::from("tick"),
        name: None,
        queue: Arc::from(queue),
        cron: "* * * * * *".into(),
        data: Payload::from(&b"1"[..]),
        priority: crate::job::Priority::Normal,
        attempts: None,
        timeout: None,
        tags: Vec::new(),
        metadata: None,
    }
}

#[test]
fn a_tick_whose_push_fails_is_pushed_again_until_it_lands() {
    let (engine, backend) = flaky(2);
    engine.schedule(every_second("cron")).unwrap();
    let pushed = engine
        .backend()
        .list_jobs("cron", None, 0, 10)
        .map(|jobs| jobs.len())
        .unwrap_or(0);
    assert_eq!(pushed, 0);
    // The first tick fails twice, then lands (before: it was dropped without a word).
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = loop {
        let jobs = engine.list_jobs("cron", None, 0, 10).unwrap();
        if let Some(job) = jobs.first() {
            break job.clone();
        }
        assert!(Instant::now() < deadline, "no tick was pushed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let asked = backend.asked.lock().clone();
    assert!(asked.len() >= 3, "{asked:?}");
    assert_eq!(
        asked[0], asked[1],
        "the failed tick was tried again: {asked:?}"
    );
    assert_eq!(asked[1], asked[2], "{asked:?}");
    assert_eq!(
        first.scheduled_at.get(),
        Some(asked[0]),
        "the failed tick, not a later one"
    );
    engine.close(Duration::from_secs(1));
}

#[test]
fn a_tick_that_never_lands_is_given_up_when_the_next_is_due() {
    let (engine, backend) = flaky(usize::MAX);
    engine.schedule(every_second("cron")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let asked = backend.asked.lock().clone();
        let ticks: std::collections::BTreeSet<u64> = asked.iter().map(|t| *t as u64).collect();
        if ticks.len() >= 2 {
            // Retried (several tries of the first tick), then the next tick's turn.
            let first = *ticks.iter().next().unwrap() as f64;
            assert!(
                asked.iter().filter(|t| **t == first).count() >= 2,
                "{asked:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{asked:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.close(Duration::from_secs(1));
}

#[test]
fn a_schedule_whose_job_is_too_large_is_refused_when_declared() {
    let engine = Engine::new(
        Arc::new(MemoryBackend::new()),
        EngineOptions {
            max_job_bytes: 100,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let mut record = every_second("cron");
    record.data = Payload::from(format!("\"{}\"", "x".repeat(200)).into_bytes());
    assert!(matches!(
        engine.schedule(record),
        Err(QueueError::JobTooLarge { .. })
    ));
    assert!(engine.schedules().unwrap().is_empty());
}

#[test]
fn pushes_racing_deletes_of_their_queue_never_fail() {
    let engine = engine();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let pushers: Vec<_> = (0..2)
        .map(|n| {
            let (engine, stop, counts) = (engine.clone(), stop.clone(), counts.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let spec = (Payload::from(&b"1"[..]), JobOptions::default());
                    // Before: a push could find the engine knowing a queue the backend had
                    // deleted, and every later push failed with "does not exist".
                    engine.push("churn", &[spec], true).expect("push");
                    counts[n].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Deletes go on until both pushers have pushed many times meanwhile (on a busy machine a
    // thread may start late).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut deletes = 0;
    while deletes < 300 || counts.iter().any(|c| c.load(Ordering::SeqCst) < 50) {
        assert!(Instant::now() < deadline, "the pushers made no progress");
        engine.delete_queue("churn").unwrap();
        deletes += 1;
    }
    stop.store(true, Ordering::SeqCst);
    for pusher in pushers {
        pusher.join().expect("a push failed");
    }
    // The queue works afterwards: a handler runs what is pushed.
    let handler: Arc<Handler> = Arc::new(|_job: &Job| RunOutcome::Success(None));
    engine
        .process("churn", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    let id = push(&engine, "churn", "2", JobOptions::default());
    let job = engine.wait_for_job(id, WAIT).unwrap().unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn a_hung_run_is_abandoned_whenever_it_begins() {
    // Stress for the watchdog handshake: a run that hangs right after fast ones (each of
    // which re-arms or clears the watchdog) must still be abandoned at its deadline.
    let engine = engine();
    engine.create_queue("q", config(1, 0, 0.05)).unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let r = released.clone();
    let handler: Arc<Handler> = Arc::new(move |job: &Job| {
        let text = String::from_utf8_lossy(&job.data);
        if let Some(round) = text.strip_prefix("\"hang ") {
            let round: usize = round.trim_end_matches('"').parse().unwrap();
            while r.load(Ordering::SeqCst) < round {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        RunOutcome::Success(None)
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), Some(1), false)
        .unwrap();
    for round in 1..=40 {
        for _ in 0..(round % 5) {
            push(&engine, "q", "1", JobOptions::default());
        }
        let data = format!("\"hang {round}\"");
        let hung = push(&engine, "q", &data, JobOptions::default());
        let job = engine.wait_for_job(hung, WAIT).unwrap().expect("abandoned");
        assert_eq!(job.state, JobState::Failed, "round {round}");
        assert!(error_of(&job).contains("timed out"));
        released.store(round, Ordering::SeqCst);
    }
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn closed_engines_refuse_work() {
    let engine = engine();
    assert!(engine.close(Duration::from_secs(1)).finished);
    let spec = (Payload::from(&b"1"[..]), JobOptions::default());
    assert!(matches!(
        engine.push("q", &[spec], true),
        Err(QueueError::Closed)
    ));
}
