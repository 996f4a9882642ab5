"""Redis only: worker processes that die, share work, or outlive Redis; cron across processes;
a manager with no handlers acting on shared state; and a local Redis Cluster.

Every test uses private redis-server processes (never the one on 6379) and skips with the
reason if none can be started, or fails under ``RNQ_REQUIRE_REDIS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ENABLED_BACKENDS, ManagerPool
from helpers import WAIT, Recorder, wait_until
from processes import WorkerProcess, run_app
from redis_servers import RedisCluster, RedisServer, executable, free_port, unavailable
from rnode_queue import BackendError, Job, QueueManager

pytestmark = pytest.mark.skipif(
    "redis" not in ENABLED_BACKENDS, reason="the 'redis' backend is not enabled"
)


def test_a_job_longer_than_the_lease_runs_once(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    kwargs = {**redis_kwargs, "lease": 0.3}
    runs: list[tuple[int, str]] = []
    lock = threading.Lock()

    def slow(tag: int) -> Callable[[Job], str]:
        def handler(job: Job) -> str:
            with lock:
                runs.append((tag, job.id))
            time.sleep(1.5)  # five leases: only renewals keep the job
            return "slow"

        return handler

    managers = [manager_pool.open(**kwargs) for _ in range(2)]
    for tag, qm in enumerate(managers):
        qm.create_queue("long", concurrency=2)
        qm.get_queue("long").process(slow(tag))
    job_id = managers[0].push("long", 1)
    job = managers[1].wait_for(job_id, timeout=WAIT)
    assert job is not None and job.status == "completed" and job.result == "slow"
    assert job.attempts == 1
    assert [run[1] for run in runs] == [job_id]


def test_cron_declared_by_two_processes_runs_once_per_tick(
    redis_kwargs: dict[str, Any],
    manager_pool: ManagerPool,
    worker_script: Path,
    workers: list[WorkerProcess],
) -> None:
    for _ in range(2):
        workers.append(WorkerProcess(worker_script, redis_kwargs, "ticks", "cron"))

    def total() -> int:
        return sum(len(worker.done()) for worker in workers)

    wait_until(lambda: total() >= 4, timeout=15, what="four cron runs")
    observer = manager_pool.open(**redis_kwargs)
    (schedule,) = observer.list_schedules()
    assert observer.unschedule(schedule["id"])
    for worker in workers:
        worker.stop()
    ticks = [e["tick"] for worker in workers for e in worker.done()]
    assert len(ticks) == len(set(ticks)), f"a tick ran more than once: {sorted(ticks)}"
    assert all(float(t).is_integer() for t in ticks), "cron ticks are whole seconds"


def test_a_manager_without_handlers_acts_on_shared_state(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    worker = manager_pool.open(**redis_kwargs)
    admin = manager_pool.open(**redis_kwargs)
    recorder = Recorder()
    worker.create_queue("shared", concurrency=1)
    worker.get_queue("shared").process(recorder.record)
    admin.pause_queue("shared")
    ids = [admin.push("shared", i) for i in range(3)]
    assert admin.get_queue("shared").get_stats()["paused"] is True
    assert [j.id for j in admin.get_jobs("shared", status="waiting")] == ids
    assert admin.get_stats().queue_sizes["shared"] == 3
    admin.resume_queue("shared")
    assert admin.join("shared", timeout=WAIT)
    assert [e["job"].id for e in recorder.snapshot()] == ids
    assert all(admin.get_job(i).status == "completed" for i in ids)  # type: ignore[union-attr]
    assert admin.get_stats().jobs_processed == 3
    admin.pause_queue("shared")
    admin.push("shared", 99)
    assert admin.clear_queue("shared") == 1
    assert worker.get_queue("shared").get_stats()["size"] == 0


def test_redis_killed_and_restarted(
    restartable_redis: RedisServer, manager_pool: ManagerPool
) -> None:
    kwargs = {"backend": "redis", "url": restartable_redis.url, "prefix": "restart", "lease": 1.0}
    qm = manager_pool.open(**kwargs)
    recorder = Recorder()
    # Many workers: while Redis is down they all fail and back off, and none of that may keep
    # Python (this test's thread) from running.
    qm.create_queue("work", concurrency=16)
    qm.get_queue("work").process(recorder.record)
    before = qm.push("work", "before")
    assert qm.wait_for(before, timeout=WAIT) is not None
    kept = qm.push("idle", "kept")  # a queue nobody works on: the job must survive

    restartable_redis.kill()
    started = time.monotonic()
    with pytest.raises(BackendError):
        qm.push("work", "while down")
    assert time.monotonic() - started <= 5.5, "a push to a Redis that is down fails fast"
    with pytest.raises(BackendError):
        qm.get_stats()

    restartable_redis.start()
    # The manager reconnects by itself; pushing works again within a few seconds.
    deadline = time.monotonic() + 15
    after = None
    while after is None:
        try:
            after = qm.push("work", "after")
        except BackendError:
            assert time.monotonic() < deadline, "no recovery after Redis came back"
            time.sleep(0.2)
    job = qm.wait_for(after, timeout=WAIT)
    assert job is not None and job.status == "completed", "the workers resumed by themselves"
    survivor = qm.get_job(kept)
    assert survivor is not None and survivor.status == "waiting" and survivor.data == "kept"
    finished = qm.get_job(before)
    assert finished is not None and finished.status == "completed"


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


def test_a_redis_cluster_keeps_the_contract(
    redis_cluster: RedisCluster, manager_pool: ManagerPool
) -> None:
    qm = manager_pool.open(backend="redis", url=redis_cluster.url, prefix="cluster", lease=1.0)
    names = [f"queue-{n}" for n in range(6)] + ["braces{in}name"]  # spread over the slots
    for name in names:
        qm.create_queue(name, concurrency=1, max_retries=1, retry_delay=0.05, backoff="fixed")
    order = [qm.push(names[0], p, priority=p) for p in ("low", "normal", "critical", "high")]
    recorder = Recorder()
    qm.get_queue(names[0]).process(recorder.record)
    assert qm.join(names[0], timeout=WAIT)
    assert [e["job"].id for e in recorder.snapshot()] == [order[2], order[3], order[1], order[0]]

    def flaky(job: Job) -> str:
        if job.attempts == 1:
            raise RuntimeError("first run fails")
        return f"ok {job.data}"

    for name in names[1:]:
        qm.get_queue(name).process(flaky)
    ids = {name: qm.push(name, name, delay=0.1) for name in names[1:]}
    for name, job_id in ids.items():
        job = qm.wait_for(job_id, timeout=WAIT)
        assert job is not None and job.status == "completed" and job.result == f"ok {name}"
        assert job.attempts == 2
    batch = qm.push_batch(names[1], [{"data": i} for i in range(2500)])  # several chunks
    assert len(batch) == 2500
    assert qm.join(timeout=30)
    stats = qm.get_stats()
    # the batch went through the flaky handler too: one retry each
    assert stats.jobs_processed == 4 + 6 + 2500 and stats.jobs_retried == 6 + 2500
    assert [j.status for j in qm.get_jobs(names[1], status="completed", limit=3)] == [
        "completed"
    ] * 3
    sid = qm.schedule(names[2], {"cron": True}, "* * * * * *")
    wait_until(lambda: len(qm.get_jobs(names[2], status="completed")) >= 2, timeout=6)
    assert qm.unschedule(sid)


def test_the_redis_example_runs_with_the_worker_command(
    redis_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """examples/redis_app: `rnode-queue worker worker:qm` consumes what `web.py` pushes."""
    app = Path(__file__).resolve().parent.parent / "examples" / "redis_app"
    env = {"REDIS_URL": redis_kwargs["url"], "REDIS_PREFIX": redis_kwargs["prefix"]}
    output = run_app(app, "worker:qm", env, "redis")
    assert "avatar.jpg -> avatar.jpg.thumb.png" in output
    assert output.count(".thumb.png") == 4


TLS_CLIENT = textwrap.dedent(
    """
    import sys
    from rnode_queue import BackendError, QueueManager

    url, bad_url = sys.argv[1], sys.argv[2]
    with QueueManager(backend="redis", url=url, prefix="tls") as qm:
        qm.get_queue("secure").process(lambda job: job.data * 2)
        job = qm.wait_for(qm.push("secure", 21), timeout=10)
        print(job.status, job.result)
    try:
        QueueManager(backend="redis", url=bad_url, prefix="tls")
    except BackendError as error:
        print("refused:", error)
    """
)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS (a certificate from a private CA) and has an ACL
    user ``alice``; yields its port and the CA certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (needed to make test certificates)")

    def run(command: str) -> None:
        subprocess.run(
            [openssl, *shlex.split(command)], cwd=tmp_path, check=True, capture_output=True
        )

    run(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=rnq-test-CA -keyout ca.key -out ca.pem"
    )
    run("req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr")
    (tmp_path / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 "
        "-out server.pem -extfile san.cnf"
    )
    port = free_port()
    options = (
        f"--port 0 --tls-port {port} --bind 127.0.0.1 --save '' --tls-auth-clients no "
        "--tls-cert-file server.pem --tls-key-file server.key --tls-ca-cert-file ca.pem"
    )
    proc = subprocess.Popen(
        [
            executable(),
            *shlex.split(options),
            "--user",
            "alice",
            "on",
            ">s3cret",
            "~*",
            "&*",
            "+@all",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not _accepts(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                unavailable("redis-server with TLS did not start")
            time.sleep(0.02)
        yield port, tmp_path / "ca.pem"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_tls_with_an_acl_user_and_a_database_in_the_url(
    redis_kwargs: dict[str, Any], tls_redis: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_redis
    script = tmp_path / "tls_client.py"
    script.write_text(TLS_CLIENT)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            f"rediss://alice:s3cret@localhost:{port}/3",
            f"rediss://alice:wrong@localhost:{port}/3",
        ],
        env={**os.environ, "SSL_CERT_FILE": str(ca)},  # the private CA, for this client only
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "completed 42"
    assert lines[1].startswith("refused:") and "s3cret" not in lines[1] and "wrong" not in lines[1]


def test_a_queue_deleted_by_another_process_comes_back_when_pushed_to(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    pusher = manager_pool.open(**redis_kwargs)
    admin = manager_pool.open(**redis_kwargs)
    pusher.push("reborn", 1)
    assert admin.delete_queue("reborn")
    job_id = pusher.push("reborn", 2)  # this process still knows the queue
    job = admin.get_job(job_id)
    assert job is not None and job.data == 2
    assert admin.get_stats().queue_sizes["reborn"] == 1


def test_unscheduling_in_one_process_stops_every_process(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    firing = manager_pool.open(**redis_kwargs)
    admin = manager_pool.open(**redis_kwargs)
    recorder = Recorder()
    sid = firing.schedule("cron-stop", 1, "* * * * * *")
    firing.get_queue("cron-stop").process(recorder.record)
    assert recorder.wait_count(1, timeout=WAIT)
    assert admin.unschedule(sid)
    assert firing.join("cron-stop", timeout=WAIT)
    seen = len(recorder.snapshot())
    # Two more ticks pass: the process that declared it must not fire them.
    assert not recorder.wait_count(seen + 1, timeout=2.2)


def test_queue_names_that_look_alike_never_share_keys(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    qm = manager_pool.open(**redis_kwargs)
    # "a{b" is hex-tagged as "#617b62"; a queue really named so must not collide with it.
    for name in ("a{b", "#617b62", "a", "{a}", "a}"):
        qm.push(name, name)
    sizes = qm.get_stats().queue_sizes
    assert all(sizes[name] == 1 for name in ("a{b", "#617b62", "a", "{a}", "a}")), sizes
    assert [j.data for j in qm.get_jobs("#617b62")] == ["#617b62"]


FORKING_CLIENT = textwrap.dedent(
    """
    import json, os, sys
    from rnode_queue import QueueError, QueueManager

    qm = QueueManager(**json.loads(sys.argv[1]))
    qm.push("before-fork", 1)
    print("ready", flush=True)
    sys.stdin.readline()  # the test has killed Redis
    pid = os.fork()
    if pid == 0:
        try:
            qm.push("after-fork", 1)
            os._exit(3)
        except QueueError as error:
            print("child:", type(error).__name__, flush=True)
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_fork_while_redis_is_down_fails_fast_in_the_child(
    restartable_redis: RedisServer, tmp_path: Path
) -> None:
    script = tmp_path / "forking.py"
    script.write_text(FORKING_CLIENT)
    options = {"backend": "redis", "url": restartable_redis.url, "prefix": "fork"}
    proc = subprocess.Popen(
        [sys.executable, "-W", "always", str(script), json.dumps(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    restartable_redis.kill()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() in ("child: QueueClosedError", "child: BackendError")
    assert "could not reopen its backend in the forked child" in err


def test_a_schedule_declared_by_a_short_lived_process_fires_in_running_workers(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    worker = manager_pool.open(**redis_kwargs)
    recorder = Recorder()
    worker.get_queue("deployed-cron").process(recorder.record)
    with QueueManager(**redis_kwargs) as deploy:  # declares the schedule, then exits
        sid = deploy.schedule("deployed-cron", {"from": "deploy"}, "* * * * * *")
    # The worker looks for new schedules every 5 s, then fires each tick.
    assert recorder.wait_count(1, timeout=10), "the running worker never fired it"
    assert recorder.snapshot()[0]["job"].data == {"from": "deploy"}
    assert [s["id"] for s in worker.list_schedules()] == [sid]
    assert worker.unschedule(sid)


def test_a_queue_pushed_to_while_it_is_deleted_stays_listed(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    pusher = manager_pool.open(**redis_kwargs)
    admin = manager_pool.open(**redis_kwargs)
    pusher.push("churn", 0)
    done = threading.Event()

    def push_until_done() -> None:
        while not done.is_set():
            with contextlib.suppress(BackendError):  # deleted again and again: said, not lost
                pusher.push("churn", 1)

    thread = threading.Thread(target=push_until_done)
    thread.start()
    try:
        for _ in range(300):
            admin.delete_queue("churn")
    finally:
        done.set()
        thread.join(timeout=WAIT)
    size = admin.get_stats().queue_sizes.get("churn", 0)
    jobs = admin.get_jobs("churn", status="waiting", limit=1_000_000)
    assert size == len(jobs), "every job left is in a listed queue"


def test_a_schedule_removed_elsewhere_leaves_every_list(
    redis_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    holder = manager_pool.open(**redis_kwargs)
    admin = manager_pool.open(**redis_kwargs)
    sid = holder.schedule("yearly", {"k": 1}, "0 0 1 1 *")  # its next tick is months away
    assert admin.unschedule(sid)
    wait_until(lambda: holder.list_schedules() == [], timeout=10, what="the reload drops it")
