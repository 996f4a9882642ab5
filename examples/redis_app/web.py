"""The web side: pushes jobs and reads their results; it runs no handlers itself."""

from __future__ import annotations

from tasks import qm

ids = qm.push_batch("thumbnails", [{"data": {"image": f"photo-{n}.jpg"}} for n in range(3)])
urgent = qm.push("thumbnails", {"image": "avatar.jpg"}, priority="critical")
for job_id in [urgent, *ids]:
    job = qm.wait_for(job_id, timeout=30)  # whichever worker process runs it
    assert job is not None and job.status == "completed", job
    print(job.data["image"], "->", job.result["thumbnail"])
print(qm.get_queue("thumbnails").get_stats())
qm.close()
