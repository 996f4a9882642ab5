"""The asyncio runner: timeouts of async handlers that block the loop or ignore cancellation.

A handler that blocks the event loop is charged for it (and logged); the jobs it starved are
not. A handler that swallows its cancellation is reported as timed out at its deadline (its slot
is given back at once) and abandoned, and stopping the runner does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from helpers import EARLY_TOLERANCE, WAIT, assert_aware_utc, wait_equal, wait_until
from rnode_queue import Job
from rnode_queue._asyncio_runner import SLOW_STEP, AsyncioRunner

#: A generous bound for "returned at once" checks: this is a hang check, not a benchmark.
HANG_BOUND = 3.0


def runner_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "rnode_queue" and record.levelno == logging.WARNING
    ]


# -- through the manager ------------------------------------------------------------------------


def test_a_handler_that_blocks_the_loop_is_charged_for_it_and_the_starved_jobs_are_not(
    manager_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    innocents = 20
    qm = manager_pool.open(backend="memory")
    q = qm.create_queue("blocking", concurrency=innocents + 1, max_retries=0)
    # Created outside a loop: it binds to the runner's loop on first use.
    all_started = asyncio.Event()
    started = 0
    held: list[float] = []  # how long each innocent job really took

    async def mixed_handler(job: Job) -> str:
        nonlocal started
        if job.data == "blocker":
            await asyncio.wait_for(all_started.wait(), WAIT)
            time.sleep(1.0)  # blocks the event loop: every other job is starved meanwhile
            return "blocker returned"
        began = time.monotonic()
        started += 1
        if started == innocents:
            all_started.set()
        # in flight while the blocker blocks: their timers are due long before it lets go
        await asyncio.wait_for(all_started.wait(), WAIT)
        await asyncio.sleep(0.05)
        held.append(time.monotonic() - began)
        return f"innocent {job.data}"

    q.process(mixed_handler)
    innocent_ids = qm.push_batch(
        "blocking", [{"data": i, "options": {"timeout": 0.5}} for i in range(innocents)]
    )
    blocker = q.push("blocker", timeout=0.3)

    failed = qm.wait_for(blocker, timeout=WAIT)
    assert failed is not None
    assert failed.status == "failed", f"the blocker was not charged: {failed!r}"
    assert failed.error is not None and "timed out" in failed.error
    assert failed.result is None
    for i, job_id in enumerate(innocent_ids):
        job = qm.wait_for(job_id, timeout=WAIT)
        assert job is not None
        assert job.status == "completed", (
            f"innocent job {i} was charged for the blocker's time: {job!r}"
        )
        assert job.result == f"innocent {i}"
    # they really were held past their own timeout, by the blocker
    assert len(held) == innocents
    assert max(held) > 0.5, held

    name = f"{mixed_handler.__module__}.{mixed_handler.__qualname__}"
    blocked = [m for m in runner_warnings(caplog) if "blocked the event loop" in m and blocker in m]
    assert len(blocked) == 1, runner_warnings(caplog)
    assert name in blocked[0]
    seconds = re.search(r"for (\d+\.\d+) seconds", blocked[0])
    assert seconds is not None and float(seconds.group(1)) >= 1.0 - EARLY_TOLERANCE, blocked[0]


def test_a_handler_that_swallows_its_cancellation_gives_its_slot_back_at_its_timeout(
    manager_pool: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    qm = manager_pool.open(backend="memory")
    q = qm.create_queue("stubborn", concurrency=1, max_retries=0)
    entered = threading.Event()
    cancelled = threading.Event()
    returned = threading.Event()

    async def stubborn_handler(job: Job) -> str:
        if job.data != "stubborn":
            return f"ran {job.data}"
        entered.set()
        give_up = time.monotonic() + WAIT * 2  # bounded, in case the runner never lets go
        while time.monotonic() < give_up:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancelled.set()  # ... and carry on regardless
        returned.set()
        return "too late"

    q.process(stubborn_handler)
    stubborn = q.push("stubborn", timeout=0.2, attempts=1)
    assert entered.wait(WAIT)

    failed = qm.wait_for(stubborn, timeout=0.2 + 1.0)
    assert failed is not None, f"not reported at its timeout: {qm.get_job(stubborn)!r}"
    assert failed.status == "failed"
    assert failed.error is not None and "timed out" in failed.error
    assert failed.attempts == 1
    started = assert_aware_utc(failed.started_at)
    ended = assert_aware_utc(failed.failed_at)
    assert ended - started >= timedelta(seconds=0.2 - EARLY_TOLERANCE)
    assert ended - started < timedelta(seconds=0.2 + 1.0)
    assert cancelled.wait(WAIT), "the handler was not cancelled"
    assert not returned.is_set()

    # its slot is free although the handler still runs
    wait_equal(lambda: q.get_stats()["processing"], 0, what="processing")
    following = qm.wait_for(q.push("next"), timeout=WAIT)
    assert following is not None and following.status == "completed"
    assert following.result == "ran next"
    assert not returned.is_set(), "the stubborn handler ended: this test proves nothing"

    begin = time.monotonic()
    qm.close(timeout=1)
    took = time.monotonic() - begin
    assert took < HANG_BOUND, f"close(timeout=1) took {took:.2f}s"
    assert any("abandoned" in m and "stubborn_handler" in m for m in runner_warnings(caplog)), (
        runner_warnings(caplog)
    )


# -- the runner alone, with a completion that records every call ---------------------------------


class FakeJob:
    def __init__(self, job_id: str) -> None:
        self.id = job_id


class RecordingCompletion:
    """Records every call (a real Completion ignores all but the first)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, Any, float]] = []

    def _record(self, kind: str, value: Any) -> None:
        with self._cond:
            self.calls.append((kind, value, time.monotonic()))
            self._cond.notify_all()

    def success(self, result: Any) -> None:
        self._record("success", result)

    def failure(self, error: BaseException) -> None:
        self._record("failure", error)

    def timed_out(self) -> None:
        self._record("timed_out", None)

    def wait(self, timeout: float = WAIT) -> tuple[str, Any, float]:
        with self._cond:
            assert self._cond.wait_for(lambda: self.calls, timeout), "nothing reported"
            return self.calls[0]

    def kinds(self) -> list[str]:
        with self._cond:
            return [kind for kind, _, _ in self.calls]


@pytest.fixture
def runner() -> Iterator[AsyncioRunner]:
    runner = AsyncioRunner(name="test-asyncio-runner")
    yield runner
    runner.stop(timeout=2.0)


def submit_one(
    runner: AsyncioRunner, handler: Any, timeout: float | None, job_id: str = "job-1"
) -> RecordingCompletion:
    completion = RecordingCompletion()
    runner.submitter(handler)([(FakeJob(job_id), timeout, completion)])  # type: ignore[list-item]
    return completion


def test_a_run_that_overran_is_timed_out_even_if_it_returned(runner: AsyncioRunner) -> None:
    async def blocker(job: FakeJob) -> str:
        time.sleep(0.3)  # never lets the timer run: only the end of the run can catch it
        return "done"

    completion = submit_one(runner, blocker, 0.1)
    kind, _, _ = completion.wait()
    assert kind == "timed_out"
    quiet = threading.Event()
    quiet.wait(0.2)
    assert completion.kinds() == ["timed_out"], "reported more than once"


def test_a_short_blocking_step_is_not_logged(
    runner: AsyncioRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rnode_queue")

    async def brief(job: FakeJob) -> int:
        time.sleep(SLOW_STEP / 4)
        await asyncio.sleep(0)
        return 7

    completion = submit_one(runner, brief, 5.0)
    assert completion.wait()[:2] == ("success", 7)
    assert runner_warnings(caplog) == []


def test_a_starved_run_is_excused_the_time_another_run_blocked_the_loop(
    runner: AsyncioRunner,
) -> None:
    release = asyncio.Event()

    async def patient(job: FakeJob) -> str:
        await asyncio.wait_for(release.wait(), WAIT)
        await asyncio.sleep(0.05)
        return "patient"

    async def hog(job: FakeJob) -> str:
        release.set()
        time.sleep(0.6)
        return "hog"

    patient_done = submit_one(runner, patient, 0.3, "patient")
    hog_done = submit_one(runner, hog, 5.0, "hog")  # its own timeout is long: it succeeds
    assert patient_done.wait()[:2] == ("success", "patient")
    assert hog_done.wait()[:2] == ("success", "hog")


def test_a_swallowed_cancellation_is_reported_at_the_deadline(runner: AsyncioRunner) -> None:
    done = threading.Event()

    async def stubborn(job: FakeJob) -> str:
        while not done.is_set():
            with contextlib.suppress(asyncio.CancelledError):  # swallowed
                await asyncio.sleep(0.02)
        return "ignored"

    begin = time.monotonic()
    completion = submit_one(runner, stubborn, 0.2)
    kind, _, at = completion.wait()
    assert kind == "timed_out"
    assert 0.2 - EARLY_TOLERANCE <= at - begin < 0.2 + 1.0
    done.set()  # the handler returns now: its result is ignored
    quiet = threading.Event()
    quiet.wait(0.2)
    assert completion.kinds() == ["timed_out"]


def test_stop_returns_in_time_when_a_task_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    entered = threading.Event()
    closed = threading.Event()

    async def deaf(job: FakeJob) -> None:
        entered.set()
        try:
            give_up = time.monotonic() + WAIT * 2
            while time.monotonic() < give_up:
                with contextlib.suppress(asyncio.CancelledError):  # swallowed
                    await asyncio.sleep(0.02)
        except GeneratorExit:  # the runner closes it once the loop is closed
            closed.set()
            raise

    runner = AsyncioRunner(name="test-asyncio-runner-deaf")
    completion = submit_one(runner, deaf, None)
    assert entered.wait(WAIT)
    begin = time.monotonic()
    runner.stop(timeout=0.3)
    took = time.monotonic() - begin
    assert took < HANG_BOUND, f"stop(timeout=0.3) took {took:.2f}s"
    wait_until(lambda: not runner.running, what="the loop thread ended")
    assert closed.wait(WAIT), "the abandoned coroutine was not closed"
    kind, error, _ = completion.wait()
    assert kind == "failure" and "abandoned" in str(error)
    assert completion.kinds() == ["failure"]
    assert any("1 async task(s)" in m and "deaf" in m for m in runner_warnings(caplog))
    runner.stop(timeout=0.3)  # idempotent


def test_stop_cancels_cooperative_tasks_and_reports_them(runner: AsyncioRunner) -> None:
    entered = threading.Event()

    async def sleeper(job: FakeJob) -> None:
        entered.set()
        await asyncio.sleep(WAIT * 2)

    completion = submit_one(runner, sleeper, None)
    assert entered.wait(WAIT)
    begin = time.monotonic()
    runner.stop(timeout=5.0)
    assert time.monotonic() - begin < HANG_BOUND
    kind, error, _ = completion.wait()
    assert kind == "failure" and isinstance(error, asyncio.CancelledError)


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, ValueError])
def test_an_exception_is_reported_once_as_a_failure(
    runner: AsyncioRunner, raised: type[BaseException]
) -> None:
    async def failing(job: FakeJob) -> None:
        await asyncio.sleep(0)
        raise raised("boom")

    completion = submit_one(runner, failing, 5.0)
    kind, error, _ = completion.wait()
    assert kind == "failure" and type(error) is raised
    assert error.__traceback__ is not None
    follow = submit_one(runner, failing, None, "job-2")  # the loop survived it
    assert follow.wait()[0] == "failure"
    assert completion.kinds() == ["failure"]
