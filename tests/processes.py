"""Worker processes for tests that need more than one process on one store (redis, file).

``WorkerProcess`` runs ``WORKER_SCRIPT`` in a separate Python process, whose events (JSON lines
on its stdout) the test reads; the ``worker_script`` and ``workers`` fixtures (conftest.py)
write the script and kill what a test left running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKER_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, time
    from rnode_queue import QueueManager

    lock = threading.Lock()

    def emit(**event):
        with lock:  # one whole line per event, whichever thread writes it
            sys.stdout.write(json.dumps(event) + "\\n")
            sys.stdout.flush()

    options, queue, concurrency, mode = json.loads(sys.argv[1]), *sys.argv[2:5]
    qm = QueueManager(**options)
    q = qm.create_queue(queue, concurrency=int(concurrency))
    if mode == "cron":
        qm.schedule(queue, {"k": 1}, "* * * * * *")

    def handler(job):
        tick = job.scheduled_at.timestamp() if job.scheduled_at else None
        emit(event="start", id=job.id, attempts=job.attempts)
        if mode == "hang":
            time.sleep(3600)
        emit(event="done", id=job.id, attempts=job.attempts, tick=tick)

    q.process(handler)
    emit(event="ready")
    sys.stdin.read()  # runs until the test closes stdin
    qm.close(timeout=10)
    """
)


class WorkerProcess:
    """A worker in a separate Python process; its events (JSON lines) are collected here."""

    def __init__(
        self, script: Path, options: dict[str, Any], queue: str, mode: str, concurrency: int = 1
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(options), queue, str(concurrency), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda events: any(e["event"] == "ready" for e in events))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> None:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: done(self.events) or self.proc.poll() is not None, timeout
            )
            if not (ok and done(self.events)):
                stderr = (
                    self.proc.stderr.read()
                    if self.proc.poll() is not None and self.proc.stderr
                    else ""
                )
                raise AssertionError(f"worker events {self.events[-5:]}; stderr: {stderr[-800:]}")

    def done(self) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.events if e["event"] == "done"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)


def run_app(app: Path, module: str, env: dict[str, str], backend: str) -> str:
    """Runs ``rnode-queue worker MODULE`` in ``app`` and, beside it, ``web.py`` (which pushes
    and waits for the results); returns web.py's output once the worker stopped cleanly on
    SIGTERM."""
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "rnode_queue", "worker", module, "--shutdown-timeout", "5"]
    worker = subprocess.Popen(
        command, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert worker.stderr is not None
        start: list[str] = []  # the worker's log lines up to "ready:"
        while not (start and " ready: " in start[-1]):
            line = worker.stderr.readline()
            assert line, start
            start.append(line)
        assert any(f"backend: {backend}" in line for line in start), start
        web = subprocess.run(
            [sys.executable, "web.py"], cwd=app, env=env, capture_output=True, text=True, timeout=60
        )
        assert web.returncode == 0, web.stderr[-2000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            raise
    assert code == 0, worker.stderr.read() if worker.stderr else ""
    return web.stdout
