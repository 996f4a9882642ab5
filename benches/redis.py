"""Benchmark of rnode-queue's Redis backend beside the Redis job queues people use.

    python benches/redis.py [--jobs N] [--peer-jobs N] [--pushes M] [--url URL] [--json PATH]
                            [--no-peers] [--peer NAME ...]

Starts a private ``redis-server`` on a free port (never the one on 6379) unless ``--url`` is
given, and measures on it, in one run (see "Performance targets" in DESIGN.md and issue 12):

1. what a job costs Redis: ``INFO cpu`` and ``INFO commandstats`` read before and after
   ``push_batch`` of N jobs (chunks of 1,000) and their drain in one process (fetch, a no-op
   handler, completion, retention trimming: 10,000 completed jobs kept, the default);
2. end-to-end with 1, 2 and 4 worker processes: each runs ``q.process`` (``--concurrency``
   threads); this process pushes N jobs with ``push_batch`` while they consume, and the clock
   stops when ``qm.join`` sees the queue empty: how throughput grows with processes;
3. single ``qm.push`` latency p50 / p99 over M pushes (``time.perf_counter_ns``), and pushes
   from 1 and 16 threads each pushing one job at a time (how many share a round trip);
4. side by side, one worker process each, N jobs pushed while it consumes, with a handler
   that counts in process (the queue's own cost) and one that does one Redis round trip (what
   users see): rnode-queue (``benches/redis_side.py``) and RQ, arq, dramatiq, huey, celery
   (``pip install rnode-queue[bench]``) and BullMQ (Node, when ``node`` and ``npm`` are
   installed), driven as ``benches/redis_peers.py`` describes; end to end and steady (between
   the 10 % and 90 % marks) jobs/s, and the ratio rnode-queue / peer of the steady rates.

Every job keeps the defaults of a real deployment (results and finished jobs retained: 10,000
completed per queue). Note: this file must not ``import redis`` (it would import itself).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C
import redis_side as S

TARGET_E2E = 100_000.0
TARGET_CPU_US = 5.0
TARGET_P50_US = 100.0
TARGET_P99_US = 250.0
TARGET_THREADS = 50_000.0
TARGET_VS_BULLMQ = 10.0
CHUNK = 1_000

WORKER = """
import sys
from rnode_queue import QueueManager

url, prefix, queue, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
qm = QueueManager(backend="redis", url=url, prefix=prefix)
q = qm.create_queue(queue, concurrency=concurrency)
q.process(lambda job: None)
print("ready", flush=True)
sys.stdin.read()
qm.close(timeout=10)
"""


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed; pass --url")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("the private redis-server did not start")


def manager(url: str, prefix: str, **options: Any) -> Any:
    from rnode_queue import QueueManager

    return QueueManager(backend="redis", url=url, prefix=prefix, **options)


def with_processes(url: str, n: int, processes: int, concurrency: int) -> float:
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, prefix, "e2e", str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    qm = manager(url, prefix)
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process did not start")
        t0 = time.perf_counter()
        S.push_all(qm, "e2e", n)
        if not qm.join("e2e", timeout=600):
            raise RuntimeError(f"{processes} worker processes did not finish")
        elapsed = time.perf_counter() - t0
        qm.delete_queue("e2e")
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        qm.close(timeout=10)
    return n / elapsed


def push_latency(url: str, m: int) -> tuple[float, float]:
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    qm = manager(url, prefix)
    try:
        latency = C.push_latency_us(lambda i: qm.push("latency", {"i": i}), m, warmup=100)
        qm.delete_queue("latency")
        return latency
    finally:
        qm.close(timeout=10)


def _commands(use: S.ServerUse, top: int = 6) -> str:
    ranked = sorted(use.commands.items(), key=lambda kv: -kv[1][1])[:top]
    return ", ".join(f"{name} {usec / use.jobs:.2f}" for name, (_, usec) in ranked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="N for rnode-queue")
    parser.add_argument("--peer-jobs", type=int, default=10_000, help="N for each peer")
    parser.add_argument("--pushes", type=int, default=5_000, help="M single pushes")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    parser.add_argument("--url", help="an existing Redis (keys are cleaned up, nothing flushed)")
    parser.add_argument("--no-peers", action="store_true", help="skip the peers")
    parser.add_argument("--peer", action="append", help="only these peers (repeatable)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="rnq-bench-redis-")
    server = None
    url = args.url
    if url is None:
        server, url = start_redis(workdir)
    report = C.Report("rnode-queue redis benchmark", C.machine_info())
    interference = C.Interference()
    try:
        report.header({"redis": url, "N (rnode-queue)": args.jobs, "N (peers)": args.peer_jobs})

        report.section(
            f"1. what a job costs Redis (push_batch N, then drain in one process, concurrency "
            f"{args.concurrency}; INFO cpu and INFO commandstats, per job)"
        )
        cost = S.cycle_cost(url, args.jobs, args.concurrency)
        report.table(
            ["phase", "jobs/s", "Redis CPU us", "in scripts us", "inside the scripts, us"],
            [
                [
                    name,
                    C.fmt_num(use.jobs_per_s) if name != "cycle" else "",
                    C.fmt_num(use.cpu_us, 2),
                    C.fmt_num(use.script_us, 2),
                    _commands(use),
                ]
                for name, use in cost.items()
            ],
        )
        cycle_cpu = cost["cycle"].cpu_us
        report.add({"figure": "redis cpu per job", **{k: v.cpu_us for k, v in cost.items()}})

        report.section("2. worker processes consuming while this process pushes N")
        scaling: dict[int, float] = {}
        for processes in (1, 2, 4):
            scaling[processes] = with_processes(url, args.jobs, processes, args.concurrency)
        base = scaling[1]
        report.table(
            ["worker processes", "jobs/s", "vs 1 process"],
            [[str(p), C.fmt_num(r), C.fmt_ratio(r / base)] for p, r in scaling.items()],
        )
        report.add({"figure": "worker processes", **{str(k): v for k, v in scaling.items()}})

        report.section(f"3. single push latency ({args.pushes:,} pushes), pushes from threads")
        p50, p99 = push_latency(url, args.pushes)
        threaded = {t: S.threaded_pushes(url, t, 20_000 // t) for t in (1, 16)}
        report.table(["", "p50 us", "p99 us"], [["qm.push", C.fmt_num(p50, 1), C.fmt_num(p99, 1)]])
        report.table(
            ["threads pushing one job at a time", "pushes/s", "jobs per script call"],
            [[str(t), C.fmt_num(r), C.fmt_num(per, 1)] for t, (r, per) in threaded.items()],
        )
        report.add({"figure": "push latency", "p50_us": p50, "p99_us": p99})
        report.add({"figure": "threads", **{str(t): r for t, (r, _) in threaded.items()}})

        report.section(
            "4. side by side: 1 worker process each, N pushed while it consumes (steady: jobs/s "
            "between the 10% and 90% marks; ratio: rnode-queue's steady rate / the peer's)"
        )
        steady = side_by_side(report, url, args)

        report.section("targets")
        best = scaling[1]
        rows = [
            [
                "Redis CPU per job, push-fetch-complete",
                f"{cycle_cpu:.2f} us",
                "<= 5 us",
                "yes" if cycle_cpu <= TARGET_CPU_US else "no",
            ],
            [
                "end to end, 1 worker process",
                C.fmt_num(best),
                C.fmt_num(TARGET_E2E),
                "yes" if best >= TARGET_E2E else "no",
            ],
            [
                "single push p50 / p99 us",
                f"{p50:.1f} / {p99:.1f}",
                "<= 100 / < 250",
                "yes" if p50 <= TARGET_P50_US and p99 < TARGET_P99_US else "no",
            ],
            [
                "16 threads pushing one job each",
                C.fmt_num(threaded[16][0]),
                C.fmt_num(TARGET_THREADS),
                "yes" if threaded[16][0] >= TARGET_THREADS else "no",
            ],
        ]
        bullmq = steady.get("bullmq")
        if bullmq is not None:
            rows.append(
                [
                    "steady rate vs BullMQ (count handler)",
                    C.fmt_ratio(bullmq),
                    ">= 10x",
                    "yes" if bullmq >= TARGET_VS_BULLMQ else "no",
                ]
            )
        report.table(["figure", "measured", "target", "met"], rows)
        other = interference.other_cpu()
        if other is not None:
            print(f"\n  other processes used {other[0]:.1f} CPU s during the run")
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        report.write_json(args.json)
    return 0


def side_by_side(report: C.Report, url: str, args: argparse.Namespace) -> dict[str, float]:
    """Section 4; returns, per peer, rnode-queue's steady rate over the peer's (count handler)."""
    import redis_peers

    peers = (
        [] if args.no_peers else [p for p in redis_peers.PEERS if not args.peer or p in args.peer]
    )
    ratios: dict[str, float] = {}
    rows: list[list[str]] = []
    for handler in ("count", "roundtrip"):
        own = S.end_to_end(url, args.jobs, handler, args.concurrency)
        rows.append(
            [
                "rnode-queue",
                handler,
                C.fmt_num(own.jobs_per_s),
                C.fmt_num(own.steady_jobs_per_s),
                "",
            ]
        )
        report.add(
            {
                "figure": "side by side",
                "queue": "rnode-queue",
                "handler": handler,
                "e2e": own.jobs_per_s,
                "steady": own.steady_jobs_per_s,
            }
        )
        for peer in peers:
            reason = redis_peers.available(peer)
            if reason is not None:
                if handler == "count":
                    report.problem(f"{peer}: skipped: {reason}")
                continue
            name = f"{peer} {redis_peers.version(peer) or ''}".strip()
            try:
                run = redis_peers.end_to_end_detail(peer, url, args.peer_jobs, handler=handler)
            except Exception as exc:
                rows.append([name, handler, "FAILED", "", ""])
                report.problem(f"{peer} ({handler}): {exc}")
                continue
            ratio = own.steady_jobs_per_s / run.steady_jobs_per_s
            if handler == "count":
                ratios[peer] = ratio
            rows.append(
                [
                    name,
                    handler,
                    C.fmt_num(run.jobs_per_s),
                    C.fmt_num(run.steady_jobs_per_s),
                    C.fmt_ratio(ratio),
                ]
            )
            report.add(
                {
                    "figure": "side by side",
                    "queue": peer,
                    "handler": handler,
                    "e2e": run.jobs_per_s,
                    "steady": run.steady_jobs_per_s,
                }
            )
    report.table(["queue", "handler", "e2e jobs/s", "steady jobs/s", "rnode faster"], rows)
    latency_rows: list[list[str]] = []
    for peer in peers:
        if redis_peers.available(peer) is not None:
            continue
        try:
            peer_p50, peer_p99 = redis_peers.push_latency(peer, url, args.pushes)
        except Exception as exc:
            report.problem(f"{peer} push latency: {exc}")
            continue
        latency_rows.append([peer, C.fmt_num(peer_p50, 1), C.fmt_num(peer_p99, 1)])
        report.add(
            {"figure": "peer push latency", "peer": peer, "p50_us": peer_p50, "p99_us": peer_p99}
        )
    if latency_rows:
        report.table(["peer", "push p50 us", "p99 us"], latency_rows)
    return ratios


if __name__ == "__main__":
    sys.exit(main())
