"""rnode-queue's own Redis figures for ``benches/redis.py``: Redis CPU per job by phase, pushes
from many threads, and the side-by-side run measured the way ``redis_peers.py`` measures the
peers (one worker process started first; N jobs pushed from this process; the handler either
counts in process or does one Redis round trip; marks at 10 %, 90 % and 100 % of the jobs done,
awaited with BLPOP).

Redis CPU is read from the server itself: ``INFO cpu`` (``used_cpu_user + used_cpu_sys``: the
whole server, network included) and ``INFO commandstats`` (time inside each command: EVALSHA
holds the scripts, the commands they run are listed too), before and after each phase.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis_peers

WARMUP_JOBS = 100
CHUNK = 1_000

# The worker process of the side-by-side run: a no-op handler that counts in process
# ("count": a sync handler on `concurrency` threads) or does one INCR ("roundtrip": an async
# handler with redis.asyncio, 50 at once on the manager's event loop, as BullMQ's worker runs
# 50 async jobs at once), and signals the marks with the worker's clock.
SIDE_WORKER = """
import itertools, sys, time
import redis
import redis.asyncio as aioredis
from rnode_queue import QueueManager

url, prefix, queue, concurrency, n, handler, warmup = sys.argv[1:8]
concurrency, n, warmup = int(concurrency), int(n), int(warmup)
marks = {warmup: "warm", warmup + n // 10: "10", warmup + n - n // 10: "90", warmup + n: "100"}
qm = QueueManager(backend="redis", url=url, prefix=prefix)

if handler == "count":
    client = redis.Redis.from_url(url)
    counter = itertools.count(1)

    def count(job):
        done = next(counter)  # atomic under the GIL
        if done in marks:
            client.rpush(prefix + ":marks", f"{marks[done]} {time.perf_counter_ns()}")

    qm.create_queue(queue, concurrency=concurrency).process(count)
else:
    aclient = aioredis.Redis.from_url(url, max_connections=64)

    async def roundtrip(job):
        done = await aclient.incr(prefix + ":count")
        if done in marks:
            await aclient.rpush(prefix + ":marks", f"{marks[done]} {time.perf_counter_ns()}")

    qm.create_queue(queue, concurrency=50).process(roundtrip)
print("ready", flush=True)
sys.stdin.read()
qm.close(timeout=10)
"""


def _client(url: str) -> Any:
    return redis_peers._redis_py().Redis.from_url(url)


def _manager(url: str, prefix: str, **options: Any) -> Any:
    from rnode_queue import QueueManager

    return QueueManager(backend="redis", url=url, prefix=prefix, **options)


def push_all(qm: Any, queue: str, n: int) -> None:
    for start in range(0, n, CHUNK):
        qm.push_batch(queue, [{"data": {"i": i}} for i in range(start, min(n, start + CHUNK))])


# --------------------------------------------------------------------------- Redis CPU


@dataclass
class ServerUse:
    """What one phase cost Redis, per job."""

    jobs: int
    seconds: float
    cpu_us: float  # INFO cpu: the whole server
    script_us: float  # EVALSHA time (the scripts, their commands included)
    commands: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: calls, usec

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def _server_counters(client: Any) -> tuple[float, dict[str, tuple[int, float]]]:
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
        for name, v in stats.items()
    }
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands


def measure(client: Any, jobs: int, work: Any) -> ServerUse:
    """Runs ``work()`` and returns what it cost Redis per job."""
    cpu0, commands0 = _server_counters(client)
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    cpu1, commands1 = _server_counters(client)
    spent = {
        name: (calls - commands0.get(name, (0, 0.0))[0], usec - commands0.get(name, (0, 0.0))[1])
        for name, (calls, usec) in commands1.items()
        if name not in ("info",)
    }
    spent = {k: v for k, v in spent.items() if v[0] > 0}
    return ServerUse(
        jobs=jobs,
        seconds=seconds,
        cpu_us=1e6 * (cpu1 - cpu0) / jobs,
        script_us=spent.get("evalsha", (0, 0.0))[1] / jobs,
        commands=spent,
    )


def cycle_cost(url: str, n: int, concurrency: int) -> dict[str, ServerUse]:
    """Redis CPU per job of push (``push_batch`` in chunks of 1,000), then of the drain (fetch,
    run, complete, retention trimming the finished jobs: the default keeps 10,000), in one
    process, and of the whole cycle."""
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    client = _client(url)
    qm = _manager(url, prefix)
    try:
        q = qm.create_queue("cycle", concurrency=concurrency)
        push = measure(client, n, lambda: push_all(qm, "cycle", n))

        def drain() -> None:
            q.process(lambda job: None)
            if not qm.join("cycle", timeout=600):
                raise RuntimeError("the drain did not finish")

        run = measure(client, n, drain)
        qm.delete_queue("cycle")
    finally:
        qm.close(timeout=10)
        client.close()
    whole = ServerUse(
        jobs=n,
        seconds=push.seconds + run.seconds,
        cpu_us=push.cpu_us + run.cpu_us,
        script_us=push.script_us + run.script_us,
        commands={
            k: (
                push.commands.get(k, (0, 0.0))[0] + run.commands.get(k, (0, 0.0))[0],
                push.commands.get(k, (0, 0.0))[1] + run.commands.get(k, (0, 0.0))[1],
            )
            for k in {*push.commands, *run.commands}
        },
    )
    return {"push": push, "fetch, run, complete": run, "cycle": whole}


# --------------------------------------------------------------------------- many threads


def threaded_pushes(url: str, threads: int, per_thread: int) -> tuple[float, float]:
    """``threads`` threads each pushing ``per_thread`` jobs one ``qm.push`` at a time, on one
    manager: (pushes/s, jobs per script call — how many pushes shared a round trip)."""
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    client = _client(url)
    qm = _manager(url, prefix)
    try:
        qm.create_queue("threads")
        start = threading.Barrier(threads + 1)

        def pusher() -> None:
            start.wait()
            for i in range(per_thread):
                qm.push("threads", {"i": i})

        workers = [threading.Thread(target=pusher) for _ in range(threads)]
        for worker in workers:
            worker.start()

        def run() -> None:
            start.wait()
            for worker in workers:
                worker.join()

        use = measure(client, threads * per_thread, run)
        qm.delete_queue("threads")
    finally:
        qm.close(timeout=10)
        client.close()
    calls = use.commands.get("evalsha", (1, 0.0))[0]
    return use.jobs_per_s, use.jobs / max(calls, 1)


# --------------------------------------------------------------------------- side by side


@dataclass
class SideBySide:
    jobs_per_s: float  # from the first push to the last job done
    steady_jobs_per_s: float  # jobs between the 10 % and 90 % marks / the worker's time between


def end_to_end(
    url: str, n: int, handler: str, concurrency: int, timeout: float = 600.0
) -> SideBySide:
    """One worker process (``concurrency`` threads) started and warmed up first; then N jobs
    pushed from this process with ``push_batch`` (chunks of 1,000) while it consumes."""
    if n < 10:
        raise ValueError("n must be >= 10")
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    client = _client(url)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SIDE_WORKER,
            url,
            prefix,
            "side",
            str(concurrency),
            str(n),
            handler,
            str(WARMUP_JOBS),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    qm = _manager(url, prefix)
    marks = f"{prefix}:marks"

    def mark(expected: str) -> tuple[float, int]:
        """When the mark arrived here, and when the worker sent it (its clock, ns)."""
        got = client.blpop([marks], timeout=timeout)
        if got is None:
            raise RuntimeError(f"rnode-queue ({handler}): no {expected!r} mark within {timeout} s")
        label, sent = got[1].decode().split()
        if label != expected:
            raise RuntimeError(f"rnode-queue ({handler}): mark {label!r}, {expected!r} expected")
        return time.perf_counter(), int(sent)

    try:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError("the rnode-queue worker process did not start")
        push_all(qm, "side", WARMUP_JOBS)
        mark("warm")
        t0 = time.perf_counter()
        push_all(qm, "side", n)
        (_, t10), (_, t90), (t100, _) = mark("10"), mark("90"), mark("100")
        qm.delete_queue("side")
    finally:
        if worker.stdin is not None:
            worker.stdin.close()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        qm.close(timeout=10)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
    between = (n - n // 10) - n // 10
    return SideBySide(jobs_per_s=n / (t100 - t0), steady_jobs_per_s=between * 1e9 / (t90 - t10))
