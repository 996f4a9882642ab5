"""The read and admin queries the ``rnode-queue`` admin commands and the dashboard share.

Each takes a (sync) :class:`~rnode_queue.QueueManager` and blocks: the dashboard runs them in
a worker thread. A queue or job that is not there raises :class:`NotFound`, whose message is
the one line the admin command prints.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ._core import QueueError

if TYPE_CHECKING:
    from . import Job, QueueManager

__all__ = [
    "MAX_OFFSET",
    "RATE_READS",
    "RATE_WINDOW",
    "RETRY_PAGE",
    "STATUSES",
    "NotFailed",
    "NotFound",
    "Running",
    "check_queue",
    "clear_queue",
    "delete_job",
    "finished_since",
    "get_job",
    "job_fields",
    "jobs_page",
    "pause_queue",
    "queue_counts",
    "queue_names",
    "queue_stats",
    "resume_queue",
    "retry_failed",
    "retry_job",
    "schedules",
    "search_tag",
    "workers",
]

#: The window of the rates ``stats`` shows, in seconds.
RATE_WINDOW = 60.0
#: How many of a queue's newest completed (failed) jobs ``stats`` reads, in turn, to count those
#: that finished in the window: it stops at the first read that reaches past the window.
RATE_READS = (100, 1_000, 10_000)
#: Failed jobs read per page by ``retry --failed``.
RETRY_PAGE = 500
#: The deepest job a page of :func:`jobs_page` of every status at once may start at, and how
#: many jobs a tag search reads: a page of one status is read from its offset in the store, but
#: every status at once has no single order to page through, so such a page at offset N reads
#: N + size jobs.
MAX_OFFSET = 10_000

STATUSES = ("waiting", "delayed", "active", "completed", "failed")


class NotFound(LookupError):
    """No such queue or job; the message says which, for one line of output."""


class NotFailed(ValueError):
    """``retry_job`` of a job that is not failed; the message says its status."""


class Running(ValueError):
    """``delete_job`` of a job that runs: it stays (its run must have somewhere to report)."""


# -- queues -----------------------------------------------------------------------------------


def queue_names(qm: QueueManager) -> list[str]:
    """The store's queues, sorted."""
    return sorted(qm._engine.queue_names())


def check_queue(qm: QueueManager, name: str) -> str:
    """``name`` if the store has that queue (else :class:`NotFound` listing those it has)."""
    names = qm._engine.queue_names()
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise NotFound(f"no queue {name!r} in this store (queues: {known})")
    return name


def queue_counts(qm: QueueManager, name: str) -> dict[str, Any]:
    """One queue's jobs by state and its totals (one call into the engine)."""
    counts = qm._engine.queue_stats(name)
    return {
        "queue": name,
        "waiting": counts["waiting"],
        "delayed": counts["delayed"],
        "active": counts["processing"],
        "completed": counts["completed"],
        "failed": counts["failed"],
        "paused": bool(counts["paused"]),
    }


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


def queue_stats(qm: QueueManager, *, rates: bool = True) -> list[dict[str, Any]]:
    """Every queue: its jobs by state, its totals and, with ``rates``, what finished in the
    last minute (``completed_last_minute``, ``failed_last_minute``, ``last_minute_exact``)."""
    since = datetime.now(timezone.utc) - timedelta(seconds=RATE_WINDOW)
    entries = []
    for name in queue_names(qm):
        entry = queue_counts(qm, name)
        if rates:
            completed, completed_exact = finished_since(qm, name, "completed", since)
            failed, failed_exact = finished_since(qm, name, "failed", since)
            entry["completed_last_minute"] = completed
            entry["failed_last_minute"] = failed
            entry["last_minute_exact"] = completed_exact and failed_exact
        entries.append(entry)
    return entries


def pause_queue(qm: QueueManager, name: str) -> str:
    """Workers stop starting the queue's jobs."""
    qm.pause_queue(check_queue(qm, name))
    return name


def resume_queue(qm: QueueManager, name: str) -> str:
    """Workers start the queue's jobs again."""
    qm.resume_queue(check_queue(qm, name))
    return name


def clear_queue(qm: QueueManager, name: str) -> int:
    """Removes the queue's waiting and delayed jobs; how many."""
    return qm.clear_queue(check_queue(qm, name))


# -- jobs -------------------------------------------------------------------------------------


def jobs_page(
    qm: QueueManager, queue: str, status: str | None, offset: int, size: int
) -> tuple[list[Job], bool]:
    """The jobs ``offset`` to ``offset + size`` of a queue (of one status) in the engine's
    order, and whether more follow. With a status the page is read from its offset in the
    store, however deep; for every status at once ``offset`` is at most :data:`MAX_OFFSET`
    (else ``ValueError``), since that page reads every job before it.
    """
    if status is not None:
        found = qm.get_jobs(queue, status, size + 1, offset=max(0, offset))
        return found[:size], len(found) > size
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset {offset} is past the deepest page ({MAX_OFFSET})")
    found = qm.get_jobs(queue, status, offset + size + 1)
    return found[offset : offset + size], len(found) > offset + size


def search_tag(
    qm: QueueManager, queue: str, status: str | None, tag: str, offset: int, size: int
) -> tuple[list[Job], bool, bool]:
    """The jobs ``offset`` to ``offset + size`` among those tagged ``tag`` in the first
    :data:`MAX_OFFSET` of the queue (of one status), whether more follow, and whether that
    read saw every job (False: older jobs were not searched; the engine has no tag index)."""
    found = qm.get_jobs(queue, status, MAX_OFFSET)
    tagged = [job for job in found if tag in job.tags]
    return tagged[offset : offset + size], len(tagged) > offset + size, len(found) < MAX_OFFSET


def get_job(qm: QueueManager, job_id: str) -> Job:
    """The job, or :class:`NotFound`."""
    job = qm.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r} (it never existed, or is no longer retained)")
    return job


def job_fields(job: Job) -> list[tuple[str, Any]]:
    """A job's fields as (name, value), in the order a reader wants them."""
    return [
        ("id", job.id),
        ("queue", job.queue),
        ("status", job.status),
        ("priority", job.priority),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("created", job.created_at),
        ("scheduled", job.scheduled_at),
        ("started", job.started_at),
        ("completed", job.completed_at),
        ("failed", job.failed_at),
        ("timeout", f"{job.timeout:g} s"),
        ("schedule", job.schedule_id),
        ("tags", ", ".join(job.tags) or None),
        ("metadata", job.metadata or None),
        ("data", job.data),
        ("result", job.result),
        ("error", job.error),
    ]


def retry_job(qm: QueueManager, job_id: str) -> None:
    """A failed job back to waiting; :class:`NotFound` or :class:`NotFailed` otherwise."""
    if qm.retry_job(job_id):
        return
    found = get_job(qm, job_id)
    raise NotFailed(f"job {job_id} is {found.status}, not failed: nothing to retry")


def delete_job(qm: QueueManager, job_id: str) -> None:
    """Removes a job; :class:`NotFound` or :class:`Running` otherwise (one call: the engine
    tells a running job by a plain :class:`QueueError`)."""
    try:
        deleted = qm.delete_job(job_id)
    except QueueError as exc:
        if type(exc) is not QueueError:  # the store away, the manager closed: as they are
            raise
        raise Running(str(exc)) from None
    if not deleted:
        raise NotFound(f"no job {job_id!r} (it never existed, or is no longer retained)")


def retry_failed(qm: QueueManager, queue: str) -> int:
    """Retries the failed jobs of a queue a page at a time, each once (a job that fails again
    meanwhile is not retried again); how many."""
    check_queue(qm, queue)
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
    return retried


# -- schedules and workers --------------------------------------------------------------------


def schedules(qm: QueueManager) -> list[dict[str, Any]]:
    """The cron schedules, soonest first."""
    return sorted(qm.list_schedules(), key=lambda s: (s["next_run"] is None, s["next_run"]))


def workers(qm: QueueManager) -> list[dict[str, Any]]:
    """The live worker processes (from their heartbeats), by host and pid."""
    return sorted(qm.get_workers(), key=lambda w: (w["host"], w["pid"]))
