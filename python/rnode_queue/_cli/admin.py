"""The admin commands: ``stats``, ``jobs``, ``job``, ``retry``, ``pause``, ``resume``, ``clear``,
``schedules``, ``workers``.

Each connects to a shared store (redis from ``--url``/``--prefix`` or ``REDIS_URL``/
``REDIS_PREFIX``, or a file store from ``--path``) as a plain client: it registers no handler,
so it runs no job and is not listed as a worker. Output is an aligned table, or JSON with
``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from .. import ConfigError, Job, QueueError, QueueManager
from .errors import EXIT_OK, CommandFailed, UsageError
from .overrides import redact_url
from .tables import age, cell, render_table, shorten, timestamp, to_json

__all__ = ["ADMIN_COMMANDS", "connect", "run_admin"]

#: The window of the rates ``stats`` shows, in seconds.
RATE_WINDOW = 60.0
#: How many of a queue's newest completed (failed) jobs ``stats`` reads, in turn, to count those
#: that finished in the window: it stops at the first read that reaches past the window.
RATE_READS = (100, 1_000, 10_000)
#: Failed jobs read per page by ``retry --failed``.
RETRY_PAGE = 500

STATUSES = ("waiting", "delayed", "active", "completed", "failed")


def connect(args: argparse.Namespace) -> QueueManager:
    """A client manager of the store the command line (or the environment) names."""
    url: str | None = args.url or os.environ.get("REDIS_URL", "").strip() or None
    if args.path is not None:
        if args.url is not None or args.prefix is not None:
            raise UsageError("give --url/--prefix (redis) or --path (file), not both")
        if not os.path.isdir(args.path):
            raise UsageError(f"--path {args.path!r}: no such directory (no file store there)")
        return _open("file", args.path, path=args.path)
    if url is None:
        raise UsageError(
            "no store given: pass --url redis://... (or set REDIS_URL) for redis, "
            "or --path DIR for a file store"
        )
    prefix: str | None = args.prefix or os.environ.get("REDIS_PREFIX", "").strip() or None
    options: dict[str, Any] = {"url": url} if prefix is None else {"url": url, "prefix": prefix}
    return _open("redis", redact_url(url), **options)


def _open(backend: str, where: str, **options: Any) -> QueueManager:
    """``QueueManager(backend, **options)``; ``where`` names the store in an error."""
    try:
        return QueueManager(backend, **options)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except QueueError as exc:
        raise CommandFailed(f"cannot open the {backend} store at {where}: {exc}") from None


def _queue(qm: QueueManager, name: str) -> str:
    """``name`` if the store has that queue (else a failure listing those it has)."""
    names = qm._engine.queue_names()
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise CommandFailed(f"no queue {name!r} in this store (queues: {known})")
    return name


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Prints ``data`` as JSON with ``--json``, else ``text``."""
    print(to_json(data) if args.json else text)


# -- stats ----------------------------------------------------------------------------------


def finished_since(qm: QueueManager, queue: str, status: str, since: datetime) -> tuple[int, bool]:
    """How many of the queue's retained ``status`` jobs (completed or failed) finished at or
    after ``since``, and whether that count is exact (False: at least that many).

    The lists are newest first: a read that also returns an older job saw the whole window.
    """
    count = 0
    for limit in RATE_READS:
        jobs = qm.get_jobs(queue, status, limit)
        finished = [job.completed_at if status == "completed" else job.failed_at for job in jobs]
        count = sum(1 for at in finished if at is not None and at >= since)
        if len(jobs) < limit or count < len(jobs):
            return count, True
    return count, False


def stats(qm: QueueManager, args: argparse.Namespace) -> int:
    """Every queue: its jobs by state, its totals, and what finished in the last minute."""
    since = datetime.now(timezone.utc) - timedelta(seconds=RATE_WINDOW)
    entries = []
    for name in sorted(qm._engine.queue_names()):
        counts = qm._engine.queue_stats(name)
        completed, completed_exact = finished_since(qm, name, "completed", since)
        failed, failed_exact = finished_since(qm, name, "failed", since)
        entries.append(
            {
                "queue": name,
                "waiting": counts["waiting"],
                "delayed": counts["delayed"],
                "active": counts["processing"],
                "completed": counts["completed"],
                "failed": counts["failed"],
                "paused": bool(counts["paused"]),
                "completed_last_minute": completed,
                "failed_last_minute": failed,
                "last_minute_exact": completed_exact and failed_exact,
            }
        )

    def rate(entry: dict[str, Any], key: str) -> str:
        return f"{entry[key]}" if entry["last_minute_exact"] else f">={entry[key]}"

    headers = [
        "QUEUE",
        "WAITING",
        "DELAYED",
        "ACTIVE",
        "COMPLETED",
        "FAILED",
        "PAUSED",
        "DONE/MIN",
        "FAILED/MIN",
    ]
    rows = [
        [
            e["queue"],
            e["waiting"],
            e["delayed"],
            e["active"],
            e["completed"],
            e["failed"],
            e["paused"],
            rate(e, "completed_last_minute"),
            rate(e, "failed_last_minute"),
        ]
        for e in entries
    ]
    right = [False, True, True, True, True, True, False, True, True]
    _emit(args, entries, render_table(headers, rows, right=right))
    return EXIT_OK


# -- jobs -----------------------------------------------------------------------------------


def jobs(qm: QueueManager, args: argparse.Namespace) -> int:
    """A queue's jobs (of one status), newest finished first."""
    queue = _queue(qm, args.queue)
    found = qm.get_jobs(queue, args.status, args.limit)
    headers = ["ID", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED (UTC)", "DATA", "ERROR"]
    rows = [
        [
            job.id,
            job.status,
            job.priority,
            f"{job.attempts}/{job.max_attempts}",
            timestamp(job.created_at),
            shorten(cell(job.data), 24),
            shorten(job.error or "-", 60),
        ]
        for job in found
    ]
    right = [False, False, False, True, False, False, False]
    _emit(args, [job.to_dict() for job in found], render_table(headers, rows, right=right))
    return EXIT_OK


def _get_job(qm: QueueManager, job_id: str) -> Job:
    job = qm.get_job(job_id)
    if job is None:
        raise CommandFailed(f"no job {job_id!r} (it never existed, or is no longer retained)")
    return job


def job(qm: QueueManager, args: argparse.Namespace) -> int:
    """One job: its data, result, error and traceback, attempts and times."""
    found = _get_job(qm, args.id)
    fields: list[tuple[str, Any]] = [
        ("id", found.id),
        ("queue", found.queue),
        ("status", found.status),
        ("priority", found.priority),
        ("attempts", f"{found.attempts} of {found.max_attempts}"),
        ("created", found.created_at),
        ("scheduled", found.scheduled_at),
        ("started", found.started_at),
        ("completed", found.completed_at),
        ("failed", found.failed_at),
        ("timeout", f"{found.timeout:g} s"),
        ("schedule", found.schedule_id),
        ("tags", ", ".join(found.tags) or None),
        ("metadata", found.metadata or None),
        ("data", found.data),
        ("result", found.result),
        ("error", found.error),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {_value(value)}" for name, value in fields]
    if found.traceback:
        lines.append("traceback:")
        lines.extend(f"  {line}" for line in found.traceback.rstrip().splitlines())
    _emit(args, found.to_dict(), "\n".join(lines))
    return EXIT_OK


def _value(value: Any) -> str:
    """A field of ``job``: times in UTC, strings as they are, other values as JSON, whole."""
    if isinstance(value, datetime):
        return f"{timestamp(value)} UTC"
    if value is None or isinstance(value, str):
        return cell(value)
    return json.dumps(value, default=str, ensure_ascii=False)


def retry(qm: QueueManager, args: argparse.Namespace) -> int:
    """A failed job back to waiting (``retry ID``), or every failed job of a queue."""
    if (args.id is None) == (args.failed is None):
        raise UsageError("give a job ID, or --failed QUEUE (not both)")
    if args.failed is not None:
        return _retry_failed(qm, args)
    if qm.retry_job(args.id):
        _emit(args, {"id": args.id, "retried": True}, f"job {args.id} is waiting again")
        return EXIT_OK
    found = _get_job(qm, args.id)
    raise CommandFailed(f"job {args.id} is {found.status}, not failed: nothing to retry")


def _retry_failed(qm: QueueManager, args: argparse.Namespace) -> int:
    """Retries the failed jobs of a queue a page at a time, each once (a job that fails again
    meanwhile is not retried again)."""
    queue = _queue(qm, args.failed)
    done: set[str] = set()
    retried = 0
    seen_again = 0
    while True:
        page = qm.get_jobs(queue, "failed", RETRY_PAGE + seen_again)
        new = [found.id for found in page if found.id not in done]
        if not new:
            break
        seen_again = len(page) - len(new)
        for job_id in new:
            done.add(job_id)
            retried += qm.retry_job(job_id)
    text = f"{retried} failed job(s) of queue {queue!r} are waiting again"
    _emit(args, {"queue": queue, "retried": retried}, text)
    return EXIT_OK


# -- queues ---------------------------------------------------------------------------------


def pause(qm: QueueManager, args: argparse.Namespace) -> int:
    """Workers stop starting the queue's jobs."""
    queue = _queue(qm, args.queue)
    qm.pause_queue(queue)
    _emit(args, {"queue": queue, "paused": True}, f"queue {queue!r} is paused")
    return EXIT_OK


def resume(qm: QueueManager, args: argparse.Namespace) -> int:
    """Workers start the queue's jobs again."""
    queue = _queue(qm, args.queue)
    qm.resume_queue(queue)
    _emit(args, {"queue": queue, "paused": False}, f"queue {queue!r} is running again")
    return EXIT_OK


def clear(qm: QueueManager, args: argparse.Namespace) -> int:
    """Removes the queue's waiting and delayed jobs, once confirmed (or with ``--yes``)."""
    queue = _queue(qm, args.queue)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to clear {queue!r} without --yes (no terminal to ask)")
        counts = qm._engine.queue_stats(queue)
        pending = counts["waiting"] + counts["delayed"]
        answer = input(f"Remove the {pending} waiting and delayed job(s) of {queue!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("not cleared")
    removed = qm.clear_queue(queue)
    _emit(args, {"queue": queue, "removed": removed}, f"removed {removed} job(s) from {queue!r}")
    return EXIT_OK


# -- schedules and workers ------------------------------------------------------------------


def schedules(qm: QueueManager, args: argparse.Namespace) -> int:
    """The cron schedules, soonest first."""
    found = sorted(qm.list_schedules(), key=lambda s: (s["next_run"] is None, s["next_run"]))
    headers = ["ID", "QUEUE", "CRON", "NEXT RUN (UTC)", "DATA"]
    rows = [
        [s["id"], s["queue"], s["cron"], timestamp(s["next_run"]), shorten(cell(s["data"]), 40)]
        for s in found
    ]
    _emit(args, found, render_table(headers, rows))
    return EXIT_OK


def workers(qm: QueueManager, args: argparse.Namespace) -> int:
    """The live worker processes (from their heartbeats)."""
    found = sorted(qm.get_workers(), key=lambda w: (w["host"], w["pid"]))
    now = datetime.now(timezone.utc)
    headers = ["HOST", "PID", "QUEUES (CONCURRENCY)", "RUNNING", "STARTED", "LAST SEEN"]
    rows = [
        [
            w["host"],
            w["pid"],
            ", ".join(
                f"{queue} ({w['concurrency'][queue]})" if queue in w["concurrency"] else queue
                for queue in w["queues"]
            ),
            w["running"],
            age(w["started_at"], now),
            age(w["last_seen"], now),
        ]
        for w in found
    ]
    _emit(args, found, render_table(headers, rows))
    return EXIT_OK


AdminCommand = Callable[[QueueManager, argparse.Namespace], int]

#: name -> (function, help).
ADMIN_COMMANDS: dict[str, tuple[AdminCommand, str]] = {
    "stats": (stats, "every queue: jobs by state, totals, and the last minute's rates"),
    "jobs": (jobs, "the jobs of a queue"),
    "job": (job, "one job: data, result, error, traceback, attempts, times"),
    "retry": (retry, "a failed job (ID), or every failed job of a queue (--failed QUEUE)"),
    "pause": (pause, "pause a queue: workers stop starting its jobs"),
    "resume": (resume, "resume a paused queue"),
    "clear": (clear, "remove the waiting and delayed jobs of a queue"),
    "schedules": (schedules, "the cron schedules"),
    "workers": (workers, "the live worker processes"),
}


def run_admin(args: argparse.Namespace) -> int:
    """Runs admin command ``args.command`` on the store the command line names."""
    command, _help = ADMIN_COMMANDS[args.command]
    qm = connect(args)
    try:
        return command(qm, args)
    except QueueError as exc:
        raise CommandFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        qm.close(timeout=0)
