"""Edge cases found in review: each test pins one behaviour users rely on."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from rnode_queue import ConfigError, InvalidJobError, Job, QueueManager

WAIT = 10.0


def test_a_job_failing_again_after_retry_job_is_listed_once(qm: QueueManager) -> None:
    q = qm.create_queue("again", max_retries=0)

    @q.process
    def boom(job: Job) -> None:
        raise ValueError("boom")

    job_id = q.push({"n": 1})
    first = qm.wait_for(job_id, timeout=WAIT)
    assert first is not None and first.status == "failed"
    assert qm.retry_job(job_id)
    # Wait for the second failure: the attempt count restarts, so wait on the job itself.
    assert qm.join("again", timeout=WAIT)
    failed = qm.get_jobs("again", status="failed")
    assert [job.id for job in failed] == [job_id]
    assert q.get_stats()["failed"] == 2  # a total of failures, not of jobs kept


def test_a_sync_handler_returning_a_coroutine_fails_clearly(qm: QueueManager) -> None:
    async def real(job: Job) -> str:
        return "never awaited"

    def plain_wrapper(func: Callable[[Job], Awaitable[str]]) -> Callable[[Job], Any]:
        @functools.wraps(func)
        def wrapper(job: Job) -> Any:
            return func(job)

        return wrapper

    q = qm.create_queue("wrapped", max_retries=0)
    q.process(plain_wrapper(real))
    job = qm.wait_for(q.push(1), timeout=WAIT)
    assert job is not None and job.status == "failed"
    assert job.error is not None and job.error.startswith("TypeError")
    assert "async def" in job.error


@pytest.mark.parametrize("concurrency", [0, -1, 1025])
def test_concurrency_out_of_range_is_rejected(qm: QueueManager, concurrency: int) -> None:
    # A setting, not job data: ConfigError (a QueueError and a ValueError).
    with pytest.raises(ConfigError):
        qm.create_queue("c", concurrency=concurrency)
    with pytest.raises(ConfigError):
        qm.get_queue("c2").process_concurrent(lambda job: None, concurrency)


def test_delays_and_times_a_datetime_cannot_show_are_rejected(qm: QueueManager) -> None:
    q = qm.get_queue("far")
    with pytest.raises(InvalidJobError):
        q.push(1, delay=1e12)
    with pytest.raises(InvalidJobError):
        q.push(1, timeout=1e12)
    with pytest.raises(ConfigError):
        qm.create_queue("far2", retry_delay=1e12, backoff="fixed")
    # The latest representable time is accepted, and reads back.
    last = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
    job = qm.get_job(qm.schedule_at("far", 1, last))
    assert job is not None and job.scheduled_at == last
    assert q.get_stats()["size"] == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_ids_of_its_own(qm: QueueManager) -> None:
    q = qm.get_queue("ids")
    parent_before = q.push(0)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: push a few jobs and report their ids
        code = 1
        try:
            ids = [qm.push("ids", n) for n in range(200)]
            os.write(write_end, json.dumps(ids).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    parent_ids = [q.push(n) for n in range(200)]
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = json.loads(pipe.read())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(child_ids) == 200
    assert not set(child_ids) & set(parent_ids)
    assert parent_before not in child_ids
