"""Concurrency: each queue runs exactly its limit of handlers at once, never one more."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import WAIT, Tracker, check_concurrency
from rnode_queue import Job, QueueManager

Register = Callable[[Callable[[Job], Any]], Any]


def _created(qm: QueueManager) -> tuple[Register, int]:
    q = qm.create_queue("limited", concurrency=3)
    return q.process, 3


def _default(qm: QueueManager) -> tuple[Register, int]:
    return qm.get_queue("limited").process, 5


def _process_concurrent(qm: QueueManager) -> tuple[Register, int]:
    q = qm.create_queue("limited", concurrency=1)
    return (lambda handler: q.process_concurrent(handler, 4)), 4


def _process_keyword(qm: QueueManager) -> tuple[Register, int]:
    q = qm.create_queue("limited", concurrency=6)
    return (lambda handler: q.process(handler, concurrency=2)), 2


CASES = {
    "create_queue": _created,
    "default": _default,
    "process_concurrent": _process_concurrent,
    "process-concurrency-keyword": _process_keyword,
}


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("case", list(CASES))
def test_concurrency_limit_is_reached_and_never_exceeded(
    qm: QueueManager, case: str, kind: str
) -> None:
    register, expected = CASES[case](qm)
    check_concurrency(qm, "limited", expected, register, kind)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_manager_default_concurrency(make_qm: Callable[..., QueueManager], kind: str) -> None:
    qm = make_qm(concurrency=2)
    check_concurrency(qm, "limited", 2, qm.get_queue("limited").process, kind)


def test_queues_have_separate_limits(qm: QueueManager) -> None:
    """A saturated queue does not take the slots of another one."""
    tracker = Tracker()
    release = threading.Event()

    def blocking(job: Job) -> None:
        tracker.enter()
        try:
            release.wait(WAIT)
        finally:
            tracker.leave()

    busy = qm.create_queue("busy", concurrency=2)
    busy.process(blocking)
    free = qm.create_queue("free", concurrency=1)
    free.process(lambda job: "done")
    try:
        for i in range(4):
            busy.push(i)
        assert tracker.wait(lambda t: t.running == 2)
        job = qm.wait_for(free.push("x"), timeout=WAIT)
        assert job is not None and job.status == "completed"
    finally:
        release.set()
    assert qm.join(timeout=WAIT)
