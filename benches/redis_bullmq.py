"""BullMQ (Node.js) as a peer of ``benches/redis_peers.py``: its Python side.

``benches/bullmq/`` holds a private npm package (``package.json`` pinning bullmq and ioredis with
exact versions, ``package-lock.json``) and ``bench.mjs``, which runs either a worker or a
producer. ``ensure_installed`` installs the pinned packages once into
``benches/bullmq/node_modules`` (``npm ci``); ``redis_peers.py`` then starts the worker with
``worker_cmd`` like any other peer's worker, and drives one long-lived producer process
(``Producer``) through its standard input: the producer is connected before any clock starts,
and each command is answered on its standard output.

* ``enqueue N``: ``Queue.addBulk`` in chunks of 1,000 jobs (BullMQ's bulk API);
* ``push M``: M single ``Queue.add`` calls, each timed inside Node with ``process.hrtime``, the
  durations returned as one JSON line (Python's clock would add the pipe's round trip).

Jobs are added with ``removeOnComplete: true`` (no result, no finished job kept); BullMQ keeps
its default events stream (``<prefix>:<queue>:events``, trimmed to ~10,000 entries) as deployed.
All keys live under BullMQ's ``prefix`` option, set to the run's fresh prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time

_HERE = os.path.dirname(os.path.realpath(__file__))
DIR = os.path.join(_HERE, "bullmq")
SCRIPT = os.path.join(DIR, "bench.mjs")
QUEUE = "q"  # BullMQ queue name: its keys are <prefix>:q:...
CHUNK = 1000  # jobs per Queue.addBulk call
# Jobs one Worker runs at once (BullMQ's default is 1). Measured here (2 cores, N = 20,000,
# steady jobs/s, both handlers): 1 ~2,500-4,000; 10 ~7,000-8,500; 25, 50 and 100 ~8,000-10,500,
# within noise of each other: the best.
CONCURRENCY = 50
NODE_MIN_MAJOR = 18
INSTALL_TIMEOUT = 600.0  # seconds for npm ci
STOP_GRACE = 10.0

NOTES = f"node bench.mjs worker: 1 Worker, concurrency {CONCURRENCY}, removeOnComplete: true"

_installed: str | None = None  # reason of the last failed check, "" once installed


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return int(out.strip().lstrip("v").split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _pinned() -> dict[str, str]:
    with open(os.path.join(DIR, "package.json"), encoding="utf-8") as f:
        return dict(json.load(f)["dependencies"])


def _installed_version(package: str) -> str | None:
    path = os.path.join(DIR, "node_modules", package, "package.json")
    try:
        with open(path, encoding="utf-8") as f:
            return str(json.load(f)["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_installed() -> str | None:
    """None once node can run ``bench.mjs`` with the pinned packages, else a short reason.

    Installs them (``npm ci``, or ``npm install`` without a lock file) into
    ``benches/bullmq/node_modules`` when a pinned version is absent; done once per process.
    """
    global _installed
    if _installed == "":
        return None
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        return f"{missing} not found: install Node.js >= {NODE_MIN_MAJOR} with npm"
    major = _node_major(node)
    if major is None or major < NODE_MIN_MAJOR:
        return f"node {major or '?'} found, BullMQ's bench needs Node.js >= {NODE_MIN_MAJOR}"
    try:
        pinned = _pinned()
    except (OSError, ValueError, KeyError) as exc:
        return f"cannot read {DIR}/package.json: {exc}"
    if any(_installed_version(p) != v for p, v in pinned.items()):
        has_lock = os.path.exists(os.path.join(DIR, "package-lock.json"))
        cmd = [npm, "ci" if has_lock else "install", "--no-audit", "--no-fund"]
        try:
            proc = subprocess.run(
                cmd, cwd=DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT
            )
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{' '.join(cmd[1:])} failed in {DIR}: {exc}"
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-500:]
            return f"{' '.join(cmd[1:])} failed in {DIR} (exit {proc.returncode}): {tail}"
        wrong = [
            f"{package} {_installed_version(package)} (pinned {pin})"
            for package, pin in pinned.items()
            if _installed_version(package) != pin
        ]
        if wrong:
            return f"npm installed {', '.join(wrong)}"
    _installed = ""
    return None


def version() -> str | None:
    """The installed bullmq version, or None."""
    return _installed_version("bullmq")


def worker_cmd(
    url: str, prefix: str, handler: str, counter: str, signals: dict[int, tuple[str, str]]
) -> list[str]:
    """The worker: one BullMQ Worker, ``handler`` count or roundtrip (see bench.mjs)."""
    node = shutil.which("node") or "node"
    table = json.dumps({str(n): list(target) for n, target in signals.items()})
    return [
        *(node, SCRIPT, "worker", "--url", url, "--prefix", prefix, "--queue", QUEUE),
        *("--handler", handler, "--counter", counter, "--signals", table),
        *("--concurrency", str(CONCURRENCY)),
    ]


def stop(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL to the process group (started with ``start_new_session``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=grace)


class Producer:
    """One ``node bench.mjs producer`` process, connected up front and driven line by line."""

    def __init__(self, url: str, prefix: str, timeout: float, log_path: str) -> None:
        self.timeout = timeout
        self.log_path = log_path
        self._buffer = bytearray()
        node = shutil.which("node") or "node"
        cmd = [node, SCRIPT, "producer", "--url", url, "--prefix", prefix, "--queue", QUEUE]
        cmd += ["--chunk", str(CHUNK)]
        with open(log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=DIR,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        try:
            line = self._read_line("start-up")
            if line != "ready":
                raise RuntimeError(f"bullmq producer: expected 'ready', got {line!r}")
        except BaseException:
            self.close()
            raise

    def _log_tail(self, chars: int = 1500) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read().strip()
        except OSError:
            return "(no producer log)"
        return text[-chars:] if text else "(producer log empty)"

    def _read_line(self, what: str) -> str:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(
                    f"bullmq producer: no answer to {what} within {self.timeout:g} s; "
                    f"log:\n{self._log_tail()}"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            chunk = os.read(fd, 1 << 16) if ready else b""
            if ready and not chunk:
                code = self._proc.wait(timeout=STOP_GRACE)
                raise RuntimeError(
                    f"bullmq producer exited with code {code} during {what}; "
                    f"log:\n{self._log_tail()}"
                )
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode("utf-8", errors="replace").strip()

    def _call(self, command: str) -> str:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(f"{command}\n".encode())
            stdin.flush()
        except BrokenPipeError as exc:
            raise RuntimeError(f"bullmq producer is gone; log:\n{self._log_tail()}") from exc
        line = self._read_line(repr(command))
        if line.startswith("error"):
            raise RuntimeError(f"bullmq producer: {command!r}: {line}")
        return line

    def enqueue(self, count: int) -> None:
        """``count`` jobs with Queue.addBulk in chunks of CHUNK."""
        if self._call(f"enqueue {count}") != "ok":
            raise RuntimeError(f"bullmq producer: unexpected answer to 'enqueue {count}'")

    def push_latencies(self, count: int) -> list[int]:
        """Nanoseconds of ``count`` single Queue.add calls, timed inside Node."""
        samples = json.loads(self._call(f"push {count}"))
        if not isinstance(samples, list) or len(samples) != count:
            raise RuntimeError(f"bullmq producer: expected {count} samples")
        return [int(s) for s in samples]

    def close(self) -> None:
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(b"quit\n")
                stdin.close()
        try:
            self._proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            stop(self._proc, grace=1.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
