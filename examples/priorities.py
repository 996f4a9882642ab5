"""Priorities: critical and high jobs run before normal and low ones; FIFO within a priority."""

from __future__ import annotations

from rnode_queue import Job, QueueManager


def main() -> None:
    with QueueManager() as qm:
        reports = qm.create_queue("reports", concurrency=1)  # one at a time: the order shows
        ran: list[str] = []

        @reports.process
        def build_report(job: Job) -> None:
            ran.append(f"{job.priority}:{job.data['name']}")

        reports.pause()  # queue everything first, so that the order is only the priority's
        for name, priority in [
            ("weekly", "low"),
            ("daily", "normal"),
            ("outage", "critical"),
            ("monthly", "low"),
            ("invoice", "high"),
            ("audit", "normal"),
        ]:
            reports.push({"name": name}, priority=priority)
        reports.resume()
        assert qm.join("reports", timeout=10)

        print("ran in order:", ", ".join(ran))
        assert ran == [
            "critical:outage",
            "high:invoice",
            "normal:daily",
            "normal:audit",
            "low:weekly",
            "low:monthly",
        ]


if __name__ == "__main__":
    main()
