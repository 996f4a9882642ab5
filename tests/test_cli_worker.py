"""``rnode-queue worker``, run as a real subprocess against a private redis-server or a file
store: its log lines, the overrides of the command line, --burst, signals and exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until
from redis_servers import RedisServer, free_port
from rnode_queue import QueueManager
from rnode_queue._cli.overrides import redact_url

#: Bound on anything expected to happen (a bug fails the test instead of hanging it).
WAIT = 20.0

# An app whose handlers the tests steer through the job's data. It reads its store from the
# environment (APP_URL / APP_PATH; APP_BACKEND picks one) so that a test can override it.
APP = textwrap.dedent(
    """
    import os, sys, time
    from rnode_queue import QueueManager

    backend = os.environ.get("APP_BACKEND", "redis")
    if backend == "redis":
        qm = QueueManager(url=os.environ["APP_URL"], prefix=os.environ.get("APP_PREFIX", "app"))
    elif backend == "file":
        qm = QueueManager(path=os.environ["APP_PATH"])
    else:
        qm = QueueManager()
    emails = qm.create_queue("emails", concurrency=2, max_retries=1, retry_delay=0.01)

    def say(line):  # one write per line: handlers run on several threads
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    @emails.process
    def send(job):
        if job.data.get("fail"):
            raise ValueError(f"cannot send {job.data['fail']}")
        if job.data.get("hang"):
            say(f"running {job.id}")
            while True:
                time.sleep(0.01)
        if job.data.get("until"):  # runs until the test creates that file
            say(f"running {job.id}")
            while not os.path.exists(job.data["until"]):
                time.sleep(0.01)
        return "sent"

    @qm.process("reports")
    def build(job):
        return "built"
    """
)


class WorkerCommand:
    """``python -m rnode_queue worker ...`` in ``cwd``; its stdout and stderr lines are
    collected as they come, and a test waits for a line rather than sleeping."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PREFIX")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rnode_queue", "worker", *args],
            cwd=cwd,
            env={**environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, stream: str = "stderr", timeout: float = WAIT) -> str:
        """The first line of ``stream`` containing ``text`` (fails if the process ended or
        the time ran out first)."""
        lines = self.stdout if stream == "stdout" else self.stderr

        def found() -> str | None:
            return next((line for line in lines if text in line), None)

        with self._changed:
            self._changed.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            )
        for reader in self._readers if self.proc.poll() is not None else ():
            reader.join(5)
        line = found()
        assert line is not None, f"no {text!r} in the worker's {stream}:\n{self.log()}"
        return line

    def finish(self, timeout: float = WAIT) -> int:
        """Waits for the exit; its status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"the worker did not exit:\n{self.log()}") from None
        for reader in self._readers:
            reader.join(5)
        return code

    def log(self) -> str:
        return "\n".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


@pytest.fixture
def started() -> Iterator[list[WorkerCommand]]:
    """Worker commands a test starts; those still running at teardown are killed."""
    commands: list[WorkerCommand] = []
    yield commands
    for command in commands:
        command.kill()


@pytest.fixture
def run_worker(app_dir: Path, started: list[WorkerCommand]) -> Callable[..., WorkerCommand]:
    def run(*args: str, env: dict[str, str] | None = None) -> WorkerCommand:
        command = WorkerCommand(app_dir, *args, env=env)
        started.append(command)
        return command

    return run


@pytest.fixture
def prefix() -> str:
    return f"rnq-cli:{uuid.uuid4().hex}"


@pytest.fixture
def client(redis_server: str, prefix: str) -> Iterator[QueueManager]:
    """A manager on the test's redis prefix, to push and to read what the worker did."""
    qm = QueueManager(url=redis_server, prefix=prefix)
    yield qm
    qm.close(timeout=5)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server whose user ``ops`` needs a password; its URL carries it."""
    server = RedisServer(
        tmp_path_factory.mktemp("acl-redis"),
        free_port(),
        "--appendonly",
        "no",
        "--user",
        "ops",
        "on",
        ">s3cret-pw",
        "~*",
        "&*",
        "+@all",
    )
    server.start()
    yield f"redis://ops:s3cret-pw@127.0.0.1:{server.port}/0"
    server.stop()


def wait_done(qm: QueueManager, job_ids: list[str]) -> list[str]:
    statuses = []
    for job_id in job_ids:
        job = qm.wait_for(job_id, timeout=WAIT)
        assert job is not None, job_id
        statuses.append(job.status)
    return statuses


# -- the start line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://ops:s3cret@host:6379/0", "redis://ops:***@host:6379/0"),
        ("redis://:s3cret@host/2", "redis://:***@host/2"),
        ("rediss://s3cret@host:6380/#insecure", "rediss://***@host:6380/#insecure"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://a:p1@n1:1,redis://a:p2@n2:2", "redis://a:***@n1:1,redis://a:***@n2:2"),
        ("redis+unix:///run/r.sock?db=0&pass=s3cret", "redis+unix:///run/r.sock?db=0&pass=***"),
        ("unix:///run/r.sock?password=s3cret&db=1", "unix:///run/r.sock?password=***&db=1"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_start_line_names_the_store_without_its_password(
    run_worker: Callable[..., WorkerCommand], redis_server: str, password_redis: str, prefix: str
) -> None:
    """--url and --prefix replace what the app wrote; the URL is logged with its password
    hidden, and the worker really works on that store."""
    with QueueManager(url=password_redis, prefix=prefix) as pusher:
        job_id = pusher.push("emails", {"to": "a"})
        worker = run_worker(
            "app:qm", "--url", password_redis, "--prefix", prefix, "--burst",
            env={"APP_URL": redis_server},
        )  # fmt: skip
        assert worker.finish() == 0, worker.log()
        assert wait_done(pusher, [job_id]) == ["completed"]
    log = worker.log()
    port = password_redis.rsplit(":", 1)[1]
    assert f"backend: redis redis://ops:***@127.0.0.1:{port} prefix {prefix}" in log, log
    assert "s3cret" not in log + "\n".join(worker.stdout)
    handlers = worker.wait_for("handlers found:")
    assert "emails -> app.send (concurrency 2)" in handlers, handlers
    assert "reports -> app.build (concurrency 5)" in handlers, handlers


# -- running jobs ------------------------------------------------------------------------------


def test_burst_runs_the_jobs_logs_failures_and_exits_0(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    """--burst exits 0 once the queues are idle; a failed run is a WARNING with its traceback
    while it will be retried, an ERROR when no attempt is left."""
    ids = [client.push("emails", {"n": n}) for n in range(5)]
    # Pushed before any process declared the queue: its attempts are given here.
    ids.append(client.push("emails", {"fail": "x@y"}, attempts=2))
    ids.append(client.push("reports", {}))
    worker = run_worker("app:qm", "--burst", env={"APP_URL": redis_server, "APP_PREFIX": prefix})
    assert worker.finish() == 0, worker.log()
    assert wait_done(client, ids) == ["completed"] * 5 + ["failed", "completed"]
    log = worker.log()
    retried = worker.wait_for(" WARNING rnode_queue: ")
    assert "ValueError: cannot send x@y" in retried, log
    final = worker.wait_for(" ERROR rnode_queue: ")
    assert "ValueError: cannot send x@y" in final, log
    assert log.count("Traceback (most recent call last):") == 2, log
    assert 'raise ValueError(f"cannot send' in log, log
    assert "burst: the queues are idle" in log, log
    assert "stopped: every running job finished" in log, log


def test_json_log_format_on_a_file_store(
    run_worker: Callable[..., WorkerCommand], tmp_path: Path
) -> None:
    """--log-format json: every stderr line is a JSON object; --path replaces the app's
    directory; --log-jobs logs each completed job."""
    store = tmp_path / "store"
    with QueueManager(path=store) as pusher:
        ids = [pusher.push("emails", {"n": n}) for n in range(3)]
        ids.append(pusher.push("emails", {"fail": "z"}, attempts=2))
    worker = run_worker(
        "app:qm", "--path", str(store), "--burst", "--log-format", "json", "--log-jobs",
        env={"APP_BACKEND": "file", "APP_PATH": str(tmp_path / "not-this-one")},
    )  # fmt: skip
    assert worker.finish() == 0, worker.log()
    records = [json.loads(line) for line in worker.stderr]
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["time"].endswith("Z"), record
    messages = [r["message"] for r in records]
    assert any(m == f"backend: file {store}" for m in messages), messages
    completed = [r for r in records if r["level"] == "INFO" and " completed " in r["message"]]
    assert len(completed) == 3, messages
    failures = [r for r in records if r["level"] in ("WARNING", "ERROR")]
    assert [r["level"] for r in failures] == ["WARNING", "ERROR"], failures
    for failure in failures:
        assert "ValueError: cannot send z" in failure["message"], failure
        assert failure["traceback"].startswith("Traceback (most recent call last):"), failure
    assert not (tmp_path / "not-this-one").exists()
    with QueueManager(path=store) as reader:
        assert wait_done(reader, ids) == ["completed"] * 3 + ["failed"]


def test_queues_runs_only_the_named_queues(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    report = client.push("reports", {})
    email = client.push("emails", {"n": 1})
    worker = run_worker(
        "app:qm", "--queues", "reports", "--burst",
        env={"APP_URL": redis_server, "APP_PREFIX": prefix},
    )  # fmt: skip
    assert worker.finish() == 0, worker.log()
    assert wait_done(client, [report]) == ["completed"]
    email_job = client.get_job(email)
    assert email_job is not None and email_job.status == "waiting"
    assert "handlers found: reports -> app.build" in worker.log()
    assert "not started (not in --queues): emails -> app.send" in worker.log()


def test_concurrency_overrides_the_apps(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    """--concurrency N: every handler runs with N slots (the heartbeat says so too)."""
    worker = run_worker(
        "app:qm", "--concurrency", "3", env={"APP_URL": redis_server, "APP_PREFIX": prefix}
    )
    ready = worker.wait_for("handlers found:")
    assert "emails -> app.send (concurrency 3)" in ready, ready
    assert "reports -> app.build (concurrency 3)" in ready, ready
    worker.wait_for(" ready: ")

    def both_queues_listed() -> dict[str, Any] | None:
        # The heartbeat is written by the worker's timer thread, then renewed every few
        # seconds: it may list no queue, or the first one alone, at first.
        entries = client.get_workers()
        assert {entry["pid"] for entry in entries} <= {worker.proc.pid}, entries
        return entries[0] if entries and len(entries[0]["concurrency"]) == 2 else None

    entry = wait_until(both_queues_listed, what="the worker's heartbeat")
    assert entry["concurrency"] == {"emails": 3, "reports": 3}, entry
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.log()
    assert "stopping (SIGTERM)" in worker.log()


# -- signals -----------------------------------------------------------------------------------


def test_sigterm_lets_running_jobs_finish(
    run_worker: Callable[..., WorkerCommand],
    redis_server: str,
    client: QueueManager,
    prefix: str,
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    job_id = client.push("emails", {"until": str(release)})
    worker = run_worker("app:qm", env={"APP_URL": redis_server, "APP_PREFIX": prefix})
    worker.wait_for(f"running {job_id}", stream="stdout")
    worker.wait_for(" ready: ")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for("stopping (SIGTERM): waiting up to 30 s for the running jobs")
    release.touch()  # the job ends while the worker waits for it
    assert worker.finish() == 0, worker.log()
    assert wait_done(client, [job_id]) == ["completed"]
    assert "stopped: every running job finished" in worker.log()


def test_a_second_sigterm_hands_running_jobs_back_at_once(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    job_id = client.push("emails", {"hang": True})
    worker = run_worker(
        "app:qm", "--shutdown-timeout", "60", env={"APP_URL": redis_server, "APP_PREFIX": prefix}
    )
    worker.wait_for(f"running {job_id}", stream="stdout")
    worker.wait_for(" ready: ")
    worker.proc.send_signal(signal.SIGTERM)
    worker.wait_for("stopping (SIGTERM)")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.log()  # stopped as asked; the job is safe
    assert time.monotonic() - started < 10, "the second signal did not force the exit"
    line = worker.wait_for("forced stop: 1 running job(s) handed back")
    assert f"emails {job_id}" in line, line
    job = client.get_job(job_id)
    assert job is not None and job.status == "waiting", job  # to run again elsewhere


def test_an_app_with_its_own_sigterm_handler_still_stops_cleanly(tmp_path: Path) -> None:
    (tmp_path / "own.py").write_text(
        textwrap.dedent(
            """
            import signal
            from rnode_queue import QueueManager

            qm = QueueManager()
            qm.get_queue("q").process(lambda job: None)
            # What the README's "Ctrl-C, shutdown and exit" suggests to a script of its own.
            signal.signal(signal.SIGTERM, lambda signum, frame: qm.close(timeout=5))
            """
        )
    )
    worker = WorkerCommand(tmp_path, "own:qm")
    worker.wait_for(" ready: ")
    assert "the app set its own SIGTERM handler" in worker.log()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.finish() == 0, worker.log()
    assert "stopped: every running job finished" in worker.log()


# -- errors ------------------------------------------------------------------------------------


def run_to_exit(cwd: Path, *args: str, env: dict[str, str] | None = None) -> WorkerCommand:
    command = WorkerCommand(cwd, *args, env=env)
    command.finish()
    return command


def test_a_module_that_registers_no_handler_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty.py").write_text(
        "from rnode_queue import QueueManager\nqm = QueueManager()\n"
    )
    command = run_to_exit(tmp_path, "empty:qm")
    assert command.proc.returncode == 2
    assert command.stderr == [
        "rnode-queue worker: 'empty:qm' registers no handler, so there is nothing to run: "
        "register them when the module is imported (@qm.process('queue') or "
        "queue.process(handler))"
    ], command.log()


def test_an_import_error_is_one_line(tmp_path: Path) -> None:
    missing = run_to_exit(tmp_path, "no_such_module:qm")
    assert missing.proc.returncode == 2
    assert missing.stderr == [
        "rnode-queue worker: cannot import 'no_such_module': "
        "ModuleNotFoundError: No module named 'no_such_module'"
    ], missing.log()
    (tmp_path / "needs.py").write_text("import not_installed_dependency\n")
    needs = run_to_exit(tmp_path, "needs")  # the app is there; its install is broken
    assert needs.proc.returncode == 1
    assert needs.stderr == [
        "rnode-queue worker: cannot import 'needs': "
        "ModuleNotFoundError: No module named 'not_installed_dependency'"
    ], needs.log()
    (tmp_path / "broken.py").write_text("raise RuntimeError('no config')\n")
    broken = run_to_exit(tmp_path, "broken")
    assert broken.proc.returncode == 1
    assert broken.stderr == [
        "rnode-queue worker: cannot import 'broken': RuntimeError: no config"
    ], broken.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["app:nope"], "module 'app' has no attribute 'nope'"),
        (["app:os"], "app:os is a module, not a QueueManager or AsyncQueueManager"),
        (["app.py"], "APP is a module name, not a file: try 'app'"),
        (["app:qm", "--queues", "other"], "no handler of 'app:qm' is for --queues other"),
        (["app:qm", "--path", "/tmp/x"], "--path applies to file managers, and 'app:qm' has"),
        (["app:qm", "--url", "redis://h/0", "--path", "/x"], "give --url (redis) or --path"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    app_dir: Path, redis_server: str, args: list[str], message: str
) -> None:
    command = run_to_exit(app_dir, *args, env={"APP_URL": redis_server})
    assert command.proc.returncode == 2, command.log()
    [line] = command.stderr
    assert line.startswith(f"rnode-queue worker: {message}"), line


def test_a_memory_manager_gets_a_warning(
    run_worker: Callable[..., WorkerCommand],
) -> None:
    worker = run_worker("app", "--burst", env={"APP_BACKEND": "memory"})
    assert worker.finish() == 0, worker.log()
    warning = worker.wait_for(" WARNING rnode_queue.worker: ")
    assert "the memory backend keeps its jobs in this process" in warning, warning
    assert "no other process can push to it" in warning, warning


def test_help_documents_the_exit_statuses() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "rnode_queue", "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert shown.returncode == 0
    for option in ("--queues", "--concurrency", "--burst", "--log-format", "--metrics-port"):
        assert option in shown.stdout
    assert "exit status:" in shown.stdout
    for code in ("0  clean stop", "1  runtime error", "2  usage error"):
        assert code in shown.stdout, shown.stdout


def test_metrics_port_serves_the_queue_metrics(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    pytest.importorskip("prometheus_client")
    job_id = client.push("reports", {})
    port = free_port()
    worker = run_worker(
        "app:qm", "--metrics-port", str(port), env={"APP_URL": redis_server, "APP_PREFIX": prefix}
    )
    worker.wait_for(f"metrics: http://0.0.0.0:{port}/metrics")
    assert wait_done(client, [job_id]) == ["completed"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        body = response.read().decode()
    assert 'queue_jobs_processed_total{queue="reports"} 1.0' in body, body[-2000:]
    worker.proc.send_signal(signal.SIGINT)
    assert worker.finish() == 0, worker.log()
    assert "stopping (SIGINT)" in worker.log()


def test_metrics_port_without_prometheus_client_is_a_usage_error(app_dir: Path) -> None:
    blocker = app_dir / "blocker" / "prometheus_client"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    command = run_to_exit(
        app_dir, "app:qm", "--metrics-port", "9808", env={"PYTHONPATH": str(blocker.parent)}
    )
    assert command.proc.returncode == 2
    assert command.stderr == [
        "rnode-queue worker: --metrics-port needs prometheus_client: "
        "pip install 'rnode-queue[metrics]'"
    ], command.log()


def test_burst_warns_about_a_paused_queue(
    run_worker: Callable[..., WorkerCommand], redis_server: str, client: QueueManager, prefix: str
) -> None:
    """A paused queue's waiting jobs keep a --burst worker waiting: it says so."""
    client.create_queue("reports")
    client.pause_queue("reports")
    client.push("reports", {})
    worker = run_worker("app:qm", "--burst", env={"APP_URL": redis_server, "APP_PREFIX": prefix})
    warning = worker.wait_for("is paused with 1 waiting job(s)")
    assert "queue 'reports'" in warning, warning
    client.resume_queue("reports")
    assert worker.finish() == 0, worker.log()


TWO_MANAGERS = textwrap.dedent(
    """
    import sys
    from rnode_queue import QueueManager

    qm, other = QueueManager(), QueueManager()

    def say(line):  # one write per line: the two handlers run on two threads at once
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    @qm.process("mail")
    def mail(job):
        say("ran mail")

    @other.process("audit")
    def audit(job):
        say("ran audit")

    qm.push("mail", 1)
    other.push("audit", 1)
    """
)


@pytest.mark.parametrize(
    ("app", "ran"), [("two:qm", ["ran mail"]), ("two", ["ran audit", "ran mail"])]
)
def test_app_attribute_runs_that_manager_module_runs_them_all(
    tmp_path: Path, app: str, ran: list[str]
) -> None:
    (tmp_path / "two.py").write_text(TWO_MANAGERS)
    command = run_to_exit(tmp_path, app, "--burst")
    assert command.proc.returncode == 0, command.log()
    assert sorted(command.stdout) == ran
    if app == "two:qm":
        assert "not started (of another manager than 'two:qm'): audit -> two.audit" in command.log()
