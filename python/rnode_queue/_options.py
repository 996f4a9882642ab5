"""The keyword options of the API, typed once: the manager's settings, a queue's, a job's.

Each is a :class:`~typing.TypedDict` that the methods take as ``**options``; an option left
out takes the engine's default (listed in the README), so no default is written here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

__all__ = [
    "BackoffFunction",
    "JobOptions",
    "JobStatus",
    "ManagerOptions",
    "Priority",
    "PushOptions",
    "QueueOptions",
    "ScheduleOptions",
    "Seconds",
]

Seconds = float | timedelta
"""A duration: seconds (int or float) or a :class:`datetime.timedelta`."""

BackoffFunction = Callable[[int, str], Seconds]
"""A backoff given as a function: ``(attempt, error) -> seconds`` before the next run."""

Priority = Literal["low", "normal", "high", "critical"]
"""A job's priority by name (``push`` also takes the levels 0, 5, 10, 15)."""

JobStatus = Literal["waiting", "delayed", "active", "completed", "failed"]
"""Where a job is in its life."""


class _QueueDefaults(TypedDict, total=False):
    #: Handlers of the queue running at once (1 to 1024).
    concurrency: int | None
    #: Runs after the first one that fails: a job runs at most ``max_retries + 1`` times.
    max_retries: int | None
    #: How long one run may take; then it counts as failed.
    timeout: Seconds | None
    #: The backoff's base delay (and the delay when a backoff function fails).
    retry_delay: Seconds | None
    #: ``"fixed"``, ``"exponential"``, ``"custom"``, or a function ``(attempt, error) -> s``.
    backoff: str | BackoffFunction | None
    #: How long finished jobs are kept.
    ttl: Seconds | None
    #: How many completed jobs are kept at most.
    keep_completed: int | None
    #: How many failed jobs are kept at most.
    keep_failed: int | None


class ManagerOptions(_QueueDefaults, total=False):
    """``QueueManager(backend, **options)``: the store, and the defaults of every queue."""

    #: The file backend's directory.
    path: str | os.PathLike[str] | None
    #: The redis backend's server, ``redis://host:port/db`` (``rediss://`` for TLS).
    url: str | None
    #: The redis backend's key prefix.
    prefix: str | None
    #: The largest job (data, tags, metadata) and the largest result accepted.
    max_job_bytes: int | None
    #: Redis: how long a job stays with a worker process that stops renewing it.
    lease: Seconds | None
    #: The file backend's flush policy: ``"always"``, ``"everysec"`` or ``"never"``.
    fsync: str | None
    #: Redis: a directory where pushes go while Redis cannot be reached (forwarded later).
    spill_path: str | os.PathLike[str] | None
    #: Count pushes, runs and run times per queue for :mod:`rnode_queue.metrics` (default on).
    metrics: bool | None


class QueueOptions(_QueueDefaults, total=False):
    """``create_queue(name, **options)``: a queue's settings; unset ones are the manager's."""

    #: ``backoff="custom"``: the delay before each retry (the last one repeats).
    custom_delays: Sequence[Seconds] | None
    #: ``backoff="exponential"``: the longest delay.
    backoff_cap: Seconds | None
    #: ``backoff="exponential"``: a random part of each delay, from 0 to 1.
    jitter: float | None


class JobOptions(TypedDict, total=False):
    """The options of one job, for ``push`` and ``schedule``."""

    #: ``"low"``, ``"normal"`` (default), ``"high"`` or ``"critical"``.
    priority: str | int | None
    #: Runs allowed in all (default: the queue's ``max_retries + 1``).
    attempts: int | None
    #: How long one run may take (default: the queue's).
    timeout: Seconds | None
    tags: Sequence[str] | None
    metadata: Mapping[str, Any] | None


class PushOptions(JobOptions, total=False):
    """``push(queue, data, **options)``."""

    #: Run no sooner than this from now.
    delay: Seconds | None
    #: Run no sooner than this (aware, or naive read as UTC).
    scheduled_at: datetime | None


class ScheduleOptions(JobOptions, total=False):
    """``schedule(queue, data, cron, **options)``."""

    #: The schedule's id (default: derived from the queue, cron and data).
    name: str | None


def check_keys(method: str, options: Mapping[str, object], allowed: frozenset[str]) -> None:
    """A keyword the public ``method`` does not take is a :class:`TypeError` naming it (not
    the engine call it is passed to)."""
    for key in options:
        if key not in allowed:
            raise TypeError(f"{method}() got an unexpected keyword argument {key!r}")


MANAGER_KEYS = ManagerOptions.__optional_keys__
QUEUE_KEYS = QueueOptions.__optional_keys__
JOB_KEYS = JobOptions.__optional_keys__
PUSH_KEYS = PushOptions.__optional_keys__
SCHEDULE_KEYS = ScheduleOptions.__optional_keys__
