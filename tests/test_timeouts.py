"""Timeouts: sync handlers are abandoned, async handlers cancelled; the slot is freed."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from helpers import EARLY_TOLERANCE, QUIET_WINDOW, WAIT, assert_aware_utc, wait_equal
from rnode_queue import Job, QueueManager


@pytest.mark.parametrize("where", ["push", "queue"])
def test_sync_handler_past_its_timeout(qm: QueueManager, where: str) -> None:
    stuck_started = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    def handler(job: Job) -> str:
        if job.data == "stuck":
            stuck_started.set()
            release.wait(WAIT * 2)
            returned.set()
            return "late"
        return f"quick {job.data}"

    if where == "queue":
        q = qm.create_queue("slow", concurrency=1, max_retries=0, timeout=0.2)
        options: dict[str, float] = {}
    else:
        q = qm.create_queue("slow", concurrency=1, max_retries=0)
        options = {"timeout": 0.2}
    q.process(handler)
    try:
        stuck = q.push("stuck", **options)
        assert stuck_started.wait(WAIT)
        quick = [q.push(i) for i in range(3)]
        # the only slot is replaced: the other jobs run while the stuck handler still blocks
        for job_id in quick:
            job = qm.wait_for(job_id, timeout=WAIT)
            assert job is not None and job.status == "completed", (
                f"quick job {qm.get_job(job_id)!r} not done while the stuck one blocks; "
                f"stuck job: {qm.get_job(stuck)!r}, queue stats: {q.get_stats()}"
            )
        assert not returned.is_set()

        failed = qm.wait_for(stuck, timeout=WAIT)
        assert failed is not None
        assert failed.status == "failed"
        assert failed.error is not None and "timed out" in failed.error
        assert failed.attempts == 1
        assert failed.result is None
        started = assert_aware_utc(failed.started_at)
        ended = assert_aware_utc(failed.failed_at)
        assert ended - started >= timedelta(seconds=0.2 - EARLY_TOLERANCE)
        assert ended - started < timedelta(seconds=0.2 + 1.0)
        wait_equal(lambda: qm.get_stats().jobs_failed, 1)
    finally:
        release.set()
    assert returned.wait(WAIT)
    # the late result is ignored
    quiet = threading.Event()
    quiet.wait(QUIET_WINDOW)
    late = qm.get_job(stuck)
    assert late is not None
    assert late.status == "failed"
    assert late.result is None
    assert late.error is not None and "timed out" in late.error


def test_a_timed_out_attempt_is_retried(qm: QueueManager) -> None:
    release = threading.Event()

    def handler(job: Job) -> str:
        if job.attempts == 1:
            release.wait(WAIT * 2)
            return "first attempt, too late"
        return "second attempt"

    q = qm.create_queue(
        "retry-timeout", concurrency=1, max_retries=1, retry_delay=0.01, backoff="fixed"
    )
    q.process(handler)
    try:
        job = qm.wait_for(q.push(None, timeout=0.2), timeout=WAIT)
        assert job is not None
        assert job.status == "completed", job.error
        assert job.attempts == 2
        assert job.result == "second attempt"
        wait_equal(lambda: qm.get_stats().jobs_retried, 1)
    finally:
        release.set()


@pytest.mark.parametrize("where", ["push", "queue"])
def test_async_handler_past_its_timeout_is_cancelled(qm: QueueManager, where: str) -> None:
    cancelled = threading.Event()
    finished = threading.Event()

    async def handler(job: Job) -> str:
        if job.data != "stuck":
            return "quick"
        try:
            await asyncio.sleep(WAIT * 2)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finished.set()
        return "late"

    if where == "queue":
        q = qm.create_queue("async-slow", concurrency=1, max_retries=0, timeout=0.2)
        options: dict[str, float] = {}
    else:
        q = qm.create_queue("async-slow", concurrency=1, max_retries=0)
        options = {"timeout": 0.2}
    q.process(handler)
    stuck = q.push("stuck", **options)
    failed = qm.wait_for(stuck, timeout=WAIT)
    assert failed is not None
    assert failed.status == "failed"
    assert failed.error is not None and "timed out" in failed.error
    assert failed.result is None
    assert cancelled.wait(WAIT), "the async handler was not cancelled"
    assert not finished.is_set()
    started = assert_aware_utc(failed.started_at)
    ended = assert_aware_utc(failed.failed_at)
    assert ended - started >= timedelta(seconds=0.2 - EARLY_TOLERANCE)
    assert ended - started < timedelta(seconds=0.2 + 1.0)
    # the slot is free again
    quick = qm.wait_for(q.push("next"), timeout=WAIT)
    assert quick is not None and quick.status == "completed"
    assert quick.result == "quick"
