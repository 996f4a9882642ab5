"""Configuration: QueueManager.from_env and the manager-wide queue defaults."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import WAIT, check_concurrency
from rnode_queue import Job, QueueError, QueueManager

ENV_VARS = (
    "REDIS_URL",
    "REDIS_PREFIX",
    "QUEUE_DEFAULT_TTL",
    "QUEUE_DEFAULT_CONCURRENCY",
    "QUEUE_DEFAULT_RETRIES",
    "QUEUE_DEFAULT_TIMEOUT",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every variable from_env reads removed."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def from_env(manager_pool: Any) -> Callable[..., QueueManager]:
    def make(**overrides: Any) -> QueueManager:
        qm: QueueManager = manager_pool.track(QueueManager.from_env(**overrides))
        return qm

    return make


def test_from_env_without_variables_is_a_default_memory_manager(
    env: pytest.MonkeyPatch, from_env: Callable[..., QueueManager]
) -> None:
    qm = from_env()
    assert isinstance(qm, QueueManager)
    job = qm.get_job(qm.push("env", 1))
    assert job is not None and job.max_attempts == 4
    qm.get_queue("env").process(lambda job: "ran")
    done = qm.wait_for(job.id, timeout=WAIT)
    assert done is not None and done.result == "ran"


def test_from_env_retries(env: pytest.MonkeyPatch, from_env: Callable[..., QueueManager]) -> None:
    env.setenv("QUEUE_DEFAULT_RETRIES", "1")
    env.setenv("QUEUE_DEFAULT_TTL", "3600")
    qm = from_env()
    job = qm.get_job(qm.push("env", 1))
    assert job is not None and job.max_attempts == 2
    explicit = qm.create_queue("explicit", max_retries=5)
    job = qm.get_job(explicit.push(1))
    assert job is not None and job.max_attempts == 6


def test_from_env_keyword_overrides_win(
    env: pytest.MonkeyPatch, from_env: Callable[..., QueueManager]
) -> None:
    env.setenv("QUEUE_DEFAULT_RETRIES", "1")
    qm = from_env(max_retries=4)
    job = qm.get_job(qm.push("env", 1))
    assert job is not None and job.max_attempts == 5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_from_env_concurrency(
    env: pytest.MonkeyPatch, from_env: Callable[..., QueueManager], kind: str
) -> None:
    env.setenv("QUEUE_DEFAULT_CONCURRENCY", "2")
    qm = from_env()
    check_concurrency(qm, "env", 2, qm.get_queue("env").process, kind)


def test_from_env_timeout(env: pytest.MonkeyPatch, from_env: Callable[..., QueueManager]) -> None:
    env.setenv("QUEUE_DEFAULT_TIMEOUT", "0.2")
    env.setenv("QUEUE_DEFAULT_RETRIES", "0")
    qm = from_env()
    release = threading.Event()

    def handler(job: Job) -> None:
        release.wait(WAIT)

    qm.get_queue("env").process(handler)
    try:
        job = qm.wait_for(qm.push("env", 1), timeout=WAIT)
        assert job is not None
        assert job.status == "failed"
        assert job.attempts == 1
        assert job.error is not None and "timed out" in job.error
    finally:
        release.set()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("QUEUE_DEFAULT_CONCURRENCY", "many"),
        ("QUEUE_DEFAULT_CONCURRENCY", "0"),
        ("QUEUE_DEFAULT_RETRIES", "three"),
        ("QUEUE_DEFAULT_RETRIES", "-1"),
        ("QUEUE_DEFAULT_TIMEOUT", "soon"),
        ("QUEUE_DEFAULT_TIMEOUT", "-5"),
        ("QUEUE_DEFAULT_TTL", "forever"),
    ],
)
def test_from_env_bad_values(env: pytest.MonkeyPatch, var: str, value: str) -> None:
    env.setenv(var, value)
    with pytest.raises(QueueError, match=var):
        QueueManager.from_env().close(timeout=1)


def test_from_env_redis(
    env: pytest.MonkeyPatch,
    from_env: Callable[..., QueueManager],
    redis_kwargs: dict[str, Any],
    manager_pool: Any,
) -> None:
    env.setenv("REDIS_URL", redis_kwargs["url"])
    env.setenv("REDIS_PREFIX", redis_kwargs["prefix"])
    qm = from_env()
    job_id = qm.push("env", {"via": "env"})
    other = manager_pool.open(**redis_kwargs)
    job = other.get_job(job_id)
    assert job is not None and job.data == {"via": "env"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_manager_defaults_apply_to_new_queues(
    make_qm: Callable[..., QueueManager], kind: str
) -> None:
    qm = make_qm(max_retries=0, concurrency=1)
    job = qm.get_job(qm.push("defaults", 1))
    assert job is not None and job.max_attempts == 1
    check_concurrency(qm, "limited", 1, qm.get_queue("limited").process, kind)


def test_manager_default_timeout_and_backoff(make_qm: Callable[..., QueueManager]) -> None:
    qm = make_qm(timeout=0.2, max_retries=1, retry_delay=0.01, backoff="fixed")
    release = threading.Event()

    def handler(job: Job) -> None:
        release.wait(WAIT)

    qm.get_queue("defaults").process(handler)
    try:
        job = qm.wait_for(qm.push("defaults", 1), timeout=WAIT)
        assert job is not None
        assert job.status == "failed"
        assert job.attempts == 2
        assert job.error is not None and "timed out" in job.error
    finally:
        release.set()
