"""Private redis-server processes for the tests: one server that a test may kill and restart,
and a local 3-master Redis Cluster. Never the instance on 6379."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too: at most 55535."""
    import random

    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def unavailable(reason: str) -> NoReturn:
    """Skip (or, under ``RNQ_REQUIRE_REDIS=1``, fail) a test that needs a redis-server."""
    if os.environ.get("RNQ_REQUIRE_REDIS") == "1":
        pytest.fail(f"RNQ_REQUIRE_REDIS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def executable(name: str = "redis-server") -> str:
    exe = shutil.which(name)
    if exe is None:
        unavailable(f"{name} is not installed (not on PATH)")
    return exe


class RedisServer:
    """A redis-server on a fixed port in its own directory, that can be killed and restarted
    with its data (append-only file, fsync always: what it acknowledged survives a kill)."""

    def __init__(self, workdir: Path, port: int, *extra: str) -> None:
        self.workdir = workdir
        self.port = port
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        failure = self.try_start(timeout)
        if failure is not None:
            unavailable(failure)

    def try_start(self, timeout: float = 10.0) -> str | None:
        """Starts the server; the reason if it did not answer within ``timeout`` seconds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                executable(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--save",
                "",
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if ping(self.port):
                return None
            time.sleep(0.02)
        tail = (self.workdir / "redis.log").read_text(errors="replace")[-500:]
        self.stop()
        return f"redis-server did not start on port {self.port}: {tail.strip()}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class RedisCluster:
    """Three masters (no replicas) on free ports, joined with ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [
            RedisServer(
                workdir / f"node{n}",
                free_cluster_port(),
                "--appendonly",
                "no",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            )
            for n in range(3)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
        finally:
            if any(node.proc is None for node in self.nodes):
                self.stop()
        created = subprocess.run(
            [
                executable("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            self.stop()
            unavailable(f"redis-cli --cluster create failed: {created.stdout[-300:]}")
        # The nodes agree on the slot map a moment after the command returns.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [executable("redis-cli"), "-p", str(node.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return
            time.sleep(0.1)
        self.stop()
        unavailable("the local redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
