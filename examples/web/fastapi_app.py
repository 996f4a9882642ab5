"""FastAPI: a response's `queueJob` is pushed by QueueMiddleware; a dependency gives a queue.

Serve it with `uvicorn fastapi_app:app`; `python fastapi_app.py` calls it through FastAPI's
TestClient and prints what a client sees.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel
from rnode_queue import AsyncQueue, AsyncQueueManager, Job
from rnode_queue.middleware import QueueMiddleware, queue_dependency

aqm = AsyncQueueManager()  # memory; AsyncQueueManager(url="redis://...") shares the jobs


@aqm.process("emails")
def send_welcome(job: Job) -> str:
    return f"welcome mail sent to {job.data['to']}"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await aqm.close()


app = FastAPI(lifespan=lifespan)
# Every JSON response with a "queueJob" member: its value is pushed to "emails" as a high
# priority job, and the member is replaced by "queueJobId".
app.add_middleware(QueueMiddleware, manager=aqm, queue="emails", priority="high", tags=["signup"])


class Signup(BaseModel):
    email: str


@app.post("/signup")
async def signup(user: Signup) -> dict[str, Any]:
    return {"user": user.email, "queueJob": {"to": user.email}}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, wait: float = 0) -> dict[str, Any]:
    """What a client polls with the queueJobId (``wait`` seconds at most for it to finish)."""
    job = await aqm.get_job(job_id)
    if job is None:
        raise HTTPException(404, "no such job")
    if wait > 0:
        job = await aqm.wait_for(job_id, timeout=wait) or job
    return {"status": job.status, "priority": job.priority, "result": job.result}


@app.post("/reports")
async def request_report(
    reports: Annotated[AsyncQueue, Depends(queue_dependency(aqm, "reports"))],
) -> dict[str, str]:
    """Pushes through the dependency's AsyncQueue (a coroutine: the loop never waits)."""
    return {"report": await reports.push({"kind": "monthly"})}


if __name__ == "__main__":
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        reply = client.post("/signup", json={"email": "ann@example.com"}).json()
        print("signup response keys:", sorted(reply))
        job = client.get(f"/jobs/{reply['queueJobId']}", params={"wait": 5}).json()
        print("job:", job["status"], job["priority"], job["result"])
        report_id = client.post("/reports").json()["report"]
        print("report job:", client.get(f"/jobs/{report_id}").json()["status"])
