"""Runs async handlers: one asyncio event loop per manager, in its own daemon thread.

The engine hands batches of ``(job, timeout, completion)`` to the callable returned by
:meth:`AsyncioRunner.submitter`, from an engine thread. That callable only schedules the batch on
the loop (``call_soon_threadsafe``); on the loop, each job becomes a task that awaits the
handler, enforces the timeout and reports exactly one outcome to its ``completion``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import AsyncSubmit, Completion, Job

__all__ = ["AsyncioRunner", "is_async_callable"]

_log = logging.getLogger("rnode_queue")

AsyncHandler = Callable[["Job"], Awaitable[Any]]


def is_async_callable(obj: object) -> bool:
    """True for an ``async def`` function or method, a ``functools.partial`` of one, or an
    object whose ``__call__`` is ``async def``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    if isinstance(obj, type) or inspect.isfunction(obj) or inspect.ismethod(obj):
        return False
    call = getattr(obj, "__call__", None)  # noqa: B004 - we want the attribute, not a bool
    return call is not None and inspect.iscoroutinefunction(call)


class _Group:
    """The jobs of one batch that share a timeout: one timer for all of them."""

    __slots__ = ("expired", "owner", "pending", "sealed", "tasks", "timer")

    def __init__(self, owner: set[_Group]) -> None:
        self.owner = owner
        self.tasks: list[asyncio.Task[None]] = []  # also keeps the tasks alive
        self.pending = 0
        self.sealed = False
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None

    def expire(self) -> None:
        self.expired = True
        for task in self.tasks:
            task.cancel()

    def job_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.sealed:
            self.close()

    def seal(self) -> None:
        self.sealed = True
        if self.pending == 0:
            self.close()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.owner.discard(self)


if sys.version_info >= (3, 12):

    def _new_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        # Eager: a handler that never suspends finishes here, without a trip through the loop.
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def _new_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        return loop.create_task(coro)


class AsyncioRunner:
    """An asyncio event loop in a daemon thread, started on first use."""

    def __init__(self, name: str = "rnode-queue-asyncio") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        # The loop keeps only weak references to tasks: the groups hold them until they finish.
        self._groups: set[_Group] = set()
        _runners.add(self)

    @property
    def running(self) -> bool:
        """Whether the loop thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def submitter(self, handler: AsyncHandler) -> AsyncSubmit:
        """The ``async_submit`` callable to give to ``Engine.process`` for ``handler``."""
        self._ensure_loop()
        start = functools.partial(self._start_batch, handler)

        def submit(batch: list[tuple[Job, float, Completion]]) -> None:
            loop = self._loop
            if loop is None:  # after a fork: the child starts its own loop
                loop = self._ensure_loop()
            loop.call_soon_threadsafe(start, batch)

        return submit

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the loop (tasks still running are cancelled) and join its thread. Idempotent."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(self._halt, loop)
        except RuntimeError:  # loop already closed
            return
        if thread is not threading.current_thread():
            thread.join(timeout)

    # -- loop thread ----------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("the asyncio runner was stopped")
            loop = self._loop
            if loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._main, args=(loop,), name=self._name, daemon=True
                )
                self._stopping = False
                self._loop, self._thread = loop, thread
                thread.start()
            return loop

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            while not self._stopping:
                try:
                    loop.run_forever()
                except BaseException:  # a stray exception must not kill the loop
                    _log.exception("rnode-queue: exception escaped the asyncio runner loop")
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:
            _log.exception("rnode-queue: error while stopping the asyncio runner loop")
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _halt(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopping = True
        loop.stop()

    def _start_batch(
        self, handler: AsyncHandler, batch: Sequence[tuple[Job, float | None, Completion]]
    ) -> None:
        loop = asyncio.get_running_loop()
        run = self._run
        groups: dict[float | None, _Group] = {}
        for job, timeout, completion in batch:
            group = groups.get(timeout)
            if group is None:
                group = groups[timeout] = _Group(self._groups)
                self._groups.add(group)
                if timeout is not None:
                    group.timer = loop.call_later(timeout, group.expire)
            group.pending += 1
            group.tasks.append(_new_task(loop, run(handler, job, completion, group)))
        for group in groups.values():
            group.seal()

    @staticmethod
    async def _run(handler: AsyncHandler, job: Job, completion: Completion, group: _Group) -> None:
        try:
            try:
                result = await handler(job)
            except BaseException as exc:  # incl. CancelledError, KeyboardInterrupt, SystemExit
                if group.expired:
                    completion.timed_out()
                else:
                    completion.failure(exc)
                return
            if group.expired:  # the handler swallowed the cancellation
                completion.timed_out()
                return
            try:
                completion.success(result)
            except Exception as exc:  # e.g. a result that is not JSON-serialisable
                completion.failure(exc)
        finally:
            group.job_done()


_runners: weakref.WeakSet[AsyncioRunner] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Threads do not survive fork and the parent's loop shares its wake-up pipe with the
    # parent: forget it, the next batch starts a fresh loop in the child.
    for runner in list(_runners):
        runner._lock = threading.Lock()
        runner._loop = runner._thread = None
        runner._groups = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
