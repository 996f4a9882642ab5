"""Cron schedules and schedule_at: jobs pushed on a cron tick, or once at a given time."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from rnode_queue import Job, QueueManager


def main() -> None:
    with QueueManager() as qm:
        ticks: list[datetime] = []
        two_ticks = threading.Event()

        @qm.process("heartbeat")
        def heartbeat(job: Job) -> None:
            assert job.scheduled_at is not None  # a cron job's scheduled_at is its tick
            print(f"  tick at {job.scheduled_at:%H:%M:%S}")
            ticks.append(job.scheduled_at)
            if len(ticks) == 2:
                two_ticks.set()

        @qm.process("reminders")
        def remind(job: Job) -> str:
            return f"reminded user {job.data['user']}"

        # Cron: 5 fields, or 6 with leading seconds (UTC). Declaring it again is a no-op.
        nightly = qm.schedule("maintenance", {"type": "daily"}, "0 2 * * *")
        every_second = qm.schedule("heartbeat", {"ping": True}, "*/1 * * * * *")
        assert qm.schedule("maintenance", {"type": "daily"}, "0 2 * * *") == nightly
        for schedule in qm.list_schedules():
            print(f"  schedule {schedule['cron']!r} -> {schedule['queue']}: {schedule['next_run']}")

        # schedule_at: an aware datetime (a naive one is read as UTC).
        when = datetime.now(timezone.utc) + timedelta(seconds=1)
        reminder_id = qm.schedule_at("reminders", {"user": 42}, when)

        assert two_ticks.wait(timeout=5), "the per-second schedule did not tick twice"
        assert qm.unschedule(every_second) and qm.unschedule(nightly)
        reminder = qm.wait_for(reminder_id, timeout=5)
        assert reminder is not None and reminder.status == "completed"
        assert reminder.started_at is not None and reminder.started_at >= when
        print(f"  {reminder.result} at {reminder.started_at:%H:%M:%S.%f} (due {when:%H:%M:%S.%f})")
        first, second = sorted(ticks)[:2]
        assert (second - first).total_seconds() == 1


if __name__ == "__main__":
    main()
