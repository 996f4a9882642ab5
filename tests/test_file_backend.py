"""File only: several processes on one store directory (the holder serves the others), kill -9
of the holder (a client's is in test_persistence.py), pushes acknowledged with ``fsync="always"``
surviving SIGKILL, a damaged log, and the worker command.

A store is held by the first process that opens it; the others reach it through the holder, and
one of them takes it over when the holder dies.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ENABLED_BACKENDS, ManagerPool
from helpers import WAIT, Recorder
from processes import WorkerProcess, run_app
from rnode_queue import QueueManager

pytestmark = pytest.mark.skipif(
    "file" not in ENABLED_BACKENDS, reason="the 'file' backend is not enabled"
)


def test_when_the_holder_is_sigkilled_another_process_takes_over(
    file_kwargs: dict[str, Any],
    manager_pool: ManagerPool,
    worker_script: Path,
    workers: list[WorkerProcess],
) -> None:
    doomed = WorkerProcess(worker_script, {**file_kwargs, "fsync": "always"}, "takeover", "hang")
    workers.append(doomed)
    qm = manager_pool.open(**file_kwargs)  # a client of the worker process
    waiting = [qm.push("other", {"n": n}) for n in range(50)]
    job_id = qm.push("takeover", {"n": 1})
    doomed.wait_for(lambda events: any(e.get("id") == job_id for e in events))
    doomed.kill()

    # The next call finds the holder gone: this process replays the log and holds the store.
    recorder = Recorder()
    qm.get_queue("takeover").process(recorder.record)
    job = qm.wait_for(job_id, timeout=WAIT)
    assert job is not None and job.status == "completed"
    assert job.attempts == 2, "the run lost with the holder counts"
    assert qm.get_stats().queue_sizes.get("other") == len(waiting)
    for other in waiting:
        found = qm.get_job(other)
        assert found is not None and found.status == "waiting"


PUSHER = textwrap.dedent(
    """
    import asyncio, json, sys
    from rnode_queue import AsyncQueueManager, QueueManager

    options = json.loads(sys.argv[1])
    if sys.argv[2] == "sync":
        qm = QueueManager(**options)
        n = 0
        while True:
            job_id = qm.push("acked", {"n": n})
            print(job_id, flush=True)  # printed only once the push returned
            n += 1

    async def pusher(aqm, start):  # 16 of them: their pushes share syncs
        n = start
        while True:
            job_id = await aqm.push("acked", {"n": n})
            print(job_id, flush=True)
            n += 16

    async def main():
        aqm = AsyncQueueManager(**options)
        await asyncio.gather(*(pusher(aqm, start) for start in range(16)))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("holder", "api"),
    [(True, "sync"), (False, "sync"), (True, "async")],
    ids=["holder", "client", "holder-async"],
)
def test_every_push_acknowledged_with_fsync_always_survives_sigkill(
    file_kwargs: dict[str, Any], manager_pool: ManagerPool, tmp_path: Path, holder: bool, api: str
) -> None:
    kwargs = {**file_kwargs, "fsync": "always"}
    other: QueueManager | None = None if holder else QueueManager(**kwargs)
    script = tmp_path / "pusher.py"
    script.write_text(PUSHER)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(kwargs), api],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed: list[str] = []
    for line in proc.stdout:
        printed.append(line.strip())
        if len(printed) == 2000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    printed += [line.strip() for line in proc.stdout if line.endswith("\n")]
    if other is not None:
        other.close(timeout=5)  # the holder: its close syncs the log, as kill -9 would not

    qm = manager_pool.open(**kwargs)
    missing = [job_id for job_id in printed if qm.get_job(job_id) is None]
    assert missing == [], f"{len(missing)} acknowledged pushes lost of {len(printed)}"


def frames_end(segment: bytes) -> int:
    """Where a segment's frames end: a 32-byte header, then frames of a u32 length, a u32
    checksum and the payload, up to a zero length."""
    at = 32
    while True:
        length = int.from_bytes(segment[at : at + 4], "little")
        if length == 0:
            return at
        at += 8 + length


def test_a_damaged_log_opens_with_what_came_before_the_damage(
    file_kwargs: dict[str, Any], manager_pool: ManagerPool, caplog: pytest.LogCaptureFixture
) -> None:
    first = manager_pool.open(**file_kwargs, fsync="always")
    kept = [first.push("q", {"n": n}) for n in range(20)]
    assert first.close(timeout=5)
    path = Path(file_kwargs["path"])
    segment = max(path.glob("*.log"))
    data = bytearray(segment.read_bytes())
    end = frames_end(bytes(data))
    data[end : end + 40] = b"\xff" * 40  # garbage where the next record would have gone
    segment.write_bytes(bytes(data))

    with caplog.at_level("WARNING", logger="rnode_queue"):
        second = manager_pool.open(**file_kwargs)
    assert [second.get_job(job_id) is not None for job_id in kept] == [True] * 20
    assert any("torn or damaged" in r.getMessage() for r in caplog.records), caplog.text
    second.push("q", {"after": "repair"})
    assert second.get_stats().queue_sizes["q"] == 21


def test_a_second_manager_in_one_process_shares_the_store(
    file_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> None:
    one = manager_pool.open(**file_kwargs)
    two = manager_pool.open(**file_kwargs)
    job_id = two.push("q", 1)
    found = one.get_job(job_id)
    assert found is not None and found.data == 1
    recorder = Recorder()
    one.get_queue("q").process(recorder.record)
    assert two.wait_for(job_id, timeout=WAIT) is not None
    # The holder closes; the other manager takes the store over and keeps working.
    assert one.close(timeout=5)
    again = two.push("q", 2)
    got = two.get_job(again)
    assert got is not None and got.status == "waiting"
    started = time.monotonic()
    assert two.get_stats().queue_sizes["q"] == 1
    assert time.monotonic() - started < WAIT


FILE_APP = textwrap.dedent(
    """
    import os
    from rnode_queue import QueueManager

    qm = QueueManager(backend="file", path=os.environ["QUEUE_PATH"])
    thumbnails = qm.create_queue("thumbnails", concurrency=4)

    @thumbnails.process
    def make_thumbnail(job):
        return {"thumbnail": job.data["image"] + ".thumb.png"}
    """
)

FILE_WEB = textwrap.dedent(
    """
    import os
    from rnode_queue import QueueManager

    qm = QueueManager(backend="file", path=os.environ["QUEUE_PATH"])  # pushes only
    ids = qm.push_batch("thumbnails", [{"data": {"image": f"photo-{n}.jpg"}} for n in range(3)])
    for job_id in ids:
        job = qm.wait_for(job_id, timeout=30)  # run by the worker process
        print(job.data["image"], "->", job.result["thumbnail"])
    qm.close()
    """
)


def test_the_worker_command_serves_a_file_store(tmp_path: Path) -> None:
    """`rnode-queue worker app:qm` on a file store runs what another process pushes."""
    (tmp_path / "app.py").write_text(FILE_APP)
    (tmp_path / "web.py").write_text(FILE_WEB)
    output = run_app(tmp_path, "app:qm", {"QUEUE_PATH": str(tmp_path / "queue-data")}, "file")
    assert output.count(".thumb.png") == 3, output
