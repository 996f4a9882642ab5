"""Fixtures of the rnode-queue test-suite.

The ``qm`` / ``make_qm`` / ``make_aqm`` fixtures run every test that uses them once per
backend in ``ENABLED_BACKENDS``. The fixtures for all three backends are complete:

* ``memory`` needs nothing;
* ``file`` stores its data under the test's ``tmp_path``;
* ``redis`` uses a private ``redis-server`` started once per session on a free port in a
  temporary directory (never the instance on 6379), with a fresh key prefix per test. When
  ``redis-server`` cannot be started the redis tests are skipped with the reason, unless
  ``RNQ_REQUIRE_REDIS=1`` is set, which turns that into a failure.

The engine implements only the memory backend so far, so only it is enabled; switching on
another backend is adding its name to ``ENABLED_BACKENDS``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rnode_queue import AsyncQueueManager, QueueManager

# Backends the parametrised manager fixtures run on.
ENABLED_BACKENDS: list[str] = ["memory", "file", "redis"]
ALL_BACKENDS: tuple[str, ...] = ("memory", "file", "redis")
DURABLE_BACKENDS: tuple[str, ...] = ("file", "redis")

# How long fixture teardown lets a manager's running jobs finish.
TEARDOWN_CLOSE_TIMEOUT = 5.0

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_servers import RedisServer, executable, free_port, unavailable  # noqa: E402

# -- a private redis-server -------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a redis-server private to this test session."""
    executable()
    workdir = tmp_path_factory.mktemp("redis")
    failure = None
    for _ in range(3):  # another process may grab the free port before redis binds it
        server = RedisServer(workdir, free_port(), "--appendonly", "no")
        failure = server.try_start()
        if failure is None:
            try:
                yield server.url
            finally:
                server.stop()
            return
    unavailable(failure or "redis-server did not start")


# -- backends ---------------------------------------------------------------------------------


def backend_options(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Manager keyword arguments that select backend ``name`` with fresh, private storage."""
    if name == "memory":
        return {"backend": "memory"}
    if name == "file":
        return {"backend": "file", "path": str(tmp_path / "queue-data")}
    if name == "redis":
        url = request.getfixturevalue("redis_server")
        return {"backend": "redis", "url": url, "prefix": f"rnq-test:{uuid.uuid4().hex}"}
    raise ValueError(f"unknown backend {name!r}")


@pytest.fixture(params=ENABLED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_kwargs(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return backend_options(backend, request, tmp_path)


@pytest.fixture(params=DURABLE_BACKENDS)
def durable_kwargs(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Options of a backend whose data outlives the manager (file, redis)."""
    name = str(request.param)
    if name not in ENABLED_BACKENDS:
        pytest.skip(f"the {name!r} backend is not enabled (ENABLED_BACKENDS in tests/conftest.py)")
    return backend_options(name, request, tmp_path)


@pytest.fixture
def redis_kwargs(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Options of the redis backend (skips while it is not enabled)."""
    if "redis" not in ENABLED_BACKENDS:
        pytest.skip("the 'redis' backend is not enabled (ENABLED_BACKENDS in tests/conftest.py)")
    return backend_options("redis", request, tmp_path)


@pytest.fixture
def file_kwargs(tmp_path: Path) -> dict[str, Any]:
    """Options of the file backend (skips while it is not enabled)."""
    if "file" not in ENABLED_BACKENDS:
        pytest.skip("the 'file' backend is not enabled (ENABLED_BACKENDS in tests/conftest.py)")
    return {"backend": "file", "path": str(tmp_path / "queue-data")}


# -- managers ---------------------------------------------------------------------------------


class ManagerPool:
    """Opens managers for a test and closes every one of them at teardown."""

    def __init__(self) -> None:
        self._managers: list[QueueManager] = []
        self._async_managers: list[AsyncQueueManager] = []

    def open(self, **kwargs: Any) -> QueueManager:
        return self.track(QueueManager(**kwargs))

    def track(self, qm: QueueManager) -> QueueManager:
        self._managers.append(qm)
        return qm

    def open_async(self, **kwargs: Any) -> AsyncQueueManager:
        return self.track_async(AsyncQueueManager(**kwargs))

    def track_async(self, aqm: AsyncQueueManager) -> AsyncQueueManager:
        self._async_managers.append(aqm)
        return aqm

    def close_all(self) -> None:
        errors: list[BaseException] = []
        for aqm in reversed(self._async_managers):
            try:
                asyncio.run(aqm.close(timeout=TEARDOWN_CLOSE_TIMEOUT))
            except Exception as exc:
                errors.append(exc)
        for qm in reversed(self._managers):
            try:
                qm.close(timeout=TEARDOWN_CLOSE_TIMEOUT)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def manager_pool() -> Iterator[ManagerPool]:
    pool = ManagerPool()
    yield pool
    pool.close_all()


@pytest.fixture
def make_qm(
    backend_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> Callable[..., QueueManager]:
    """``make_qm(**overrides)``: a QueueManager on the test's backend, closed at teardown."""

    def make(**overrides: Any) -> QueueManager:
        return manager_pool.open(**{**backend_kwargs, **overrides})

    return make


@pytest.fixture
def qm(make_qm: Callable[..., QueueManager]) -> QueueManager:
    """A QueueManager on the test's backend, closed at teardown."""
    return make_qm()


@pytest.fixture
def make_aqm(
    backend_kwargs: dict[str, Any], manager_pool: ManagerPool
) -> Callable[..., AsyncQueueManager]:
    """``make_aqm(**overrides)``: an AsyncQueueManager on the test's backend, closed at teardown."""

    def make(**overrides: Any) -> AsyncQueueManager:
        return manager_pool.open_async(**{**backend_kwargs, **overrides})

    return make


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (AOF, fsync always) that a test may kill and start again."""
    if "redis" not in ENABLED_BACKENDS:
        pytest.skip("the 'redis' backend is not enabled (ENABLED_BACKENDS in tests/conftest.py)")
    server = RedisServer(
        tmp_path / "redis", free_port(), "--appendonly", "yes", "--appendfsync", "always"
    )
    server.start()
    yield server
    server.stop()


# -- worker processes -------------------------------------------------------------------------


@pytest.fixture
def worker_script(tmp_path: Path) -> Path:
    from processes import WORKER_SCRIPT

    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    return script


@pytest.fixture
def workers() -> Iterator[list[Any]]:
    """Worker processes a test starts; those still running at teardown are killed."""
    started: list[Any] = []
    yield started
    for worker in started:
        if worker.proc.poll() is None:
            worker.kill()
