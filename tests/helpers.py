"""Helpers shared by the test modules: recorders, concurrency trackers, bounded waits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from rnode_queue import Job, QueueManager

T = TypeVar("T")

#: Timeout for anything that is expected to happen (a bug fails the test instead of hanging).
WAIT = 10.0
#: How early an event may look because the engine's clock is not the test's (rounding).
EARLY_TOLERANCE = 0.005
#: How late a due job may start and still pass (the target is 10-50 ms; this is generous).
LATE_BOUND = 0.5
#: How long a test watches for something that must NOT happen (an extra worker, a paused run).
QUIET_WINDOW = 0.3

PRIORITY_VALUES: dict[str, int] = {"low": 0, "normal": 5, "high": 10, "critical": 15}
STATUSES: tuple[str, ...] = ("waiting", "delayed", "active", "completed", "failed")
JOB_FIELDS: tuple[str, ...] = (
    "id",
    "queue",
    "data",
    "priority",
    "status",
    "attempts",
    "max_attempts",
    "delay",
    "created_at",
    "scheduled_at",
    "started_at",
    "completed_at",
    "failed_at",
    "error",
    "result",
    "tags",
    "metadata",
)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def assert_aware_utc(value: object) -> datetime:
    """``value`` is an aware datetime in UTC."""
    assert isinstance(value, datetime), f"expected a datetime, got {value!r}"
    assert value.tzinfo is not None, f"naive datetime {value!r}"
    assert value.utcoffset() == timedelta(0), f"not UTC: {value!r}"
    return value


def assert_json_equal(actual: Any, expected: Any, path: str = "data") -> None:
    """Equal as JSON values, with exact types (``True`` is not ``1``, ``1.0`` is not ``1``)."""
    if isinstance(expected, tuple):
        expected = list(expected)
    assert type(actual) is type(expected), f"{path}: {actual!r} is not {expected!r}"
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{path}: keys {list(actual)} != {list(expected)}"
        for key, value in expected.items():
            assert_json_equal(actual[key], value, f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for index, (a, e) in enumerate(zip(actual, expected, strict=False)):
            assert_json_equal(a, e, f"{path}[{index}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def wait_until(predicate: Callable[[], T], timeout: float = WAIT, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    Only for values the engine publishes "a moment" after the fact (stats); events are
    awaited with real synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or predicate}: {value!r}")
        time.sleep(0.005)


def wait_equal(get: Callable[[], Any], expected: Any, timeout: float = 3.0, what: str = "") -> None:
    """Poll ``get()`` until it equals ``expected``; fail after ``timeout`` with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if value == expected:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or get}: {value!r} != {expected!r} after {timeout}s")
        time.sleep(0.005)


async def async_wait_equal(
    get: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 3.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = await get()
        if value == expected:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or get}: {value!r} != {expected!r} after {timeout}s")
        await asyncio.sleep(0.005)


def run_async(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` in a fresh event loop; fail if it takes longer than ``timeout``."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


class Recorder:
    """Records each handler call (the job and when it started) and lets a test await them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.entries: list[dict[str, Any]] = []

    def record(self, job: Job, **extra: Any) -> None:
        entry = {"mono": time.monotonic(), "wall": time.time(), "job": job, **extra}
        with self._cond:
            self.entries.append(entry)
            self._cond.notify_all()

    def wait_count(self, count: int, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.entries) >= count, timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.entries)

    def __len__(self) -> int:
        with self._cond:
            return len(self.entries)


class Tracker:
    """Counts handlers running at once (and the most ever seen)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.running = 0
        self.max_running = 0
        self.started = 0
        self.finished = 0

    def enter(self) -> None:
        with self._cond:
            self.running += 1
            self.started += 1
            self.max_running = max(self.max_running, self.running)
            self._cond.notify_all()

    def leave(self) -> None:
        with self._cond:
            self.running -= 1
            self.finished += 1
            self._cond.notify_all()

    def wait(self, predicate: Callable[[Tracker], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)


class AsyncGate:
    """A gate async handlers wait at until the test opens it from its own thread.

    Uses an ``asyncio.Event`` per event loop the handlers run on, set thread-safely.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._open = False

    async def wait(self, timeout: float = WAIT) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            event = self._events.get(loop)
            if event is None:
                event = self._events[loop] = asyncio.Event()
                if self._open:
                    event.set()
        await asyncio.wait_for(event.wait(), timeout)

    def open(self) -> None:
        with self._lock:
            self._open = True
            for loop, event in self._events.items():
                loop.call_soon_threadsafe(event.set)


def check_concurrency(
    qm: QueueManager,
    queue: str,
    expected: int,
    register: Callable[[Callable[[Job], Any]], Any],
    kind: str = "sync",
) -> None:
    """Exactly ``expected`` handlers of ``queue`` run at once, never one more.

    ``register(handler)`` starts the workers (``q.process``, ``q.process_concurrent``...).
    Handlers block until released, so the running count climbs to the limit and stays there.
    """
    tracker = Tracker()
    release = threading.Event()
    gate = AsyncGate()

    def sync_handler(job: Job) -> None:
        tracker.enter()
        try:
            release.wait(WAIT)
        finally:
            tracker.leave()

    async def async_handler(job: Job) -> None:
        tracker.enter()
        try:
            await gate.wait(WAIT)
        finally:
            tracker.leave()

    register(sync_handler if kind == "sync" else async_handler)
    total = expected * 2 + 1
    for i in range(total):
        qm.push(queue, {"i": i})
    try:
        assert tracker.wait(lambda t: t.running >= expected), (
            f"only {tracker.running} handlers ran at once; the limit is {expected}"
        )
        assert not tracker.wait(lambda t: t.running > expected, QUIET_WINDOW), (
            f"{tracker.running} handlers ran at once; the limit is {expected}"
        )
        wait_equal(lambda: qm.get_stats().active_workers, expected, what="active_workers")
        wait_equal(lambda: qm.get_queue(queue).get_stats()["processing"], expected)
    finally:
        release.set()
        gate.open()
    assert qm.join(queue, timeout=WAIT)
    assert tracker.finished == total
    assert tracker.max_running == expected
    wait_equal(lambda: qm.get_stats().active_workers, 0, what="active_workers after join")
