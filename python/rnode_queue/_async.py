"""The asyncio API: :class:`AsyncQueueManager` and its :class:`AsyncQueue` handles."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload

from ._sync import _H, BackoffFunction, QueueManager, Seconds, _QueueHandle, _utc, env_config

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from ._core import Engine, Job, Stats

__all__ = ["AsyncQueue", "AsyncQueueManager"]

# Blocking waits run in a worker thread in slices of this many seconds, so that a cancelled
# `await aqm.wait_for(...)` / `await aqm.join(...)` frees its thread soon.
_WAIT_SLICE = 0.5


class AsyncQueueManager:
    """:class:`QueueManager` for asyncio applications: the same methods, as coroutines.

    ``get_queue``, ``process`` and the properties are plain calls that never wait for the
    network (on redis, a queue first seen by them is declared in the background). On the
    memory backend, calls that never block run directly on the event loop; blocking calls
    (``wait_for``, ``join``, ``close``, and every call on the redis backend) run in
    a worker thread. Async handlers run on the manager's own event loop thread, not on the
    caller's loop.
    """

    def __init__(
        self,
        backend: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        prefix: str = "rnode:queue",
        max_job_bytes: int = 1_048_576,
        lease: Seconds = 30.0,
        fsync: str = "everysec",
        concurrency: int = 5,
        max_retries: int = 3,
        timeout: Seconds = 300.0,
        retry_delay: Seconds = 1.0,
        backoff: str | BackoffFunction = "exponential",
        ttl: Seconds = 86_400.0,
        keep_completed: int = 10_000,
        keep_failed: int = 100_000,
    ) -> None:
        self._sync = QueueManager(
            backend,
            path=path,
            url=url,
            prefix=prefix,
            max_job_bytes=max_job_bytes,
            lease=lease,
            fsync=fsync,
            concurrency=concurrency,
            max_retries=max_retries,
            timeout=timeout,
            retry_delay=retry_delay,
            backoff=backoff,
            ttl=ttl,
            keep_completed=keep_completed,
            keep_failed=keep_failed,
        )
        self._engine = self._sync._engine
        self._direct = self._engine.backend == "memory"

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Configured from the environment like :meth:`QueueManager.from_env`."""
        return cls(**env_config(overrides))

    @property
    def sync(self) -> QueueManager:
        """The synchronous manager over the same engine (for sync handlers and threads)."""
        return self._sync

    @property
    def backend(self) -> str:
        """``"memory"`` or ``"redis"`` (``"file"`` is planned)."""
        return self._engine.backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    # -- queues -------------------------------------------------------------------------------

    async def create_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        retry_delay: Seconds | None = None,
        max_retries: int | None = None,
        timeout: Seconds | None = None,
        backoff: str | BackoffFunction | None = None,
        custom_delays: Sequence[Seconds] | None = None,
        backoff_cap: Seconds | None = None,
        jitter: float | None = None,
        ttl: Seconds | None = None,
        keep_completed: int | None = None,
        keep_failed: int | None = None,
    ) -> AsyncQueue:
        """Create queue ``name`` (or update its configuration); see
        :meth:`QueueManager.create_queue`."""
        options: dict[str, Any] = {
            "concurrency": concurrency,
            "retry_delay": retry_delay,
            "max_retries": max_retries,
            "timeout": timeout,
            "backoff": backoff,
            "custom_delays": custom_delays,
            "backoff_cap": backoff_cap,
            "jitter": jitter,
            "ttl": ttl,
            "keep_completed": keep_completed,
            "keep_failed": keep_failed,
        }
        if self._direct:
            self._engine.create_queue(name, **options)
        else:
            await asyncio.to_thread(self._engine.create_queue, name, **options)
        return AsyncQueue(self, name)

    def get_queue(self, name: str) -> AsyncQueue:
        """The handle of queue ``name``, created with the defaults if missing (a plain call).

        It never waits for the network: on redis a new queue is declared in the background.
        """
        self._engine.ensure_queue(name, later=not self._direct)
        return AsyncQueue(self, name)

    async def pause_queue(self, name: str) -> None:
        """Stop starting jobs of ``name``."""
        if self._direct:
            return self._engine.pause_queue(name)
        return await asyncio.to_thread(self._engine.pause_queue, name)

    async def resume_queue(self, name: str) -> None:
        """Start running the jobs of ``name`` again."""
        if self._direct:
            return self._engine.resume_queue(name)
        return await asyncio.to_thread(self._engine.resume_queue, name)

    async def clear_queue(self, name: str) -> int:
        """Remove the waiting and delayed jobs of ``name``; returns how many."""
        if self._direct:
            return self._engine.clear_queue(name)
        return await asyncio.to_thread(self._engine.clear_queue, name)

    async def delete_queue(self, name: str) -> bool:
        """Remove queue ``name`` with its jobs."""
        if self._direct:
            return self._engine.delete_queue(name)
        return await asyncio.to_thread(self._engine.delete_queue, name)

    async def _queue_stats(self, name: str) -> dict[str, int]:
        if self._direct:
            return self._engine.queue_stats(name)
        return await asyncio.to_thread(self._engine.queue_stats, name)

    # -- handlers (plain calls) ---------------------------------------------------------------

    @overload
    def process(self, queue: str, handler: _H, *, concurrency: int | None = None) -> _H: ...
    @overload
    def process(
        self, queue: str, handler: None = None, *, concurrency: int | None = None
    ) -> Callable[[_H], _H]: ...
    def process(
        self, queue: str, handler: _H | None = None, *, concurrency: int | None = None
    ) -> _H | Callable[[_H], _H]:
        """Run ``handler`` for the jobs of ``queue``: see :meth:`QueueManager.process`.

        It never waits for the network (see :meth:`get_queue`).
        """
        return self._sync._process(queue, handler, concurrency, later=not self._direct)

    # -- jobs ---------------------------------------------------------------------------------

    async def push(
        self,
        queue: str,
        data: Any,
        *,
        priority: str | int | None = None,
        delay: Seconds | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
    ) -> str:
        """Add a job to ``queue``; returns its id (see :meth:`QueueManager.push`)."""
        if self._direct:
            return self._engine.push(
                queue,
                data,
                priority=priority,
                delay=delay,
                attempts=attempts,
                timeout=timeout,
                tags=tags,
                metadata=metadata,
                scheduled_at=scheduled_at,
            )
        return await asyncio.to_thread(
            self._engine.push,
            queue,
            data,
            priority=priority,
            delay=delay,
            attempts=attempts,
            timeout=timeout,
            tags=tags,
            metadata=metadata,
            scheduled_at=scheduled_at,
        )

    async def push_batch(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add many jobs at once, all or nothing (see :meth:`QueueManager.push_batch`)."""
        if self._direct:
            return self._engine.push_batch(queue, items)
        return await asyncio.to_thread(self._engine.push_batch, queue, items)

    async def schedule_at(
        self,
        queue: str,
        data: Any,
        when: datetime,
        *,
        priority: str | int | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Add a job that runs at ``when`` (aware, or naive read as **UTC**); returns its id."""
        return await self.push(
            queue,
            data,
            priority=priority,
            attempts=attempts,
            timeout=timeout,
            tags=tags,
            metadata=metadata,
            scheduled_at=_utc(when),
        )

    async def schedule(
        self,
        queue: str,
        data: Any,
        cron: str,
        *,
        name: str | None = None,
        priority: str | int | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Push a job on every tick of ``cron``; see :meth:`QueueManager.schedule`."""
        options: dict[str, Any] = {
            "name": name,
            "priority": priority,
            "attempts": attempts,
            "timeout": timeout,
            "tags": tags,
            "metadata": metadata,
        }
        if self._direct:
            return self._engine.schedule(queue, data, cron, **options)
        return await asyncio.to_thread(self._engine.schedule, queue, data, cron, **options)

    async def unschedule(self, schedule_id: str) -> bool:
        """Remove a schedule; False if there was none with that id."""
        if self._direct:
            return self._engine.unschedule(schedule_id)
        return await asyncio.to_thread(self._engine.unschedule, schedule_id)

    async def list_schedules(self) -> list[dict[str, Any]]:
        """The schedules: dicts with ``id, name, queue, cron, data, next_run``."""
        if self._direct:
            return self._engine.list_schedules()
        return await asyncio.to_thread(self._engine.list_schedules)

    async def get_stats(self) -> Stats:
        """Manager-wide counters and the size of every queue."""
        if self._direct:
            return self._engine.get_stats()
        return await asyncio.to_thread(self._engine.get_stats)

    async def get_job(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown."""
        if self._direct:
            return self._engine.get_job(job_id)
        return await asyncio.to_thread(self._engine.get_job, job_id)

    async def get_jobs(self, queue: str, status: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs of ``queue`` with ``status`` (all when None), at most ``limit``."""
        if self._direct:
            return self._engine.get_jobs(queue, status, limit)
        return await asyncio.to_thread(self._engine.get_jobs, queue, status, limit)

    async def retry_job(self, job_id: str) -> bool:
        """Put a failed job back to waiting with a fresh count of attempts."""
        if self._direct:
            return self._engine.retry_job(job_id)
        return await asyncio.to_thread(self._engine.retry_job, job_id)

    async def wait_for(self, job_id: str, timeout: Seconds | None = None) -> Job | None:
        """Wait until the job completed or finally failed and return it; None on timeout.

        An id no job has raises :class:`JobNotFoundError`.
        """
        engine = self._engine
        deadline = _deadline(engine, timeout)
        while True:
            # Each slice raises JobNotFoundError for an unknown id.
            job = await asyncio.to_thread(engine.wait_for_job, job_id, _slice(deadline))
            if job is not None or (deadline is not None and time.monotonic() >= deadline):
                return job

    async def join(self, queue: str | None = None, timeout: Seconds | None = None) -> bool:
        """Wait until ``queue`` (or every queue) has no waiting, delayed or active job.

        Returns False if ``timeout`` expired first.
        """
        engine = self._engine
        deadline = _deadline(engine, timeout)
        while True:
            if await asyncio.to_thread(engine.join, queue, _slice(deadline)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    # -- lifecycle ----------------------------------------------------------------------------

    async def close(self, timeout: Seconds = 30.0) -> bool:
        """Stop taking jobs and wait up to ``timeout`` s for running ones; True if all finished."""
        self._engine.check_close_timeout(timeout)  # a bad timeout changes nothing
        return await asyncio.to_thread(self._sync.close, timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return repr(self._sync).replace("QueueManager", type(self).__name__, 1)


def _deadline(engine: Engine, timeout: Seconds | None) -> float | None:
    """When a wait of ``timeout`` ends (None: never), checked as the engine checks it."""
    if timeout is None:
        return None
    seconds = engine.check_close_timeout(timeout)
    return None if math.isinf(seconds) else time.monotonic() + seconds


def _slice(deadline: float | None) -> float:
    if deadline is None:
        return _WAIT_SLICE
    return max(0.0, min(_WAIT_SLICE, deadline - time.monotonic()))


class AsyncQueue(_QueueHandle):
    """A handle on one queue of an :class:`AsyncQueueManager`; ``process`` is a plain call."""

    def __init__(self, manager: AsyncQueueManager, name: str) -> None:
        super().__init__(manager._sync, name)
        self._amanager = manager
        self._later = not manager._direct

    async def push(
        self,
        data: Any,
        *,
        priority: str | int | None = None,
        delay: Seconds | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
    ) -> str:
        """Add a job to this queue; returns its id."""
        return await self._amanager.push(
            self.name,
            data,
            priority=priority,
            delay=delay,
            attempts=attempts,
            timeout=timeout,
            tags=tags,
            metadata=metadata,
            scheduled_at=scheduled_at,
        )

    async def push_batch(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add many jobs to this queue, all or nothing."""
        return await self._amanager.push_batch(self.name, items)

    async def pause(self) -> None:
        """Stop starting this queue's jobs until :meth:`resume`."""
        await self._amanager.pause_queue(self.name)

    async def resume(self) -> None:
        """Start running this queue's jobs again."""
        await self._amanager.resume_queue(self.name)

    async def clear(self) -> int:
        """Remove the waiting and delayed jobs; returns how many were removed."""
        return await self._amanager.clear_queue(self.name)

    async def delete(self) -> bool:
        """Remove this queue and its jobs."""
        return await self._amanager.delete_queue(self.name)

    async def get_stats(self) -> dict[str, int]:
        """``{"size", "processing", "completed", "failed", ...}`` of this queue."""
        return await self._amanager._queue_stats(self.name)

    async def get_jobs(self, status: str | None = None, limit: int = 100) -> list[Job]:
        """This queue's jobs with ``status`` (all when None), at most ``limit``."""
        return await self._amanager.get_jobs(self.name, status, limit)
