"""The manager across the life of a process: fork, Ctrl-C, interpreter exit, close, SIGTERM.

Fork tests fork the test process itself (the child always ends with ``os._exit``) and get the
child's observations back through a pipe as JSON. Signal and exit tests run a script in a
subprocess (``sys.executable -c``) and synchronise on the lines it prints.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import QUIET_WINDOW, WAIT
from rnode_queue import Job, QueueClosedError, QueueManager

if TYPE_CHECKING:
    from conftest import ManagerPool

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and POSIX signals"),
    # Python >= 3.12 warns about fork() in a process with threads; forking one is the point.
    pytest.mark.filterwarnings(
        "ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning"
    ),
]

#: How long a script has between the signal (or its last line) and the end of its process.
PROMPT_EXIT = 5.0
#: A script that leaves a stuck job behind: atexit gives it ATEXIT_CLOSE_TIMEOUT (2 s).
STUCK_EXIT = 10.0


# -- fork ---------------------------------------------------------------------------------------


def _handler(kind: str) -> Callable[[Job], Any]:
    """A handler whose result is the pid of the process that ran it."""

    def sync_handler(job: Job) -> int:
        return os.getpid()

    async def async_handler(job: Job) -> int:
        return os.getpid()

    return sync_handler if kind == "sync" else async_handler


def _in_child(body: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """Run ``body`` in a forked child; returns what it reported and the child's pid.

    The child always ends with ``os._exit`` (never pytest's teardown), and reports either its
    observations or its traceback. Every wait is bounded; a stuck child is killed.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            try:
                message = {"report": body()}
            except BaseException:
                message = {"error": traceback.format_exc()}
            data = json.dumps(message, default=repr).encode()
            while data:
                data = data[os.write(write_end, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        chunks: list[bytes] = []
        deadline = time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(remaining, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child reported nothing within {WAIT}s (killed)")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    code = os.waitstatus_to_exitcode(_wait_pid(pid, WAIT))
    if code < 0:
        name = signal.Signals(-code).name
        pytest.fail(f"the forked child died of {name} (reported: {chunks!r})", pytrace=False)
    message = json.loads(b"".join(chunks) or b"{}")
    if "error" in message:
        pytest.fail(f"the forked child raised:\n{message['error']}", pytrace=False)
    assert code == 0, f"the forked child exited with {code}"
    assert "report" in message, f"the child wrote no report: {message!r}"
    return message["report"], pid


def _wait_pid(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not exit within {timeout}s (killed)")
        time.sleep(0.005)


def _job_summary(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    return {
        "status": job.status,
        "result": job.result,
        "error": job.error,
        "max_attempts": job.max_attempts,
        "timeout": job.timeout,
    }


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fork_child_gets_a_fresh_engine_with_the_same_settings(
    manager_pool: ManagerPool, kind: str
) -> None:
    qm = manager_pool.open(concurrency=2, max_retries=4, timeout=40.0, retry_delay=0.5)
    qm.create_queue(
        "forked", concurrency=3, max_retries=6, retry_delay=0.01, backoff="fixed", timeout=12.5
    )
    qm.get_queue("forked").process(_handler(kind))
    done_id = qm.push("forked", {"from": "parent"})
    done = qm.wait_for(done_id, timeout=WAIT)
    assert done is not None and done.status == "completed", _job_summary(done)
    assert done.result == os.getpid()
    waiting_id = qm.push("pending", "no handler here")
    delayed_id = qm.push("pending", "later", delay=60)
    forked_config = qm._engine.queue_config("forked")
    parent_pid = os.getpid()

    def child() -> dict[str, Any]:
        report: dict[str, Any] = {"pid": os.getpid(), "closed": qm.closed}
        report["forked_config"] = qm._engine.queue_config("forked")
        report["queue_names"] = sorted(qm._engine.queue_names())
        report["parent_jobs"] = [qm.get_job(i) is None for i in (done_id, waiting_id, delayed_id)]
        stats = qm.get_stats()
        report["stats"] = {
            "jobs_processed": stats.jobs_processed,
            "active_workers": stats.active_workers,
            "queue_sizes": stats.queue_sizes,
        }
        job_id = qm.push("forked", {"from": "child"})
        # No worker of the parent survives the fork: the job stays waiting.
        report["joined_without_handler"] = qm.join("forked", timeout=QUIET_WINDOW)
        report["before_handler"] = _job_summary(qm.get_job(job_id))
        qm.get_queue("forked").process(_handler(kind))
        report["after_handler"] = _job_summary(qm.wait_for(job_id, timeout=WAIT))
        qm.get_queue("made-in-child")
        report["new_queue_config"] = qm._engine.queue_config("made-in-child")
        report["closed_in_time"] = qm.close(timeout=5)
        return report

    report, child_pid = _in_child(child)

    assert report["pid"] == child_pid != parent_pid
    assert report["closed"] is False
    assert report["forked_config"] == forked_config
    assert report["queue_names"] == ["forked", "pending"]
    assert report["parent_jobs"] == [True, True, True], "the child sees the parent's jobs"
    assert report["stats"] == {
        "jobs_processed": 0,
        "active_workers": 0,
        "queue_sizes": {"forked": 0, "pending": 0},
    }
    assert report["joined_without_handler"] is False, "a job ran in the child without a handler"
    assert report["before_handler"]["status"] == "waiting"
    assert report["before_handler"]["max_attempts"] == 7  # the queue's max_retries=6, plus one
    assert report["before_handler"]["timeout"] == 12.5
    assert report["after_handler"]["status"] == "completed", report["after_handler"]
    assert report["after_handler"]["result"] == child_pid
    assert report["closed_in_time"] is True

    # The parent carries on with its own engine, jobs and workers.
    assert qm.closed is False
    after_id = qm.push("forked", {"from": "parent, after the fork"})
    after = qm.wait_for(after_id, timeout=WAIT)
    assert after is not None and after.status == "completed", _job_summary(after)
    assert after.result == parent_pid
    waiting = qm.get_job(waiting_id)
    delayed = qm.get_job(delayed_id)
    assert waiting is not None and waiting.status == "waiting"
    assert delayed is not None and delayed.status == "delayed"
    assert qm._engine.queue_config("forked") == forked_config
    # A queue made now has the manager's defaults, as the child's new queue had.
    qm.get_queue("made-in-parent")
    parent_new_config = qm._engine.queue_config("made-in-parent")
    assert report["new_queue_config"] == parent_new_config
    assert parent_new_config["max_retries"] == 4
    assert parent_new_config["concurrency"] == 2
    assert parent_new_config["timeout"] == 40.0


def test_fork_while_a_job_runs_in_the_parent(manager_pool: ManagerPool) -> None:
    qm = manager_pool.open()
    started = threading.Event()
    release = threading.Event()

    def blocking(job: Job) -> int:
        started.set()
        release.wait(WAIT)
        return os.getpid()

    qm.get_queue("busy").process(blocking)
    busy_id = qm.push("busy", 1)
    try:
        assert started.wait(WAIT)

        def child() -> dict[str, Any]:
            report: dict[str, Any] = {"busy_job": qm.get_job(busy_id) is None}
            report["busy_stats"] = qm.get_queue("busy").get_stats()
            qm.get_queue("busy").process(_handler("sync"))
            job_id = qm.push("busy", 2)
            report["child_job"] = _job_summary(qm.wait_for(job_id, timeout=WAIT))
            report["closed_in_time"] = qm.close(timeout=5)
            return report

        report, child_pid = _in_child(child)
    finally:
        release.set()

    assert report["busy_job"] is True, "the child sees the job running in the parent"
    assert report["busy_stats"]["size"] == 0
    assert report["busy_stats"]["processing"] == 0
    assert report["child_job"]["status"] == "completed", report["child_job"]
    assert report["child_job"]["result"] == child_pid
    assert report["closed_in_time"] is True
    busy = qm.wait_for(busy_id, timeout=WAIT)
    assert busy is not None and busy.status == "completed", _job_summary(busy)
    assert busy.result == os.getpid()


def _multiprocessing_target(qm: QueueManager, results: Any) -> None:
    try:
        q = qm.get_queue("in-process-child")
        q.process(lambda job: {"pid": os.getpid(), "data": job.data})
        job = qm.wait_for(q.push({"n": 1}), timeout=WAIT)
        summary = None if job is None else {"status": job.status, "result": job.result}
        results.put({"pid": os.getpid(), "job": summary, "closed": qm.close(timeout=5)})
    except BaseException:
        results.put({"error": traceback.format_exc()})


def test_multiprocessing_fork_child_runs_its_own_queue(manager_pool: ManagerPool) -> None:
    qm = manager_pool.open()
    qm.get_queue("parent-queue").process(_handler("sync"))
    first = qm.wait_for(qm.push("parent-queue", 1), timeout=WAIT)
    assert first is not None and first.result == os.getpid()

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=_multiprocessing_target, args=(qm, results))
    process.start()
    try:
        try:
            message = results.get(timeout=WAIT)
        except queue.Empty:
            pytest.fail(f"the multiprocessing child reported nothing within {WAIT}s")
        process.join(WAIT)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(WAIT)
        results.close()
        results.join_thread()

    assert "error" not in message, message.get("error")
    assert message["pid"] == process.pid != os.getpid()
    assert message["job"] == {
        "status": "completed",
        "result": {"pid": process.pid, "data": {"n": 1}},
    }
    assert message["closed"] is True
    again = qm.wait_for(qm.push("parent-queue", 2), timeout=WAIT)
    assert again is not None and again.status == "completed" and again.result == os.getpid()
    assert qm._engine.queue_names() == ["parent-queue"], "the child's queue leaked into the parent"


# -- scripts in a subprocess ------------------------------------------------------------------

PRELUDE = """\
import signal
import sys
import threading

from rnode_queue import QueueClosedError, QueueManager

# Python keeps SIGINT ignored when it starts ignored (a background job of a non-interactive
# shell): give the script Ctrl-C as an interactive program has it.
signal.signal(signal.SIGINT, signal.default_int_handler)


def announce_call(name, line):
    # Print `line` from this thread just as it calls the engine method `name`, so that a
    # signal sent on that line arrives while the engine waits, not before.
    def hook(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", None) == name:
            sys.setprofile(None)
            print(line, flush=True)

    sys.setprofile(hook)
"""


class Script:
    """A Python script in a subprocess: await its stdout lines, then how it ended."""

    def __init__(self, body: str, cwd: Path) -> None:
        source = PRELUDE + textwrap.dedent(body)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self._stderr.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def expect(self, line: str, timeout: float = WAIT) -> None:
        """Wait until the script prints ``line``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                self.kill()
                pytest.fail(f"the script did not print {line!r} within {timeout}s\n{self.output()}")
            if got is None:
                self.finish(WAIT)
                pytest.fail(f"the script ended before printing {line!r}\n{self.output()}")
            self.stdout.append(got)
            if got == line:
                return

    def finish(self, timeout: float) -> int:
        """The exit code, once the process ended (it fails the test after ``timeout``)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the script was still running after {timeout}s (killed)\n{self.output()}")
        for reader in self._readers:
            reader.join(WAIT)
        while True:
            try:
                got = self._lines.get_nowait()
            except queue.Empty:
                break
            if got is not None:
                self.stdout.append(got)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)

    def output(self) -> str:
        return f"--- stdout\n{chr(10).join(self.stdout)}\n--- stderr\n{self.stderr}"


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Callable[[str], Script]]:
    """``script(body)``: start ``body`` (after PRELUDE) in a subprocess; killed at teardown."""
    started: list[Script] = []

    def start(body: str) -> Script:
        started.append(Script(body, tmp_path))
        return started[-1]

    yield start
    for each in started:
        each.kill()
        for stream in (each.proc.stdout, each.proc.stderr):
            if stream is not None:
                stream.close()


WAIT_CALLS = {
    "join": ("join", "qm.join()"),
    "join-queue": ("join", "qm.join('idle')"),
    "wait_for": ("wait_for_job", "qm.wait_for(job_id)"),
}


@pytest.mark.parametrize("call", list(WAIT_CALLS))
def test_ctrl_c_interrupts_a_wait_without_timeout(
    script: Callable[[str], Script], call: str
) -> None:
    method, expression = WAIT_CALLS[call]
    proc = script(
        f"""
        qm = QueueManager()
        job_id = qm.push("idle", 1)  # no handler: the wait never ends by itself
        announce_call({method!r}, "waiting")
        {expression}
        print("the wait returned", flush=True)
        """
    )
    proc.expect("waiting")
    begin = time.monotonic()
    proc.proc.send_signal(signal.SIGINT)
    code = proc.finish(PROMPT_EXIT)
    elapsed = time.monotonic() - begin
    assert code != 0, proc.output()
    assert "KeyboardInterrupt" in proc.stderr, proc.output()
    assert "the wait returned" not in proc.stdout
    assert elapsed < PROMPT_EXIT


def test_exit_with_a_stuck_job_ends_the_process(script: Callable[[str], Script]) -> None:
    proc = script(
        """
        qm = QueueManager()
        running = threading.Event()
        never = threading.Event()

        def stuck(job):
            running.set()
            never.wait()

        qm.get_queue("stuck").process(stuck)
        qm.push("stuck", 1)
        if not running.wait(10):
            raise SystemExit("the job did not start")
        print("running", flush=True)
        """
    )
    proc.expect("running")
    begin = time.monotonic()
    code = proc.finish(STUCK_EXIT)
    elapsed = time.monotonic() - begin
    assert code == 0, proc.output()
    assert elapsed < STUCK_EXIT
    assert "Fatal Python error" not in proc.stderr, proc.output()
    assert "panicked" not in proc.stderr, proc.output()


@pytest.mark.parametrize("exit_code", [0, 3])
def test_exit_while_a_sync_handler_polls_is_clean(
    script: Callable[[str], Script], exit_code: int
) -> None:
    """A handler that wakes up again and again (here every 10 ms) takes the GIL back while the
    interpreter finalizes. Before the exit guard that thread was ended with a forced unwind
    through Rust frames: SIGABRT (exit code 134, 40 runs of 40), and the buffered output lost.
    Now it is abandoned: the process exits with the status it chose, its output whole."""
    for _ in range(3):
        proc = script(
            f"""
            import time

            qm = QueueManager()
            running = threading.Event()

            def polling(job):
                running.set()
                while True:
                    time.sleep(0.01)

            qm.get_queue("poll").process(polling)
            qm.push("poll", 1)
            if not running.wait(10):
                raise SystemExit("the job did not start")
            print("running", flush=True)
            print("last words")  # left in the buffer: written at exit, if exit is clean
            sys.exit({exit_code})
            """
        )
        proc.expect("running")
        code = proc.finish(STUCK_EXIT)
        assert code == exit_code, proc.output()
        assert "last words" in proc.stdout, proc.output()
        assert "Fatal Python error" not in proc.stderr, proc.output()


def test_worker_command_stopped_past_its_shutdown_timeout_exits_cleanly(tmp_path: Path) -> None:
    """SIGTERM with a handler still running past --shutdown-timeout: the worker says so and
    exits with status 1 (not SIGABRT), its last output whole."""
    (tmp_path / "pollapp.py").write_text(
        textwrap.dedent(
            """
            import time

            from rnode_queue import QueueManager

            qm = QueueManager()


            @qm.process("poll")
            def polling(job):
                print("running", flush=True)
                while True:
                    time.sleep(0.01)


            qm.push("poll", 1)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnode_queue", "worker", "pollapp:qm", "--shutdown-timeout", "0.5"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the worker logs on stderr, the handler prints on stdout
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + WAIT

        def ready() -> bool:
            # The job runs, and the worker has its signal handlers (its "ready:" line). The
            # two are written by different threads: they may share a line.
            text = "\n".join(lines)
            return "running" in text and "Ctrl-C or SIGTERM stops" in text

        while not ready() and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert ready(), lines
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=STUCK_EXIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
    assert proc.returncode == 1, (out, err)
    assert "jobs still running after 0.5 s are abandoned" in out, out
    assert "Fatal Python error" not in out, out


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_exit_with_an_unclosed_idle_manager_is_prompt(
    script: Callable[[str], Script], kind: str
) -> None:
    handler = "def" if kind == "sync" else "async def"
    proc = script(
        f"""
        qm = QueueManager()
        q = qm.get_queue("idle")

        @q.process
        {handler} handler(job):
            return job.data

        job = qm.wait_for(q.push(1), timeout=10)
        assert job is not None and job.status == "completed", job
        q.push("later", delay=3600)  # a timer armed, too
        qm.schedule("idle", "tick", "0 0 1 1 *")
        print("idle", flush=True)
        """
    )
    proc.expect("idle")
    begin = time.monotonic()
    code = proc.finish(PROMPT_EXIT)
    elapsed = time.monotonic() - begin
    assert code == 0, proc.output()
    assert elapsed < PROMPT_EXIT
    assert proc.stderr == "", proc.output()


def test_sigterm_handler_closing_the_manager_stops_a_worker_gracefully(
    script: Callable[[str], Script],
) -> None:
    proc = script(
        """
        import time

        qm = QueueManager()
        q = qm.create_queue("work", concurrency=1)

        def on_sigterm(signum, frame):
            print("closed", qm.close(timeout=5), flush=True)

        signal.signal(signal.SIGTERM, on_sigterm)

        @q.process
        def work(job):
            print("started", job.data, flush=True)
            time.sleep(0.3)  # the job's own work, under way when SIGTERM comes
            print("finished", job.data, flush=True)

        q.push(1)
        q.push(2)  # still waiting at SIGTERM: never started
        try:
            qm.join()
        except QueueClosedError:
            print("join ended: closed", flush=True)
        """
    )
    proc.expect("started 1")
    proc.proc.send_signal(signal.SIGTERM)
    proc.expect("finished 1")
    proc.expect("closed True")
    proc.expect("join ended: closed")
    code = proc.finish(PROMPT_EXIT)
    assert code == 0, proc.output()
    assert "started 2" not in proc.stdout, proc.output()


# -- close() wakes waiting threads ------------------------------------------------------------


@pytest.mark.parametrize("call", list(WAIT_CALLS))
def test_close_wakes_a_thread_waiting_without_timeout(manager_pool: ManagerPool, call: str) -> None:
    qm = manager_pool.open()
    job_id = qm.push("idle", 1)  # no handler: the wait never ends by itself
    waits: dict[str, Callable[[], Any]] = {
        "join": lambda: qm.join(),
        "join-queue": lambda: qm.join("idle"),
        "wait_for": lambda: qm.wait_for(job_id),
    }
    outcome: dict[str, Any] = {}
    ended = threading.Event()

    def waiter() -> None:
        try:
            outcome["returned"] = waits[call]()
        except BaseException as exc:
            outcome["raised"] = exc
        finally:
            ended.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert not ended.wait(QUIET_WINDOW), f"the wait ended by itself: {outcome}"
    begin = time.monotonic()
    assert qm.close(timeout=5) is True
    assert ended.wait(WAIT), "the waiting thread was not woken by close()"
    elapsed = time.monotonic() - begin
    thread.join(WAIT)
    assert isinstance(outcome.get("raised"), QueueClosedError), outcome
    assert elapsed < 1.0, f"the waiting thread ended {elapsed:.2f}s after close()"


def test_close_wakes_several_waiting_threads(manager_pool: ManagerPool) -> None:
    qm = manager_pool.open()
    job_id = qm.push("idle", 1)
    calls: list[Callable[[], Any]] = [
        lambda: qm.join(),
        lambda: qm.join("idle"),
        lambda: qm.wait_for(job_id),
        lambda: qm.wait_for(job_id),
    ]
    outcomes: list[Any] = [None] * len(calls)
    ended = [threading.Event() for _ in calls]

    def waiter(index: int) -> None:
        try:
            outcomes[index] = ("returned", calls[index]())
        except BaseException as exc:
            outcomes[index] = ("raised", exc)
        finally:
            ended[index].set()

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    assert not any(e.wait(QUIET_WINDOW / len(calls)) for e in ended), outcomes
    begin = time.monotonic()
    qm.close(timeout=5)
    for index, event in enumerate(ended):
        assert event.wait(WAIT), f"waiter {index} was not woken by close()"
    elapsed = time.monotonic() - begin
    for thread in threads:
        thread.join(WAIT)
    for kind, value in outcomes:
        assert kind == "raised" and isinstance(value, QueueClosedError), outcomes
    assert elapsed < 1.0, f"the waiting threads ended {elapsed:.2f}s after close()"
