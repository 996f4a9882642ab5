"""push_batch: queue many jobs in one call; the queue runs at most `concurrency` at a time."""

from __future__ import annotations

import threading
import time

from rnode_queue import Job, QueueManager

N = 10_000


def main() -> None:
    with QueueManager() as qm:
        images = qm.create_queue("thumbnails", concurrency=4)
        lock = threading.Lock()
        running = peak = 0

        @images.process
        def make_thumbnail(job: Job) -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.0001)  # the work
            with lock:
                running -= 1

        items = [
            {"data": {"image": f"img{n}.png"}, "options": {"priority": "high" if n < 10 else "low"}}
            for n in range(N)
        ]
        started = time.perf_counter()
        ids = images.push_batch(items)  # all or nothing
        assert qm.join("thumbnails", timeout=30)
        elapsed = time.perf_counter() - started

        rate = N / elapsed
        print(f"{len(ids)} jobs in {elapsed:.2f} s ({rate:,.0f} jobs/s), peak concurrency {peak}")
        assert len(ids) == N and images.get_stats()["completed"] == N
        assert 1 <= peak <= 4


if __name__ == "__main__":
    main()
