"""Benchmark of rnode-queue's memory backend against pure-Python baselines.

    python benches/memory.py [--jobs N] [--quick] [--json PATH]

Figures (see "Performance targets" in DESIGN.md), each printed beside pure-Python baselines
measured in the same run with the same N and the same payloads, as a ratio rnode / baseline:

1. end-to-end, sync no-op handler: ``qm.push`` N jobs one by one, then drain them through
   ``q.process(handler)`` (concurrency 1 and the queue default), drain timed by ``qm.join``;
2. the same with ``qm.push_batch`` (chunks of ``--batch-size`` items ``{"data": {...}}``);
3. single ``qm.push`` latency p50 / p99 / p99.9, ``time.perf_counter_ns`` around each push;
4. RSS of 1,000,000 queued jobs with ~100-byte JSON payloads (queue paused, no handler),
   measured in a fresh child process per implementation so that memory freed by earlier
   phases (and kept by the allocator) cannot hide the growth;
5. the cost of the Prometheus counters: the push + drain of [1] (queue default concurrency)
   with ``QueueManager()`` against ``QueueManager(metrics=False)``, alternated, the median of
   ``--metrics-rounds`` each; the target is a ratio on / off of at least 0.97 (within 3 %).
   ``--metrics-only`` runs this figure alone.

Baselines: ``queue.PriorityQueue`` drained by worker threads, ``asyncio.PriorityQueue``
drained by asyncio tasks, and a ``heapq`` + direct call loop (the floor of any Python queue);
they all hold ``(priority, seq, job_dict)`` tuples. The rnode-queue engine is not needed
for the baselines: ``--baselines-only`` runs them alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import heapq
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C

QUEUE = "bench"
PRIO = -5  # "normal" (5), negated: heapq and queue.PriorityQueue pop the smallest first
SENTINEL_PRIO = 1 << 60  # sorts after every job
DEFAULT_CONCURRENCY = 5  # the queue default of DESIGN.md; used for the "several workers" baselines
RSS_TARGET_BYTES_PER_JOB = 400  # 400 MB (10^6 bytes) for 1,000,000 jobs
TARGET_E2E = 1_000_000.0
TARGET_BATCH = 2_000_000.0
TARGET_P99_US = 20.0
TARGET_METRICS_RATIO = 0.97  # metrics on / off, push + drain: within 3 %


def handler(job: Any) -> None:
    pass


# --------------------------------------------------------------------------- rnode-queue access


class _EngineQueue:
    def __init__(self, engine: Any, name: str) -> None:
        self._engine = engine
        self.name = name

    def process(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        self._engine.process(self.name, fn)
        return fn


class _EngineManager:
    """Minimal QueueManager look-alike over ``rnode_queue._core.Engine`` (no Python wrapper yet).

    The hot methods are the engine's own bound methods: no extra Python call per job.
    """

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.push = engine.push
        self.push_batch = engine.push_batch
        self.join = engine.join
        self.close = engine.close
        self.get_stats = engine.get_stats
        self.pause_queue = engine.pause_queue

    def create_queue(self, name: str, **options: Any) -> _EngineQueue:
        self._engine.create_queue(name, **options)
        return _EngineQueue(self._engine, name)

    def get_queue(self, name: str) -> _EngineQueue:
        self._engine.ensure_queue(name)
        return _EngineQueue(self._engine, name)


class Rnode:
    def __init__(self, factory: Callable[..., Any], label: str, version: str) -> None:
        self.factory = factory
        self.label = label
        self.version = version


def load_rnode() -> tuple[Rnode | None, str]:
    try:
        import rnode_queue
    except ImportError as exc:
        return None, f"cannot import rnode_queue: {exc}"
    core = getattr(rnode_queue, "_core", None)
    if core is None:
        try:
            from rnode_queue import _core as core
        except ImportError:
            core = None
    version = str(
        getattr(rnode_queue, "__version__", None) or getattr(core, "__version__", None) or "?"
    )
    if hasattr(rnode_queue, "QueueManager"):
        return Rnode(rnode_queue.QueueManager, "rnode_queue.QueueManager()", version), ""
    if core is not None and hasattr(core, "Engine"):
        engine_cls = core.Engine
        label = "rnode_queue._core.Engine() (no rnode_queue.QueueManager yet)"
        return Rnode(lambda **kw: _EngineManager(engine_cls(**kw)), label, version), ""
    return None, "rnode_queue has neither QueueManager nor _core.Engine"


# --------------------------------------------------------------------------- workloads


def iter_chunks(n: int, size: int) -> Iterator[list[dict[str, Any]]]:
    """push_batch items {"data": {"i": i}}, built outside the timed sections."""
    for start in range(0, n, size):
        yield [{"data": {"i": i}} for i in range(start, min(n, start + size))]


def fill(put: Callable[[Any], Any], n: int, mode: str, batch_size: int) -> float:
    """Push n (priority, seq, job_dict) tuples with ``put``; return the seconds spent pushing.

    mode "push": one by one, the payload built in the loop (as for ``qm.push``);
    mode "batch": the same chunks as ``qm.push_batch`` gets, only the puts are timed.
    """
    perf = time.perf_counter
    if mode == "push":
        t0 = perf()
        for i in range(n):
            put((PRIO, i, {"id": i, "queue": QUEUE, "data": {"i": i}}))
        return perf() - t0
    seq = 0
    spent = 0.0
    for chunk in iter_chunks(n, batch_size):
        t0 = perf()
        for item in chunk:
            put((PRIO, seq, {"id": seq, "queue": QUEUE, "data": item["data"]}))
            seq += 1
        spent += perf() - t0
    return spent


def run_pq_threads(n: int, workers: int, mode: str, batch_size: int) -> dict[str, Any]:
    gc.collect()
    q: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
    push_s = fill(q.put, n, mode, batch_size)

    def worker() -> None:
        get, done, fn = q.get, q.task_done, handler
        while True:
            job = get()[2]
            if job is None:
                done()
                return
            fn(job)
            done()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    q.join()
    drain_s = time.perf_counter() - t0
    for k in range(workers):
        q.put((SENTINEL_PRIO, k, None))
    for t in threads:
        t.join()
    return {"push_s": push_s, "drain_s": drain_s, "ok": True}


def run_asyncio(n: int, workers: int, mode: str, batch_size: int) -> dict[str, Any]:
    gc.collect()

    async def main() -> dict[str, Any]:
        q: asyncio.PriorityQueue[tuple[int, int, Any]] = asyncio.PriorityQueue()
        push_s = fill(q.put_nowait, n, mode, batch_size)

        async def worker() -> None:
            get, done, fn = q.get, q.task_done, handler
            while True:
                job = (await get())[2]
                fn(job)
                done()

        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
        await q.join()
        drain_s = time.perf_counter() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"push_s": push_s, "drain_s": drain_s, "ok": True}

    return asyncio.run(main())


def run_heapq(n: int, mode: str, batch_size: int) -> dict[str, Any]:
    gc.collect()
    heap: list[tuple[int, int, Any]] = []
    push_s = fill(functools.partial(heapq.heappush, heap), n, mode, batch_size)
    pop, fn = heapq.heappop, handler
    t0 = time.perf_counter()
    while heap:
        fn(pop(heap)[2])
    drain_s = time.perf_counter() - t0
    return {"push_s": push_s, "drain_s": drain_s, "ok": True}


BASE_KINDS = ("pq", "asyncio", "heapq")


def fill_only(kind: str, n: int, mode: str, batch_size: int) -> float:
    """Time only the pushes into a baseline structure (then drop it)."""
    gc.collect()
    if kind == "pq":
        return fill(queue.PriorityQueue().put, n, mode, batch_size)
    if kind == "asyncio":

        async def main() -> float:
            return fill(asyncio.PriorityQueue().put_nowait, n, mode, batch_size)

        return asyncio.run(main())
    heap: list[tuple[int, int, Any]] = []
    return fill(functools.partial(heapq.heappush, heap), n, mode, batch_size)


def run_rnode(
    rn: Rnode,
    n: int,
    concurrency: int | None,
    mode: str,
    batch_size: int,
    timeout: float,
    **options: Any,
) -> dict[str, Any]:
    gc.collect()
    qm = rn.factory(**options)
    notes: list[str] = []
    try:
        if concurrency is None:
            q = qm.get_queue(QUEUE)
        else:
            q = qm.create_queue(QUEUE, concurrency=concurrency)
        perf = time.perf_counter
        if mode == "push":
            push = qm.push
            t0 = perf()
            for i in range(n):
                push(QUEUE, {"i": i})
            push_s = perf() - t0
        else:
            push_batch = qm.push_batch
            push_s = 0.0
            for chunk in iter_chunks(n, batch_size):
                t0 = perf()
                push_batch(QUEUE, chunk)
                push_s += perf() - t0
        t0 = perf()
        q.process(handler)
        joined = qm.join(timeout=timeout)
        drain_s = perf() - t0
        stats = qm.get_stats()
        processed, failed = int(stats.jobs_processed), int(stats.jobs_failed)
        if not joined:
            notes.append(f"qm.join(timeout={timeout:g}) returned False")
        if processed != n or failed:
            notes.append(f"jobs_processed={processed} jobs_failed={failed}, expected {n} and 0")
    finally:
        t0 = time.perf_counter()
        closed = qm.close(timeout=30)
        close_s = time.perf_counter() - t0
    if closed is False:
        notes.append("qm.close(timeout=30) returned False")
    if close_s > 5:
        notes.append(f"qm.close took {close_s:.1f} s")
    return {"push_s": push_s, "drain_s": drain_s, "ok": not notes, "notes": notes}


# --------------------------------------------------------------------------- latency


def latency_rnode(rn: Rnode, count: int, warmup: int) -> list[int]:
    gc.collect()
    qm = rn.factory()
    try:
        qm.get_queue(QUEUE)
        push, pc = qm.push, time.perf_counter_ns
        for i in range(warmup):
            push(QUEUE, {"i": i})
        gc.collect()
        samples = [0] * count
        for i in range(count):
            data = {"i": i}
            t0 = pc()
            push(QUEUE, data)
            samples[i] = pc() - t0
    finally:
        qm.close(timeout=30)
    samples.sort()
    return samples


def latency_pq(count: int, warmup: int) -> list[int]:
    gc.collect()
    q: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
    put, pc = q.put, time.perf_counter_ns
    for i in range(warmup):
        put((PRIO, i, {"id": i, "queue": QUEUE, "data": {"i": i}}))
    gc.collect()
    samples = [0] * count
    for i in range(count):
        data = {"i": i}
        t0 = pc()
        put((PRIO, i, {"id": i, "queue": QUEUE, "data": data}))
        samples[i] = pc() - t0
    samples.sort()
    return samples


def latency_heapq(count: int, warmup: int) -> list[int]:
    gc.collect()
    heap: list[tuple[int, int, Any]] = []
    push, pc = heapq.heappush, time.perf_counter_ns
    for i in range(warmup):
        push(heap, (PRIO, i, {"id": i, "queue": QUEUE, "data": {"i": i}}))
    gc.collect()
    samples = [0] * count
    for i in range(count):
        data = {"i": i}
        t0 = pc()
        push(heap, (PRIO, i, {"id": i, "queue": QUEUE, "data": data}))
        samples[i] = pc() - t0
    samples.sort()
    return samples


def latency_timer(count: int) -> list[int]:
    pc = time.perf_counter_ns
    samples = [0] * count
    for i in range(count):
        t0 = pc()
        samples[i] = pc() - t0
    samples.sort()
    return samples


# --------------------------------------------------------------------------- RSS (child process)


def make_payload(i: int) -> dict[str, Any]:
    """A job payload whose compact JSON is exactly 100 bytes (for i < 9,000,000)."""
    return {
        "user_id": 1_000_000 + i,
        "email": f"user{i:07d}@example.com",
        "action": "signup_welcome",
        "ref": f"{i:012x}",
    }


PAYLOAD_BYTES = len(json.dumps(make_payload(0), separators=(",", ":")))


def rss_child(kind: str, n: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: RSS growth from holding n queued jobs."""
    result: dict[str, Any] = {"kind": kind, "n": n, "payload_bytes": PAYLOAD_BYTES}
    if kind == "rnode":
        rn, err = load_rnode()
        if rn is None:
            raise SystemExit(err)
        qm = rn.factory()
        qm.get_queue(QUEUE)
        qm.pause_queue(QUEUE)
        push = qm.push
        gc.collect()
        before = C.rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            push(QUEUE, make_payload(i))
        push_s = time.perf_counter() - t0
        gc.collect()
        after = C.rss_bytes()
        result["queued"] = int(qm.get_stats().queue_sizes.get(QUEUE, -1))
        qm.close(timeout=10)
    else:
        heap: list[tuple[int, int, Any]] = []
        hpush = heapq.heappush
        gc.collect()
        before = C.rss_bytes()
        t0 = time.perf_counter()
        for i in range(n):
            hpush(heap, (PRIO, i, {"id": i, "queue": QUEUE, "data": make_payload(i)}))
        push_s = time.perf_counter() - t0
        gc.collect()
        after = C.rss_bytes()
        result["queued"] = len(heap)
    result.update(before=before, after=after, delta=after - before, push_s=push_s)
    return result


def run_rss(kind: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-child", kind, "--rss-jobs", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"child exited {proc.returncode}: {' | '.join(tail)}"}
    return dict(json.loads(lines[-1]))


# --------------------------------------------------------------------------- report helpers


def rate(n: int, seconds: float | None) -> float | None:
    return None if not seconds else n / seconds


def verdict(value: float | None, target: float, higher_is_better: bool) -> tuple[bool, str]:
    if value is None:
        return False, "n/a"
    ok = value >= target if higher_is_better else value < target
    share = value / target if higher_is_better else target / value if value else float("inf")
    return ok, "PASS" if ok else f"short: {share:.0%} of target"


def throughput_section(
    report: C.Report,
    fig_id: str,
    title: str,
    n: int,
    rn_runs: dict[str, dict[str, Any] | None],
    base_runs: dict[str, dict[str, dict[str, Any]]],
    push_label: str,
) -> list[dict[str, Any]]:
    """Print one table per concurrency; return the figures for the JSON / summary."""
    report.section(title)
    figures: list[dict[str, Any]] = []
    for conc_label, rn in rn_runs.items():
        print(f"  concurrency: {conc_label}")
        rn_push = rate(n, rn["push_s"]) if rn else None
        rn_drain = rate(n, rn["drain_s"]) if rn else None
        rn_e2e = rate(n, rn["push_s"] + rn["drain_s"]) if rn else None
        rows = [
            [
                "rnode-queue",
                C.fmt_num(rn_push),
                C.fmt_num(rn_drain) + " ",
                C.fmt_num(rn_e2e),
                "",
                "",
            ]
        ]
        fig = {
            "id": f"{fig_id}_{conc_label.split()[0]}",
            "title": title,
            "n": n,
            "concurrency": conc_label,
            "unit": "jobs/s",
            "rnode": {"push": rn_push, "drain": rn_drain, "end_to_end": rn_e2e},
            "baselines": {},
        }
        for name, run in base_runs[conc_label].items():
            b_push = rate(n, run["push_s"])
            b_drain = rate(n, run["drain_s"])
            reused = bool(run.get("drain_reused"))
            b_e2e = rate(n, run["push_s"] + run["drain_s"])
            r_e2e, r_drain = C.ratio(rn_e2e, b_e2e), C.ratio(rn_drain, b_drain)
            rows.append(
                [
                    name,
                    C.fmt_num(b_push),
                    C.fmt_num(b_drain) + ("*" if reused else " "),
                    C.fmt_num(b_e2e),
                    C.fmt_ratio(r_e2e),
                    C.fmt_ratio(r_drain),
                ]
            )
            fig["baselines"][name] = {
                "push": b_push,
                "drain": b_drain,
                "end_to_end": b_e2e,
                "ratio_end_to_end": r_e2e,
                "ratio_drain": r_drain,
                "drain_from_figure_1": reused,
            }
        C.Report.table(
            [
                "implementation",
                f"{push_label} jobs/s",
                "drain jobs/s",
                "push+drain jobs/s",
                "ratio e2e",
                "ratio drain",
            ],
            rows,
        )
        if any(r.get("drain_reused") for r in base_runs[conc_label].values()):
            print("  * baseline drain time measured in [1] (same queue contents)")
        ok, text = verdict(rn_e2e, TARGET_E2E, True)
        fig["target"] = {"end_to_end_min": TARGET_E2E, "pass": ok}
        print(f"  target push+drain >= {TARGET_E2E:,.0f} jobs/s: {text}")
        if rn and rn.get("notes"):
            for note in rn["notes"]:
                report.problem(f"{fig['id']}: {note}")
        print()
        figures.append(fig)
        report.add(fig)
    return figures


# --------------------------------------------------------------------------- metrics on / off


def metrics_section(
    report: C.Report, rn: Rnode, n: int, rounds: int, batch_size: int, timeout: float
) -> list[str]:
    """Figure [5]: push + drain with the engine's counters on and off; its summary row."""
    report.section(
        f"[5] Prometheus counters: push + drain of {n:,} jobs, metrics on vs off"
        f" (alternated, median of {rounds})"
    )
    try:
        rn.factory(metrics=False).close(timeout=10)
    except Exception as exc:
        print(f"  skipped: this build has no metrics=False ({type(exc).__name__}: {exc})")
        return ["[5] metrics on / off", "n/a", f">= {TARGET_METRICS_RATIO:.2f}x", "n/a"]
    runs: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(rounds):
        # Alternated, and the order swapped each round, so that drift hits both alike.
        for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
            options = {} if mode == "on" else {"metrics": False}
            run = run_rnode(rn, n, None, "push", batch_size, timeout, **options)
            for note in run["notes"]:
                report.problem(f"metrics {mode}, round {r + 1}: {note}")
            runs[mode].append(rate(n, run["push_s"] + run["drain_s"]) or 0.0)
    # The median of alternated rounds: one disturbed round moves a best-of, not a median.
    best = {mode: statistics.median(rates) for mode, rates in runs.items()}
    ratio = C.ratio(best["on"], best["off"])
    rows = [
        [
            f"QueueManager({'' if mode == 'on' else 'metrics=False'})",
            C.fmt_num(best[mode]),
            "  ".join(C.fmt_num(x) for x in runs[mode]),
        ]
        for mode in ("on", "off")
    ]
    C.Report.table(["manager", "median push+drain jobs/s", "every round"], rows)
    ok, text = verdict(ratio, TARGET_METRICS_RATIO, True)
    print(f"  ratio on / off {C.fmt_ratio(ratio)}; target >= {TARGET_METRICS_RATIO:.2f}x: {text}")
    report.add(
        {
            "id": "metrics_overhead",
            "title": "push + drain, metrics on vs off",
            "n": n,
            "unit": "jobs/s",
            "rnode": {"metrics_on": best["on"], "metrics_off": best["off"], "ratio": ratio},
            "rounds": runs,
            "target": {"ratio_min": TARGET_METRICS_RATIO, "pass": ok},
        }
    )
    return [
        "[5] metrics on / off, push + drain",
        f"{C.fmt_ratio(ratio)} ({C.fmt_num(best['on'])} / {C.fmt_num(best['off'])} jobs/s)",
        f">= {TARGET_METRICS_RATIO:.2f}x",
        text,
    ]


def finish(
    report: C.Report,
    summary: list[list[str]],
    started: float,
    interference: C.Interference,
    json_path: str | None,
) -> int:
    """The summary table, the run's time and load, the problems; the exit status."""
    report.section("summary (rnode-queue vs targets)")
    C.Report.table(["figure", "rnode-queue", "target", "status"], summary)
    elapsed = time.perf_counter() - started
    print(f"\n  total time {elapsed:.1f} s, load average at the end {C.load_average()}")
    report.info["elapsed_s"] = round(elapsed, 1)
    other = interference.other_cpu()
    if other is not None:
        other_s, share = other
        report.info["other_processes_cpu_s"] = round(other_s, 1)
        print(
            f"  CPU used by other processes during the run: {other_s:.1f} s ({share:.0%} of a core)"
        )
        if share > 0.10:
            print("  !! the machine was not idle: every figure above is disturbed by that load")
    if report.problems:
        print(f"  {len(report.problems)} problem(s):")
        for p in report.problems:
            print(f"    - {p}")
    if json_path:
        report.write_json(json_path)
        print(f"  figures written to {json_path}")
    return 1 if report.problems else 0


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--jobs", type=int, default=None, help="N (default 1,000,000; --quick 100,000)")
    ap.add_argument("--quick", action="store_true", help="small run for CI smoke tests")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    ap.add_argument("--batch-size", type=int, default=10_000, help="push_batch chunk size")
    ap.add_argument("--latency-pushes", type=int, default=100_000, help="timed pushes")
    ap.add_argument("--latency-warmup", type=int, default=10_000, help="untimed pushes first")
    ap.add_argument("--rss-jobs", type=int, default=None, help="default 1,000,000 (--quick: N)")
    ap.add_argument(
        "--workers", type=int, default=DEFAULT_CONCURRENCY, help="baseline threads/tasks"
    )
    ap.add_argument("--timeout", type=float, default=None, help="qm.join timeout (s)")
    ap.add_argument("--baselines-only", action="store_true", help="skip rnode-queue")
    ap.add_argument(
        "--metrics-rounds", type=int, default=None, help="[5] runs of each (default 5; --quick 3)"
    )
    ap.add_argument("--metrics-only", action="store_true", help="run figure [5] alone")
    ap.add_argument("--rss-child", choices=["rnode", "heapq"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.rss_child:
        n_child = args.rss_jobs or 1_000_000
        print(json.dumps(rss_child(args.rss_child, n_child)))
        return 0

    n = args.jobs or (100_000 if args.quick else 1_000_000)
    rss_n = args.rss_jobs or (n if args.quick else 1_000_000)
    timeout = args.timeout or max(60.0, n / 10_000)
    workers = args.workers

    rn: Rnode | None = None
    err = "skipped (--baselines-only)"
    if not args.baselines_only:
        rn, err = load_rnode()
        if rn is None:
            print(f"error: {err} (build it first, or use --baselines-only)", file=sys.stderr)
            return 2

    report = C.Report("rnode-queue memory backend benchmark", C.machine_info())
    report.header(
        {
            "rnode-queue": f"{rn.version} via {rn.label}" if rn else err,
            "N": f"{n:,} jobs (push_batch chunks of {args.batch_size:,})",
            "latency": f"{args.latency_pushes:,} timed pushes after {args.latency_warmup:,}",
            "RSS": f"{rss_n:,} queued jobs, {PAYLOAD_BYTES}-byte JSON payloads",
            "concurrency": f"1 and default; baselines use 1 and {workers} threads/tasks",
            "ratio": "rnode / baseline (throughput: >1 = rnode faster; latency, RSS: <1 better)",
        }
    )
    started = time.perf_counter()
    interference = C.Interference()
    summary: list[list[str]] = []
    metrics_rounds = args.metrics_rounds or (3 if args.quick else 5)
    if args.metrics_only:
        if rn is None:
            print("error: --metrics-only needs rnode-queue", file=sys.stderr)
            return 2
        summary.append(metrics_section(report, rn, n, metrics_rounds, args.batch_size, timeout))
        return finish(report, summary, started, interference, args.json)

    conc_settings: list[tuple[str, int | None, int]] = [
        ("1", 1, 1),
        (f"default (baselines: {workers})", None, workers),
    ]

    def base_names(k: int) -> dict[str, str]:
        return {
            "pq": f"queue.PriorityQueue + {k} thread{'s' if k > 1 else ''}",
            "asyncio": f"asyncio.PriorityQueue + {k} task{'s' if k > 1 else ''}",
            "heapq": "heapq + direct call loop",
        }

    def baselines(
        mode: str, drains: dict[str, dict[str, dict[str, Any]]] | None = None
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Full push + drain runs; or, given the drains of an earlier figure, only the pushes.

        A baseline's drain does not depend on how its queue was filled (same tuples, same
        order), so figure [2] times the baselines' pushes of the batch items and reuses the
        drain times of figure [1]: that keeps the default run within a few minutes.
        """
        out: dict[str, dict[str, dict[str, Any]]] = {}
        if drains is not None:
            pushes = {kind: fill_only(kind, n, mode, args.batch_size) for kind in BASE_KINDS}
            for label, _, k in conc_settings:
                out[label] = {
                    name: {
                        "push_s": pushes[kind],
                        "drain_s": drains[label][name]["drain_s"],
                        "drain_reused": True,
                    }
                    for kind, name in base_names(k).items()
                }
            return out
        heap_run = run_heapq(n, mode, args.batch_size)
        for label, _, k in conc_settings:
            names = base_names(k)
            out[label] = {
                names["pq"]: run_pq_threads(n, k, mode, args.batch_size),
                names["asyncio"]: run_asyncio(n, k, mode, args.batch_size),
                names["heapq"]: heap_run,
            }
        return out

    # -- 1 and 2: throughput ------------------------------------------------------------------
    first_base: dict[str, dict[str, dict[str, Any]]] | None = None
    for fig_id, mode, title, push_label in (
        ("e2e_push", "push", "[1] end-to-end: qm.push() one by one, then drain (no-op)", "push"),
        ("e2e_batch", "batch", "[2] end-to-end: qm.push_batch(), then drain (no-op)", "batch push"),
    ):
        rn_runs: dict[str, dict[str, Any] | None] = {}
        for label, conc, _ in conc_settings:
            rn_runs[label] = None
            if rn is None:
                continue
            try:
                rn_runs[label] = run_rnode(rn, n, conc, mode, args.batch_size, timeout)
            except Exception as exc:
                report.problem(f"{fig_id}, concurrency {label}: {type(exc).__name__}: {exc}")
        base = baselines(mode, first_base)
        if first_base is None:
            first_base = base
        figs = throughput_section(report, fig_id, title, n, rn_runs, base, push_label)
        for fig, (label, _, _) in zip(figs, conc_settings, strict=False):
            e2e = fig["rnode"]["end_to_end"]
            summary.append(
                [
                    f"{title[:3]} {push_label} + drain, concurrency {label.split()[0]}",
                    f"{C.fmt_num(e2e)} jobs/s",
                    f">= {TARGET_E2E:,.0f} jobs/s",
                    verdict(e2e, TARGET_E2E, True)[1],
                ]
            )
        if mode == "batch":
            pushes = [rate(n, r["push_s"]) for r in rn_runs.values() if r]
            best = max((p for p in pushes if p), default=None)
            pq_push = [
                rate(n, runs[name]["push_s"]) or 0.0
                for runs in base.values()
                for name in runs
                if name.startswith("queue.PriorityQueue")
            ]
            heap_push = rate(n, next(iter(base.values()))["heapq + direct call loop"]["push_s"])
            ok, text = verdict(best, TARGET_BATCH, True)
            print(
                f"  push_batch alone: {C.fmt_num(best)} jobs/s (best of {len(pushes)} runs;"
                " item dicts built outside the timing)"
            )
            r_pq, r_heap = C.ratio(best, max(pq_push)), C.ratio(best, heap_push)
            print(
                f"  ratio vs queue.PriorityQueue.put loop {C.fmt_ratio(r_pq)}"
                f", vs heapq.heappush loop {C.fmt_ratio(r_heap)}"
            )
            print(f"  target push_batch >= {TARGET_BATCH:,.0f} jobs/s: {text}")
            report.add(
                {
                    "id": "push_batch",
                    "title": "push_batch alone",
                    "unit": "jobs/s",
                    "rnode": best,
                    "baselines": {
                        "queue.PriorityQueue.put loop": max(pq_push),
                        "heapq.heappush loop": heap_push,
                    },
                    "target": {"min": TARGET_BATCH, "pass": ok},
                }
            )
            summary.append(
                [
                    "[2] push_batch alone",
                    f"{C.fmt_num(best)} jobs/s",
                    f">= {TARGET_BATCH:,.0f} jobs/s",
                    text,
                ]
            )
        gc.collect()

    # -- 3: latency ---------------------------------------------------------------------------
    report.section("[3] single push latency (µs, time.perf_counter_ns around each push)")
    count, warm = args.latency_pushes, args.latency_warmup
    lat: dict[str, list[int]] = {}
    if rn:
        lat["rnode-queue qm.push"] = latency_rnode(rn, count, warm)
    lat["queue.PriorityQueue.put"] = latency_pq(count, warm)
    lat["heapq.heappush"] = latency_heapq(count, warm)
    timer = latency_timer(count)
    ref = lat["queue.PriorityQueue.put"]

    def pct(samples: list[int], q: float) -> float:
        return C.percentile(samples, q) / 1000.0

    rows = []
    lat_fig: dict[str, Any] = {"id": "push_latency", "unit": "us", "baselines": {}}
    for name, samples in lat.items():
        p50, p99, p999, mx = pct(samples, 50), pct(samples, 99), pct(samples, 99.9), samples[-1]
        entry = {"p50": p50, "p99": p99, "p999": p999, "max": mx / 1000.0}
        r50 = C.ratio(p50, pct(ref, 50))
        r99 = C.ratio(p99, pct(ref, 99))
        is_ref = samples is ref
        rows.append(
            [
                name,
                f"{p50:.2f}",
                f"{p99:.2f}",
                f"{p999:.2f}",
                f"{mx / 1000.0:.1f}",
                "" if is_ref else C.fmt_ratio(r50),
                "" if is_ref else C.fmt_ratio(r99),
            ]
        )
        if name.startswith("rnode"):
            lat_fig["rnode"] = entry
        else:
            lat_fig["baselines"][name] = entry
    t50, t99 = pct(timer, 50), pct(timer, 99)
    rows.append(["(timer overhead, empty)", f"{t50:.2f}", f"{t99:.2f}", "", "", "", ""])
    C.Report.table(["push", "p50", "p99", "p99.9", "max", "p50 vs PQ.put", "p99 vs PQ.put"], rows)
    rn_p99 = lat_fig["rnode"]["p99"] if "rnode" in lat_fig else None
    ok, text = verdict(rn_p99, TARGET_P99_US, False)
    lat_fig["target"] = {"p99_max_us": TARGET_P99_US, "pass": ok}
    print(f"  target p99 < {TARGET_P99_US:g} µs: {text}")
    report.add(lat_fig)
    summary.append(
        [
            "[3] push latency p99",
            f"{'n/a' if rn_p99 is None else f'{rn_p99:.2f}'} µs",
            f"< {TARGET_P99_US:g} µs",
            text,
        ]
    )
    del lat, timer, ref
    gc.collect()

    # -- 4: RSS -------------------------------------------------------------------------------
    report.section(
        f"[4] RSS of {rss_n:,} queued jobs, {PAYLOAD_BYTES}-byte payloads"
        " (a fresh child process each)"
    )
    rss_runs: dict[str, dict[str, Any]] = {}
    if rn:
        rss_runs["rnode-queue (queue paused)"] = run_rss("rnode", rss_n)
    rss_runs["heapq of (prio, seq, job dict)"] = run_rss("heapq", rss_n)
    base_delta = rss_runs["heapq of (prio, seq, job dict)"].get("delta")
    rows = []
    rss_fig: dict[str, Any] = {"id": "rss", "unit": "bytes", "jobs": rss_n, "baselines": {}}
    for name, res in rss_runs.items():
        if "error" in res:
            report.problem(f"rss {name}: {res['error']}")
            rows.append([name, "error", "", "", "", ""])
            continue
        delta = res["delta"]
        entry = {"delta": delta, "bytes_per_job": delta / rss_n, "push_s": res["push_s"]}
        is_base = name.startswith("heapq")
        rows.append(
            [
                name,
                f"{res['queued']:,}",
                f"{delta / 1e6:,.1f}",
                f"{delta / rss_n:,.0f}",
                C.fmt_num(rate(rss_n, res["push_s"])),
                "" if is_base else C.fmt_ratio(C.ratio(delta, base_delta)),
            ]
        )
        if res["queued"] != rss_n:
            report.problem(f"rss {name}: {res['queued']} jobs queued, expected {rss_n}")
        if is_base:
            rss_fig["baselines"][name] = entry
        else:
            rss_fig["rnode"] = entry
    columns = ["implementation", "queued", "RSS delta MB", "bytes/job", "push/s", "ratio"]
    C.Report.table(columns, rows)
    target_bytes = RSS_TARGET_BYTES_PER_JOB * rss_n
    rn_delta = rss_fig.get("rnode", {}).get("delta")
    ok, text = verdict(rn_delta, target_bytes, False)
    rss_fig["target"] = {"max_bytes": target_bytes, "pass": ok}
    print(f"  MB = 10^6 bytes; push/s = push() of the {PAYLOAD_BYTES}-byte payloads, one by one")
    print(f"  target < {target_bytes / 1e6:,.0f} MB ({RSS_TARGET_BYTES_PER_JOB} B/job): {text}")
    report.add(rss_fig)
    summary.append(
        [
            f"[4] RSS of {rss_n:,} queued jobs",
            f"{'n/a' if rn_delta is None else f'{rn_delta / 1e6:,.1f}'} MB",
            f"< {target_bytes / 1e6:,.0f} MB",
            text,
        ]
    )

    # -- 5: metrics on / off ------------------------------------------------------------------
    if rn:
        summary.append(metrics_section(report, rn, n, metrics_rounds, args.batch_size, timeout))

    return finish(report, summary, started, interference, args.json)


if __name__ == "__main__":
    sys.exit(main())
