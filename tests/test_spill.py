"""The Redis spill (``spill_path=``): pushes made while Redis cannot be reached go to a local
file store and are forwarded to Redis once it is back, each exactly once — also when the process
is killed while it forwards them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ENABLED_BACKENDS, ManagerPool
from helpers import WAIT, Recorder, wait_until
from redis_servers import RedisServer
from rnode_queue import BackendError, ConfigError, QueueManager

pytestmark = pytest.mark.skipif(
    "redis" not in ENABLED_BACKENDS or "file" not in ENABLED_BACKENDS,
    reason="the spill needs the 'redis' and 'file' backends",
)


def test_pushes_made_while_redis_is_down_arrive_once_it_is_back(
    restartable_redis: RedisServer, manager_pool: ManagerPool, tmp_path: Path
) -> None:
    kwargs = {
        "backend": "redis",
        "url": restartable_redis.url,
        "prefix": "spill",
        "spill_path": str(tmp_path / "spill"),
    }
    qm = manager_pool.open(**kwargs)
    before = qm.push("work", "before")
    restartable_redis.kill()

    ids = [
        qm.push("work", {"n": n}, priority="high" if n % 7 == 0 else "normal") for n in range(200)
    ]
    spilled = qm.get_job(ids[5])
    assert spilled is not None and spilled.status == "waiting" and spilled.data == {"n": 5}

    restartable_redis.start()
    recorder = Recorder()
    qm.get_queue("work").process(recorder.record)
    assert recorder.wait_count(201, timeout=30), f"{len(recorder.snapshot())} of 201 ran"
    assert qm.join("work", timeout=WAIT)
    ran = [entry["job"].id for entry in recorder.snapshot()]
    assert sorted(ran) == sorted([before, *ids]), "every job ran, once"
    for job_id in ids:
        job = qm.get_job(job_id)
        assert job is not None and job.status == "completed"
    assert not any((tmp_path / "spill").glob("*.damaged*"))


SPILLER = textwrap.dedent(
    """
    import json, sys
    from rnode_queue import QueueManager

    qm = QueueManager(**json.loads(sys.argv[1]))  # Redis is up when the manager opens
    print("ready", flush=True)
    sys.stdin.readline()  # the test stops Redis
    ids = []
    for start in range(0, int(sys.argv[2]), 5000):
        ids += qm.push_batch("work", [{"data": {"n": n}} for n in range(start, start + 5000)])
    with open(sys.argv[3], "w") as out:
        json.dump(ids, out)
    print("spilled", flush=True)
    sys.stdin.read()  # forwards until killed
    """
)


def test_a_process_killed_while_forwarding_loses_and_doubles_nothing(
    restartable_redis: RedisServer, manager_pool: ManagerPool, tmp_path: Path
) -> None:
    total = 50_000
    kwargs = {
        "backend": "redis",
        "url": restartable_redis.url,
        "prefix": "spill-kill",
        "spill_path": str(tmp_path / "spill"),
    }
    plain = {key: value for key, value in kwargs.items() if key != "spill_path"}
    observer = manager_pool.open(**plain)
    observer.create_queue("work")

    script = tmp_path / "spiller.py"
    script.write_text(SPILLER)
    ids_file = tmp_path / "ids.json"
    child = subprocess.Popen(
        [sys.executable, str(script), json.dumps(kwargs), str(total), str(ids_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready", child.stderr and child.stderr.read()
        restartable_redis.kill()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "spilled", child.stderr and child.stderr.read()
        restartable_redis.start()
        deadline = time.monotonic() + 60
        forwarded = 0
        while forwarded == 0:
            assert time.monotonic() < deadline, "the spill was never forwarded"
            with contextlib.suppress(BackendError):  # Redis may still be starting
                forwarded = observer.get_stats().queue_sizes.get("work", 0)
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=10)
    at_kill = observer.get_stats().queue_sizes.get("work", 0)
    assert at_kill < total, "the kill came after the forwarding ended: nothing was tested"

    # The spill is opened again: what the dead process had not forwarded (or had forwarded
    # without marking it done) goes now, once.
    resumed = manager_pool.open(**kwargs)
    deadline = time.monotonic() + 60
    while observer.get_stats().queue_sizes.get("work", 0) < total:
        assert time.monotonic() < deadline, observer.get_stats().queue_sizes
        time.sleep(0.05)
    ids = json.loads(ids_file.read_text())
    assert len(set(ids)) == total
    recorder = Recorder()
    resumed.create_queue("work", concurrency=8)
    resumed.get_queue("work").process(recorder.record)
    assert resumed.join("work", timeout=60)
    ran = [entry["job"].id for entry in recorder.snapshot()]
    assert len(ran) == total and set(ran) == set(ids), "every spilled job arrived once"


def test_a_manager_opened_while_redis_is_down_spills_until_it_is_back(
    restartable_redis: RedisServer, manager_pool: ManagerPool, tmp_path: Path
) -> None:
    restartable_redis.kill()
    qm = manager_pool.open(
        backend="redis",
        url=restartable_redis.url,
        prefix="spill-start",
        spill_path=str(tmp_path / "spill"),
    )
    ids = [qm.push("work", n) for n in range(20)]
    job = qm.get_job(ids[0])
    assert job is not None and job.status == "waiting" and job.data == 0
    recorder = Recorder()
    qm.get_queue("work").process(recorder.record)

    restartable_redis.start()
    assert recorder.wait_count(20, timeout=30), f"{len(recorder.snapshot())} of 20 ran"
    assert sorted(e["job"].id for e in recorder.snapshot()) == sorted(ids)


def test_a_queue_forwarded_by_another_manager_keeps_the_settings_it_was_spilled_with(
    restartable_redis: RedisServer, manager_pool: ManagerPool, tmp_path: Path
) -> None:
    kwargs = {
        "backend": "redis",
        "url": restartable_redis.url,
        "prefix": "spill-settings",
        "spill_path": str(tmp_path / "spill"),
    }
    restartable_redis.kill()
    spiller = manager_pool.open(**kwargs)
    # Declared while Redis is away: only the spill hears of these settings.
    spiller.create_queue("reports", keep_completed=7, ttl=120.0, max_retries=1)
    ids = [spiller.push("reports", n) for n in range(3)]
    spiller.close()

    restartable_redis.start()
    manager_pool.open(**kwargs)  # forwards the spill, and never declares the queue itself
    reader = manager_pool.open(**{k: v for k, v in kwargs.items() if k != "spill_path"})
    wait_until(lambda: all(reader.get_job(i) for i in ids), timeout=30, what="forwarded")
    reader.get_queue("reports")  # reads the settings Redis now holds
    config = reader._engine.queue_config("reports")
    assert (config["keep_completed"], config["ttl"], config["max_retries"]) == (7, 120.0, 1)


def test_a_spilled_job_can_be_deleted_before_it_is_forwarded(
    restartable_redis: RedisServer, manager_pool: ManagerPool, tmp_path: Path
) -> None:
    restartable_redis.kill()
    qm = manager_pool.open(
        backend="redis",
        url=restartable_redis.url,
        prefix="spill-delete",
        spill_path=str(tmp_path / "spill"),
    )
    kept, dropped = qm.push("work", "kept"), qm.push("work", "dropped")
    assert qm.delete_job(dropped) is True
    restartable_redis.start()
    recorder = Recorder()
    qm.get_queue("work").process(recorder.record)
    assert recorder.wait_count(1, timeout=30)
    assert qm.join("work", timeout=WAIT), "nothing else waits: the spill holds no phantom job"
    assert [e["job"].id for e in recorder.snapshot()] == [kept]
    assert qm.get_job(dropped) is None


def test_spill_path_belongs_to_the_redis_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spill_path"):
        QueueManager(backend="memory", spill_path=str(tmp_path / "spill"))
