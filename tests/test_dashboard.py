"""The web dashboard (rnode_queue.dashboard, ``rnode-queue dashboard``).

HTTP-level tests with Starlette's TestClient: security headers, escaping, CSRF, the token,
read-only, paging and search, /metrics, the command's refusals. Then end to end in a real
browser: headless Debian chromium driven by Playwright, against a dashboard served by uvicorn
on a free port, on a private redis-server, with a worker manager in this process. Without
chromium or playwright the browser tests skip, unless ``RNQ_REQUIRE_BROWSER=1`` (CI), which
makes them fail. ``RNQ_DASHBOARD_SCREENSHOT=docs/dashboard.png`` also saves the README's
screenshot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rnode_queue import AsyncQueueManager, Job, QueueManager

pytest.importorskip("starlette")
from rnode_queue.dashboard import create_app
from rnode_queue.dashboard.security import CSRF_HEADER
from starlette.testclient import TestClient

WAIT = 20.0
#: Browser waits (ms): bounded, so that a bug fails a test instead of hanging it.
EXPECT_MS = 8_000
LOCAL = ("127.0.0.1", 40000)
CHROMIUM = os.environ.get("RNQ_CHROMIUM", "/usr/bin/chromium")
SCRIPT = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"


def client(
    app: Any, host: tuple[str, int] = LOCAL, base_url: str = "http://127.0.0.1:8421"
) -> TestClient:
    return TestClient(app, base_url=base_url, client=host, follow_redirects=False)


def csrf(app: Any) -> dict[str, str]:
    return {CSRF_HEADER: app.app.state.dashboard.guard.csrf}


@pytest.fixture
def memory_qm() -> Iterator[QueueManager]:
    qm = QueueManager()
    yield qm
    qm.close(timeout=5)


# -- HTTP ------------------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(memory_qm: QueueManager) -> None:
    app = create_app(memory_qm)
    http = client(app)
    for path in ("/", "/api/queues", "/static/dashboard.js", "/nope", "/metrics"):
        headers = http.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    assert http.get("/api/queues").headers["cache-control"] == "no-store"
    page = http.get("/").text
    assert "<script>" not in page.replace('<script src="/static/', "")  # no inline script


def test_job_data_is_never_rendered_as_html(memory_qm: QueueManager) -> None:
    job_id = memory_qm.push("emails", {"to": SCRIPT}, tags=[SCRIPT], metadata={"m": SCRIPT})
    app = create_app(memory_qm)
    http = client(app)
    # The pages carry no job data: the script fills them in with textContent.
    for path in ("/", "/queues/emails", f"/jobs/{job_id}"):
        assert "pwned" not in http.get(path).text
    # A queue name or job id in the URL is attribute-escaped in the shell.
    shell = http.get("/queues/%22%3E%3Cimg%20src%3Dx%3E").text
    assert '"><img' not in shell and 'data-queue="&quot;&gt;&lt;img src=x&gt;"' in shell
    # JSON is served as JSON, with < > & escaped so that nothing can sniff it as HTML.
    for path in (f"/api/jobs/{job_id}", "/api/queues/emails"):
        answer = http.get(path)
        assert answer.headers["content-type"] == "application/json"
        assert "<" not in answer.text and "\\u003cscript\\u003e" in answer.text
        assert SCRIPT in answer.text.encode().decode("unicode_escape")
    assert http.get(f"/api/jobs/{job_id}").json()["job"]["data"] == {"to": SCRIPT}


def test_actions_need_post_and_the_csrf_token(memory_qm: QueueManager) -> None:
    memory_qm.create_queue("emails")
    app = create_app(memory_qm)
    http = client(app)
    assert http.get("/api/queues/emails/pause").status_code == 405
    refused = http.post("/api/queues/emails/pause")
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    wrong = http.post("/api/queues/emails/pause", headers={CSRF_HEADER: "0" * 64})
    assert wrong.status_code == 403
    cross = http.post(
        "/api/queues/emails/pause", headers={**csrf(app), "sec-fetch-site": "cross-site"}
    )
    assert cross.status_code == 403
    assert memory_qm.get_queue("emails").get_stats()["paused"] is False
    done = http.post("/api/queues/emails/pause", headers=csrf(app))
    assert done.json() == {"queue": "emails", "paused": True}
    assert memory_qm.get_queue("emails").get_stats()["paused"] is True
    assert http.post("/api/queues/nope/pause", headers=csrf(app)).status_code == 404
    job_id = memory_qm.push("emails", {"n": 1})
    assert http.post(f"/api/jobs/{job_id}/delete").status_code == 403  # no CSRF token
    deleted = http.post(f"/api/jobs/{job_id}/delete", headers=csrf(app))
    assert deleted.json() == {"id": job_id, "deleted": True}
    assert memory_qm.get_job(job_id) is None
    assert http.post(f"/api/jobs/{job_id}/delete", headers=csrf(app)).status_code == 404


def test_without_a_token_only_localhost_is_served(memory_qm: QueueManager) -> None:
    """A site whose name was rebound to 127.0.0.1 (DNS rebinding) is same-origin for the
    browser: its requests name it in ``Host``, and are refused."""
    memory_qm.create_queue("emails")
    app = create_app(memory_qm)
    rebound = client(app, base_url="http://attacker.example:8421")
    assert rebound.get("/").status_code == 421
    assert rebound.get("/api/queues").status_code == 421
    refused = rebound.post("/api/queues/emails/pause", headers=csrf(app))
    assert refused.status_code == 421 and "localhost" in refused.json()["error"]
    assert refused.headers["x-frame-options"] == "DENY", "refusals carry the headers too"
    assert memory_qm.get_queue("emails").get_stats()["paused"] is False
    for local in ("http://localhost:8421", "http://[::1]:8421", "http://127.0.0.1"):
        assert client(app, base_url=local).get("/api/queues").status_code == 200, local
    # With a token, or mounted in an app that authenticates (remote_actions), any host.
    tokened = create_app(memory_qm, token="t0ken")
    bearer = {"authorization": "Bearer t0ken"}
    assert client(tokened, base_url="http://queues.example").get("/api/queues", headers=bearer)
    mounted = create_app(memory_qm, remote_actions=True)
    assert client(mounted, base_url="http://app.example").get("/api/queues").status_code == 200
    shown = create_app(memory_qm, read_only=True)  # open to whoever reaches it, by design
    assert client(shown, base_url="http://board.example").get("/api/queues").status_code == 200


def test_workers_of_one_app_share_the_token_secrets(memory_qm: QueueManager) -> None:
    one, two = create_app(memory_qm, token="t0ken"), create_app(memory_qm, token="t0ken")
    assert csrf(one) == csrf(two), "gunicorn -w N: any worker accepts another's page"
    assert csrf(create_app(memory_qm, token="other")) != csrf(one)


def test_the_sign_in_form_is_bounded(memory_qm: QueueManager) -> None:
    app = create_app(memory_qm, token="t0ken")
    http = client(app)
    form = {"content-type": "application/x-www-form-urlencoded"}
    huge = http.post("/login", content=b"token=" + b"x" * 10_000, headers=form)
    many = http.post("/login", content="&".join(f"f{n}=1" for n in range(50)), headers=form)
    assert (huge.status_code, many.status_code) == (403, 403)  # read as empty: no CSRF token
    local = client(create_app(memory_qm))
    odd = local.post("/api/queues/x/pause", headers={CSRF_HEADER: b"\xe9t\xe9"})
    assert odd.status_code == 403, "a CSRF token that is not ASCII is wrong, not a crash"


def test_actions_from_another_host_need_the_token(memory_qm: QueueManager) -> None:
    memory_qm.create_queue("emails")
    remote = ("10.1.2.3", 50000)
    # No token: actions from another host are refused (reads are not).
    open_app = create_app(memory_qm)
    http = client(open_app, remote)
    assert http.get("/api/queues").status_code == 200
    refused = http.post("/api/queues/emails/pause", headers=csrf(open_app))
    assert refused.status_code == 403 and "token" in refused.json()["error"]

    app = create_app(memory_qm, token="s3cret-token")
    http = client(app, remote)
    # Every page asks for the token: browsers sign in, scripts send a bearer token.
    assert http.get("/").status_code == 303
    assert http.get("/").headers["location"] == "/login"
    assert http.get("/api/queues").status_code == 401
    assert http.get("/metrics").status_code == 401
    no_token = http.post("/api/queues/emails/pause", headers=csrf(app))
    assert no_token.status_code == 401
    bearer = {"authorization": "Bearer s3cret-token"}
    assert http.get("/api/queues", headers=bearer).status_code == 200
    assert http.post("/api/queues/emails/pause", headers=bearer).status_code == 200
    wrong_bearer = {"authorization": "Bearer x"}
    assert http.post("/api/queues/emails/resume", headers=wrong_bearer).status_code == 401

    token = app.app.state.dashboard.guard.csrf
    wrong = http.post("/login", data={"csrf": token, "token": "guess"})
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    assert http.post("/login", data={"token": "s3cret-token"}).status_code == 403  # no CSRF
    signed = http.post("/login", data={"csrf": token, "token": "s3cret-token"})
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "s3cret" not in cookie
    assert http.get("/").status_code == 200
    # The cookie is ambient: with it, an action still needs the CSRF token.
    assert http.post("/api/queues/emails/resume").status_code == 403
    assert http.post("/api/queues/emails/resume", headers=csrf(app)).status_code == 200
    assert memory_qm.get_queue("emails").get_stats()["paused"] is False


def test_read_only_hides_and_refuses_every_action(memory_qm: QueueManager) -> None:
    memory_qm.create_queue("emails")
    app = create_app(memory_qm, read_only=True)
    http = client(app)
    assert 'data-read-only="1"' in http.get("/").text
    actions = ("/api/queues/emails/pause", "/api/queues/emails/clear", "/api/jobs/x/retry")
    for path in (*actions, "/api/jobs/x/delete"):
        answer = http.post(path, headers=csrf(app))
        assert answer.status_code == 403 and "read-only" in answer.json()["error"], path
    assert memory_qm.get_queue("emails").get_stats()["paused"] is False


def test_jobs_are_paged_and_searched_by_id_or_tag(memory_qm: QueueManager) -> None:
    items = [{"data": {"n": n}, "options": {"tags": ["odd"] if n % 2 else []}} for n in range(120)]
    ids = memory_qm.push_batch("bulk", items)
    app = create_app(memory_qm, page_size=50)
    http = client(app)
    pages = [http.get(f"/api/queues/bulk?status=waiting&page={n}").json() for n in range(3)]
    assert [len(p["jobs"]) for p in pages] == [50, 50, 20]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert [j["id"] for p in pages for j in p["jobs"]] == ids  # run order, none twice
    assert pages[0]["queue"]["waiting"] == 120
    by_id = http.get(f"/api/queues/bulk?q={ids[7]}").json()
    assert by_id["found_by"] == "id" and [j["id"] for j in by_id["jobs"]] == [ids[7]]
    by_tag = http.get("/api/queues/bulk?q=odd&page=1").json()
    assert by_tag["found_by"] == "tag" and by_tag["complete"] is True
    assert [j["id"] for j in by_tag["jobs"]] == ids[101::2]
    assert http.get("/api/queues/bulk?page=100000").status_code == 400  # every status at once
    deep = [{"data": n} for n in range(10_100)]
    deep_ids = memory_qm.push_batch("deep", deep)
    page = http.get("/api/queues/deep?status=waiting&page=201").json()  # jobs 10,050 on
    assert [j["id"] for j in page["jobs"]] == deep_ids[10_050:]
    assert page["has_more"] is False
    assert http.get("/api/queues/bulk?status=nope").status_code == 400
    assert http.get("/api/queues/nope").status_code == 404
    assert http.get("/api/jobs/01a00000-0000-7000-8000-000000000000").status_code == 404


def test_metrics_on_the_same_server(memory_qm: QueueManager, monkeypatch: Any) -> None:
    memory_qm.push("emails", {"n": 1})
    http = client(create_app(memory_qm))
    scraped = http.get("/metrics")
    assert scraped.status_code == 200
    assert 'queue_jobs_waiting{queue="emails"} 1.0' in scraped.text
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    missing = client(create_app(memory_qm)).get("/metrics")
    assert missing.status_code == 501 and "pip install 'rnode-queue[metrics]'" in missing.text


def test_an_async_manager_is_served_from_worker_threads() -> None:
    aqm = AsyncQueueManager()
    try:
        aqm.sync.push("emails", {"n": 1})
        http = client(create_app(aqm))
        assert http.get("/api/queues").json()["queues"][0]["waiting"] == 1
    finally:
        aqm.sync.close(timeout=5)


def test_the_command_refuses_other_hosts_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RNQ_DASHBOARD_TOKEN")}
    args = [sys.executable, "-m", "rnode_queue", "dashboard", "--path", str(tmp_path)]
    done = subprocess.run(
        [*args, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 2
    assert "refusing to serve actions on 0.0.0.0 without a token" in done.stderr
    help_text = subprocess.run(
        [*args, "--help"], env=env, capture_output=True, text=True, timeout=WAIT
    ).stdout
    assert "--read-only" in help_text and "RNQ_DASHBOARD_TOKEN" in help_text


# -- in a real browser -----------------------------------------------------------------------


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        return "uvicorn is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason is not None:
        if os.environ.get("RNQ_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RNQ_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


class Served:
    """A dashboard app served by uvicorn from a thread, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        started = threading.Event()
        while not started.wait(0.02):
            if self.server.started:
                break
            assert self.thread.is_alive(), "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)


class Store:
    """A redis prefix with a worker manager (handlers) and a dashboard client manager."""

    def __init__(self, url: str) -> None:
        prefix = f"rnq-dash:{uuid.uuid4().hex}"
        self.worker = QueueManager(url=url, prefix=prefix)
        self.client = QueueManager(url=url, prefix=prefix)
        self.served: list[Served] = []

    def serve(self, **options: Any) -> str:
        served = Served(create_app(self.client, poll_interval=0.25, **options))
        self.served.append(served)
        return served.url

    def close(self) -> None:
        for served in self.served:
            served.stop()
        self.worker.close(timeout=5)
        self.client.close(timeout=5)


@pytest.fixture
def store(redis_server: str) -> Iterator[Store]:
    made = Store(redis_server)
    yield made
    made.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page that records console errors, page errors and alerts."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    problems: list[str] = []

    def console(message: Any) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text}")

    opened.on("console", console)
    opened.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def dialog(d: Any) -> None:
        if d.type != "confirm":
            problems.append(f"unexpected {d.type}: {d.message}")
        d.accept()

    opened.on("dialog", dialog)
    opened.problems = problems
    yield opened
    context.close()


def _fail_first(store: Store, queue: str) -> Callable[[Job], str]:
    tries: dict[str, int] = {}

    def handler(job: Job) -> str:
        tries[job.id] = tries.get(job.id, 0) + 1
        if job.data.get("fail") and tries[job.id] == 1:
            raise RuntimeError(f"first try fails for {job.data['fail']}")
        return "done"

    store.worker.process(queue, handler)
    return handler


def test_browser_counts_change_as_jobs_run(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    store.worker.create_queue("emails")
    for n in range(3):
        store.worker.push("emails", {"n": n})
    page.goto(store.serve() + "/")
    row = page.locator('tr[data-queue="emails"]')
    expect(row.locator('td[data-col="waiting"]')).to_have_text("3", timeout=EXPECT_MS)
    expect(row.locator('td[data-col="completed"]')).to_have_text("0")
    _fail_first(store, "emails")
    expect(row.locator('td[data-col="completed"]')).to_have_text("3", timeout=EXPECT_MS)
    expect(row.locator('td[data-col="waiting"]')).to_have_text("0")
    expect(page.locator("#chart-throughput canvas")).to_have_count(1)
    expect(page.locator("#chart-failures canvas")).to_have_count(1)
    assert page.problems == []


def test_browser_shows_a_failed_jobs_traceback_and_retries_it(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    store.worker.create_queue("reports", max_retries=0)
    _fail_first(store, "reports")
    job_id = store.worker.push("reports", {"fail": SCRIPT}, tags=["monthly"])
    failed = store.worker.wait_for(job_id, timeout=WAIT)
    assert failed is not None and failed.status == "failed"
    url = store.serve()
    page.goto(f"{url}/queues/reports?status=failed")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(1, timeout=EXPECT_MS)
    page.locator(f'tr[data-job="{job_id}"] td.id a').click()
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#traceback")).to_contain_text("RuntimeError: first try fails for <script>")
    # The job's data is shown as text: the script is neither run nor parsed.
    expect(page.locator('dd[data-field="data"]')).to_contain_text(SCRIPT)
    expect(page.locator('dd[data-field="tags"]')).to_have_text("monthly")
    assert page.title() != "pwned" and page.locator("main img").count() == 0
    page.locator('button[data-action="retry"]').click()
    expect(page.locator("#job-status")).to_have_text("completed", timeout=EXPECT_MS)
    done = store.worker.get_job(job_id)
    assert done is not None and done.status == "completed" and done.result == "done"
    assert page.problems == []


def test_browser_pause_stops_the_queue(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    store.worker.create_queue("emails")
    _fail_first(store, "emails")
    _fail_first(store, "other")
    page.goto(store.serve() + "/")
    row = page.locator('tr[data-queue="emails"]')
    row.locator('button[data-action="pause"]').click()
    expect(row.locator('td[data-col="state"]')).to_have_text("paused", timeout=EXPECT_MS)
    assert store.worker.get_queue("emails").get_stats()["paused"] is True
    held = store.worker.push("emails", {"n": 1})
    # A job pushed after it, on a running queue, completes: the paused one still waits.
    assert store.worker.wait_for(store.worker.push("other", {"n": 2}), timeout=WAIT) is not None
    assert (job := store.worker.get_job(held)) is not None and job.status == "waiting"
    expect(row.locator('td[data-col="waiting"]')).to_have_text("1", timeout=EXPECT_MS)
    row.locator('button[data-action="resume"]').click()
    expect(row.locator('td[data-col="completed"]')).to_have_text("1", timeout=EXPECT_MS)
    assert page.problems == []


def test_browser_read_only_shows_no_actions(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    store.worker.create_queue("reports", max_retries=0)
    _fail_first(store, "reports")
    job_id = store.worker.push("reports", {"fail": "x"})
    assert store.worker.wait_for(job_id, timeout=WAIT) is not None
    url = store.serve(read_only=True)
    page.goto(url + "/")
    expect(page.locator('tr[data-queue="reports"] td[data-col="failed"]')).to_have_text(
        "1", timeout=EXPECT_MS
    )
    expect(page.locator(".badge")).to_have_text("read-only")
    assert page.locator("button").count() == 0
    page.goto(f"{url}/jobs/{job_id}")
    expect(page.locator("#traceback")).to_be_visible(timeout=EXPECT_MS)
    assert page.locator("button").count() == 0
    page.goto(f"{url}/queues/reports")
    expect(page.locator(f'tr[data-job="{job_id}"]')).to_have_count(1, timeout=EXPECT_MS)
    assert page.locator("button.action").count() == 0
    assert page.problems == []


def test_browser_an_action_without_the_token_is_refused(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    store.worker.create_queue("emails")
    url = store.serve(token="correct horse battery staple")
    page.goto(url + "/")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.fill('input[name="token"]', "wrong")
    page.click('button[type="submit"]')
    expect(page.locator(".error")).to_have_text("Wrong token.")
    page.fill('input[name="token"]', "correct horse battery staple")
    page.click('button[type="submit"]')
    row = page.locator('tr[data-queue="emails"]')
    expect(row.locator('td[data-col="state"]')).to_have_text("running", timeout=EXPECT_MS)
    page.context.clear_cookies()  # the session is gone: the page is still there
    # The answer to the click itself (the status line also shows the page's own refused
    # polls, which may land after it).
    with page.expect_response(lambda r: r.url.endswith("/pause"), timeout=EXPECT_MS) as answer:
        row.locator('button[data-action="pause"]').click()
    assert answer.value.status == 401
    assert answer.value.request.method == "POST"
    expect(page.locator("#status")).to_contain_text("401", timeout=EXPECT_MS)  # shown, not lost
    assert store.worker.get_queue("emails").get_stats()["paused"] is False
    # The 401 of a refused read (console error) is expected here, nothing else.
    assert [p for p in page.problems if "401" not in p] == []


@pytest.mark.skipif(
    not os.environ.get("RNQ_DASHBOARD_SCREENSHOT"), reason="RNQ_DASHBOARD_SCREENSHOT=path.png"
)
def test_screenshot_for_the_readme(store: Store, page: Any) -> None:
    from playwright.sync_api import expect

    worker = store.worker
    worker.create_queue("emails", max_retries=0)
    worker.create_queue("reports")
    worker.create_queue("thumbnails", concurrency=4)
    worker.pause_queue("reports")
    worker.push_batch("reports", [{"data": {"day": d}} for d in range(7)])
    worker.schedule("reports", {"kind": "nightly"}, "0 3 * * *", name="nightly")
    _fail_first(store, "emails")
    _fail_first(store, "thumbnails")
    page.set_viewport_size({"width": 1280, "height": 600})
    page.goto(store.serve() + "/")
    expect(page.locator('tr[data-queue="emails"]')).to_have_count(1, timeout=EXPECT_MS)
    for second in range(24):
        fail = [n % 9 == second % 9 for n in range(20 + 4 * (second % 6))]
        batch = [{"data": {"n": n, "fail": "bounce" * bad or None}} for n, bad in enumerate(fail)]
        worker.push_batch("emails", batch)
        worker.push_batch("thumbnails", [{"data": {"n": n}} for n in range(40 + 3 * second)])
        page.wait_for_timeout(500)
    worker.join("emails", timeout=WAIT)
    page.wait_for_timeout(5_500)  # the last minute's counts refresh every 5 s
    page.screenshot(path=os.environ["RNQ_DASHBOARD_SCREENSHOT"])
