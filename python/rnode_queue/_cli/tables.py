"""Plain-text tables and values for the admin commands' output."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = ["age", "cell", "render_table", "shorten", "timestamp", "to_json"]

#: How many characters of data or an error a table cell shows.
CELL_WIDTH = 48


def timestamp(value: datetime | None) -> str:
    """``2024-05-01 12:00:03`` (UTC, to the second); ``-`` for None."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago: ``3s ago``, ``4m ago``, ``2h ago``, ``5d ago``; ``-`` for None."""
    if value is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(timezone.utc)) - value).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def shorten(text: str, width: int = CELL_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with ``…``."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def cell(value: Any) -> str:
    """A value as a table cell: numbers as they are, None as ``-``, JSON for the rest."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, datetime):
        return timestamp(value)
    return shorten(json.dumps(value, default=str, ensure_ascii=False))


def render_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None
) -> str:
    """An aligned table: a header line, then one line per row; the columns ``right`` marks
    (by default: those of numbers) right-aligned. With no rows, the header and ``(none)``.
    """
    cells = [[cell(value) for value in row] for row in rows]
    numeric = (
        list(right)
        if right is not None
        else [bool(rows) and all(_is_number(row[n]) for row in rows) for n in range(len(headers))]
    )
    widths = [
        max([len(header), *(len(row[n]) for row in cells)]) for n, header in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [line(list(headers)), *(line(row) for row in cells)]
    if not cells:
        lines.append("(none)")
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_json(value: Any) -> str:
    """``value`` as indented JSON; datetimes in ISO 8601."""
    return json.dumps(value, default=_json_default, indent=2, ensure_ascii=False)


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
