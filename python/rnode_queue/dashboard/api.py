"""The dashboard's JSON endpoints: what the pages show, and the actions (POST only).

Every read and action is one of the shared queries (``rnode_queue._queries``, the admin
command's) run in a worker thread, so that no call into the engine blocks the event loop.
Every list is paged in the backend: a page reads at most ``offset + size + 1`` jobs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import _queries as queries
from .._core import BackendError, QueueError
from .history import History
from .security import Guard

if TYPE_CHECKING:
    from .. import Job, QueueManager

__all__ = ["Dashboard", "api_routes"]

T = TypeVar("T")

#: How long the last-minute counts (the admin ``stats`` query) are reused, in seconds.
RATES_TTL = 5.0
#: Characters of a job's data or error a list shows (the job's page shows them whole).
PREVIEW = 120


@dataclass
class Dashboard:
    """One dashboard app's state."""

    qm: QueueManager
    guard: Guard
    page_size: int = 50
    poll_interval: float = 2.0
    history: History = field(default_factory=History)
    _rates: dict[str, dict[str, Any]] = field(default_factory=dict)
    _rates_at: float = -math.inf

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(self.qm, *args)`` in a worker thread."""
        return await run_in_threadpool(function, self.qm, *args)


#: `max_page` of a status's listing: it pages from the store however deep.
_NO_LAST_PAGE = 2**53 - 1


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class JSON(JSONResponse):
    """JSON with datetimes in ISO 8601 and ``<``/``>``/``&`` escaped (inert even as HTML)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, default=_default, ensure_ascii=False, allow_nan=False)
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return text.encode("utf-8")


def _error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


Handler = Callable[[Dashboard, Request], Awaitable[Response]]


def _endpoint(
    dashboard: Dashboard, handler: Handler, *, action: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` behind the guard, with the queries' errors as JSON statuses."""

    async def endpoint(request: Request) -> Response:
        if action:
            refused = dashboard.guard.refuse_action(request)
            if refused is not None:
                return refused
        elif not dashboard.guard.signed_in(request):
            return _error(401, "sign in with the dashboard token")
        try:
            return await handler(dashboard, request)
        except queries.NotFound as exc:
            return _error(404, str(exc))
        except (queries.NotFailed, queries.Running) as exc:
            return _error(409, str(exc))
        except BackendError as exc:
            return _error(503, f"the store cannot be reached: {exc}")
        except (QueueError, ValueError) as exc:
            return _error(400, f"{type(exc).__name__}: {exc}")

    return endpoint


# -- reads ------------------------------------------------------------------------------------


def _overview(dashboard: Dashboard, qm: QueueManager) -> list[dict[str, Any]]:
    """Every queue's counts, with the last minute's counts (refreshed every RATES_TTL)."""
    now = time.monotonic()
    fresh = now - dashboard._rates_at >= RATES_TTL
    entries = queries.queue_stats(qm, rates=fresh)
    keys = ("completed_last_minute", "failed_last_minute", "last_minute_exact")
    if fresh:
        dashboard._rates = {e["queue"]: {k: e[k] for k in keys} for e in entries}
        dashboard._rates_at = now
    for entry in entries:
        entry.update(dashboard._rates.get(entry["queue"], dict.fromkeys(keys)))
    return entries


async def queues_overview(dashboard: Dashboard, request: Request) -> Response:
    entries = await run_in_threadpool(_overview, dashboard, dashboard.qm)
    dashboard.history.record(time.time(), entries)
    return JSON({"queues": entries, "history": dashboard.history.series()})


def _summary(job: Job) -> dict[str, Any]:
    data = json.dumps(job.data, default=_default, ensure_ascii=False)
    error = job.error or ""
    return {
        "id": job.id,
        "status": job.status,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": job.created_at,
        "finished_at": job.completed_at or job.failed_at,
        "tags": job.tags,
        "data": data if len(data) <= PREVIEW else data[: PREVIEW - 1] + "…",
        "error": error if len(error) <= PREVIEW else error[: PREVIEW - 1] + "…",
    }


def _int(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name, "")
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None


def _queue_page(
    qm: QueueManager, queue: str, status: str | None, search: str, page: int, size: int
) -> dict[str, Any]:
    queries.check_queue(qm, queue)
    counts = queries.queue_counts(qm, queue)
    offset = page * size
    result: dict[str, Any] = {
        "queue": counts,
        "status": status,
        "page": page,
        "size": size,
        "search": search,
        # One status pages from the store however deep; every status at once only so far.
        "max_page": queries.MAX_OFFSET // size if status is None else _NO_LAST_PAGE,
        "complete": True,
        "found_by": None,
    }
    if search:
        job = qm.get_job(search)
        if job is not None and job.queue == queue:
            result.update(jobs=[_summary(job)], has_more=False, found_by="id")
            return result
        tagged, more, complete = queries.search_tag(qm, queue, status, search, offset, size)
        result.update(jobs=[_summary(j) for j in tagged], has_more=more, complete=complete)
        result["found_by"] = "tag"
        return result
    found, more = queries.jobs_page(qm, queue, status, offset, size)
    result.update(jobs=[_summary(j) for j in found], has_more=more)
    return result


async def queue_jobs(dashboard: Dashboard, request: Request) -> Response:
    status = request.query_params.get("status") or None
    if status is not None and status not in queries.STATUSES:
        raise ValueError(f"status must be one of {', '.join(queries.STATUSES)}")
    size = min(_int(request, "size", dashboard.page_size), 200) or dashboard.page_size
    page = _int(request, "page", 0)
    if status is None and page * size > queries.MAX_OFFSET:
        raise ValueError(
            f"page {page} is past the deepest page of every status at once "
            f"({queries.MAX_OFFSET // size}): filter by status or search by id or tag"
        )
    search = request.query_params.get("q", "").strip()[:200]
    result = await dashboard.call(
        _queue_page, request.path_params["queue"], status, search, page, size
    )
    return JSON(result)


def _job(qm: QueueManager, job_id: str) -> dict[str, Any]:
    job = queries.get_job(qm, job_id)
    return {
        "job": job.to_dict(),
        "fields": [[name, value] for name, value in queries.job_fields(job)],
    }


async def job_detail(dashboard: Dashboard, request: Request) -> Response:
    return JSON(await dashboard.call(_job, request.path_params["job"]))


async def schedules(dashboard: Dashboard, request: Request) -> Response:
    return JSON({"schedules": await dashboard.call(queries.schedules)})


async def workers(dashboard: Dashboard, request: Request) -> Response:
    return JSON({"workers": await dashboard.call(queries.workers)})


# -- actions ----------------------------------------------------------------------------------


async def retry_job(dashboard: Dashboard, request: Request) -> Response:
    job_id = request.path_params["job"]
    await dashboard.call(queries.retry_job, job_id)
    return JSON({"id": job_id, "retried": True})


async def delete_job(dashboard: Dashboard, request: Request) -> Response:
    job_id = request.path_params["job"]
    await dashboard.call(queries.delete_job, job_id)
    return JSON({"id": job_id, "deleted": True})


async def retry_failed(dashboard: Dashboard, request: Request) -> Response:
    queue = request.path_params["queue"]
    return JSON({"queue": queue, "retried": await dashboard.call(queries.retry_failed, queue)})


async def pause(dashboard: Dashboard, request: Request) -> Response:
    queue = await dashboard.call(queries.pause_queue, request.path_params["queue"])
    return JSON({"queue": queue, "paused": True})


async def resume(dashboard: Dashboard, request: Request) -> Response:
    queue = await dashboard.call(queries.resume_queue, request.path_params["queue"])
    return JSON({"queue": queue, "paused": False})


async def clear(dashboard: Dashboard, request: Request) -> Response:
    queue = request.path_params["queue"]
    return JSON({"queue": queue, "removed": await dashboard.call(queries.clear_queue, queue)})


def api_routes(dashboard: Dashboard) -> list[Route]:
    """The ``/api`` routes of ``dashboard``."""
    reads: list[tuple[str, Handler]] = [
        ("/api/queues", queues_overview),
        ("/api/queues/{queue}", queue_jobs),
        ("/api/jobs/{job}", job_detail),
        ("/api/schedules", schedules),
        ("/api/workers", workers),
    ]
    actions: list[tuple[str, Handler]] = [
        ("/api/jobs/{job}/retry", retry_job),
        ("/api/jobs/{job}/delete", delete_job),
        ("/api/queues/{queue}/retry-failed", retry_failed),
        ("/api/queues/{queue}/pause", pause),
        ("/api/queues/{queue}/resume", resume),
        ("/api/queues/{queue}/clear", clear),
    ]
    routes = [Route(path, _endpoint(dashboard, handler)) for path, handler in reads]
    routes += [
        Route(path, _endpoint(dashboard, handler, action=True), methods=["POST"])
        for path, handler in actions
    ]
    return routes
