//! Single pushes from many threads share script calls (`combine.rs`).
use super::*;
use std::sync::Barrier;

fn evalsha_calls(redis: &RedisBackend) -> u64 {
    let info: String = raw(redis, redis::cmd("INFO").arg("commandstats").clone());
    info.lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// Pushes one job from each of `threads` threads at once, while Redis holds writes back for a
/// moment (so that they gather behind the first); returns each thread's outcome and the jobs
/// its vector holds afterwards.
fn push_together(
    redis: &Arc<RedisBackend>,
    queue: &Arc<str>,
    threads: u32,
) -> Vec<(Result<()>, Vec<Job>)> {
    let start = Arc::new(Barrier::new(threads as usize + 1));
    let handles: Vec<_> = (0..threads)
        .map(|n| {
            let (redis, queue, start) = (redis.clone(), queue.clone(), start.clone());
            thread::spawn(move || {
                let mut jobs = vec![job(&queue, n, Priority::Normal)];
                start.wait();
                let outcome = redis.push(&queue, &mut jobs, &declaration);
                (outcome, jobs)
            })
        })
        .collect();
    let _: String = raw(
        redis,
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(300)
            .arg("WRITE")
            .clone(),
    );
    start.wait();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn single_pushes_from_many_threads_share_script_calls() {
    let Some(server) = server() else { return };
    let redis = Arc::new(backend(&server, Duration::from_secs(30)));
    let queue: Arc<str> = Arc::from("together");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    let before = evalsha_calls(&redis);
    let outcomes = push_together(&redis, &queue, 16);
    for (outcome, left) in &outcomes {
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(left.is_empty(), "a stored job stays with its caller");
    }
    assert_eq!(redis.counts(&queue).unwrap().waiting, 16);
    // 16 pushes, and the INFO call itself: without combining, 16 script calls.
    let calls = evalsha_calls(&redis) - before;
    assert!(calls <= 8, "16 single pushes took {calls} script calls");
}

#[test]
fn a_failed_round_gives_each_caller_its_own_jobs_back() {
    let Some(server) = server() else { return };
    let redis = Arc::new(backend(&server, Duration::from_secs(30)));
    let queue: Arc<str> = Arc::from("refused");
    redis.declare_queue(&queue, &declaration(), true).unwrap();
    // Full: a push is refused (out of memory, no eviction).
    let _: String = raw(
        &redis,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(1)
            .clone(),
    );
    let outcomes = push_together(&redis, &queue, 8);
    let _: String = raw(
        &redis,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .clone(),
    );
    let mut data: Vec<Vec<u8>> = Vec::new();
    for (outcome, left) in &outcomes {
        assert!(
            matches!(outcome, Err(QueueError::Backend(_))),
            "{outcome:?}"
        );
        assert_eq!(
            left.len(),
            1,
            "each caller gets its own job back, for the spill"
        );
        data.push(left[0].data.to_vec());
    }
    data.sort();
    let expected: Vec<Vec<u8>> = (0..8u32).map(|n| n.to_string().into_bytes()).collect();
    assert_eq!(data, expected);
    assert_eq!(redis.counts(&queue).unwrap().waiting, 0);
}
