"""Queue middleware for web frameworks: a JSON response's ``queueJob`` becomes a pushed job.

When a response is JSON (``application/json`` or ``application/*+json``, UTF-8) and its
top-level object has a ``queueJob`` member, its value is pushed to the configured queue with
the configured job options, and the response goes out with that member replaced, in place, by
``"queueJobId": "<the job id>"`` so that the client can poll the job. A push that fails (a
closed manager, Redis down, data too large...) never breaks the response: the error is logged
to the ``rnode_queue.middleware`` logger and the member becomes ``"queueJobId": null``.
``Content-Length`` is set to the new length (and an ``ETag`` of the old body is dropped).

Every other response passes untouched, byte for byte: not JSON, compressed, without a
``queueJob`` member, not an object, to a ``HEAD`` request, 1xx/204/206/304 responses, and
streamed ones (no ``Content-Length`` and the body in more than one piece; in WSGI the first
piece waits for the second). Only JSON responses are held in memory, up to ``max_body_bytes``;
a longer one passes unread with a WARNING.

- :class:`QueueMiddleware`: ASGI (Starlette, FastAPI, Django's ASGI application);
  ``app.add_middleware(QueueMiddleware, manager=qm, queue="emails", priority="high")``.
  Nothing blocks the event loop: an :class:`AsyncQueueManager` push is awaited, a
  :class:`QueueManager` push runs in a worker thread. ``request.state.queue`` is the
  configured queue's handle (an :class:`AsyncQueue`, or a :class:`Queue` for a QueueManager),
  ``request.state.queue_manager`` the manager.
- :class:`WSGIQueueMiddleware`: WSGI (Flask, Django's WSGI application);
  ``app.wsgi_app = WSGIQueueMiddleware(app.wsgi_app, manager=qm, queue="emails")``.
  ``environ["rnode_queue"]`` is the queue's :class:`Queue`, ``environ["rnode_queue.manager"]``
  a :class:`QueueManager` (an AsyncQueueManager's ``sync``).
- :func:`django_queue_middleware`: the same as a Django middleware class (in
  ``settings.MIDDLEWARE``, sync or async); ``request.queue`` / ``request.queue_manager``.
- :func:`queue_dependency`: a FastAPI dependency giving an :class:`AsyncQueue`.

The job options are checked when the middleware is made, so that a bad one fails at start-up.
No web framework is imported.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from ._async import AsyncQueue, AsyncQueueManager
from ._core import ConfigError, Engine, QueueError
from ._options import JobOptions, Seconds, check_keys
from ._sync import Queue, QueueManager

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from ._options import PushOptions

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "QueueJobOptions",
    "QueueMiddleware",
    "WSGIQueueMiddleware",
    "django_queue_middleware",
    "queue_dependency",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

Manager = QueueManager | AsyncQueueManager

#: The largest JSON response read by default: twice the default ``max_job_bytes``.
DEFAULT_MAX_BODY_BYTES = 2 * 1_048_576

_log = logging.getLogger("rnode_queue.middleware")


class QueueJobOptions(JobOptions, total=False):
    """The job options of the middleware: those of ``push`` but ``scheduled_at``."""

    #: Run no sooner than this from now.
    delay: Seconds | None


_OPTION_KEYS = QueueJobOptions.__optional_keys__


class _QueueJobs:
    """What the middleware classes share: the checked settings, the push and the rewrite."""

    def __init__(
        self,
        what: str,
        manager: Manager,
        queue: str,
        max_body_bytes: int,
        options: QueueJobOptions,
    ) -> None:
        if not isinstance(manager, QueueManager | AsyncQueueManager):
            raise TypeError(
                f"{what}: manager must be a QueueManager or an AsyncQueueManager, "
                f"not {type(manager).__name__}"
            )
        if type(max_body_bytes) is not int or max_body_bytes < 0:
            raise ConfigError(f"{what}: max_body_bytes must be a whole number >= 0")
        check_keys(what, options, _OPTION_KEYS)
        _check_push(queue, options)
        self.manager = manager
        self.queue = queue
        self.max_body_bytes = max_body_bytes
        self.options = cast("PushOptions", options)
        self.sync_manager = manager.sync if isinstance(manager, AsyncQueueManager) else manager
        # Made without declaring the queue (no network); the first push creates it.
        self.sync_queue = Queue(self.sync_manager, queue)
        self.loop_queue: Queue | AsyncQueue = (
            AsyncQueue(manager, queue)
            if isinstance(manager, AsyncQueueManager)
            else self.sync_queue
        )

    def reads(self, status: int, content_type: str | None, content_encoding: str | None) -> bool:
        """Whether a response with these headers may carry a queueJob (is read)."""
        if status in (204, 206, 304) or status < 200 or not content_type:  # no whole body
            return False
        if content_encoding and content_encoding.strip().lower() != "identity":
            return False
        return _is_json(content_type)

    def fits(self, length: int, where: str) -> bool:
        """Whether a body of ``length`` bytes is read; logs those that are not."""
        if length <= self.max_body_bytes:
            return True
        _log.warning(
            "the JSON response to %s is over max_body_bytes (%d): passed on unread, "
            "a queueJob in it is not pushed",
            where,
            self.max_body_bytes,
        )
        return False

    def push(self, data: Any, where: str) -> str | None:
        """Pushes ``data`` (a blocking call); the job id, or None (logged) when it failed."""
        try:
            return self.sync_manager.push(self.queue, data, **self.options)
        except Exception as error:
            self._failed(error, where)
            return None

    async def push_async(self, data: Any, where: str) -> str | None:
        """Pushes ``data`` without blocking the event loop; the id, or None (logged)."""
        manager = self.manager
        try:
            if isinstance(manager, AsyncQueueManager):
                return await manager.push(self.queue, data, **self.options)
            return await asyncio.to_thread(manager.push, self.queue, data, **self.options)
        except Exception as error:
            self._failed(error, where)
            return None

    def _failed(self, error: Exception, where: str) -> None:
        _log.error(
            "could not push the queueJob of the response to %s to queue %r: %s: %s",
            where,
            self.queue,
            type(error).__name__,
            error,
            exc_info=not isinstance(error, QueueError),
        )

    def rewrite(self, body: bytes, where: str) -> bytes | None:
        """The body with its queueJob pushed (a blocking call); None when it has none."""
        found = _object_with_queue_job(body)
        if found is None:
            return None
        return _with_job_id(found, self.push(found["queueJob"], where))

    async def rewrite_async(self, body: bytes, where: str) -> bytes | None:
        """The body with its queueJob pushed (on the event loop); None when it has none."""
        found = _object_with_queue_job(body)
        if found is None:
            return None
        return _with_job_id(found, await self.push_async(found["queueJob"], where))


def _check_push(queue: str, options: QueueJobOptions) -> None:
    """Raises what a push of these options to ``queue`` raises (a throwaway memory engine)."""
    probe = Engine("memory", metrics=False)
    try:
        probe.push(queue, None, **cast("PushOptions", options))
    finally:
        probe.close(0)


def _is_json(content_type: str) -> bool:
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    if mime != "application/json" and not (
        mime.startswith("application/") and mime.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() in ("utf-8", "utf8")
    return True


def _object_with_queue_job(body: bytes) -> dict[str, Any] | None:
    """The body's top-level object when it has a ``queueJob`` member."""
    if b"queueJob" not in body and b"\\u" not in body:  # the key may be written escaped
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "queueJob" not in value:
        return None
    return value


def _with_job_id(found: dict[str, Any], job_id: str | None) -> bytes:
    """The object as JSON with ``queueJob`` replaced in place by ``queueJobId``."""
    rewritten: dict[str, Any] = {}
    for key, value in found.items():
        if key == "queueJob":
            rewritten["queueJobId"] = job_id
        elif key != "queueJobId":
            rewritten[key] = value
    try:
        return json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate (from a "\\ud800" escape) stays escaped
        return json.dumps(rewritten, separators=(",", ":")).encode()


# -- ASGI ---------------------------------------------------------------------------------------


class QueueMiddleware:
    """ASGI middleware: pushes the ``queueJob`` of JSON responses to ``queue`` (see the module).

    ``manager``: a :class:`QueueManager` (pushes in a worker thread) or an
    :class:`AsyncQueueManager`; the other keywords are ``push``'s job options, checked here.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        manager: Manager,
        queue: str,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        **job_options: Unpack[QueueJobOptions],
    ) -> None:
        self.app = app
        self._jobs = _QueueJobs("QueueMiddleware", manager, queue, max_body_bytes, job_options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            state = scope.setdefault("state", {})
            state["queue"] = self._jobs.loop_queue
            state["queue_manager"] = self._jobs.manager
        if kind != "http" or scope.get("method") == "HEAD":
            await self.app(scope, receive, send)
            return
        response = _ASGIResponse(self._jobs, scope, send)
        await self.app(scope, receive, response.send)
        await response.finish()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _replaced_length(
    headers: Iterable[tuple[bytes, bytes]], length: int
) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"etag")]
    return [*kept, (b"content-length", str(length).encode())]


class _ASGIResponse:
    """One response through QueueMiddleware: passed on, or held until its JSON body is read."""

    def __init__(self, jobs: _QueueJobs, scope: Scope, send: Send) -> None:
        self._jobs = jobs
        self._send = send
        self._where = f"{scope.get('method', '')} {scope.get('path', '')}"
        self._start: Message | None = None  # the start message, held
        self._declared: int | None = None  # its Content-Length
        self._chunks: list[bytes] = []
        self._size = 0
        self._pieces = 0
        self._passing = False

    async def send(self, message: Message) -> None:
        if self._passing:
            await self._send(message)
        elif self._start is None:
            if message["type"] == "http.response.start":
                if self._holds(message):
                    self._start = message
                    return
                self._passing = True
            await self._send(message)  # before the start: early hints, pushes...
        elif message["type"] == "http.response.body":
            await self._body(message)
        else:  # trailers, pathsend...: the response is not ours to rewrite
            await self._release(more_body=True)
            await self._send(message)

    def _holds(self, start: Message) -> bool:
        headers = start.get("headers", [])
        if start.get("trailers", False) or not self._jobs.reads(
            start["status"],
            _header(headers, b"content-type"),
            _header(headers, b"content-encoding"),
        ):
            return False
        declared = _header(headers, b"content-length")
        if declared is not None:
            try:
                self._declared = int(declared)
            except ValueError:
                return False
            return self._jobs.fits(self._declared, self._where)
        return True

    async def _body(self, message: Message) -> None:
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self._pieces += 1
        if self._declared is None and more and self._pieces == 1:  # streamed
            await self._release(more_body=True)
            await self._send(message)
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > self._jobs.max_body_bytes and not self._jobs.fits(self._size, self._where):
            await self._release(more_body=more)
            return
        if more:
            return
        start, self._start = self._start, None
        assert start is not None
        self._passing = True
        whole = b"".join(self._chunks)
        self._chunks = []
        rewritten = await self._jobs.rewrite_async(whole, self._where)
        if rewritten is not None:
            whole = rewritten
            start = {**start, "headers": _replaced_length(start.get("headers", []), len(whole))}
        await self._send(start)
        await self._send({"type": "http.response.body", "body": whole, "more_body": False})

    async def _release(self, *, more_body: bool) -> None:
        """Sends what is held as it came, and passes the rest on."""
        start, self._start = self._start, None
        self._passing = True
        if start is None:
            return
        await self._send(start)
        if self._chunks or not more_body:
            body = b"".join(self._chunks)
            self._chunks = []
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def finish(self) -> None:
        """After the app returned: what it left held goes out as the app left it."""
        if self._start is not None:
            await self._release(more_body=True)


# -- WSGI ---------------------------------------------------------------------------------------


class WSGIQueueMiddleware:
    """WSGI middleware: pushes the ``queueJob`` of JSON responses to ``queue`` (see the module).

    An :class:`AsyncQueueManager` is used through its ``sync`` manager.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        manager: Manager,
        queue: str,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        **job_options: Unpack[QueueJobOptions],
    ) -> None:
        self.app = app
        self._jobs = _QueueJobs("WSGIQueueMiddleware", manager, queue, max_body_bytes, job_options)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["rnode_queue"] = self._jobs.sync_queue
        environ["rnode_queue.manager"] = self._jobs.sync_manager
        if environ.get("REQUEST_METHOD") == "HEAD":
            return self.app(environ, start_response)
        response = _WSGIResponse(self._jobs, environ, start_response)
        response.body = self.app(environ, response.start_response)
        if response.started:  # the usual case of a response that is not read: untouched
            return response.body
        return response


class _WSGIResponse:
    """One response through WSGIQueueMiddleware: its start_response, and its body (which
    is returned instead of the app's when the response may be read)."""

    def __init__(
        self, jobs: _QueueJobs, environ: WSGIEnvironment, start_response: StartResponse
    ) -> None:
        self._jobs = jobs
        self._start_response = start_response
        self._where = f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}"
        self._held: tuple[str, list[tuple[str, str]]] | None = None
        self._declared: int | None = None
        self.started = False
        self.body: Iterable[bytes] = ()
        self._server_write: Callable[[bytes], object] | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        if exc_info is None and not self.started and self._holds(status, headers):
            self._held = (status, list(headers))
            return self._write
        self._held = None
        self.started = True
        self._server_write = self._start_response(status, headers, exc_info)
        return self._server_write

    def _holds(self, status: str, headers: list[tuple[str, str]]) -> bool:
        def header(name: str) -> str | None:
            return next((v for k, v in headers if k.lower() == name), None)

        try:
            code = int(status.split(None, 1)[0])
            declared = header("content-length")
            self._declared = None if declared is None else int(declared)
        except (ValueError, IndexError):
            return False
        if not self._jobs.reads(code, header("content-type"), header("content-encoding")):
            return False
        return self._declared is None or self._jobs.fits(self._declared, self._where)

    def _release(self) -> Callable[[bytes], object]:
        """Starts the held response as it came; the server's ``write``."""
        if self._held is not None:
            held, self._held = self._held, None
            self.started = True
            self._server_write = self._start_response(*held)
        assert self._server_write is not None
        return self._server_write

    def _write(self, data: bytes) -> object:
        """The legacy ``write`` of a held response: it goes out as it came."""
        return self._release()(data)

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[bytes]:
        chunks: list[bytes] = []
        size = 0
        for chunk in self.body:  # an app may call start_response during the first step
            if self._held is None:
                yield chunk
                continue
            streamed = self._declared is None and chunks
            size += len(chunk)
            if streamed or (
                size > self._jobs.max_body_bytes and not self._jobs.fits(size, self._where)
            ):
                self._release()
                yield b"".join(chunks)
                yield chunk
                chunks = []
                continue
            chunks.append(chunk)
        if self._held is None:
            return
        status, headers = self._held
        self._held = None
        whole = b"".join(chunks)
        rewritten = self._jobs.rewrite(whole, self._where)
        if rewritten is not None:
            whole = rewritten
            headers = [(k, v) for k, v in headers if k.lower() not in ("content-length", "etag")]
            headers.append(("Content-Length", str(len(whole))))
        self.started = True
        self._start_response(status, headers)
        yield whole


# -- Django -------------------------------------------------------------------------------------


def django_queue_middleware(
    manager: Manager,
    queue: str,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    **job_options: Unpack[QueueJobOptions],
) -> type:
    """A Django middleware class that pushes the ``queueJob`` of JSON responses to ``queue``.

    Assign it in a module and name it in ``settings.MIDDLEWARE``
    (``EmailJobs = django_queue_middleware(qm, "emails", priority="high")``). It runs sync or
    async, as the chain around it; async, an AsyncQueueManager push is awaited and a
    QueueManager push runs in a worker thread. ``request.queue`` is the queue's handle
    (:class:`AsyncQueue` when async with an AsyncQueueManager, else :class:`Queue`),
    ``request.queue_manager`` the manager (the ``sync`` one when the chain is sync).
    """
    jobs = _QueueJobs("django_queue_middleware", manager, queue, max_body_bytes, job_options)

    def read(request: Any, response: Any) -> bytes | None:
        """The body of a response that may carry a queueJob."""
        if request.method == "HEAD" or response.streaming:
            return None
        if not jobs.reads(
            response.status_code, response.get("Content-Type"), response.get("Content-Encoding")
        ):
            return None
        body: bytes = response.content
        return body if jobs.fits(len(body), f"{request.method} {request.path}") else None

    def rewritten(response: Any, body: bytes) -> Any:
        response.content = body
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(body))
        if response.has_header("ETag"):
            del response["ETag"]
        return response

    class QueueJobsMiddleware:
        sync_capable = True
        async_capable = True

        def __init__(self, get_response: Callable[[Any], Any]) -> None:
            self.get_response = get_response
            sync = importlib.import_module("asgiref.sync")
            self.is_async: bool = sync.iscoroutinefunction(get_response)
            if self.is_async:
                sync.markcoroutinefunction(self)

        def __call__(self, request: Any) -> Any:
            if self.is_async:
                return self._call_async(request)
            request.queue = jobs.sync_queue
            request.queue_manager = jobs.sync_manager
            response = self.get_response(request)
            body = read(request, response)
            new = None if body is None else jobs.rewrite(body, f"{request.method} {request.path}")
            return response if new is None else rewritten(response, new)

        async def _call_async(self, request: Any) -> Any:
            request.queue = jobs.loop_queue
            request.queue_manager = jobs.manager
            response = await self.get_response(request)
            body = read(request, response)
            where = f"{request.method} {request.path}"
            new = None if body is None else await jobs.rewrite_async(body, where)
            return response if new is None else rewritten(response, new)

    return QueueJobsMiddleware


# -- FastAPI ------------------------------------------------------------------------------------


def queue_dependency(manager: AsyncQueueManager, queue: str) -> Callable[[], Awaitable[AsyncQueue]]:
    """A FastAPI dependency giving the :class:`AsyncQueue` of ``queue``.

    ``emails: Annotated[AsyncQueue, Depends(queue_dependency(aqm, "emails"))]``; the queue
    name is checked here. The handle never blocks the loop (its methods are coroutines).
    """
    if not isinstance(manager, AsyncQueueManager):
        raise TypeError(
            f"queue_dependency: manager must be an AsyncQueueManager, not {type(manager).__name__}"
        )
    _check_push(queue, {})
    handle = AsyncQueue(manager, queue)

    async def queue_handle() -> AsyncQueue:
        return handle

    return queue_handle
