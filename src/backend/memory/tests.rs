//! The memory backend alone: ordering, delays, retention, acks, wake-ups, fair share.

use super::*;
use std::time::{Duration, Instant};

use crate::backend::Retention;
use crate::backend::Settlement;
use crate::job::{JobOptions, Payload, Priority};

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

fn setup() -> (MemoryBackend, Arc<str>) {
    let backend = MemoryBackend::new();
    let queue: Arc<str> = Arc::from("q");
    backend.declare_queue(&queue, &declaration(), true).unwrap();
    (backend, queue)
}

fn job(queue: &Arc<str>, n: u32, priority: Priority, delay: f64) -> Job {
    let data: Payload = Arc::from(format!("{{\"n\":{n}}}").into_bytes());
    let options = JobOptions {
        priority,
        delay,
        ..Default::default()
    };
    Job::new(queue.clone(), data, options, 3, 300.0)
}

fn fetch_all(backend: &MemoryBackend, queue: &str) -> Vec<Job> {
    let request = FetchRequest {
        max: 1000,
        share: 1,
        wait: Duration::ZERO,
        start_all: false,
    };
    backend
        .fetch(queue, request, &AtomicBool::new(false))
        .unwrap()
}

fn names(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|j| String::from_utf8(j.data.to_vec()).unwrap())
        .collect()
}

#[test]
fn heap_orders_by_priority_then_fifo() {
    let (backend, queue) = setup();
    let order = [
        (1, Priority::Low),
        (2, Priority::Normal),
        (3, Priority::Critical),
        (4, Priority::Normal),
        (5, Priority::High),
        (6, Priority::Critical),
        (7, Priority::Low),
    ];
    let mut jobs: Vec<Job> = order
        .iter()
        .map(|(n, p)| job(&queue, *n, *p, 0.0))
        .collect();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let fetched = fetch_all(&backend, &queue);
    let expected: Vec<String> = [3, 6, 5, 2, 4, 1, 7]
        .iter()
        .map(|n| format!("{{\"n\":{n}}}"))
        .collect();
    assert_eq!(names(&fetched), expected);
    assert!(fetched
        .iter()
        .all(|j| j.attempts == 1 && j.state == JobState::Active));
}

#[test]
fn released_jobs_keep_their_place() {
    let (backend, queue) = setup();
    let mut jobs: Vec<Job> = (1..=3)
        .map(|n| job(&queue, n, Priority::Normal, 0.0))
        .collect();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let request = FetchRequest {
        max: 2,
        share: 1,
        wait: Duration::ZERO,
        start_all: false,
    };
    let first = backend
        .fetch(&queue, request, &AtomicBool::new(false))
        .unwrap();
    backend.release(&queue, &first).unwrap();
    let again = fetch_all(&backend, &queue);
    assert_eq!(names(&again), vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    assert_eq!(again[0].attempts, 1, "a released run is not counted");
}

#[test]
fn delayed_jobs_wait_for_tick() {
    let (backend, queue) = setup();
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 60.0)];
    let due = jobs[0].due_at();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    assert!(fetch_all(&backend, &queue).is_empty());
    assert_eq!(backend.tick(&queue, due - 1.0).unwrap(), Some(due));
    assert!(fetch_all(&backend, &queue).is_empty());
    backend.tick(&queue, due).unwrap();
    assert_eq!(fetch_all(&backend, &queue).len(), 1);
}

#[test]
fn retention_keeps_the_newest_completed_jobs() {
    let (backend, queue) = setup();
    let mut jobs: Vec<Job> = (1..=4)
        .map(|n| job(&queue, n, Priority::Normal, 0.0))
        .collect();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let fetched = fetch_all(&backend, &queue);
    let at = now();
    let acks = fetched
        .iter()
        .map(|j| Ack {
            id: j.id,
            attempt: 1,
            at,
            settlement: Settlement::Completed { result: None },
        })
        .collect();
    backend.settle(&queue, acks).unwrap();
    let kept = backend
        .list_jobs(&queue, Some(JobState::Completed), 0, 10)
        .unwrap();
    assert_eq!(names(&kept), vec!["{\"n\":4}", "{\"n\":3}"]);
    let counts = backend.counts(&queue).unwrap();
    assert_eq!((counts.completed, counts.active), (4, 0));
    // Age: everything finished more than `ttl` ago goes.
    backend.tick(&queue, at + RETENTION.ttl + 1.0).unwrap();
    assert!(backend
        .list_jobs(&queue, Some(JobState::Completed), 0, 10)
        .unwrap()
        .is_empty());
    assert!(backend.get_job(fetched[3].id).unwrap().is_none());
}

#[test]
fn stale_acks_are_ignored_and_failed_jobs_retry() {
    let (backend, queue) = setup();
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
    let id = jobs[0].id;
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    fetch_all(&backend, &queue);
    let fail = |attempt| Ack {
        id,
        attempt,
        at: now(),
        settlement: Settlement::Failed {
            error: "E: boom".into(),
            traceback: None,
        },
    };
    backend.settle(&queue, vec![fail(7)]).unwrap();
    assert_eq!(
        backend.get_job(id).unwrap().unwrap().state,
        JobState::Active
    );
    backend.settle(&queue, vec![fail(1)]).unwrap();
    let failed = backend.get_job(id).unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.extras().unwrap().error.as_deref(), Some("E: boom"));
    assert!(backend.retry_failed(id).unwrap());
    let again = fetch_all(&backend, &queue);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert!(
        !backend.retry_failed(id).unwrap(),
        "only failed jobs can be retried"
    );
}

#[test]
fn blocked_fetch_wakes_on_push() {
    let (backend, queue) = setup();
    let backend = Arc::new(backend);
    let worker = {
        let backend = backend.clone();
        let queue = queue.clone();
        std::thread::spawn(move || {
            let request = FetchRequest {
                max: 10,
                share: 1,
                wait: Duration::from_secs(30),
                start_all: false,
            };
            backend
                .fetch(&queue, request, &AtomicBool::new(false))
                .unwrap()
        })
    };
    // Wait until the worker is really blocked, then push.
    while backend.queue(&queue).unwrap().state.lock().fetchers_waiting == 0 {
        std::thread::yield_now();
    }
    let started = Instant::now();
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let got = worker.join().unwrap();
    assert_eq!(got.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn paused_queues_hand_out_nothing() {
    let (backend, queue) = setup();
    backend.set_paused(&queue, true).unwrap();
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    assert!(fetch_all(&backend, &queue).is_empty());
    assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
    backend.set_paused(&queue, false).unwrap();
    assert_eq!(fetch_all(&backend, &queue).len(), 1);
}

#[test]
fn fair_share_splits_a_backlog() {
    let (backend, queue) = setup();
    let mut jobs: Vec<Job> = (1..=10)
        .map(|n| job(&queue, n, Priority::Normal, 0.0))
        .collect();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let request = FetchRequest {
        max: 256,
        share: 5,
        wait: Duration::ZERO,
        start_all: false,
    };
    let got = backend
        .fetch(&queue, request, &AtomicBool::new(false))
        .unwrap();
    assert_eq!(got.len(), 2);
}

#[test]
fn an_id_the_queue_holds_is_never_pushed_again() {
    let (backend, queue) = setup();
    let first = job(&queue, 1, Priority::Normal, 0.0);
    let mut again = first.clone();
    again.data = Arc::from(&b"\"other\""[..]);
    backend
        .push(&queue, &mut vec![first.clone()], &declaration)
        .unwrap();
    let pushed = backend.push(
        &queue,
        &mut vec![job(&queue, 2, Priority::Normal, 0.0), again],
        &declaration,
    );
    assert!(
        matches!(pushed, Err(QueueError::DuplicateJob(_))),
        "{pushed:?}"
    );
    // Nothing of the refused batch was stored, and the first job is intact.
    assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
    assert_eq!(backend.get_job(first.id).unwrap().unwrap().data, first.data);
}

#[test]
fn a_push_to_a_deleted_queue_creates_it_again() {
    let (backend, queue) = setup();
    backend.delete(&queue).unwrap();
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    assert_eq!(backend.queue_names().unwrap(), ["q"]);
    assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
}

#[test]
fn a_promoted_job_handed_back_stays_behind_jobs_that_waited_before_it() {
    let (backend, queue) = setup();
    let delayed = job(&queue, 1, Priority::Normal, 0.5);
    let due = delayed.due_at();
    backend
        .push(&queue, &mut vec![delayed], &declaration)
        .unwrap();
    backend
        .push(
            &queue,
            &mut vec![job(&queue, 2, Priority::Normal, 0.0)],
            &declaration,
        )
        .unwrap();
    backend.tick(&queue, due).unwrap();
    let first = fetch_all(&backend, &queue);
    assert_eq!(names(&first), vec!["{\"n\":2}", "{\"n\":1}"]);
    backend.release(&queue, &first).unwrap();
    // Promoted after job 2 was pushed, job 1 queues behind it, also once handed back.
    assert_eq!(
        names(&fetch_all(&backend, &queue)),
        vec!["{\"n\":2}", "{\"n\":1}"]
    );
}

#[test]
fn listings_return_the_first_jobs_of_each_state_in_order() {
    let (backend, queue) = setup();
    // Delayed jobs pushed in a shuffled order of due times: listed by due time.
    let mut delays: Vec<u32> = (1..=200).collect();
    fastrand::shuffle(&mut delays);
    let mut jobs: Vec<Job> = delays
        .iter()
        .map(|n| job(&queue, *n, Priority::Normal, 100.0 + f64::from(*n)))
        .collect();
    backend.push(&queue, &mut jobs, &declaration).unwrap();
    let listed = backend
        .list_jobs(&queue, Some(JobState::Delayed), 0, 5)
        .unwrap();
    assert_eq!(
        names(&listed),
        (1..=5)
            .map(|n| format!("{{\"n\":{n}}}"))
            .collect::<Vec<_>>()
    );
    // Active: the fetched ones, by priority then push order.
    let mut waiting = vec![
        job(&queue, 300, Priority::Low, 0.0),
        job(&queue, 301, Priority::High, 0.0),
    ];
    backend.push(&queue, &mut waiting, &declaration).unwrap();
    fetch_all(&backend, &queue);
    let active = backend
        .list_jobs(&queue, Some(JobState::Active), 0, 10)
        .unwrap();
    assert_eq!(names(&active), vec!["{\"n\":301}", "{\"n\":300}"]);
}

#[test]
fn cron_ticks_are_claimed_once() {
    let (backend, queue) = setup();
    let pushed: Vec<bool> = [100.0, 100.0, 101.0]
        .into_iter()
        .map(|tick| {
            let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
            backend
                .push_tick(&queue, &mut jobs, "s", tick, &declaration)
                .unwrap()
        })
        .collect();
    assert_eq!(pushed, [true, false, true]);
    assert_eq!(backend.counts(&queue).unwrap().waiting, 2);
}

#[test]
fn a_push_that_must_not_wait_gives_way_to_a_held_lock() {
    let (backend, queue) = setup();
    let store = backend
        .nonblocking()
        .expect("memory pushes without waiting");
    let mut jobs = vec![job(&queue, 1, Priority::Normal, 0.0)];
    let handle = backend.queue(&queue).unwrap();
    let held = handle.state.lock();
    assert!(!store.try_push(&queue, &mut jobs, &declaration).unwrap());
    assert_eq!(jobs.len(), 1, "nothing was taken");
    drop(held);
    assert!(store.try_push(&queue, &mut jobs, &declaration).unwrap());
    assert_eq!(backend.counts(&queue).unwrap().waiting, 1);
}
