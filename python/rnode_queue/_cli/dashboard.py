"""``rnode-queue dashboard``: the web dashboard of a shared store, served by uvicorn.

It connects as the admin commands do (``--url``/``--prefix`` or ``REDIS_URL``/``REDIS_PREFIX``,
or ``--path``), as a plain client that runs no job. It listens on 127.0.0.1 unless told
otherwise; on any other address it refuses to serve actions without a token (``--token`` or
``RNQ_DASHBOARD_TOKEN``), unless ``--read-only``.
"""

from __future__ import annotations

import argparse
import os
import sys

from .admin import connect
from .errors import EXIT_OK, UsageError

__all__ = ["DEFAULT_PORT", "TOKEN_ENV", "run_dashboard"]

DEFAULT_PORT = 8421
TOKEN_ENV = "RNQ_DASHBOARD_TOKEN"


def dashboard_token(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$RNQ_DASHBOARD_TOKEN``, else None (an empty value is an error)."""
    token: str | None = args.token
    if token is None:
        token = os.environ.get(TOKEN_ENV)
        if token is not None and not token.strip():
            token = None
    if token is not None and not token.strip():
        raise UsageError("--token must not be empty")
    return token


def run_dashboard(args: argparse.Namespace) -> int:
    """Serves the dashboard until SIGINT/SIGTERM."""
    try:
        import uvicorn

        from ..dashboard import create_app
        from ..dashboard.security import is_loopback
    except ImportError as exc:
        raise UsageError(
            f"the dashboard needs starlette and uvicorn ({exc}): "
            "pip install 'rnode-queue[dashboard]'"
        ) from None
    token = dashboard_token(args)
    if token is None and not args.read_only and not is_loopback(args.host):
        raise UsageError(
            f"refusing to serve actions on {args.host} without a token: pass --token T (or set "
            f"{TOKEN_ENV}), or --read-only"
        )
    qm = connect(args)
    try:
        app = create_app(qm, read_only=args.read_only, token=token)
        where = f"[{args.host}]" if ":" in args.host else args.host
        mode = " (read-only)" if args.read_only else ""
        print(
            f"rnode-queue dashboard{mode} on http://{where}:{args.port}/ ; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        qm.close(timeout=0)
    return EXIT_OK
