"""Helpers shared by the rnode-queue benchmarks (machine info, RSS, percentiles, report table).

Kept free of any rnode_queue import so that the pure-Python baselines can run without the
compiled engine.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from typing import Any

# --------------------------------------------------------------------------- machine / process


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "nproc": cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "load (1/5/15 min)": load_average(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Resident set size of this process: /proc/self/statm, else psutil if installed."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - non-Linux without psutil
        raise RuntimeError("cannot read RSS: no /proc/self/statm and psutil not installed") from exc
    return int(psutil.Process().memory_info().rss)


def load_average() -> str:
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _machine_busy_seconds() -> float | None:
    """CPU seconds all processes spent busy (from /proc/stat), or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Interference:
    """How much CPU other processes took while the benchmark ran (they skew every figure)."""

    def __init__(self) -> None:
        self.wall0 = time.perf_counter()
        self.busy0 = _machine_busy_seconds()
        self.own0 = _own_cpu_seconds()

    def other_cpu(self) -> tuple[float, float] | None:
        """(CPU seconds used by other processes, as a share of one core over the run)."""
        busy = _machine_busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        other = max(0.0, (busy - self.busy0) - (_own_cpu_seconds() - self.own0))
        wall = time.perf_counter() - self.wall0
        return other, other / wall if wall > 0 else 0.0


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100.0 * len(sorted_values)) - 1))
    return float(sorted_values[k])


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def push_latency_us(push: Any, m: int, warmup: int) -> tuple[float, float]:
    """p50 and p99, in microseconds, of ``push(i)`` timed one by one (after ``warmup`` untimed)."""
    for i in range(warmup):
        push(-1 - i)
    samples = []
    for i in range(m):
        started = time.perf_counter_ns()
        push(i)
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    return percentile(samples, 50) / 1000.0, percentile(samples, 99) / 1000.0


# --------------------------------------------------------------------------- formatting


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


class Report:
    """Collects figures, prints them as they come, and dumps them as JSON."""

    def __init__(self, title: str, info: dict[str, Any]) -> None:
        self.title = title
        self.info = info
        self.figures: list[dict[str, Any]] = []
        self.problems: list[str] = []

    def header(self, extra: dict[str, Any]) -> None:
        self.info.update(extra)
        print(self.title)
        print("=" * len(self.title))
        width = max(len(k) for k in self.info)
        for key, value in self.info.items():
            print(f"{key:<{width}} : {value}")
        sys.stdout.flush()

    @staticmethod
    def section(title: str) -> None:
        print()
        print(title)
        print("-" * len(title))
        sys.stdout.flush()

    @staticmethod
    def table(columns: list[str], rows: list[list[str]], first_left: bool = True) -> None:
        widths = [len(c) for c in columns]
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: list[str]) -> str:
            out = []
            for i, cell in enumerate(cells):
                if i == 0 and first_left:
                    out.append(cell.ljust(widths[i]))
                else:
                    out.append(cell.rjust(widths[i]))
            return "  " + "  ".join(out).rstrip()

        print(line(columns))
        print("  " + "  ".join("-" * w for w in widths))
        for row in rows:
            print(line(row))
        sys.stdout.flush()

    def add(self, figure: dict[str, Any]) -> None:
        self.figures.append(figure)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  !! {text}")
        sys.stdout.flush()

    def write_json(self, path: str) -> None:
        doc = {"title": self.title, "info": self.info, "figures": self.figures}
        doc["problems"] = self.problems
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=False)
            f.write("\n")
