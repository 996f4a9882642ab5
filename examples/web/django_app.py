"""Django in one file: django_queue_middleware in MIDDLEWARE pushes a response's `queueJob`.

`python django_app.py runserver` serves it; `python django_app.py` calls it through Django's
test client and prints what a client sees. In a project, the middleware class is made in a
module (`EmailJobs = django_queue_middleware(qm, "emails")`) and named in settings.py.
"""

from __future__ import annotations

import sys

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from rnode_queue import Job, QueueManager
from rnode_queue.middleware import django_queue_middleware

qm = QueueManager()  # memory; QueueManager(url="redis://...") shares the jobs


@qm.process("emails")
def send_newsletter(job: Job) -> str:
    return f"newsletter sent to {job.data['to']}"


# A middleware class bound to the manager, the queue and the job options.
EmailJobs = django_queue_middleware(qm, "emails", priority="high", attempts=5)

settings.configure(
    DEBUG=False,
    SECRET_KEY="example only",
    ALLOWED_HOSTS=["testserver", "localhost", "127.0.0.1"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.middleware.common.CommonMiddleware", f"{__name__}.EmailJobs"],
)
django.setup()


def subscribe(request: HttpRequest) -> JsonResponse:
    email = request.POST["email"]
    return JsonResponse({"subscribed": email, "queueJob": {"to": email}})


def queue_info(request: HttpRequest) -> JsonResponse:
    queue = request.queue  # set by the middleware (a Queue here: the chain is sync)
    return JsonResponse({"queue": queue.name})


urlpatterns = [path("subscribe", subscribe), path("queue", queue_info)]


if __name__ == "__main__":
    if len(sys.argv) > 1:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
        sys.exit()
    from django.test import Client

    client = Client()
    reply = client.post("/subscribe", {"email": "ann@example.com"}).json()
    print("subscribe:", sorted(reply))
    job = qm.wait_for(reply["queueJobId"], timeout=5)
    assert job is not None
    print("job:", job.status, job.priority, job.max_attempts, job.result)
    print("queue:", client.get("/queue").json())
    qm.close()
