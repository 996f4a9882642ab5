"""Bad input: the right QueueError subclass, and the queues exactly as they were."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from helpers import STATUSES, utcnow
from rnode_queue import (
    InvalidCronError,
    InvalidJobError,
    InvalidQueueNameError,
    JobTooLargeError,
    QueueError,
    QueueManager,
)

QUEUE = "valid"


def snapshot(qm: QueueManager) -> dict[str, Any]:
    """Everything a rejected call must leave unchanged."""
    return {
        "stats": qm.get_queue(QUEUE).get_stats(),
        "jobs": {
            status: sorted(j.id for j in qm.get_jobs(QUEUE, status=status, limit=1000))
            for status in STATUSES
        },
        "all": sorted(j.id for j in qm.get_jobs(QUEUE, limit=1000)),
        "sizes": qm.get_stats().queue_sizes,
        "schedules": sorted(s["id"] for s in qm.list_schedules()),
    }


@pytest.fixture
def populated(qm: QueueManager) -> QueueManager:
    """A queue with waiting and delayed jobs (no handler), and one schedule."""
    qm.create_queue(QUEUE)
    qm.push(QUEUE, {"n": 1})
    qm.push(QUEUE, {"n": 2}, priority="high")
    qm.push(QUEUE, {"n": 3}, delay=600)
    qm.schedule(QUEUE, {"cron": True}, "0 2 * * *")
    return qm


def assert_rejected(
    qm: QueueManager, error: type[QueueError], call: Callable[[], Any]
) -> pytest.ExceptionInfo[QueueError]:
    before = snapshot(qm)
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, QueueError)
    assert str(info.value), "the error has no message"
    assert snapshot(qm) == before, "a rejected call changed the queue"
    return info


class Unserialisable:
    pass


BAD_DATA: list[Any] = [
    pytest.param(object(), id="object"),
    pytest.param(Unserialisable(), id="custom-object"),
    pytest.param({1, 2}, id="set"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param({"x": -math.inf}, id="nested-inf"),
    pytest.param({1: "int key"}, id="int-key"),
    pytest.param({("a",): 1}, id="tuple-key"),
    pytest.param({"deep": {"deeper": {2: 3}}}, id="nested-int-key"),
    pytest.param({"nested": [1, object()]}, id="nested-object"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param({"when": utcnow()}, id="datetime"),
    pytest.param(lambda: None, id="function"),
]


@pytest.mark.parametrize("data", BAD_DATA)
def test_unserialisable_data(populated: QueueManager, data: Any) -> None:
    info = assert_rejected(populated, InvalidJobError, lambda: populated.push(QUEUE, data))
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("data", BAD_DATA[:4])
def test_unserialisable_data_elsewhere(populated: QueueManager, data: Any) -> None:
    qm = populated
    assert_rejected(qm, InvalidJobError, lambda: qm.get_queue(QUEUE).push(data))
    assert_rejected(qm, InvalidJobError, lambda: qm.push(QUEUE, 1, metadata={"k": data}))
    assert_rejected(
        qm, InvalidJobError, lambda: qm.schedule_at(QUEUE, data, utcnow() + timedelta(hours=1))
    )
    assert_rejected(qm, InvalidJobError, lambda: qm.schedule(QUEUE, data, "0 3 * * *"))


@pytest.mark.parametrize("priority", ["urgent", "", "HIGHEST", 7, -1, 16, 2.5])
def test_unknown_priority(populated: QueueManager, priority: Any) -> None:
    assert_rejected(populated, InvalidJobError, lambda: populated.push(QUEUE, 1, priority=priority))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"delay": -1}, id="negative-delay"),
        pytest.param({"delay": -0.001}, id="slightly-negative-delay"),
        pytest.param({"delay": math.nan}, id="nan-delay"),
        pytest.param({"timeout": -0.5}, id="negative-timeout"),
        pytest.param({"timeout": math.nan}, id="nan-timeout"),
        pytest.param({"attempts": 0}, id="zero-attempts"),
        pytest.param({"attempts": -3}, id="negative-attempts"),
    ],
)
def test_bad_push_options(populated: QueueManager, options: dict[str, Any]) -> None:
    assert_rejected(populated, InvalidJobError, lambda: populated.push(QUEUE, 1, **options))


BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("x" * 201, id="201-chars"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("tab\there", id="tab"),
    pytest.param("del\x7f", id="del"),
    pytest.param("\x1b[31m", id="escape"),
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_queue_names(populated: QueueManager, name: str) -> None:
    qm = populated
    info = assert_rejected(qm, InvalidQueueNameError, lambda: qm.push(name, 1))
    assert isinstance(info.value, ValueError)
    assert_rejected(qm, InvalidQueueNameError, lambda: qm.create_queue(name))
    assert_rejected(qm, InvalidQueueNameError, lambda: qm.get_queue(name))
    assert_rejected(qm, InvalidQueueNameError, lambda: qm.push_batch(name, [{"data": 1}]))
    assert_rejected(qm, InvalidQueueNameError, lambda: qm.schedule(name, 1, "0 2 * * *"))
    assert_rejected(
        qm, InvalidQueueNameError, lambda: qm.schedule_at(name, 1, utcnow() + timedelta(hours=1))
    )


def test_longest_valid_queue_name(qm: QueueManager) -> None:
    name = "x" * 200
    job = qm.get_job(qm.push(name, 1))
    assert job is not None and job.queue == name


@pytest.mark.parametrize(
    "cron",
    [
        "",
        "bogus",
        "* * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 32 * *",
        "* * * 13 *",
        "61 * * * * *",
        "* * * * * * * * *",
        "0 2 * * * extra words",
    ],
)
def test_bad_cron(populated: QueueManager, cron: str) -> None:
    info = assert_rejected(
        populated, InvalidCronError, lambda: populated.schedule(QUEUE, {"x": 1}, cron)
    )
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "items",
    [
        pytest.param([{"data": 1}, {"data": object()}], id="unserialisable"),
        pytest.param([{"data": 1}, {"options": {"priority": "low"}}], id="missing-data"),
        pytest.param([{"data": 1}, {"data": 2, "options": {"priority": "urgent"}}], id="priority"),
        pytest.param([{"data": 1}, {"data": 2, "options": {"delay": -1}}], id="delay"),
        pytest.param([{"data": 1}, {"data": 2, "options": {"timeout": -1}}], id="timeout"),
        pytest.param([{"data": 1}, {"data": 2, "options": {"attempts": 0}}], id="attempts"),
        pytest.param([{"data": {1: 2}}, {"data": 2}], id="first-bad"),
        pytest.param(
            [{"data": 1}, {"data": 2, "options": {"metadata": {"k": {1, 2}}}}], id="metadata"
        ),
    ],
)
def test_bad_push_batch_item_pushes_nothing(
    populated: QueueManager, items: list[dict[str, Any]]
) -> None:
    assert_rejected(populated, InvalidJobError, lambda: populated.push_batch(QUEUE, items))


def test_get_jobs_with_an_unknown_status(populated: QueueManager) -> None:
    assert_rejected(populated, InvalidJobError, lambda: populated.get_jobs(QUEUE, status="done"))


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"backoff": "linear"}, id="backoff"),
        pytest.param({"concurrency": 0}, id="zero-concurrency"),
        pytest.param({"retry_delay": -1}, id="negative-retry-delay"),
        pytest.param({"timeout": -1}, id="negative-timeout"),
    ],
)
def test_bad_queue_config(populated: QueueManager, config: dict[str, Any]) -> None:
    before = populated.get_job(populated.push("configured", 1))
    assert before is not None
    assert_rejected(
        populated,
        QueueError,
        lambda: populated.create_queue("configured", max_retries=7, **config),
    )
    after = populated.get_job(populated.push("configured", 2))
    assert after is not None and after.max_attempts == before.max_attempts


class TestJobSizeLimit:
    @pytest.fixture
    def small(self, make_qm: Callable[..., QueueManager]) -> QueueManager:
        qm = make_qm(max_job_bytes=1024)
        qm.push(QUEUE, {"n": 1})
        qm.push(QUEUE, {"n": 2}, delay=600)
        return qm

    def test_a_small_job_fits(self, small: QueueManager) -> None:
        job = small.get_job(small.push(QUEUE, {"blob": "x" * 100}))
        assert job is not None

    def test_an_oversized_job_is_refused(self, small: QueueManager) -> None:
        info = assert_rejected(
            small, JobTooLargeError, lambda: small.push(QUEUE, {"blob": "x" * 2048})
        )
        assert isinstance(info.value, InvalidJobError)

    def test_oversized_metadata_is_refused(self, small: QueueManager) -> None:
        assert_rejected(
            small, JobTooLargeError, lambda: small.push(QUEUE, 1, metadata={"m": "y" * 2048})
        )

    def test_an_oversized_batch_item_pushes_nothing(self, small: QueueManager) -> None:
        items = [{"data": 1}, {"data": {"blob": "x" * 2048}}, {"data": 3}]
        assert_rejected(small, JobTooLargeError, lambda: small.push_batch(QUEUE, items))

    def test_an_oversized_scheduled_job_is_refused(self, small: QueueManager) -> None:
        when = utcnow() + timedelta(hours=1)
        assert_rejected(small, JobTooLargeError, lambda: small.schedule_at(QUEUE, "z" * 2048, when))

    def test_the_default_limit_is_one_mebibyte(self, qm: QueueManager) -> None:
        with pytest.raises(JobTooLargeError):
            qm.push("big", "x" * (1_048_576 + 1))
        assert qm.get_stats().queue_sizes.get("big", 0) == 0


def test_an_unknown_keyword_names_the_public_call(populated: QueueManager) -> None:
    # The options pass through to the engine as **options: a typo must still be a TypeError
    # that names the call the user made (not the engine's), and change nothing.
    before = snapshot(populated)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("QueueManager", lambda: QueueManager(concurency=2)),
        ("create_queue", lambda: populated.create_queue(QUEUE, max_retry=2)),
        ("schedule", lambda: populated.schedule(QUEUE, 1, "@hourly", nmae="x")),
        ("schedule_at", lambda: populated.schedule_at(QUEUE, 1, utcnow(), delay=1)),
        ("QueueManager.push", lambda: populated.push(QUEUE, 1, priorty="high")),
    ]
    for name, call in calls:
        with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword") as info:
            call()
        assert "Engine" not in str(info.value)
    assert snapshot(populated) == before
