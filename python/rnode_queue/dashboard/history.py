"""The queues' throughput and failure rate over time, from their totals.

Each read of the queues page's JSON records the queues' completed and failed totals (at most
one sample a second, the last :data:`KEEP` of them): the rates are the differences between
samples, so they are exact whatever the number of jobs, cost nothing more than the counts,
and are the same for every process that shares the store. History starts when the dashboard
process does and is kept in memory while someone watches.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

__all__ = ["History"]

#: Samples kept (at one poll every 2 s: 20 minutes).
KEEP = 600
#: Two samples further apart than this (nobody watched) leave a gap, not an average.
MAX_GAP = 30.0


class History:
    """A ring of (time, {queue: (completed, failed)}) samples."""

    def __init__(self, keep: int = KEEP, min_interval: float = 1.0) -> None:
        self._samples: deque[tuple[float, dict[str, tuple[int, int]]]] = deque(maxlen=keep)
        self._min_interval = min_interval
        self._lock = threading.Lock()

    def record(self, now: float, entries: Sequence[dict[str, Any]]) -> None:
        """Adds a sample of ``entries`` (the shared ``queue_stats``) taken at ``now``."""
        totals = {str(e["queue"]): (int(e["completed"]), int(e["failed"])) for e in entries}
        with self._lock:
            if self._samples and now - self._samples[-1][0] < self._min_interval:
                return
            self._samples.append((now, totals))

    def series(self) -> dict[str, Any]:
        """``{"t": [unix seconds], "queues": {name: {"throughput": [jobs/s],
        "failure_rate": [% of finished]}}}``, one point per pair of samples; ``None`` where a
        gap is, or (failure rate) where nothing finished."""
        with self._lock:
            samples = list(self._samples)
        names = sorted({name for _, totals in samples for name in totals})
        times: list[float] = []
        queues: dict[str, dict[str, list[float | None]]] = {
            name: {"throughput": [], "failure_rate": []} for name in names
        }
        for (before, old), (at, new) in pairwise(samples):
            elapsed = at - before
            times.append(round(at, 3))
            for name in names:
                series = queues[name]
                if elapsed > MAX_GAP or elapsed <= 0 or name not in old or name not in new:
                    series["throughput"].append(None)
                    series["failure_rate"].append(None)
                    continue
                # A queue deleted and made again starts its totals over: never negative.
                completed = max(0, new[name][0] - old[name][0])
                failed = max(0, new[name][1] - old[name][1])
                series["throughput"].append(round(completed / elapsed, 3))
                finished = completed + failed
                series["failure_rate"].append(
                    round(100.0 * failed / finished, 2) if finished else None
                )
        return {"t": times, "queues": queues}
