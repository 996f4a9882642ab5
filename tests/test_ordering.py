"""Ordering: strict priority, first-in first-out within a priority."""

from __future__ import annotations

import random
import threading
from typing import Any

from helpers import PRIORITY_VALUES, WAIT
from rnode_queue import Job, QueueManager


def expected_order(priorities: list[str]) -> list[int]:
    """Indexes in the order the engine must run them: priority first, then push order."""
    return sorted(range(len(priorities)), key=lambda i: (-PRIORITY_VALUES[priorities[i]], i))


def test_strict_priority_then_fifo(qm: QueueManager) -> None:
    rng = random.Random(20240601)
    priorities = [rng.choice(list(PRIORITY_VALUES)) for _ in range(150)]
    q = qm.create_queue("ordered", concurrency=1)
    q.pause()
    for index, priority in enumerate(priorities):
        qm.push("ordered", {"i": index}, priority=priority)
    seen: list[int] = []
    q.process(lambda job: seen.append(job.data["i"]))
    q.resume()
    assert qm.join("ordered", timeout=WAIT)
    assert seen == expected_order(priorities)


def test_numeric_and_named_priorities_order_alike(qm: QueueManager) -> None:
    pushes: list[tuple[Any, str]] = [
        (0, "low"),
        ("critical", "critical"),
        (5, "normal"),
        ("low", "low"),
        (15, "critical"),
        (10, "high"),
        ("normal", "normal"),
        ("high", "high"),
    ]
    q = qm.create_queue("mixed", concurrency=1)
    q.pause()
    for index, (priority, _) in enumerate(pushes):
        qm.push("mixed", index, priority=priority)
    seen: list[int] = []
    q.process(lambda job: seen.append(job.data))
    q.resume()
    assert qm.join("mixed", timeout=WAIT)
    assert seen == expected_order([name for _, name in pushes])


def test_priority_is_respected_for_jobs_pushed_while_the_worker_is_busy(qm: QueueManager) -> None:
    started = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def handler(job: Job) -> None:
        if job.data == "first":
            started.set()
            release.wait(WAIT)
            return
        seen.append(job.data)

    q = qm.create_queue("busy", concurrency=1)
    q.process(handler)
    priorities = ["low", "normal", "high", "low", "critical", "normal", "high", "critical"]
    try:
        q.push("first")
        assert started.wait(WAIT)
        for index, priority in enumerate(priorities):
            q.push(index, priority=priority)
    finally:
        release.set()
    assert qm.join("busy", timeout=WAIT)
    assert seen == expected_order(priorities)


def test_push_batch_keeps_fifo_order(qm: QueueManager) -> None:
    q = qm.create_queue("batch-order", concurrency=1)
    q.pause()
    ids = qm.push_batch("batch-order", [{"data": i} for i in range(50)])
    more = qm.push_batch(
        "batch-order",
        [{"data": 100 + i, "options": {"priority": "high"}} for i in range(10)],
    )
    seen: list[str] = []
    q.process(lambda job: seen.append(job.id))
    q.resume()
    assert qm.join("batch-order", timeout=WAIT)
    assert seen == more + ids
