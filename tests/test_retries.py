"""Retries: attempts, backoff (fixed, exponential, capped, custom), failed jobs, retry_job."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest
from helpers import EARLY_TOLERANCE, LATE_BOUND, WAIT, Recorder, assert_aware_utc, wait_equal
from rnode_queue import Job, QueueManager


def attempt_gaps(recorder: Recorder) -> list[float]:
    starts = [entry["mono"] for entry in recorder.snapshot()]
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


def assert_gaps(gaps: list[float], expected: list[float], late: float = LATE_BOUND) -> None:
    assert len(gaps) == len(expected), gaps
    for index, (gap, want) in enumerate(zip(gaps, expected, strict=False)):
        assert gap >= want - EARLY_TOLERANCE, f"retry {index + 1} after {gap:.3f}s < {want}s"
        assert gap < want + late, f"retry {index + 1} after {gap:.3f}s, expected ~{want}s"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_failing_twice_then_succeeding(qm: QueueManager, kind: str) -> None:
    recorder = Recorder()

    def run(job: Job) -> str:
        recorder.record(job, attempts=job.attempts)
        if job.attempts <= 2:
            raise RuntimeError(f"flaky {job.attempts}")
        return f"ok after {job.attempts}"

    q = qm.create_queue("flaky", max_retries=3, retry_delay=0.02, backoff="fixed")
    if kind == "sync":
        q.process(run)
    else:

        async def handler(job: Job) -> str:
            await asyncio.sleep(0)
            return run(job)

        q.process(handler)
    job_id = q.push({"n": 1})
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    assert job.attempts == 3
    assert job.max_attempts == 4
    assert job.result == "ok after 3"
    assert [e["attempts"] for e in recorder.snapshot()] == [1, 2, 3]
    wait_equal(lambda: qm.get_stats().jobs_retried, 2, what="jobs_retried")
    wait_equal(lambda: qm.get_stats().jobs_processed, 1, what="jobs_processed")
    assert qm.get_stats().jobs_failed == 0
    wait_equal(lambda: (q.get_stats()["completed"], q.get_stats()["failed"]), (1, 0))


def test_attempts_push_option_overrides_the_queue(qm: QueueManager) -> None:
    recorder = Recorder()

    def always_fails(job: Job) -> None:
        recorder.record(job)
        raise ValueError("nope")

    q = qm.create_queue("limited", max_retries=5, retry_delay=0.01, backoff="fixed")
    q.process(always_fails)
    job_id = q.push(None, attempts=2)
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "failed"
    assert job.attempts == 2
    assert job.max_attempts == 2
    assert len(recorder) == 2


def test_fixed_backoff_spacing(qm: QueueManager) -> None:
    recorder = Recorder()

    def handler(job: Job) -> str:
        recorder.record(job)
        if job.attempts < 4:
            raise ValueError("again")
        return "done"

    q = qm.create_queue("fixed", max_retries=3, retry_delay=0.15, backoff="fixed")
    q.process(handler)
    job = qm.wait_for(q.push({}), timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    assert_gaps(attempt_gaps(recorder), [0.15, 0.15, 0.15])


def test_exponential_backoff_spacing(qm: QueueManager) -> None:
    recorder = Recorder()

    def handler(job: Job) -> str:
        recorder.record(job)
        if job.attempts < 4:
            raise ValueError("again")
        return "done"

    q = qm.create_queue(
        "exponential", max_retries=3, retry_delay=0.05, backoff="exponential", jitter=0.0
    )
    q.process(handler)
    job = qm.wait_for(q.push({}), timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    # retry_delay * 2**n: 0.05, 0.1, 0.2 s (at least; a generous margin above)
    assert_gaps(attempt_gaps(recorder), [0.05, 0.1, 0.2])


def test_exponential_backoff_is_capped(qm: QueueManager) -> None:
    recorder = Recorder()

    def handler(job: Job) -> None:
        recorder.record(job)
        raise ValueError("always")

    q = qm.create_queue(
        "capped",
        max_retries=5,
        retry_delay=0.05,
        backoff="exponential",
        backoff_cap=0.08,
        jitter=0.0,
    )
    q.process(handler)
    job = qm.wait_for(q.push({}), timeout=WAIT)
    assert job is not None
    assert job.status == "failed"
    assert job.attempts == 6
    # uncapped these would be 0.05, 0.1, 0.2, 0.4, 0.8
    assert_gaps(attempt_gaps(recorder), [0.05, 0.08, 0.08, 0.08, 0.08], late=0.4)


def test_custom_delays(qm: QueueManager) -> None:
    recorder = Recorder()

    def handler(job: Job) -> str:
        recorder.record(job)
        if job.attempts < 4:
            raise ValueError("again")
        return "done"

    q = qm.create_queue("custom", max_retries=3, backoff="custom", custom_delays=[0.05, 0.25, 0.1])
    q.process(handler)
    job = qm.wait_for(q.push({}), timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    assert_gaps(attempt_gaps(recorder), [0.05, 0.25, 0.1], late=0.4)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exhausted_retries_then_retry_job(qm: QueueManager, kind: str) -> None:
    healthy = threading.Event()
    recorder = Recorder()

    def failing_handler(job: Job) -> Any:
        recorder.record(job, attempts=job.attempts)
        if not healthy.is_set():
            raise ValueError(f"boom {job.attempts}")
        return {"recovered": True}

    q = qm.create_queue("exhaust", max_retries=2, retry_delay=0.01, backoff="fixed")
    if kind == "sync":
        q.process(failing_handler)
    else:

        async def async_failing_handler(job: Job) -> Any:
            await asyncio.sleep(0)
            recorder.record(job, attempts=job.attempts)
            if not healthy.is_set():
                raise ValueError(f"boom {job.attempts}")
            return {"recovered": True}

        q.process(async_failing_handler)
    job_id = q.push({"to": "x"})
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "failed"
    assert job.attempts == 3
    assert job.max_attempts == 3
    assert job.error == "ValueError: boom 3"
    assert job.traceback is not None
    assert 'raise ValueError(f"boom {job.attempts}")' in job.traceback
    assert "ValueError" in job.traceback
    assert_aware_utc(job.failed_at)
    assert job.completed_at is None
    assert job.result is None
    assert [e["attempts"] for e in recorder.snapshot()] == [1, 2, 3]

    failed = qm.get_jobs("exhaust", status="failed")
    assert [j.id for j in failed] == [job_id]
    assert failed[0].error == "ValueError: boom 3"
    assert qm.get_jobs("exhaust", status="waiting") == []
    wait_equal(lambda: qm.get_stats().jobs_failed, 1, what="jobs_failed")
    assert qm.get_stats().jobs_retried == 2
    wait_equal(lambda: q.get_stats()["failed"], 1)

    healthy.set()
    assert qm.retry_job(job_id) is True
    again = qm.wait_for(job_id, timeout=WAIT)
    assert again is not None
    assert again.status == "completed", again.error
    assert again.attempts == 1  # a fresh count of attempts
    assert again.result == {"recovered": True}
    assert [e["attempts"] for e in recorder.snapshot()] == [1, 2, 3, 1]
    assert qm.get_jobs("exhaust", status="failed") == []
    wait_equal(lambda: qm.get_stats().jobs_processed, 1, what="jobs_processed")
    wait_equal(lambda: q.get_stats()["completed"], 1)


def test_retry_job_refuses_jobs_that_are_not_failed(qm: QueueManager) -> None:
    q = qm.get_queue("not-failed")
    waiting = q.push(1)
    assert qm.retry_job(waiting) is False
    assert qm.retry_job("00000000-0000-0000-0000-000000000000") is False
    job = qm.get_job(waiting)
    assert job is not None
    assert job.status == "waiting"
    q.process(lambda job: "ok")
    done = qm.wait_for(waiting, timeout=WAIT)
    assert done is not None and done.status == "completed"
    assert qm.retry_job(waiting) is False
    after = qm.get_job(waiting)
    assert after is not None and after.status == "completed"


def test_counters_for_clean_runs(qm: QueueManager) -> None:
    q = qm.get_queue("clean")
    q.process(lambda job: job.data * 2)
    ids = [q.push(i) for i in range(20)]
    assert qm.join("clean", timeout=WAIT)
    assert all(qm.get_job(i).status == "completed" for i in ids)  # type: ignore[union-attr]
    wait_equal(lambda: qm.get_stats().jobs_processed, 20)
    stats = qm.get_stats()
    assert stats.jobs_failed == 0
    assert stats.jobs_retried == 0
    wait_equal(lambda: q.get_stats()["completed"], 20)
