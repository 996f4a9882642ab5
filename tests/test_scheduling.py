"""Delays, schedule_at and cron schedules."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from helpers import (
    EARLY_TOLERANCE,
    LATE_BOUND,
    WAIT,
    Recorder,
    assert_aware_utc,
    utcnow,
    wait_until,
)
from rnode_queue import QueueManager

MS = timedelta(milliseconds=1)


def test_delayed_job_is_not_early_and_not_late(qm: QueueManager) -> None:
    recorder = Recorder()
    q = qm.get_queue("delays")
    q.process(recorder.record)
    before = time.monotonic()
    job_id = q.push({"x": 1}, delay=0.3)
    after = time.monotonic()
    job = qm.get_job(job_id)
    assert job is not None
    # Unless the test thread lost the CPU for 0.3 s, the job is still delayed.
    if time.monotonic() - after < 0.25:
        assert job.status == "delayed"
        assert [j.id for j in qm.get_jobs("delays", status="delayed")] == [job_id]
        assert q.get_stats()["size"] == 1
    assert job.delay == 0.3
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None and done.status == "completed"
    start = recorder.snapshot()[0]["mono"]
    assert start - before >= 0.3 - EARLY_TOLERANCE, f"ran {start - before:.3f}s after push"
    assert start - after < 0.3 + LATE_BOUND, f"ran {start - after:.3f}s after push"
    started_at = assert_aware_utc(done.started_at)
    assert started_at >= done.created_at + timedelta(seconds=0.3) - MS


def test_delays_run_in_due_order(qm: QueueManager) -> None:
    seen: list[float] = []
    q = qm.create_queue("due-order", concurrency=1)
    q.process(lambda job: seen.append(job.data))
    for delay in (0.4, 0.1, 0.25, 0.0):
        q.push(delay, delay=delay)
    assert qm.join("due-order", timeout=WAIT)
    assert seen == [0.0, 0.1, 0.25, 0.4]


def test_a_delayed_job_falling_due_on_a_paused_queue_waits(qm: QueueManager) -> None:
    recorder = Recorder()
    q = qm.get_queue("paused-delay")
    q.process(recorder.record)
    q.pause()
    job_id = q.push(1, delay=0.05)
    # the job falls due (0.05 s) but must not run while paused
    assert not recorder.wait_count(1, timeout=0.3)
    job = qm.get_job(job_id)
    assert job is not None
    assert job.status == "waiting"
    q.resume()
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None and done.status == "completed"


def test_a_delayed_job_falling_due_queues_behind_jobs_pushed_meanwhile(qm: QueueManager) -> None:
    q = qm.create_queue("due-order", concurrency=1)
    q.pause()
    delayed = q.push("delayed", delay=0.1)
    first, second = q.push("first"), q.push("second")
    wait_until(lambda: qm.get_job(delayed).status == "waiting", what="the job falls due")  # type: ignore[union-attr]
    recorder = Recorder()
    q.process(recorder.record)
    q.resume()
    assert qm.join("due-order", timeout=WAIT)
    assert [e["job"].id for e in recorder.snapshot()] == [first, second, delayed]


def _run_schedule_at(qm: QueueManager, queue: str, when: datetime, due: datetime) -> None:
    recorder = Recorder()
    q = qm.get_queue(queue)
    q.process(recorder.record)
    job_id = qm.schedule_at(queue, {"remind": 1}, when, priority="high", tags=["r"])
    job = qm.get_job(job_id)
    assert job is not None
    assert job.priority == "high"
    assert job.tags == ["r"]
    scheduled = assert_aware_utc(job.scheduled_at)
    assert abs(scheduled - due) <= MS, f"scheduled_at {scheduled} != {due}"
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None and done.status == "completed"
    wall = recorder.snapshot()[0]["wall"]
    assert wall >= due.timestamp() - EARLY_TOLERANCE, f"ran {due.timestamp() - wall:.3f}s early"
    assert wall < due.timestamp() + LATE_BOUND, f"ran {wall - due.timestamp():.3f}s late"
    assert assert_aware_utc(done.started_at) >= scheduled - MS


def test_schedule_at_with_an_aware_utc_datetime(qm: QueueManager) -> None:
    due = utcnow() + timedelta(seconds=0.3)
    _run_schedule_at(qm, "at-utc", due, due)


def test_schedule_at_with_an_aware_non_utc_datetime(qm: QueueManager) -> None:
    due = utcnow() + timedelta(seconds=0.3)
    kolkata = timezone(timedelta(hours=5, minutes=30))
    _run_schedule_at(qm, "at-tz", due.astimezone(kolkata), due)


@pytest.fixture
def local_time_is_not_utc() -> Iterator[None]:
    """Make the process' local time UTC+5:30 so that naive-as-local would be caught."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "IST-5:30"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("local_time_is_not_utc")
def test_schedule_at_with_a_naive_datetime_means_utc(qm: QueueManager) -> None:
    due = utcnow() + timedelta(seconds=0.3)
    _run_schedule_at(qm, "at-naive", due.replace(tzinfo=None), due)


def test_schedule_at_in_the_past_runs_now(qm: QueueManager) -> None:
    recorder = Recorder()
    q = qm.get_queue("at-past")
    q.process(recorder.record)
    before = time.monotonic()
    job_id = qm.schedule_at("at-past", 1, utcnow() - timedelta(hours=1))
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None and done.status == "completed"
    assert recorder.snapshot()[0]["mono"] - before < LATE_BOUND


def test_cron_every_second(qm: QueueManager) -> None:
    recorder = Recorder()
    q = qm.create_queue("ticks", concurrency=2)
    q.process(recorder.record)
    data = {"kind": "tick"}
    sid = qm.schedule("ticks", data, "* * * * * *")
    assert isinstance(sid, str)
    # declaring it again (as every process of an app does at start-up) changes nothing
    assert qm.schedule("ticks", {"kind": "tick"}, "* * * * * *") == sid
    assert [s["id"] for s in qm.list_schedules()].count(sid) == 1
    try:
        assert recorder.wait_count(3, timeout=6.0), "a per-second cron ran fewer than 3 times"
    finally:
        assert qm.unschedule(sid) is True
    assert qm.join("ticks", timeout=WAIT)
    entries = sorted(recorder.snapshot(), key=lambda e: e["job"].scheduled_at)
    ticks = [assert_aware_utc(e["job"].scheduled_at) for e in entries]
    assert len(set(ticks)) == len(ticks), f"a tick ran twice: {ticks}"
    for tick in ticks:
        assert tick.microsecond == 0, f"tick {tick} is not a whole second"
    for earlier, later in itertools.pairwise(ticks):
        assert later - earlier == timedelta(seconds=1), f"ticks {ticks}"
    for entry, tick in zip(entries, ticks, strict=False):
        job = entry["job"]
        assert job.schedule_id == sid
        assert job.data == data
        assert job.queue == "ticks"
        lag = entry["wall"] - tick.timestamp()
        assert -EARLY_TOLERANCE <= lag < LATE_BOUND, f"tick {tick} ran {lag:.3f}s after it"

    # unscheduled: no more runs
    assert sid not in [s["id"] for s in qm.list_schedules()]
    count = len(recorder)
    assert not recorder.wait_count(count + 1, timeout=1.5), "the cron ran after unschedule"
    assert qm.unschedule(sid) is False


def test_schedule_ids_are_idempotent(qm: QueueManager) -> None:
    first = qm.schedule("maint", {"type": "daily"}, "0 2 * * *")
    assert qm.schedule("maint", {"type": "daily"}, "0 2 * * *") == first
    others = {
        qm.schedule("maint", {"type": "weekly"}, "0 2 * * *"),
        qm.schedule("maint", {"type": "daily"}, "0 3 * * *"),
        qm.schedule("other", {"type": "daily"}, "0 2 * * *"),
    }
    assert first not in others
    assert len(others) == 3
    named = qm.schedule("maint", {"type": "x"}, "0 4 * * *", name="nightly")
    assert named == "nightly"
    assert qm.schedule("maint", {"type": "x"}, "0 4 * * *", name="nightly") == "nightly"
    ids = [s["id"] for s in qm.list_schedules()]
    assert sorted(ids) == sorted([first, *others, "nightly"])


def test_list_schedules(qm: QueueManager) -> None:
    now = utcnow()
    five = qm.schedule("maint", {"type": "daily"}, "0 2 * * *")
    six = qm.schedule("maint", {"type": "six"}, "30 0 2 * * *", name="six-field")
    every5 = qm.schedule("maint", [1, 2], "*/5 * * * *")
    schedules = {s["id"]: s for s in qm.list_schedules()}
    assert set(schedules) == {five, six, every5}
    for schedule in schedules.values():
        assert {"id", "name", "queue", "cron", "data", "next_run"} <= set(schedule)
        assert schedule["queue"] == "maint"

    daily = schedules[five]
    assert daily["cron"] == "0 2 * * *"
    assert daily["data"] == {"type": "daily"}
    next_run = assert_aware_utc(daily["next_run"])
    assert (next_run.hour, next_run.minute, next_run.second, next_run.microsecond) == (2, 0, 0, 0)
    assert now < next_run <= now + timedelta(days=1)

    named = schedules[six]
    assert named["name"] == "six-field"
    assert named["cron"] == "30 0 2 * * *"
    next_six = assert_aware_utc(named["next_run"])
    assert (next_six.hour, next_six.minute, next_six.second) == (2, 0, 30)

    five_minutes = assert_aware_utc(schedules[every5]["next_run"])
    assert five_minutes.minute % 5 == 0 and five_minutes.second == 0
    assert now < five_minutes <= now + timedelta(minutes=5)
    assert schedules[every5]["data"] == [1, 2]

    assert qm.unschedule(five) is True
    assert qm.unschedule("no-such-schedule") is False
    assert {s["id"] for s in qm.list_schedules()} == {six, every5}
