"""Runs async handlers: one asyncio event loop per manager, in its own daemon thread.

The engine hands batches of ``(job, timeout, completion)`` to the callable returned by
:meth:`AsyncioRunner.submitter`, from an engine thread. That callable only schedules the batch on
the loop (``call_soon_threadsafe``); on the loop, each job becomes a task that awaits the
handler, enforces the timeout and reports exactly one outcome to its ``completion``.

Timeouts are judged per run, on the time the run is charged for. The task awaits the handler's
coroutine through :func:`_drive`, which times each of its steps (one ``send`` or ``throw``: the
code between two suspensions). A step longer than :data:`SLOW_STEP` blocked the loop: it is
logged, charged to its own run and added to the runner's blocked time. The other runs are not
charged for it: a run's deadline moves back by the time the loop was blocked by other runs'
steps since it started. A run charged for more than its timeout is reported as timed out,
whatever it returned.

At its deadline a run is reported as timed out at once (which frees its slot in the engine) and
its task is cancelled; a handler that swallows the cancellation keeps running in the background,
abandoned, and what it does later is ignored. :meth:`AsyncioRunner.stop` cancels the tasks left,
waits for them at most until its timeout and then closes the loop anyway.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import sys
import threading
import time
import types
import weakref
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._core import Completion, Job
    from ._core import _AsyncSubmit as AsyncSubmit

__all__ = ["AsyncioRunner", "is_async_callable"]

_log = logging.getLogger("rnode_queue")

AsyncHandler = Callable[["Job"], Awaitable[Any]]

#: A handler step (from one ``await`` to the next) that runs longer than this, in seconds,
#: blocked the event loop: it is logged and the other runs are not charged for it (asyncio's
#: ``slow_callback_duration``).
SLOW_STEP = 0.1
# A group timer may fire this early (the runs of a batch start a little after its timer).
_TIMER_SLACK = 0.001
# How long stop() waits for the loop thread to close the loop once its deadline has passed.
_STOP_GRACE = 0.1
# How long after its timeout a cancelled task may run on before a warning says it is abandoned.
_LINGER = 1.0

_clock = time.monotonic
_CoroutineType = types.CoroutineType
_INF = float("inf")


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


def _handler_name(handler: object) -> str:
    """``module.qualname`` of a handler (of the function behind a partial, of the class of a
    callable object)."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(qualname, str):  # an instance with an async __call__
        cls = type(handler)
        return f"{cls.__module__}.{cls.__qualname__}.__call__"
    return f"{getattr(handler, '__module__', None) or '?'}.{qualname}"


class _Group:
    """The runs of one batch that share a timeout: one timer for all of them.

    Run ``i`` (``_run(group, i, job)``) has its task in ``tasks[i]`` and its completion in
    ``completions[i]``, None once its outcome is reported. Its ``deadlines[i]`` is its start plus
    the timeout (infinite without one), ``bases[i]`` the runner's blocked time when it started and
    ``owns[i]`` how much of the blocked time since then is its own steps: the run is excused
    ``runner._blocked - bases[i] - owns[i]``. (Arrays and lists rather than an object per run:
    fewer objects for the garbage collector to track.)
    """

    __slots__ = (
        "bases",
        "completions",
        "deadlines",
        "handler",
        "owns",
        "pending",
        "runner",
        "sealed",
        "tasks",
        "timer",
    )

    def __init__(self, runner: AsyncioRunner, handler: AsyncHandler) -> None:
        self.runner = runner
        self.handler = handler
        self.tasks: list[asyncio.Task[None] | None] = []  # also keeps the tasks alive
        self.completions: list[Completion | None] = []
        self.deadlines = array("d")
        self.bases = array("d")
        self.owns = array("d")
        self.pending = 0  # tasks not finished
        self.sealed = False
        self.timer: asyncio.TimerHandle | None = None

    def overran(self, index: int) -> bool:
        """Whether run ``index`` has been charged for more than its timeout."""
        excused = self.runner._blocked - self.bases[index] - self.owns[index]
        return _clock() > self.deadlines[index] + excused

    def report_error(self, index: int, exc: BaseException) -> None:
        """Run ``index`` raised ``exc`` (or was cancelled): report it unless reported already."""
        completion = self.completions[index]
        if completion is not None:
            self.completions[index] = None
            if self.overran(index):
                completion.timed_out()  # whatever it did, it took too long
            else:
                completion.failure(exc)

    def blocked(self, index: int, job: Job, spent: float) -> None:
        """One step of run ``index`` blocked the loop for ``spent`` seconds."""
        self.owns[index] += spent
        self.runner._blocked += spent
        _log.warning(
            "rnode-queue: async handler %s blocked the event loop for %.3f seconds (job %s); "
            "the time is charged to this job, not to the others'. Await instead of blocking "
            "(asyncio.to_thread for blocking calls) or use a sync handler.",
            _handler_name(self.handler),
            spent,
            job.id,
        )

    def check(self) -> None:
        """The timer: times out the runs past their deadline, re-arms for the next one."""
        self.timer = None
        now = _clock()
        blocked = self.runner._blocked
        deadlines, bases, owns = self.deadlines, self.bases, self.owns
        wake = _INF
        expired: list[tuple[asyncio.Task[None], str]] = []
        for index, completion in enumerate(self.completions):
            if completion is None:
                continue
            due = deadlines[index] + (blocked - bases[index] - owns[index])
            if now >= due - _TIMER_SLACK:
                self.completions[index] = None
                what = repr(completion)  # names the job until it is reported
                try:
                    completion.timed_out()  # at once: the job's slot is free again
                except Exception:
                    _log.exception("rnode-queue: could not report a timeout (%s)", what)
                task = self.tasks[index]
                if task is not None:
                    # A handler that swallows the cancellation runs on, abandoned: what it
                    # does later is ignored.
                    task.cancel()
                    expired.append((task, what))
            elif due < wake:
                wake = due
        loop = asyncio.get_running_loop()
        if expired:
            loop.call_later(_LINGER, self._lingering, expired)
        if wake < _INF and self in self.runner._groups:
            self.timer = loop.call_later(wake - now, self.check)

    def _lingering(self, expired: list[tuple[asyncio.Task[None], str]]) -> None:
        for task, what in expired:
            if not task.done():
                _log.warning(
                    "rnode-queue: async handler %s (%s) still runs %.1f s after it was "
                    "cancelled at its timeout: it ignores cancellation. It was reported as "
                    "timed out and its slot given back; it runs on, abandoned.",
                    _handler_name(self.handler),
                    what,
                    _LINGER,
                )

    def abandon(self, pending: set[asyncio.Task[Any]], error: BaseException) -> None:
        """The loop stops under the tasks ``pending``: reports ``error`` for runs among them
        that are not reported yet."""
        for index, task in enumerate(self.tasks):
            completion = self.completions[index]
            if completion is not None and task in pending:
                self.completions[index] = None
                try:
                    completion.failure(error)
                except Exception:
                    _log.exception("rnode-queue: could not report %r", completion)

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
            self.timer = None
        self.runner._groups.discard(self)


async def _run(group: _Group, index: int, job: Job) -> None:
    """The task of run ``index`` of ``group``: awaits the handler and reports the outcome."""
    try:
        try:
            result = await _drive(group, index, job)
        except BaseException as exc:  # incl. CancelledError, KeyboardInterrupt, SystemExit
            group.report_error(index, exc)
            return
        completion = group.completions[index]
        if completion is None:  # timed out, and the handler swallowed the cancellation
            return
        group.completions[index] = None
        if _clock() > group.deadlines[index] + (
            group.runner._blocked - group.bases[index] - group.owns[index]
        ):
            completion.timed_out()  # it returned, but too late
            return
        try:
            completion.success(result)
        except Exception as exc:  # e.g. a result that is not JSON-serialisable
            completion.failure(exc)
    finally:
        group.job_done()


@types.coroutine
def _drive(group: _Group, index: int, job: Job) -> Generator[Any, Any, Any]:
    """Awaits ``group.handler(job)`` as ``await`` would (what its coroutine yields goes to the
    task, what the task sends or throws goes back to it), timing each step."""
    coro: Any = group.handler(job)
    if type(coro) is not _CoroutineType:
        coro = coro.__await__()  # another kind of awaitable (TypeError if it is none)
    send = coro.send
    value: Any = None
    error: BaseException | None = None
    while True:
        began = _clock()
        try:
            signal = send(value) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        finally:
            error = None  # no reference cycle through its traceback
            spent = _clock() - began
            if spent > SLOW_STEP:
                group.blocked(index, job, spent)
        try:
            value = yield signal
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            error = exc


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
        self._stop_deadline: float | None = None
        self._closed = False
        # The loop keeps only weak references to tasks: the groups hold them until they finish.
        self._groups: set[_Group] = set()
        # Seconds the loop was blocked by handler steps longer than SLOW_STEP (only grows).
        self._blocked = 0.0
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
        """Stop the loop and join its thread, in about ``timeout`` seconds at most. Idempotent.

        The tasks still running are cancelled and waited for until the timeout; the loop is then
        closed under those that ignore their cancellation (abandoned, with a warning).
        """
        deadline = None if timeout is None else _clock() + max(timeout, 0.0)
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            loop.call_soon_threadsafe(self._halt, loop, deadline)
        except RuntimeError:  # loop already closed
            return
        if thread is not threading.current_thread():
            thread.join(None if deadline is None else deadline - _clock() + _STOP_GRACE)

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
        abandoned: Iterable[asyncio.Task[Any]] = ()
        try:
            while not self._stopping:
                try:
                    loop.run_forever()
                except BaseException:  # a stray exception must not kill the loop
                    _log.exception("rnode-queue: exception escaped the asyncio runner loop")
            abandoned = self._shutdown(loop)
        except BaseException:
            _log.exception("rnode-queue: error while stopping the asyncio runner loop")
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            self._groups = set()
        for task in abandoned:  # the loop is closed: they never run again
            try:
                task.get_coro().close()
            except BaseException:
                _log.debug("rnode-queue: error closing an abandoned task", exc_info=True)

    def _halt(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        self._stop_deadline = deadline
        self._stopping = True
        loop.stop()

    def _remaining(self) -> float | None:
        deadline = self._stop_deadline
        return None if deadline is None else max(deadline - _clock(), 0.0)

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
        """Cancels the tasks left and waits for them until the stop deadline; returns those
        that are still running then (abandoned)."""
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=self._remaining()))
        pending = asyncio.all_tasks(loop)  # incl. any started meanwhile (a batch in the queue)
        if pending:
            self._abandon(pending)
        closing = loop.create_task(loop.shutdown_asyncgens())
        _, stuck = loop.run_until_complete(asyncio.wait([closing], timeout=self._remaining()))
        if stuck:
            _log.warning("rnode-queue: async generators still closing when the loop stopped")
            pending |= stuck
        for task in pending:
            task._log_destroy_pending = False  # type: ignore[attr-defined]  # logged here
        return pending

    def _abandon(self, pending: set[asyncio.Task[Any]]) -> None:
        handlers = sorted(
            {_handler_name(g.handler) for g in self._groups if any(t in pending for t in g.tasks)}
        )
        _log.warning(
            "rnode-queue: %d async task(s) still running after being cancelled when the runner "
            "stopped (handlers that ignore cancellation: %s); abandoned, the loop is closed",
            len(pending),
            ", ".join(handlers) or "none of the handlers' own tasks",
        )
        error = RuntimeError(
            "the asyncio runner stopped and abandoned the handler, which ignored its cancellation"
        )
        for group in self._groups:
            group.abandon(pending, error)

    def _start_batch(
        self, handler: AsyncHandler, batch: Sequence[tuple[Job, float | None, Completion]]
    ) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[float | None, _Group] = {}
        for job, timeout, completion in batch:
            group = groups.get(timeout)
            if group is None:
                group = groups[timeout] = _Group(self, handler)
                self._groups.add(group)
                if timeout is not None:
                    group.timer = loop.call_later(timeout, group.check)
            index = len(group.completions)
            group.pending += 1
            group.completions.append(completion)  # before the task: it may start eagerly
            group.deadlines.append(_INF if timeout is None else _clock() + timeout)
            group.bases.append(self._blocked)
            group.owns.append(0.0)
            coro = _run(group, index, job)
            try:
                task: asyncio.Task[None] | None = _new_task(loop, coro)
            except BaseException as exc:  # the run never starts
                coro.close()
                task = None
                group.pending -= 1
                group.completions[index] = None
                completion.failure(exc)
            group.tasks.append(task)
        for group in groups.values():
            group.seal()


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
