"""Jobs: push / get_job fields, data round-trips, results, push_batch, get_jobs, isolation."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from helpers import (
    JOB_FIELDS,
    WAIT,
    Recorder,
    assert_aware_utc,
    assert_json_equal,
    utcnow,
    wait_equal,
)
from rnode_queue import Job, Queue, QueueError, QueueManager, Stats

# Engine timestamps may be rounded to the millisecond.
CLOCK_SLACK = timedelta(milliseconds=2)


def test_push_returns_a_uuid_and_get_job_has_every_field(qm: QueueManager) -> None:
    metadata = {"k": "v", "n": 1, "nested": {"x": [1, 2], "ok": True}}
    before = utcnow()
    job_id = qm.push(
        "emails",
        {"to": "a@b.c"},
        priority="high",
        tags=["email", "ünïcode"],
        metadata=metadata,
        timeout=12.5,
    )
    after = utcnow()
    assert isinstance(job_id, str)
    assert str(uuid.UUID(job_id)) == job_id.lower()

    job = qm.get_job(job_id)
    assert isinstance(job, Job)
    assert job.id == job_id
    assert job.queue == "emails"
    assert_json_equal(job.data, {"to": "a@b.c"})
    assert job.priority == "high"
    assert job.status == "waiting"
    assert job.attempts == 0
    assert job.max_attempts == 4  # default max_retries=3 -> 4 runs in all
    assert job.delay == 0
    assert job.timeout == 12.5
    created = assert_aware_utc(job.created_at)
    assert before - CLOCK_SLACK <= created <= after + CLOCK_SLACK
    assert job.started_at is None
    assert job.completed_at is None
    assert job.failed_at is None
    assert job.error is None
    assert job.traceback is None
    assert job.result is None
    assert job.tags == ["email", "ünïcode"]
    assert_json_equal(job.metadata, metadata)
    assert job.schedule_id is None


def test_job_defaults(qm: QueueManager) -> None:
    job = qm.get_job(qm.push("defaults", 1))
    assert job is not None
    assert job.priority == "normal"
    assert job.tags == []
    assert job.metadata == {}
    assert job.delay == 0
    assert isinstance(job.attempts, int)
    assert isinstance(job.max_attempts, int)


def test_job_to_dict_and_immutability(qm: QueueManager) -> None:
    job_id = qm.push("dicts", {"a": [1, 2]}, tags=["t"], metadata={"m": 1})
    job = qm.get_job(job_id)
    assert job is not None
    as_dict = job.to_dict()
    assert isinstance(as_dict, dict)
    missing = [field for field in JOB_FIELDS if field not in as_dict]
    assert not missing, f"to_dict() lacks {missing}"
    assert as_dict["id"] == job_id
    assert as_dict["queue"] == "dicts"
    assert as_dict["data"] == {"a": [1, 2]}
    assert as_dict["tags"] == ["t"]
    assert as_dict["metadata"] == {"m": 1}
    with pytest.raises(AttributeError):
        job.data = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        job.status = "completed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("priority", "name"), [(0, "low"), (5, "normal"), (10, "high"), (15, "critical")]
)
def test_numeric_priorities_are_accepted(qm: QueueManager, priority: int, name: str) -> None:
    job = qm.get_job(qm.push("numeric", None, priority=priority))
    assert job is not None
    assert job.priority == name


@pytest.mark.parametrize("name", ["low", "normal", "high", "critical"])
def test_named_priorities_round_trip(qm: QueueManager, name: str) -> None:
    job = qm.get_job(qm.push("named", None, priority=name))
    assert job is not None
    assert job.priority == name


NESTED = {
    "user": {
        "id": 7,
        "name": "Zoë",
        "roles": ["admin", "dev"],
        "prefs": {"tz": "Europe/Paris", "flags": [True, False, None]},
    },
    "items": [[1, 2, [3, [4, {"deep": "x"}]]], [], {}],
    "float": 1.5,
    "whole_float": 3.0,
    "negative": -42,
    "big": 2**53,
    "small": -(2**53),
    "empty": "",
}
UNICODE = {
    "msg": "héllo wörld ✓ 🚀 中文 العربية",
    "ключ": "значение",
    "emoji 🔑": ["😀", "👩‍👩‍👧"],
    "escapes": 'quote" backslash\\ slash/ newline\n tab\t cr\r nul\x00 bell\x07',
}
ROUND_TRIP: list[Any] = [
    pytest.param(NESTED, id="nested"),
    pytest.param(UNICODE, id="unicode"),
    pytest.param({"a": 1}, id="flat"),
    pytest.param(42, id="int"),
    pytest.param(-7, id="negative-int"),
    pytest.param(3.25, id="float"),
    pytest.param("plain string", id="str"),
    pytest.param("", id="empty-str"),
    pytest.param(None, id="none"),
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param([1, "two", 3.0, None, [], {}], id="list"),
    pytest.param([], id="empty-list"),
    pytest.param({}, id="empty-dict"),
]


@pytest.mark.parametrize("data", ROUND_TRIP)
def test_data_round_trips_through_store_handler_and_result(qm: QueueManager, data: Any) -> None:
    job_id = qm.push("roundtrip", data)
    stored = qm.get_job(job_id)
    assert stored is not None
    assert_json_equal(stored.data, data)

    seen: list[Any] = []

    def echo(job: Job) -> Any:
        seen.append(job.data)
        return job.data

    qm.get_queue("roundtrip").process(echo)
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None
    assert done.status == "completed", done.error
    assert len(seen) == 1
    assert_json_equal(seen[0], data, "handler data")
    assert_json_equal(done.data, data)
    assert_json_equal(done.result, data, "result")


def test_tuples_become_lists(qm: QueueManager) -> None:
    job = qm.get_job(qm.push("tuples", {"t": (1, (2, "x"))}))
    assert job is not None
    assert_json_equal(job.data, {"t": [1, [2, "x"]]})


def test_large_payload_under_the_limit_round_trips(qm: QueueManager) -> None:
    data = {"blob": "x" * 200_000, "list": list(range(5000))}
    job = qm.get_job(qm.push("large", data))
    assert job is not None
    assert job.data == data


def test_unicode_queue_name(qm: QueueManager) -> None:
    name = "émails-队列-🚀"
    job_id = qm.push(name, {"x": 1})
    job = qm.get_job(job_id)
    assert job is not None
    assert job.queue == name
    assert qm.get_stats().queue_sizes.get(name) == 1
    assert [j.id for j in qm.get_jobs(name)] == [job_id]


def test_get_job_of_unknown_id_is_none(qm: QueueManager) -> None:
    assert qm.get_job(str(uuid.uuid4())) is None
    assert qm.get_job("not-a-job-id") is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handler_result_is_stored(qm: QueueManager, kind: str) -> None:
    q = qm.create_queue("results")
    if kind == "sync":

        def handler(job: Job) -> Any:
            return {"sum": sum(job.data["numbers"]), "kind": "sync"}

    else:

        async def handler(job: Job) -> Any:  # type: ignore[misc]
            await asyncio.sleep(0)
            return {"sum": sum(job.data["numbers"]), "kind": "async"}

    q.process(handler)
    job_id = q.push({"numbers": [1, 2, 3.5]})
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    assert_json_equal(job.result, {"sum": 6.5, "kind": kind})
    stored = qm.get_job(job_id)
    assert stored is not None
    assert_json_equal(stored.result, {"sum": 6.5, "kind": kind})


def test_handler_returning_none_stores_none(qm: QueueManager) -> None:
    q = qm.get_queue("none-result")
    q.process(lambda job: None)
    job = qm.wait_for(q.push(1), timeout=WAIT)
    assert job is not None
    assert job.status == "completed"
    assert job.result is None


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_handler_sees_an_active_job_and_timestamps_are_ordered(qm: QueueManager, kind: str) -> None:
    snapshots: list[dict[str, Any]] = []

    def snap(job: Job) -> None:
        snapshots.append(
            {
                "status": job.status,
                "attempts": job.attempts,
                "started_at": job.started_at,
                "completed_at": job.completed_at,
                "data": job.data,
                "queue": job.queue,
            }
        )

    q = qm.get_queue("active")
    if kind == "sync":
        q.process(snap)
    else:

        async def handler(job: Job) -> None:
            snap(job)

        q.process(handler)
    job_id = q.push({"n": 1})
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None
    assert job.status == "completed", job.error
    assert len(snapshots) == 1
    inside = snapshots[0]
    assert inside["status"] == "active"
    assert inside["attempts"] == 1
    assert inside["queue"] == "active"
    assert inside["data"] == {"n": 1}
    assert_aware_utc(inside["started_at"])
    assert inside["completed_at"] is None

    assert job.attempts == 1
    created = assert_aware_utc(job.created_at)
    started = assert_aware_utc(job.started_at)
    completed = assert_aware_utc(job.completed_at)
    assert created - CLOCK_SLACK <= started <= completed + CLOCK_SLACK
    assert job.failed_at is None
    assert job.error is None


def test_process_decorator_returns_the_handler(qm: QueueManager) -> None:
    q = qm.get_queue("decorated")

    @q.process
    def handler(job: Job) -> str:
        return "done"

    assert callable(handler)
    assert handler(None) == "done"  # type: ignore[arg-type]
    job = qm.wait_for(q.push(1), timeout=WAIT)
    assert job is not None
    assert job.result == "done"


def test_a_second_handler_on_one_queue_is_refused(qm: QueueManager) -> None:
    q = qm.get_queue("single-handler")
    q.process(lambda job: "first")
    with pytest.raises(QueueError):
        q.process(lambda job: "second")
    job = qm.wait_for(q.push(1), timeout=WAIT)
    assert job is not None
    assert job.result == "first"


def test_queue_handle(qm: QueueManager) -> None:
    q = qm.create_queue("handle", max_retries=1)
    assert isinstance(q, Queue)
    assert q.name == "handle"
    assert isinstance(qm.get_queue("handle"), Queue)
    job_id = q.push({"x": 1}, priority="critical", tags=["a"])
    job = qm.get_job(job_id)
    assert job is not None
    assert job.queue == "handle"
    assert job.priority == "critical"
    assert job.max_attempts == 2
    assert [j.id for j in q.get_jobs(status="waiting")] == [job_id]
    stats = q.get_stats()
    assert stats["size"] == 1


def test_push_batch_returns_ids_in_order_with_options_applied(qm: QueueManager) -> None:
    items: list[dict[str, Any]] = [
        {"data": {"n": 0}},
        {"data": {"n": 1}, "options": {"priority": "low", "tags": ["b"]}},
        {"data": {"n": 2}, "options": {"priority": "critical", "metadata": {"m": 2}}},
        {"data": {"n": 3}, "options": {"delay": 60, "attempts": 2, "timeout": 9}},
        {"data": "ünïcode ✓", "options": {}},
    ]
    ids = qm.push_batch("batch", items)
    assert isinstance(ids, list)
    assert len(ids) == len(items)
    assert all(isinstance(i, str) for i in ids)
    assert len(set(ids)) == len(ids)
    jobs = [qm.get_job(i) for i in ids]
    assert all(job is not None for job in jobs)
    for job, item in zip(jobs, items, strict=False):
        assert job is not None
        assert job.queue == "batch"
        assert_json_equal(job.data, item["data"])
    assert [j.priority for j in jobs if j] == ["normal", "low", "critical", "normal", "normal"]
    assert jobs[1] is not None and jobs[1].tags == ["b"]
    assert jobs[2] is not None and jobs[2].metadata == {"m": 2}
    delayed = jobs[3]
    assert delayed is not None
    assert delayed.status == "delayed"
    assert delayed.delay == 60
    assert delayed.max_attempts == 2
    assert delayed.timeout == 9
    assert qm.get_queue("batch").get_stats()["size"] == 5


def test_push_batch_of_nothing(qm: QueueManager) -> None:
    assert qm.push_batch("empty-batch", []) == []


def test_push_to_an_unknown_queue_creates_it_with_defaults(qm: QueueManager) -> None:
    job_id = qm.push("fresh", 1)
    job = qm.get_job(job_id)
    assert job is not None
    assert job.max_attempts == 4
    assert qm.get_stats().queue_sizes.get("fresh") == 1


def test_get_jobs_by_status_and_stats(qm: QueueManager) -> None:
    started = threading.Event()
    release = threading.Event()

    def handler(job: Job) -> str:
        if job.data == "block":
            started.set()
            release.wait(WAIT)
        elif job.data == "fail":
            raise ValueError("fails on purpose")
        return "ok"

    q = qm.create_queue("states", concurrency=1, max_retries=0)
    q.process(handler)
    try:
        ok = q.push("ok")
        done = qm.wait_for(ok, timeout=WAIT)
        assert done is not None and done.status == "completed"
        fail = q.push("fail")
        failed = qm.wait_for(fail, timeout=WAIT)
        assert failed is not None and failed.status == "failed"
        block = q.push("block")
        assert started.wait(WAIT)
        w1 = q.push("w1")
        w2 = q.push("w2")
        delayed = q.push("d", delay=600)

        expected = {
            "completed": {ok},
            "failed": {fail},
            "active": {block},
            "waiting": {w1, w2},
            "delayed": {delayed},
        }
        for status, ids in expected.items():
            jobs = qm.get_jobs("states", status=status)
            assert {j.id for j in jobs} == ids, status
            assert all(j.status == status for j in jobs), status
            assert {j.id for j in q.get_jobs(status=status)} == ids, status
        everything = {j.id for j in qm.get_jobs("states", limit=1000)}
        assert everything == {ok, fail, block, w1, w2, delayed}
        assert len(qm.get_jobs("states", status="waiting", limit=1)) == 1
        assert len(qm.get_jobs("states", limit=2)) == 2

        active = qm.get_job(block)
        assert active is not None
        assert active.status == "active"
        assert active.attempts == 1
        assert_aware_utc(active.started_at)

        def queue_stats() -> dict[str, int]:
            stats = q.get_stats()
            return {k: stats[k] for k in ("size", "processing", "completed", "failed")}

        wait_equal(queue_stats, {"size": 3, "processing": 1, "completed": 1, "failed": 1})
        stats = qm.get_stats()
        assert isinstance(stats, Stats)
        wait_equal(lambda: qm.get_stats().active_workers, 1)
        assert stats.queue_sizes["states"] == 3
    finally:
        release.set()
    assert qm.wait_for(w2, timeout=WAIT) is not None
    wait_equal(lambda: q.get_stats()["completed"], 4)
    wait_equal(lambda: q.get_stats()["size"], 1)  # the delayed job


def test_queues_are_isolated(qm: QueueManager) -> None:
    seen: dict[str, Recorder] = {"alpha": Recorder(), "beta": Recorder()}
    for name, recorder in seen.items():
        qm.get_queue(name).process(recorder.record)
    alpha = [qm.push("alpha", {"q": "alpha", "i": i}) for i in range(5)]
    beta = [qm.push("beta", {"q": "beta", "i": i}) for i in range(3)]
    assert qm.join(timeout=WAIT)
    for name, ids in (("alpha", alpha), ("beta", beta)):
        entries = seen[name].snapshot()
        assert sorted(e["job"].id for e in entries) == sorted(ids)
        assert all(e["job"].data["q"] == name for e in entries)
        assert all(e["job"].queue == name for e in entries)
        assert {j.id for j in qm.get_jobs(name, limit=1000)} == set(ids)


def test_get_jobs_pages_through_one_status_with_an_offset(qm: QueueManager) -> None:
    q = qm.create_queue("paged", max_retries=0, concurrency=1)
    q.pause()
    waiting = q.push_batch([{"data": n} for n in range(30)])
    delayed = [q.push(n, delay=600 + n) for n in range(5)]
    page = q.get_jobs("waiting", limit=10, offset=10)
    assert [job.id for job in page] == waiting[10:20], "the second page, in run order"
    assert [job.id for job in q.get_jobs("waiting", limit=10, offset=25)] == waiting[25:]
    assert q.get_jobs("waiting", limit=10, offset=30) == []
    assert q.get_jobs("waiting", limit=10, offset=2**60) == [], "far past the end: empty"
    assert [job.id for job in q.get_jobs("delayed", limit=2, offset=3)] == delayed[3:5]
    # Finished jobs come newest first: a page counts back from the newest.
    q.resume()
    q.process(lambda job: None)
    assert qm.wait_for(waiting[-1], timeout=WAIT) is not None  # one worker: the last runs last
    newest_first = list(reversed(waiting))
    done = q.get_jobs("completed", limit=4, offset=2)
    assert [job.id for job in done] == newest_first[2:6]
    with pytest.raises(QueueError, match="an offset needs a status"):
        q.get_jobs(None, limit=10, offset=5)
    with pytest.raises(QueueError, match="offset"):
        q.get_jobs("waiting", offset=-1)


def test_delete_job_removes_any_job_but_a_running_one(qm: QueueManager) -> None:
    started, release = threading.Event(), threading.Event()

    def handler(job: Job) -> None:
        if job.data == "fail":
            raise ValueError("kept until deleted")
        if job.data == "hold":
            started.set()
            release.wait(WAIT)

    q = qm.create_queue("deleting", max_retries=0, concurrency=1)
    q.process(handler)
    done, failed = q.push("done"), q.push("fail")
    assert qm.wait_for(done, timeout=WAIT) is not None
    assert qm.wait_for(failed, timeout=WAIT) is not None
    held = q.push("hold")
    assert started.wait(WAIT)
    waiting, delayed = q.push("waiting"), q.push("later", delay=600)
    with pytest.raises(QueueError, match="is running"):
        qm.delete_job(held)
    for job_id in (done, failed, waiting, delayed):
        assert qm.delete_job(job_id) is True, job_id
        assert qm.get_job(job_id) is None
    assert qm.delete_job(waiting) is False, "gone already"
    assert qm.delete_job(str(uuid.uuid4())) is False
    stats = q.get_stats()
    assert (stats["waiting"], stats["delayed"]) == (0, 0)
    assert [job.id for job in q.get_jobs("failed")] == []
    release.set()
    assert qm.join("deleting", timeout=WAIT), "nothing left to wait for"
    job = qm.get_job(held)
    assert job is not None and job.status == "completed"
