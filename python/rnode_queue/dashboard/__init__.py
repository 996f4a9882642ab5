"""A web dashboard of a store's queues (needs ``pip install 'rnode-queue[dashboard]'``).

>>> from rnode_queue.dashboard import create_app
>>> app.mount("/queues", create_app(qm))  # doctest: +SKIP

or ``rnode-queue dashboard --url redis://...``. Pages: every queue with its counts and live
throughput and failure-rate charts; one queue's jobs by status, paged, with a search by id or
tag; one job; the schedules; the live worker processes. Actions (POST, CSRF-protected): retry
a job or every failed job of a queue, pause, resume and clear a queue. ``/metrics`` serves the
Prometheus collector of :mod:`rnode_queue.metrics` when ``prometheus_client`` is installed.
See :mod:`rnode_queue.dashboard.security` for the safety rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

try:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnode_queue.dashboard needs starlette: pip install 'rnode-queue[dashboard]'"
    ) from exc

from .api import Dashboard, api_routes
from .pages import metrics_route, page_routes
from .security import Guard, SecurityHeaders

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from .._async import AsyncQueueManager
    from .._sync import QueueManager

__all__ = ["STATIC", "create_app"]

#: The stylesheet, the script and the chart library (uPlot, MIT) the pages load.
STATIC = Path(__file__).resolve().parent / "static"


def create_app(
    manager: QueueManager | AsyncQueueManager,
    *,
    read_only: bool = False,
    token: str | None = None,
    remote_actions: bool = False,
    page_size: int = 50,
    poll_interval: float = 2.0,
) -> ASGIApp:
    """The dashboard of ``manager``'s store, as an ASGI app to serve or mount.

    ``manager`` is a ``QueueManager`` or an ``AsyncQueueManager`` (its calls run in worker
    threads, never on the event loop); it needs no handler. ``read_only`` hides every action
    and refuses the action endpoints. ``token`` makes every page, JSON endpoint and
    ``/metrics`` ask for it (a sign-in page for browsers, ``Authorization: Bearer`` for
    scripts). Without a token, actions are accepted from loopback clients only, unless
    ``remote_actions`` (for an app that authenticates the mount itself). ``page_size`` jobs per
    page (1 to 200); the pages poll every ``poll_interval`` seconds.
    """
    from .._async import AsyncQueueManager

    qm = manager.sync if isinstance(manager, AsyncQueueManager) else manager
    if not 1 <= page_size <= 200:
        raise ValueError(f"page_size must be from 1 to 200, not {page_size}")
    if not poll_interval >= 0.2:
        raise ValueError(f"poll_interval must be at least 0.2 s, not {poll_interval}")
    guard = Guard(token=token, read_only=read_only, remote_actions=remote_actions)
    dashboard = Dashboard(qm, guard, page_size=page_size, poll_interval=poll_interval)
    routes = [
        *page_routes(dashboard),
        *api_routes(dashboard),
        metrics_route(dashboard),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.dashboard = dashboard
    return SecurityHeaders(app, guard)
