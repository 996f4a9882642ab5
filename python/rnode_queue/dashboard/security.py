"""The dashboard's safety: security headers, the access token, CSRF protection of actions.

- Every response carries a Content-Security-Policy with no inline script or style (scripts and
  styles come from ``/static`` only), ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY`` (and ``frame-ancestors 'none'``) and ``Referrer-Policy:
  no-referrer``; pages and JSON are ``Cache-Control: no-store``.
- With a token, every page, JSON endpoint and ``/metrics`` needs it: the sign-in page sets an
  HttpOnly, SameSite=Strict cookie (an HMAC of the token under a per-process secret, never the
  token itself), and scripts send ``Authorization: Bearer TOKEN``.
- Actions are POSTs only. From a browser (the cookie, or no token at all) they need the CSRF
  token of the page (an HMAC under the per-process secret, sent in the ``X-CSRF-Token`` header)
  and are refused when the browser says the request comes from another site
  (``Sec-Fetch-Site``). Without a token, actions are accepted only from a loopback client unless
  the app was made with ``remote_actions=True`` (the embedding app authenticates the mount).
- Without a token (and without ``remote_actions``), every request to a dashboard with actions
  must also name this machine in its ``Host`` header (``localhost``, ``127.0.0.1``, ``[::1]``):
  a web page whose name was rebound to 127.0.0.1 (DNS rebinding) is same-origin for the
  browser, and would otherwise act through the user's browser. A read-only dashboard without a
  token is open to whoever reaches it, by name or address: a token keeps job data private.
- The secrets behind the cookie and the CSRF token derive from the token when there is one, so
  that every worker process of an app (gunicorn ``-w N``) accepts the others'; without a token
  they are drawn per process.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CSRF_HEADER", "Guard", "SecurityHeaders", "is_loopback"]

CSRF_HEADER = "x-csrf-token"
COOKIE = "rnq_dashboard"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SecurityHeaders:
    """ASGI middleware: the security headers on every response; no-store but on ``/static``;
    a request naming another host refused where the guard says so (DNS rebinding)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app: ASGIApp = self.app
        if self.guard.host_refused(scope):
            app = _refuse(
                421,
                "this dashboard answers only to localhost (it has no token): open it as "
                "http://127.0.0.1:PORT/, or start it with --token",
            )
        static = "/static/" in str(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in _HEADERS if h[0] not in present)
                if not static and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """The token, the CSRF token and the rules of one dashboard app."""

    def __init__(self, *, token: str | None, read_only: bool, remote_actions: bool) -> None:
        if token is not None and not token.strip():
            raise ValueError("the dashboard token must not be empty")
        self.token = token
        self.read_only = read_only
        self.remote_actions = remote_actions
        self._secret = (
            hashlib.sha256(b"rnode-queue dashboard\0" + token.encode()).digest()
            if token is not None
            else secrets.token_bytes(32)
        )
        #: The CSRF token pages carry; the same for every page of this process.
        self.csrf = self._mac(b"csrf")
        self._cookie = self._mac(b"auth:" + token.encode()) if token is not None else None

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- who ------------------------------------------------------------------------------

    def _bearer(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return (
            self.token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(value.strip().encode(), self.token.encode())
        )

    def _cookie_ok(self, request: Request) -> bool:
        value = request.cookies.get(COOKIE, "")
        return self._cookie is not None and _same(value, self._cookie)

    def signed_in(self, request: Request) -> bool:
        """Whether the request may read: no token is set, or it carries it."""
        return self.token is None or self._bearer(request) or self._cookie_ok(request)

    def check_token(self, candidate: str) -> bool:
        """Whether ``candidate`` is the token (in constant time)."""
        return self.token is not None and _same(candidate, self.token)

    def sign_in(self, request: Request, response: Response) -> None:
        """Sets the session cookie on ``response`` (after a right token)."""
        assert self._cookie is not None
        root = request.scope.get("root_path", "") or "/"
        response.set_cookie(
            COOKIE,
            self._cookie,
            path=root,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    # -- what -----------------------------------------------------------------------------

    def cross_site(self, request: Request) -> bool:
        """Whether the browser says the request comes from another site."""
        return request.headers.get("sec-fetch-site", "") in ("cross-site", "same-site")

    def csrf_ok(self, candidate: str | None) -> bool:
        return candidate is not None and _same(candidate, self.csrf)

    def host_refused(self, scope: Scope) -> bool:
        """Without a token (nor ``remote_actions``, nor ``read_only``): whether the request's
        ``Host`` names another machine than this one (DNS rebinding)."""
        if self.token is not None or self.remote_actions or self.read_only:
            return False
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
        # "127.0.0.1:8421", "[::1]:8421", "localhost"
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if name.startswith("[") and "]" in name:
            name = name[: name.index("]") + 1]
        return not is_loopback(name)

    def refuse_action(self, request: Request) -> Response | None:
        """Why an action request is refused (a JSON error response), or None to go ahead."""
        if self.read_only:
            return _refuse(403, "this dashboard is read-only: actions are off")
        if request.method != "POST":
            return _refuse(405, "actions are POST requests")
        bearer = self._bearer(request)
        if self.token is not None and not (bearer or self._cookie_ok(request)):
            return _refuse(401, "this action needs the dashboard token: sign in again")
        if self.token is None and not self.remote_actions:
            client = request.client.host if request.client is not None else None
            if not is_loopback(client):
                return _refuse(
                    403,
                    "actions from another host need a token: start the dashboard with --token "
                    "(or create_app(token=...))",
                )
        if bearer:  # not sent by a browser on its own: no CSRF to fear
            return None
        if self.cross_site(request):
            return _refuse(403, "cross-site request refused")
        if not self.csrf_ok(request.headers.get(CSRF_HEADER)):
            return _refuse(403, "missing or wrong CSRF token: reload the page")
        return None


#: The largest sign-in form read (a token and the CSRF token fit many times over).
MAX_FORM_BYTES = 4096


def form_fields(body: bytes) -> MutableMapping[str, Any]:
    """The fields of an ``application/x-www-form-urlencoded`` body (first value of each); a
    form too large or with too many fields reads as empty (the sign-in then fails)."""
    from urllib.parse import parse_qs

    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:
        return {}
    return {key: values[0] for key, values in parsed.items()}


def _same(candidate: str, secret: str) -> bool:
    """``candidate == secret`` in constant time, whatever characters it holds."""
    return hmac.compare_digest(candidate.encode("utf-8", "replace"), secret.encode())
