"""``rnode-queue worker APP``: runs the handlers an application module registers.

Importing APP (``module`` or ``module:attribute``) creates its managers and registers its
handlers, with the command line's overrides applied (see :mod:`.overrides`). The worker then
runs until SIGINT or SIGTERM (or, with ``--burst``, until its queues are idle), and closes the
managers gracefully: running jobs get ``--shutdown-timeout`` seconds; a second signal hands them
back at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType, ModuleType
from typing import Any

from .. import AsyncQueueManager, ConfigError, QueueClosedError, QueueManager, __version__
from .._core import DEFAULT_CLOSE_TIMEOUT
from .errors import EXIT_FAILURE, EXIT_OK, CommandFailed, UsageError
from .logs import configure_logging, configure_root
from .overrides import ManagerRecord, Registration, WorkerOverrides, apply

__all__ = ["WorkerOptions", "run_worker"]

log = logging.getLogger("rnode_queue.worker")

#: How many handed-back job ids the shutdown line lists (then "and N more").
LISTED_IDS = 20

# Seconds between checks of the main thread's waits (signals wake it sooner).
_WAIT_SLICE = 1.0

MetricsStop = Callable[[], None]
ServeMetrics = Callable[[QueueManager, int, str], MetricsStop]


@dataclass(frozen=True)
class WorkerOptions:
    """The ``rnode-queue worker`` command line."""

    app: str
    queues: frozenset[str] | None = None
    concurrency: int | None = None
    url: str | None = None
    prefix: str | None = None
    path: str | None = None
    burst: bool = False
    shutdown_timeout: float = DEFAULT_CLOSE_TIMEOUT
    log_level: str = "info"
    log_format: str = "text"
    log_jobs: bool = False
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"


def parse_queues(text: str) -> frozenset[str]:
    """``--queues a,b`` as a set of names; empty names are a usage error."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UsageError(f"--queues {text!r}: expected queue names separated by commas")
    return frozenset(names)


# -- signals --------------------------------------------------------------------------------


class Stopper:
    """SIGINT and SIGTERM: the first asks for a graceful stop, the next one forces it.

    Before the app is imported and started, a signal interrupts the import
    (:class:`KeyboardInterrupt`). The handlers only set flags; the main thread logs.
    """

    def __init__(self) -> None:
        self.changed = threading.Event()
        self.started = False
        self.requested = False
        self.forced = False
        self.reason = ""

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)

    def reclaim(self) -> None:
        """After the import: an app that set handlers of its own for these signals (a
        ``qm.close()`` on SIGTERM, say) would leave the worker waiting for a stop it never
        hears of. The worker's handlers are put back, with a warning."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) != self._on_signal:
                log.warning(
                    "the app set its own %s handler; the worker's replaces it (the worker "
                    "closes the managers at a stop)",
                    signal.Signals(signum).name,
                )
                signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.started:
            raise KeyboardInterrupt
        if self.requested:
            self.forced = True
        else:
            self.reason = signal.Signals(signum).name
            self.requested = True
        self.changed.set()

    def request(self, reason: str) -> None:
        """A stop asked for by the worker itself (``--burst``, an error)."""
        if not self.requested:
            self.reason = reason
            self.requested = True
        self.changed.set()

    def wait(self, done: Callable[[], bool]) -> None:
        """Blocks the main thread until ``done()`` (checked whenever a flag changes)."""
        while not done():
            self.changed.wait(_WAIT_SLICE)
            self.changed.clear()


# -- the app --------------------------------------------------------------------------------


def split_app(app: str) -> tuple[str, str | None]:
    """``module:attribute`` or ``module`` as (module, attribute or None)."""
    module, colon, attribute = app.partition(":")
    if module.endswith(".py") and not colon:
        raise UsageError(f"APP is a module name, not a file: try {module[:-3].replace('/', '.')!r}")
    if not module or (colon and not attribute):
        raise UsageError(f"expected APP as module or module:attribute, got {app!r}")
    return module, attribute or None


def import_app(module_name: str) -> ModuleType:
    """Imports the app (the current directory importable, as for ``python -m``).

    An error is one line naming the module and the exception: a usage error (2) when the
    module itself cannot be found or compiled, or rejects its configuration; a failure (1)
    else, a module the app imports that is missing included (a broken install, not a typo).
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except (ImportError, SyntaxError, ConfigError) as exc:
        log.debug("importing %r failed", module_name, exc_info=True)
        line = f"cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        missing = exc.name if isinstance(exc, ImportError) else None
        if missing is None or missing == module_name or module_name.startswith(f"{missing}."):
            raise UsageError(line) from None
        raise CommandFailed(line) from None
    except Exception as exc:
        log.debug("importing %r failed", module_name, exc_info=True)
        raise CommandFailed(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None


def named_manager(module: ModuleType, module_name: str, attribute: str) -> QueueManager:
    """The manager ``module.attribute`` (a dotted path), as the sync manager it wraps."""
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, AsyncQueueManager):
        return target.sync
    if not isinstance(target, QueueManager):
        raise UsageError(
            f"{module_name}:{attribute} is a {type(target).__name__}, "
            "not a QueueManager or AsyncQueueManager"
        )
    return target


@dataclass
class App:
    """What importing APP produced: its managers, and the handlers to run."""

    managers: list[ManagerRecord]
    #: The handlers the worker starts.
    started: list[Registration]
    #: Handlers of queues that ``--queues`` leaves out.
    skipped: list[Registration]
    #: Handlers of other managers than the one APP names.
    others: list[Registration]

    @property
    def worker_managers(self) -> list[ManagerRecord]:
        """The managers that run handlers here."""
        running = {id(r.manager) for r in self.started}
        return [r for r in self.managers if id(r.manager) in running]


def collect_app(
    module: ModuleType, module_name: str, attribute: str | None, overrides: WorkerOverrides
) -> App:
    """Checks what the import registered against the command line (usage errors).

    With ``module:attribute`` only that manager's handlers run; with ``module``, those of
    every manager the import created.
    """
    app = module_name if attribute is None else f"{module_name}:{attribute}"
    managers = [r for r in overrides.managers if not r.manager.closed]
    registered = [r for r in overrides.registrations if not r.manager.closed]
    others: list[Registration] = []
    serving = managers
    if attribute is not None:
        named = named_manager(module, module_name, attribute)
        serving = [overrides.record_of(named) or ManagerRecord(named, named.backend)]
        if serving[0] not in managers:
            managers.insert(0, serving[0])  # created before the import
        others = [r for r in registered if r.manager is not named]
        registered = [r for r in registered if r.manager is named]
    if not registered:
        elsewhere = f" (other managers of {module_name!r} do)" if others else ""
        raise UsageError(
            f"{app!r} registers no handler{elsewhere}, so there is nothing to run: register "
            "them when the module is imported (@qm.process('queue') or queue.process(handler))"
        )
    started = [r for r in registered if r.selected]
    skipped = [r for r in registered if not r.selected]
    handled = sorted({r.queue for r in registered})
    if not started:
        wanted = ",".join(sorted(overrides.queues or ()))
        raise UsageError(
            f"no handler of {app!r} is for --queues {wanted}: it has handlers for "
            f"{', '.join(handled)}"
        )
    unknown = sorted((overrides.queues or frozenset()) - set(handled))
    if unknown:
        log.warning("--queues names %s, which no handler of %r processes", ", ".join(unknown), app)
    backends = ", ".join(sorted({r.backend for r in serving}))
    if (overrides.url is not None or overrides.prefix is not None) and "redis" not in backends:
        hint = " (QueueManager.from_env() reads REDIS_URL)" if backends == "memory" else ""
        raise UsageError(
            f"--url and --prefix apply to redis managers, and {app!r} has none "
            f"(backend: {backends}){hint}"
        )
    if overrides.path is not None and "file" not in backends:
        raise UsageError(
            f"--path applies to file managers, and {app!r} has none (backend: {backends})"
        )
    return App(managers, started, skipped, others)


# -- metrics --------------------------------------------------------------------------------


def import_serve_metrics() -> ServeMetrics:
    """``rnode_queue.metrics.serve_metrics``; a usage error when prometheus_client is missing."""
    try:
        from ..metrics import serve_metrics
    except ImportError as exc:
        if "prometheus_client" in f"{exc} {exc.name}":
            raise UsageError(
                "--metrics-port needs prometheus_client: pip install 'rnode-queue[metrics]'"
            ) from None
        raise
    return serve_metrics


# -- the worker -----------------------------------------------------------------------------


def describe_handlers(registrations: Iterable[Registration]) -> str:
    """``emails -> app.send (concurrency 4); reports -> app.build (concurrency 5)``."""
    parts = []
    for r in registrations:
        concurrency = r.concurrency
        if concurrency is None:
            try:
                concurrency = int(r.manager._engine.queue_config(r.queue)["concurrency"])
            except Exception:  # only for the start line
                concurrency = None
        shown = "the queue's" if concurrency is None else str(concurrency)
        parts.append(f"{r.queue} -> {r.name} (concurrency {shown})")
    return "; ".join(parts)


class Worker:
    """Runs an imported app's handlers until a stop is asked for, then closes its managers."""

    def __init__(
        self,
        options: WorkerOptions,
        app: App,
        stopper: Stopper,
        serve_metrics: ServeMetrics | None,
    ) -> None:
        self.options = options
        self.app = app
        self.stopper = stopper
        self.serve_metrics = serve_metrics
        self.stop_metrics: MetricsStop | None = None
        self.failed = False

    def run(self) -> int:
        """Start, wait for the stop, close; the exit status."""
        self.start()
        if self.options.burst:
            threading.Thread(
                target=self.wait_until_idle, name="rnode-queue-burst", daemon=True
            ).start()
        self.stopper.wait(lambda: self.stopper.requested)
        code = self.shut_down()
        return EXIT_FAILURE if self.failed else code

    def start(self) -> None:
        """Logs what the worker found, then starts the handlers of its queues."""
        options = self.options
        records = self.app.worker_managers
        log.info(
            "rnode-queue %s worker, pid %d on %s, app %r",
            __version__,
            os.getpid(),
            socket.gethostname(),
            options.app,
        )
        for record in records:
            log.info("backend: %s", record.describe())
            if record.backend == "memory":
                log.warning(
                    "the memory backend keeps its jobs in this process: no other process can "
                    "push to it or see them (give the manager a url or path, or run the worker "
                    "with --url or --path)"
                )
        log.info("handlers found: %s", describe_handlers(self.app.started))
        if self.app.skipped:
            log.info("not started (not in --queues): %s", describe_handlers(self.app.skipped))
        if self.app.others:
            log.info(
                "not started (of another manager than %r): %s",
                options.app,
                describe_handlers(self.app.others),
            )
        if options.log_jobs or options.log_level == "debug":
            for record in records:
                record.manager.set_job_logging(True)
        if options.metrics_port is not None and self.serve_metrics is not None:
            self.start_metrics(records)
        if options.burst:
            self.warn_paused()
        if not self.stopper.requested:  # a signal came during the start: nothing to start
            for registration in self.app.started:
                registration.start()
        queues = ", ".join(sorted({r.queue for r in self.app.started}))
        ending = "exits when they are idle (--burst)" if options.burst else "runs until stopped"
        log.info(
            "ready: queues %s; %s; Ctrl-C or SIGTERM stops, a second one forces", queues, ending
        )

    def warn_paused(self) -> None:
        """``--burst``: a paused queue's waiting jobs keep the worker waiting."""
        for registration in self.app.started:
            stats = registration.manager._engine.queue_stats(registration.queue)
            if stats["paused"] and stats["waiting"]:
                log.warning(
                    "queue %r is paused with %d waiting job(s): --burst waits until it is "
                    "resumed (or stopped)",
                    registration.queue,
                    stats["waiting"],
                )

    def start_metrics(self, records: list[ManagerRecord]) -> None:
        """``--metrics-port``: serves the (first) manager's metrics."""
        port, host = self.options.metrics_port, self.options.metrics_host
        assert port is not None and self.serve_metrics is not None
        try:
            self.stop_metrics = self.serve_metrics(records[0].manager, port, host)
        except OSError as exc:
            raise CommandFailed(f"--metrics-port {port}: cannot listen on {host}: {exc}") from None
        port = getattr(self.stop_metrics, "port", port)  # the one chosen for port 0
        log.info("metrics: http://%s:%d/metrics", host, port)
        if len(records) > 1:
            log.warning("metrics: only the queues of the first manager are exported")

    def wait_until_idle(self) -> None:
        """``--burst``: asks for the stop once no queue of the worker has a job waiting,
        delayed or running (``join`` on each, then all of them again at once)."""
        pairs = [(r.manager, r.queue) for r in self.app.started]
        try:
            while not self.stopper.requested:
                for manager, queue in pairs:
                    manager.join(queue)
                if all(manager.join(queue, timeout=0) for manager, queue in pairs):
                    log.info("burst: the queues are idle")
                    self.stopper.request("--burst")
                    return
        except QueueClosedError:
            return  # stopped meanwhile
        except Exception:
            log.exception("burst: waiting for the queues failed")
            self.failed = True
            self.stopper.request("error")

    def shut_down(self) -> int:
        """Closes the worker's managers: gracefully, or at once on a second signal."""
        timeout = self.options.shutdown_timeout
        records = self.app.worker_managers
        # Nothing here asks the store (it may be away): the stop starts at once.
        log.info(
            "stopping (%s): waiting up to %g s for the running jobs; "
            "Ctrl-C or SIGTERM again to hand them back at once",
            self.stopper.reason,
            timeout,
        )
        reports: dict[int, tuple[bool, list[tuple[str, str]]]] = {}
        closed = threading.Event()

        def close_gracefully() -> None:
            deadline = time.monotonic() + timeout
            try:
                for record in records:
                    left = max(0.0, deadline - time.monotonic())
                    reports[id(record.manager)] = record.manager._close(left)
            except Exception:
                log.exception("closing the managers failed")
                self.failed = True
            finally:
                closed.set()
                self.stopper.changed.set()

        threading.Thread(target=close_gracefully, name="rnode-queue-close", daemon=True).start()
        self.stopper.wait(lambda: closed.is_set() or self.stopper.forced)
        forced = not closed.is_set()
        if forced:
            log.warning("forced stop: handing the running jobs back")
            for record in records:
                if id(record.manager) not in reports:
                    reports[id(record.manager)] = record.manager._close(0)
        self.close_the_rest()
        return self.report(list(reports.values()), forced)

    def close_the_rest(self) -> None:
        """Closes what else the worker opened: the metrics server, managers without handlers."""
        if self.stop_metrics is not None:
            self.stop_metrics()
        running = {id(r.manager) for r in self.app.worker_managers}
        for record in self.app.managers:
            if id(record.manager) not in running and not record.manager.closed:
                try:
                    record.manager._close(0)
                except Exception:
                    log.exception("closing a manager without handlers failed")

    def report(self, reports: list[tuple[bool, list[tuple[str, str]]]], forced: bool) -> int:
        """Logs what the shutdown handed back: 0 when every running job finished or was handed
        back (to run again elsewhere: nothing is lost), 1 when some were abandoned."""
        finished = all(done for done, _ in reports)
        handed_back = [item for _, items in reports for item in items]
        how = "forced stop" if forced else "stopped"
        if handed_back:
            listed = ", ".join(f"{queue} {job_id}" for queue, job_id in handed_back[:LISTED_IDS])
            more = len(handed_back) - LISTED_IDS
            log.warning(
                "%s: %d running job(s) handed back, to run again at once in another worker: %s%s",
                how,
                len(handed_back),
                listed,
                f" and {more} more" if more > 0 else "",
            )
            return EXIT_OK
        if not finished:
            limit = "at once" if forced else f"after {self.options.shutdown_timeout:g} s"
            log.warning(
                "%s: jobs still running %s are abandoned (nothing was handed back: their "
                "backend keeps no job for another process)",
                how,
                limit,
            )
            return EXIT_FAILURE
        log.info("%s: every running job finished", how)
        return EXIT_OK


def close_quietly(managers: Iterable[ManagerRecord]) -> None:
    """Closes managers at once on an error path (running jobs handed back)."""
    for record in managers:
        if not record.manager.closed:
            try:
                record.manager._close(0)
            except Exception:
                log.debug("closing a manager failed", exc_info=True)


def run_worker(options: WorkerOptions) -> int:
    """``rnode-queue worker``: the exit status (errors raise :class:`CommandFailed`)."""
    handler = configure_logging(options.log_level, options.log_format)
    module_name, attribute = split_app(options.app)
    if options.url is not None and options.path is not None:
        raise UsageError("give --url (redis) or --path (file), not both")
    serve_metrics = import_serve_metrics() if options.metrics_port is not None else None
    stopper = Stopper()
    stopper.install()
    overrides = WorkerOverrides(
        url=options.url,
        prefix=options.prefix,
        path=options.path,
        concurrency=options.concurrency,
        queues=options.queues,
    )
    try:
        with apply(overrides):
            try:
                module = import_app(module_name)
            except KeyboardInterrupt:
                raise CommandFailed(f"interrupted while importing {module_name!r}") from None
        stopper.reclaim()
        stopper.started = True  # from now on a signal stops the worker gracefully
        app = collect_app(module, module_name, attribute, overrides)
        configure_root(handler, options.log_level)
        return Worker(options, app, stopper, serve_metrics).run()
    except (CommandFailed, KeyboardInterrupt):
        close_quietly(overrides.managers)
        raise
    except Exception:
        log.exception("the worker failed")
        close_quietly(overrides.managers)
        return EXIT_FAILURE
