"""Prometheus metrics of a :class:`~rnode_queue.QueueManager` (needs ``prometheus_client``).

>>> from prometheus_client import REGISTRY
>>> from rnode_queue.metrics import QueueCollector
>>> REGISTRY.register(QueueCollector(qm))  # doctest: +SKIP

or serve them on a port of their own (what ``rnode-queue worker APP --metrics-port 9808``
does)::

    stop = serve_metrics(qm, 9808)  # GET http://host:9808/metrics
    ...
    stop()

Every metric is labelled ``queue``:

* counters of **this process** since its manager was created (a manager made with
  ``metrics=False`` counts nothing): ``queue_jobs_total`` (jobs pushed),
  ``queue_jobs_processed_total`` (runs completed), ``queue_jobs_failed_total`` (jobs failed for
  good), ``queue_jobs_retried_total`` (failed runs that will run again), and the histogram
  ``queue_processing_duration_seconds`` (handler run time, 100 µs to 10 minutes);
* ``queue_workers_busy``: handlers of the queue running in this process now;
* gauges read from the backend (on redis and file, the same in every process that shares it):
  ``queue_jobs_waiting``, ``queue_jobs_delayed``, ``queue_jobs_active``, ``queue_paused``.

A scrape costs one call into the engine (one round trip to Redis for the gauges). When the
backend cannot answer, the scrape still succeeds: the counters are exported without the
backend's gauges, and a warning goes to the ``rnode_queue`` logger. A manager already closed
exports the counters it had at its last scrape.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rnode_queue.metrics needs prometheus_client: pip install 'rnode-queue[metrics]'"
    ) from exc

from ._core import QueueClosedError

if TYPE_CHECKING:
    from ._async import AsyncQueueManager
    from ._sync import QueueManager

__all__ = ["MetricsServer", "QueueCollector", "serve_metrics"]

_log = logging.getLogger("rnode_queue")

#: (metric name, help, key of the engine's row) of the counters.
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("queue_jobs_total", "Jobs pushed by this process.", "pushed"),
    (
        "queue_jobs_processed_total",
        "Runs completed successfully in this process.",
        "processed",
    ),
    (
        "queue_jobs_failed_total",
        "Jobs failed for good (no attempt left) in this process.",
        "failed",
    ),
    (
        "queue_jobs_retried_total",
        "Runs that failed in this process and will be retried.",
        "retried",
    ),
)
_HISTOGRAM = "queue_processing_duration_seconds"
_HISTOGRAM_HELP = "Handler run time in this process, whatever the outcome."
_BUSY = ("queue_workers_busy", "Handlers of the queue running in this process now.", "busy")
#: Gauges the backend answers (shared truth on redis and file).
_BACKEND_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("queue_jobs_waiting", "Jobs ready to run (not delayed, not running).", "waiting"),
    ("queue_jobs_delayed", "Jobs waiting for their scheduled time or a retry.", "delayed"),
    ("queue_jobs_active", "Jobs running now, in any process.", "active"),
    ("queue_paused", "1 when the queue is paused, else 0.", "paused"),
)
_LABELS = ["queue"]


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus writes it."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class QueueCollector:
    """A ``prometheus_client`` collector of a manager's queues (sync or async manager).

    Register it in any registry: ``REGISTRY.register(QueueCollector(qm))``. Each scrape calls
    the engine once; registering calls nothing (:meth:`describe` answers the names).
    """

    def __init__(self, manager: QueueManager | AsyncQueueManager) -> None:
        self._engine = manager._engine
        self._lock = threading.Lock()
        # The counters of the last scrape that answered, for a scrape that gets nothing.
        self._last: list[dict[str, Any]] = []
        self._failing = False

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (no call into the engine)."""
        yield from self._families([], with_gauges=True)

    def collect(self) -> Iterator[Metric]:
        """The metric families with one sample per queue, from one ``engine.metrics()``."""
        rows = self._read()
        if rows is None:
            with self._lock:
                rows = self._last
            yield from self._families(rows, with_gauges=False)
            return
        yield from self._families(rows, with_gauges=True)

    def _read(self) -> list[dict[str, Any]] | None:
        try:
            rows = sorted(self._engine.metrics(), key=lambda row: str(row["queue"]))
        except QueueClosedError:
            # A worker shutting down: its last counters, and nothing to warn about.
            return None
        except Exception as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                _log.warning(
                    "metrics: reading the queues failed (%s: %s); exporting this process's "
                    "last counters, without the queue gauges, until it works again",
                    type(exc).__name__,
                    exc,
                )
            else:
                _log.debug("metrics: reading the queues still fails: %s", exc)
            return None
        with self._lock:
            recovered, self._failing = self._failing, False
            self._last = rows
        if recovered:
            _log.info("metrics: reading the queues works again")
        return rows

    @staticmethod
    def _families(rows: list[dict[str, Any]], with_gauges: bool) -> Iterator[Metric]:
        for name, documentation, key in _COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=_LABELS)
            for row in rows:
                counter.add_metric([str(row["queue"])], float(row.get(key) or 0))
            yield counter

        histogram = HistogramMetricFamily(_HISTOGRAM, _HISTOGRAM_HELP, labels=_LABELS)
        for row in rows:
            pairs = row.get("duration_buckets") or []
            buckets = [(_le(bound), float(count)) for bound, count in pairs]
            if buckets and math.isinf(float(pairs[-1][0])):
                histogram.add_metric(
                    [str(row["queue"])], buckets, float(row.get("duration_sum") or 0.0)
                )
        yield histogram

        if not with_gauges:
            return
        yield _gauge(*_BUSY, rows)
        for name, documentation, key in _BACKEND_GAUGES:
            yield _gauge(name, documentation, key, rows)


def _gauge(
    name: str, documentation: str, key: str, rows: list[dict[str, Any]]
) -> GaugeMetricFamily:
    """One gauge family; a queue whose row has no value for ``key`` (None) gets no sample."""
    gauge = GaugeMetricFamily(name, documentation, labels=_LABELS)
    for row in rows:
        value = _number(row, key)
        if value is not None:
            gauge.add_metric([str(row["queue"])], value)
    return gauge


def _number(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    return float(value)  # bool (paused) -> 1.0 / 0.0


class MetricsServer:
    """A running ``/metrics`` server (from :func:`serve_metrics`): call it to stop it."""

    def __init__(self, manager: QueueManager | AsyncQueueManager, port: int, host: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(QueueCollector(manager))
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        #: The port it listens on (the one the OS chose when asked for port 0).
        self.port: int = int(self._server.server_address[1])
        self.host = host
        self._stopped = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """Stop serving and free the port (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving"
        return f"<MetricsServer {self.host}:{self.port} {state}>"


def serve_metrics(
    manager: QueueManager | AsyncQueueManager, port: int, host: str = "0.0.0.0"
) -> MetricsServer:
    """Serve the manager's metrics at ``http://host:port/metrics`` from a daemon thread.

    Uses a registry of its own (only the queue metrics). Returns the function that stops the
    server (a :class:`MetricsServer`; its ``port`` tells which port ``port=0`` got). Raises
    ``OSError`` when the port cannot be bound.
    """
    return MetricsServer(manager, port, host)
