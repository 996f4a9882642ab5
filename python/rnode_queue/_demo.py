"""The demo of ``rnode-queue demo``: the README quick start on the memory backend (retries,
priorities, cron and ``schedule_at``, a large ``push_batch``, exponential backoff, async
handlers), each step checked, then a summary.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TextIO

from . import Job, QueueManager, __version__

__all__ = ["demo"]

BATCH_SIZE = 20_000


class DemoError(Exception):
    """A demo phase did not end as expected."""


class Progress:
    """A one-line progress bar on a tty (plain ``\\r`` updates), else a line per phase."""

    WIDTH = 28

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream = stream
        self.quiet = quiet
        self.live = not quiet and stream.isatty()
        self.title = ""
        self.total = 0
        self.started = 0.0

    def start(self, title: str, total: int) -> None:
        self.title, self.total, self.started = title, total, time.perf_counter()
        self.update(0)

    def update(self, done: int) -> None:
        if not self.live:
            return
        done = min(done, self.total)
        filled = self.WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r  [{bar}] {done:>6}/{self.total:<6} {self.title}")
        self.stream.flush()

    def finish(self, message: str) -> float:
        elapsed = time.perf_counter() - self.started
        if not self.quiet:
            clear = "\r" + " " * (self.WIDTH + 40) + "\r" if self.live else ""
            self.stream.write(f"{clear}  {self.title:<24} {elapsed:6.2f} s  {message}\n")
            self.stream.flush()
        return elapsed


def _finished(qm: QueueManager, queue: str) -> int:
    stats = qm.get_queue(queue).get_stats()
    return stats["completed"] + stats["failed"]


def _drain(qm: QueueManager, queue: str, progress: Progress, timeout: float = 10.0) -> None:
    """Wait (on the engine's events) until ``queue`` is empty, refreshing the progress bar."""
    deadline = time.monotonic() + timeout
    step = 0.05 if progress.live else timeout
    while not qm.join(queue, timeout=step):
        progress.update(_finished(qm, queue))
        if time.monotonic() > deadline:
            raise DemoError(f"queue {queue!r} did not drain within {timeout:g} s")
    progress.update(progress.total)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise DemoError(message)


# -- phases ---------------------------------------------------------------------------------


def emails_with_retries(qm: QueueManager, progress: Progress) -> str:
    """Every fourth email fails on its first attempt and succeeds when retried."""
    q = qm.create_queue("emails", concurrency=5, max_retries=3, retry_delay=0.05, backoff="fixed")

    @q.process
    def send_email(job: Job) -> str:
        if job.data["n"] % 4 == 0 and job.attempts == 1:
            raise ConnectionError("SMTP server busy")
        return f"sent to {job.data['to']}"

    count = 40
    progress.start("emails + retries", count)
    ids = [q.push({"to": f"user{n}@example.com", "n": n}, tags=["email"]) for n in range(count)]
    _drain(qm, "emails", progress)
    jobs = [qm.get_job(i) for i in ids]
    _check(all(j is not None and j.status == "completed" for j in jobs), "an email failed")
    retried = sum(1 for j in jobs if j is not None and j.attempts > 1)
    _check(retried == count // 4, f"expected {count // 4} retried emails, got {retried}")
    return f"{count} sent, {retried} after a retry"


def priorities(qm: QueueManager, progress: Progress) -> str:
    """Jobs pushed to a paused queue run by priority, first-in first-out within one."""
    q = qm.create_queue("reports", concurrency=1)
    order: list[str] = []

    @q.process
    def report(job: Job) -> None:
        order.append(job.priority)

    pushed = ["low", "normal", "high", "low", "critical", "normal", "high", "low"]
    progress.start("priorities", len(pushed))
    q.pause()
    for priority in pushed:
        q.push({"report": priority}, priority=priority)
    q.resume()
    _drain(qm, "reports", progress)
    rank = {"critical": 0, "high": 1, "normal": 2, "low": 3}
    _check(order == sorted(pushed, key=rank.__getitem__), f"wrong order: {order}")
    return "ran " + " > ".join(dict.fromkeys(order))


def cron_and_schedule_at(qm: QueueManager, progress: Progress) -> str:
    """A per-second cron schedule ticks twice; a job scheduled 1 s ahead runs on time."""
    ticks: list[datetime] = []
    two_ticks = threading.Event()

    @qm.process("heartbeat")
    def heartbeat(job: Job) -> None:
        assert job.scheduled_at is not None
        ticks.append(job.scheduled_at)
        if len(ticks) >= 2:
            two_ticks.set()

    @qm.process("reminders")
    def remind(job: Job) -> str:
        return f"reminded user {job.data['user']}"

    progress.start("cron + schedule_at", 3)
    when = datetime.now(timezone.utc) + timedelta(seconds=1)
    reminder_id = qm.schedule_at("reminders", {"user": 1}, when)
    schedule_id = qm.schedule("heartbeat", {"kind": "heartbeat"}, "*/1 * * * * *")
    deadline = time.monotonic() + 5
    while not two_ticks.wait(0.05 if progress.live else 5):
        progress.update(len(ticks))
        if time.monotonic() > deadline:
            break
    qm.unschedule(schedule_id)
    _check(len(ticks) >= 2, f"expected 2 cron ticks within 5 s, got {len(ticks)}")
    first, second = sorted(ticks)[:2]
    _check((second - first).total_seconds() == 1, f"ticks not 1 s apart: {first}, {second}")
    reminder = qm.wait_for(reminder_id, timeout=5)
    _check(reminder is not None and reminder.status == "completed", "the reminder did not run")
    assert reminder is not None and reminder.started_at is not None
    late = (reminder.started_at - when).total_seconds()
    _check(late >= 0, f"the reminder ran {-late:.3f} s early")
    progress.update(3)
    return f"{len(ticks)} cron ticks 1 s apart; reminder ran {late * 1000:.0f} ms after its time"


def batch_with_concurrency(qm: QueueManager, progress: Progress) -> tuple[str, float]:
    """push_batch many jobs to a queue that runs 4 at a time."""
    q = qm.create_queue("batch", concurrency=4)
    q.process(lambda job: None)
    items = [
        {"data": {"n": n}, "options": {"priority": "high" if n % 10 == 0 else "normal"}}
        for n in range(BATCH_SIZE)
    ]
    progress.start("push_batch", BATCH_SIZE)
    started = time.perf_counter()
    ids = q.push_batch(items)
    pushed = time.perf_counter() - started
    _drain(qm, "batch", progress, timeout=12)
    elapsed = time.perf_counter() - started
    _check(len(ids) == BATCH_SIZE, f"push_batch returned {len(ids)} ids")
    _check(q.get_stats()["completed"] == BATCH_SIZE, "not every batch job completed")
    rate = BATCH_SIZE / elapsed
    return f"{BATCH_SIZE} jobs, pushed in {pushed * 1000:.0f} ms, {rate:,.0f} jobs/s", rate


def exponential_backoff(qm: QueueManager, progress: Progress) -> str:
    """A flaky job succeeds on its 4th attempt; the waits between attempts double."""
    q = qm.create_queue("flaky", max_retries=4, retry_delay=0.05, backoff="exponential")
    runs: list[float] = []

    @q.process
    def flaky(job: Job) -> str:
        runs.append(time.monotonic())
        if job.data["fail"] or job.attempts < 4:
            raise ConnectionError(f"upstream unavailable (attempt {job.attempts})")
        return "ok"

    progress.start("exponential backoff", 2)
    ok_id = q.push({"fail": False})
    _check(qm.wait_for(ok_id, timeout=5) is not None, "the flaky job did not finish")
    progress.update(1)
    bad_id = q.push({"fail": True}, attempts=2, delay=0)
    bad = qm.wait_for(bad_id, timeout=5)
    progress.update(2)
    ok = qm.get_job(ok_id)
    _check(ok is not None and ok.status == "completed" and ok.attempts == 4, "wrong outcome")
    _check(bad is not None and bad.status == "failed", "the hopeless job did not fail")
    gaps = [b - a for a, b in itertools.pairwise(runs[:4])]
    nominal = [0.05, 0.1, 0.2]  # retry_delay * 2**n; a wait can only be longer
    _check(
        all(g >= n * 0.98 for g, n in zip(gaps, nominal, strict=False)), f"waits too short: {gaps}"
    )
    assert bad is not None
    waits = ", ".join(f"{g * 1000:.0f}" for g in gaps)
    return f"waits {waits} ms, then ok; a hopeless job failed with {bad.error!r}"


def async_handlers(qm: QueueManager, progress: Progress) -> str:
    """An ``async def`` handler overlaps 100 jobs that each wait 50 ms."""
    q = qm.create_queue("fetch", concurrency=100)

    @q.process
    async def fetch(job: Job) -> int:
        await asyncio.sleep(0.05)
        return int(job.data["n"]) * 2

    count = 200
    progress.start("async handlers", count)
    started = time.perf_counter()
    ids = q.push_batch([{"data": {"n": n}} for n in range(count)])
    _drain(qm, "fetch", progress)
    elapsed = time.perf_counter() - started
    last = qm.get_job(ids[-1])
    _check(last is not None and last.result == (count - 1) * 2, "wrong async result")
    return f"{count} jobs of 50 ms in {elapsed:.2f} s"


# -- commands -------------------------------------------------------------------------------


def demo(quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the demo; returns the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    progress = Progress(err, quiet)
    if not quiet:
        err.write(f"rnode-queue {__version__} demo (memory backend)\n")
    started = time.perf_counter()
    with QueueManager() as qm:
        try:
            progress.finish(emails_with_retries(qm, progress))
            progress.finish(priorities(qm, progress))
            progress.finish(cron_and_schedule_at(qm, progress))
            note, rate = batch_with_concurrency(qm, progress)
            progress.finish(note)
            progress.finish(exponential_backoff(qm, progress))
            progress.finish(async_handlers(qm, progress))
        except DemoError as exc:
            err.write(f"\ndemo failed: {exc}\n")
            return 1
        stats = qm.get_stats()
    elapsed = time.perf_counter() - started
    rows = [
        ("jobs processed", f"{stats.jobs_processed:,}"),
        ("jobs failed", f"{stats.jobs_failed:,}"),
        ("jobs retried", f"{stats.jobs_retried:,}"),
        ("batch throughput", f"{rate:,.0f} jobs/s"),
        ("elapsed", f"{elapsed:.2f} s"),
    ]
    out.write("\n".join(f"{name:<18}{value:>16}" for name, value in rows) + "\n")
    return 0
