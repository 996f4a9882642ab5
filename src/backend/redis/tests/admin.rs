//! Administration of jobs: a failed job retried by hand.
use super::*;

#[test]
fn a_failed_job_retried_by_hand_leaves_no_error_behind_once_it_completes() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("retried");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let mut jobs = vec![job(&queue, 1, Priority::Normal)];
    let id = jobs[0].id;
    redis.push(&queue, &mut jobs, &declaration).unwrap();
    let taken = redis
        .fetch(&queue, request(1), &AtomicBool::new(false))
        .unwrap();
    let failed = Ack {
        id,
        attempt: taken[0].attempts,
        at: now(),
        settlement: Settlement::Failed {
            error: "ValueError: boom".into(),
            traceback: Some("Traceback ...".into()),
        },
    };
    redis.settle(&queue, vec![failed]).unwrap();
    assert!(redis.retry_failed(id).unwrap());
    let waiting = redis.get_job(id).unwrap().unwrap();
    assert_eq!((waiting.state, waiting.attempts), (JobState::Waiting, 0));
    let taken = redis
        .fetch(&queue, request(1), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(taken[0].attempts, 1, "attempts start again");
    redis
        .settle(&queue, taken.iter().map(completed).collect())
        .unwrap();
    let done = redis.get_job(id).unwrap().unwrap();
    assert_eq!(done.state, JobState::Completed);
    assert_eq!(done.extras().and_then(|e| e.error.clone()), None);
    // Nothing of its failure is kept beside its finished record.
    let base = redis.shared.queue(&queue).keys[keys::BASE].clone();
    for hash in ["err", "tb", "hist"] {
        let kept: i64 = raw(
            &redis,
            redis::Cmd::hexists(format!("{base}{hash}"), id.to_string()),
        );
        assert_eq!(kept, 0, "{hash} still holds the job");
    }
}
