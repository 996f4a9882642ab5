"""Exponential backoff: each retry waits twice as long as the one before (capped at 1 hour)."""

from __future__ import annotations

import itertools
import time

from rnode_queue import Job, QueueManager


def main() -> None:
    with QueueManager() as qm:
        api = qm.create_queue("api-calls", max_retries=3, retry_delay=0.1, backoff="exponential")
        runs: list[float] = []

        @api.process
        def call_api(job: Job) -> str:
            runs.append(time.monotonic())
            if job.attempts < 4:  # the API is down for the first three attempts
                raise ConnectionError(f"503 Service Unavailable (attempt {job.attempts})")
            return "200 OK"

        job = qm.wait_for(api.push({"endpoint": "/charge"}), timeout=10)
        assert job is not None and job.status == "completed" and job.attempts == 4

        waits = [b - a for a, b in itertools.pairwise(runs)]
        print(
            f"{job.result} after {job.attempts} attempts; waits: {[round(w, 2) for w in waits]} s"
        )
        # retry_delay * 2**n: 0.1, 0.2, 0.4 s (a busy machine can only make them longer)
        assert all(
            wait >= nominal * 0.98 for wait, nominal in zip(waits, [0.1, 0.2, 0.4], strict=False)
        )

        # Out of attempts: the job is failed, keeps its error, and can be retried by hand.
        doomed = qm.wait_for(api.push({"endpoint": "/refund"}, attempts=1), timeout=10)
        assert doomed is not None and doomed.status == "failed"
        print(f"failed: {doomed.error}")
        assert doomed.error is not None and "503" in doomed.error
        assert qm.retry_job(doomed.id)


if __name__ == "__main__":
    main()
