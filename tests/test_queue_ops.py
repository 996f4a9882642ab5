"""Queue operations: create/get, pause/resume, clear, delete, queue stats and manager stats."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from helpers import QUIET_WINDOW, WAIT, Recorder, wait_equal
from rnode_queue import Job, QueueManager, Stats


def core_stats(stats: dict[str, int]) -> dict[str, int]:
    return {key: stats[key] for key in ("size", "processing", "completed", "failed")}


def test_get_queue_creates_a_missing_queue_with_defaults(qm: QueueManager) -> None:
    q = qm.get_queue("lazy")
    assert q.name == "lazy"
    assert qm.get_stats().queue_sizes.get("lazy") == 0
    assert core_stats(q.get_stats()) == {"size": 0, "processing": 0, "completed": 0, "failed": 0}
    job = qm.get_job(q.push(1))
    assert job is not None
    assert job.max_attempts == 4


def test_create_queue_on_an_existing_queue_updates_its_config(qm: QueueManager) -> None:
    qm.create_queue("config", max_retries=1)
    first = qm.get_job(qm.push("config", 1))
    qm.create_queue("config", max_retries=4)
    second = qm.get_job(qm.push("config", 2))
    assert first is not None and second is not None
    assert first.max_attempts == 2
    assert second.max_attempts == 5
    assert qm.get_queue("config").get_stats()["size"] == 2  # updating kept the jobs


@pytest.mark.parametrize("via", ["manager", "handle"])
def test_pause_keeps_jobs_waiting_until_resume(qm: QueueManager, via: str) -> None:
    recorder = Recorder()
    q = qm.get_queue("pausable")
    q.process(recorder.record)
    if via == "manager":
        qm.pause_queue("pausable")
    else:
        q.pause()
    ids = [q.push(i) for i in range(3)]
    assert not recorder.wait_count(1, timeout=QUIET_WINDOW), "a paused queue ran a job"
    for job_id in ids:
        job = qm.get_job(job_id)
        assert job is not None and job.status == "waiting"
    assert q.get_stats()["size"] == 3
    assert q.get_stats()["processing"] == 0
    assert {j.id for j in qm.get_jobs("pausable", status="waiting")} == set(ids)
    assert qm.join("pausable", timeout=0.1) is False
    if via == "manager":
        qm.resume_queue("pausable")
    else:
        q.resume()
    assert qm.join("pausable", timeout=WAIT)
    assert sorted(e["job"].data for e in recorder.snapshot()) == [0, 1, 2]
    for job_id in ids:
        job = qm.get_job(job_id)
        assert job is not None and job.status == "completed"


def test_pause_lets_the_running_job_finish(qm: QueueManager) -> None:
    started = threading.Event()
    release = threading.Event()
    recorder = Recorder()

    def handler(job: Job) -> str:
        recorder.record(job)
        if job.data == "running":
            started.set()
            release.wait(WAIT)
        return "ok"

    q = qm.create_queue("pause-running", concurrency=1)
    q.process(handler)
    try:
        running = q.push("running")
        assert started.wait(WAIT)
        q.pause()
        later = q.push("later")
    finally:
        release.set()
    done = qm.wait_for(running, timeout=WAIT)
    assert done is not None and done.status == "completed"
    assert not recorder.wait_count(2, timeout=QUIET_WINDOW)
    job = qm.get_job(later)
    assert job is not None and job.status == "waiting"
    q.resume()
    finished = qm.wait_for(later, timeout=WAIT)
    assert finished is not None and finished.status == "completed"


@pytest.mark.parametrize("via", ["manager", "handle"])
def test_clear_removes_waiting_jobs(qm: QueueManager, via: str) -> None:
    q = qm.get_queue("clearable")
    ids = [q.push(i) for i in range(3)]
    other = qm.push("untouched", "x")
    if via == "manager":
        qm.clear_queue("clearable")
    else:
        q.clear()
    assert qm.get_jobs("clearable", status="waiting") == []
    assert q.get_stats()["size"] == 0
    assert qm.get_stats().queue_sizes["clearable"] == 0
    for job_id in ids:
        job = qm.get_job(job_id)
        assert job is None or job.status != "waiting"
    assert qm.get_stats().queue_sizes["untouched"] == 1
    assert qm.get_job(other) is not None
    # the queue still works
    recorder = Recorder()
    q.process(recorder.record)
    job = qm.wait_for(q.push("after"), timeout=WAIT)
    assert job is not None and job.status == "completed"
    assert [e["job"].data for e in recorder.snapshot()] == ["after"]


def test_delete_queue(qm: QueueManager) -> None:
    ids = [qm.push("doomed", i) for i in range(3)]
    qm.push("survivor", 1)
    qm.delete_queue("doomed")
    sizes = qm.get_stats().queue_sizes
    assert "doomed" not in sizes
    assert sizes["survivor"] == 1
    for job_id in ids:
        assert qm.get_job(job_id) is None
    # the name can be used again, for an empty queue
    qm.push("doomed", "new")
    assert qm.get_stats().queue_sizes["doomed"] == 1


def test_queue_stats(qm: QueueManager) -> None:
    q = qm.create_queue("stats", max_retries=0)

    def handler(job: Job) -> None:
        if job.data == "fail":
            raise ValueError("no")

    q.process(handler)
    stats = q.get_stats()
    assert isinstance(stats, dict)
    assert {"size", "processing", "completed", "failed"} <= set(stats)
    assert all(isinstance(stats[k], int) for k in ("size", "processing", "completed", "failed"))
    for data in ("ok", "ok", "fail"):
        qm.wait_for(q.push(data), timeout=WAIT)
    expected = {"size": 0, "processing": 0, "completed": 2, "failed": 1}
    wait_equal(lambda: core_stats(q.get_stats()), expected)
    q.pause()
    q.push("ok")
    q.push("ok", delay=600)
    expected = {"size": 2, "processing": 0, "completed": 2, "failed": 1}
    wait_equal(lambda: core_stats(q.get_stats()), expected)
    assert qm.get_stats().queue_sizes["stats"] == 2


def test_completed_and_failed_are_totals_not_retained_counts(
    make_qm: Callable[..., QueueManager],
) -> None:
    qm = make_qm()
    q = qm.create_queue("totals", max_retries=0, keep_completed=2, keep_failed=1)

    def handler(job: Job) -> None:
        if job.data < 0:
            raise ValueError("negative")

    q.process(handler)
    for value in (1, 2, 3, 4, -1, -2):
        qm.wait_for(q.push(value), timeout=WAIT)
    wait_equal(lambda: (q.get_stats()["completed"], q.get_stats()["failed"]), (4, 2))
    assert len(qm.get_jobs("totals", status="completed")) <= 2
    assert len(qm.get_jobs("totals", status="failed")) <= 1


def test_manager_stats(qm: QueueManager) -> None:
    stats = qm.get_stats()
    assert isinstance(stats, Stats)
    assert (stats.jobs_processed, stats.jobs_failed, stats.jobs_retried) == (0, 0, 0)
    assert stats.active_workers == 0
    assert isinstance(stats.queue_sizes, dict)
    as_dict = stats.to_dict()
    keys = {"jobs_processed", "jobs_failed", "jobs_retried", "active_workers", "queue_sizes"}
    assert keys <= set(as_dict)

    qm.push("a", 1)
    qm.push("a", 2)
    qm.push("b", 1, delay=600)
    sizes = qm.get_stats().queue_sizes
    assert sizes["a"] == 2
    assert sizes["b"] == 1

    q = qm.create_queue("c", max_retries=1, retry_delay=0.01, backoff="fixed")

    def handler(job: Job) -> None:
        if job.data == "fail":
            raise ValueError("fail")

    q.process(handler)
    for data in ("ok", "ok", "ok", "fail"):
        qm.wait_for(q.push(data), timeout=WAIT)
    wait_equal(
        lambda: (
            qm.get_stats().jobs_processed,
            qm.get_stats().jobs_failed,
            qm.get_stats().jobs_retried,
        ),
        (3, 1, 1),
    )
    assert qm.get_stats().queue_sizes["c"] == 0
