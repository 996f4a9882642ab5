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
from datetime import datetime, timezone
from typing import Any

from .. import ConfigError, QueueError, QueueManager
from .. import _queries as queries
from .._queries import STATUSES
from .errors import EXIT_OK, CommandFailed, UsageError
from .overrides import redact_url
from .tables import age, cell, render_table, shorten, timestamp, to_json

__all__ = ["ADMIN_COMMANDS", "STATUSES", "connect", "run_admin"]


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
    return queries.check_queue(qm, name)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Prints ``data`` as JSON with ``--json``, else ``text``."""
    print(to_json(data) if args.json else text)


# -- stats ----------------------------------------------------------------------------------


def stats(qm: QueueManager, args: argparse.Namespace) -> int:
    """Every queue: its jobs by state, its totals, and what finished in the last minute."""
    entries = queries.queue_stats(qm)

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


def job(qm: QueueManager, args: argparse.Namespace) -> int:
    """One job: its data, result, error and traceback, attempts and times."""
    found = queries.get_job(qm, args.id)
    fields = queries.job_fields(found)
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
    queries.retry_job(qm, args.id)
    _emit(args, {"id": args.id, "retried": True}, f"job {args.id} is waiting again")
    return EXIT_OK


def _retry_failed(qm: QueueManager, args: argparse.Namespace) -> int:
    """Retries the failed jobs of a queue a page at a time, each once (a job that fails again
    meanwhile is not retried again)."""
    queue = args.failed
    retried = queries.retry_failed(qm, queue)
    text = f"{retried} failed job(s) of queue {queue!r} are waiting again"
    _emit(args, {"queue": queue, "retried": retried}, text)
    return EXIT_OK


# -- queues ---------------------------------------------------------------------------------


def pause(qm: QueueManager, args: argparse.Namespace) -> int:
    """Workers stop starting the queue's jobs."""
    queue = queries.pause_queue(qm, args.queue)
    _emit(args, {"queue": queue, "paused": True}, f"queue {queue!r} is paused")
    return EXIT_OK


def resume(qm: QueueManager, args: argparse.Namespace) -> int:
    """Workers start the queue's jobs again."""
    queue = queries.resume_queue(qm, args.queue)
    _emit(args, {"queue": queue, "paused": False}, f"queue {queue!r} is running again")
    return EXIT_OK


def clear(qm: QueueManager, args: argparse.Namespace) -> int:
    """Removes the queue's waiting and delayed jobs, once confirmed (or with ``--yes``)."""
    queue = _queue(qm, args.queue)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to clear {queue!r} without --yes (no terminal to ask)")
        counts = queries.queue_counts(qm, queue)
        pending = counts["waiting"] + counts["delayed"]
        answer = input(f"Remove the {pending} waiting and delayed job(s) of {queue!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("not cleared")
    removed = queries.clear_queue(qm, queue)
    _emit(args, {"queue": queue, "removed": removed}, f"removed {removed} job(s) from {queue!r}")
    return EXIT_OK


# -- schedules and workers ------------------------------------------------------------------


def schedules(qm: QueueManager, args: argparse.Namespace) -> int:
    """The cron schedules, soonest first."""
    found = queries.schedules(qm)
    headers = ["ID", "QUEUE", "CRON", "NEXT RUN (UTC)", "DATA"]
    rows = [
        [s["id"], s["queue"], s["cron"], timestamp(s["next_run"]), shorten(cell(s["data"]), 40)]
        for s in found
    ]
    _emit(args, found, render_table(headers, rows))
    return EXIT_OK


def workers(qm: QueueManager, args: argparse.Namespace) -> int:
    """The live worker processes (from their heartbeats)."""
    found = queries.workers(qm)
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
    except (queries.NotFound, queries.NotFailed) as exc:
        raise CommandFailed(str(exc)) from None
    except QueueError as exc:
        raise CommandFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        qm.close(timeout=0)
