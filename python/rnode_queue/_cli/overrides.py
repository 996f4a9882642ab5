"""What ``rnode-queue worker`` imposes on the app it imports, and what it learns from it.

While the app module is imported, :class:`WorkerOverrides` is ``rnode_queue._sync``'s worker
hook: every manager created then gets the command line's backend options, and every handler
registered then is recorded, not started: the worker starts those of ``--queues`` (with its
``--concurrency``) once it has checked the app and logged what it found, so that no job runs
before the start line, nor in a worker that refuses the app.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import QueueError, _sync
from .._core import DEFAULT_REDIS_PREFIX

if TYPE_CHECKING:
    from .._options import ManagerOptions
    from .._sync import Handler, QueueManager

__all__ = ["Registration", "WorkerOverrides", "apply", "redact_url"]

# scheme://userinfo@ — the userinfo runs to the last "@" before the first "/", "?" or "#".
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*)@")
# A password given as a query parameter (unix-socket URLs): ?pass=... or &password=...
_PASSWORD_PARAM = re.compile(r"(?<=[?&])(?P<key>pass|password)=[^&#,]*")


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (each URL of a comma-separated list).

    ``redis://user:secret@host/0`` gives ``redis://user:***@host/0``; a lone userinfo
    (``redis://secret@host``) is hidden whole, as some clients read it as a password; so is a
    ``pass=`` or ``password=`` query value (``redis+unix:///run/redis.sock?pass=...``).
    """
    return ",".join(_redact_one(part) for part in url.split(","))


def _redact_one(url: str) -> str:
    url = _PASSWORD_PARAM.sub(r"\g<key>=***", url.strip())
    match = _USERINFO.match(url)
    if match is None:
        return url
    user, colon, _password = match["userinfo"].partition(":")
    hidden = f"{user}:***" if colon else "***"
    return f"{match['scheme']}{hidden}@{url[match.end() :]}"


def resolved_backend(backend: str | None, options: ManagerOptions) -> str:
    """The backend a manager created with these arguments uses (as the engine picks it)."""
    if backend is not None:
        return backend
    if options.get("url"):
        return "redis"
    if options.get("path"):
        return "file"
    return "memory"


@dataclass
class Registration:
    """A handler the app registered while it was imported."""

    manager: QueueManager
    queue: str
    handler: Handler
    #: ``module.qualname`` of the handler.
    name: str
    #: ``--concurrency``, else what the app gave ``process`` (None: the queue's).
    concurrency: int | None
    #: Registered without waiting for the store (an async manager's ``process``).
    later: bool
    #: In ``--queues`` (all are without it): the worker starts it.
    selected: bool

    def start(self) -> None:
        """Starts the handler (once the hook is gone, the manager starts it)."""
        self.manager._start_processing(self.queue, self.handler, self.concurrency, self.later)


@dataclass
class ManagerRecord:
    """A manager the app created, with the backend options it got (no password)."""

    manager: QueueManager
    backend: str
    url: str | None = None
    prefix: str | None = None
    path: str | None = None

    def describe(self) -> str:
        """``redis redis://:***@host:6379/0 prefix rnode:queue``, ``file /var/q``, ``memory``."""
        if self.backend == "redis":
            return f"redis {self.url or '?'} prefix {self.prefix or DEFAULT_REDIS_PREFIX}"
        if self.backend == "file":
            return f"file {self.path or '?'}"
        return self.backend


def handler_name(handler: object) -> str:
    """``module.qualname`` of a handler (its repr when it has none)."""
    qualname = getattr(handler, "__qualname__", None)
    module = getattr(handler, "__module__", None)
    if not isinstance(qualname, str):
        return repr(handler)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


@dataclass
class WorkerOverrides:
    """The worker's command-line overrides, and the managers and handlers the app made."""

    url: str | None = None
    prefix: str | None = None
    path: str | None = None
    concurrency: int | None = None
    queues: frozenset[str] | None = None
    managers: list[ManagerRecord] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def manager_options(
        self, backend: str | None, options: ManagerOptions
    ) -> tuple[str | None, ManagerOptions]:
        """``--url``/``--prefix`` for a redis manager, ``--path`` for a file manager."""
        kind = resolved_backend(backend, options)
        changed: ManagerOptions = {**options}
        if kind == "redis":
            if self.url is not None:
                changed["url"] = self.url
            if self.prefix is not None:
                changed["prefix"] = self.prefix
        elif kind == "file" and self.path is not None:
            changed["path"] = self.path
        return backend, changed

    def manager_created(
        self, manager: QueueManager, backend: str | None, options: ManagerOptions
    ) -> None:
        """Records the manager and its backend options, the URL without its password."""
        url = options.get("url")
        path = options.get("path")
        record = ManagerRecord(
            manager,
            resolved_backend(backend, options),
            url=redact_url(url) if url else None,
            prefix=options.get("prefix"),
            path=None if path is None else str(path),
        )
        with self._lock:
            self.managers.append(record)

    def handler_registered(
        self,
        manager: QueueManager,
        queue: str,
        handler: Handler,
        concurrency: int | None,
        later: bool,
    ) -> bool:
        """Records the handler, to be started by the worker; False (not now)."""
        registration = Registration(
            manager,
            queue,
            handler,
            handler_name(handler),
            self.concurrency if self.concurrency is not None else concurrency,
            later,
            selected=self.queues is None or queue in self.queues,
        )
        with self._lock:
            if any(r.manager is manager and r.queue == queue for r in self.registrations):
                raise QueueError(f"queue {queue!r} already has a handler")
            self.registrations.append(registration)
        return False

    def record_of(self, manager: QueueManager) -> ManagerRecord | None:
        """What was recorded when ``manager`` was created (None: before the overrides)."""
        return next((r for r in self.managers if r.manager is manager), None)


@contextlib.contextmanager
def apply(overrides: WorkerOverrides) -> Iterator[WorkerOverrides]:
    """Makes ``overrides`` the worker hook of every manager created inside the block."""
    previous = _sync._worker_hook
    _sync._worker_hook = overrides
    try:
        yield overrides
    finally:
        _sync._worker_hook = previous
