"""Starlette with a (sync) QueueManager: QueueMiddleware pushes in a worker thread.

Serve it with `uvicorn starlette_app:app`; `python starlette_app.py` calls it through
Starlette's TestClient and prints what a client sees.
"""

from __future__ import annotations

from rnode_queue import Job, QueueManager
from rnode_queue.middleware import QueueMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

qm = QueueManager()  # memory; QueueManager(url="redis://...") shares the jobs


@qm.process("thumbnails")
def make_thumbnail(job: Job) -> str:
    return f"thumbs/{job.data['image']}"


async def upload(request: Request) -> JSONResponse:
    image = request.path_params["image"]
    # The middleware pushes "queueJob" (with attempts=2) and answers with "queueJobId".
    return JSONResponse({"image": image, "queueJob": {"image": image}}, status_code=201)


async def health(request: Request) -> PlainTextResponse:
    # request.state.queue: the middleware's queue (a Queue here; its calls block, so off the
    # event loop in an async endpoint, or use an AsyncQueueManager).
    return PlainTextResponse(f"queue {request.state.queue.name} ok")


app = Starlette(
    routes=[Route("/images/{image}", upload, methods=["PUT"]), Route("/health", health)],
    middleware=[Middleware(QueueMiddleware, manager=qm, queue="thumbnails", attempts=2)],
)


if __name__ == "__main__":
    from starlette.testclient import TestClient

    with TestClient(app) as client:
        response = client.put("/images/cat.jpg")
        reply = response.json()
        print("upload:", response.status_code, sorted(reply))
        job = qm.wait_for(reply["queueJobId"], timeout=5)
        assert job is not None
        print("job:", job.status, job.max_attempts, job.result)
        print("health:", client.get("/health").text)
    qm.close()
