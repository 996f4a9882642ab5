"""The synchronous API: :class:`QueueManager` and its :class:`Queue` handles."""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from ._asyncio_runner import AsyncioRunner, is_async_callable
from ._core import DEFAULT_CLOSE_TIMEOUT, Engine, Job, QueueClosedError, QueueError, Stats
from ._options import (
    JOB_KEYS,
    MANAGER_KEYS,
    QUEUE_KEYS,
    SCHEDULE_KEYS,
    Seconds,
    check_keys,
)

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self, Unpack

    from ._options import JobOptions, ManagerOptions, PushOptions, QueueOptions, ScheduleOptions

__all__ = ["ATEXIT_CLOSE_TIMEOUT", "Queue", "QueueManager"]

Handler = Callable[[Job], Any]
"""A job handler: ``def handler(job)`` or ``async def handler(job)``."""

_H = TypeVar("_H", bound=Handler)

#: Seconds each manager still open at interpreter exit gets to finish its running jobs.
ATEXIT_CLOSE_TIMEOUT = 2.0

# Manager methods that are the engine's own methods under another owner: on a plain
# QueueManager they are bound straight to the engine (no Python frame on the hot path).
_FAST_MANAGER = (
    ("push", "push"),
    ("push_batch", "push_batch"),
    ("get_job", "get_job"),
    ("get_stats", "get_stats"),
    ("wait_for", "wait_for_job"),
)


# -- configuration from the environment -----------------------------------------------------

_ENV_NUMBERS: tuple[tuple[str, str, Callable[[str], float]], ...] = (
    ("QUEUE_DEFAULT_TTL", "ttl", float),
    ("QUEUE_DEFAULT_CONCURRENCY", "concurrency", int),
    ("QUEUE_DEFAULT_RETRIES", "max_retries", int),
    ("QUEUE_DEFAULT_TIMEOUT", "timeout", float),
)


def env_config(
    overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Manager keyword arguments read from the environment, with ``overrides`` on top."""
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    url = env.get("REDIS_URL", "").strip()
    if url:
        config["backend"] = "redis"
        config["url"] = url
    prefix = env.get("REDIS_PREFIX", "").strip()
    if prefix:
        config["prefix"] = prefix
    for var, key, parse in _ENV_NUMBERS:
        raw = env.get(var, "").strip()
        if not raw:
            continue
        # A timeout of 0 would time every job out at once; a TTL of 0 keeps nothing (allowed).
        minimum, kind = {
            "concurrency": (1, "a whole number >= 1"),
            "max_retries": (0, "a whole number >= 0"),
            "timeout": (math.ulp(0.0), "a number of seconds > 0"),
            "ttl": (0, "a number of seconds >= 0"),
        }[key]
        try:
            value = parse(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < minimum:
            raise QueueError(f"{var} must be {kind}, got {raw!r}")
        config[key] = value
    if overrides.get("backend", config.get("backend")) != "redis":
        config.pop("url", None)  # REDIS_URL does not apply to another backend
    config.update(overrides)
    return config


# -- the hook of `rnode-queue worker` (rnode_queue._cli.overrides) --------------------------


class WorkerHook(Protocol):
    """What ``rnode-queue worker`` imposes on the managers its app creates while it imports."""

    def manager_options(
        self, backend: str | None, options: ManagerOptions
    ) -> tuple[str | None, ManagerOptions]:
        """The backend and options a new manager gets instead of the app's."""
        ...

    def manager_created(
        self, manager: QueueManager, backend: str | None, options: ManagerOptions
    ) -> None:
        """Records a manager the app created (with the options it got)."""
        ...

    def handler_registered(
        self,
        manager: QueueManager,
        queue: str,
        handler: Handler,
        concurrency: int | None,
        later: bool,
    ) -> bool:
        """Records a handler; False when the worker starts it itself (or never)."""
        ...


#: Set by ``rnode-queue worker`` while it imports the app; None otherwise.
_worker_hook: WorkerHook | None = None


# -- the manager registry, closed at interpreter exit ---------------------------------------

_live: weakref.WeakSet[QueueManager] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    # The engine's threads must stop before the interpreter finalises.
    for manager in list(_live):
        with contextlib.suppress(Exception):  # nothing useful to do at exit
            manager.close(timeout=ATEXIT_CLOSE_TIMEOUT)


atexit.register(_close_all_at_exit)

# -- fork: a child gets a fresh engine with the same settings (see Engine._after_fork) -------

_forking: list[Engine] = []


def _before_fork() -> None:
    for manager in list(_live):
        engine = manager._engine
        if not engine.closed:
            engine._before_fork()
            _forking.append(engine)


def _after_fork(in_child: bool) -> None:
    failures: list[Exception] = []
    while _forking:
        try:
            _forking.pop()._after_fork(in_child)
        except Exception as exc:  # the other managers must still be set up
            failures.append(exc)
    for failure in failures:
        with contextlib.suppress(Exception):  # `-W error` must not break the fork
            warnings.warn(
                f"rnode-queue: a manager could not reopen its backend in the forked child and "
                f"is closed there: {failure}",
                RuntimeWarning,
                stacklevel=1,
            )


os.register_at_fork(
    before=_before_fork,
    after_in_parent=lambda: _after_fork(False),
    after_in_child=lambda: _after_fork(True),
)


def _bind_fast(obj: object, base: type, engine: object, pairs: Sequence[tuple[str, str]]) -> None:
    """Bind engine methods as instance attributes unless a subclass overrides them."""
    cls = type(obj)
    slots = obj.__dict__
    for name, target in pairs:
        if cls is base or getattr(cls, name) is getattr(base, name):
            slots[name] = getattr(engine, target)


def _utc(when: datetime) -> datetime:
    if not isinstance(when, datetime):
        raise TypeError(f"when must be a datetime, not {type(when).__name__}")
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


class QueueManager:
    """Owns the queues, their workers and schedules (the engine runs in Rust).

    ``backend`` is ``"memory"`` (the default), ``"redis"`` (``url=``, ``prefix=``, ``lease=``,
    ``spill_path=``: jobs shared by every process using that Redis; a ``url`` alone selects
    redis) or ``"file"`` (``path=``, ``fsync=``: a durable log in a local directory, shared by
    the processes of this host that open it; a ``path`` alone selects file). The
    queue keyword arguments are the defaults of every queue that is not configured with
    :meth:`create_queue`. Durations are seconds (floats allowed) or timedeltas.
    Use as a context manager, or call :meth:`close`; managers still open at interpreter exit
    are closed then, with a short timeout.
    """

    def __init__(self, backend: str | None = None, **options: Unpack[ManagerOptions]) -> None:
        check_keys(type(self).__name__, options, MANAGER_KEYS)
        hook = _worker_hook
        if hook is not None:
            backend, options = hook.manager_options(backend, options)
        engine = Engine(backend, **options)
        self._engine = engine
        self._runner: AsyncioRunner | None = None
        self._runner_lock = threading.Lock()
        self._shut = False
        _bind_fast(self, QueueManager, engine, _FAST_MANAGER)
        _live.add(self)
        if hook is not None:
            hook.manager_created(self, backend, options)

    @classmethod
    def from_env(cls, **overrides: Any) -> Self:
        """A manager configured from the environment; keyword arguments win.

        ``REDIS_URL`` selects the redis backend (memory when unset), ``REDIS_PREFIX`` its key
        prefix; ``QUEUE_DEFAULT_TTL``, ``QUEUE_DEFAULT_CONCURRENCY``, ``QUEUE_DEFAULT_RETRIES``
        and ``QUEUE_DEFAULT_TIMEOUT`` the queue defaults. A value that does not parse raises
        :class:`QueueError` naming the variable.
        """
        return cls(**env_config(overrides))

    # -- properties ---------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """``"memory"``, ``"redis"`` or ``"file"``."""
        return self._engine.backend

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    # -- queues -------------------------------------------------------------------------------

    def create_queue(self, name: str, **options: Unpack[QueueOptions]) -> Queue:
        """Create queue ``name`` (or update its configuration) and return its handle.

        ``backoff`` is ``"fixed"``, ``"exponential"`` (``retry_delay * 2**n``, capped at
        ``backoff_cap``), ``"custom"`` (``custom_delays``) or a function ``(attempt, error) ->
        seconds`` (``retry_delay`` when it fails). Unset options take the manager's defaults.
        On a shared backend the settings are stored with the queue: processes that do not
        declare it use them.
        """
        check_keys("create_queue", options, QUEUE_KEYS)
        self._engine.create_queue(name, **options)
        return Queue(self, name)

    def get_queue(self, name: str) -> Queue:
        """The handle of queue ``name``, created with the defaults if missing."""
        self._engine.ensure_queue(name)
        return Queue(self, name)

    def pause_queue(self, name: str) -> None:
        """Stop starting jobs of ``name`` (running ones finish; waiting ones stay waiting)."""
        self._engine.pause_queue(name)

    def resume_queue(self, name: str) -> None:
        """Start running the jobs of ``name`` again."""
        self._engine.resume_queue(name)

    def clear_queue(self, name: str) -> int:
        """Remove the waiting and delayed jobs of ``name``; returns how many were removed."""
        return self._engine.clear_queue(name)

    def delete_queue(self, name: str) -> bool:
        """Remove queue ``name`` with its jobs; False if there was no such queue."""
        return self._engine.delete_queue(name)

    # -- handlers -----------------------------------------------------------------------------

    @overload
    def process(self, queue: str, handler: _H, *, concurrency: int | None = None) -> _H: ...
    @overload
    def process(
        self, queue: str, handler: None = None, *, concurrency: int | None = None
    ) -> Callable[[_H], _H]: ...
    def process(
        self, queue: str, handler: _H | None = None, *, concurrency: int | None = None
    ) -> _H | Callable[[_H], _H]:
        """Run ``handler`` for the jobs of ``queue``; also a decorator (``@qm.process("q")``).

        ``concurrency`` defaults to the queue's. Async handlers run on the manager's asyncio
        loop thread. Returns the handler unchanged.
        """
        return self._process(queue, handler, concurrency, later=False)

    def _process(
        self, queue: str, handler: _H | None, concurrency: int | None, *, later: bool
    ) -> _H | Callable[[_H], _H]:
        """``process``; with ``later``, nothing waits for the store (an event loop's caller)."""
        if handler is None:
            return functools.partial(self._process_decorator, queue, concurrency, later)
        self._start_processing(queue, handler, concurrency, later)
        return handler

    def _process_decorator(
        self, queue: str, concurrency: int | None, later: bool, handler: _H
    ) -> _H:
        self._start_processing(queue, handler, concurrency, later)
        return handler

    def _start_processing(
        self, queue: str, handler: Handler, concurrency: int | None, later: bool
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        hook = _worker_hook
        if hook is not None and not hook.handler_registered(
            self, queue, handler, concurrency, later
        ):
            return
        submit = self._async_runner().submitter(handler) if is_async_callable(handler) else None
        self._engine.process(
            queue, handler, concurrency=concurrency, async_submit=submit, later=later
        )

    def _async_runner(self) -> AsyncioRunner:
        with self._runner_lock:
            if self._shut or self._engine.closed:
                raise QueueClosedError("the queue manager is closed")
            if self._runner is None:
                self._runner = AsyncioRunner()
            return self._runner

    # -- jobs (push, push_batch, get_job, get_stats and wait_for are bound to the engine) -----

    def push(self, queue: str, data: Any, **options: Unpack[PushOptions]) -> str:
        """Add a job to ``queue``; returns its id.

        ``priority``: ``"low"``, ``"normal"`` (default), ``"high"`` or ``"critical"``.
        ``delay`` (s) or ``scheduled_at`` make it a delayed job. ``attempts`` is the total number
        of runs allowed (default: the queue's ``max_retries + 1``); ``timeout`` overrides the
        queue's. ``data`` must be JSON-serialisable.
        """
        return self._engine.push(queue, data, **options)

    def push_batch(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add many jobs at once: items are ``{"data": ..., "options": {...push options}}``.

        All or nothing: one invalid item raises and nothing is pushed.
        """
        return self._engine.push_batch(queue, items)

    def schedule_at(
        self, queue: str, data: Any, when: datetime, **options: Unpack[JobOptions]
    ) -> str:
        """Add a job that runs at ``when``; returns its id.

        ``when`` is an aware datetime, or a naive one read as **UTC** (not local time); a time
        in the past runs at once.
        """
        check_keys("schedule_at", options, JOB_KEYS)
        return self._engine.push(queue, data, scheduled_at=_utc(when), **options)

    def schedule(self, queue: str, data: Any, cron: str, **options: Unpack[ScheduleOptions]) -> str:
        """Push a job to ``queue`` on every tick of ``cron`` (UTC); returns the schedule id.

        ``cron`` has 5 fields, 6 with leading seconds, or is a macro (``@hourly``, ``@daily``,
        ``@weekly``, ``@monthly``, ``@yearly``). Idempotent: the same queue, cron and data (or
        the same ``name``, which becomes the id) give the same schedule.
        """
        check_keys("schedule", options, SCHEDULE_KEYS)
        return self._engine.schedule(queue, data, cron, **options)

    def unschedule(self, schedule_id: str) -> bool:
        """Remove a schedule; False if there was none with that id."""
        return self._engine.unschedule(schedule_id)

    def list_schedules(self) -> list[dict[str, Any]]:
        """The schedules: dicts with ``id, name, queue, cron, data, next_run``."""
        return self._engine.list_schedules()

    def get_stats(self) -> Stats:
        """Manager-wide counters and the size of every queue."""
        return self._engine.get_stats()

    def get_job(self, job_id: str) -> Job | None:
        """A snapshot of the job, or None if unknown (or no longer retained)."""
        return self._engine.get_job(job_id)

    def get_jobs(
        self, queue: str, status: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """Jobs of ``queue`` with ``status`` (waiting, delayed, active, completed, failed):
        at most ``limit``, after the first ``offset`` of that status (a page, read without
        loading the jobs before it; an ``offset`` needs a ``status``)."""
        return self._engine.get_jobs(queue, status, limit, offset)

    def retry_job(self, job_id: str) -> bool:
        """Put a failed job back to waiting with a fresh count of attempts."""
        return self._engine.retry_job(job_id)

    def delete_job(self, job_id: str) -> bool:
        """Remove a job, whatever its state, unless it is running (a :class:`QueueError` says
        so: its run must have somewhere to report); False if no job has this id."""
        return self._engine.delete_job(job_id)

    def get_workers(self) -> list[dict[str, Any]]:
        """The live worker processes sharing this backend (this one included, if it runs
        handlers): dicts with ``id, host, pid, queues, concurrency, running, started_at,
        last_seen`` (times as UTC datetimes). Each process that runs handlers keeps a heartbeat
        in the backend every few seconds; one silent for 15 s is no longer listed.
        """
        return self._engine.get_workers()

    def set_job_logging(self, enabled: bool = True) -> None:
        """Log one INFO line per completed run to the ``rnode_queue`` logger (off by default;
        failed runs are always logged)."""
        self._engine.set_job_logging(enabled)

    def wait_for(self, job_id: str, timeout: Seconds | None = None) -> Job | None:
        """Block until the job completed or finally failed and return it; None on timeout.

        An id no job has raises :class:`JobNotFoundError`.
        """
        return self._engine.wait_for_job(job_id, timeout)

    def join(self, queue: str | None = None, timeout: Seconds | None = None) -> bool:
        """Block until ``queue`` (or every queue) has no waiting, delayed or active job.

        Returns False if ``timeout`` expired first.
        """
        return self._engine.join(queue, timeout)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self, timeout: Seconds = DEFAULT_CLOSE_TIMEOUT) -> bool:
        """Stop taking jobs and wait up to ``timeout`` s for running ones; True if all finished.

        On a shared backend, runs still going at the timeout are handed back: they run again
        at once elsewhere. Afterwards every other method raises :class:`QueueClosedError`.
        Idempotent. A bad ``timeout`` raises :class:`ConfigError` and changes nothing.
        """
        return self._close(timeout)[0]

    def _close(self, timeout: Seconds) -> tuple[bool, list[tuple[str, str]]]:
        """``close``; also returns the runs handed back, as ``(queue, job id)``."""
        # Checked before anything is stopped: a bad timeout leaves the manager as it was.
        seconds = self._engine.check_close_timeout(timeout)
        deadline = time.monotonic() + min(seconds, 1e9)
        try:
            report = self._engine.close_report(timeout)
        finally:
            with self._runner_lock:
                self._shut = True
                runner = self._runner
            if runner is not None:
                # What is left of the timeout, so that close(timeout=t) takes about t.
                runner.stop(timeout=max(0.0, min(deadline - time.monotonic(), 5.0)))
            _live.discard(self)
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<{type(self).__name__} backend={self.backend!r} closed>"
        try:
            count = len(self._engine.queue_names())
        except QueueError:
            count = 0
        return f"<{type(self).__name__} backend={self.backend!r} queues={count}>"


class _QueueHandle:
    """What sync and async queue handles share: the name and the handler registration."""

    #: Registering a handler never waits for the store (set on handles used on an event loop).
    _later = False

    def __init__(self, manager: QueueManager, name: str) -> None:
        self._manager = manager
        self._engine = manager._engine
        self._name = name

    @property
    def name(self) -> str:
        """The queue's name."""
        return self._name

    @overload
    def process(self, handler: _H, *, concurrency: int | None = None) -> _H: ...
    @overload
    def process(
        self, handler: None = None, *, concurrency: int | None = None
    ) -> Callable[[_H], _H]: ...
    def process(
        self, handler: _H | None = None, *, concurrency: int | None = None
    ) -> _H | Callable[[_H], _H]:
        """Run ``handler`` (``def`` or ``async def``) for this queue's jobs.

        A decorator: ``@q.process`` or ``@q.process(concurrency=10)``; returns the handler
        unchanged. ``concurrency`` defaults to the queue's. One handler per queue.
        """
        return self._manager._process(self.name, handler, concurrency, later=self._later)

    def process_concurrent(self, handler: _H, concurrency: int) -> _H:
        """Run ``handler`` with ``concurrency`` slots, whatever the queue's ``concurrency``."""
        self._manager._process(self.name, handler, concurrency, later=self._later)
        return handler

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _QueueHandle)
        return self._engine is other._engine and self.name == other.name

    def __hash__(self) -> int:
        return hash((id(self._engine), self.name))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} backend={self._engine.backend!r}>"


class Queue(_QueueHandle):
    """A handle on one queue of a :class:`QueueManager` (see :meth:`QueueManager.get_queue`)."""

    def __init__(self, manager: QueueManager, name: str) -> None:
        super().__init__(manager, name)
        if type(self) is Queue:  # hot path: no Python frame between the caller and the engine
            self.__dict__["push"] = functools.partial(self._engine.queue_push, name)

    def push(self, data: Any, **options: Unpack[PushOptions]) -> str:
        """Add a job to this queue (options as :meth:`QueueManager.push`); returns its id."""
        return self._engine.queue_push(self.name, data, **options)

    def push_batch(self, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """Add many jobs to this queue (see :meth:`QueueManager.push_batch`)."""
        return self._engine.push_batch(self.name, items)

    def pause(self) -> None:
        """Stop starting this queue's jobs until :meth:`resume`."""
        self._engine.pause_queue(self.name)

    def resume(self) -> None:
        """Start running this queue's jobs again."""
        self._engine.resume_queue(self.name)

    def clear(self) -> int:
        """Remove the waiting and delayed jobs; returns how many were removed."""
        return self._engine.clear_queue(self.name)

    def delete(self) -> bool:
        """Remove this queue and its jobs."""
        return self._engine.delete_queue(self.name)

    def get_stats(self) -> dict[str, int]:
        """``{"size", "processing", "completed", "failed", ...}`` of this queue."""
        return self._engine.queue_stats(self.name)

    def get_jobs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """This queue's jobs with ``status`` (all when None), at most ``limit``, after
        ``offset`` (see :meth:`QueueManager.get_jobs`)."""
        return self._engine.get_jobs(self.name, status, limit, offset)
