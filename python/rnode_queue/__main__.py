"""The ``rnode-queue`` command (also ``python -m rnode_queue``).

``rnode-queue demo`` (the default) runs the README quick start on the memory backend: retries,
priorities, cron and ``schedule_at``, a large ``push_batch`` and exponential backoff, then
prints a summary. ``rnode-queue worker module:manager`` imports an application module (which
creates its ``QueueManager`` and registers its handlers) and runs its workers until SIGINT or
SIGTERM, then closes the manager gracefully. ``rnode-queue version`` prints the version.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from . import QueueManager, __version__
from ._core import DEFAULT_CLOSE_TIMEOUT
from ._demo import demo

__all__ = ["main"]


def load_manager(target: str) -> QueueManager:
    """``package.module:attribute`` (the current directory importable, as for ``python -m``)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"rnode-queue worker: expected module:attribute, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        manager = getattr(module, attribute)
    except AttributeError:
        raise SystemExit(f"rnode-queue worker: {module_name} has no {attribute!r}") from None
    if not isinstance(manager, QueueManager):
        raise SystemExit(f"rnode-queue worker: {target} is not a QueueManager")
    return manager


def worker(target: str, shutdown_timeout: float) -> int:
    """Runs the handlers that importing ``target`` registered until SIGINT or SIGTERM.

    Returns 0 when every running job finished within ``shutdown_timeout``; 1 when some were
    still running then (on a shared backend they are handed back, to run again elsewhere at
    once, and listed).
    """
    qm = load_manager(target)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    queues = ", ".join(sorted(qm.get_stats().queue_sizes)) or "none yet"
    print(f"rnode-queue worker: {target} on {qm.backend} (queues: {queues}); Ctrl-C to stop")
    sys.stdout.flush()
    while not stop.wait(0.5):  # slices: signal handlers run between them
        pass
    print(f"rnode-queue worker: stopping (waiting up to {shutdown_timeout:g} s for running jobs)")
    sys.stdout.flush()
    finished, handed_back = qm._close(shutdown_timeout)
    if handed_back:
        print(
            f"rnode-queue worker: {len(handed_back)} job(s) still running after "
            f"{shutdown_timeout:g} s were handed back and run again elsewhere:"
        )
        for queue, job_id in handed_back:
            print(f"  {queue} {job_id}")
    elif not finished:
        print(f"rnode-queue worker: jobs were still running after {shutdown_timeout:g} s")
    sys.stdout.flush()
    # A handler still running is abandoned at exit (never aborted): the process exits with
    # this status.
    return 0 if finished else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnode-queue`` console script."""
    parser = argparse.ArgumentParser(
        prog="rnode-queue", description="rnode-queue: a job queue with a Rust engine."
    )
    parser.add_argument(
        "command",
        nargs="?",
        default="demo",
        choices=("demo", "worker", "version"),
        help=(
            "demo (default): run the quick-start flows in memory; worker APP: run the handlers "
            "of APP (module:manager) until SIGINT/SIGTERM; version: print the version"
        ),
    )
    parser.add_argument("app", nargs="?", help="worker: module:attribute naming a QueueManager")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="demo: no progress, only the summary"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_CLOSE_TIMEOUT,
        help="worker: seconds running jobs get to finish at shutdown (default %(default)g)",
    )
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"rnode-queue {__version__}")
        return 0
    if args.command == "worker":
        if not args.app:
            parser.error("worker needs APP, e.g. rnode-queue worker myapp.tasks:qm")
        return worker(args.app, args.shutdown_timeout)
    return demo(quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
