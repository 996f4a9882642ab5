"""The ``rnode-queue`` command line: ``demo``, ``version``, ``worker``, the admin commands and
``dashboard``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .._core import DEFAULT_CLOSE_TIMEOUT, MAX_CONCURRENCY
from .admin import ADMIN_COMMANDS, STATUSES, run_admin
from .dashboard import DEFAULT_PORT, TOKEN_ENV, run_dashboard
from .errors import CommandFailed
from .logs import LEVELS
from .worker import WorkerOptions, parse_queues, run_worker

__all__ = ["build_parser", "main"]

EXIT_CODES = """exit status:
  0  clean stop: every running job finished or was handed back to run again elsewhere (or
     the command did its work)
  1  runtime error: jobs still running at the end were abandoned (a memory backend keeps
     them nowhere else), the app raised while imported, the store failed, the job or queue
     was not found
  2  usage error: a bad option, an APP that cannot be found or compiled, or that registers
     no handler
"""

WORKER_DESCRIPTION = """\
Imports APP, which creates its QueueManager (or AsyncQueueManager) and registers its handlers,
and runs them until SIGINT or SIGTERM. Running jobs then get --shutdown-timeout seconds to
finish; a second SIGINT or SIGTERM hands them back at once (they run again in another worker).

APP is module:attribute (the manager) or module (every manager created while importing it),
imported with the current directory on sys.path. Logs go to stderr.
"""

ADMIN_DESCRIPTION = """\
Connects to a shared store: redis from --url/--prefix (else the REDIS_URL and REDIS_PREFIX
environment variables), or a file store from --path. It runs no handler. Prints a table, or
JSON with --json.
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _concurrency(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_CONCURRENCY}, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {value}")
    return value


def _add_worker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = commands.add_parser(
        "worker",
        help="run the handlers of an app until SIGINT/SIGTERM",
        description=WORKER_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument("app", metavar="APP", help="module:attribute or module")
    worker.add_argument(
        "--queues", metavar="A,B", type=str, help="run only the handlers of these queues"
    )
    worker.add_argument(
        "--concurrency",
        metavar="N",
        type=_concurrency,
        help="run each handler with N slots (instead of what the app says)",
    )
    store = worker.add_argument_group("store (instead of what the app's managers say)")
    store.add_argument("--url", help="redis managers: this redis://... URL")
    store.add_argument("--prefix", help="redis managers: this key prefix")
    store.add_argument("--path", help="file managers: this directory")
    worker.add_argument(
        "--burst",
        action="store_true",
        help="exit (0) once the queues have no job waiting, delayed or running",
    )
    worker.add_argument(
        "--shutdown-timeout",
        metavar="SECONDS",
        type=_seconds,
        default=DEFAULT_CLOSE_TIMEOUT,
        help="how long running jobs get to finish at a stop (default %(default)g)",
    )
    worker.add_argument("--log-level", choices=LEVELS, default="info", help="default info")
    worker.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per line (time, level, logger, message, ...)",
    )
    worker.add_argument(
        "--log-jobs",
        action="store_true",
        help="log one INFO line per completed job (also on with --log-level debug)",
    )
    worker.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=_port,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs [metrics])",
    )
    worker.add_argument(
        "--metrics-host",
        metavar="HOST",
        default="0.0.0.0",
        help="the address --metrics-port listens on (default %(default)s: every interface)",
    )


def _add_admin(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = argparse.ArgumentParser(add_help=False)
    group = store.add_argument_group("store")
    group.add_argument("--url", help="redis://... (default: $REDIS_URL)")
    group.add_argument(
        "--prefix", help="redis key prefix (default: $REDIS_PREFIX, else the default)"
    )
    group.add_argument("--path", help="the directory of a file store")
    store.add_argument("--json", action="store_true", help="print JSON instead of a table")
    for name, (_function, summary) in ADMIN_COMMANDS.items():
        command = commands.add_parser(
            name,
            parents=[store],
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}.\n\n{ADMIN_DESCRIPTION}",
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name in ("jobs", "pause", "resume", "clear"):
            command.add_argument("queue", metavar="QUEUE")
        if name == "jobs":
            command.add_argument("--status", choices=STATUSES, help="only jobs in this state")
            command.add_argument(
                "--limit", metavar="N", type=_positive_int, default=20, help="default 20"
            )
        if name == "job":
            command.add_argument("id", metavar="ID")
        if name == "retry":
            command.add_argument("id", metavar="ID", nargs="?", help="a failed job")
            command.add_argument(
                "--failed", metavar="QUEUE", help="every failed job of this queue instead"
            )
        if name == "clear":
            command.add_argument("--yes", "-y", action="store_true", help="do not ask")


DASHBOARD_DESCRIPTION = f"""\
Serves the web dashboard of a shared store (needs pip install 'rnode-queue[dashboard]'):
queues, jobs, schedules, workers, /metrics, and actions (retry, delete, pause, resume, clear).
Connects as the admin commands do: --url/--prefix (else REDIS_URL, REDIS_PREFIX) or --path.

Listens on 127.0.0.1 by default. On any other address, actions need a token (--token or
${TOKEN_ENV}): without one it refuses to start (exit 2) unless --read-only. With a token,
every page asks for it (browsers sign in once; scripts send Authorization: Bearer TOKEN).
"""


def _add_dashboard(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        help="serve the web dashboard (queues, jobs, schedules, workers, actions)",
        description=DASHBOARD_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = dashboard.add_argument_group("store")
    group.add_argument("--url", help="redis://... (default: $REDIS_URL)")
    group.add_argument(
        "--prefix", help="redis key prefix (default: $REDIS_PREFIX, else the default)"
    )
    group.add_argument("--path", help="the directory of a file store")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default %(default)s)"
    )
    dashboard.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="the port (default %(default)s)"
    )
    dashboard.add_argument(
        "--read-only", action="store_true", help="no actions: show only (no token needed)"
    )
    dashboard.add_argument(
        "--token", help=f"the token pages and actions need (default: ${TOKEN_ENV})"
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``rnode-queue`` command."""
    parser = argparse.ArgumentParser(
        prog="rnode-queue",
        description="rnode-queue: a job queue with a Rust engine.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="demo (the default command): only the summary"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run the quick-start flows in memory (the default)")
    demo.add_argument(
        "-q", "--quiet", dest="demo_quiet", action="store_true", help="only the summary"
    )
    commands.add_parser("version", help="print the version")
    _add_worker(commands)
    _add_admin(commands)
    _add_dashboard(commands)
    return parser


def worker_options(args: argparse.Namespace) -> WorkerOptions:
    """The worker's options from its parsed command line."""
    return WorkerOptions(
        app=args.app,
        queues=None if args.queues is None else parse_queues(args.queues),
        concurrency=args.concurrency,
        url=args.url,
        prefix=args.prefix,
        path=args.path,
        burst=args.burst,
        shutdown_timeout=args.shutdown_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
        log_jobs=args.log_jobs,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rnode-queue`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    command: str = args.command or "demo"
    try:
        if command == "version":
            print(f"rnode-queue {__version__}")
            return 0
        if command == "demo":
            from .._demo import demo

            # Its failures are deliberate (retries, backoff): the engine's records of them
            # would only hide the demo's own output.
            logging.getLogger("rnode_queue").setLevel(logging.CRITICAL)
            return demo(quiet=args.quiet or getattr(args, "demo_quiet", False))
        if command == "worker":
            return run_worker(worker_options(args))
        if command == "dashboard":
            return run_dashboard(args)
        return run_admin(args)
    except CommandFailed as exc:
        print(f"rnode-queue {command}: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"rnode-queue {command}: interrupted", file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:
        # The reader went away (`rnode-queue jobs q | head`): nothing more to say, as for cat.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
