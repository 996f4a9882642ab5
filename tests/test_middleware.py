"""rnode_queue.middleware through the frameworks' own test clients, on memory and redis.

Starlette and FastAPI (``TestClient``, httpx), Flask (its test client) in this process;
Django (its test client, and its ASGI / WSGI applications wrapped) in a subprocess per
backend, since Django's settings are configured once per process. The examples in
``examples/web/`` run as subprocesses.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import WAIT
from rnode_queue import (
    AsyncQueue,
    AsyncQueueManager,
    ConfigError,
    InvalidJobError,
    InvalidQueueNameError,
    QueueManager,
)
from rnode_queue.middleware import (
    QueueMiddleware,
    WSGIQueueMiddleware,
    django_queue_middleware,
    queue_dependency,
)

starlette = pytest.importorskip("starlette")
pytest.importorskip("httpx")
fastapi = pytest.importorskip("fastapi")
flask = pytest.importorskip("flask")

import httpx  # noqa: E402
from fastapi import Depends, FastAPI  # noqa: E402
from flask import Flask, Response, request  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import (  # noqa: E402
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from starlette.responses import Response as StarletteResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx works
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "emails"
OPTIONS: dict[str, Any] = {
    "priority": "high",
    "attempts": 2,
    "tags": ["web"],
    "metadata": {"from": "middleware"},
}
LOGGER = "rnode_queue.middleware"

AnyManager = QueueManager | AsyncQueueManager


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """These tests run on memory and redis (the file backend is tested elsewhere)."""
    return str(request.param)


@pytest.fixture(params=["QueueManager", "AsyncQueueManager"])
def make_manager(
    request: pytest.FixtureRequest,
    make_qm: Callable[..., QueueManager],
    make_aqm: Callable[..., AsyncQueueManager],
) -> Callable[..., AnyManager]:
    """``make_manager(**overrides)``: either kind of manager on the test's backend."""
    return make_aqm if request.param == "AsyncQueueManager" else make_qm


def sync_of(manager: AnyManager) -> QueueManager:
    return manager.sync if isinstance(manager, AsyncQueueManager) else manager


def pushed(manager: AnyManager, queue: str = QUEUE) -> list[Any]:
    return sync_of(manager).get_jobs(queue)


def assert_job(manager: AnyManager, job_id: Any, data: Any) -> None:
    """The job of ``job_id`` holds ``data`` with the middleware's OPTIONS."""
    assert isinstance(job_id, str), job_id
    job = sync_of(manager).get_job(job_id)
    assert job is not None
    assert (job.queue, job.data, job.priority, job.max_attempts) == (QUEUE, data, "high", 2)
    assert (job.tags, job.metadata) == (["web"], {"from": "middleware"})


def assert_length(response: Any) -> None:
    """The Content-Length of an httpx (Starlette) or a Werkzeug (Flask) response is right."""
    body = response.get_data() if hasattr(response, "get_data") else response.content
    assert int(response.headers["content-length"]) == len(body)


def middleware_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


# -- ASGI: Starlette ----------------------------------------------------------------------------

STREAMED = [b'{"queueJob":', b' {"to": "x"}}']
# "queueJob" with an escaped letter, and a lone surrogate that cannot be written as UTF-8.
ESCAPED = b'{"queue\\u004aob": "e", "odd": "\\ud800", "queueJobId": "overwritten"}'


def starlette_app(manager: AnyManager, **options: Any) -> Starlette:
    async def job(request: Request) -> StarletteResponse:
        data = await request.json() if request.method == "POST" else {"to": "get"}
        return JSONResponse({"before": 1, "queueJob": data, "after": "é"})

    async def state(request: Request) -> StarletteResponse:
        queue = request.state.queue
        job_id = await queue.push(1) if isinstance(queue, AsyncQueue) else None
        return JSONResponse(
            {
                "type": type(queue).__name__,
                "name": queue.name,
                "manager": request.state.queue_manager is manager,
                "pushed": job_id,
            }
        )

    async def stream() -> AsyncIterator[bytes]:
        for chunk in STREAMED:
            yield chunk

    untouched = {
        "/text": PlainTextResponse('{"queueJob": 1}'),
        "/plain-json": StarletteResponse(b'{ "a" : [1, 2] }', media_type="application/json"),
        "/array": StarletteResponse(b'[{"queueJob": 1}]', media_type="application/json"),
        "/no-content": StarletteResponse(status_code=204),
        "/gzip": StarletteResponse(
            gzip.compress(b'{"queueJob": 1}'),
            media_type="application/json",
            headers={"content-encoding": "gzip"},
        ),
        "/latin-1": StarletteResponse(
            b'{"queueJob": 1}', media_type="application/json; charset=iso-8859-1"
        ),
        "/partial": StarletteResponse(
            b'{"queueJob": 1}', status_code=206, media_type="application/json"
        ),
    }

    def fixed(response: StarletteResponse) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> StarletteResponse:
            return response

        return endpoint

    async def problem(request: Request) -> StarletteResponse:
        body = {"queueJob": "problem", "title": "x"}
        return JSONResponse(body, status_code=422, media_type="application/problem+json")

    async def streamed(request: Request) -> StarletteResponse:
        return StreamingResponse(stream(), media_type="application/json")

    routes = [
        Route("/job", job, methods=["GET", "HEAD", "POST"]),
        Route("/state", state),
        Route("/problem", problem),
        Route("/escaped", fixed(StarletteResponse(ESCAPED, media_type="application/json"))),
        Route("/stream", streamed),
        *(Route(path, fixed(response)) for path, response in untouched.items()),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(QueueMiddleware, manager=manager, queue=QUEUE, **{**OPTIONS, **options})
    return app


def test_asgi_pushes_the_queue_job_and_answers_its_id(
    make_manager: Callable[..., AnyManager],
) -> None:
    manager = make_manager()
    with TestClient(starlette_app(manager)) as client:
        response = client.post("/job", json={"to": "ann@example.com", "n": [1, 2]})
        problem = client.get("/problem")
        escaped = client.get("/escaped")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert_length(response)
    body = response.json()
    assert list(body) == ["before", "queueJobId", "after"]  # replaced in place
    assert (body["before"], body["after"]) == (1, "é")
    assert_job(manager, body["queueJobId"], {"to": "ann@example.com", "n": [1, 2]})
    # application/*+json, whatever the status
    assert problem.status_code == 422
    assert_length(problem)
    assert_job(manager, problem.json()["queueJobId"], "problem")
    assert escaped.content.startswith(b'{"queueJobId":"') and escaped.content.endswith(
        b'","odd":"\\ud800"}'
    )
    assert_length(escaped)
    assert_job(manager, escaped.json()["queueJobId"], "e")
    assert len(pushed(manager)) == 3


def test_asgi_passes_other_responses_untouched(make_manager: Callable[..., AnyManager]) -> None:
    manager = make_manager()
    with TestClient(starlette_app(manager)) as client:
        assert client.get("/text").text == '{"queueJob": 1}'
        assert client.get("/plain-json").content == b'{ "a" : [1, 2] }'
        assert client.get("/array").content == b'[{"queueJob": 1}]'
        assert client.get("/no-content").status_code == 204
        compressed = client.get("/gzip", headers={"accept-encoding": "gzip"})
        assert compressed.json() == {"queueJob": 1}
        assert client.get("/latin-1").content == b'{"queueJob": 1}'
        assert client.get("/partial").content == b'{"queueJob": 1}'
        assert client.get("/stream").content == b"".join(STREAMED)
        head = client.head("/job")
        assert head.status_code == 200 and head.content == b""
    assert pushed(manager) == []


def test_asgi_failed_push_answers_null_and_logs(
    make_manager: Callable[..., AnyManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    manager = make_manager(max_job_bytes=1000)
    with TestClient(starlette_app(manager)) as client:
        too_large = client.post("/job", json={"text": "x" * 2000})
        assert too_large.status_code == 200
        assert_length(too_large)
        assert too_large.json() == {"before": 1, "queueJobId": None, "after": "é"}
        assert pushed(manager) == []
        if isinstance(manager, AsyncQueueManager):
            asyncio.run(manager.close())
        else:
            manager.close()
        closed = client.post("/job", json={"to": "a@b.c"})
    assert closed.status_code == 200
    assert closed.json() == {"before": 1, "queueJobId": None, "after": "é"}
    errors = middleware_logs(caplog, logging.ERROR)
    assert len(errors) == 2, errors
    assert "POST /job" in errors[0] and "JobTooLargeError" in errors[0]
    assert "QueueClosedError" in errors[1]
    assert "Traceback" not in closed.text


def test_asgi_json_over_max_body_bytes_passes_unread(
    make_qm: Callable[..., QueueManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    qm = make_qm()
    with TestClient(starlette_app(qm, max_body_bytes=64)) as client:
        small = client.post("/job", json={"n": 1})
        large = client.post("/job", json={"text": "x" * 100})
    assert "queueJobId" in small.json()
    assert large.json() == {"before": 1, "queueJob": {"text": "x" * 100}, "after": "é"}
    assert len(pushed(qm)) == 1
    warnings = middleware_logs(caplog, logging.WARNING)
    assert len(warnings) == 1 and "max_body_bytes" in warnings[0], warnings


def test_asgi_streamed_json_goes_out_as_it_comes(make_qm: Callable[..., QueueManager]) -> None:
    """A streamed body is not held: its first piece reaches the server before the next one is
    made (and its queueJob is not pushed)."""
    qm = make_qm()
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        first_piece_sent = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": STREAMED[0], "more_body": True})
            await asyncio.wait_for(first_piece_sent.wait(), WAIT)
            await send({"type": "http.response.body", "body": STREAMED[1]})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message.get("body") == STREAMED[0]:
                first_piece_sent.set()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        middleware = QueueMiddleware(app, manager=qm, queue=QUEUE)
        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await asyncio.wait_for(middleware(scope, receive, send), WAIT)

    asyncio.run(run())
    assert [m["type"] for m in sent] == ["http.response.start", *["http.response.body"] * 2]
    assert b"".join(m.get("body", b"") for m in sent) == b"".join(STREAMED)
    assert pushed(qm) == []


class BlockingPushManager(QueueManager):
    """A QueueManager whose push waits until the app served another request meanwhile."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.served = threading.Event()
        self.push_started: Callable[[], None] = lambda: None
        self.push_threads: list[int] = []
        self.released: list[bool] = []

    def push(self, queue: str, data: Any, **options: Any) -> str:
        self.push_threads.append(threading.get_ident())
        self.push_started()
        self.released.append(self.served.wait(WAIT))
        return super().push(queue, data, **options)


def test_asgi_push_of_a_queue_manager_never_blocks_the_loop(
    backend_kwargs: dict[str, Any], manager_pool: Any
) -> None:
    qm = manager_pool.track(BlockingPushManager(**backend_kwargs))

    async def run() -> tuple[httpx.Response, httpx.Response, int]:
        push_started = asyncio.Event()
        loop = asyncio.get_running_loop()
        qm.push_started = lambda: loop.call_soon_threadsafe(push_started.set)

        async def ping(request: Request) -> StarletteResponse:
            await asyncio.wait_for(push_started.wait(), WAIT)  # while the push waits
            qm.served.set()
            return PlainTextResponse("pong")

        async def job(request: Request) -> StarletteResponse:
            return JSONResponse({"queueJob": "data"})

        app = Starlette(routes=[Route("/ping", ping), Route("/job", job)])
        app.add_middleware(QueueMiddleware, manager=qm, queue=QUEUE)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            pushing, pinged = await asyncio.gather(client.get("/job"), client.get("/ping"))
        return pushing, pinged, threading.get_ident()

    pushing, pinged, loop_thread = asyncio.run(run())
    assert pinged.text == "pong"
    assert qm.released == [True], "the push blocked the event loop"
    assert qm.push_threads and qm.push_threads[0] != loop_thread
    assert qm.get_job(pushing.json()["queueJobId"]) is not None


def test_asgi_request_state_queue(make_manager: Callable[..., AnyManager]) -> None:
    manager = make_manager()
    with TestClient(starlette_app(manager)) as client:
        state = client.get("/state").json()
    is_async = isinstance(manager, AsyncQueueManager)
    expected_type = "AsyncQueue" if is_async else "Queue"
    assert (state["type"], state["name"], state["manager"]) == (expected_type, QUEUE, True)
    if is_async:  # pushed through request.state.queue
        job = sync_of(manager).get_job(state["pushed"])
        assert job is not None and job.data == 1


# -- ASGI: FastAPI ------------------------------------------------------------------------------


def test_fastapi_middleware_and_queue_dependency(
    make_aqm: Callable[..., AsyncQueueManager],
) -> None:
    aqm = make_aqm()
    app = FastAPI()
    app.add_middleware(QueueMiddleware, manager=aqm, queue=QUEUE, **OPTIONS)
    reports = queue_dependency(aqm, "reports")

    @app.post("/signup")
    async def signup(user: dict[str, str]) -> dict[str, Any]:
        return {"user": user["email"], "queueJob": {"to": user["email"]}}

    @app.post("/reports")
    async def report(queue: AsyncQueue = Depends(reports)) -> dict[str, Any]:  # noqa: B008
        return {"type": type(queue).__name__, "id": await queue.push({"kind": "monthly"})}

    with TestClient(app) as client:
        signed = client.post("/signup", json={"email": "ann@example.com"})
        reported = client.post("/reports").json()
    assert_length(signed)
    assert list(signed.json()) == ["user", "queueJobId"]
    assert_job(aqm, signed.json()["queueJobId"], {"to": "ann@example.com"})
    assert reported["type"] == "AsyncQueue"
    job = aqm.sync.get_job(reported["id"])
    assert job is not None and (job.queue, job.data) == ("reports", {"kind": "monthly"})


def test_queue_dependency_checks_its_arguments(manager_pool: Any) -> None:
    with pytest.raises(TypeError, match="AsyncQueueManager"):
        queue_dependency(manager_pool.open(backend="memory"), QUEUE)  # type: ignore[arg-type]
    with pytest.raises(InvalidQueueNameError):
        queue_dependency(manager_pool.open_async(backend="memory"), "")


# -- construction ---------------------------------------------------------------------------------

MIDDLEWARE_MAKERS: dict[str, Callable[..., Any]] = {
    "QueueMiddleware": lambda manager, queue, **kw: QueueMiddleware(
        lambda *a: None,  # type: ignore[arg-type,return-value]
        manager=manager,
        queue=queue,
        **kw,
    ),
    "WSGIQueueMiddleware": lambda manager, queue, **kw: WSGIQueueMiddleware(
        lambda *a: [], manager=manager, queue=queue, **kw
    ),
    "django_queue_middleware": django_queue_middleware,
}


@pytest.mark.parametrize("make", MIDDLEWARE_MAKERS.values(), ids=MIDDLEWARE_MAKERS.keys())
def test_bad_settings_fail_when_the_middleware_is_made(
    make: Callable[..., Any], manager_pool: Any
) -> None:
    qm = manager_pool.open(backend="memory")
    with pytest.raises(TypeError, match="priorty"):
        make(qm, QUEUE, priorty="high")
    with pytest.raises(TypeError, match="scheduled_at"):
        make(qm, QUEUE, scheduled_at=None)
    with pytest.raises(InvalidJobError, match="urgent"):
        make(qm, QUEUE, priority="urgent")
    with pytest.raises(InvalidJobError, match="tags"):
        make(qm, QUEUE, tags="web")
    with pytest.raises(InvalidQueueNameError):
        make(qm, "")
    with pytest.raises(TypeError, match="QueueManager"):
        make(object(), QUEUE)
    with pytest.raises(ConfigError, match="max_body_bytes"):
        make(qm, QUEUE, max_body_bytes=-1)
    make(qm, QUEUE, **OPTIONS, delay=0.5, timeout=10)  # good ones
    assert pushed(qm) == []  # the checks push nothing


def test_the_module_imports_no_web_framework() -> None:
    code = (
        "import sys, rnode_queue.middleware\n"
        "names = ('starlette', 'fastapi', 'flask', 'werkzeug', 'django', 'asgiref', 'anyio')\n"
        "print([name for name in names if name in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- WSGI: Flask --------------------------------------------------------------------------------


def flask_app(manager: AnyManager, **options: Any) -> Flask:
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the view's order
    app.wsgi_app = WSGIQueueMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, manager=manager, queue=QUEUE, **{**OPTIONS, **options}
    )

    @app.route("/job", methods=["GET", "HEAD", "POST"])
    def job() -> Any:
        data = request.get_json() if request.method == "POST" else {"to": "get"}
        return {"before": 1, "queueJob": data, "after": "é"}

    @app.get("/environ")
    def environ() -> Any:
        queue = request.environ["rnode_queue"]
        return {
            "type": type(queue).__name__,
            "name": queue.name,
            "manager": request.environ["rnode_queue.manager"] is sync_of(manager),
            "pushed": queue.push(1),
        }

    @app.get("/text")
    def text() -> Any:
        return Response('{"queueJob": 1}', mimetype="text/plain")

    @app.get("/plain-json")
    def plain_json() -> Any:
        return Response(b'{ "a" : [1, 2] }', mimetype="application/json")

    @app.get("/stream")
    def stream() -> Any:
        return Response(iter(STREAMED), mimetype="application/json")

    return app


def test_wsgi_pushes_the_queue_job_and_answers_its_id(
    make_manager: Callable[..., AnyManager],
) -> None:
    manager = make_manager()
    client = flask_app(manager).test_client()
    response = client.post("/job", json={"to": "ann@example.com"})
    assert response.status_code == 200
    assert_length(response)
    body = json.loads(response.get_data())
    assert list(body) == ["before", "queueJobId", "after"]
    assert_job(manager, body["queueJobId"], {"to": "ann@example.com"})
    environ = client.get("/environ").get_json()
    assert (environ["type"], environ["name"], environ["manager"]) == ("Queue", QUEUE, True)
    assert sync_of(manager).get_job(environ["pushed"]) is not None


def test_wsgi_passes_other_responses_untouched(make_manager: Callable[..., AnyManager]) -> None:
    manager = make_manager()
    client = flask_app(manager).test_client()
    assert client.get("/text").get_data() == b'{"queueJob": 1}'
    assert client.get("/plain-json").get_data() == b'{ "a" : [1, 2] }'
    assert client.get("/stream").get_data() == b"".join(STREAMED)
    head = client.head("/job")
    assert head.status_code == 200 and head.get_data() == b""
    assert pushed(manager) == []


def test_wsgi_failed_push_answers_null_and_logs(
    make_manager: Callable[..., AnyManager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    manager = make_manager(max_job_bytes=1000)
    client = flask_app(manager, max_body_bytes=10_000).test_client()
    too_large = client.post("/job", json={"text": "x" * 2000})
    assert too_large.status_code == 200
    assert_length(too_large)
    assert too_large.get_json() == {"before": 1, "queueJobId": None, "after": "é"}
    unread = client.post("/job", json={"text": "x" * 20_000})
    assert unread.get_json()["queueJob"] == {"text": "x" * 20_000}
    assert pushed(manager) == []
    assert [m for m in middleware_logs(caplog, logging.ERROR) if "JobTooLargeError" in m]
    assert [m for m in middleware_logs(caplog, logging.WARNING) if "max_body_bytes" in m]


def test_wsgi_app_that_starts_its_response_late(make_qm: Callable[..., QueueManager]) -> None:
    """start_response called during the first step of the body, and a legacy write()."""
    qm = make_qm()
    body = b'{"queueJob": [1]}'

    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        yield body

    def writes(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "application/json")])
        write(body[:5])
        write(body[5:])
        return []

    from werkzeug.test import Client

    answer = Client(WSGIQueueMiddleware(lazy, manager=qm, queue=QUEUE)).get("/")
    assert_length(answer)
    job = qm.get_job(json.loads(answer.get_data())["queueJobId"])
    assert job is not None and job.data == [1]
    written = Client(WSGIQueueMiddleware(writes, manager=qm, queue=QUEUE)).get("/")
    assert written.get_data() == body
    assert len(pushed(qm)) == 1


# -- Django (a process per backend: its settings are configured once per process) ----------------

DJANGO_SCRIPT = r"""
import asyncio, json, logging, sys
import django
from django.conf import settings

kwargs = json.loads(sys.argv[1])
settings.configure(
    DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
)
django.setup()

from django.http import JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from rnode_queue import AsyncQueueManager, QueueManager
from rnode_queue.middleware import QueueMiddleware, WSGIQueueMiddleware, django_queue_middleware

OPTIONS = {"priority": "high", "attempts": 2, "tags": ["web"], "metadata": {"from": "django"}}
errors = []
logging.getLogger("rnode_queue.middleware").addHandler(
    type("H", (logging.Handler,), {"emit": lambda self, r: errors.append(r.getMessage())})()
)


def job(request):
    data = json.loads(request.body)
    return JsonResponse({"before": 1, "queueJob": data, "after": "é"})


async def async_job(request):
    return JsonResponse({"queueJob": json.loads(request.body)})


def state(request):
    return JsonResponse({"type": type(request.queue).__name__, "name": request.queue.name})


async def async_state(request):
    return JsonResponse({"type": type(request.queue).__name__, "name": request.queue.name})


urlpatterns = [
    path("job", job), path("async-job", async_job),
    path("state", state), path("async-state", async_state),
]


def job_of(qm, job_id):
    job = qm.get_job(job_id)
    return None if job is None else [job.queue, job.data, job.priority, job.max_attempts, job.tags]


def answer(response, content):
    length = response.headers.get("Content-Length")
    body = json.loads(content)
    return {"status": response.status_code, "keys": list(body), "length": length,
            "size": len(content), "id": body.get("queueJobId")}


report = {}
for kind in ("QueueManager", "AsyncQueueManager"):
    own = {**kwargs, "prefix": f"{kwargs['prefix']}:{kind}"} if "prefix" in kwargs else kwargs
    manager = (AsyncQueueManager if kind == "AsyncQueueManager" else QueueManager)(
        **own, max_job_bytes=4096
    )
    qm = manager.sync if isinstance(manager, AsyncQueueManager) else manager
    this = report[kind] = {}
    sys.modules[__name__].QueueJobs = django_queue_middleware(manager, "emails", **OPTIONS)
    # Ours outside CommonMiddleware, which sets a Content-Length that must then be fixed.
    chain = [f"{__name__}.QueueJobs", "django.middleware.common.CommonMiddleware"]
    with override_settings(MIDDLEWARE=chain):
        client = Client()
        r = client.post("/job", {"to": "sync"}, content_type="application/json")
        this["sync"] = answer(r, r.content) | {"job": job_of(qm, r.json()["queueJobId"])}
        this["sync_state"] = client.get("/state").json()
        r = client.post("/job", {"big": "x" * 5000}, content_type="application/json")
        this["too_large"] = answer(r, r.content)

        async def run_async():
            client = AsyncClient()
            r = await client.post("/async-job", {"to": "async"}, content_type="application/json")
            out = answer(r, r.content) | {"job": job_of(qm, json.loads(r.content)["queueJobId"])}
            return out, (await client.get("/async-state")).json()

        this["async"], this["async_state"] = asyncio.run(run_async())

    # Django's own ASGI and WSGI applications (no rnode middleware in settings) wrapped.
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from starlette.testclient import TestClient
    from werkzeug.test import Client as WSGIClient

    asgi = QueueMiddleware(get_asgi_application(), manager=manager, queue="emails", **OPTIONS)
    r = TestClient(asgi).post("/job", json={"to": "asgi"})  # Django has no lifespan
    this["asgi"] = answer(r, r.content) | {"job": job_of(qm, r.json()["queueJobId"])}
    wsgi = WSGIQueueMiddleware(get_wsgi_application(), manager=manager, queue="emails", **OPTIONS)
    r = WSGIClient(wsgi).post("/job", json={"to": "wsgi"})
    this["wsgi"] = answer(r, r.get_data()) | {"job": job_of(qm, r.get_json()["queueJobId"])}
    this["jobs"] = len(qm.get_jobs("emails"))
    if isinstance(manager, AsyncQueueManager):
        asyncio.run(manager.close())
    else:
        manager.close()

report["errors"] = errors
print(json.dumps(report))
"""


def test_django(backend_kwargs: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("django")
    script = tmp_path / "django_check.py"
    script.write_text(DJANGO_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(backend_kwargs)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    for kind in ("QueueManager", "AsyncQueueManager"):
        this = report[kind]
        for way, keys in [
            ("sync", ["before", "queueJobId", "after"]),
            ("async", ["queueJobId"]),
            ("asgi", ["before", "queueJobId", "after"]),
            ("wsgi", ["before", "queueJobId", "after"]),
        ]:
            answer = this[way]
            assert (answer["status"], answer["keys"]) == (200, keys), (kind, way, answer)
            assert answer["job"] == ["emails", {"to": way}, "high", 2, ["web"]], (kind, way)
            if answer["length"] is not None:
                assert int(answer["length"]) == answer["size"], (kind, way, answer)
        assert this["sync"]["length"] is not None  # CommonMiddleware's, fixed
        assert this["sync_state"] == {"type": "Queue", "name": "emails"}
        async_type = "AsyncQueue" if kind == "AsyncQueueManager" else "Queue"
        assert this["async_state"] == {"type": async_type, "name": "emails"}
        assert this["too_large"]["id"] is None and this["too_large"]["status"] == 200
        assert this["jobs"] == 4
    too_large = [m for m in report["errors"] if "JobTooLargeError" in m and "POST /job" in m]
    assert len(too_large) == 2, report["errors"]


# -- the examples -------------------------------------------------------------------------------

WEB_EXAMPLES: dict[str, list[str]] = {
    "fastapi_app.py": [
        "signup response keys: ['queueJobId', 'user']",
        "job: completed high welcome mail sent to ann@example.com",
        "report job: waiting",
    ],
    "starlette_app.py": [
        "upload: 201 ['image', 'queueJobId']",
        "job: completed 2 thumbs/cat.jpg",
        "health: queue thumbnails ok",
    ],
    "flask_app.py": [
        "order: ['order', 'queueJobId']",
        "job: completed low {'source': 'web'} invoice-42.pdf",
        "pending: {'queue': 'invoices', 'waiting': 0}",
    ],
    "django_app.py": [
        "subscribe: ['queueJobId', 'subscribed']",
        "job: completed high 5 newsletter sent to ann@example.com",
        "queue: {'queue': 'emails'}",
    ],
}


@pytest.mark.parametrize("name", WEB_EXAMPLES)
def test_web_example_runs(name: str, tmp_path: Path) -> None:
    if name == "django_app.py":
        pytest.importorskip("django")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "web" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.splitlines() == WEB_EXAMPLES[name]
