"""Logging of the ``rnode-queue`` commands: a handler on stderr, as text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["LEVELS", "JsonFormatter", "configure_logging", "log"]

#: The ``--log-level`` choices.
LEVELS = ("debug", "info", "warning", "error")

#: The logger of the library (the Rust engine's records included).
LIBRARY_LOGGER = "rnode_queue"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The logger of the ``rnode-queue`` commands themselves.
log = logging.getLogger("rnode_queue.cli")

# Attributes every LogRecord has: the rest were given with ``extra=`` and go into the JSON.
_STANDARD = logging.LogRecord("", 0, "", 0, "", None, None).__dict__
_RECORD_ATTRIBUTES = frozenset([*_STANDARD, "message", "asctime", "taskName"])

_TRACEBACK_START = "Traceback (most recent call last):"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``; ``exc_info`` (the formatted exception) when there is one, and a
    ``traceback`` split off a message that carries one (as the engine's failed-run records do);
    any ``extra=`` fields as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        head, found, tail = message.partition(_TRACEBACK_START)
        if found and head.strip():
            entry["message"] = head.rstrip()
            entry["traceback"] = found + tail
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "info", log_format: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Sends the ``rnode_queue`` logger's records at ``level`` and above to ``stream``
    (stderr), as text or JSON lines; returns the handler (:func:`configure_root` reuses it).

    The records stop there (no propagation to the root logger), so an app that configures
    logging does not print them twice.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logger = logging.getLogger(LIBRARY_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return handler


def configure_root(handler: logging.Handler, level: str) -> bool:
    """Gives the root logger ``handler`` at ``level`` unless the app configured it (it has
    handlers already): the app's own records then look like the worker's. True if it did.

    An app that configured logging itself (a file, a log shipper) gets the library's records
    too: they go to its handlers instead of the worker's stderr handler.
    """
    root = logging.getLogger()
    if root.handlers:
        library = logging.getLogger(LIBRARY_LOGGER)
        library.removeHandler(handler)
        library.propagate = True
        return False
    root.addHandler(handler)
    root.setLevel(level.upper())
    return True
