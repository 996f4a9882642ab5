"""AsyncQueueManager: every method a coroutine (but get_queue / process), same semantics."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from helpers import (
    QUIET_WINDOW,
    WAIT,
    AsyncGate,
    Tracker,
    assert_aware_utc,
    async_wait_equal,
    run_async,
    utcnow,
)
from rnode_queue import (
    AsyncQueue,
    AsyncQueueManager,
    InvalidJobError,
    Job,
    QueueClosedError,
    Stats,
)

T = TypeVar("T")
MakeAqm = Callable[..., AsyncQueueManager]


async def aw(value: Awaitable[T]) -> T:
    """Await ``value``, which must be awaitable (a coroutine method was called)."""
    assert inspect.isawaitable(value), f"{value!r} is not awaitable"
    return await value


def test_jobs_results_and_failures(make_aqm: MakeAqm) -> None:
    healthy = threading.Event()

    async def handle(job: Job) -> Any:
        await asyncio.sleep(0)
        if job.data.get("fail") and not healthy.is_set():
            raise ValueError("async boom")
        return {"double": job.data["n"] * 2}

    async def main() -> None:
        aqm = make_aqm()
        q = await aw(
            aqm.create_queue(
                "work", concurrency=2, max_retries=1, retry_delay=0.01, backoff="fixed"
            )
        )
        assert isinstance(q, AsyncQueue)
        assert q.name == "work"
        returned = q.process(handle)
        assert not inspect.isawaitable(returned)

        job_id = await aw(aqm.push("work", {"n": 21}, priority="high", tags=["t"]))
        assert isinstance(job_id, str)
        job = await aw(aqm.wait_for(job_id, timeout=WAIT))
        assert job is not None
        assert job.status == "completed", job.error
        assert job.result == {"double": 42}
        got = await aw(aqm.get_job(job_id))
        assert got is not None and got.priority == "high" and got.tags == ["t"]

        ids = await aw(
            aqm.push_batch(
                "work", [{"data": {"n": 1}}, {"data": {"n": 2}, "options": {"priority": "low"}}]
            )
        )
        assert len(ids) == 2
        assert await aw(aqm.join("work", timeout=WAIT)) is True
        completed = await aw(aqm.get_jobs("work", status="completed"))
        assert {j.id for j in completed} == {job_id, *ids}

        fail_id = await aw(aqm.push("work", {"n": 0, "fail": True}))
        failed = await aw(aqm.wait_for(fail_id, timeout=WAIT))
        assert failed is not None
        assert failed.status == "failed"
        assert failed.attempts == 2
        assert failed.error == "ValueError: async boom"
        assert failed.traceback is not None
        assert 'raise ValueError("async boom")' in failed.traceback
        healthy.set()
        assert await aw(aqm.retry_job(fail_id)) is True
        again = await aw(aqm.wait_for(fail_id, timeout=WAIT))
        assert again is not None and again.status == "completed"
        assert again.attempts == 1

        async def counters() -> tuple[int, int, int]:
            stats = await aw(aqm.get_stats())
            assert isinstance(stats, Stats)
            return stats.jobs_processed, stats.jobs_failed, stats.jobs_retried

        await async_wait_equal(counters, (4, 1, 1))
        assert await aw(aqm.close(timeout=5)) is True

    run_async(main())


def test_queue_operations(make_aqm: MakeAqm) -> None:
    async def main() -> None:
        aqm = make_aqm()
        q = aqm.get_queue("ops")  # a plain call
        assert isinstance(q, AsyncQueue)
        seen: list[Any] = []

        async def handler(job: Job) -> None:
            seen.append(job.data)

        await aw(aqm.pause_queue("ops"))
        q.process(handler)
        job_id = await aw(aqm.push("ops", "while paused"))
        await asyncio.sleep(QUIET_WINDOW)  # watching for a run that must not happen
        assert seen == []
        job = await aw(aqm.get_job(job_id))
        assert job is not None and job.status == "waiting"
        stats = await aw(q.get_stats())
        assert stats["size"] == 1
        await aw(aqm.resume_queue("ops"))
        done = await aw(aqm.wait_for(job_id, timeout=WAIT))
        assert done is not None and done.status == "completed"
        assert seen == ["while paused"]

        await aw(q.pause())
        paused_ids = [await aw(aqm.push("ops", i)) for i in range(2)]
        paused_ids.append(await aw(q.push(2, priority="low")))
        assert len(await aw(aqm.get_jobs("ops", status="waiting"))) == 3
        assert {j.id for j in await aw(q.get_jobs(status="waiting"))} == set(paused_ids)
        await aw(q.clear())
        assert await aw(aqm.get_jobs("ops", status="waiting")) == []
        assert (await aw(q.get_stats()))["size"] == 0
        await aw(q.resume())
        for job_id in paused_ids:
            cleared = await aw(aqm.get_job(job_id))
            assert cleared is None or cleared.status != "waiting"

        other = aqm.get_queue("other")
        await aw(other.pause())
        for i in range(2):
            await aw(aqm.push("other", i))
        await aw(aqm.clear_queue("other"))
        assert await aw(aqm.get_jobs("other", status="waiting")) == []
        await aw(aqm.delete_queue("other"))
        stats = await aw(aqm.get_stats())
        assert "other" not in stats.queue_sizes
        assert "ops" in stats.queue_sizes

    run_async(main())


def test_schedules(make_aqm: MakeAqm) -> None:
    async def main() -> None:
        aqm = make_aqm()
        sid = await aw(aqm.schedule("cron", {"x": 1}, "0 2 * * *"))
        assert await aw(aqm.schedule("cron", {"x": 1}, "0 2 * * *")) == sid
        named = await aw(aqm.schedule("cron", {"x": 2}, "*/5 * * * * *", name="five-secs"))
        assert named == "five-secs"
        schedules = {s["id"]: s for s in await aw(aqm.list_schedules())}
        assert set(schedules) == {sid, "five-secs"}
        assert_aware_utc(schedules[sid]["next_run"])
        assert await aw(aqm.unschedule(sid)) is True
        assert await aw(aqm.unschedule(sid)) is False
        assert [s["id"] for s in await aw(aqm.list_schedules())] == ["five-secs"]

        recorded: list[Job] = []

        async def handler(job: Job) -> None:
            recorded.append(job)

        aqm.get_queue("later").process(handler)
        due = utcnow() + timedelta(seconds=0.2)
        job_id = await aw(aqm.schedule_at("later", {"n": 5}, due, priority="critical"))
        job = await aw(aqm.wait_for(job_id, timeout=WAIT))
        assert job is not None and job.status == "completed"
        assert job.priority == "critical"
        assert assert_aware_utc(job.started_at) >= due - timedelta(milliseconds=1)
        assert len(recorded) == 1

    run_async(main())


def test_sync_handler_on_an_async_manager(make_aqm: MakeAqm) -> None:
    async def main() -> None:
        aqm = make_aqm()
        q = aqm.get_queue("sync-handler")
        q.process(lambda job: job.data.upper())
        job = await aw(aqm.wait_for(await aw(aqm.push("sync-handler", "abc")), timeout=WAIT))
        assert job is not None and job.result == "ABC"

    run_async(main())


def test_async_concurrency_limit(make_aqm: MakeAqm) -> None:
    tracker = Tracker()
    gate = AsyncGate()

    async def handler(job: Job) -> None:
        tracker.enter()
        try:
            await gate.wait(WAIT)
        finally:
            tracker.leave()

    async def main() -> None:
        aqm = make_aqm()
        q = await aw(aqm.create_queue("limited", concurrency=3))
        q.process(handler)
        for i in range(7):
            await aw(aqm.push("limited", i))
        try:
            reached = await asyncio.to_thread(tracker.wait, lambda t: t.running >= 3)
            assert reached, f"only {tracker.running} ran at once"
            over = await asyncio.to_thread(tracker.wait, lambda t: t.running > 3, QUIET_WINDOW)
            assert not over, f"{tracker.running} ran at once"
        finally:
            gate.open()
        assert await aw(aqm.join("limited", timeout=WAIT)) is True
        assert tracker.max_running == 3
        assert tracker.finished == 7

    run_async(main())


def test_the_event_loop_is_never_blocked(make_aqm: MakeAqm) -> None:
    """wait_for/join are awaited without blocking other tasks of the application's loop."""

    async def main() -> None:
        aqm = make_aqm()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        job_id = await aw(aqm.push("nobody", 1))
        assert await aw(aqm.wait_for(job_id, timeout=0.3)) is None
        assert await aw(aqm.join("nobody", timeout=0.3)) is False
        task.cancel()
        assert ticks >= 20, f"the loop ticked only {ticks} times in 0.6 s"

    run_async(main())


def test_async_context_manager(backend_kwargs: dict[str, Any]) -> None:
    async def main() -> None:
        async with AsyncQueueManager(**backend_kwargs) as aqm:
            assert isinstance(aqm, AsyncQueueManager)
            job_id = await aw(aqm.push("ctx", 1))
            assert (await aw(aqm.get_job(job_id))) is not None
        with pytest.raises(QueueClosedError):
            await aqm.push("ctx", 2)
        with pytest.raises(QueueClosedError):
            await aqm.get_stats()

    run_async(main())


def test_async_bad_input(make_aqm: MakeAqm) -> None:
    async def main() -> None:
        aqm = make_aqm()
        await aw(aqm.push("bad", 1))
        with pytest.raises(InvalidJobError):
            await aqm.push("bad", object())
        with pytest.raises(InvalidJobError):
            await aqm.push("bad", 1, priority="urgent")
        with pytest.raises(InvalidJobError):
            await aqm.push_batch("bad", [{"data": 1}, {"data": {1, 2}}])
        assert len(await aw(aqm.get_jobs("bad"))) == 1
        # A misspelt option names the call made, and pushes nothing.
        for name, call in [
            ("AsyncQueueManager.push", lambda: aqm.push("bad", 1, priorty="high")),
            ("AsyncQueue.push", lambda: aqm.get_queue("bad").push(1, dealy=1)),
            ("create_queue", lambda: aqm.create_queue("bad", concurency=2)),
            ("schedule", lambda: aqm.schedule("bad", 1, "@hourly", nmae="x")),
        ]:
            with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword"):
                await call()
        with pytest.raises(TypeError, match=r"^AsyncQueueManager\(\) got an unexpected"):
            AsyncQueueManager(concurency=2)
        assert len(await aw(aqm.get_jobs("bad"))) == 1

    run_async(main())


def test_async_from_env(monkeypatch: pytest.MonkeyPatch, manager_pool: Any) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("QUEUE_DEFAULT_RETRIES", "1")

    async def main() -> None:
        aqm = manager_pool.track_async(AsyncQueueManager.from_env())
        assert isinstance(aqm, AsyncQueueManager)
        job = await aw(aqm.get_job(await aw(aqm.push("env", 1))))
        assert job is not None and job.max_attempts == 2

    run_async(main())
