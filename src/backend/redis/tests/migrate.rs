//! A queue stored by an older rnode-queue (layout 1: a hash per job, waiting jobs in a sorted
//! set by rank, leased jobs in a set per worker) is converted, every job kept in its state.
use super::*;

const SEQ_SPAN: f64 = 281_474_976_710_656.0;

/// Writes one job the way layout 1 stored it: the old body (no max attempts in its header),
/// at high priority (10).
fn old_job(redis: &RedisBackend, base: &str, id: JobId, data: &str, fields: &[(&str, &str)]) {
    let body = format!("{} 10 30 0 0 0 0\n{data}", now());
    let mut cmd = redis::cmd("HSET");
    cmd.arg(format!("{base}j:{id}")).arg("b").arg(body);
    for (field, value) in fields {
        cmd.arg(*field).arg(*value);
    }
    let _: i64 = raw(redis, cmd);
}

#[test]
fn a_queue_of_the_old_layout_is_converted_with_every_job_in_its_state() {
    let Some(server) = server() else { return };
    let redis = backend(&server, Duration::from_secs(30));
    let queue: Arc<str> = Arc::from("legacy");
    let base = redis.shared.queue(&queue).keys[keys::BASE].clone();
    let ids: Vec<JobId> = (0..5).map(|_| JobId::new(now())).collect();
    let (waiting, delayed, completed, failed) = (ids[0], ids[1], ids[2], ids[3]);
    let due = now() + 3600.0;
    let _: i64 = raw(
        &redis,
        redis::cmd("HSET")
            .arg(format!("{base}meta"))
            .arg(&[
                "seq", "4", "ttl", "3600000", "kc", "10", "kf", "10", "cfg", "{}",
            ])
            .clone(),
    );
    // Waiting at high priority (10), in the old sorted set ranked by priority.
    old_job(
        &redis,
        &base,
        waiting,
        "\"w\"",
        &[("s", "waiting"), ("m", "3")],
    );
    let rank = (15.0 - 10.0) * SEQ_SPAN + 1.0;
    let _: i64 = raw(
        &redis,
        redis::Cmd::zadd(format!("{base}waiting"), waiting.to_string(), rank),
    );
    let due_text = due.to_string();
    old_job(
        &redis,
        &base,
        delayed,
        "\"d\"",
        &[("s", "delayed"), ("m", "2"), ("sa", &due_text)],
    );
    let _: i64 = raw(
        &redis,
        redis::Cmd::zadd(
            format!("{base}delayed"),
            delayed.to_string(),
            (due * 1000.0) as i64,
        ),
    );
    let at = now().to_string();
    old_job(
        &redis,
        &base,
        completed,
        "\"c\"",
        &[
            ("s", "completed"),
            ("m", "1"),
            ("a", "1"),
            ("f", &at),
            ("st", &at),
            ("r", "42"),
        ],
    );
    let _: i64 = raw(
        &redis,
        redis::Cmd::rpush(format!("{base}completed"), completed.to_string()),
    );
    old_job(
        &redis,
        &base,
        failed,
        "\"f\"",
        &[
            ("s", "failed"),
            ("m", "2"),
            ("a", "2"),
            ("f", &at),
            ("e", "boom"),
            ("tb", "Traceback"),
        ],
    );
    let _: i64 = raw(
        &redis,
        redis::Cmd::rpush(format!("{base}failed"), failed.to_string()),
    );

    // More finished jobs than one call converts: the lists are walked over several calls.
    let many: Vec<JobId> = (0..2_500).map(|_| JobId::new(now())).collect();
    for id in &many {
        old_job(
            &redis,
            &base,
            *id,
            "0",
            &[("s", "completed"), ("m", "1"), ("a", "1"), ("f", &at)],
        );
        let _: i64 = raw(
            &redis,
            redis::Cmd::rpush(format!("{base}completed"), id.to_string()),
        );
    }

    // The first process of the new version that declares the queue converts it.
    redis.declare_queue(&queue, &declaration(), false).unwrap();
    let job = |id| redis.get_job(id).unwrap().expect("kept");
    let w = job(waiting);
    assert_eq!(
        (w.state, w.priority, w.max_attempts, &*w.data),
        (JobState::Waiting, Priority::High, 3, &b"\"w\""[..])
    );
    let d = job(delayed);
    assert_eq!(
        (d.state, d.scheduled_at.get()),
        (JobState::Delayed, Some(due))
    );
    let c = job(completed);
    assert_eq!(c.state, JobState::Completed);
    assert_eq!(c.attempts, 1);
    assert_eq!(
        c.extras().and_then(|e| e.result.as_deref()),
        Some(&b"42"[..])
    );
    let f = job(failed);
    assert_eq!((f.state, f.attempts), (JobState::Failed, 2));
    let extras = f.extras().expect("error kept");
    assert_eq!(extras.error.as_deref(), Some("boom"));
    assert_eq!(extras.traceback.as_deref(), Some("Traceback"));
    let counts = redis.counts(&queue).unwrap();
    assert_eq!((counts.waiting, counts.delayed), (1, 1));
    // Nothing of the old layout is left, and the converted job runs.
    for key in [
        format!("{base}waiting"),
        format!("{base}j:{waiting}"),
        format!("{base}j:{failed}"),
    ] {
        let exists: i64 = raw(&redis, redis::Cmd::exists(&key));
        assert_eq!(exists, 0, "{key} left behind");
    }
    let taken = redis
        .fetch(&queue, request(10), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(taken.iter().map(|j| j.id).collect::<Vec<_>>(), [waiting]);
    assert_eq!(taken[0].attempts, 1);
}
