"""Benchmark of rnode-queue's file backend against pure-Python durable queues.

    python benches/file.py [--jobs N] [--peer-jobs M] [--quick] [--json PATH]

Figures, each for the three ``fsync`` policies where they apply, printed beside pure-Python
durable queues measured in the same run, as ratios (rnode / peer):

1. end to end in one process: ``qm.push`` N jobs one by one, then drain them with a no-op
   handler (``qm.join`` times the drain); the same with ``push_batch``;
2. single ``qm.push`` latency, p50 / p99 (``time.perf_counter_ns`` around each push);
3. 64 pushers at once with ``fsync="always"`` (every push synced before it returns; pushes
   that wait together share one sync): 64 threads on a ``QueueManager``, and 64 coroutines on
   an ``AsyncQueueManager`` (which stores pushes on the event loop and syncs them together);
4. the peers: huey's ``SqliteHuey`` (enqueue, then ``dequeue`` + ``execute`` in the same
   process) and persist-queue's ``SQLiteAckQueue`` (``put``, then ``get`` + ``ack``), end to end
   and with 64 pushing threads, each with its library's default durability.

Every store lives in a fresh temporary directory on the same disk. The peers need
``pip install '.[bench]'``; one that is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

POLICIES = ("always", "everysec", "never")
PUSHERS = 64
TARGET_E2E_EVERYSEC = 300_000.0
TARGET_ALWAYS_VS_HUEY = 20.0


def manager(path: str, fsync: str) -> Any:
    from rnode_queue import QueueManager

    return QueueManager(backend="file", path=path, fsync=fsync)


def rnode_e2e(workdir: str, fsync: str, n: int, batch: bool) -> dict[str, float]:
    path = tempfile.mkdtemp(dir=workdir)
    qm = manager(path, fsync)
    try:
        q = qm.create_queue("e2e", concurrency=1)
        items = [{"data": {"i": i}} for i in range(n)]
        t0 = time.perf_counter()
        if batch:
            for start in range(0, n, 10_000):
                qm.push_batch("e2e", items[start : start + 10_000])
        else:
            push = qm.push
            for i in range(n):
                push("e2e", {"i": i})
        t1 = time.perf_counter()
        q.process(lambda job: None)
        if not qm.join("e2e", timeout=600):
            raise RuntimeError("the drain did not finish")
        t2 = time.perf_counter()
    finally:
        qm.close(timeout=10)
        shutil.rmtree(path, ignore_errors=True)
    return {"push": n / (t1 - t0), "drain": n / (t2 - t1), "e2e": n / (t2 - t0)}


def rnode_latency(workdir: str, fsync: str, m: int) -> tuple[float, float]:
    path = tempfile.mkdtemp(dir=workdir)
    qm = manager(path, fsync)
    try:
        return C.push_latency_us(lambda i: qm.push("latency", {"i": i}), m, warmup=200)
    finally:
        qm.close(timeout=10)
        shutil.rmtree(path, ignore_errors=True)


def concurrent(push_one: Callable[[int], None], n: int, threads: int = PUSHERS) -> float:
    """Pushes per second with `threads` threads pushing n jobs in all."""
    per_thread = n // threads
    start = threading.Barrier(threads + 1)

    def run(offset: int) -> None:
        start.wait()
        for i in range(per_thread):
            push_one(offset + i)

    workers = [threading.Thread(target=run, args=(t * per_thread,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    t0 = time.perf_counter()
    for worker in workers:
        worker.join()
    return per_thread * threads / (time.perf_counter() - t0)


def rnode_concurrent(workdir: str, n: int) -> float:
    path = tempfile.mkdtemp(dir=workdir)
    qm = manager(path, "always")
    try:
        return concurrent(lambda i: qm.push("many", {"i": i}) and None, n)
    finally:
        qm.close(timeout=10)
        shutil.rmtree(path, ignore_errors=True)


def rnode_concurrent_async(workdir: str, n: int, tasks: int = PUSHERS) -> float:
    """Pushes per second with `tasks` coroutines of one AsyncQueueManager pushing n jobs."""
    import asyncio

    from rnode_queue import AsyncQueueManager

    path = tempfile.mkdtemp(dir=workdir)
    per_task = n // tasks

    async def run() -> float:
        aqm = AsyncQueueManager(backend="file", path=path, fsync="always")
        try:

            async def pusher(offset: int) -> None:
                for i in range(per_task):
                    await aqm.push("many", {"i": offset + i})

            t0 = time.perf_counter()
            await asyncio.gather(*(pusher(t * per_task) for t in range(tasks)))
            return per_task * tasks / (time.perf_counter() - t0)
        finally:
            await aqm.close(timeout=10)

    try:
        return asyncio.run(run())
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- peers


def huey_store(workdir: str) -> tuple[Any, Any]:
    from huey import SqliteHuey

    huey = SqliteHuey(filename=os.path.join(tempfile.mkdtemp(dir=workdir), "huey.db"))

    @huey.task()
    def noop(i: int) -> None:
        return None

    return huey, noop


def huey_e2e(workdir: str, n: int) -> float:
    huey, noop = huey_store(workdir)
    t0 = time.perf_counter()
    for i in range(n):
        noop(i)
    done = 0
    while True:
        task = huey.dequeue()
        if task is None:
            break
        huey.execute(task)
        done += 1
    if done != n:
        raise RuntimeError(f"huey ran {done} of {n}")
    return n / (time.perf_counter() - t0)


def huey_concurrent(workdir: str, n: int) -> float:
    _huey, noop = huey_store(workdir)
    return concurrent(lambda i: noop(i) and None, n)


def persist_queue_store(workdir: str) -> Any:
    import persistqueue

    return persistqueue.SQLiteAckQueue(
        os.path.join(tempfile.mkdtemp(dir=workdir), "pq"), multithreading=True
    )


def persist_queue_e2e(workdir: str, n: int) -> float:
    queue = persist_queue_store(workdir)
    t0 = time.perf_counter()
    for i in range(n):
        queue.put({"i": i})
    for _ in range(n):
        item = queue.get(block=False)
        queue.ack(item)
    return n / (time.perf_counter() - t0)


def persist_queue_concurrent(workdir: str, n: int) -> float:
    queue = persist_queue_store(workdir)
    return concurrent(lambda i: queue.put({"i": i}), n)


PEERS: dict[str, tuple[str, Callable[[str, int], float], Callable[[str, int], float]]] = {
    "huey SqliteHuey": ("huey", huey_e2e, huey_concurrent),
    "persist-queue SQLiteAckQueue": ("persistqueue", persist_queue_e2e, persist_queue_concurrent),
}


def version(module: str) -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version({"persistqueue": "persist-queue"}.get(module, module))
    except Exception:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="N for rnode-queue")
    parser.add_argument("--peer-jobs", type=int, default=10_000, help="M for each peer")
    parser.add_argument("--pushes", type=int, default=20_000, help="timed single pushes")
    parser.add_argument("--always-jobs", type=int, default=64_000, help="jobs of section 3")
    parser.add_argument("--quick", action="store_true", help="N = 100,000, M = 2,000")
    parser.add_argument("--dir", help="where the stores go (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.peer_jobs, args.pushes = 100_000, 2_000, 5_000
        args.always_jobs = 12_800

    workdir = tempfile.mkdtemp(prefix="rnq-bench-file-", dir=args.dir)
    report = C.Report("rnode-queue file backend benchmark", C.machine_info())
    interference = C.Interference()
    try:
        report.header(
            {
                "stores in": workdir,
                "N (rnode-queue)": f"{args.jobs:,}",
                "M (peers)": f"{args.peer_jobs:,}",
                "ratio": "rnode / peer (throughput: >1 = rnode faster)",
            }
        )

        report.section("1. end to end in one process: push N, then drain (no-op, concurrency 1)")
        rows = []
        e2e: dict[str, float] = {}
        for fsync in POLICIES:
            for batch in (False, True):
                n = args.jobs if fsync != "always" or batch else args.jobs // 10
                figures = rnode_e2e(workdir, fsync, n, batch)
                how = "push_batch" if batch else "push"
                if not batch:
                    e2e[fsync] = figures["e2e"]
                rows.append(
                    [f"fsync={fsync}, {how}", f"{n:,}"]
                    + [C.fmt_num(figures[k]) for k in ("push", "drain", "e2e")]
                )
                report.add({"figure": "e2e", "fsync": fsync, "how": how, "n": n, **figures})
        report.table(["rnode-queue", "jobs", "push/s", "drain/s", "push+drain/s"], rows)

        report.section(f"2. single push latency ({args.pushes:,} pushes)")
        rows = []
        sync_us = 0.0
        for fsync in POLICIES:
            pushes = args.pushes if fsync != "always" else max(1_000, args.pushes // 10)
            p50, p99 = rnode_latency(workdir, fsync, pushes)
            if fsync == "always":
                sync_us = p50
            rows.append([f"fsync={fsync}", C.fmt_num(p50, 1), C.fmt_num(p99, 1)])
            report.add({"figure": "latency", "fsync": fsync, "p50_us": p50, "p99_us": p99})
        report.table(["qm.push", "p50 us", "p99 us"], rows)

        report.section(f"3. {PUSHERS} pushers at once, fsync=always")
        threads = rnode_concurrent(workdir, args.always_jobs)
        coroutines = rnode_concurrent_async(workdir, args.always_jobs)
        always = max(threads, coroutines)
        # What any pusher that parks a Python thread per push can reach here: the same threads
        # releasing the GIL for as long as one synced push takes (no queue at all).
        ceiling = concurrent(lambda i: time.sleep(sync_us / 1e6), args.always_jobs)
        report.table(
            ["", "pushes/s"],
            [
                [f"rnode-queue, {PUSHERS} threads (QueueManager)", C.fmt_num(threads)],
                [f"ceiling: {PUSHERS} threads sleeping {sync_us:.0f} us", C.fmt_num(ceiling)],
                [f"rnode-queue, {PUSHERS} coroutines (AsyncQueueManager)", C.fmt_num(coroutines)],
            ],
        )
        report.add(
            {
                "figure": "concurrent always",
                "threads": threads,
                "coroutines": coroutines,
                "ceiling": ceiling,
            }
        )

        report.section(
            "4. pure-Python durable queues (M jobs; ratio: rnode-queue fsync=everysec and, "
            f"for {PUSHERS} pushers, the faster of section 3 / peer)"
        )
        rows = []
        huey_concurrent_rate = None
        for name, (module, run_e2e, run_concurrent) in PEERS.items():
            try:
                __import__(module)
            except ImportError:
                report.problem(f"{name}: not installed (pip install '.[bench]')")
                continue
            peer_e2e = run_e2e(workdir, args.peer_jobs)
            peer_concurrent = run_concurrent(workdir, min(args.peer_jobs, 6_400))
            if module == "huey":
                huey_concurrent_rate = peer_concurrent
            rows.append(
                [
                    f"{name} {version(module)}",
                    C.fmt_num(peer_e2e),
                    C.fmt_ratio(C.ratio(e2e["everysec"], peer_e2e)),
                    C.fmt_num(peer_concurrent),
                    C.fmt_ratio(C.ratio(always, peer_concurrent)),
                ]
            )
            report.add(
                {"figure": "peer", "peer": name, "e2e": peer_e2e, "concurrent": peer_concurrent}
            )
        report.table(
            ["peer", "push+drain/s", "ratio e2e", f"{PUSHERS} pushers/s", "ratio pushers"], rows
        )

        report.section("targets")
        vs_huey = C.ratio(always, huey_concurrent_rate)
        targets = [
            [
                "push+drain, fsync=everysec",
                C.fmt_num(e2e["everysec"]),
                f">= {TARGET_E2E_EVERYSEC:,.0f} jobs/s",
                "PASS" if e2e["everysec"] >= TARGET_E2E_EVERYSEC else "short",
            ],
            [
                f"{PUSHERS} pushers, fsync=always, vs huey",
                C.fmt_ratio(vs_huey),
                f">= {TARGET_ALWAYS_VS_HUEY:.0f}x",
                "n/a"
                if vs_huey is None
                else ("PASS" if vs_huey >= TARGET_ALWAYS_VS_HUEY else "short"),
            ],
        ]
        report.table(["figure", "rnode-queue", "target", "status"], targets)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        other = interference.other_cpu()
        if other is not None:
            print()
            print(f"  CPU used by other processes during the run: {other[0]:.1f} s")
    if args.json:
        report.write_json(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
