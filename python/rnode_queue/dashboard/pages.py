"""The dashboard's HTML: one small shell per page, filled in by ``static/dashboard.js``.

The shells carry no job data at all: the script fetches it as JSON and builds the page with
``textContent``, so nothing a job holds is ever parsed as HTML. The few values a shell holds
(the mount path, a queue name or job id from the URL, the CSRF token) are attribute-escaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from html import escape
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .api import Dashboard
from .security import form_fields

__all__ = ["metrics_route", "page_routes"]

TITLES = {
    "queues": "Queues",
    "queue": "Queue",
    "job": "Job",
    "schedules": "Schedules",
    "workers": "Workers",
}


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def shell(request: Request, dashboard: Dashboard, page: str, **params: str) -> HTMLResponse:
    """The HTML of ``page``: navigation, an empty ``main``, and the scripts."""
    root = escape(_root(request), quote=True)
    attributes = {
        "data-root": _root(request),
        "data-page": page,
        "data-csrf": dashboard.guard.csrf,
        "data-read-only": "1" if dashboard.guard.read_only else "0",
        "data-poll": str(int(dashboard.poll_interval * 1000)),
        **{f"data-{name}": value for name, value in params.items()},
    }
    body = " ".join(f'{name}="{escape(value, quote=True)}"' for name, value in attributes.items())
    chart = f'<script src="{root}/static/uPlot.iife.min.js"></script>' if page == "queues" else ""
    badge = '<span class="badge">read-only</span>' if dashboard.guard.read_only else ""
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(TITLES[page])} · rnode-queue</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}/static/uPlot.min.css">
<link rel="stylesheet" href="{root}/static/dashboard.css">
</head>
<body {body}>
<header>
<a class="brand" href="{root}/">rnode-queue</a>
<nav>
<a href="{root}/">Queues</a>
<a href="{root}/schedules">Schedules</a>
<a href="{root}/workers">Workers</a>
<a href="{root}/metrics">Metrics</a>
</nav>
{badge}
<span id="status" class="status" role="status"></span>
</header>
<main id="main"><noscript>This dashboard needs JavaScript.</noscript></main>
{chart}
<script src="{root}/static/dashboard.js"></script>
</body>
</html>
"""
    return HTMLResponse(html)


PageHandler = Callable[[Request], Awaitable[Response]]


def _page(dashboard: Dashboard, page: str, *params: str) -> PageHandler:
    async def endpoint(request: Request) -> Response:
        if not dashboard.guard.signed_in(request):
            return RedirectResponse(f"{_root(request)}/login", status_code=303)
        values = {name: str(request.path_params[name]) for name in params}
        return shell(request, dashboard, page, **values)

    return endpoint


def _login_form(request: Request, dashboard: Dashboard, failed: bool) -> HTMLResponse:
    root = escape(_root(request), quote=True)
    csrf = escape(dashboard.guard.csrf, quote=True)
    message = '<p class="error">Wrong token.</p>' if failed else ""
    html = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · rnode-queue</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}/static/dashboard.css">
</head>
<body>
<header><span class="brand">rnode-queue</span></header>
<main class="login">
<h1>Sign in</h1>
{message}
<form method="post" action="{root}/login">
<input type="hidden" name="csrf" value="{csrf}">
<label>Dashboard token <input type="password" name="token" autocomplete="current-password"
 required autofocus></label>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
    return HTMLResponse(html, status_code=401 if failed else 200)


def _login(dashboard: Dashboard) -> PageHandler:
    async def endpoint(request: Request) -> Response:
        guard = dashboard.guard
        if guard.token is None:
            return RedirectResponse(f"{_root(request)}/", status_code=303)
        if request.method == "GET":
            return _login_form(request, dashboard, failed=False)
        fields = form_fields(await request.body())
        if guard.cross_site(request) or not guard.csrf_ok(fields.get("csrf")):
            return PlainTextResponse("cross-site or stale sign-in refused", status_code=403)
        if not guard.check_token(str(fields.get("token", ""))):
            return _login_form(request, dashboard, failed=True)
        response = RedirectResponse(f"{_root(request)}/", status_code=303)
        guard.sign_in(request, response)
        return response

    return endpoint


def page_routes(dashboard: Dashboard) -> list[Route]:
    """The HTML routes of ``dashboard``."""
    return [
        Route("/", _page(dashboard, "queues")),
        Route("/queues/{queue}", _page(dashboard, "queue", "queue")),
        Route("/jobs/{job}", _page(dashboard, "job", "job")),
        Route("/schedules", _page(dashboard, "schedules")),
        Route("/workers", _page(dashboard, "workers")),
        Route("/login", _login(dashboard), methods=["GET", "POST"]),
    ]


def metrics_route(dashboard: Dashboard) -> Route:
    """``/metrics``: the Prometheus collector of :mod:`rnode_queue.metrics` in a registry of
    its own; 501 with the reason when ``prometheus_client`` is not installed."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ..metrics import QueueCollector
    except ImportError:

        async def missing(request: Request) -> Response:
            return PlainTextResponse(
                "/metrics needs prometheus_client: pip install 'rnode-queue[metrics]'\n",
                status_code=501,
            )

        return Route("/metrics", missing)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(dashboard.qm))

    async def metrics(request: Request) -> Response:
        if not dashboard.guard.signed_in(request):
            return PlainTextResponse("sign in with the dashboard token\n", status_code=401)
        body: Any = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics)
