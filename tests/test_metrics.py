"""Prometheus metrics: ``rnode_queue.metrics.QueueCollector`` and ``serve_metrics``.

Each test scrapes a private ``CollectorRegistry`` (never the global ``REGISTRY``) the way
Prometheus does, with ``generate_latest``, and reads the text back with prometheus_client's
parser. The counters come from this process's engine, the queue gauges from the backend.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ENABLED_BACKENDS, ManagerPool
from helpers import WAIT, run_async, wait_equal, wait_until
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis_servers import RedisServer, free_port
from rnode_queue import AsyncQueueManager, Job, QueueManager
from rnode_queue.metrics import QueueCollector, serve_metrics

#: The histogram's upper bounds (seconds), as the issue's contract gives them.
BOUNDS = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 600, math.inf,
]  # fmt: skip
COUNTERS = (
    "queue_jobs_total",
    "queue_jobs_processed_total",
    "queue_jobs_failed_total",
    "queue_jobs_retried_total",
)
BACKEND_GAUGES = ("queue_jobs_waiting", "queue_jobs_delayed", "queue_jobs_active", "queue_paused")
FAMILIES = {
    "queue_jobs": "counter",
    "queue_jobs_processed": "counter",
    "queue_jobs_failed": "counter",
    "queue_jobs_retried": "counter",
    "queue_processing_duration_seconds": "histogram",
    "queue_jobs_waiting": "gauge",
    "queue_jobs_delayed": "gauge",
    "queue_jobs_active": "gauge",
    "queue_workers_busy": "gauge",
    "queue_paused": "gauge",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """(samples by (name, sorted labels), family types by name) of an exposition text."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, types


class Scraper:
    """A private registry holding one QueueCollector; ``scrape()`` is one Prometheus scrape."""

    def __init__(self, manager: QueueManager | AsyncQueueManager) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(QueueCollector(manager))
        self.samples: Samples = {}
        self.types: dict[str, str] = {}

    def scrape(self) -> Scraper:
        self.samples, self.types = parse(generate_latest(self.registry).decode())
        return self

    def get(self, name: str, queue: str, **labels: str) -> float | None:
        key = (name, tuple(sorted({"queue": queue, **labels}.items())))
        return self.samples.get(key)

    def counters(self, queue: str) -> dict[str, float | None]:
        return {name: self.get(name, queue) for name in COUNTERS}

    def gauges(self, queue: str) -> dict[str, float | None]:
        return {name: self.get(name, queue) for name in (*BACKEND_GAUGES, "queue_workers_busy")}

    def buckets(self, queue: str) -> dict[float, float]:
        return {
            float(dict(labels)["le"]): value
            for (name, labels), value in self.samples.items()
            if name == "queue_processing_duration_seconds_bucket" and dict(labels)["queue"] == queue
        }


def run_mixed_jobs(qm: QueueManager, queue: str) -> None:
    """3 jobs that succeed, 1 that fails once then succeeds, 1 that fails both its runs.

    Pushes 5 (2 with push, 3 with push_batch); 7 runs: 4 completed, 2 retried, 1 failed.
    """
    q = qm.create_queue(queue, max_retries=1, retry_delay=0.01, backoff="fixed")

    @q.process
    def handler(job: Job) -> str:
        kind = job.data["kind"]
        if kind == "bad" or (kind == "flaky" and job.attempts == 1):
            raise ValueError(f"{kind} job, attempt {job.attempts}")
        return "ok"

    q.push({"kind": "ok"})
    q.push({"kind": "flaky"})
    q.push_batch([{"data": {"kind": kind}} for kind in ("ok", "ok", "bad")])
    assert qm.join(queue, timeout=WAIT)


# -- what a scrape exports --------------------------------------------------------------------


def test_counters_and_histogram_count_pushes_runs_retries_and_failures(
    make_qm: Callable[..., QueueManager],
) -> None:
    qm = make_qm()
    run_mixed_jobs(qm, "mixed")
    scraper = Scraper(qm)
    expected = {
        "queue_jobs_total": 5.0,
        "queue_jobs_processed_total": 4.0,
        "queue_jobs_failed_total": 1.0,
        "queue_jobs_retried_total": 2.0,
    }
    # The counters are bumped as each run is settled, which join may see a moment before.
    wait_equal(lambda: scraper.scrape().counters("mixed"), expected, what="counters")
    assert {name: scraper.types.get(name) for name in FAMILIES} == FAMILIES

    buckets = scraper.buckets("mixed")
    assert sorted(buckets) == BOUNDS, "the contract's bucket bounds, and +Inf"
    counts = [buckets[bound] for bound in BOUNDS]
    assert counts == sorted(counts), f"buckets are cumulative: {counts}"
    assert buckets[math.inf] == 7.0, "every run is observed, whatever its outcome"
    assert scraper.get("queue_processing_duration_seconds_count", "mixed") == 7.0
    total = scraper.get("queue_processing_duration_seconds_sum", "mixed")
    assert total is not None and 0.0 < total < WAIT

    assert scraper.gauges("mixed") == {
        "queue_jobs_waiting": 0.0,
        "queue_jobs_delayed": 0.0,
        "queue_jobs_active": 0.0,
        "queue_paused": 0.0,
        "queue_workers_busy": 0.0,
    }


def test_a_run_lands_in_the_buckets_of_its_duration(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    q = qm.get_queue("slow")

    @q.process
    def handler(job: Job) -> None:
        time.sleep(0.03)  # the work: at least 30 ms

    qm.wait_for(q.push(None), timeout=WAIT)
    scraper = Scraper(qm)
    wait_equal(lambda: scraper.scrape().buckets("slow").get(math.inf), 1.0, what="+Inf bucket")
    buckets = scraper.buckets("slow")
    assert buckets[0.025] == 0.0, f"a 30 ms run is above le=0.025: {buckets}"
    assert buckets[0.0001] == 0.0
    total = scraper.get("queue_processing_duration_seconds_sum", "slow")
    assert total is not None and total >= 0.03


def test_gauges_show_waiting_delayed_and_paused(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    q = qm.get_queue("held")
    q.pause()
    ran = threading.Event()
    q.process(lambda job: ran.set())  # a handler that must not run: the queue is paused
    for i in range(3):
        q.push({"i": i})
    q.push({"later": True}, delay=3600)

    scraper = Scraper(qm).scrape()
    assert scraper.gauges("held") == {
        "queue_jobs_waiting": 3.0,
        "queue_jobs_delayed": 1.0,
        "queue_jobs_active": 0.0,
        "queue_paused": 1.0,
        "queue_workers_busy": 0.0,
    }
    assert scraper.get("queue_jobs_total", "held") == 4.0
    assert not ran.is_set()

    q.resume()
    wait_equal(lambda: scraper.scrape().get("queue_jobs_processed_total", "held"), 3.0)
    assert scraper.get("queue_paused", "held") == 0.0
    assert scraper.get("queue_jobs_waiting", "held") == 0.0
    assert scraper.get("queue_jobs_delayed", "held") == 1.0


def test_active_and_busy_count_running_handlers(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm()
    q = qm.create_queue("busy", concurrency=2)
    started = threading.Semaphore(0)
    release = threading.Event()

    @q.process
    def handler(job: Job) -> None:
        started.release()
        release.wait(WAIT)

    for i in range(3):
        q.push({"i": i})
    try:
        assert started.acquire(timeout=WAIT) and started.acquire(timeout=WAIT)
        scraper = Scraper(qm).scrape()
        assert scraper.get("queue_workers_busy", "busy") == 2.0
        assert scraper.get("queue_jobs_active", "busy") == 2.0
        assert scraper.get("queue_jobs_waiting", "busy") == 1.0
    finally:
        release.set()
    assert qm.join("busy", timeout=WAIT)
    wait_equal(lambda: Scraper(qm).scrape().get("queue_workers_busy", "busy"), 0.0)


def test_metrics_false_counts_nothing_but_still_reads_the_gauges(
    make_qm: Callable[..., QueueManager],
) -> None:
    qm = make_qm(metrics=False)
    run_mixed_jobs(qm, "quiet")
    q = qm.get_queue("quiet")
    q.pause()
    q.push({"kind": "ok"})
    scraper = Scraper(qm).scrape()
    for name in COUNTERS:
        assert scraper.get(name, "quiet") in (None, 0.0), name
    assert scraper.buckets("quiet").get(math.inf) in (None, 0.0)
    assert scraper.get("queue_jobs_waiting", "quiet") == 1.0
    assert scraper.get("queue_paused", "quiet") == 1.0


def test_an_async_manager_has_the_same_metrics(make_aqm: Callable[..., AsyncQueueManager]) -> None:
    async def main() -> Scraper:
        aqm = make_aqm()
        q = await aqm.create_queue("async-q", max_retries=0)

        @q.process
        async def handler(job: Job) -> None:
            if job.data["fail"]:
                raise RuntimeError("boom")

        for fail in (False, False, True):
            await q.push({"fail": fail})
        assert await aqm.join("async-q", timeout=WAIT)
        return Scraper(aqm)

    scraper = run_async(main())
    wait_equal(
        lambda: scraper.scrape().counters("async-q"),
        {
            "queue_jobs_total": 3.0,
            "queue_jobs_processed_total": 2.0,
            "queue_jobs_failed_total": 1.0,
            "queue_jobs_retried_total": 0.0,
        },
    )
    assert scraper.buckets("async-q")[math.inf] == 3.0


def test_the_collector_lives_in_the_registry_it_is_given(manager_pool: ManagerPool) -> None:
    qm = manager_pool.open(backend="memory")
    qm.push("private", {"n": 1})
    registry = CollectorRegistry()
    collector = QueueCollector(qm)
    registry.register(collector)
    assert b'queue_jobs_total{queue="private"} 1.0' in generate_latest(registry)
    assert b"queue_jobs_total" not in generate_latest(REGISTRY), "the global registry is untouched"
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(QueueCollector(qm))  # describe() named its series
    registry.unregister(collector)
    assert b"queue_jobs_total" not in generate_latest(registry)


def test_a_closed_manager_exports_its_last_counters_quietly(
    manager_pool: ManagerPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rnode_queue")
    qm = manager_pool.open(backend="memory")
    qm.push("closing", None)
    scraper = Scraper(qm).scrape()
    qm.close(timeout=WAIT)
    scraper.scrape()  # a scrape during the worker's shutdown
    assert scraper.get("queue_jobs_total", "closing") == 1.0
    assert scraper.get("queue_jobs_waiting", "closing") is None
    assert metric_warnings(caplog) == []


# -- a collector over a stand-in engine: the calls it makes, a backend that is down ------------


class FakeEngine:
    """Answers ``metrics()`` with ``rows``, or raises while ``down`` is set; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.down = False
        self.rows: list[dict[str, Any]] = [self.row("a", pushed=3, waiting=2)]

    @staticmethod
    def row(queue: str, pushed: int = 0, **gauges: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "queue": queue,
            "pushed": pushed,
            "processed": 1,
            "failed": 0,
            "retried": 0,
            "duration_buckets": [(bound, 1 if bound >= 0.01 else 0) for bound in BOUNDS],
            "duration_sum": 0.007,
            "duration_count": 1,
            "busy": 0,
            "waiting": 0,
            "delayed": 0,
            "active": 0,
            "paused": False,
        }
        row.update(gauges)
        return row

    def metrics(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.down:
            raise ConnectionError("Connection refused (os error 111)")
        return [dict(row) for row in self.rows]


class FakeManager:
    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine


def metric_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rnode_queue" and r.levelno == logging.WARNING and "metrics" in r.getMessage()
    ]


def test_one_engine_call_per_scrape_and_none_to_register() -> None:
    engine = FakeEngine()
    scraper = Scraper(FakeManager(engine))  # type: ignore[arg-type]
    assert engine.calls == 0, "registering must not reach the backend"
    scraper.scrape()
    assert engine.calls == 1
    assert scraper.get("queue_jobs_total", "a") == 3.0
    assert scraper.get("queue_jobs_waiting", "a") == 2.0
    assert scraper.buckets("a")[0.01] == 1.0 and scraper.buckets("a")[0.005] == 0.0
    scraper.scrape()
    assert engine.calls == 2


def test_a_scrape_while_the_backend_is_down_keeps_the_counters_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="rnode_queue")
    engine = FakeEngine()
    scraper = Scraper(FakeManager(engine)).scrape()  # type: ignore[arg-type]
    engine.rows = [FakeEngine.row("a", pushed=5, waiting=4)]
    engine.down = True
    for _ in range(3):
        scraper.scrape()  # no exception: Prometheus gets a 200
        assert scraper.get("queue_jobs_total", "a") == 3.0, "the last counters that answered"
        assert scraper.get("queue_processing_duration_seconds_count", "a") == 1.0
        assert scraper.gauges("a") == dict.fromkeys(scraper.gauges("a")), "no gauge at all"
    warnings = metric_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "ConnectionError" in warnings[0] and "Connection refused" in warnings[0]

    engine.down = False
    scraper.scrape()
    assert scraper.get("queue_jobs_total", "a") == 5.0
    assert scraper.get("queue_jobs_waiting", "a") == 4.0
    assert any("works again" in r.getMessage() for r in caplog.records)
    engine.down = True
    scraper.scrape()
    assert len(metric_warnings(caplog)) == 2, "a new outage is logged again"


def test_a_queue_without_backend_gauges_still_exports_its_counters() -> None:
    engine = FakeEngine()
    engine.rows = [
        FakeEngine.row("gone", pushed=7, waiting=None, delayed=None, active=None, paused=None),
        FakeEngine.row("here", pushed=1, paused=True),
    ]
    scraper = Scraper(FakeManager(engine)).scrape()  # type: ignore[arg-type]
    assert scraper.get("queue_jobs_total", "gone") == 7.0
    assert [scraper.get(name, "gone") for name in BACKEND_GAUGES] == [None] * 4
    assert scraper.get("queue_workers_busy", "gone") == 0.0
    assert scraper.get("queue_paused", "here") == 1.0


@pytest.mark.skipif("redis" not in ENABLED_BACKENDS, reason="the 'redis' backend is not enabled")
def test_redis_down_during_a_scrape(
    restartable_redis: RedisServer, manager_pool: ManagerPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    qm = manager_pool.open(backend="redis", url=restartable_redis.url, prefix="down", lease=1.0)
    q = qm.get_queue("work")
    q.process(lambda job: None)
    qm.wait_for(q.push(None), timeout=WAIT)
    scraper = Scraper(qm)
    wait_equal(lambda: scraper.scrape().get("queue_jobs_processed_total", "work"), 1.0)
    assert scraper.get("queue_jobs_waiting", "work") == 0.0

    restartable_redis.kill()
    scraper.scrape()
    assert scraper.get("queue_jobs_total", "work") == 1.0
    assert scraper.get("queue_jobs_processed_total", "work") == 1.0
    assert scraper.get("queue_jobs_waiting", "work") is None, "no gauge without Redis"
    assert len(metric_warnings(caplog)) == 1, metric_warnings(caplog)

    restartable_redis.start()
    wait_until(
        lambda: scraper.scrape().get("queue_jobs_waiting", "work") == 0.0,
        timeout=20,
        what="the gauges come back with Redis",
    )


# -- serving /metrics -------------------------------------------------------------------------


def test_serve_metrics_answers_http_get_until_stopped(manager_pool: ManagerPool) -> None:
    qm = manager_pool.open(backend="memory")
    qm.push("served", {"n": 1})
    port = free_port()
    stop = serve_metrics(qm, port, host="127.0.0.1")
    try:
        assert stop.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            samples, _ = parse(answer.read().decode())
        assert samples[("queue_jobs_total", (("queue", "served"),))] == 1.0
        assert samples[("queue_jobs_waiting", (("queue", "served"),))] == 1.0
        assert all(name.startswith("queue_") for name, _ in samples), "only the queue metrics"
    finally:
        stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT)
    stop()  # a second call does nothing
    again = serve_metrics(qm, port, host="127.0.0.1")  # the port was freed
    again()


def test_serve_metrics_on_port_zero_tells_its_port(manager_pool: ManagerPool) -> None:
    aqm = manager_pool.open_async(backend="memory")
    stop = serve_metrics(aqm, 0, host="127.0.0.1")
    try:
        assert stop.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{stop.port}/metrics", timeout=WAIT) as r:
            assert b"# TYPE queue_jobs_total counter" in r.read()
    finally:
        stop()


# -- per process vs shared --------------------------------------------------------------------


@pytest.mark.skipif("redis" not in ENABLED_BACKENDS, reason="the 'redis' backend is not enabled")
def test_counters_are_per_process_and_gauges_come_from_redis(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    worker = manager_pool.open(**redis_kwargs)
    reader = manager_pool.open(**redis_kwargs)  # pushes nothing, runs nothing: only reads
    at_worker, at_reader = Scraper(worker), Scraper(reader)
    q = worker.get_queue("shared")
    q.pause()
    for i in range(3):
        q.push({"i": i})

    at_reader.scrape()
    assert at_reader.get("queue_jobs_waiting", "shared") == 3.0, "the reader sees Redis"
    assert at_reader.get("queue_paused", "shared") == 1.0
    assert at_reader.get("queue_jobs_total", "shared") in (None, 0.0), "it pushed nothing"
    assert at_worker.scrape().get("queue_jobs_total", "shared") == 3.0

    started = threading.Semaphore(0)
    release = threading.Event()

    def handler(job: Job) -> None:
        started.release()
        release.wait(WAIT)

    worker.create_queue("shared", concurrency=1)
    q.process(handler)
    q.resume()
    try:
        assert started.acquire(timeout=WAIT)
        at_reader.scrape()
        assert at_reader.get("queue_jobs_active", "shared") == 1.0
        assert at_reader.get("queue_jobs_waiting", "shared") == 2.0
        assert at_reader.get("queue_workers_busy", "shared") in (None, 0.0)
        assert at_worker.scrape().get("queue_workers_busy", "shared") == 1.0
    finally:
        release.set()
    assert worker.join("shared", timeout=WAIT)
    wait_equal(lambda: at_worker.scrape().get("queue_jobs_processed_total", "shared"), 3.0)
    at_reader.scrape()
    assert at_reader.get("queue_jobs_processed_total", "shared") in (None, 0.0)
    assert at_reader.get("queue_jobs_active", "shared") == 0.0
