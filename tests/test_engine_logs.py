"""What the engine tells the ``rnode_queue`` logger: failed runs with their traceback, timeouts,
completed jobs when asked, a lost and regained backend; and the worker-process registry."""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import wait_until
from redis_servers import RedisServer
from rnode_queue import QueueManager


class Records(logging.Handler):
    """The records of the ``rnode_queue`` logger, with a wait for one that matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_for(
        self, match: Callable[[logging.LogRecord], bool], timeout: float = 20.0
    ) -> logging.LogRecord:
        with self.changed:
            found: list[logging.LogRecord] = []

            def seen() -> bool:
                found[:] = [r for r in self.records if match(r)]
                return bool(found)

            if not self.changed.wait_for(seen, timeout):
                messages = [r.getMessage()[:200] for r in self.records[-10:]]
                raise AssertionError(f"no such record; the last ones: {messages}")
            return found[0]

    def messages(self, level: int) -> list[str]:
        with self.changed:
            return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("rnode_queue")
    handler = Records()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_a_failed_run_is_logged_with_its_traceback_warning_then_error(
    make_qm: Callable[..., QueueManager], records: Records
) -> None:
    qm = make_qm()
    q = qm.create_queue("logs", max_retries=1, retry_delay=0.01)

    def explode(job: Any) -> None:
        raise ValueError(f"boom {job.data}")

    q.process(explode)
    job_id = q.push(7)
    assert qm.wait_for(job_id, timeout=20) is not None
    retried = records.wait_for(lambda r: r.levelno == logging.WARNING and job_id in r.getMessage())
    failed = records.wait_for(lambda r: r.levelno == logging.ERROR and job_id in r.getMessage())
    for record in (retried, failed):
        text = record.getMessage()
        assert "ValueError: boom 7" in text
        assert "Traceback (most recent call last)" in text
        assert "in explode" in text  # the handler's frame
        assert record.name == "rnode_queue"
    assert "attempt 1 of 2" in retried.getMessage()
    assert "retrying in" in retried.getMessage()
    assert "failed for good after 2 attempt(s)" in failed.getMessage()


def test_an_async_handler_exception_and_a_timeout_are_logged(
    make_qm: Callable[..., QueueManager], records: Records
) -> None:
    qm = make_qm()
    q = qm.create_queue("async-logs", max_retries=0)

    async def broken(job: Any) -> None:
        raise KeyError("missing")

    q.process(broken)
    failed_id = q.push(1)
    qm.wait_for(failed_id, timeout=20)
    record = records.wait_for(lambda r: failed_id in r.getMessage())
    assert record.levelno == logging.ERROR
    assert "KeyError" in record.getMessage() and "in broken" in record.getMessage()

    slow = qm.create_queue("slow-logs", max_retries=0, timeout=0.05)
    release = threading.Event()
    slow.process(lambda job: release.wait(10))
    slow_id = slow.push(1)
    qm.wait_for(slow_id, timeout=20)
    release.set()
    record = records.wait_for(lambda r: slow_id in r.getMessage())
    assert record.levelno == logging.ERROR
    assert "timed out after 0.05s" in record.getMessage()


def test_completed_jobs_are_logged_only_when_asked(
    make_qm: Callable[..., QueueManager], records: Records
) -> None:
    qm = make_qm()
    q = qm.get_queue("quiet")
    q.process(lambda job: None)
    silent = q.push(1)
    qm.wait_for(silent, timeout=20)
    qm.set_job_logging(True)
    loud = q.push(2)
    qm.wait_for(loud, timeout=20)
    record = records.wait_for(lambda r: loud in r.getMessage())
    assert record.levelno == logging.INFO
    assert "completed" in record.getMessage()
    assert not [m for m in records.messages(logging.INFO) if silent in m]


def test_a_lost_and_regained_redis_is_logged_once_each(
    restartable_redis: RedisServer, records: Records
) -> None:
    qm = QueueManager(backend="redis", url=restartable_redis.url, prefix="logs-outage")
    try:
        q = qm.get_queue("outage")
        q.process(lambda job: None)
        qm.wait_for(q.push(1), timeout=20)
        restartable_redis.kill()
        records.wait_for(lambda r: r.getMessage().startswith("lost the backend"))
        restartable_redis.start()
        records.wait_for(lambda r: "reachable again" in r.getMessage(), timeout=30)
        qm.wait_for(q.push(2), timeout=20)
        lost = [m for m in records.messages(logging.WARNING) if m.startswith("lost the backend")]
        assert len(lost) == 1, lost
    finally:
        qm.close()


def test_worker_processes_are_listed_by_any_process_of_the_store(
    durable_kwargs: dict[str, Any], worker_script: Any, workers: list[Any]
) -> None:
    from processes import WorkerProcess

    reader = QueueManager(**durable_kwargs)
    try:
        worker = WorkerProcess(worker_script, durable_kwargs, "listed", "run", concurrency=2)
        workers.append(worker)
        # The worker's first beat goes out on its timer thread, right after `process`.
        listed = wait_until(reader.get_workers, what="the worker listed")
        assert [w["pid"] for w in listed] == [worker.proc.pid]
        entry = listed[0]
        assert entry["queues"] == ["listed"]
        assert entry["concurrency"] == {"listed": 2}
        assert entry["host"] and entry["last_seen"] >= entry["started_at"]
        assert entry["last_seen"].tzinfo is not None
        worker.stop()  # closes its manager: taken off the list at once
        assert reader.get_workers() == []
    finally:
        reader.close()


def test_a_manager_without_handlers_is_not_a_worker(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    qm.push("q", 1)
    assert qm.get_workers() == []
    qm.get_queue("q").process(lambda job: None)
    listed = wait_until(qm.get_workers, what="this process listed")
    assert listed[0]["queues"] == ["q"]


def test_one_broken_queue_is_logged_once_while_the_others_work(
    redis_kwargs: dict[str, Any], records: Records
) -> None:
    """A queue whose data Redis refuses (a key of the wrong type) fails every fetch while the
    other queues fetch fine: one warning, and no "reachable again" flapping per retry."""
    port = redis_kwargs["url"].rsplit(":", 1)[1].split("/")[0]
    # The list of its waiting jobs of normal priority (5).
    broken_key = f"{redis_kwargs['prefix']}:{{broken}}:w5"
    subprocess.run(
        ["redis-cli", "-p", port, "SET", broken_key, "not a list"],
        check=True,
        capture_output=True,
    )
    qm = QueueManager(**redis_kwargs)
    try:
        qm.get_queue("broken").process(lambda job: None)
        good = qm.get_queue("good")
        good.process(lambda job: None)
        records.wait_for(lambda r: r.getMessage().startswith("lost the backend"))
        for n in range(3):
            qm.wait_for(good.push(n), timeout=20)
        # Two more failed tries of the broken queue, each after the good queue fetched.
        records.wait_for(
            lambda r: len([m for m in records.messages(logging.DEBUG) if "still cannot" in m]) >= 2
        )
        lost = [m for m in records.messages(logging.WARNING) if m.startswith("lost the backend")]
        assert len(lost) == 1 and '"broken"' in lost[0], lost
        assert not [m for m in records.messages(logging.INFO) if "reachable again" in m]
    finally:
        qm.close()
