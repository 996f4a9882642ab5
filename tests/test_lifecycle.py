"""Lifecycle: graceful close, use after close, context managers, wait_for and join."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from helpers import WAIT, Recorder, utcnow
from rnode_queue import Job, JobNotFoundError, Queue, QueueClosedError, QueueError, QueueManager


def test_close_lets_a_running_job_finish(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    started = threading.Event()
    finished = threading.Event()

    def handler(job: Job) -> str:
        started.set()
        time.sleep(0.3)  # the job's own work
        finished.set()
        return "done"

    qm.get_queue("graceful").process(handler)
    qm.push("graceful", 1)
    assert started.wait(WAIT)
    begin = time.monotonic()
    assert qm.close(timeout=5) is True
    assert finished.is_set(), "close() returned before the running job finished"
    assert time.monotonic() - begin < 5


def test_close_with_a_stuck_job_returns_false_after_its_timeout(
    make_qm: Callable[..., QueueManager],
) -> None:
    qm = make_qm()
    started = threading.Event()
    release = threading.Event()

    def handler(job: Job) -> None:
        started.set()
        release.wait(WAIT)

    qm.get_queue("stuck").process(handler)
    qm.push("stuck", 1)
    try:
        assert started.wait(WAIT)
        begin = time.monotonic()
        assert qm.close(timeout=0.3) is False
        elapsed = time.monotonic() - begin
        assert 0.3 - 0.05 <= elapsed < 0.3 + 1.5, f"close(timeout=0.3) took {elapsed:.2f}s"
    finally:
        release.set()


def test_close_stops_taking_jobs(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    started = threading.Event()
    release = threading.Event()
    recorder = Recorder()

    def handler(job: Job) -> None:
        recorder.record(job)
        if job.data == "running":
            started.set()
            release.wait(WAIT)

    q = qm.create_queue("draining", concurrency=1)
    q.process(handler)
    q.push("running")
    assert started.wait(WAIT)
    q.push("waiting")
    # let the running job end well after close() has begun
    timer = threading.Timer(0.3, release.set)
    timer.start()
    try:
        assert qm.close(timeout=5) is True
    finally:
        release.set()
        timer.cancel()
    assert [e["job"].data for e in recorder.snapshot()] == ["running"]


def test_close_is_idempotent(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    qm.push("q", 1)
    assert qm.close(timeout=1) is True
    qm.close(timeout=1)
    qm.close()


AFTER_CLOSE: dict[str, Callable[[QueueManager, Queue, str], Any]] = {
    "push": lambda qm, q, jid: qm.push("q", 1),
    "push_batch": lambda qm, q, jid: qm.push_batch("q", [{"data": 1}]),
    "get_job": lambda qm, q, jid: qm.get_job(jid),
    "get_jobs": lambda qm, q, jid: qm.get_jobs("q"),
    "get_stats": lambda qm, q, jid: qm.get_stats(),
    "create_queue": lambda qm, q, jid: qm.create_queue("new"),
    "get_queue": lambda qm, q, jid: qm.get_queue("new"),
    "pause_queue": lambda qm, q, jid: qm.pause_queue("q"),
    "resume_queue": lambda qm, q, jid: qm.resume_queue("q"),
    "clear_queue": lambda qm, q, jid: qm.clear_queue("q"),
    "delete_queue": lambda qm, q, jid: qm.delete_queue("q"),
    "schedule": lambda qm, q, jid: qm.schedule("q", 1, "0 2 * * *"),
    "schedule_at": lambda qm, q, jid: qm.schedule_at("q", 1, utcnow() + timedelta(hours=1)),
    "unschedule": lambda qm, q, jid: qm.unschedule("x"),
    "list_schedules": lambda qm, q, jid: qm.list_schedules(),
    "retry_job": lambda qm, q, jid: qm.retry_job(jid),
    "wait_for": lambda qm, q, jid: qm.wait_for(jid, timeout=0.1),
    "join": lambda qm, q, jid: qm.join(timeout=0.1),
    "queue.push": lambda qm, q, jid: q.push(1),
    "queue.pause": lambda qm, q, jid: q.pause(),
    "queue.resume": lambda qm, q, jid: q.resume(),
    "queue.clear": lambda qm, q, jid: q.clear(),
    "queue.get_stats": lambda qm, q, jid: q.get_stats(),
    "queue.process": lambda qm, q, jid: q.process(lambda job: None),
    "queue.process_async": lambda qm, q, jid: q.process(_async_noop),
}


async def _async_noop(job: Job) -> None:
    return None


@pytest.mark.parametrize("method", list(AFTER_CLOSE))
def test_use_after_close_raises(make_qm: Callable[..., QueueManager], method: str) -> None:
    qm = make_qm()
    q = qm.get_queue("q")
    job_id = q.push(1)
    qm.close(timeout=1)
    with pytest.raises(QueueClosedError):
        AFTER_CLOSE[method](qm, q, job_id)


def test_context_manager_closes(backend_kwargs: dict[str, Any]) -> None:
    with QueueManager(**backend_kwargs) as qm:
        assert isinstance(qm, QueueManager)
        q = qm.get_queue("ctx")
        q.process(lambda job: job.data + 1)
        job = qm.wait_for(q.push(41), timeout=WAIT)
        assert job is not None and job.result == 42
    with pytest.raises(QueueClosedError):
        qm.push("ctx", 1)


def test_context_manager_closes_on_error(backend_kwargs: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="inside"), QueueManager(**backend_kwargs) as qm:
        qm.push("ctx", 1)
        raise RuntimeError("inside")
    with pytest.raises(QueueClosedError):
        qm.get_stats()


def test_default_manager_is_memory() -> None:
    with QueueManager() as qm:
        q = qm.get_queue("default")
        q.process(lambda job: job.data)
        job = qm.wait_for(q.push("x"), timeout=WAIT)
        assert job is not None and job.result == "x"


def test_unknown_backend_is_a_queue_error() -> None:
    with pytest.raises(QueueError):
        QueueManager(backend="sqlite")


def test_wait_for(qm: QueueManager) -> None:
    # "No such job" is not "timed out": the first raises, only the second returns None.
    unknown = str(uuid.uuid4())
    begin = time.monotonic()
    with pytest.raises(JobNotFoundError, match=unknown):
        qm.wait_for(unknown, timeout=5)
    assert time.monotonic() - begin < 4, "an unknown id is reported at once, not at the timeout"
    with pytest.raises(JobNotFoundError):
        qm.wait_for("not-a-job-id", timeout=0.1)
    waiting = qm.push("no-handler", 1)
    begin = time.monotonic()
    assert qm.wait_for(waiting, timeout=0.2) is None
    assert time.monotonic() - begin >= 0.2 - 0.01
    job = qm.get_job(waiting)
    assert job is not None and job.status == "waiting"

    qm.get_queue("no-handler").process(lambda job: "ran")
    done = qm.wait_for(waiting, timeout=WAIT)
    assert done is not None
    assert done.id == waiting
    assert done.status == "completed"
    # an already finished job is returned at once
    assert qm.wait_for(waiting, timeout=0.01) is not None


def test_join(qm: QueueManager) -> None:
    assert qm.join(timeout=0.1) is True  # nothing to do
    qm.push("never", 1)  # no handler: never done
    begin = time.monotonic()
    assert qm.join(timeout=0.2) is False
    assert time.monotonic() - begin >= 0.2 - 0.01
    assert qm.join("never", timeout=0.05) is False

    recorder = Recorder()
    q = qm.get_queue("busy")
    q.process(recorder.record)
    for i in range(20):
        q.push(i)
    q.push("late", delay=0.2)
    assert qm.join("busy", timeout=WAIT) is True
    assert len(recorder) == 21  # join waited for the delayed job too
    assert qm.join(timeout=0.1) is False  # "never" still waits
