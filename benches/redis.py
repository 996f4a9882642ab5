"""Benchmark of rnode-queue's Redis backend beside the pure-Python Redis job queues.

    python benches/redis.py [--jobs N] [--peer-jobs N] [--pushes M] [--url URL] [--json PATH]

Starts a private ``redis-server`` on a free port (never the one on 6379) unless ``--url`` is
given, and measures on it, in one run (see "Performance targets" in DESIGN.md):

1. end-to-end, one process: ``qm.push_batch`` N no-op jobs (chunks of 1,000), then drain them
   through ``q.process`` with acknowledgements, the drain timed by ``qm.join``;
2. end-to-end with 1, 2 and 4 worker processes: each runs ``q.process`` (``--concurrency``
   threads); this process pushes N jobs with ``push_batch`` while they consume, and the clock
   stops when ``qm.join`` sees the queue empty: how throughput grows with processes;
3. single ``qm.push`` latency p50 / p99 over M pushes (``time.perf_counter_ns``);
4. the same figures for RQ (SimpleWorker), arq, dramatiq, huey and celery, one worker process
   each, on the same Redis (``benches/redis_peers.py``, ``pip install rnode-queue[bench]``),
   and the ratio rnode-queue / peer.

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

TARGET_E2E = 100_000.0
TARGET_P99_US = 1_000.0
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


def push_all(qm: Any, queue: str, n: int) -> None:
    for start in range(0, n, CHUNK):
        qm.push_batch(queue, [{"data": {"i": i}} for i in range(start, min(n, start + CHUNK))])


def one_process(url: str, n: int, concurrency: int) -> dict[str, float]:
    prefix = f"rnqbench-{uuid.uuid4().hex}"
    qm = manager(url, prefix)
    try:
        q = qm.create_queue("e2e", concurrency=concurrency)
        t0 = time.perf_counter()
        push_all(qm, "e2e", n)
        t1 = time.perf_counter()
        q.process(lambda job: None)
        if not qm.join("e2e", timeout=600):
            raise RuntimeError("the one-process drain did not finish")
        t2 = time.perf_counter()
        qm.delete_queue("e2e")
    finally:
        qm.close(timeout=10)
    return {"push": n / (t1 - t0), "drain": n / (t2 - t1), "e2e": n / (t2 - t0)}


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
        push_all(qm, "e2e", n)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="N for rnode-queue")
    parser.add_argument("--peer-jobs", type=int, default=10_000, help="N for each peer")
    parser.add_argument("--pushes", type=int, default=5_000, help="M single pushes")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker")
    parser.add_argument("--url", help="an existing Redis (keys are cleaned up, nothing flushed)")
    parser.add_argument("--no-peers", action="store_true", help="skip the Python peers")
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

        report.section(f"1. one process: push_batch N, then drain (concurrency {args.concurrency})")
        own = one_process(url, args.jobs, args.concurrency)
        report.table(
            ["phase", "jobs/s"],
            [[k, C.fmt_num(v)] for k, v in own.items()],
        )
        report.add({"figure": "one process", **own})

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

        report.section(f"3. single push latency ({args.pushes:,} pushes)")
        p50, p99 = push_latency(url, args.pushes)
        report.table(
            ["", "p50 us", "p99 us"], [["rnode-queue", C.fmt_num(p50, 1), C.fmt_num(p99, 1)]]
        )
        report.add({"figure": "push latency", "p50_us": p50, "p99_us": p99})

        report.section(
            "4. pure-Python peers, 1 worker process each (ratio: rnode-queue with 1 worker "
            "process / peer)"
        )
        rows: list[list[str]] = []
        if not args.no_peers:
            import redis_peers

            for peer in redis_peers.PEERS:
                reason = redis_peers.available(peer)
                if reason is not None:
                    rows.append([peer, "skipped", "", "", "", ""])
                    report.problem(f"{peer}: {reason}")
                    continue
                try:
                    e2e = redis_peers.end_to_end(peer, url, args.peer_jobs)
                    peer_p50, peer_p99 = redis_peers.push_latency(peer, url, args.pushes)
                except Exception as exc:
                    rows.append([peer, "FAILED", "", "", "", ""])
                    report.problem(f"{peer}: {exc}")
                    continue
                rows.append(
                    [
                        f"{peer} {redis_peers.version(peer) or ''}".strip(),
                        C.fmt_num(e2e),
                        C.fmt_ratio(base / e2e),
                        C.fmt_num(peer_p50, 1),
                        C.fmt_num(peer_p99, 1),
                        C.fmt_ratio(peer_p99 / p99),
                    ]
                )
                report.add(
                    {
                        "figure": "peer",
                        "peer": peer,
                        "e2e": e2e,
                        "p50_us": peer_p50,
                        "p99_us": peer_p99,
                    }
                )
        report.table(
            ["peer", "e2e jobs/s", "rnode faster", "push p50 us", "p99 us", "rnode p99 lower"],
            rows,
        )

        report.section("targets")
        best = max([own["e2e"], *scaling.values()])
        report.table(
            ["figure", "measured", "target", "met"],
            [
                [
                    "end-to-end jobs/s (best)",
                    C.fmt_num(best),
                    C.fmt_num(TARGET_E2E),
                    "yes" if best >= TARGET_E2E else "no",
                ],
                [
                    "single push p99 us",
                    C.fmt_num(p99, 1),
                    C.fmt_num(TARGET_P99_US),
                    "yes" if p99 < TARGET_P99_US else "no",
                ],
            ],
        )
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


if __name__ == "__main__":
    sys.exit(main())
