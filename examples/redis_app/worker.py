"""The worker side: importing this module registers the handlers.

rnode-queue worker worker:qm     # runs until Ctrl-C / SIGTERM, then finishes running jobs
"""

from __future__ import annotations

from rnode_queue import Job
from tasks import qm, thumbnails

__all__ = ["qm"]


@thumbnails.process
def make_thumbnail(job: Job) -> dict[str, str]:
    # A real handler would resize job.data["image"]; a job that raises is retried.
    return {"thumbnail": f"{job.data['image']}.thumb.png"}


# Runs once per tick however many worker processes declare it.
qm.schedule("thumbnails", {"image": "nightly-report.png"}, "0 3 * * *", name="nightly")
