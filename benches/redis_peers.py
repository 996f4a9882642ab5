"""Benchmark of the popular Redis job queues ("peers") on a given Redis server.

    python benches/redis_peers.py --url redis://127.0.0.1:6379/0 [--jobs 2000] [--pushes 2000]
                                  [--peer rq --peer bullmq ...] [--handler count|roundtrip|both]
                                  [--timeout 120]

``benches/redis.py`` imports this module to print the peers beside rnode-queue's own Redis
figures as ratios (``available``, ``end_to_end_detail``, ``push_latency``); the CLI prints them
alone. Python peers (``pip install rnode-queue[bench]``): RQ with ``SimpleWorker`` (no fork per
job), arq, dramatiq (``RedisBroker``), huey (``RedisHuey``) and celery (Redis broker, no result
backend). BullMQ (Node.js): when ``node`` and ``npm`` are installed, the versions pinned in
``benches/bullmq/package.json`` are installed once into ``benches/bullmq/node_modules``
(``npm ci``); without them it is skipped with a note (``benches/redis_bullmq.py``).

Figures, per peer, with a no-op job (no arguments, returns None) whose handler is either:

* ``roundtrip`` (default): the job INCRs a counter key, one Redis round trip: what users see
  of a job that does any I/O, the same work for every peer;
* ``count``: the job counts in the worker process (a locked global in Python, a variable in
  Node), no Redis call: the queue's own cost.

1. end-to-end jobs/s. One worker process is started with the peer's own entry point
   (``rq worker``, ``arq``, ``dramatiq``, ``huey_consumer``, ``celery worker``, BullMQ's
   ``Worker`` in ``node benches/bullmq/bench.mjs worker``), as users deploy it, and warmed up
   with a few jobs. Then the clock starts, N jobs are enqueued from this process (RQ:
   ``Queue.enqueue_many`` in pipelines of 1,000; arq: ``enqueue_job`` under ``asyncio.gather``
   in groups of 100; BullMQ: ``Queue.addBulk`` in chunks of 1,000 from a Node producer process
   started and connected beforehand, driven over a pipe; the others have no bulk API: a loop of
   single sends), and the clock stops when the last job has run. The worker consumes while the
   jobs are being enqueued, as in production. Start-up of the worker (interpreter, imports,
   connections) is not timed: it is a one-off cost of a long-lived worker.
2. steady jobs/s: the jobs done between the 10% and the 90% marks of the same run (jobs N/10
   and N - N/10), over the time between them. Each of the two jobs RPUSHes a mark stamped with
   the worker's monotonic clock (both stamps from one process: no clock is compared across
   processes; this process is still enqueueing at the 10% mark, so it could not stamp it on
   time itself). It leaves out the ramp-up and the tail of the run.
3. single-push latency p50 / p99: M jobs pushed one at a time with the peer's plain enqueue
   call (no worker running), ``time.perf_counter_ns`` around each call (BullMQ: ``Queue.add``
   timed in Node with ``process.hrtime``), after 100 untimed warm-up pushes; connections are
   set up before.

Completion is detected without sleep-and-hope: every job gets a number, the value returned by
its INCR (roundtrip) or the worker's count (count; the worker is one process), warm-up
included; the jobs whose number ends the warm-up or the run RPUSH a "done" list, those at the
10% and 90% marks a "marks" list (a table generated for the run: one set lookup per job). The
runner waits on each with BLPOP, in 1 s slices that watch the worker, up to a timeout that
raises an error naming the event, the progress and the worker's log.

Fairness: no peer stores the (None) result, except RQ: arq ``keep_result=0``, celery
``ignore_result`` and no result backend, huey ``results=False``, dramatiq has no result
middleware by default, BullMQ adds its jobs with ``removeOnComplete: true`` (the finished job
is deleted); RQ keeps its default ``result_ttl`` (500 s), measured ~20% faster here than
``result_ttl=0``, whose deletion of the finished job costs it more than keeping it. No per-job
logging (worker log level WARNING). Otherwise each peer runs with its defaults except the
documented knobs noted in ``_WORKER_NOTES`` (arq polls its queue every 0.5 s by default, which
alone caps it at ~200 jobs/s here; it gets 0.01 s; BullMQ's ``Worker`` runs 1 job at a time by
default; it gets the concurrency in ``redis_bullmq.CONCURRENCY``, the best of those measured
here; BullMQ keeps its events stream, trimmed to ~10,000 entries, as deployed). The celery
producer holds one connection (``app.producer_or_acquire()``, passed as ``producer=``): faster
than both plain ``apply_async`` and ``group(...).apply_async()``. RQ and arq get job ids under
the run's key prefix instead of their own uuid4 (a negligible saving for them). The roundtrip
handler's INCR goes through the client that the peer hands to jobs where it has one (arq's
``ctx["redis"]``), else through one client of the worker's own (redis-py; ioredis in Node).

Hygiene: each run uses a fresh key prefix ``rnqbench<uuid hex>`` (queue names, namespaces, job
ids, celery's ``global_keyprefix``, BullMQ's ``prefix``), and afterwards deletes the keys
matching ``*<prefix>*`` (SCAN + DEL) and removes its own members from the peers' shared sets
(e.g. ``rq:queues``). It never flushes a database, so it may point at a shared Redis. The task
module that the Python workers import is generated into a temporary directory (on their
PYTHONPATH) and deleted afterwards; worker processes and BullMQ's producer are always stopped
(SIGTERM or "quit", then SIGKILL to their process group).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_HERE = os.path.dirname(os.path.realpath(__file__))
try:
    import _common as C
    import redis_bullmq as B
except ImportError:  # imported from elsewhere: appended, so that nothing here shadows a package
    sys.path.append(_HERE)
    import _common as C
    import redis_bullmq as B

PEERS: tuple[str, ...] = ("rq", "arq", "dramatiq", "huey", "celery", "bullmq")
# What the job does: one Redis round trip (INCR), or count in the worker process (no Redis call).
HANDLERS: tuple[str, ...] = ("roundtrip", "count")

DEFAULT_TIMEOUT = 120.0  # seconds for one phase (worker start-up, or the N jobs)
WARMUP_JOBS = 20  # run through the worker before the clock starts
WARMUP_PUSHES = 100  # untimed pushes before the latency samples
RQ_BATCH = 1000  # jobs per Queue.enqueue_many call (one Redis pipeline each)
ARQ_GATHER = 100  # enqueue_job coroutines per asyncio.gather (each holds a pooled connection)
STOP_GRACE = 10.0  # seconds a worker gets to exit after SIGTERM before SIGKILL
MIN_JOBS = 10  # N for end-to-end: the 10% and 90% marks must be distinct jobs
MARK_TIMEOUT = 10.0  # seconds to wait for the marks once the last job has signalled

_INSTALL_HINT = "pip install rnode-queue[bench]"

# Modules that must be importable for each peer besides redis-py (module name, pip name).
_REQUIRES: dict[str, tuple[tuple[str, str], ...]] = {
    "rq": (("rq", "rq"),),
    "arq": (("arq", "arq"),),
    "dramatiq": (("dramatiq", "dramatiq[redis]"),),
    "huey": (("huey", "huey"),),
    "celery": (("celery", "celery[redis]"), ("kombu", "kombu")),
}

# Environment variables that a peer reads in preference to the URL given in its configuration.
_OVERRIDING_ENV: dict[str, tuple[str, ...]] = {
    "celery": (
        "CELERY_BROKER_URL",
        "CELERY_BROKER_READ_URL",
        "CELERY_BROKER_WRITE_URL",
        "CELERY_RESULT_BACKEND",
    ),
}

# How the worker of each peer is run (one process; in-process concurrency suited to no-op jobs).
_WORKER_NOTES: dict[str, str] = {
    "rq": "rq worker -w SimpleWorker (1 process, 1 job at a time, no fork per job)",
    "arq": "arq worker, max_jobs=10 (default), poll_delay=0.01 s (default 0.5 s)",
    "dramatiq": "dramatiq --processes 1 --threads 8",
    "huey": "huey_consumer -k thread -w 4",
    # solo and threads were measured on 2 cores: solo is faster for no-op jobs (no thread hand-off)
    "celery": "celery worker --pool solo, default prefetch, no gossip/mingle/heartbeat",
    "bullmq": B.NOTES,
}

# --------------------------------------------------------------------------- redis-py


def _is_here(entry: str) -> bool:
    try:
        return os.path.realpath(entry or os.curdir) == _HERE
    except (OSError, ValueError):
        return False


def _redis_py() -> Any:
    """redis-py (the ``redis`` package), loaded into ``sys.modules`` for the peers too.

    ``benches/redis.py`` sits beside this file, so a plain ``import redis`` made while this
    directory is on ``sys.path`` (it is ``sys.path[0]`` when a script here runs) would import
    that benchmark instead: redis-py is imported once with this directory left out.
    """
    module = sys.modules.get("redis")
    if module is None:
        saved = sys.path[:]
        sys.path[:] = [entry for entry in saved if not _is_here(entry)]
        try:
            module = importlib.import_module("redis")
        finally:
            sys.path[:] = saved
    if not hasattr(module, "StrictRedis"):
        where = getattr(module, "__file__", "?")
        raise RuntimeError(f"'redis' is {where}, not redis-py: import redis-py before it")
    return module


# --------------------------------------------------------------------------- signals


def _mark_jobs(n: int) -> tuple[int, int]:
    """The jobs (1-based, within the run's ``n``) whose completion marks 10% and 90% done."""
    return n // 10, n - n // 10


def _signals(n: int, done: str, marks: str) -> dict[int, tuple[str, str]]:
    """Job number (warm-up included) -> (list, label) that the job RPUSHes, with a time stamp:
    the end of the warm-up and of the run onto ``done``, the 10% and 90% marks onto ``marks``."""
    table = {WARMUP_JOBS: (done, "warm")}
    if n:
        n10, n90 = _mark_jobs(n)
        table[WARMUP_JOBS + n10] = (marks, "10")
        table[WARMUP_JOBS + n90] = (marks, "90")
        table[WARMUP_JOBS + n] = (done, "done")
    return table


# --------------------------------------------------------------------------- generated task module

_TASKS_HEADER = '''\
"""Tasks generated by benches/redis_peers.py for one run; deleted afterwards."""

import threading
import time

import redis

URL = {url!r}
PREFIX = {prefix!r}
COUNTER = {counter!r}
# roundtrip: the job INCRs COUNTER; count: it counts in this (the only) worker process.
ROUNDTRIP = {roundtrip!r}
# Job number (warm-up included) -> (list, label): that job RPUSHes "label <monotonic ns>".
SIGNALS = {signals!r}
_client = redis.Redis.from_url(URL)
_lock = threading.Lock()
_jobs = 0


def _tick():
    global _jobs
    with _lock:
        _jobs += 1
        return _jobs


def _signal(number):
    key, label = SIGNALS[number]
    _client.rpush(key, "%s %d" % (label, time.monotonic_ns()))


def _count():
    # The handler's only work: number the job (one INCR, or in process), and signal the end of
    # the warm-up, the 10% and 90% marks and the end of the run.
    number = _client.incr(COUNTER) if ROUNDTRIP else _tick()
    if number in SIGNALS:
        _signal(number)
'''

_TASKS: dict[str, str] = {
    "rq": """

def noop():
    _count()
""",
    "arq": """
from arq.connections import RedisSettings


async def noop(ctx):
    redis_ = ctx["redis"]
    number = await redis_.incr(COUNTER) if ROUNDTRIP else _tick()
    if number in SIGNALS:
        key, label = SIGNALS[number]
        await redis_.rpush(key, "%s %d" % (label, time.monotonic_ns()))


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(URL)
    queue_name = PREFIX
    health_check_key = PREFIX + ":health-check"
    keep_result = 0
    # Documented knob: the default 0.5 s between polls of the queue caps arq at ~200 jobs/s.
    poll_delay = 0.01


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}
""",
    "dramatiq": """
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=URL, namespace=PREFIX)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def noop():
    _count()
""",
    "huey": """
from huey import RedisHuey

huey = RedisHuey(PREFIX, url=URL, results=False)


@huey.task()
def noop():
    _count()
""",
    "celery": """
from celery import Celery

app = Celery(PREFIX, broker=URL, set_as_current=False)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX + ":"},
    broker_connection_retry_on_startup=True,
    task_default_queue=PREFIX,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)


@app.task(ignore_result=True)
def noop():
    _count()
""",
}


def _worker_cmd(peer: str, module: str, url: str, prefix: str) -> list[str]:
    """The peer's own worker entry point, run with this interpreter (``python -m ...``)."""
    if peer == "rq":
        args = ["rq.cli", "worker", "--worker-class", "rq.worker.SimpleWorker", "--url", url]
        args += ["--name", f"{prefix}-worker", "--logging_level", "WARNING", prefix]
    elif peer == "arq":
        args = ["arq", "--custom-log-dict", f"{module}.LOG_CONFIG", f"{module}.WorkerSettings"]
    elif peer == "dramatiq":
        args = ["dramatiq", module, "--processes", "1", "--threads", "8"]
    elif peer == "huey":
        args = ["huey.bin.huey_consumer", f"{module}.huey", "-k", "thread", "-w", "4", "-q"]
    elif peer == "celery":
        args = ["celery", "-A", module, "worker", "--pool", "solo", "--loglevel", "WARNING"]
        args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        args += ["--queues", prefix, "--hostname", f"{prefix}@%h"]
    else:
        raise ValueError(f"unknown peer {peer!r}")
    return [sys.executable, "-m", *args]


# Shared (not per-run) set keys in which a peer registers members named after the run.
_SHARED_SETS: dict[str, tuple[str, ...]] = {
    "rq": ("rq:queues", "rq:workers"),
}
# Shared throttle locks (SET NX EX) that a peer's worker may create: deleted afterwards only if
# absent before the run (at worst another deployment of the peer then runs its cleanup early).
_SHARED_LOCKS: dict[str, tuple[str, ...]] = {
    "rq": ("rq:clean_groups",),
}

# --------------------------------------------------------------------------- producers


class _Producer:
    """Enqueues no-op jobs of one peer from this process (connections opened up front)."""

    def enqueue(self, job_ids: list[str]) -> None:
        """Enqueue len(job_ids) jobs, in bulk where the peer can."""
        raise NotImplementedError

    def push(self, job_id: str) -> None:
        """Enqueue one job with the peer's plain call (job_id is used by peers that need it)."""
        raise NotImplementedError

    def push_latencies(self, job_ids: list[str]) -> list[int]:
        push, pc = self.push, time.perf_counter_ns
        samples = [0] * len(job_ids)
        for i, job_id in enumerate(job_ids):
            t0 = pc()
            push(job_id)
            samples[i] = pc() - t0
        return samples

    def close(self) -> None:
        pass


class _RqProducer(_Producer):
    def __init__(self, tasks: Any, url: str, prefix: str) -> None:
        from rq import Queue  # type: ignore[import-untyped,unused-ignore]

        self._connection: Any = _redis_py().Redis.from_url(url)
        self._queue: Any = Queue(prefix, connection=self._connection)
        self._prepare: Any = Queue.prepare_data
        self._fn = tasks.noop

    def enqueue(self, job_ids: list[str]) -> None:
        prepare, fn, queue = self._prepare, self._fn, self._queue
        for start in range(0, len(job_ids), RQ_BATCH):
            chunk = job_ids[start : start + RQ_BATCH]
            queue.enqueue_many([prepare(fn, job_id=j) for j in chunk])

    def push(self, job_id: str) -> None:
        self._queue.enqueue(self._fn, job_id=job_id)

    def close(self) -> None:
        self._connection.close()


class _ArqProducer(_Producer):
    def __init__(self, tasks: Any, url: str, prefix: str) -> None:
        from arq import create_pool  # type: ignore[import-untyped,unused-ignore]
        from arq.connections import RedisSettings  # type: ignore[import-untyped,unused-ignore]

        self._loop = asyncio.new_event_loop()
        settings = RedisSettings.from_dsn(url)
        self._pool: Any = self._loop.run_until_complete(
            create_pool(settings, default_queue_name=prefix)
        )

    def enqueue(self, job_ids: list[str]) -> None:
        enqueue = self._pool.enqueue_job

        async def run() -> None:
            for start in range(0, len(job_ids), ARQ_GATHER):
                chunk = job_ids[start : start + ARQ_GATHER]
                await asyncio.gather(*(enqueue("noop", _job_id=j) for j in chunk))

        self._loop.run_until_complete(run())

    def push(self, job_id: str) -> None:
        self._loop.run_until_complete(self._pool.enqueue_job("noop", _job_id=job_id))

    def push_latencies(self, job_ids: list[str]) -> list[int]:
        # Timed inside one coroutine: the event loop is already running, as in an async app.
        enqueue, pc = self._pool.enqueue_job, time.perf_counter_ns

        async def run() -> list[int]:
            samples = [0] * len(job_ids)
            for i, job_id in enumerate(job_ids):
                t0 = pc()
                await enqueue("noop", _job_id=job_id)
                samples[i] = pc() - t0
            return samples

        return self._loop.run_until_complete(run())

    def close(self) -> None:
        try:
            close = getattr(self._pool, "aclose", None) or self._pool.close
            self._loop.run_until_complete(close())
        finally:
            self._loop.close()


class _DramatiqProducer(_Producer):
    def __init__(self, tasks: Any, url: str, prefix: str) -> None:
        self._broker = tasks.broker
        self._send = tasks.noop.send

    def enqueue(self, job_ids: list[str]) -> None:
        send = self._send
        for _ in job_ids:
            send()

    def push(self, job_id: str) -> None:
        self._send()

    def close(self) -> None:
        self._broker.close()


class _HueyProducer(_Producer):
    def __init__(self, tasks: Any, url: str, prefix: str) -> None:
        self._huey = tasks.huey
        self._call = tasks.noop  # calling a huey task enqueues it

    def enqueue(self, job_ids: list[str]) -> None:
        call = self._call
        for _ in job_ids:
            call()

    def push(self, job_id: str) -> None:
        self._call()

    def close(self) -> None:
        self._huey.storage.conn.connection_pool.disconnect()


class _CeleryProducer(_Producer):
    def __init__(self, tasks: Any, url: str, prefix: str) -> None:
        self._app = tasks.app
        self._apply = tasks.noop.apply_async
        # One producer (and connection) held for the whole run, as documented for sending many
        # tasks; without it every apply_async acquires one from the pool.
        self._held = contextlib.ExitStack()
        self._producer = self._held.enter_context(self._app.producer_or_acquire())

    def enqueue(self, job_ids: list[str]) -> None:
        apply, producer = self._apply, self._producer
        for _ in job_ids:
            apply(producer=producer)

    def push(self, job_id: str) -> None:
        self._apply(producer=self._producer)

    def close(self) -> None:
        try:
            self._held.close()
        finally:
            self._app.close()


class _BullmqProducer(_Producer):
    """BullMQ's Node producer (``benches/redis_bullmq.py``): bulk and single adds, timed in Node."""

    def __init__(self, url: str, prefix: str, timeout: float, log_path: str) -> None:
        self._node = B.Producer(url, prefix, timeout, log_path)

    def enqueue(self, job_ids: list[str]) -> None:
        self._node.enqueue(len(job_ids))

    def push(self, job_id: str) -> None:
        self._node.push_latencies(1)

    def push_latencies(self, job_ids: list[str]) -> list[int]:
        return self._node.push_latencies(len(job_ids))

    def close(self) -> None:
        self._node.close()


# The Python peers' producers (BullMQ's is built apart: it needs no task module).
_PRODUCERS: dict[str, Callable[[Any, str, str], _Producer]] = {
    "rq": _RqProducer,
    "arq": _ArqProducer,
    "dramatiq": _DramatiqProducer,
    "huey": _HueyProducer,
    "celery": _CeleryProducer,
}

# --------------------------------------------------------------------------- one run


class _Run:
    """One peer run: key prefix, generated task module, producer, workers; all undone on close."""

    def __init__(
        self, peer: str, url: str, timeout: float, *, handler: str = "roundtrip", jobs: int = 0
    ) -> None:
        if peer not in PEERS:
            raise ValueError(f"unknown peer {peer!r} (known: {', '.join(PEERS)})")
        if handler not in HANDLERS:
            raise ValueError(f"unknown handler {handler!r} (known: {', '.join(HANDLERS)})")
        reason = available(peer)
        if reason is not None:
            raise RuntimeError(f"{peer}: {reason}")
        self.peer = peer
        self.url = url
        self.timeout = timeout
        self.handler = handler
        # Letters and digits only: huey strips anything else from its queue name, RQ job ids take
        # no ":", and a glob pattern needs no escaping.
        self.prefix = f"rnqbench{uuid.uuid4().hex}"
        self.counter = f"{self.prefix}:count"
        self.done = f"{self.prefix}:done"
        self.marks = f"{self.prefix}:marks"
        self.signals = _signals(jobs, self.done, self.marks)
        self.module_name = f"rnqbench_tasks_{self.prefix[8:]}"
        self._ids = 0
        self._workers: list[subprocess.Popen[bytes]] = []
        self._stack = contextlib.ExitStack()
        try:
            self.client: Any = _redis_py().Redis.from_url(url)
            self._stack.callback(self.client.close)
            self.client.ping()
            self._new_locks = [k for k in _SHARED_LOCKS.get(peer, ()) if not self.client.exists(k)]
            self._stack.callback(self._delete_keys)
            tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="rnqbench-"))
            self.tmpdir = tmp
            self.log_path = os.path.join(tmp, "worker.log")
            self.producer: _Producer
            if peer == "bullmq":
                self.tasks: Any = None
                log = os.path.join(tmp, "producer.log")
                self.producer = _BullmqProducer(url, self.prefix, timeout, log)
            else:
                self.tasks = self._import_tasks()
                self.producer = _PRODUCERS[peer](self.tasks, url, self.prefix)
            self._stack.callback(self.producer.close)
            self._stack.callback(self._stop_workers)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def job_ids(self, count: int) -> list[str]:
        start, self._ids = self._ids, self._ids + count
        return [f"{self.prefix}-{i}" for i in range(start, start + count)]  # RQ: [A-Za-z0-9_-]

    def _import_tasks(self) -> Any:
        path = os.path.join(self.tmpdir, f"{self.module_name}.py")
        source = _TASKS_HEADER.format(
            url=self.url,
            prefix=self.prefix,
            counter=self.counter,
            roundtrip=self.handler == "roundtrip",
            signals=self.signals,
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(source + _TASKS[self.peer])
        spec = importlib.util.spec_from_file_location(self.module_name, path)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot import the generated task module {path}")
        module = importlib.util.module_from_spec(spec)
        # Registered under its name: RQ and celery name the task after its module.
        sys.modules[self.module_name] = module
        self._stack.callback(sys.modules.pop, self.module_name, None)
        spec.loader.exec_module(module)
        self._stack.callback(self._close_task_client, module)
        return module

    @staticmethod
    def _close_task_client(module: Any) -> None:
        module._client.close()

    # ---------------------------------------------------------------- workers

    def start_worker(self) -> None:
        env = dict(os.environ)
        # The task module's directory first; never this one (benches/redis.py would be `redis`).
        inherited = env.get("PYTHONPATH", "").split(os.pathsep)
        paths = [self.tmpdir, *(p for p in inherited if p and not _is_here(p))]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        if self.peer == "bullmq":
            cmd = B.worker_cmd(self.url, self.prefix, self.handler, self.counter, self.signals)
        else:
            cmd = _worker_cmd(self.peer, self.module_name, self.url, self.prefix)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=self.tmpdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with all its children
            )
        self._workers.append(proc)

    def _stop_workers(self) -> None:
        """SIGTERM to each worker's main process (it stops its own children), SIGKILL to the
        whole process group of one that has not exited after STOP_GRACE seconds."""
        workers, self._workers = self._workers, []
        for proc in workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # Not reaped yet, so its process group id cannot have been reused.
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                proc.wait(timeout=STOP_GRACE)

    def worker_log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            return "(no worker log)"
        text = text.strip()
        return text[-chars:] if text else "(worker log empty)"

    # ---------------------------------------------------------------- completion

    def wait_signal(
        self, key: str, labels: tuple[str, ...], what: str, timeout: float | None = None
    ) -> tuple[str, int]:
        """BLPOP the next signal from ``key``, one of ``labels``: (label, time stamp in ns of the
        worker's monotonic clock). RuntimeError if the worker exits or ``timeout`` passes."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            # 1 s slices (integer timeout: BLPOP of Redis < 6 takes no fraction) to watch the
            # workers and the deadline; BLPOP itself returns as soon as the job signals.
            popped = self.client.blpop([key], timeout=1)
            if popped is not None:
                got, _, stamp = popped[1].decode().partition(" ")
                if got not in labels:
                    raise RuntimeError(f"{self.peer}: unexpected signal {got!r} {what}")
                return got, int(stamp)
            for proc in self._workers:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{self.peer}: worker exited with code {proc.returncode} {what} "
                        f"({self._progress()}); worker log:\n{self.worker_log_tail()}"
                    )
            if time.monotonic() >= deadline:
                limit = self.timeout if timeout is None else timeout
                raise RuntimeError(
                    f"{self.peer}: no {'/'.join(labels)} signal {what} within {limit:g} s "
                    f"({self._progress()}); worker log:\n{self.worker_log_tail()}"
                )

    def _progress(self) -> str:
        if self.handler != "roundtrip":
            return "count handler: no Redis counter shows the progress"
        try:
            value = int(self.client.get(self.counter) or 0)
        except Exception as exc:  # progress is only a hint in an error message
            return f"progress unknown: {exc}"
        return f"{value} jobs done, the {WARMUP_JOBS} of the warm-up included"

    # ---------------------------------------------------------------- cleanup

    def _delete_keys(self) -> None:
        """Delete this run's keys (SCAN by prefix) and its members of the peer's shared sets."""
        client, prefix = self.client, self.prefix
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
        needle = prefix.encode()
        for key in _SHARED_SETS.get(self.peer, ()):
            if client.type(key) != b"set":
                continue
            members = [m for m in client.sscan_iter(key, count=1000) if needle in m]
            if members:
                client.srem(key, *members)
        if self._new_locks:
            client.delete(*self._new_locks)


# --------------------------------------------------------------------------- public API


def available(peer: str) -> str | None:
    """None if ``peer`` can be benchmarked here, else a short reason.

    For bullmq: Node.js and npm must be installed; the pinned npm packages are installed into
    ``benches/bullmq/node_modules`` on the first call if absent (``npm ci``).
    """
    if peer not in PEERS:
        return f"unknown peer (known: {', '.join(PEERS)})"
    try:
        _redis_py()
    except ImportError:
        return f"not installed (redis): {_INSTALL_HINT}"
    except RuntimeError as exc:
        return str(exc)
    if peer == "bullmq":
        return B.ensure_installed()
    for module, dist in _REQUIRES[peer]:
        # kombu replaces its module in sys.modules by one without __spec__ (find_spec raises)
        try:
            found = module in sys.modules or importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"not installed ({dist}): {_INSTALL_HINT}"
    for var in _OVERRIDING_ENV.get(peer, ()):
        if os.environ.get(var):
            return f"{var} is set: it would override the benchmark's Redis URL (unset it)"
    return None


def version(peer: str) -> str | None:
    """Installed version of the peer's distribution (bullmq: its npm package), or None."""
    if peer == "bullmq":
        return B.version()
    try:
        return importlib.metadata.version(peer)
    except importlib.metadata.PackageNotFoundError:
        return None


def worker_setup(peer: str) -> str:
    """How the peer's worker is run by ``end_to_end`` (for report footnotes)."""
    return _WORKER_NOTES[peer]


@dataclass
class EndToEnd:
    jobs_per_s: float  # N / (start of the enqueue to the last job done)
    enqueue_s: float  # time to enqueue the N jobs (the worker consuming meanwhile)
    total_s: float  # start of the enqueue to the last job done
    steady_jobs_per_s: float  # jobs between the 10% and 90% marks / the worker's time between
    handler: str = "roundtrip"


def end_to_end_detail(
    peer: str,
    url: str,
    n: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    handler: str = "roundtrip",
) -> EndToEnd:
    """``end_to_end`` with the enqueue time and the steady rate as well.

    ``handler``: "roundtrip" (each job INCRs a Redis counter: what users see) or "count" (each
    job counts in the worker process: the queue's own cost). Either way the jobs numbered 10%
    and 90% of ``n`` RPUSH a mark stamped with the worker's monotonic clock, and
    ``steady_jobs_per_s`` is the jobs between them over the time between them.
    """
    if n < MIN_JOBS:
        raise ValueError(f"n must be >= {MIN_JOBS}")
    with _Run(peer, url, timeout, handler=handler, jobs=n) as run:
        run.start_worker()
        # Warm-up: proves the worker consumes (start-up is not timed) and opens the connections.
        run.producer.enqueue(run.job_ids(WARMUP_JOBS))
        run.wait_signal(run.done, ("warm",), "during worker start-up and warm-up")

        job_ids = run.job_ids(n)
        gc.collect()
        t0 = time.perf_counter()
        run.producer.enqueue(job_ids)
        t1 = time.perf_counter()
        run.wait_signal(run.done, ("done",), f"for {n} jobs")
        t2 = time.perf_counter()
        # Both marks come before the last job's signal but for a racing thread: a short wait.
        marks = dict(
            run.wait_signal(run.marks, ("10", "90"), "(10% and 90% marks)", MARK_TIMEOUT)
            for _ in range(2)
        )
    n10, n90 = _mark_jobs(n)
    if len(marks) != 2 or marks["90"] <= marks["10"]:
        raise RuntimeError(f"{peer}: the 10% and 90% marks are not two successive stamps")
    return EndToEnd(
        jobs_per_s=n / (t2 - t0),
        enqueue_s=t1 - t0,
        total_s=t2 - t0,
        steady_jobs_per_s=(n90 - n10) * 1e9 / (marks["90"] - marks["10"]),
        handler=handler,
    )


def end_to_end(
    peer: str,
    url: str,
    n: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    handler: str = "roundtrip",
) -> float:
    """Jobs/s from the start of enqueueing ``n`` no-op jobs to the last one done (1 worker)."""
    return end_to_end_detail(peer, url, n, timeout=timeout, handler=handler).jobs_per_s


def push_latency(peer: str, url: str, m: int) -> tuple[float, float]:
    """(p50, p99) in microseconds of ``m`` single pushes, no worker running; queue cleaned."""
    if m < 1:
        raise ValueError("m must be >= 1")
    with _Run(peer, url, DEFAULT_TIMEOUT) as run:
        run.producer.push_latencies(run.job_ids(WARMUP_PUSHES))
        ids = run.job_ids(m)
        gc.collect()
        samples = run.producer.push_latencies(ids)
    samples.sort()
    return C.percentile(samples, 50) / 1000.0, C.percentile(samples, 99) / 1000.0


# --------------------------------------------------------------------------- CLI


def _redis_version(url: str) -> str:
    try:
        client: Any = _redis_py().Redis.from_url(url)
        try:
            return str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()
    except Exception as exc:
        return f"unreachable ({exc})"


def _redis_cpu(url: str) -> float | None:
    """CPU seconds used so far by the Redis server at ``url`` if it runs on this machine."""
    try:
        client: Any = _redis_py().Redis.from_url(url)
        try:
            host = client.connection_pool.connection_kwargs.get("host", "localhost")
            if host not in ("localhost", "::1") and not str(host).startswith("127."):
                return None
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            client.close()
    except Exception:
        return None


def _other_cpu(interference: C.Interference, url: str, redis0: float | None, t0: float) -> str:
    """Share of one core taken by processes other than this one, its workers and a local Redis."""
    other = interference.other_cpu()
    if other is None:
        return "n/a"
    seconds = other[0]
    redis1 = _redis_cpu(url)
    if redis0 is not None and redis1 is not None:
        seconds = max(0.0, seconds - (redis1 - redis0))
    wall = time.perf_counter() - t0
    return f"{seconds / wall:.0%}" if wall > 0 else "n/a"


def _describe(peer: str, exc: Exception) -> str:
    if isinstance(exc, RuntimeError):
        return str(exc)
    return f"{peer}: {type(exc).__name__}: {exc}"


def _iter_peers(selected: list[str] | None) -> Iterator[str]:
    yield from selected or PEERS


def _handlers(choice: str) -> tuple[str, ...]:
    return HANDLERS if choice == "both" else (choice,)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n", 1)[0])
    parser.add_argument("--url", required=True, help="redis://HOST:PORT/DB (keys are cleaned up)")
    parser.add_argument("--jobs", type=int, default=2000, help="N for end-to-end (default 2000)")
    parser.add_argument("--pushes", type=int, default=2000, help="M for latency (default 2000)")
    parser.add_argument("--peer", action="append", choices=PEERS, help="repeatable; default all")
    parser.add_argument(
        "--handler",
        choices=(*HANDLERS, "both"),
        default="both",
        help="the job: one Redis INCR (roundtrip), or count in process (count); default both",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per phase")
    args = parser.parse_args(argv)
    if args.jobs < MIN_JOBS:
        parser.error(f"--jobs must be >= {MIN_JOBS}")

    print("Redis job queues: Python peers and BullMQ (no-op jobs, 1 worker process)")
    print(f"  redis {_redis_version(args.url)} at {args.url}, python {sys.version.split()[0]}")
    print(f"  N = {args.jobs:,} end-to-end, M = {args.pushes:,} single pushes")
    print()
    columns = ["peer", "version", "handler", "e2e jobs/s", "steady jobs/s", "enqueue s", "e2e s"]
    columns += ["push p50 us", "p99 us", "wall s", "other CPU"]
    rows: list[list[str]] = []
    problems: list[str] = []  # a run that failed: exit status 1
    skipped: list[str] = []  # a peer not installed: reported only
    for peer in _iter_peers(args.peer):
        reason = available(peer)
        if reason is not None:
            rows.append([peer, "-", "", "skipped", "", "", "", "", "", "", ""])
            skipped.append(f"{peer}: {reason}")
            continue
        for index, handler in enumerate(_handlers(args.handler)):
            started = time.perf_counter()
            interference = C.Interference()
            redis_cpu0 = _redis_cpu(args.url)
            row = [peer, version(peer) or "?", handler]
            try:
                e2e = end_to_end_detail(
                    peer, args.url, args.jobs, timeout=args.timeout, handler=handler
                )
                row += [C.fmt_num(e2e.jobs_per_s), C.fmt_num(e2e.steady_jobs_per_s)]
                row += [f"{e2e.enqueue_s:.3f}", f"{e2e.total_s:.3f}"]
            except Exception as exc:
                row += ["FAILED", "", "", ""]
                problems.append(_describe(peer, exc))
            if index == 0:  # the handler plays no part in a push: measured once per peer
                try:
                    p50, p99 = push_latency(peer, args.url, args.pushes)
                    row += [C.fmt_num(p50, 1), C.fmt_num(p99, 1)]
                except Exception as exc:
                    row += ["FAILED", ""]
                    problems.append(_describe(peer, exc))
            else:
                row += ["", ""]
            row.append(f"{time.perf_counter() - started:.1f}")
            row.append(_other_cpu(interference, args.url, redis_cpu0, started))
            rows.append(row)
            print(f"  ... {peer} ({handler}) done", flush=True)
    print()
    C.Report.table(columns, rows)
    print()
    for peer in _iter_peers(args.peer):
        print(f"  {peer:<9} {_WORKER_NOTES[peer]}")
    print("  handler roundtrip: each job INCRs a Redis counter (one round trip, what users see);")
    print("  count: it counts in the worker process (no Redis call: the queue's own cost)")
    print("  steady: jobs between the 10% and 90% marks / the worker's time between them")
    print("  other CPU: CPU time taken during the peer's run by processes other than this one, its")
    print("  workers and a local Redis, as a share of one core: a high share skews the figures")
    for text in skipped:
        print(f"  -- skipped {text}")
    for text in problems:
        print(f"  !! {text}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
