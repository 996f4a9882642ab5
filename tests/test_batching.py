"""Batching: a sync worker takes about 1 ms of work at a time, so results, pauses and
priorities are honoured within about that delay, and fast handlers still run in big batches."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from helpers import EARLY_TOLERANCE, QUIET_WINDOW, WAIT, Recorder, Tracker, utcnow, wait_equal
from rnode_queue import Job, QueueManager


def test_results_are_recorded_as_each_slow_job_finishes(qm: QueueManager) -> None:
    q = qm.create_queue("slow-backlog", concurrency=1)
    ids = [q.push({"i": i}) for i in range(20)]
    q.process(lambda job: time.sleep(0.1))

    first = qm.wait_for(ids[0], timeout=WAIT)
    others = [qm.get_job(job_id) for job_id in ids[1:]]
    assert first is not None and first.status == "completed", first
    not_completed = [job for job in others if job is not None and job.status != "completed"]
    assert len(not_completed) >= 15, (
        f"the first job's result was recorded only after {19 - len(not_completed)} more jobs "
        f"had completed; statuses: {[job.status if job else None for job in others]}, "
        f"queue stats: {q.get_stats()}"
    )

    assert qm.join("slow-backlog", timeout=WAIT)
    last = qm.get_job(ids[-1])
    assert last is not None and last.status == "completed"
    assert first.completed_at is not None and last.completed_at is not None
    # 19 more jobs of 0.1 s ran after the first one finished
    assert last.completed_at - first.completed_at >= timedelta(seconds=1.0), (
        first.completed_at,
        last.completed_at,
    )


def test_pause_from_a_handler_stops_further_starts_promptly(qm: QueueManager) -> None:
    total = 50
    tracker = Tracker()
    lock = threading.Lock()
    started: list[int] = []
    paused = threading.Event()
    q = qm.create_queue("pause-mid-backlog", concurrency=1)

    def handler(job: Job) -> None:
        with lock:
            started.append(job.data)
            count = len(started)
        tracker.enter()
        try:
            if count == 5:
                q.pause()
                paused.set()
            time.sleep(0.01)
        finally:
            tracker.leave()

    q.push_batch([{"data": i} for i in range(total)])
    q.process(handler)

    assert paused.wait(WAIT), f"only {len(started)} jobs started"
    # No event says "idle while paused": poll the stats, bounded.
    wait_equal(lambda: q.get_stats()["processing"], 0, what="processing after pause")
    assert tracker.wait(lambda t: t.running == 0)
    ran = tracker.started
    assert not tracker.wait(lambda t: t.started > ran, QUIET_WINDOW), (
        f"jobs kept starting on a paused queue: {tracker.started} after {ran}"
    )
    assert 5 <= ran <= 10, f"{ran} jobs started although the 5th one paused the queue"
    stats = q.get_stats()
    assert stats["paused"] is True
    wait_equal(
        lambda: (q.get_stats()["completed"], q.get_stats()["waiting"]),
        (ran, total - ran),
        what="(completed, waiting) while paused",
    )

    q.resume()
    assert qm.join("pause-mid-backlog", timeout=WAIT)
    assert sorted(started) == list(range(total))


def test_a_critical_job_overtakes_a_slow_backlog(qm: QueueManager) -> None:
    backlog = 30
    recorder = Recorder()
    q = qm.create_queue("critical-overtakes", concurrency=1)

    def handler(job: Job) -> None:
        recorder.record(job)
        time.sleep(0.01)

    q.push_batch([{"data": i} for i in range(backlog)])
    q.process(handler)
    assert recorder.wait_count(5)
    before = len(recorder)
    critical = q.push("critical", priority="critical")
    job = qm.wait_for(critical, timeout=WAIT)
    assert job is not None and job.status == "completed"

    assert qm.join("critical-overtakes", timeout=WAIT)
    order = [entry["job"].data for entry in recorder.snapshot()]
    assert sorted(order, key=str) == sorted([*range(backlog), "critical"], key=str)
    position = order.index("critical") - before
    assert position <= 5, (
        f"the critical job ran {position} jobs after it was pushed (behind {before} started); "
        f"order: {order}"
    )


def test_a_stuck_handler_does_not_hold_back_its_batch(qm: QueueManager) -> None:
    q = qm.create_queue("stuck-in-batch", concurrency=1, max_retries=0)
    stuck_started = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    def handler(job: Job) -> object:
        if job.data == "stuck":
            stuck_started.set()
            release.wait(WAIT * 2)
            returned.set()
            return "late"
        return job.data

    q.process(handler)
    try:
        # Warm up with fast jobs, so that the worker takes the next backlog in one batch.
        q.push_batch([{"data": i} for i in range(2_000)])
        assert qm.join("stuck-in-batch", timeout=WAIT)
        q.pause()
        before = q.push_batch([{"data": i} for i in range(20)])
        stuck = q.push("stuck", timeout=0.3)
        after = q.push_batch([{"data": 100 + i} for i in range(5)])
        q.resume()
        assert stuck_started.wait(WAIT)

        assert qm.join("stuck-in-batch", timeout=5), (
            f"join timed out; statuses before the stuck job: "
            f"{[getattr(qm.get_job(i), 'status', None) for i in before]}, "
            f"stuck: {qm.get_job(stuck)!r}, stats: {q.get_stats()}"
        )
        assert not returned.is_set(), "the stuck handler returned during the test"
        for index, job_id in enumerate(before + after):
            job = qm.get_job(job_id)
            assert job is not None and job.status == "completed", (index, job)
            assert job.result == job.data
        failed = qm.get_job(stuck)
        assert failed is not None and failed.status == "failed", failed
        assert failed.error is not None and "timed out" in failed.error
    finally:
        release.set()
    assert returned.wait(WAIT)


def test_completed_jobs_expire_by_age_on_a_quiet_queue(qm: QueueManager) -> None:
    ttl = 0.3
    q = qm.create_queue("quiet-ttl", ttl=ttl)
    q.process(lambda job: "done")
    job = qm.wait_for(q.push(None), timeout=WAIT)
    assert job is not None and job.status == "completed"
    assert job.completed_at is not None

    # No event signals expiry: poll get_job (reads only) until a deadline.
    deadline = time.monotonic() + 2.0
    while qm.get_job(job.id) is not None:
        assert time.monotonic() < deadline, (
            f"a job completed {ttl}s ago is still retained after 2s on a quiet queue: "
            f"{qm.get_job(job.id)!r}"
        )
        time.sleep(0.01)
    gone_at = utcnow()
    assert gone_at - job.completed_at >= timedelta(seconds=ttl - EARLY_TOLERANCE)
    assert q.get_stats()["completed"] == 1


def test_many_fast_jobs_all_run_once(qm: QueueManager) -> None:
    total = 20_000
    lock = threading.Lock()
    seen: set[int] = set()
    runs = 0

    def handler(job: Job) -> None:
        nonlocal runs
        with lock:
            runs += 1
            seen.add(job.data)

    q = qm.create_queue("many-fast")
    q.process(handler)
    q.push_batch([{"data": i} for i in range(total)])
    assert qm.join("many-fast", timeout=60)
    wait_equal(lambda: qm.get_stats().jobs_processed, total, what="jobs_processed")
    assert runs == total
    assert len(seen) == total
    assert q.get_stats()["completed"] == total
