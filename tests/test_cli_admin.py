"""The admin commands (``rnode-queue stats``, ``jobs``, ``job``, ``retry``, ``pause``,
``resume``, ``clear``, ``schedules``, ``workers``), run as real subprocesses against a private
redis-server and a file store: their tables, their ``--json`` and their exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from rnode_queue import Job, QueueManager

#: Bound on anything expected to happen (a bug fails the test instead of hanging it).
WAIT = 20.0


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m rnode_queue ARGS``; the developer's REDIS_URL / REDIS_PREFIX never apply."""
    environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PREFIX")}
    return subprocess.run(
        [sys.executable, "-m", "rnode_queue", *args],
        env={**environ, **(env or {})},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = cli(*args, env=env)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert done.stderr == "", done.stderr
    return done.stdout


def rows(table: str) -> list[list[str]]:
    """The cells of a table the command printed (split on runs of 2+ spaces), header first."""
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()] for line in table.splitlines()
    ]


class Store:
    """A redis prefix with jobs in every state, and the arguments that reach it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"rnq-admin:{uuid.uuid4().hex}"
        self.qm = QueueManager(url=url, prefix=self.prefix)
        self.args = ["--url", url, "--prefix", self.prefix]

    def fill(self) -> dict[str, list[str]]:
        """emails: 3 completed, 1 failed (2 attempts), 1 delayed; reports: 2 waiting, paused."""
        qm = self.qm
        qm.create_queue("emails", max_retries=1, retry_delay=0.01)
        done = [qm.push("emails", {"to": f"user{n}@example.com"}) for n in range(3)]
        failed = [qm.push("emails", {"to": "bounce@example.com", "fail": True})]
        delayed = [qm.push("emails", {"to": "later@example.com"}, delay=3600)]
        qm.create_queue("reports")
        qm.pause_queue("reports")
        waiting = [qm.push("reports", {"day": day}) for day in ("mon", "tue")]

        @qm.process("emails")
        def send(job: Job) -> str:
            if job.data.get("fail"):
                raise ValueError(f"mailbox {job.data['to']} is full")
            return "sent"

        for job_id in done + failed:
            assert qm.wait_for(job_id, timeout=WAIT) is not None
        return {"done": done, "failed": failed, "delayed": delayed, "waiting": waiting}


@pytest.fixture
def store(redis_server: str) -> Iterator[Store]:
    made = Store(redis_server)
    yield made
    made.qm.close(timeout=5)


# -- connecting ------------------------------------------------------------------------------


def test_no_store_is_a_usage_error() -> None:
    done = cli("stats")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "rnode-queue stats: no store given: pass --url redis://... (or set REDIS_URL) for "
        "redis, or --path DIR for a file store"
    )
    missing = cli("stats", "--path", "/nonexistent/queue-data")
    assert missing.returncode == 2
    assert "no such directory" in missing.stderr


# -- stats -----------------------------------------------------------------------------------


def test_stats_table_and_json(store: Store) -> None:
    store.fill()
    table = rows(ok("stats", *store.args))
    assert table == [
        ["QUEUE", "WAITING", "DELAYED", "ACTIVE", "COMPLETED", "FAILED", "PAUSED", "DONE/MIN",
         "FAILED/MIN"],
        ["emails", "0", "1", "0", "3", "1", "no", "3", "1"],
        ["reports", "2", "0", "0", "0", "0", "yes", "0", "0"],
    ]  # fmt: skip
    # The environment names the store as well (REDIS_URL, REDIS_PREFIX).
    env = {"REDIS_URL": store.url, "REDIS_PREFIX": store.prefix}
    entries = json.loads(ok("stats", "--json", env=env))
    assert entries == [
        {"queue": "emails", "waiting": 0, "delayed": 1, "active": 0, "completed": 3,
         "failed": 1, "paused": False, "completed_last_minute": 3, "failed_last_minute": 1,
         "last_minute_exact": True},
        {"queue": "reports", "waiting": 2, "delayed": 0, "active": 0, "completed": 0,
         "failed": 0, "paused": True, "completed_last_minute": 0, "failed_last_minute": 0,
         "last_minute_exact": True},
    ]  # fmt: skip


# -- jobs ------------------------------------------------------------------------------------


def test_jobs_lists_a_queue_with_status_and_limit(store: Store) -> None:
    ids = store.fill()
    table = rows(ok("jobs", "emails", *store.args))
    assert table[0] == ["ID", "STATUS", "PRIORITY", "ATTEMPTS", "CREATED (UTC)", "DATA", "ERROR"]
    assert sorted(row[0] for row in table[1:]) == sorted(
        ids["done"] + ids["failed"] + ids["delayed"]
    )
    failed = rows(ok("jobs", "emails", "--status", "failed", *store.args))
    assert len(failed) == 2
    assert failed[1][:4] == [ids["failed"][0], "failed", "normal", "2/2"]
    assert failed[1][-1] == "ValueError: mailbox bounce@example.com is full"
    listed = json.loads(ok("jobs", "emails", "--status", "completed", "--limit", "2", "--json",
                           *store.args))  # fmt: skip
    assert len(listed) == 2
    assert {job["status"] for job in listed} == {"completed"}
    assert {job["id"] for job in listed} <= set(ids["done"])
    unknown = cli("jobs", "nope", *store.args)
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == (
        "rnode-queue jobs: no queue 'nope' in this store (queues: emails, reports)"
    )


def test_job_shows_data_error_and_traceback(store: Store) -> None:
    failed = store.fill()["failed"][0]
    shown = ok("job", failed, *store.args)
    head = shown.split("\ntraceback:\n")[0]
    fields = dict(line.split(None, 1) for line in head.splitlines())
    assert fields["status"] == "failed"
    assert fields["attempts"] == "2 of 2"
    assert fields["data"] == '{"to": "bounce@example.com", "fail": true}'
    assert fields["error"] == "ValueError: mailbox bounce@example.com is full"
    assert fields["failed"].endswith(" UTC")
    assert "traceback:\n  Traceback (most recent call last):" in shown
    assert 'raise ValueError(f"mailbox' in shown
    as_json = json.loads(ok("job", failed, "--json", *store.args))
    assert as_json["id"] == failed and as_json["attempts"] == 2
    assert as_json["traceback"].startswith("Traceback (most recent call last):")
    missing = cli("job", "01a00000-0000-7000-8000-000000000000", *store.args)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "rnode-queue job: no job '01a00000-0000-7000-8000-000000000000' "
        "(it never existed, or is no longer retained)"
    )


def test_retry_one_job_then_every_failed_job_of_a_queue(store: Store) -> None:
    qm = store.qm
    qm.create_queue("flaky", max_retries=0)
    # More than a page of failed jobs (each fails once, then succeeds).
    ids = qm.push_batch("flaky", [{"data": {"n": n}} for n in range(520)])
    tries: dict[int, int] = {}

    @qm.process("flaky")
    def flaky(job: Job) -> None:
        tries[job.data["n"]] = tries.get(job.data["n"], 0) + 1
        if tries[job.data["n"]] == 1:
            raise RuntimeError("first try fails")

    assert qm.join("flaky", timeout=WAIT)
    assert qm.get_queue("flaky").get_stats()["failed"] == 520

    first = ok("retry", ids[0], *store.args)
    assert first.strip() == f"job {ids[0]} is waiting again"
    assert (job := qm.wait_for(ids[0], timeout=WAIT)) is not None and job.status == "completed"
    again = cli("retry", ids[0], *store.args)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"rnode-queue retry: job {ids[0]} is completed, not failed: nothing to retry"
    )

    result = json.loads(ok("retry", "--failed", "flaky", "--json", *store.args))
    assert result == {"queue": "flaky", "retried": 519}
    assert qm.join("flaky", timeout=WAIT)
    assert [j.status for j in qm.get_jobs("flaky", "failed", 1000)] == []
    assert ok("retry", "--failed", "flaky", *store.args).strip() == (
        "0 failed job(s) of queue 'flaky' are waiting again"
    )
    both = cli("retry", ids[0], "--failed", "flaky", *store.args)
    assert both.returncode == 2
    assert "give a job ID, or --failed QUEUE (not both)" in both.stderr


# -- queues ----------------------------------------------------------------------------------


def test_pause_resume_and_clear(store: Store) -> None:
    store.fill()
    assert ok("pause", "emails", *store.args).strip() == "queue 'emails' is paused"
    assert store.qm.get_queue("emails").get_stats()["paused"] is True
    resumed = json.loads(ok("resume", "emails", "--json", *store.args))
    assert resumed == {"queue": "emails", "paused": False}
    assert store.qm.get_queue("emails").get_stats()["paused"] is False

    refused = cli("clear", "reports", *store.args)  # stdin is not a terminal
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "rnode-queue clear: refusing to clear 'reports' without --yes (no terminal to ask)"
    )
    assert store.qm.get_queue("reports").get_stats()["waiting"] == 2
    cleared = json.loads(ok("clear", "reports", "--yes", "--json", *store.args))
    assert cleared == {"queue": "reports", "removed": 2}
    assert store.qm.get_queue("reports").get_stats()["waiting"] == 0
    unknown = cli("pause", "nope", *store.args)
    assert unknown.returncode == 1
    assert "no queue 'nope'" in unknown.stderr
    assert "nope" not in store.qm._engine.queue_names()


# -- schedules and workers -------------------------------------------------------------------


def test_schedules_table_and_json(store: Store) -> None:
    store.qm.schedule("reports", {"kind": "daily"}, "0 3 * * *", name="nightly")
    store.qm.schedule("emails", {"kind": "digest"}, "*/5 * * * *", name="digest")
    table = rows(ok("schedules", *store.args))
    assert table[0] == ["ID", "QUEUE", "CRON", "NEXT RUN (UTC)", "DATA"]
    assert {row[0]: row[1:3] for row in table[1:]} == {
        "nightly": ["reports", "0 3 * * *"],
        "digest": ["emails", "*/5 * * * *"],
    }
    assert table[1][0] == "digest"  # the soonest first
    entries = json.loads(ok("schedules", "--json", *store.args))
    assert [(e["id"], e["queue"], e["data"]) for e in entries] == [
        ("digest", "emails", {"kind": "digest"}),
        ("nightly", "reports", {"kind": "daily"}),
    ]
    assert entries[0]["next_run"].endswith("+00:00")


def test_workers_lists_the_live_worker_processes_not_the_admin(store: Store) -> None:
    assert rows(ok("workers", *store.args)) == [
        ["HOST", "PID", "QUEUES (CONCURRENCY)", "RUNNING", "STARTED", "LAST SEEN"],
        ["(none)"],
    ]
    store.qm.process("emails", lambda job: None, concurrency=4)  # this process is a worker now
    wait_until(store.qm.get_workers, what="this process's heartbeat")
    entries: list[dict[str, Any]] = json.loads(ok("workers", "--json", *store.args))
    assert [(e["pid"], e["queues"], e["concurrency"]) for e in entries] == [
        (os.getpid(), ["emails"], {"emails": 4})
    ]
    [_header, row] = rows(ok("workers", *store.args))
    assert row[1:4] == [str(os.getpid()), "emails (4)", "0"]
    assert row[-1].endswith("s ago")


# -- a file store ----------------------------------------------------------------------------


def test_admin_commands_on_a_file_store(tmp_path: Path) -> None:
    path = tmp_path / "queue-data"
    with QueueManager(path=path) as qm:
        qm.create_queue("thumbnails", max_retries=0)
        good = qm.push("thumbnails", {"image": "a.png"})
        bad = qm.push("thumbnails", {"image": "b.png", "broken": True})

        @qm.process("thumbnails")
        def thumbnail(job: Job) -> str:
            if job.data.get("broken"):
                raise OSError("cannot read b.png")
            return "ok"

        for job_id in (good, bad):
            assert qm.wait_for(job_id, timeout=WAIT) is not None
    # The store is closed: the command opens it itself.
    args = ["--path", str(path)]
    assert rows(ok("stats", *args))[1] == ["thumbnails", "0", "0", "0", "1", "1", "no", "1", "1"]
    failed = json.loads(ok("jobs", "thumbnails", "--status", "failed", "--json", *args))
    assert [job["id"] for job in failed] == [bad]
    assert "OSError: cannot read b.png" in ok("job", bad, *args)
    assert ok("retry", bad, *args).strip() == f"job {bad} is waiting again"
    assert json.loads(ok("stats", "--json", *args))[0]["waiting"] == 1
