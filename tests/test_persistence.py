"""Durable backends (file, redis): restarts, crashed workers, sharing one store, isolation.

These run only for the backends listed in ``ENABLED_BACKENDS`` (tests/conftest.py) and are
skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    EARLY_TOLERANCE,
    LATE_BOUND,
    WAIT,
    Recorder,
    assert_aware_utc,
    wait_equal,
)
from processes import WorkerProcess
from rnode_queue import BackendError, Job, QueueError, QueueManager


def durable(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Options that make every acknowledged push durable at once (file: fsync always)."""
    if kwargs["backend"] == "file":
        return {**kwargs, "fsync": "always"}
    return {**kwargs, "lease": 0.5}


def test_jobs_survive_a_restart(durable_kwargs: dict[str, Any], manager_pool: Any) -> None:
    kwargs = durable(durable_kwargs)
    first = manager_pool.open(**kwargs)
    first.create_queue("persist", concurrency=1)
    low = first.push("persist", {"n": 1}, priority="low", tags=["t"], metadata={"m": 1})
    critical = first.push("persist", {"n": 2}, priority="critical")
    delayed = first.push("persist", {"n": 3}, delay=1.0)
    gone = first.push("persist", {"n": 4})
    assert first.delete_job(gone) is True
    original = first.get_job(delayed)
    assert first.close(timeout=5) is True

    second = manager_pool.open(**kwargs)
    assert second.get_job(gone) is None, "a deleted job stays deleted"
    job = second.get_job(low)
    assert job is not None
    assert job.status == "waiting"
    assert job.data == {"n": 1}
    assert job.priority == "low"
    assert job.tags == ["t"]
    assert job.metadata == {"m": 1}
    again = second.get_job(delayed)
    assert again is not None and original is not None
    assert again.created_at == original.created_at
    recorder = Recorder()
    second.create_queue("persist", concurrency=1)
    second.get_queue("persist").process(recorder.record)
    assert second.join("persist", timeout=WAIT)
    entries = recorder.snapshot()
    assert [e["job"].id for e in entries] == [critical, low, delayed]
    due = original.created_at + timedelta(seconds=1.0)
    assert entries[2]["wall"] >= due.timestamp() - EARLY_TOLERANCE


def test_failed_jobs_and_results_survive_a_restart(
    durable_kwargs: dict[str, Any], manager_pool: Any
) -> None:
    kwargs = durable(durable_kwargs)
    first = manager_pool.open(**kwargs)
    q = first.create_queue("outcomes", max_retries=0)

    def handler(job: Job) -> Any:
        if job.data == "fail":
            raise ValueError("kept")
        return {"ok": job.data}

    q.process(handler)
    ok = q.push("fine")
    bad = q.push("fail")
    assert first.join("outcomes", timeout=WAIT)
    assert first.close(timeout=5)

    second = manager_pool.open(**kwargs)
    totals = second.get_stats()
    assert (totals.jobs_processed, totals.jobs_failed) == (1, 1), "the totals come back too"
    done = second.get_job(ok)
    assert done is not None and done.status == "completed" and done.result == {"ok": "fine"}
    failed = second.get_job(bad)
    assert failed is not None and failed.status == "failed"
    assert failed.error == "ValueError: kept"
    assert [j.id for j in second.get_jobs("outcomes", status="failed")] == [bad]
    assert second.retry_job(bad) is True
    second.get_queue("outcomes").process(lambda job: "second life")
    again = second.wait_for(bad, timeout=WAIT)
    assert again is not None and again.status == "completed" and again.result == "second life"


def test_schedules_survive_a_restart(durable_kwargs: dict[str, Any], manager_pool: Any) -> None:
    kwargs = durable(durable_kwargs)
    first = manager_pool.open(**kwargs)
    sid = first.schedule("maint", {"type": "daily"}, "0 2 * * *")
    first.schedule("maint", {"type": "named"}, "0 3 * * *", name="nightly")
    assert first.close(timeout=5)

    second = manager_pool.open(**kwargs)
    ids = sorted(s["id"] for s in second.list_schedules())
    assert ids == sorted([sid, "nightly"])
    # declaring them again at start-up (as an application does) creates nothing new
    assert second.schedule("maint", {"type": "daily"}, "0 2 * * *") == sid
    assert sorted(s["id"] for s in second.list_schedules()) == ids


def test_settings_and_schedules_come_back_and_fire_after_a_restart(
    durable_kwargs: dict[str, Any], manager_pool: Any
) -> None:
    kwargs = durable(durable_kwargs)
    first = manager_pool.open(**kwargs)
    first.create_queue("reports", timeout=20, max_retries=0, concurrency=2)
    first.schedule("ticks", {"k": 1}, "* * * * * *", name="every-second")
    first.push("later", "due", delay=1.0)
    assert first.close(timeout=5)

    second = manager_pool.open(**kwargs)
    job = second.get_job(second.push("reports", {"after": "restart"}))
    assert job is not None and (job.timeout, job.max_attempts) == (20.0, 1)
    ticks, later = Recorder(), Recorder()
    # Nothing declared again: the stored schedule fires, the delayed job comes due.
    second.get_queue("ticks").process(ticks.record)
    second.get_queue("later").process(later.record)
    assert ticks.wait_count(2, timeout=WAIT), "the stored schedule did not fire"
    assert later.wait_count(1, timeout=WAIT), "the delayed job did not run"
    second.unschedule("every-second")


CRASHING_WORKER = textwrap.dedent(
    """
    import json, os, sys
    from rnode_queue import QueueManager

    qm = QueueManager(**json.loads(sys.argv[1]))
    q = qm.create_queue("crash", concurrency=1, max_retries=2, retry_delay=0.05, backoff="fixed")
    job_id = q.push({"n": 1})
    print(job_id, flush=True)

    def handler(job):
        os._exit(17)  # the worker dies in the middle of the job

    q.process(handler)
    qm.wait_for(job_id, timeout=30)
    sys.exit(3)  # not reached
    """
)


def test_a_job_of_a_killed_worker_runs_again(
    durable_kwargs: dict[str, Any], manager_pool: Any, tmp_path: Path
) -> None:
    kwargs = durable(durable_kwargs)
    script = tmp_path / "crashing_worker.py"
    script.write_text(CRASHING_WORKER)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 17, proc.stderr
    job_id = proc.stdout.strip()

    qm = manager_pool.open(**kwargs)
    recorder = Recorder()
    qm.get_queue("crash").process(recorder.record)
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "completed"
    assert job.attempts == 2  # the lost run counts
    assert [e["job"].attempts for e in recorder.snapshot()] == [2]


def test_managers_share_one_store(durable_kwargs: dict[str, Any], manager_pool: Any) -> None:
    producer = manager_pool.open(**durable_kwargs)
    workers = [manager_pool.open(**durable_kwargs) for _ in range(2)]
    recorder = Recorder()
    for worker in workers:
        worker.create_queue("shared", concurrency=2)
        worker.get_queue("shared").process(recorder.record)
    ids = [producer.push("shared", i) for i in range(40)]
    assert producer.join("shared", timeout=WAIT)
    seen = [e["job"].id for e in recorder.snapshot()]
    assert sorted(seen) == sorted(ids), "every job ran exactly once"
    for job_id in ids:
        job = producer.get_job(job_id)
        assert job is not None and job.status == "completed"


def test_cron_runs_once_per_tick_across_managers(
    durable_kwargs: dict[str, Any], manager_pool: Any
) -> None:
    managers = [manager_pool.open(**durable_kwargs) for _ in range(3)]
    recorder = Recorder()
    ids = set()
    for qm in managers:
        ids.add(qm.schedule("ticks", {"k": 1}, "* * * * * *"))
        qm.get_queue("ticks").process(recorder.record)
    assert len(ids) == 1
    try:
        assert recorder.wait_count(3, timeout=6.0)
    finally:
        managers[0].unschedule(ids.pop())
    assert managers[0].join("ticks", timeout=WAIT)
    ticks = [assert_aware_utc(e["job"].scheduled_at) for e in recorder.snapshot()]
    assert len(ticks) == len(set(ticks)), f"a tick ran more than once: {sorted(ticks)}"
    for entry in recorder.snapshot():
        lag = entry["wall"] - entry["job"].scheduled_at.timestamp()
        assert lag < LATE_BOUND


def test_a_job_of_a_sigkilled_worker_process_runs_again_in_another(
    durable_kwargs: dict[str, Any],
    manager_pool: Any,
    worker_script: Path,
    workers: list[WorkerProcess],
) -> None:
    kwargs = durable(durable_kwargs)
    # Opened first: on file this process holds the store, and the worker is its client.
    qm = manager_pool.open(**kwargs)
    doomed = WorkerProcess(worker_script, kwargs, "sigkill", "hang")
    workers.append(doomed)
    job_id = qm.push("sigkill", {"n": 1})
    doomed.wait_for(lambda events: any(e.get("id") == job_id for e in events))
    running = qm.get_job(job_id)
    assert running is not None and running.status == "active"
    doomed.kill()

    recorder = Recorder()
    qm.get_queue("sigkill").process(recorder.record)
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None and job.status == "completed"
    assert job.attempts == 2, "the lost run counts as an attempt"
    assert [e["job"].attempts for e in recorder.snapshot()] == [2]


def test_two_worker_processes_run_3000_jobs_exactly_once(
    durable_kwargs: dict[str, Any],
    manager_pool: Any,
    worker_script: Path,
    workers: list[WorkerProcess],
) -> None:
    # On file the first worker holds the store; the second and this process reach it through it.
    for _ in range(2):
        workers.append(
            WorkerProcess(worker_script, durable_kwargs, "bulk", "record", concurrency=4)
        )
    producer = manager_pool.open(**durable_kwargs)
    ids: list[str] = []
    priorities = ["low", "normal", "high", "critical"]
    for chunk in range(3):
        ids += producer.push_batch(
            "bulk",
            [
                {"data": {"n": chunk * 1000 + i}, "options": {"priority": priorities[i % 4]}}
                for i in range(1000)
            ],
        )
    assert producer.join("bulk", timeout=60)
    for worker in workers:
        worker.stop()
    runs = Counter(e["id"] for worker in workers for e in worker.done())
    assert set(runs) == set(ids), "no job lost"
    assert max(runs.values()) == 1, f"ran twice: {[i for i, n in runs.items() if n > 1][:5]}"
    assert all(worker.done() for worker in workers), "both processes ran jobs"
    stats = producer.get_queue("bulk").get_stats()
    assert stats["completed"] == 3000 and stats["size"] == 0 and stats["processing"] == 0
    assert producer.get_stats().jobs_processed == 3000


# -- redis only ---------------------------------------------------------------------------------


def test_prefixes_keep_applications_apart(redis_kwargs: dict[str, Any], manager_pool: Any) -> None:
    one = manager_pool.open(**redis_kwargs)
    two = manager_pool.open(**{**redis_kwargs, "prefix": redis_kwargs["prefix"] + ":other"})
    job_id = one.push("shared-name", 1)
    assert two.get_job(job_id) is None
    assert two.get_stats().queue_sizes.get("shared-name", 0) == 0
    assert two.get_jobs("shared-name") == []
    assert one.get_stats().queue_sizes["shared-name"] == 1


def test_a_lost_lease_runs_the_job_again(redis_kwargs: dict[str, Any], manager_pool: Any) -> None:
    """A worker that stops renewing its lease (here: closed while stuck) loses the job."""
    kwargs = {**redis_kwargs, "lease": 0.5}
    stuck = manager_pool.open(**kwargs)
    started = threading.Event()
    release = threading.Event()

    def hang(job: Job) -> None:
        started.set()
        release.wait(WAIT)

    stuck.get_queue("lease").process(hang)
    job_id = stuck.push("lease", 1)
    try:
        assert started.wait(WAIT)
        assert stuck.close(timeout=0.1) is False
        rescuer = manager_pool.open(**kwargs)
        rescuer.get_queue("lease").process(lambda job: "rescued")
        job = rescuer.wait_for(job_id, timeout=WAIT)
        assert job is not None and job.status == "completed"
        assert job.result == "rescued"
        assert job.attempts == 2
    finally:
        release.set()


def test_a_redis_that_is_down_is_a_backend_error(redis_kwargs: dict[str, Any]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    qm: QueueManager | None = None
    with pytest.raises(BackendError):
        qm = QueueManager(backend="redis", url=url)
        qm.push("q", 1)
    if qm is not None:
        qm.close(timeout=1)


# -- file only ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "everysec", "never"])
def test_fsync_policies(file_kwargs: dict[str, Any], manager_pool: Any, fsync: str) -> None:
    first = manager_pool.open(**file_kwargs, fsync=fsync)
    job_id = first.push("q", {"fsync": fsync})
    assert first.close(timeout=5)
    second = manager_pool.open(**file_kwargs, fsync=fsync)
    job = second.get_job(job_id)
    assert job is not None and job.data == {"fsync": fsync}
    wait_equal(lambda: second.get_stats().queue_sizes.get("q"), 1)


def test_bad_fsync_policy(file_kwargs: dict[str, Any]) -> None:
    with pytest.raises(QueueError):
        QueueManager(**file_kwargs, fsync="sometimes").close(timeout=1)
