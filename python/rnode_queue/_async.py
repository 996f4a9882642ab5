"""The asyncio API: :class:`AsyncQueueManager` and its :class:`AsyncQueue` handles."""

from __future__ import annotations

import asyncio
import collections
import math
import os
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._core import DEFAULT_CLOSE_TIMEOUT, QueueClosedError, QueueError
from ._options import (
    JOB_KEYS,
    MANAGER_KEYS,
    PUSH_KEYS,
    QUEUE_KEYS,
    SCHEDULE_KEYS,
    Seconds,
    check_keys,
)
from ._sync import _H, QueueManager, _QueueHandle, _utc, env_config

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import ParamSpec, Self, Unpack

    from ._core import Engine, Job, Stats
    from ._options import JobOptions, ManagerOptions, PushOptions, QueueOptions, ScheduleOptions

    _P = ParamSpec("_P")

_T = TypeVar("_T")

__all__ = ["AsyncQueue", "AsyncQueueManager"]

# Blocking waits run in a worker thread in slices of this many seconds, so that a cancelled
# `await aqm.wait_for(...)` / `await aqm.join(...)` frees its thread soon.
_WAIT_SLICE = 0.5


#: Commits under way at once per event loop (see `_GroupCommit`).
_COMMITS_IN_FLIGHT = 2


class _GroupCommit:
    """Makes pushes stored in place durable: one commit (one sync of the log) covers every push
    waiting when it starts, however many coroutines made them. Commits run in order on an
    engine thread that never takes the GIL and report through a pipe the event loop watches.

    Two commits may be under way, so that the loop resumes and runs pushing coroutines while
    the disk syncs: a batch starts once it holds half of the coroutines seen pushing when the
    last commit ended (many pushers then make two alternating halves, measured a quarter
    faster than one commit at a time), or else once the coroutines ready now have run."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop
        self._durable = 0
        # The pushes waiting for the next commit, and the highest ticket among them.
        self._waiting: list[asyncio.Future[None]] = []
        self._waiting_ticket = 0
        # The commits under way, oldest first: each one's ticket and the pushes it covers.
        self._in_flight: collections.deque[tuple[int, list[asyncio.Future[None]]]] = (
            collections.deque()
        )
        # A batch this large starts at once (see the class docstring).
        self._split = sys.maxsize
        self._starting = False
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        loop.add_reader(self._read, self._done)
        # A loop dropped without closing the manager still gets its descriptors back.
        self._close_fds = weakref.finalize(self, _close_fds, self._read, self._write)

    async def wait(self, ticket: int) -> None:
        if ticket <= self._durable:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiting.append(future)
        if ticket > self._waiting_ticket:
            self._waiting_ticket = ticket
        if len(self._in_flight) < _COMMITS_IN_FLIGHT:
            if len(self._waiting) >= self._split:
                self._start()
            elif not self._starting:
                self._schedule()
        await future

    def _schedule(self) -> None:
        if self._waiting and len(self._in_flight) < _COMMITS_IN_FLIGHT and not self._starting:
            # After the coroutines ready now have run: their pushes share this commit.
            self._starting = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._starting = False
        if not self._waiting or len(self._in_flight) >= _COMMITS_IN_FLIGHT:
            return
        batch, self._waiting = self._waiting, []
        ticket, self._waiting_ticket = self._waiting_ticket, 0
        try:
            self._engine.commit_in_background(ticket, os.dup(self._write))
        except Exception as error:
            _settle(batch, error)
            return
        self._in_flight.append((ticket, batch))

    def _done(self) -> None:
        try:
            outcome = os.read(self._read, 1)
        except BlockingIOError:
            return
        if not self._in_flight:
            return
        ticket, batch = self._in_flight.popleft()
        error: BaseException | None = None
        if outcome != b"\0":
            try:  # the log refuses at once now, saying why
                self._engine.commit(ticket)
                error = QueueError("the pushes could not be made durable")
            except Exception as failure:
                error = failure
        else:
            self._durable = max(self._durable, ticket)
        # The coroutines pushing now: those about to resume, those of the other commit, those
        # waiting.
        pushing = len(batch) + sum(len(b) for _, b in self._in_flight) + len(self._waiting)
        self._split = max(1, pushing // 2)
        _settle(batch, error)
        self._schedule()

    async def close(self) -> None:
        """After the store closed (its log synced): lets the commits under way report, then
        lets go of the pipe."""
        for _ in range(1000):
            if not self._in_flight and not self._waiting:
                break
            await asyncio.sleep(0.001)
        self._loop.remove_reader(self._read)
        self._close_fds()
        pending = [f for _, batch in self._in_flight for f in batch] + self._waiting
        _settle(pending, QueueClosedError("the queue manager is closed"))
        self._in_flight.clear()
        self._waiting = []


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _settle(batch: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in batch:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class AsyncQueueManager:
    """:class:`QueueManager` for asyncio applications: the same methods, as coroutines.

    ``get_queue``, ``process`` and the properties are plain calls that never wait for the
    network (on redis, a queue first seen by them is declared in the background). On the
    memory backend, calls that never block run directly on the event loop; on a file store
    this process holds, pushes are stored on the loop too, and the coroutines that push at the
    same time share one sync of the log (with ``fsync="always"``) in a worker thread; other
    blocking calls (``wait_for``, ``join``, ``close``, and every call on the redis backend) run
    in a worker thread. Async handlers run on the manager's own event loop thread, not on the
    caller's loop.
    """

    def __init__(self, backend: str | None = None, **options: Unpack[ManagerOptions]) -> None:
        check_keys(type(self).__name__, options, MANAGER_KEYS)
        self._sync = QueueManager(backend, **options)
        self._engine = self._sync._engine
        self._direct = self._engine.backend == "memory"
        # A file store held here takes pushes in place; their syncs are shared (see
        # `_GroupCommit`), so pushing coroutines need no thread each.
        self._commits: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] | None = (
            weakref.WeakKeyDictionary() if self._engine.backend == "file" else None
        )
        self._last_commit: Callable[[], _GroupCommit | None] = lambda: None

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """Configured from the environment like :meth:`QueueManager.from_env`."""
        return cls(**env_config(overrides))

    async def _call(self, method: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Calls an engine method: on the loop where it never blocks (memory), else in a
        worker thread."""
        if self._direct:
            return method(*args, **kwargs)
        return await asyncio.to_thread(method, *args, **kwargs)

    @property
    def sync(self) -> QueueManager:
        """The synchronous manager over the same engine (for sync handlers and threads)."""
        return self._sync

    @property
    def backend(self) -> str:
        """``"memory"``, ``"redis"`` or ``"file"``."""
        return self._engine.backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    # -- queues -------------------------------------------------------------------------------

    async def create_queue(self, name: str, **options: Unpack[QueueOptions]) -> AsyncQueue:
        """Create queue ``name`` (or update its configuration); see
        :meth:`QueueManager.create_queue`."""
        check_keys("create_queue", options, QUEUE_KEYS)
        await self._call(self._engine.create_queue, name, **options)
        return AsyncQueue(self, name)

    def get_queue(self, name: str) -> AsyncQueue:
        """The handle of queue ``name``, created with the defaults if missing (a plain call).

        It never waits for the network: on redis a new queue is declared in the background.
        """
        self._engine.ensure_queue(name, later=not self._direct)
        return AsyncQueue(self, name)

    async def pause_queue(self, name: str) -> None:
        """Stop starting jobs of ``name``."""
        return await self._call(self._engine.pause_queue, name)

    async def resume_queue(self, name: str) -> None:
        """Start running the jobs of ``name`` again."""
        return await self._call(self._engine.resume_queue, name)

    async def clear_queue(self, name: str) -> int:
        """Remove the waiting and delayed jobs of ``name``; returns how many."""
        return await self._call(self._engine.clear_queue, name)

    async def delete_queue(self, name: str) -> bool:
        """Remove queue ``name`` with its jobs."""
        return await self._call(self._engine.delete_queue, name)

    async def _queue_stats(self, name: str) -> dict[str, int]:
        return await self._call(self._engine.queue_stats, name)

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

    async def push(self, queue: str, data: Any, **options: Unpack[PushOptions]) -> str:
        """Add a job to ``queue``; returns its id (see :meth:`QueueManager.push`)."""
        check_keys("AsyncQueueManager.push", options, PUSH_KEYS)
        if self._commits is not None:
            # Stored on the loop, made durable by a sync shared with the other pushes waiting.
            pushed = self._engine.push_one_uncommitted(queue, data, options)
            if pushed is not None:
                job_id, ticket = pushed
                await self._group_commit().wait(ticket)
                return job_id
        return await self._call(self._engine.push, queue, data, **options)

    async def push_batch(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add many jobs at once, all or nothing (see :meth:`QueueManager.push_batch`)."""
        if self._commits is not None:
            ids = await self._push_in_place(queue, items)
            if ids is not None:
                return ids
        return await self._call(self._engine.push_batch, queue, items)

    async def _push_in_place(
        self, queue: str, items: Sequence[Mapping[str, Any]]
    ) -> list[str] | None:
        """Stores the jobs on the loop and waits for their shared sync; ``None`` where that
        cannot be done (the caller then pushes in a thread, which also raises any error with
        the public method's message: nothing was stored)."""
        assert self._commits is not None
        try:
            pushed = self._engine.push_uncommitted(queue, items)
        except QueueError:
            return None
        if pushed is None:
            return None
        ids, ticket = pushed
        await self._group_commit().wait(ticket)
        return ids

    def _group_commit(self) -> _GroupCommit:
        """The running loop's group commit (one per event loop: its futures belong to it)."""
        loop = asyncio.get_running_loop()
        last = self._last_commit()
        if last is not None and last._loop is loop:  # the usual case: one loop, no dict look-up
            return last
        assert self._commits is not None
        commits = self._commits.get(loop)
        if commits is None:
            commits = self._commits[loop] = _GroupCommit(self._engine, loop)
        self._last_commit = weakref.ref(commits)
        return commits

    async def schedule_at(
        self, queue: str, data: Any, when: datetime, **options: Unpack[JobOptions]
    ) -> str:
        """Add a job that runs at ``when`` (aware, or naive read as **UTC**); returns its id."""
        check_keys("schedule_at", options, JOB_KEYS)
        return await self.push(queue, data, scheduled_at=_utc(when), **options)

    async def schedule(
        self, queue: str, data: Any, cron: str, **options: Unpack[ScheduleOptions]
    ) -> str:
        """Push a job on every tick of ``cron``; see :meth:`QueueManager.schedule`."""
        check_keys("schedule", options, SCHEDULE_KEYS)
        return await self._call(self._engine.schedule, queue, data, cron, **options)

    async def unschedule(self, schedule_id: str) -> bool:
        """Remove a schedule; False if there was none with that id."""
        return await self._call(self._engine.unschedule, schedule_id)

    async def list_schedules(self) -> list[dict[str, Any]]:
        """The schedules: dicts with ``id, name, queue, cron, data, next_run``."""
        return await self._call(self._engine.list_schedules)

    async def get_stats(self) -> Stats:
        """Manager-wide counters and the size of every queue."""
        return await self._call(self._engine.get_stats)

    async def get_job(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown."""
        return await self._call(self._engine.get_job, job_id)

    async def get_jobs(
        self, queue: str, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs of ``queue`` with ``status`` (all when None), at most ``limit``, after
        ``offset`` (see :meth:`QueueManager.get_jobs`)."""
        return await self._call(self._engine.get_jobs, queue, status, limit, offset)

    async def retry_job(self, job_id: str) -> bool:
        """Put a failed job back to waiting with a fresh count of attempts."""
        return await self._call(self._engine.retry_job, job_id)

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job that is not running (see :meth:`QueueManager.delete_job`)."""
        return await self._call(self._engine.delete_job, job_id)

    def set_job_logging(self, enabled: bool = True) -> None:
        """Log one INFO line per completed run (see :meth:`QueueManager.set_job_logging`)."""
        self._engine.set_job_logging(enabled)

    async def get_workers(self) -> list[dict[str, Any]]:
        """The live worker processes sharing this backend (see
        :meth:`QueueManager.get_workers`)."""
        return await self._call(self._engine.get_workers)

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

    async def close(self, timeout: Seconds = DEFAULT_CLOSE_TIMEOUT) -> bool:
        """Stop taking jobs and wait up to ``timeout`` s for running ones; True if all finished."""
        self._engine.check_close_timeout(timeout)  # a bad timeout changes nothing
        finished = await asyncio.to_thread(self._sync.close, timeout)
        if self._commits is not None:
            commits = self._commits.pop(asyncio.get_running_loop(), None)
            if commits is not None:
                await commits.close()
        return finished

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

    async def push(self, data: Any, **options: Unpack[PushOptions]) -> str:
        """Add a job to this queue; returns its id."""
        check_keys("AsyncQueue.push", options, PUSH_KEYS)
        return await self._amanager.push(self.name, data, **options)

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

    async def get_jobs(
        self, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """This queue's jobs with ``status`` (all when None), at most ``limit``, after
        ``offset``."""
        return await self._amanager.get_jobs(self.name, status, limit, offset)
