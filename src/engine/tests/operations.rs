//! What operators see: the counters per queue and the registry of worker processes.

use super::*;

#[test]
fn metrics_count_pushes_outcomes_and_run_times_per_queue() {
    let engine = engine();
    engine.create_queue("q", config(2, 1, 10.0)).unwrap();
    let handler: Arc<Handler> = Arc::new(|job: &Job| {
        if &*job.data == b"\"bad\"" {
            RunOutcome::Failure {
                error: "ValueError: bad".into(),
                traceback: Some("Traceback (most recent call last):\n  ...".into()),
            }
        } else {
            std::thread::sleep(Duration::from_millis(2));
            RunOutcome::Success(None)
        }
    });
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    for data in ["\"ok\"", "\"ok\"", "\"bad\""] {
        push(&engine, "q", data, JobOptions::default());
    }
    assert!(engine.join(Some("q"), WAIT).unwrap());
    let reports = engine.metrics_report().unwrap();
    let report = reports.iter().find(|r| r.queue == "q").expect("listed");
    let counters = &report.counters;
    // Two completed; the bad one failed once (retried) and then for good.
    assert_eq!(
        (
            counters.pushed,
            counters.processed,
            counters.retried,
            counters.failed
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(counters.duration_count(), 4);
    // The two good runs slept 2 ms: at least 4 ms in all, and above the 1 ms bucket.
    assert!(counters.duration_sum >= Duration::from_millis(4));
    let at_most_1ms =
        counters.duration_buckets[DURATION_BOUNDS.iter().position(|&b| b == 0.001).unwrap()];
    assert!(at_most_1ms <= 2, "{:?}", counters.duration_buckets);
    assert_eq!(report.counts.unwrap().failed, 1);
    assert!(engine.close(Duration::from_secs(5)).finished);
}

#[test]
fn metrics_off_counts_nothing_but_still_reports_the_store() {
    let options = EngineOptions {
        metrics: false,
        ..EngineOptions::default()
    };
    let engine = Engine::new(Arc::new(MemoryBackend::new()), options).unwrap();
    push(&engine, "q", "1", JobOptions::default());
    let reports = engine.metrics_report().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].counters, MetricsSnapshot::default());
    assert_eq!(reports[0].counts.unwrap().waiting, 1);
}

#[test]
fn a_process_running_handlers_is_listed_as_a_worker_until_it_closes() {
    let engine = engine();
    assert!(engine.workers().unwrap().is_empty(), "no handler yet");
    let gate = Arc::new(Gate::default());
    let started = Arc::new(Gate::default());
    let (g, s) = (gate.clone(), started.clone());
    let handler: Arc<Handler> = Arc::new(move |_job: &Job| {
        s.open();
        g.wait();
        RunOutcome::Success(None)
    });
    engine.create_queue("q", config(3, 0, 10.0)).unwrap();
    engine
        .process("q", Arc::new(ClosureExecutor(handler)), None, false)
        .unwrap();
    push(&engine, "q", "1", JobOptions::default());
    started.wait();
    // The first beat is the timer's, at once; a later one says what runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let workers = engine.workers().unwrap();
        if let Some(worker) = workers.first() {
            break worker.clone();
        }
        assert!(Instant::now() < deadline, "never listed");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(listed.pid, std::process::id());
    assert_eq!(listed.queues, vec!["q".to_string()]);
    assert_eq!(listed.concurrency.get("q"), Some(&3));
    assert!(listed.last_seen >= listed.started_at);
    engine.beat();
    assert_eq!(engine.workers().unwrap()[0].running, 1);
    gate.open();
    let backend = engine.backend.clone();
    assert!(engine.close(Duration::from_secs(5)).finished);
    assert!(backend.workers().unwrap().is_empty(), "taken off at close");
}

#[test]
fn heartbeats_expire_in_the_memory_store() {
    let store = MemoryBackend::new();
    let info = Payload::from(&b"{}"[..]);
    store.beat("a", &info, 0.05).unwrap();
    store.beat("b", &info, 60.0).unwrap();
    assert_eq!(store.workers().unwrap().len(), 2);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(store.workers().unwrap().len(), 1, "a expired");
    store.leave("b").unwrap();
    assert!(store.workers().unwrap().is_empty());
}
