"""Emails with retries: a handler that raises is run again after the queue's retry delay."""

from __future__ import annotations

from rnode_queue import Job, QueueManager


def main() -> None:
    with QueueManager() as qm:
        emails = qm.create_queue(
            "emails", concurrency=5, max_retries=3, retry_delay=0.1, backoff="fixed"
        )

        @emails.process
        def send_email(job: Job) -> str:
            # The "flaky" mail server refuses every first attempt.
            if job.data["to"].endswith("@flaky.example") and job.attempts == 1:
                raise ConnectionError("SMTP server busy, try again later")
            print(f"  sent {job.data['subject']!r} to {job.data['to']} (attempt {job.attempts})")
            return "sent"

        recipients = ["ann@example.com", "bob@flaky.example", "cy@example.com", "di@flaky.example"]
        ids = [
            emails.push({"to": to, "subject": "Welcome!"}, tags=["email"], metadata={"lang": "en"})
            for to in recipients
        ]
        assert qm.join("emails", timeout=10)

        for job_id in ids:
            job = qm.get_job(job_id)
            assert job is not None and job.status == "completed" and job.result == "sent"
            assert job.attempts == (2 if job.data["to"].endswith("@flaky.example") else 1)
        stats = qm.get_stats()
        print(f"processed={stats.jobs_processed} retried={stats.jobs_retried}")
        assert stats.jobs_retried == 2


if __name__ == "__main__":
    main()
