"""Flask: WSGIQueueMiddleware around `app.wsgi_app` pushes a response's `queueJob`.

Serve it with `flask --app flask_app run`; `python flask_app.py` calls it through Flask's
test client and prints what a client sees.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from rnode_queue import Job, QueueManager
from rnode_queue.middleware import WSGIQueueMiddleware

qm = QueueManager()  # memory; QueueManager(url="redis://...") shares the jobs


@qm.process("invoices")
def render_invoice(job: Job) -> str:
    return f"invoice-{job.data['order']}.pdf"


app = Flask(__name__)
app.wsgi_app = WSGIQueueMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, manager=qm, queue="invoices", priority="low", metadata={"source": "web"}
)


@app.post("/orders/<int:order>")
def place_order(order: int) -> dict[str, Any]:
    return {"order": order, "queueJob": {"order": order}}


@app.get("/invoices/pending")
def pending() -> dict[str, Any]:
    queue = request.environ["rnode_queue"]  # the middleware's Queue handle
    return {"queue": queue.name, "waiting": queue.get_stats()["waiting"]}


if __name__ == "__main__":
    client = app.test_client()
    reply = client.post("/orders/42").get_json()
    print("order:", sorted(reply))
    job = qm.wait_for(reply["queueJobId"], timeout=5)
    assert job is not None
    print("job:", job.status, job.priority, job.metadata, job.result)
    print("pending:", client.get("/invoices/pending").get_json())
    qm.close()
