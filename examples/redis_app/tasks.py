"""Shared by the web processes (which push) and the worker processes (which run the jobs).

One Redis holds the jobs; any number of processes on any number of hosts may push and work:

    REDIS_URL=redis://127.0.0.1:6379/0 rnode-queue worker worker:qm   # as many as you like
    REDIS_URL=redis://127.0.0.1:6379/0 python web.py                  # pushes, reads results
"""

from __future__ import annotations

from rnode_queue import QueueManager

# REDIS_URL names the server (required), REDIS_PREFIX the key prefix.
qm = QueueManager.from_env(backend="redis", lease=30.0)
thumbnails = qm.create_queue("thumbnails", concurrency=4, max_retries=2, timeout=60)
