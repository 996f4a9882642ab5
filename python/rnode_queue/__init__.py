"""rnode-queue: a job queue for Python with a Rust engine (memory, Redis and file backends).

>>> from rnode_queue import QueueManager
>>> with QueueManager() as qm:
...     q = qm.get_queue("emails")
...     @q.process
...     def send(job):
...         return f"sent to {job.data['to']}"
...     job_id = q.push({"to": "a@b.c"})
...     qm.wait_for(job_id, timeout=5).result
'sent to a@b.c'
"""

from __future__ import annotations

from ._async import AsyncQueue, AsyncQueueManager
from ._core import (
    BackendError,
    ConfigError,
    InvalidCronError,
    InvalidJobError,
    InvalidQueueNameError,
    Job,
    JobNotFoundError,
    JobTooLargeError,
    PushOutcomeUnknownError,
    QueueClosedError,
    QueueError,
    Stats,
    __version__,
)
from ._sync import Queue, QueueManager

__all__ = [
    "AsyncQueue",
    "AsyncQueueManager",
    "BackendError",
    "ConfigError",
    "InvalidCronError",
    "InvalidJobError",
    "InvalidQueueNameError",
    "Job",
    "JobNotFoundError",
    "JobTooLargeError",
    "PushOutcomeUnknownError",
    "Queue",
    "QueueClosedError",
    "QueueError",
    "QueueManager",
    "Stats",
    "__version__",
]
