"""Async handlers and AsyncQueueManager: `async def` handlers overlap their waits."""

from __future__ import annotations

import asyncio
import time

from rnode_queue import AsyncQueueManager, Job


async def main() -> None:
    async with AsyncQueueManager() as aqm:
        pages = await aqm.create_queue("fetch", concurrency=20, timeout=1)

        running = peak = 0  # async handlers all run on one event loop thread: no lock needed

        @pages.process
        async def fetch(job: Job) -> dict[str, object]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(job.data.get("seconds", 0.1))  # e.g. an HTTP request
            finally:
                running -= 1
            return {"url": job.data["url"], "status": 200}

        started = time.perf_counter()
        ids = [await pages.push({"url": f"https://example.com/{n}"}) for n in range(50)]
        assert await aqm.join("fetch", timeout=10)
        elapsed = time.perf_counter() - started
        print(f"50 fetches of 0.1 s in {elapsed:.2f} s, up to {peak} at a time")
        assert 1 < peak <= 20
        first = await aqm.get_job(ids[0])
        assert first is not None and first.result == {"url": "https://example.com/0", "status": 200}

        # A handler running past its timeout is cancelled and the attempt fails.
        slow_id = await pages.push(
            {"url": "https://slow.example", "seconds": 10}, timeout=0.2, attempts=1
        )
        slow = await aqm.wait_for(slow_id, timeout=5)
        assert slow is not None and slow.status == "failed"
        assert slow.error is not None and "timed out" in slow.error
        print(f"slow page: {slow.error}")
        print("stats:", await pages.get_stats())


if __name__ == "__main__":
    asyncio.run(main())
