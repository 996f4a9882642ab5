//! Against a private `redis-server` on a free port (skipped with a note when none can be
//! started, a failure under `RNQ_REQUIRE_REDIS=1`).
use super::leases::ORPHAN_AFTER;
use super::*;
use crate::backend::{Retention, Settlement};
use crate::job::{JobOptions, Payload, Priority};
use redis::{Cmd, FromRedisValue};
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    url: String,
    _dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()?;
    let dir = std::env::temp_dir().join(format!("rnq-redis-test-{port}"));
    let _ = std::fs::create_dir_all(&dir);
    let spawned = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(error) => return unavailable(&format!("redis-server cannot start: {error}")),
    };
    let server = Server {
        child,
        url: format!("redis://127.0.0.1:{port}/0"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        thread::sleep(Duration::from_millis(20));
    }
    unavailable("redis-server did not answer")
}

fn unavailable(reason: &str) -> Option<Server> {
    if std::env::var("RNQ_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("RNQ_REQUIRE_REDIS=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

fn backend(server: &Server, lease: Duration) -> RedisBackend {
    RedisBackend::connect(&RedisOptions {
        url: server.url.clone(),
        prefix: "test".into(),
        lease,
    })
    .expect("connect")
}

const RETENTION: Retention = Retention {
    ttl: 3600.0,
    keep_completed: 2,
    keep_failed: 10,
};

fn declaration() -> QueueDeclaration {
    QueueDeclaration {
        retention: RETENTION,
        settings: Payload::from(&b"{}"[..]),
    }
}

fn job(queue: &Arc<str>, n: u32, priority: Priority) -> Job {
    let options = JobOptions {
        priority,
        ..JobOptions::default()
    };
    let data: Payload = Arc::from(n.to_string().into_bytes());
    Job::new(queue.clone(), data, options, 2, 30.0)
}

fn request(max: usize) -> FetchRequest {
    FetchRequest {
        max,
        share: 1,
        wait: Duration::from_millis(50),
        start_all: false,
    }
}

fn completed(job: &Job) -> Ack {
    Ack {
        id: job.id,
        attempt: job.attempts,
        at: now(),
        settlement: Settlement::Completed { result: None },
    }
}

#[test]
fn jobs_run_by_priority_then_fifo_and_finished_ones_are_trimmed() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("order");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs = vec![
        job(&queue, 1, Priority::Low),
        job(&queue, 2, Priority::Critical),
        job(&queue, 3, Priority::Normal),
        job(&queue, 4, Priority::Critical),
    ];
    redis.push(&queue, &mut jobs, &declaration).unwrap();
    let cancel = AtomicBool::new(false);
    let taken = redis.fetch(&queue, request(10), &cancel).unwrap();
    let data: Vec<&[u8]> = taken.iter().map(|j| &*j.data).collect();
    assert_eq!(data, [b"2", b"4", b"3", b"1"]);
    assert!(taken
        .iter()
        .all(|j| j.attempts == 1 && j.state == JobState::Active));
    let counts = redis.counts(&queue).unwrap();
    assert_eq!((counts.waiting, counts.active), (0, 4));
    redis
        .settle(&queue, taken.iter().map(completed).collect())
        .unwrap();
    let counts = redis.counts(&queue).unwrap();
    assert_eq!((counts.active, counts.completed), (0, 4));
    // keep_completed = 2: the two oldest are gone, the newest listed first.
    let listed = redis
        .list_jobs(&queue, Some(JobState::Completed), 0, 10)
        .unwrap();
    let ids: Vec<JobId> = listed.iter().map(|j| j.id).collect();
    assert_eq!(ids, [taken[3].id, taken[2].id]);
    assert!(redis.get_job(taken[0].id).unwrap().is_none());
}

/// A raw command on the test's server.
fn raw<T: FromRedisValue>(redis: &RedisBackend, cmd: Cmd) -> T {
    redis.shared.command(cmd).expect("redis command")
}

#[test]
fn an_unreadable_job_fails_on_its_own_and_the_others_run() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("corrupt");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs: Vec<Job> = (1..=3).map(|n| job(&queue, n, Priority::Normal)).collect();
    let bad = jobs[1].id;
    redis.push(&queue, &mut jobs, &declaration).unwrap();
    let bodies = redis.shared.queue(&queue).jobs_key().to_string();
    let _: i64 = raw(
        &redis,
        redis::Cmd::hset(&bodies, bad.to_string(), "1 not a packed body"),
    );
    let taken = redis
        .fetch(&queue, request(10), &AtomicBool::new(false))
        .unwrap();
    // The healthy jobs are handed out (before: the whole fetch failed, and every job of
    // it was taken back by the lease rule, again and again).
    let data: Vec<&[u8]> = taken.iter().map(|j| &*j.data).collect();
    assert_eq!(data, [b"1", b"3"]);
    let base = redis.shared.queue(&queue).keys[keys::BASE].clone();
    let finished: String = raw(
        &redis,
        redis::Cmd::hget(format!("{base}fin"), bad.to_string()),
    );
    let error: String = raw(
        &redis,
        redis::Cmd::hget(format!("{base}err"), bad.to_string()),
    );
    assert!(finished.starts_with("f "), "failed: {finished}");
    assert!(
        error.contains("cannot be read") && error.contains("body"),
        "{error}"
    );
    assert_eq!(redis.counts(&queue).unwrap().failed, 1);
    redis
        .settle(&queue, taken.iter().map(completed).collect())
        .unwrap();
    assert_eq!(redis.counts(&queue).unwrap().completed, 2);
}

#[test]
fn a_push_to_a_deleted_queue_creates_and_lists_it_again() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("reborn");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    redis.delete(&queue).unwrap();
    assert!(redis.queue_names().unwrap().is_empty());
    let mut jobs = vec![job(&queue, 1, Priority::Normal)];
    redis.push(&queue, &mut jobs, &declaration).unwrap();
    assert_eq!(redis.queue_names().unwrap(), ["reborn"]);
    let stored = redis
        .stored_declarations(std::slice::from_ref(&queue))
        .unwrap();
    assert_eq!(
        stored,
        [Some(declaration())],
        "created with the settings given"
    );
    assert_eq!(redis.counts(&queue).unwrap().waiting, 1);
}

#[test]
fn a_job_already_stored_is_never_overwritten() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("dup");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let first = job(&queue, 1, Priority::Normal);
    let mut clash = first.clone();
    clash.data = Arc::from(&b"2"[..]);
    redis
        .push(&queue, &mut vec![first.clone()], &declaration)
        .unwrap();
    let pushed = redis.push(&queue, &mut vec![clash], &declaration);
    assert!(
        matches!(pushed, Err(QueueError::DuplicateJob(_))),
        "{pushed:?}"
    );
    assert_eq!(&*redis.get_job(first.id).unwrap().unwrap().data, b"1");
    assert_eq!(redis.counts(&queue).unwrap().waiting, 1);
}

#[test]
fn only_started_runs_count_when_their_worker_dies() {
    let Some(server) = server() else { return };
    let lease = Duration::from_millis(200);
    let dead = backend(&server, lease);
    let queue: Arc<str> = Arc::from("unstarted");
    dead.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs: Vec<Job> = (1..=4).map(|n| job(&queue, n, Priority::Normal)).collect();
    dead.push(&queue, &mut jobs, &declaration).unwrap();
    let taken = dead
        .fetch(&queue, request(4), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(taken.len(), 4);
    // The worker started the first two jobs of its batch.
    let started: Vec<(JobId, u32)> = taken[..2].iter().map(|j| (j.id, j.attempts)).collect();
    dead.mark_started(&queue, &started).unwrap();
    dead.close(); // stops renewing, as if it died
    let rescuer = backend(&server, lease);
    let wait = FetchRequest {
        wait: Duration::from_secs(5),
        ..request(4)
    };
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 4 && Instant::now() < deadline {
        again.extend(
            rescuer
                .fetch(&queue, wait, &AtomicBool::new(false))
                .unwrap(),
        );
    }
    let runs: HashMap<JobId, (u32, Option<String>)> = again
        .iter()
        .map(|j| (j.id, (j.attempts, j.extras().and_then(|e| e.error.clone()))))
        .collect();
    for (n, job) in taken.iter().enumerate() {
        let (attempt, error) = &runs[&job.id];
        if n < 2 {
            assert_eq!(*attempt, 2, "job {n} started: its lost run counts");
            assert!(
                error.as_deref().unwrap_or("").contains("run was lost"),
                "{error:?}"
            );
        } else {
            assert_eq!(
                *attempt, 1,
                "job {n} never started: its attempt is not counted"
            );
            assert_eq!(*error, None);
        }
    }
}

#[test]
fn an_engine_forgets_queues_deleted_elsewhere_and_takes_stored_settings() {
    use crate::engine::{Engine, EngineOptions, QueueConfig};
    let Some(server) = server() else { return };
    let open = || {
        let backend = backend(&server, Duration::from_secs(30));
        Engine::new(Arc::new(backend), EngineOptions::default()).unwrap()
    };
    let (here, elsewhere) = (open(), open());
    let spec = |data: &str| {
        (
            Payload::from(data.as_bytes().to_vec()),
            JobOptions::default(),
        )
    };
    for n in 0..3 {
        here.push(&format!("gone-{n}"), &[spec("1")], true).unwrap();
    }
    let settings = QueueConfig {
        timeout: 20.0,
        max_retries: 0,
        ..QueueConfig::default()
    };
    elsewhere.create_queue("kept", settings.clone()).unwrap();
    here.push("kept", &[spec("1")], true).unwrap();
    assert_eq!(here.queue_config("kept").unwrap().timeout, 20.0);
    for n in 0..3 {
        elsewhere.delete_queue(&format!("gone-{n}")).unwrap();
    }
    elsewhere
        .create_queue(
            "kept",
            QueueConfig {
                timeout: 30.0,
                ..settings
            },
        )
        .unwrap();
    // Within a reload (5 s): the deleted queues are forgotten here, the changed settings
    // taken.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let names: Vec<String> = here
            .queue_configs()
            .unwrap()
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        let timeout = here.queue_config("kept").unwrap().timeout;
        if names == ["kept"] && timeout == 30.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{names:?} {timeout}");
        thread::sleep(Duration::from_millis(100));
    }
    here.close(Duration::from_secs(1));
    elsewhere.close(Duration::from_secs(1));
}

#[test]
fn a_lost_lease_returns_the_job_and_the_old_ack_is_ignored() {
    let Some(server) = server() else { return };
    let lease = Duration::from_millis(200);
    let dead = backend(&server, lease);
    let queue: Arc<str> = Arc::from("lease");
    dead.declare_queue(&queue, &declaration(), true).unwrap();
    dead.push(
        &queue,
        &mut vec![job(&queue, 1, Priority::Normal)],
        &declaration,
    )
    .unwrap();
    let cancel = AtomicBool::new(false);
    let first = dead.fetch(&queue, request(1), &cancel).unwrap();
    dead.mark_started(&queue, &[(first[0].id, first[0].attempts)])
        .unwrap();
    // The worker stops renewing (as if it died); another process's sweeper takes the job.
    dead.close();
    let rescuer = backend(&server, lease);
    let second = rescuer
        .fetch(
            &queue,
            FetchRequest {
                wait: Duration::from_secs(5),
                ..request(1)
            },
            &cancel,
        )
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].attempts, 2, "the lost run counts");
    assert!(second[0]
        .extras()
        .and_then(|e| e.error.as_deref())
        .is_some());
    // The first worker's late ack changes nothing.
    dead.settle(&queue, vec![completed(&first[0])]).unwrap();
    let job = rescuer.get_job(first[0].id).unwrap().unwrap();
    assert_eq!(job.state, JobState::Active);
    rescuer.settle(&queue, vec![completed(&second[0])]).unwrap();
    let job = rescuer.get_job(first[0].id).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Completed, 2));
}

#[test]
fn a_live_worker_keeps_its_lease() {
    let Some(server) = server() else { return };
    let lease = Duration::from_millis(150);
    let worker = backend(&server, lease);
    let other = backend(&server, lease);
    let queue: Arc<str> = Arc::from("renew");
    worker.declare_queue(&queue, &declaration(), true).unwrap();
    worker
        .push(
            &queue,
            &mut vec![job(&queue, 1, Priority::Normal)],
            &declaration,
        )
        .unwrap();
    let cancel = AtomicBool::new(false);
    let held = worker.fetch(&queue, request(1), &cancel).unwrap();
    // Five leases long: renewals keep it; the other process's sweeps find nothing.
    let stolen = other
        .fetch(
            &queue,
            FetchRequest {
                wait: 5 * lease,
                ..request(1)
            },
            &cancel,
        )
        .unwrap();
    assert!(stolen.is_empty());
    worker.settle(&queue, vec![completed(&held[0])]).unwrap();
    let job = worker.get_job(held[0].id).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Completed, 1));
}

#[test]
fn a_leased_job_the_worker_lost_track_of_is_taken_back() {
    let Some(server) = server() else { return };
    let lease = Duration::from_millis(200);
    let worker = backend(&server, lease);
    let other = backend(&server, lease);
    let queue: Arc<str> = Arc::from("orphan");
    worker.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs = vec![
        job(&queue, 1, Priority::Normal),
        job(&queue, 2, Priority::Normal),
    ];
    worker.push(&queue, &mut jobs, &declaration).unwrap();
    let cancel = AtomicBool::new(false);
    let taken = worker.fetch(&queue, request(2), &cancel).unwrap();
    assert_eq!(taken.len(), 2);
    // As if the reply for the first job had been lost: the worker holds (and renews)
    // only the second.
    let handle = worker.shared.queue(&queue);
    handle.held.lock().remove(&taken[0].id);
    let wait = FetchRequest {
        wait: ORPHAN_AFTER + Duration::from_secs(4),
        ..request(2)
    };
    let rescued = other.fetch(&queue, wait, &cancel).unwrap();
    assert_eq!(rescued.len(), 1);
    // Its run never started (its reply was lost): taken back uncounted.
    assert_eq!((rescued[0].id, rescued[0].attempts), (taken[0].id, 1));
    // The job it does hold is still its own.
    worker.settle(&queue, vec![completed(&taken[1])]).unwrap();
    let job = worker.get_job(taken[1].id).unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Completed, 1));
}

#[test]
fn each_cron_tick_is_pushed_once() {
    let Some(server) = server() else { return };
    let one = backend(&server, Duration::from_secs(30));
    let two = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("cron");
    one.declare_queue(&queue, &declaration(), true).unwrap();
    let tick = 1_800_000_000.0;
    let pushed: Vec<bool> = [&one, &two, &one]
        .iter()
        .map(|b| {
            let mut jobs = vec![job(&queue, 1, Priority::Normal)];
            b.push_tick(&queue, &mut jobs, "every-second", tick, &declaration)
                .unwrap()
        })
        .collect();
    assert_eq!(pushed, [true, false, false]);
    let mut later = vec![job(&queue, 2, Priority::Normal)];
    assert!(two
        .push_tick(&queue, &mut later, "every-second", tick + 1.0, &declaration)
        .unwrap());
    assert_eq!(one.counts(&queue).unwrap().waiting, 2);
}

#[test]
fn released_jobs_keep_their_place_and_attempt() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("release");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs: Vec<Job> = (1..=3).map(|n| job(&queue, n, Priority::Normal)).collect();
    redis.push(&queue, &mut jobs, &declaration).unwrap();
    let cancel = AtomicBool::new(false);
    let taken = redis.fetch(&queue, request(2), &cancel).unwrap();
    redis.release(&queue, &taken).unwrap();
    let again = redis.fetch(&queue, request(3), &cancel).unwrap();
    let data: Vec<&[u8]> = again.iter().map(|j| &*j.data).collect();
    assert_eq!(data, [b"1", b"2", b"3"]);
    assert!(again.iter().all(|j| j.attempts == 1));
}

#[test]
fn jobs_forwarded_from_a_spill_are_refused_again_after_retention_dropped_them() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("forwarded");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let batch: Vec<Job> = (0..5).map(|n| job(&queue, n, Priority::Normal)).collect();
    redis
        .push_forwarded(&queue, &batch, &declaration())
        .unwrap();
    // They run, and retention (2 completed kept) drops most of them.
    let taken = redis
        .fetch(&queue, request(10), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(taken.len(), 5);
    redis
        .settle(&queue, taken.iter().map(completed).collect())
        .unwrap();
    let dropped = batch
        .iter()
        .filter(|job| redis.get_job(job.id).unwrap().is_none())
        .count();
    assert!(dropped >= 3, "retention dropped {dropped} of 5");
    // Forwarded again (its process died before marking the batch done): refused, all or none.
    let again = redis.push_forwarded(&queue, &batch, &declaration());
    assert!(
        matches!(again, Err(QueueError::DuplicateJob(_))),
        "{again:?}"
    );
    assert!(matches!(
        redis.push_forwarded(&queue, &batch[..1], &declaration()),
        Err(QueueError::DuplicateJob(_))
    ));
    assert_eq!(redis.counts(&queue).unwrap().waiting, 0);
    // An ordinary push is not remembered: its ids cost nothing once dropped.
    let mut plain = vec![job(&queue, 9, Priority::Normal)];
    redis.push(&queue, &mut plain, &declaration).unwrap();
}

mod admin;
mod combine;
mod migrate;
mod sweep;
