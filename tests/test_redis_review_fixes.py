"""Regression tests for the review fixes of the Redis backend.

Each test says what the code before the fixes did. Every Redis test uses a private
redis-server (the session's, or one of its own when it changes server-wide state: memory
limits, client pauses, statistics) and never the instance on 6379; it skips with the reason if
none can be started, or fails under ``RNQ_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import ManagerPool
from helpers import QUIET_WINDOW, WAIT, Recorder, Tracker, run_async, wait_until
from redis_servers import RedisServer, executable, free_port, unavailable
from rnode_queue import BackendError, Job, QueueManager

# -- Redis from the outside -----------------------------------------------------------------


def port_of(url: str) -> int:
    port = urlparse(url).port
    assert port is not None and port != 6379, url
    return port


def redis_cli(url: str, *args: str) -> str:
    """One command through ``redis-cli`` (redis-py is not a test dependency); its raw reply."""
    done = subprocess.run(
        [executable("redis-cli"), "-p", str(port_of(url)), *args],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def command_calls(url: str, command: str) -> int:
    """How many times ``command`` ran since the last ``CONFIG RESETSTAT`` (INFO commandstats)."""
    for line in redis_cli(url, "INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
            return int(fields["calls"])
    return 0


def client_count(url: str) -> int:
    """Connections open to the server (the redis-cli asking is one of them)."""
    return len(redis_cli(url, "CLIENT", "LIST").splitlines())


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """``private_redis(*extra_args)``: a redis-server of the test's own, stopped at teardown."""
    servers: list[RedisServer] = []

    def start(*extra: str) -> RedisServer:
        failure = None
        for attempt in range(3):  # another process may grab the free port before redis binds it
            server = RedisServer(
                tmp_path / f"redis-{len(servers)}-{attempt}",
                free_port(),
                "--appendonly",
                "no",
                *extra,
            )
            failure = server.try_start()
            if failure is None:
                servers.append(server)
                return server
        unavailable(failure or "redis-server did not start")

    yield start
    for server in servers:
        server.stop()


# -- 1. worker processes that die ------------------------------------------------------------

DYING_WORKER = textwrap.dedent(
    """
    import json, os, sys, time
    from rnode_queue import QueueManager

    options, queue, started_path, seconds = json.loads(sys.argv[1]), *sys.argv[2:5]
    seconds = float(seconds)
    started = os.open(started_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    qm = QueueManager(**options)

    def handler(job):
        # Unbuffered: the line is in the file even if the process is killed right after.
        os.write(started, (job.id + "\\n").encode())
        time.sleep(seconds)

    qm.get_queue(queue).process(handler)
    print("ready", flush=True)
    sys.stdin.read()  # runs until killed
    """
)


class DyingWorker:
    """A worker process (default concurrency: 5 threads) whose handler appends each job id to
    a file as its first action, then sleeps for ``seconds``; made to be killed."""

    def __init__(self, tmp_path: Path, options: dict[str, Any], queue: str, seconds: float) -> None:
        self.started_file = tmp_path / "started.txt"
        self.started_file.touch()
        script = tmp_path / "dying_worker.py"
        script.write_text(DYING_WORKER)
        self.stderr_file = tmp_path / "worker.stderr"
        with self.stderr_file.open("w") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    json.dumps(options),
                    queue,
                    str(self.started_file),
                    str(seconds),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.stderr_file.read_text()

    def started_count(self) -> int:
        return self.started_file.read_text().count("\n")

    def started(self) -> set[str]:
        return set(self.started_file.read_text().split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no clean-up of any kind
        self.proc.wait(timeout=10)


@pytest.fixture
def dying_workers() -> Iterator[list[DyingWorker]]:
    started: list[DyingWorker] = []
    yield started
    for worker in started:
        worker.kill()


def test_jobs_taken_in_a_batch_but_never_started_keep_their_attempt_when_their_worker_dies(
    redis_kwargs: dict[str, Any],
    manager_pool: ManagerPool,
    dying_workers: list[DyingWorker],
    tmp_path: Path,
) -> None:
    # Old: every job of a fetched batch counted as started; a SIGKILL lost the attempt of all of
    # them, and with attempts=1 about 167 of 2,000 jobs failed with "LeaseExpired" without
    # ever running.
    kwargs = {**redis_kwargs, "lease": 1.0}
    queue = "batch-loss"
    qm = manager_pool.open(**kwargs)
    ids = qm.push_batch(queue, [{"data": n, "options": {"attempts": 1}} for n in range(2000)])
    worker = DyingWorker(tmp_path, kwargs, queue, 0.002)
    dying_workers.append(worker)
    wait_until(lambda: worker.started_count() >= 300, timeout=WAIT, what="the worker is busy")
    worker.kill()  # mid-batch
    started = worker.started()
    assert len(started) < len(ids), "the worker was killed while it still had work"

    qm.get_queue(queue).process(lambda job: None)  # a second worker takes over
    assert qm.join(queue, timeout=15), (
        f"still active: {[j.id for j in qm.get_jobs(queue, status='active')]}"
    )
    failed = qm.get_jobs(queue, status="failed", limit=10_000)
    completed = qm.get_jobs(queue, status="completed", limit=10_000)
    assert {j.id for j in failed} | {j.id for j in completed} == set(ids), "every job finished"
    never_ran = [j.id for j in failed if j.id not in started]
    # A job is reported as started just before its handler is called: one that the SIGKILL
    # caught in between counts as run, though its handler never wrote its id. At most one per
    # worker thread (5) can be caught so; the jobs that waited in the batch are never counted.
    assert len(never_ran) <= 5, (
        f"{len(never_ran)} of {len(failed)} failed jobs never started in the dead worker: "
        f"{[(j.id, j.error) for j in failed if j.id in never_ran][:3]}"
    )
    for job in failed:
        assert job.error is not None and "WorkerLost" in job.error, job.error
        assert "run was lost" in job.error, job.error
    assert all(j.status == "completed" for j in completed)


def zscore(url: str, key: str, member: str) -> float | None:
    reply = redis_cli(url, "ZSCORE", key, member)
    return float(reply) / 1000 if reply else None


def test_the_jobs_of_a_worker_killed_just_after_a_fetch_are_taken_back(
    redis_kwargs: dict[str, Any],
    manager_pool: ManagerPool,
    dying_workers: list[DyingWorker],
    tmp_path: Path,
) -> None:
    # The worker registry (`{workers}:leases`) gets a process's expiry when its keeper renews
    # (every lease / 3), the queue's `leases` at every fetch too, so a worker that dies between
    # two renewals is due in the registry before it is due in the queue. A sweep in between must
    # not lose it. Old (1ec207c, the registry's first version): the sweep found the queue lease
    # "renewed after all", took nothing, and dropped the token from the registry: the dead
    # worker's jobs stayed active for ever. The kill and the sweep are timed by the registry's
    # expiry, read from Redis (see keys.rs).
    lease = 3.0
    kwargs = {**redis_kwargs, "lease": lease}
    url, prefix, queue = redis_kwargs["url"], redis_kwargs["prefix"], "killed-after-fetch"
    registry = f"{prefix}:{{workers}}:leases"
    with QueueManager(**kwargs) as pusher:  # closed: it leaves the registry
        ids = pusher.push_batch(queue, [{"data": n} for n in range(3000)])
    worker = DyingWorker(tmp_path, kwargs, queue, 0.01)
    dying_workers.append(worker)
    tokens = wait_until(
        lambda: redis_cli(url, "ZRANGE", registry, "0", "-1").split(),
        timeout=WAIT,
        what="the worker is registered",
    )
    assert len(tokens) == 1, tokens
    (token,) = tokens
    first = zscore(url, registry, token)
    renewed = wait_until(
        lambda: (score := zscore(url, registry, token)) != first and score,
        timeout=WAIT,
        what="a renewal",
    )
    # Most of a renewal interval later, still fetching: the queue's lease runs past the
    # registry's by about that much.
    time.sleep(max(0.0, renewed - lease + 0.8 * lease / 3 - time.time()))
    worker.kill()
    registry_due = zscore(url, registry, token)
    queue_due = zscore(url, f"{prefix}:{{{queue}}}:leases", token)
    assert registry_due is not None and worker.started_count() < len(ids)
    # A process that starts sweeping after the registry says the worker is dead but before its
    # lease on the queue is due.
    time.sleep(max(0.0, registry_due + 0.15 - time.time()))
    rescuer = manager_pool.open(**kwargs)
    rescuer.get_queue(queue).process(lambda job: None)
    assert rescuer.join(queue, timeout=12), (
        f"the dead worker's jobs stay active: {rescuer.get_queue(queue).get_stats()}; its "
        f"lease was due at {registry_due:.3f} in the registry, {queue_due} in the queue"
    )
    assert rescuer.get_queue(queue).get_stats()["completed"] == len(ids)


# -- 2. out of memory ---------------------------------------------------------------------------

PAD = "x" * 1000


def fill_up(pusher: QueueManager, queue: str) -> tuple[list[str], BackendError]:
    """Pushes to ``queue`` until Redis (under maxmemory with noeviction) refuses: a delayed job
    first (due by the time Redis is full), then waiting jobs. Returns the ids and the refusal."""
    ids = [pusher.push(queue, {"delayed": True}, delay=0.2)]
    while True:
        assert len(ids) < 20_000, "2 MB never filled up"
        try:
            ids += pusher.push_batch(
                queue, [{"data": {"n": len(ids) + i, "pad": PAD}} for i in range(50)]
            )
        except BackendError as error:
            return ids, error


@pytest.fixture
def full_redis(private_redis: Callable[..., RedisServer]) -> dict[str, Any]:
    """Options of a manager on a redis-server limited to 2 MB that refuses writes when full."""
    server = private_redis("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    return {"backend": "redis", "url": server.url, "prefix": "oom", "lease": 5.0}


def test_redis_out_of_memory_refuses_pushes_but_queues_keep_draining(
    full_redis: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: the fetch script's first write was refused under noeviction, so no worker could take
    # (and so free) anything: the whole queue stopped; pause_queue / resume_queue failed too.
    qm = manager_pool.open(**full_redis)
    qm.create_queue("full", keep_completed=0, keep_failed=0)
    ids, refused = fill_up(qm, "full")
    assert "memory" in str(refused).lower(), str(refused)
    assert len(ids) > 1, "some jobs fit"
    assert qm.get_stats().queue_sizes["full"] == len(ids), "a refused push stores nothing"

    qm.pause_queue("full")  # no error while Redis is full
    assert qm.get_queue("full").get_stats()["paused"] is True
    qm.resume_queue("full")
    assert qm.get_queue("full").get_stats()["paused"] is False

    recorder = Recorder()
    qm.get_queue("full").process(recorder.record)
    assert qm.join("full", timeout=15), f"stuck with {qm.get_stats().queue_sizes}"
    assert {e["job"].id for e in recorder.snapshot()} == set(ids), "every job ran"
    stats = qm.get_queue("full").get_stats()
    assert stats["completed"] == len(ids) and stats["size"] == 0 and stats["failed"] == 0

    # Drained (keep_completed=0: nothing retained, so the memory is free): room again.
    after = qm.push("full", {"after": True})
    assert recorder.wait_count(len(ids) + 1, timeout=WAIT)
    assert recorder.snapshot()[-1]["job"].id == after


def test_a_worker_started_while_redis_is_full_drains_the_queue(
    full_redis: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: as above, its fetches were refused. The queue exists already: pausing it from another
    # process, or registering a handler for it, must not need a write that Redis refuses when
    # full.
    pusher = manager_pool.open(**full_redis)
    pusher.create_queue("full", keep_completed=0, keep_failed=0)
    ids, _ = fill_up(pusher, "full")

    admin = manager_pool.open(**full_redis)  # an admin script started meanwhile
    admin.pause_queue("full")
    admin.resume_queue("full")
    worker = manager_pool.open(**full_redis)  # a worker process (re)started meanwhile
    recorder = Recorder()
    worker.get_queue("full").process(recorder.record)
    assert worker.join("full", timeout=15), f"stuck with {worker.get_stats().queue_sizes}"
    assert {e["job"].id for e in recorder.snapshot()} == set(ids), "every job ran"
    after = pusher.push("full", {"after": True})
    assert recorder.wait_count(len(ids) + 1, timeout=WAIT)
    assert recorder.snapshot()[-1]["job"].id == after


# -- 3. queue settings ------------------------------------------------------------------------


def test_queue_settings_belong_to_the_queue(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: settings were per process: a process that had not declared the queue stamped its own
    # defaults on what it pushed (timeout 300 s, 4 attempts) and ran it with its own concurrency.
    declaring = manager_pool.open(**redis_kwargs)
    other = manager_pool.open(**redis_kwargs)
    own = manager_pool.open(**redis_kwargs)
    declaring.create_queue(
        "reports", timeout=20, max_retries=0, retry_delay=0.5, backoff="fixed", concurrency=2
    )

    def pushed_by(qm: QueueManager) -> Job:
        job = qm.get_job(qm.push("reports", {"by": "test"}))
        assert job is not None
        return job

    job = pushed_by(other)
    assert (job.timeout, job.max_attempts) == (20.0, 1)

    # The process that did not declare it runs it with the queue's concurrency (2, not 5).
    tracker = Tracker()
    release = threading.Event()

    def blocking(job: Job) -> None:
        tracker.enter()
        try:
            release.wait(WAIT)
        finally:
            tracker.leave()

    other.get_queue("reports").process(blocking)
    try:
        for n in range(4):
            other.push("reports", n)
        assert tracker.wait(lambda t: t.running >= 2)
        assert not tracker.wait(lambda t: t.running > 2, QUIET_WINDOW), "concurrency 5, not 2"
    finally:
        release.set()
    assert other.join("reports", timeout=WAIT)

    # A process that declares the queue itself keeps its settings.
    own.create_queue("reports", timeout=45, max_retries=5)
    declaring.create_queue(
        "reports", timeout=30, max_retries=0, retry_delay=0.5, backoff="fixed", concurrency=2
    )
    changed = time.monotonic()
    # The others re-read the stored settings every 5 s.
    while (job := pushed_by(other)).timeout != 30.0:
        assert time.monotonic() - changed < 6.5, f"still {job.timeout} s after 6.5 s"
        time.sleep(0.1)
    assert job.max_attempts == 1
    time.sleep(max(0.0, changed + 5.5 - time.monotonic()))  # a reload of every manager passed
    job = pushed_by(own)
    assert (job.timeout, job.max_attempts) == (45.0, 6)
    job = pushed_by(declaring)
    assert (job.timeout, job.max_attempts) == (30.0, 1)
    assert other.join("reports", timeout=WAIT)


# -- 4. the event loop never waits for Redis ------------------------------------------------------


def test_async_get_queue_and_process_do_not_wait_for_redis(
    private_redis: Callable[..., RedisServer], manager_pool: ManagerPool
) -> None:
    # Old: both declared the queue in Redis on the caller's event loop: a slow or paused Redis
    # froze the loop (here for the whole 3-second pause).
    server = private_redis()
    aqm = manager_pool.open_async(backend="redis", url=server.url, prefix="loop")
    ran = threading.Event()

    async def handler(job: Job) -> str:
        ran.set()
        return "ran"

    async def main() -> None:
        await aqm.push("warm-up", 1)  # connected
        redis_cli(server.url, "CLIENT", "PAUSE", "3000", "ALL")
        paused_at = time.monotonic()
        aqm.get_queue("new-q")
        get_queue_took = time.monotonic() - paused_at
        before = time.monotonic()
        aqm.process("other-q", handler)
        process_took = time.monotonic() - before
        assert get_queue_took < 1.0, f"get_queue blocked the event loop {get_queue_took:.2f} s"
        assert process_took < 1.0, f"process blocked the event loop {process_took:.2f} s"
        job_id = await aqm.push("other-q", {"n": 1})
        # The pause was real: the push waited for it.
        assert time.monotonic() - paused_at >= 2.5
        job = await aqm.wait_for(job_id, timeout=WAIT)
        assert job is not None and job.status == "completed" and job.result == "ran"
        assert ran.is_set()

    run_async(main(), timeout=30)


# -- 5. unschedule ----------------------------------------------------------------------------


def test_unschedule_removes_the_queue_tick_record(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: the `ticks` entry of a removed schedule stayed in Redis for ever.
    qm = manager_pool.open(**redis_kwargs)
    recorder = Recorder()
    sid = qm.schedule("ticking", {"k": 1}, "* * * * * *")
    qm.get_queue("ticking").process(recorder.record)
    assert recorder.wait_count(1, timeout=WAIT), "the schedule never fired"
    key = f"{redis_kwargs['prefix']}:{{ticking}}:ticks"
    url = redis_kwargs["url"]
    assert redis_cli(url, "HEXISTS", key, sid) == "1"
    assert qm.unschedule(sid)  # just after a tick: the next one is about a second away
    assert redis_cli(url, "HEXISTS", key, sid) == "0"
    time.sleep(1.2)  # a tick passes: nothing writes it back
    assert redis_cli(url, "HEXISTS", key, sid) == "0"
    assert qm.list_schedules() == []


# -- 6. many queues ---------------------------------------------------------------------------

MANY = 10_000


def test_ten_thousand_idle_queues_cost_idle_workers_nothing(
    private_redis: Callable[..., RedisServer], manager_pool: ManagerPool
) -> None:
    # Old: every process's sweeper ran a script on every queue, about 16,000 scripts a second
    # with 4 idle processes and 10,000 queues.
    server = private_redis()
    kwargs = {"backend": "redis", "url": server.url, "prefix": "many"}
    names = [f"q{n:05}" for n in range(MANY)]
    creator = manager_pool.open(**kwargs)
    for name in names:
        creator.create_queue(name)
    creator.push(names[0], "first")

    idle = [manager_pool.open(**kwargs) for _ in range(2)]
    for qm in idle:
        qm.get_queue(names[0]).process(lambda job: None)
    assert creator.join(names[0], timeout=WAIT)

    # A manager looks once at every queue as it starts (for delayed jobs and retention due):
    # that is over within seconds. Then, idle, the three cost a few scripts a second.
    def quiet_second() -> bool:
        redis_cli(server.url, "CONFIG", "RESETSTAT")
        time.sleep(1.0)
        return command_calls(server.url, "evalsha") < 100

    wait_until(quiet_second, timeout=12, what="the managers' start-up is over")
    redis_cli(server.url, "CONFIG", "RESETSTAT")
    time.sleep(6.0)
    scripts = command_calls(server.url, "evalsha")
    assert scripts < 500, f"{scripts} scripts ran in 6 s with every queue idle"

    started = time.monotonic()
    stats = idle[0].get_stats()
    assert time.monotonic() - started < 10.0, "get_stats over 10,000 queues hangs"
    assert len(stats.queue_sizes) == MANY
    assert all(size == 0 for size in stats.queue_sizes.values())


def test_handlers_on_300_queues_use_a_few_connections(
    private_redis: Callable[..., RedisServer], manager_pool: ManagerPool
) -> None:
    # Old: each queue's idle workers blocked on a connection of their own: 300 connections.
    server = private_redis()
    qm = manager_pool.open(backend="redis", url=server.url, prefix="conns")
    qm.push("warm-up", 1)  # this manager's own connection is open
    before = client_count(server.url)

    ran: set[str] = set()
    lock = threading.Lock()

    async def handler(job: Job) -> None:
        with lock:
            ran.add(job.queue)

    names = [f"a{n:03}" for n in range(300)]
    for name in names:
        qm.process(name, handler)
    for name in names[::30]:
        qm.push(name, name)
    wait_until(lambda: len(ran) == len(names[::30]), timeout=WAIT, what="the workers run")
    time.sleep(1.0)  # every worker has gone idle (the listener re-blocks within a second)
    after = client_count(server.url)
    assert after - before <= 10, f"{after - before} more connections for 300 queues"


# -- 7. stats racing delete_queue -------------------------------------------------------------


def race_with_delete_queue(qm: QueueManager, calls: list[Callable[[], object]]) -> list[str]:
    """Runs each of ``calls`` in a loop on its own thread while queue "x" is deleted and pushed
    to (so created again) 200 times; returns the errors they raised."""
    qm.push("x", 0)
    errors: list[str] = []
    stop = threading.Event()

    def keep_calling(call: Callable[[], object]) -> None:
        while not stop.is_set():
            try:
                call()
            except Exception as error:
                if len(errors) < 20:
                    errors.append(f"{call.__name__}: {type(error).__name__}: {error}")

    readers = [threading.Thread(target=keep_calling, args=(call,)) for call in calls]
    for reader in readers:
        reader.start()
    try:
        for n in range(200):
            qm.delete_queue("x")
            qm.push("x", n)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=WAIT)
    return errors


def test_stats_and_listings_racing_delete_queue_never_raise(qm: QueueManager) -> None:
    # Old: a queue deleted between listing the queues and counting their jobs made get_stats()
    # and get_jobs() raise "queue ... does not exist".
    def manager_stats() -> object:
        return qm.get_stats()

    def listing() -> object:
        return qm.get_jobs("x")

    errors = race_with_delete_queue(qm, [manager_stats, listing])
    assert not errors, errors


def test_queue_stats_through_a_handle_racing_delete_queue_never_raise(qm: QueueManager) -> None:
    # Old: as above, for the stats of one queue read through its handle.
    def queue_stats() -> object:
        return qm.get_queue("x").get_stats()

    errors = race_with_delete_queue(qm, [queue_stats])
    assert not errors, errors


# -- 8. close with jobs still running -----------------------------------------------------------


def test_a_worker_closed_with_jobs_running_hands_them_back(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: close() left the running job leased to the closed process; it stayed active until
    # its (30-second) lease expired.
    kwargs = {**redis_kwargs, "lease": 30.0}
    stopping = manager_pool.open(**kwargs)
    other = manager_pool.open(**kwargs)
    running = threading.Event()
    never = threading.Event()

    def stuck(job: Job) -> None:
        running.set()
        never.wait(60)

    stopping.get_queue("handback").process(stuck)
    job_id = other.push("handback", {"n": 1})
    try:
        assert running.wait(WAIT)
        closed_at = time.monotonic()
        assert stopping.close(timeout=0.5) is False
        job = other.get_job(job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("waiting", 1), job.to_dict()
        assert job.error is not None and "WorkerStopped" in job.error, job.error

        recorder = Recorder()
        other.get_queue("handback").process(recorder.record)
        done = other.wait_for(job_id, timeout=WAIT)  # a third of the lease
        assert done is not None and done.status == "completed"
        assert done.attempts == 2, "the run cut short counts"
        assert time.monotonic() - closed_at < WAIT
        assert [e["job"].id for e in recorder.snapshot()] == [job_id]
    finally:
        never.set()


def test_a_close_past_its_timeout_hands_back_the_rest_of_the_batch(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: only the job at hand was handed back; the unstarted rest of the worker's batch (up to
    # 255 jobs) stayed leased to the closed process for the whole lease.
    kwargs = {**redis_kwargs, "lease": 30.0}
    pusher = manager_pool.open(**kwargs)
    stopping = manager_pool.open(**kwargs)
    q = stopping.create_queue("batch-back", concurrency=1)
    never = threading.Event()
    running = threading.Event()

    def handler(job: Job) -> None:
        if job.data == "stuck":
            running.set()
            never.wait(60)

    # Fast jobs first, so that the worker's batches grow; the stuck job is in the middle of one.
    items: list[dict[str, Any]] = [{"data": n} for n in range(600)]
    items.append({"data": "stuck"})
    items += [{"data": n} for n in range(600, 900)]
    ids = pusher.push_batch("batch-back", items)
    stuck_id = ids[600]
    q.process(handler)
    try:
        assert running.wait(WAIT)
        finished, handed_back = stopping._close(0.5)
        assert finished is False
        assert handed_back == [("batch-back", stuck_id)]
        stats = pusher.get_queue("batch-back").get_stats()
        assert stats["processing"] == 0, stats  # nothing left leased to the closed process
        job = pusher.get_job(stuck_id)
        assert job is not None and job.status == "waiting" and job.attempts == 1
        pusher.get_queue("batch-back").process(lambda job: None)
        assert pusher.join("batch-back", timeout=WAIT)
        done = pusher.get_jobs("batch-back", status="completed", limit=1000)
        assert {j.id for j in done} == set(ids)
        unstarted_after = [pusher.get_job(i) for i in ids[601:]]
        assert all(j is not None and j.attempts == 1 for j in unstarted_after)
    finally:
        never.set()


def test_a_busy_process_does_not_take_the_wake_up_of_an_idle_one(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: a process kept listening to a queue for 30 s after its workers last idled there; busy
    # meanwhile, it took the wake-up marker of a new job, and the idle process slept on until
    # its 10-second fetch timeout.
    busy = manager_pool.open(**redis_kwargs)
    idle = manager_pool.open(**redis_kwargs)
    release = threading.Event()
    started = threading.Event()

    def long_job(job: Job) -> None:
        started.set()
        release.wait(30)

    busy.create_queue("wake", concurrency=1).process(long_job)
    time.sleep(QUIET_WINDOW)  # the busy process listens, idle, first
    idle_pusher = manager_pool.open(**redis_kwargs)
    idle_pusher.push("wake", "long")
    try:
        assert started.wait(WAIT)
        recorder = Recorder()
        idle.get_queue("wake").process(recorder.record)
        time.sleep(QUIET_WINDOW)  # the idle process listens too, after the busy one
        begin = time.monotonic()
        job = idle_pusher.wait_for(idle_pusher.push("wake", "short"), timeout=WAIT)
        assert job is not None and job.status == "completed"
        assert time.monotonic() - begin < 3.0, "the idle process was woken at once"
    finally:
        release.set()


def test_close_is_not_held_up_by_a_timer_waiting_for_redis(
    private_redis: Callable[..., RedisServer], manager_pool: ManagerPool
) -> None:
    # Old: close() joined the timer thread, which could be in a cron push waiting for a Redis
    # that does not answer (4 s per try, retried): close(timeout=1) took far longer.
    server = private_redis()
    qm = manager_pool.open(backend="redis", url=server.url, prefix="rnq-timer")
    qm.schedule("ticks", 1, "* * * * * *")
    qm.push("warm-up", 1)  # the scripts are loaded
    redis_cli(server.url, "CLIENT", "PAUSE", "8000", "WRITE")
    time.sleep(1.5)  # a tick is due meanwhile: the timer thread waits for Redis
    begin = time.monotonic()
    qm.close(timeout=1)
    assert time.monotonic() - begin < 3.0
    redis_cli(server.url, "CLIENT", "UNPAUSE")


def test_a_forked_child_keeps_the_settings_stored_by_another_process(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    # Old: a child re-declared every queue its parent knew with the parent's settings (often
    # the defaults), overwriting those another process stored, and then kept them for good.
    owner = manager_pool.open(**redis_kwargs)
    owner.create_queue("reports", timeout=20, max_retries=0)
    web = manager_pool.open(**redis_kwargs)
    web.push("reports", 1)  # uses the stored settings, declares nothing
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: push, report the job's settings
        code = 1
        try:
            os.close(read_end)
            job = web.get_job(web.push("reports", 2))
            message = json.dumps({"timeout": job.timeout, "max_attempts": job.max_attempts})
            os.write(write_end, message.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        reported = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert reported == {"timeout": 20.0, "max_attempts": 1}
    later = owner.get_job(owner.push("reports", 3))
    assert later is not None and (later.timeout, later.max_attempts) == (20.0, 1)
    # What the store holds is still the owner's: a third process reads it.
    third = manager_pool.open(**redis_kwargs)
    job = third.get_job(third.push("reports", 4))
    assert job is not None and (job.timeout, job.max_attempts) == (20.0, 1)
