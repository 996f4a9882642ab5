"""Regressions of the review fixes ("Correctness first"): each test failed on the code before
them; a comment at each says what that code did. The last test is of a fault found while
writing them (a lease warning in a process that holds no jobs).

Forked children always end with ``os._exit`` and report through a pipe, as in
test_process_lifecycle.py. The tests that pause Redis start a redis-server of their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import select
import signal
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ENABLED_BACKENDS
from helpers import EARLY_TOLERANCE, WAIT, Recorder, run_async, utcnow, wait_equal, wait_until
from redis_servers import RedisServer, executable, free_port, unavailable
from rnode_queue import (
    AsyncQueueManager,
    BackendError,
    ConfigError,
    InvalidCronError,
    InvalidJobError,
    InvalidQueueNameError,
    Job,
    JobNotFoundError,
    JobTooLargeError,
    PushOutcomeUnknownError,
    QueueError,
    QueueManager,
)

if TYPE_CHECKING:
    from conftest import ManagerPool

MakeQm = Callable[..., QueueManager]
MakeAqm = Callable[..., AsyncQueueManager]

needs_redis = pytest.mark.skipif(
    "redis" not in ENABLED_BACKENDS, reason="the 'redis' backend is not enabled"
)
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
# Python >= 3.12 warns about fork() in a process with threads; forking one is the point.
fork_in_threads = pytest.mark.filterwarnings(
    "ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning"
)


def engine_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "rnode_queue" and record.levelno >= logging.WARNING
    ]


# -- 1. job ids never repeat across forks; a push never overwrites ------------------------------

PER_CHILD = 3000
IDS_QUEUE = "ids"


def _fork_pushers(
    children: int, push: Callable[[], list[str]], meanwhile: Callable[[], Any] = lambda: None
) -> list[list[str]]:
    """Fork ``children`` siblings that each run ``push``; returns the ids each reported.

    ``meanwhile`` runs in the parent while the children push.

    Every child ends with ``os._exit``; every wait is bounded and a stuck child is killed.
    """
    started: list[tuple[int, int]] = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # a child
            code = 1
            try:
                os.close(read_end)
                try:
                    message: dict[str, Any] = {"ids": push()}
                except BaseException:
                    message = {"error": traceback.format_exc()}
                data = json.dumps(message).encode()
                while data:
                    data = data[os.write(write_end, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        started.append((pid, read_end))

    try:
        meanwhile()
    except BaseException:
        for pid, fd in started:
            os.close(fd)
            _reap(pid, WAIT)
        raise
    chunks: dict[int, list[bytes]] = {fd: [] for _, fd in started}
    open_fds = set(chunks)
    deadline = time.monotonic() + 2 * WAIT
    try:
        while open_fds:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select(list(open_fds), [], [], max(remaining, 0))
            if not ready:
                break
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    chunks[fd].append(chunk)
                else:
                    open_fds.discard(fd)
    finally:
        for _, fd in started:
            os.close(fd)
        codes = [_reap(pid, 0 if open_fds else WAIT) for pid, _ in started]
    assert not open_fds, f"a forked child reported nothing within {2 * WAIT}s (killed)"
    reports: list[list[str]] = []
    for (_, fd), code in zip(started, codes, strict=True):
        message = json.loads(b"".join(chunks[fd]) or b"{}")
        if "error" in message:
            pytest.fail(f"a forked child raised:\n{message['error']}", pytrace=False)
        assert code == 0, f"a forked child exited with {code}"
        reports.append(message["ids"])
    return reports


def _reap(pid: int, timeout: float) -> int:
    """The child's exit code; kills it first if it has not ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)


def _assert_all_distinct(*groups: list[str]) -> set[str]:
    every = [job_id for group in groups for job_id in group]
    distinct = set(every)
    assert len(distinct) == len(every), f"{len(every) - len(distinct)} job ids repeat"
    return distinct


@needs_fork
@fork_in_threads
@pytest.mark.parametrize("fork_with", ["open-manager", "new-manager"])
def test_ids_never_repeat_across_forked_siblings(
    backend: str,
    backend_kwargs: dict[str, Any],
    manager_pool: ManagerPool,
    fork_with: str,
) -> None:
    # Old: ids came from a user-space generator whose state the fork copied. With a manager
    # open, each child reseeded it from that same copied state: siblings drew the same ids.
    # With none open, nothing reseeded: the children went on with the parent's sequence. On
    # redis a push of an id that existed overwrote that job: the siblings' jobs vanished.
    qm = manager_pool.open(**backend_kwargs)
    parent_ids = [qm.push(IDS_QUEUE, {"parent": n}) for n in range(5)]

    if fork_with == "open-manager":

        def push() -> list[str]:
            ids = [qm.push(IDS_QUEUE, {"child": n}) for n in range(PER_CHILD)]
            qm.close(timeout=5)
            return ids

    else:
        qm.close(timeout=5)

        def push() -> list[str]:
            child_qm = QueueManager(**backend_kwargs)
            try:
                return [child_qm.push(IDS_QUEUE, {"child": n}) for n in range(PER_CHILD)]
            finally:
                child_qm.close(timeout=5)

    def parent_pushes() -> None:  # with its manager open, the parent draws ids meanwhile
        if fork_with == "open-manager":
            parent_ids.extend(qm.push(IDS_QUEUE, {"parent": n}) for n in range(5, PER_CHILD))

    first, second = _fork_pushers(2, push, parent_pushes)
    assert len(first) == len(second) == PER_CHILD
    every = _assert_all_distinct(parent_ids, first, second)

    if backend == "redis":  # every job of every process is stored, none overwritten
        check = qm if fork_with == "open-manager" else manager_pool.open(**backend_kwargs)
        stored = {job.id for job in check.get_jobs(IDS_QUEUE, limit=len(every) + 10)}
        assert stored == every
        assert check.get_stats().queue_sizes[IDS_QUEUE] == len(every)
        for job_id in (*first[:3], *second[-3:]):
            job = check.get_job(job_id)
            assert job is not None and "child" in job.data


# -- 2. a push whose reply is lost is retried with the same ids ---------------------------------


class PausableRedis:
    """A redis-server of the test's own, which the test pauses with ``CLIENT PAUSE``."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.url = server.url

    def command(self, *args: str) -> str:
        done = subprocess.run(
            [executable("redis-cli"), "-p", str(self.server.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def pause_writes(self, seconds: float) -> None:
        assert self.command("CLIENT", "PAUSE", str(int(seconds * 1000)), "WRITE") == "OK"


@pytest.fixture
def pausable_redis(tmp_path: Path) -> Iterator[PausableRedis]:
    if "redis" not in ENABLED_BACKENDS:
        pytest.skip("the 'redis' backend is not enabled")
    executable("redis-cli")
    failure = None
    for _ in range(3):  # another process may grab the free port before redis binds it
        server = RedisServer(tmp_path / "redis", free_port(), "--appendonly", "no")
        failure = server.try_start()
        if failure is None:
            redis = PausableRedis(server)
            try:
                yield redis
            finally:
                subprocess.run(
                    [executable("redis-cli"), "-p", str(server.port), "CLIENT", "UNPAUSE"],
                    capture_output=True,
                    timeout=10,
                )
                server.stop()
            return
    unavailable(failure or "redis-server did not start")


def warm_up(qm: QueueManager) -> None:
    """Has the server load the push script, with no job left behind: on a fresh server a
    paused push would otherwise wait on a script the server does not have yet (its tries end
    in NOSCRIPT, not in a lost reply)."""
    qm.push("warm-up", 0)
    assert qm.delete_queue("warm-up")
    assert qm.get_stats().queue_sizes.get("lost") == 0


@needs_redis
def test_a_push_whose_reply_is_lost_is_stored_once(
    pausable_redis: PausableRedis, manager_pool: ManagerPool, caplog: pytest.LogCaptureFixture
) -> None:
    # Old: the push raised BackendError when its reply did not come in time, although Redis
    # stored the job once the pause ended; the caller's retry stored a second copy.
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    qm = manager_pool.open(url=pausable_redis.url, prefix="lost-reply")
    q = qm.create_queue("lost", concurrency=1)
    warm_up(qm)
    pausable_redis.pause_writes(6)  # longer than one command's timeout, within the retry budget
    job_id = qm.push("lost", {"n": 1})
    assert isinstance(job_id, str)
    assert any("same ids" in m for m in engine_warnings(caplog)), (
        "the push was not retried (was the server paused?)",
        engine_warnings(caplog),
    )

    job = qm.get_job(job_id)
    assert job is not None and job.data == {"n": 1} and job.status == "waiting"
    assert [j.id for j in qm.get_jobs("lost", limit=100)] == [job_id]
    assert qm.get_stats().queue_sizes["lost"] == 1
    assert q.get_stats()["size"] == 1

    runs = Recorder()
    q.process(runs.record)
    done = qm.wait_for(job_id, timeout=WAIT)
    assert done is not None and done.status == "completed"
    assert qm.join("lost", timeout=WAIT)
    assert [entry["job"].id for entry in runs.snapshot()] == [job_id]


@needs_redis
def test_a_push_unanswered_past_the_retry_budget_names_its_ids(
    pausable_redis: PausableRedis, manager_pool: ManagerPool
) -> None:
    # Old: a BackendError without the ids, although the job was stored once Redis answered;
    # the caller could neither look it up nor push again without a duplicate.
    qm = manager_pool.open(url=pausable_redis.url, prefix="unanswered")
    qm.create_queue("lost")
    warm_up(qm)
    pausable_redis.pause_writes(13)  # past the ~10 s during which a push is tried again
    with pytest.raises(PushOutcomeUnknownError) as info:
        qm.push("lost", {"n": 1})
    error = info.value
    assert isinstance(error, BackendError) and isinstance(error, QueueError)
    assert isinstance(error.job_ids, list) and len(error.job_ids) == 1, error.job_ids
    (job_id,) = error.job_ids
    assert isinstance(job_id, str) and str(uuid.UUID(job_id)) == job_id

    # Once Redis answers again the job is there, exactly once (the tries queued behind the
    # pause carried the same id).
    job = wait_until(lambda: qm.get_job(job_id), timeout=WAIT, what="the job after the pause")
    assert job.data == {"n": 1}
    assert [j.id for j in qm.get_jobs("lost", limit=100)] == [job_id]
    assert qm.get_stats().queue_sizes["lost"] == 1
    # and the manager carries on
    other = qm.push("lost", {"n": 2})
    assert {j.id for j in qm.get_jobs("lost", limit=100)} == {job_id, other}


# -- 3. selecting the backend --------------------------------------------------------------------


@needs_redis
def test_a_url_alone_selects_redis(redis_server: str, manager_pool: ManagerPool) -> None:
    # Old: a url without backend="redis" made a memory manager that ignored the url.
    prefix = f"rnq-test:{uuid.uuid4().hex}"
    qm = manager_pool.open(url=redis_server, prefix=prefix)
    assert qm.backend == "redis"
    job_id = qm.push("via-url", 1)
    # Another manager on that Redis sees the job: it is stored there, not in memory.
    other = manager_pool.open(backend="redis", url=redis_server, prefix=prefix)
    assert other.get_job(job_id) is not None


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"backend": "memory", "url": "redis://127.0.0.1:1/0"}, id="memory-with-url"),
        pytest.param({"url": "redis://127.0.0.1:1/0", "path": "queue-data"}, id="url-and-path"),
        pytest.param({"backend": "postgres"}, id="unknown-backend"),
        pytest.param({"backend": "Memory"}, id="unknown-case"),
    ],
)
def test_conflicting_backend_settings(manager_pool: ManagerPool, options: dict[str, Any]) -> None:
    # Old: the url (or path) was silently ignored, and an unknown name was a BackendError.
    with pytest.raises(ConfigError) as info:
        manager_pool.open(**options)
    assert isinstance(info.value, QueueError) and isinstance(info.value, ValueError)
    assert str(info.value)


# -- 4. settings errors are ConfigError; job options stay InvalidJobError -------------------------


def assert_config_error(call: Callable[[], Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        call()
    error = info.value
    assert isinstance(error, QueueError) and isinstance(error, ValueError)
    assert not isinstance(error, InvalidJobError)
    assert str(error), "the error has no message"
    return error


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"concurrency": 0}, id="concurrency-0"),
        pytest.param({"concurrency": True}, id="concurrency-bool"),
        pytest.param({"lease": -1}, id="negative-lease"),
        pytest.param({"fsync": "sometimes"}, id="fsync"),
        pytest.param({"max_retries": -1}, id="negative-max-retries"),
        pytest.param({"keep_completed": 2**70}, id="huge-keep-completed"),
    ],
)
def test_bad_manager_settings(make_qm: MakeQm, settings: dict[str, Any]) -> None:
    # Old: a mix of QueueError, ValueError, TypeError and OverflowError.
    assert_config_error(lambda: make_qm(**settings))


@needs_redis
@pytest.mark.parametrize("prefix", ["app{1}", "a{b", "b}", ""])
def test_a_redis_prefix_with_braces(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool, prefix: str
) -> None:
    # A brace in the prefix would break the queues' hash tags (Redis Cluster).
    error = assert_config_error(lambda: manager_pool.open(**{**redis_kwargs, "prefix": prefix}))
    assert "prefix" in str(error)


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"concurrency": 0}, id="concurrency-0"),
        pytest.param({"concurrency": True}, id="concurrency-bool"),
        pytest.param({"max_retries": -1}, id="negative-max-retries"),
        pytest.param({"keep_completed": 2**70}, id="huge-keep-completed"),
        pytest.param({"jitter": 0.5, "backoff": "fixed"}, id="jitter-with-fixed"),
        pytest.param({"backoff_cap": 10, "backoff": "fixed"}, id="cap-with-fixed"),
        pytest.param(
            {"custom_delays": [1, 2], "backoff": "exponential"}, id="delays-with-exponential"
        ),
    ],
)
def test_bad_queue_settings_change_nothing(qm: QueueManager, settings: dict[str, Any]) -> None:
    # Old: jitter, backoff_cap and custom_delays were silently ignored with another backoff.
    qm.create_queue("configured", max_retries=1)
    before = qm.get_job(qm.push("configured", 1))
    assert_config_error(lambda: qm.create_queue("configured", **{"max_retries": 7, **settings}))
    after = qm.get_job(qm.push("configured", 2))
    assert before is not None and after is not None
    assert after.max_attempts == before.max_attempts == 2


def test_bad_call_settings(qm: QueueManager) -> None:
    job_id = qm.push("calls", 1)
    # Old: OverflowError, and a negative timeout was read as "no timeout" or a ValueError.
    assert_config_error(lambda: qm.get_jobs("calls", limit=2**70))
    assert_config_error(lambda: qm.wait_for(job_id, timeout=-1))
    assert_config_error(lambda: qm.close(timeout=-1))
    assert qm.closed is False
    assert [job.id for job in qm.get_jobs("calls")] == [job_id]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"attempts": 0}, id="attempts"),
        pytest.param({"delay": -1}, id="delay"),
        pytest.param({"timeout": -1}, id="timeout"),
        pytest.param({"priority": "urgent"}, id="priority"),
    ],
)
def test_job_option_errors_stay_invalid_job_errors(
    qm: QueueManager, options: dict[str, Any]
) -> None:
    for push in (
        lambda: qm.push("opts", 1, **options),
        lambda: qm.get_queue("opts").push(1, **options),
        lambda: qm.push_batch("opts", [{"data": 1, "options": options}]),
    ):
        with pytest.raises(InvalidJobError) as info:
            push()
        assert not isinstance(info.value, ConfigError)
    assert qm.get_stats().queue_sizes.get("opts", 0) == 0


def test_an_unknown_keyword_names_the_public_method(qm: QueueManager, make_aqm: MakeAqm) -> None:
    # Old: "Engine.push() got an unexpected keyword argument" (a name users never see).
    with pytest.raises(TypeError, match=r"QueueManager\.push\(\)") as info:
        qm.push("kw", 1, priorty="high")  # type: ignore[call-arg]
    assert "Engine" not in str(info.value) and "priorty" in str(info.value)
    with pytest.raises(TypeError, match=r"(?<!Async)Queue\.push\(\)") as info:
        qm.get_queue("kw").push(1, priorty="high")  # type: ignore[call-arg]
    assert "Engine" not in str(info.value) and "QueueManager" not in str(info.value)

    async def main() -> None:
        aqm = make_aqm()
        with pytest.raises(TypeError, match=r"AsyncQueueManager\.push\(\)") as info:
            await aqm.push("kw", 1, priorty="high")  # type: ignore[call-arg]
        assert "Engine" not in str(info.value)

    run_async(main())
    assert qm.get_stats().queue_sizes.get("kw", 0) == 0


# -- 5. natural inputs ---------------------------------------------------------------------------


def test_durations_accept_timedelta(qm: QueueManager) -> None:
    # Old: TypeError ("must be real number, not datetime.timedelta").
    job = qm.get_job(
        qm.push("td", 1, delay=timedelta(minutes=2), timeout=timedelta(seconds=7, milliseconds=5))
    )
    assert job is not None and job.status == "delayed"
    assert job.scheduled_at is not None
    gap = (job.scheduled_at - job.created_at).total_seconds()
    assert abs(gap - 120) < 0.01, gap
    assert job.timeout == 7.005
    batch = qm.push_batch("td", [{"data": 2, "options": {"delay": timedelta(hours=1)}}])
    queued = qm.get_job(batch[0])
    assert queued is not None and queued.scheduled_at is not None
    assert abs((queued.scheduled_at - queued.created_at).total_seconds() - 3600) < 0.01

    # retry_delay: the second run comes that long after the first.
    q = qm.create_queue(
        "td-retry", retry_delay=timedelta(milliseconds=150), backoff="fixed", max_retries=1
    )
    runs = Recorder()

    def flaky(job: Job) -> str:
        runs.record(job)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return "ok"

    q.process(flaky)
    done = qm.wait_for(q.push(1), timeout=timedelta(seconds=WAIT))
    assert done is not None and done.status == "completed" and done.attempts == 2
    first, second = (entry["mono"] for entry in runs.snapshot())
    assert second - first >= 0.15 - EARLY_TOLERANCE

    # ttl: how long a finished job is kept (zero: not at all; an hour: still there).
    gone = qm.create_queue("td-gone", ttl=timedelta(0))
    kept = qm.create_queue("td-kept", ttl=timedelta(hours=1))
    gone_id, kept_id = gone.push(1), kept.push(1)
    gone.process(lambda job: None)
    kept.process(lambda job: None)
    assert qm.join("td-gone", timeout=timedelta(seconds=WAIT))
    assert qm.join("td-kept", timeout=timedelta(seconds=WAIT))
    wait_until(lambda: qm.get_job(gone_id) is None, what="the job of a queue with ttl=0")
    retained = qm.get_job(kept_id)
    assert retained is not None and retained.status == "completed"


def _is_midnight(when: datetime) -> bool:
    return (when.hour, when.minute, when.second, when.microsecond) == (0, 0, 0, 0)


MACROS: dict[str, tuple[timedelta, Callable[[datetime], bool]]] = {
    "@yearly": (timedelta(days=366), lambda t: _is_midnight(t) and (t.month, t.day) == (1, 1)),
    "@annually": (timedelta(days=366), lambda t: _is_midnight(t) and (t.month, t.day) == (1, 1)),
    "@monthly": (timedelta(days=31), lambda t: _is_midnight(t) and t.day == 1),
    "@weekly": (timedelta(days=7), lambda t: _is_midnight(t) and t.weekday() == 6),  # Sunday
    "@daily": (timedelta(days=1), _is_midnight),
    "@midnight": (timedelta(days=1), _is_midnight),
    "@hourly": (
        timedelta(hours=1),
        lambda t: (t.minute, t.second, t.microsecond) == (0, 0, 0),
    ),
}


@pytest.mark.parametrize("macro", list(MACROS))
def test_cron_macros(qm: QueueManager, macro: str) -> None:
    # Old: InvalidCronError (only 5 or 6 fields were parsed).
    within, fits = MACROS[macro]
    before = utcnow()
    schedule_id = qm.schedule("macros", {"macro": macro}, macro)
    (listed,) = qm.list_schedules()
    assert listed["id"] == schedule_id and listed["cron"] == macro
    next_run = listed["next_run"]
    assert isinstance(next_run, datetime) and next_run.utcoffset() == timedelta(0)
    assert fits(next_run), f"{macro} next runs at {next_run}"
    assert before < next_run <= before + within, next_run
    # Declaring it again is idempotent, as for any cron.
    assert qm.schedule("macros", {"macro": macro}, macro) == schedule_id


@pytest.mark.parametrize("cron", ["0 0 31 2 *", "0 0 30 2 *", "0 0 0 31 4 *"])
def test_a_cron_that_never_fires(qm: QueueManager, cron: str) -> None:
    # Old: accepted; a schedule that never pushed a job, without a word.
    with pytest.raises(InvalidCronError) as info:
        qm.schedule("never", 1, cron)
    assert isinstance(info.value, ValueError) and "never" in str(info.value)
    assert qm.list_schedules() == []


@pytest.mark.parametrize("cron", ["0 2 * * *\x00", "0 \x002 * * *", "\x00"])
def test_a_cron_with_a_nul(qm: QueueManager, cron: str) -> None:
    # Old: "illegal character ' '", a message that hid the character.
    with pytest.raises(InvalidCronError) as info:
        qm.schedule("nul", 1, cron)
    message = str(info.value)
    assert "control character" in message, message
    assert "illegal character ' '" not in message
    assert qm.list_schedules() == []


def _counters(qm: QueueManager) -> tuple[Any, ...]:
    stats = qm.get_stats()
    return (
        stats.jobs_processed,
        stats.jobs_failed,
        stats.jobs_retried,
        stats.active_workers,
        stats.queue_sizes,
    )


def test_schedule_at_before_year_one_in_utc(qm: QueueManager) -> None:
    # 0001-01-01 00:00 at +05:00 is in the year 0 in UTC. Old: only times after the year
    # 9999 were refused; this one was stored, as a job whose time no datetime can hold.
    qm.push("early", 0)
    before = _counters(qm)
    when = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(InvalidJobError):
        qm.schedule_at("early", 1, when)
    with pytest.raises(InvalidJobError):
        qm.push("early", 1, scheduled_at=when)
    assert _counters(qm) == before
    assert [job.data for job in qm.get_jobs("early")] == [0]


def test_wait_for_with_an_infinite_timeout(qm: QueueManager, make_aqm: MakeAqm) -> None:
    # Old: ConfigError / OverflowError ("cannot convert float infinity").
    q = qm.get_queue("inf")
    q.process(lambda job: job.data * 2)
    job_id = q.push(21)
    done = qm.wait_for(job_id, timeout=float("inf"))
    assert done is not None and done.result == 42
    again = qm.wait_for(job_id, timeout=math.inf)  # a finished job: at once
    assert again is not None and again.status == "completed"

    async def main() -> None:
        aqm = make_aqm()
        aq = aqm.get_queue("inf-async")
        aq.process(lambda job: job.data + 1)
        async_id = await aqm.push("inf-async", 1)
        got = await aqm.wait_for(async_id, timeout=float("inf"))
        assert got is not None and got.result == 2

    run_async(main())


def test_a_queue_name_with_a_lone_surrogate(qm: QueueManager) -> None:
    # Old: UnicodeEncodeError escaped from the conversion.
    name = "q\ud800"
    for call in (
        lambda: qm.push(name, 1),
        lambda: qm.get_queue(name),
        lambda: qm.create_queue(name),
        lambda: qm.push_batch(name, [{"data": 1}]),
        lambda: qm.schedule(name, 1, "0 2 * * *"),
        lambda: qm.get_jobs(name),
    ):
        with pytest.raises(InvalidQueueNameError) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert qm.get_stats().queue_sizes == {}
    assert qm.list_schedules() == []


@pytest.mark.parametrize("key", ["option", "Options", "priority"])
def test_push_batch_with_an_unknown_item_key(qm: QueueManager, key: str) -> None:
    # Old: the key was ignored: {"option": {"priority": "high"}} pushed a normal job.
    qm.push("batch", 0)
    items = [{"data": 1}, {"data": 2, key: {"priority": "high"}}]
    with pytest.raises(InvalidJobError) as info:
        qm.push_batch("batch", items)
    assert key in str(info.value)
    assert [job.data for job in qm.get_jobs("batch")] == [0]
    assert qm.get_stats().queue_sizes["batch"] == 1


# -- 6. wait_for on an unknown id (async manager) -------------------------------------------------


def test_async_wait_for_an_unknown_id(make_aqm: MakeAqm) -> None:
    # Old: an unknown id returned None (as a timeout does) after a first wait slice.
    async def main() -> None:
        aqm = make_aqm()
        for unknown in (str(uuid.uuid4()), "not-a-job-id"):
            begin = time.monotonic()
            with pytest.raises(JobNotFoundError):
                await aqm.wait_for(unknown, timeout=5)
            assert time.monotonic() - begin < 4, "reported at the timeout, not at once"
        with pytest.raises(JobNotFoundError):
            await aqm.wait_for(str(uuid.uuid4()))  # no timeout: raises all the same
        waiting = await aqm.push("nobody", 1)
        assert await aqm.wait_for(waiting, timeout=0.1) is None

    run_async(main(), timeout=30)


# -- 7. results have a size limit ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_oversized_result_fails_the_run(make_qm: MakeQm, kind: str) -> None:
    # Old: the result was stored whatever its size (on redis, a multi-megabyte reply that
    # could stall every other call).
    qm = make_qm(max_job_bytes=10_000)
    runs: dict[str, int] = {}
    lock = threading.Lock()

    def result_of(job: Job) -> str:
        with lock:
            runs[job.id] = runs.get(job.id, 0) + 1
            run = runs[job.id]
        size = job.data["sizes"][min(run, len(job.data["sizes"])) - 1]
        return "x" * size

    async def async_result_of(job: Job) -> str:
        return result_of(job)

    q = qm.create_queue("results", retry_delay=0.01, backoff="fixed")
    q.process(result_of if kind == "sync" else async_result_of)

    too_big = qm.wait_for(q.push({"sizes": [20_000]}, attempts=1), timeout=WAIT)
    assert too_big is not None and too_big.status == "failed"
    assert too_big.attempts == 1 and too_big.result is None
    assert too_big.error is not None
    assert "JobTooLargeError" in too_big.error and "max_job_bytes" in too_big.error

    # With a second attempt, the run is retried (and the small result of the retry is kept).
    retried = qm.wait_for(q.push({"sizes": [20_000, 10]}, attempts=2), timeout=WAIT)
    assert retried is not None and retried.status == "completed", retried.error
    assert retried.attempts == 2 and retried.result == "x" * 10
    twice = qm.wait_for(q.push({"sizes": [20_000]}, attempts=2), timeout=WAIT)
    assert twice is not None and twice.status == "failed" and twice.attempts == 2
    assert twice.error is not None and "JobTooLargeError" in twice.error

    small = qm.wait_for(q.push({"sizes": [100]}), timeout=WAIT)
    assert small is not None and small.status == "completed" and small.result == "x" * 100

    # Unrelated calls keep working.
    other = qm.push("unrelated", {"n": 1})
    job = qm.get_job(other)
    assert job is not None and job.status == "waiting"
    assert qm.get_stats().queue_sizes["unrelated"] == 1
    wait_equal(lambda: q.get_stats()["failed"], 2, what="failed jobs")
    wait_equal(lambda: q.get_stats()["completed"], 2, what="completed jobs")


# -- 8. a schedule's data has the size limit too --------------------------------------------------


def test_an_oversized_schedule_is_refused_at_declaration(make_qm: MakeQm) -> None:
    # Old: accepted; every tick then failed to push (a warning per tick, no job ever).
    qm = make_qm(max_job_bytes=1024)
    with pytest.raises(JobTooLargeError) as info:
        qm.schedule("cron", {"blob": "x" * 2048}, "* * * * *")
    assert isinstance(info.value, InvalidJobError)
    with pytest.raises(JobTooLargeError):
        qm.schedule("cron", 1, "* * * * *", metadata={"m": "y" * 2048})
    assert qm.list_schedules() == []
    assert qm.get_stats().queue_sizes.get("cron", 0) == 0


# -- 9. a backoff function ----------------------------------------------------------------------


def _flaky_runs(qm: QueueManager, queue: str, failures: int) -> tuple[Job, list[float]]:
    """Runs one job of ``queue`` that fails ``failures`` times; the job and its run times."""
    runs = Recorder()

    def handler(job: Job) -> str:
        runs.record(job)
        if len(runs) <= failures:
            raise RuntimeError(f"failure {len(runs)}")
        return "ok"

    qm.get_queue(queue).process(handler)
    done = qm.wait_for(qm.push(queue, 1), timeout=WAIT)
    assert done is not None
    return done, [entry["mono"] for entry in runs.snapshot()]


def test_a_backoff_function(qm: QueueManager, caplog: pytest.LogCaptureFixture) -> None:
    # Old: a function was refused (backoff had to be one of three names).
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    calls: list[tuple[int, str]] = []

    def linear(attempt: int, error: str) -> float:
        calls.append((attempt, error))
        return 0.05 * attempt

    qm.create_queue("linear", backoff=linear, max_retries=2)
    done, times = _flaky_runs(qm, "linear", failures=2)
    assert done.status == "completed" and done.attempts == 3 and done.result == "ok"
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= 0.05 - EARLY_TOLERANCE and gaps[1] >= 0.1 - EARLY_TOLERANCE, gaps
    assert [attempt for attempt, _ in calls] == [1, 2]
    assert "failure 1" in calls[0][1] and "failure 2" in calls[1][1]
    assert [m for m in engine_warnings(caplog) if "backoff" in m] == []


def backoff_that_raises(attempt: int, error: str) -> float:
    raise ZeroDivisionError("no delay today")


def backoff_that_is_negative(attempt: int, error: str) -> float:
    return -1


def backoff_that_is_nan(attempt: int, error: str) -> float:
    return math.nan


@pytest.mark.parametrize(
    "function", [backoff_that_raises, backoff_that_is_negative, backoff_that_is_nan]
)
def test_a_failing_backoff_function_falls_back_to_retry_delay(
    qm: QueueManager, caplog: pytest.LogCaptureFixture, function: Callable[[int, str], float]
) -> None:
    # Old: the retry was lost (the job stayed active, or failed at once with the function's
    # error), and nothing said why.
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    qm.create_queue("fallback", backoff=function, max_retries=2, retry_delay=0.05)
    done, times = _flaky_runs(qm, "fallback", failures=2)
    assert done.status == "completed" and done.attempts == 3, done.error
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert min(gaps) >= 0.05 - EARLY_TOLERANCE, gaps
    about = [m for m in engine_warnings(caplog) if function.__name__ in m]
    assert about, engine_warnings(caplog)
    assert all("retry_delay" in m for m in about), about


# -- 10. close() with a bad timeout changes nothing ---------------------------------------------


@pytest.mark.parametrize("timeout", [-1, math.nan, -math.inf])
def test_close_with_a_bad_timeout_changes_nothing(qm: QueueManager, timeout: float) -> None:
    # Old: the asyncio runner was stopped before the timeout was checked: every later run of
    # an async handler failed with "the asyncio runner was stopped".
    async def handler(job: Job) -> int:
        await asyncio.sleep(0)
        return int(job.data) + 1

    q = qm.get_queue("after-close")
    q.process(handler)
    first = qm.wait_for(q.push(1), timeout=WAIT)
    assert first is not None and first.status == "completed" and first.result == 2

    assert_config_error(lambda: qm.close(timeout=timeout))
    assert qm.closed is False
    for n in range(3):
        done = qm.wait_for(q.push(n), timeout=WAIT)
        assert done is not None and done.status == "completed", done and done.error
        assert done.result == n + 1
    # A handler registered now runs too.
    qm.get_queue("registered-after").process(handler)
    later = qm.wait_for(qm.push("registered-after", 10), timeout=WAIT)
    assert later is not None and later.result == 11
    assert qm.close(timeout=5) is True
    assert qm.closed is True


def test_async_close_with_a_bad_timeout_changes_nothing(make_aqm: MakeAqm) -> None:
    async def handler(job: Job) -> int:
        await asyncio.sleep(0)
        return int(job.data) * 3

    async def main() -> None:
        aqm = make_aqm()
        aqm.get_queue("after-close").process(handler)
        with pytest.raises(ConfigError):
            await aqm.close(timeout=-1)
        assert aqm.closed is False
        done = await aqm.wait_for(await aqm.push("after-close", 2), timeout=WAIT)
        assert done is not None and done.result == 6, done and done.error

    run_async(main())


# -- a process that only pushes is not told its leases expired ---------------------------------


@needs_redis
def test_no_lease_warning_for_a_process_that_holds_no_jobs(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool, caplog: pytest.LogCaptureFixture
) -> None:
    # The process registry (part of the same fixes) warns when a renewal finds this process's
    # token gone. A process that never leased a job has no token until its first renewal,
    # which must not read as "the leases had expired". Fails at the time of writing: every
    # redis process that only pushes logs "this process's leases had expired (Redis
    # unreachable for 30 s?): the jobs it held were taken back and run again elsewhere"
    # a third of a lease (10 s) after it starts.
    caplog.set_level(logging.WARNING, logger="rnode_queue")
    qm = manager_pool.open(**{**redis_kwargs, "lease": 0.6})  # renewed every 0.2 s
    qm.push("pushed-only", 1)
    time.sleep(1.0)  # a few renewals
    assert qm.get_stats().queue_sizes["pushed-only"] == 1
    assert [m for m in engine_warnings(caplog) if "lease" in m] == []
