"""Type stubs for the compiled engine, ``rnode_queue._core`` (built from ``src/``).

The public API lives in :mod:`rnode_queue`; this module is the PyO3 boundary it wraps.
"""

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, final

__version__: str

Seconds = float | timedelta
Priority = Literal["low", "normal", "high", "critical"]
JobStatus = Literal["waiting", "delayed", "active", "completed", "failed"]

class QueueError(Exception):
    """Base class of every error rnode-queue raises."""

class InvalidJobError(QueueError, ValueError):
    """Job data or options are invalid: not JSON, a bad priority, a negative delay, ..."""

class JobTooLargeError(InvalidJobError):
    """The serialised job is larger than the manager's ``max_job_bytes``."""

class InvalidQueueNameError(QueueError, ValueError):
    """A queue name is empty, longer than 200 characters or contains control characters."""

class InvalidCronError(QueueError, ValueError):
    """A cron expression could not be parsed, or never fires."""

class ConfigError(QueueError, ValueError):
    """A setting is invalid: of the manager, a queue, or a call."""

class BackendError(QueueError):
    """The storage backend is unreachable or failed."""

class PushOutcomeUnknownError(BackendError):
    """A push got no answer, even when tried again: its jobs may or may not be stored."""

    job_ids: list[str]

class JobNotFoundError(QueueError, LookupError):
    """No job has this id (it never existed, or is no longer retained)."""

class QueueClosedError(QueueError):
    """The manager was closed."""

@final
class Job:
    """A job as stored by the engine: an immutable snapshot."""

    @property
    def id(self) -> str: ...
    @property
    def queue(self) -> str: ...
    @property
    def data(self) -> Any: ...
    @property
    def priority(self) -> Priority: ...
    @property
    def status(self) -> JobStatus: ...
    @property
    def attempts(self) -> int: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def scheduled_at(self) -> datetime | None: ...
    @property
    def started_at(self) -> datetime | None: ...
    @property
    def completed_at(self) -> datetime | None: ...
    @property
    def failed_at(self) -> datetime | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def traceback(self) -> str | None: ...
    @property
    def result(self) -> Any: ...
    @property
    def tags(self) -> list[str]: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def schedule_id(self) -> str | None: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Stats:
    """Manager-wide counters (since the manager was created)."""

    @property
    def jobs_processed(self) -> int: ...
    @property
    def jobs_failed(self) -> int: ...
    @property
    def jobs_retried(self) -> int: ...
    @property
    def active_workers(self) -> int: ...
    @property
    def queue_sizes(self) -> dict[str, int]: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class Completion:
    """Given with each job to an async runner; exactly one of its methods must be called once."""

    def success(self, result: Any) -> None: ...
    def failure(self, error: BaseException) -> None: ...
    def timed_out(self) -> None: ...

AsyncSubmit = Callable[[list[tuple[Job, float, Completion]]], None]

@final
class Engine:
    def __init__(
        self,
        backend: str | None = None,
        *,
        path: str | None = None,
        url: str | None = None,
        prefix: str = "rnode:queue",
        max_job_bytes: int | None = None,
        lease: Seconds | None = None,
        fsync: str = "everysec",
        concurrency: int | None = None,
        max_retries: int | None = None,
        timeout: Seconds | None = None,
        retry_delay: Seconds | None = None,
        backoff: str | Callable[[int, str], Seconds] | None = None,
        ttl: Seconds | None = None,
        keep_completed: int | None = None,
        keep_failed: int | None = None,
    ) -> None: ...
    @property
    def backend(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    def create_queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        retry_delay: Seconds | None = None,
        max_retries: int | None = None,
        timeout: Seconds | None = None,
        backoff: str | Callable[[int, str], Seconds] | None = None,
        custom_delays: Sequence[Seconds] | None = None,
        backoff_cap: Seconds | None = None,
        jitter: float | None = None,
        ttl: Seconds | None = None,
        keep_completed: int | None = None,
        keep_failed: int | None = None,
    ) -> None: ...
    def ensure_queue(self, name: str, *, later: bool = False) -> None: ...
    def queue_names(self) -> list[str]: ...
    def queue_config(self, name: str) -> dict[str, Any]: ...
    def push(
        self,
        queue: str,
        data: Any,
        *,
        priority: str | int | None = None,
        delay: Seconds | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
    ) -> str: ...
    def queue_push(
        self,
        queue: str,
        data: Any,
        *,
        priority: str | int | None = None,
        delay: Seconds | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
    ) -> str: ...
    def push_batch(self, queue: str, items: Sequence[Mapping[str, Any]]) -> list[str]: ...
    def schedule(
        self,
        queue: str,
        data: Any,
        cron: str,
        *,
        name: str | None = None,
        priority: str | int | None = None,
        attempts: int | None = None,
        timeout: Seconds | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str: ...
    def unschedule(self, schedule_id: str) -> bool: ...
    def list_schedules(self) -> list[dict[str, Any]]: ...
    def get_stats(self) -> Stats: ...
    def get_job(self, job_id: str) -> Job | None: ...
    def get_jobs(
        self, queue: str, status: str | None = None, limit: int | None = None
    ) -> list[Job]: ...
    def retry_job(self, job_id: str) -> bool: ...
    def pause_queue(self, name: str) -> None: ...
    def resume_queue(self, name: str) -> None: ...
    def clear_queue(self, name: str) -> int: ...
    def delete_queue(self, name: str) -> bool: ...
    def queue_stats(self, name: str) -> dict[str, int]: ...
    def process(
        self,
        queue: str,
        handler: Callable[[Job], Any],
        *,
        concurrency: int | None = None,
        async_submit: AsyncSubmit | None = None,
        later: bool = False,
    ) -> None: ...
    def wait_for_job(self, job_id: str, timeout: Seconds | None = None) -> Job | None: ...
    def join(self, queue: str | None = None, timeout: Seconds | None = None) -> bool: ...
    def check_close_timeout(self, timeout: Seconds) -> float: ...
    def close(self, timeout: Seconds | None = None) -> bool: ...
    def close_report(
        self, timeout: Seconds | None = None
    ) -> tuple[bool, list[tuple[str, str]]]: ...
    def _before_fork(self) -> None: ...
    def _after_fork(self, in_child: bool) -> None: ...
