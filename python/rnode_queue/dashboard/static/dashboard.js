// The rnode-queue dashboard: builds each page from the JSON endpoints, polling them.
// Every value from the store goes into the page as text (textContent), never as HTML.
(function () {
  "use strict";

  const body = document.body;
  const ROOT = body.dataset.root || "";
  const PAGE = body.dataset.page;
  const CSRF = body.dataset.csrf || "";
  const READ_ONLY = body.dataset.readOnly === "1";
  const POLL = Math.max(200, Number(body.dataset.poll) || 2000);
  const main = document.getElementById("main");
  const statusLine = document.getElementById("status");
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04"];

  // -- DOM --------------------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  }

  function say(text, kind) {
    statusLine.textContent = text || "";
    statusLine.className = "status" + (kind ? " " + kind : "");
  }

  function link(path, text) {
    return el("a", { href: ROOT + path, text: text });
  }

  function queuePath(name) {
    return "/queues/" + encodeURIComponent(name);
  }

  function jobPath(id) {
    return "/jobs/" + encodeURIComponent(id);
  }

  // -- values -----------------------------------------------------------------------------

  const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/;

  function when(value) {
    if (!value) return "-";
    const date = new Date(value);
    if (isNaN(date.getTime())) return String(value);
    return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function ago(value, now) {
    if (!value) return "-";
    const seconds = Math.max(0, ((now || Date.now()) - new Date(value).getTime()) / 1000);
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (seconds >= size) return Math.floor(seconds / size) + unit + " ago";
    }
    return Math.floor(seconds) + "s ago";
  }

  function shown(value) {
    if (value === null || value === undefined) return "-";
    if (typeof value === "string") return ISO.test(value) ? when(value) : value;
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number") return String(value);
    return JSON.stringify(value, null, 2);
  }

  // -- requests ---------------------------------------------------------------------------

  async function answer(response) {
    let payload = {};
    try {
      payload = await response.json();
    } catch (_) {
      payload = {};
    }
    if (!response.ok) {
      const error = new Error(response.status + ": " + (payload.error || response.statusText));
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  async function getJSON(path) {
    const response = await fetch(ROOT + path, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
    return answer(response);
  }

  async function post(path) {
    const response = await fetch(ROOT + path, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRF-Token": CSRF },
      credentials: "same-origin",
    });
    return answer(response);
  }

  // A button that POSTs an action, after a confirmation for the destructive ones.
  function action(label, path, options) {
    if (READ_ONLY) return null;
    const opts = options || {};
    const button = el("button", {
      type: "button",
      className: "action" + (opts.danger ? " danger" : ""),
      text: label,
      data: { action: opts.name || label.toLowerCase() },
    });
    button.addEventListener("click", async () => {
      if (opts.confirm && !window.confirm(opts.confirm)) return;
      button.disabled = true;
      try {
        const result = await post(path);
        say(opts.done ? opts.done(result) : label + ": done", "ok");
        if (opts.after) await opts.after();
      } catch (error) {
        say(label + " refused: " + error.message, "error");
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  // Runs refresh now and every POLL ms; a new error goes to the status line (once).
  function every(refresh) {
    let failing = "";
    async function tick() {
      try {
        await refresh();
        if (failing) say("");
        failing = "";
      } catch (error) {
        if (error.message !== failing) {
          failing = error.message;
          say(error.message, "error");
          if (error.status === 401) statusLine.append(" ", link("/login", "sign in"));
        }
      }
      setTimeout(tick, POLL);
    }
    return tick();
  }

  function table(headers, rows, empty) {
    return el(
      "table",
      {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: headers.length, className: "empty", text: empty || "(none)" })))
    );
  }

  function cell(col, value, className) {
    return el("td", { data: { col: col }, className: className, text: value });
  }

  function queueActions(queue, after) {
    const name = queue.queue;
    const api = "/api" + queuePath(name);
    return [
      queue.paused
        ? action("Resume", api + "/resume", { after, done: () => "queue " + name + " is running again" })
        : action("Pause", api + "/pause", { after, done: () => "queue " + name + " is paused" }),
      action("Retry failed", api + "/retry-failed", {
        name: "retry-failed",
        after,
        confirm: "Retry every failed job of queue " + name + "?",
        done: (r) => r.retried + " failed job(s) of " + name + " are waiting again",
      }),
      action("Clear", api + "/clear", {
        danger: true,
        after,
        confirm: "Remove every waiting and delayed job of queue " + name + "? This cannot be undone.",
        done: (r) => "removed " + r.removed + " job(s) from " + name,
      }),
    ];
  }

  // -- the queues page --------------------------------------------------------------------

  function chart(title, unit, holder) {
    let plot = null;
    let names = "";
    return function draw(history) {
      const queues = Object.keys(history.queues);
      const data = [history.t, ...queues.map((q) => history.queues[q][unit])];
      if (typeof uPlot === "undefined") return;
      if (queues.join("\n") !== names || plot === null) {
        if (plot) plot.destroy();
        names = queues.join("\n");
        plot = new uPlot(
          {
            title: title,
            width: Math.max(300, holder.clientWidth),
            height: 220,
            series: [{}, ...queues.map((q, i) => ({ label: q, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false }))],
            axes: [{}, { label: unit === "throughput" ? "jobs/s" : "% failed", size: 60 }],
            scales: unit === "failure_rate" ? { y: { range: [0, 100] } } : {},
          },
          data,
          holder
        );
      } else {
        plot.setData(data);
      }
      plot.setSize({ width: Math.max(300, holder.clientWidth), height: 220 });
    };
  }

  function queuesPage() {
    const rows = el("div", { id: "queues" });
    const throughput = el("div", { className: "chart", id: "chart-throughput" });
    const failures = el("div", { className: "chart", id: "chart-failures" });
    replace(main, el("h1", { text: "Queues" }), rows, el("section", { className: "charts" }, throughput, failures));
    const drawThroughput = chart("Completed jobs per second", "throughput", throughput);
    const drawFailures = chart("Failure rate (% of finished jobs)", "failure_rate", failures);
    let last = "";
    async function refresh() {
      const data = await getJSON("/api/queues");
      const key = JSON.stringify(data.queues);
      if (key !== last) {
        last = key;
        const perMinute = (q, k) => (q[k] === null || q[k] === undefined ? "-" : (q.last_minute_exact === false ? ">=" : "") + q[k]);
        const lines = data.queues.map((q) =>
          el(
            "tr",
            { data: { queue: q.queue } },
            el("td", { data: { col: "queue" } }, link(queuePath(q.queue), q.queue)),
            cell("waiting", q.waiting, "num"),
            cell("delayed", q.delayed, "num"),
            cell("active", q.active, "num"),
            cell("completed", q.completed, "num"),
            cell("failed", q.failed, "num"),
            cell("done-min", perMinute(q, "completed_last_minute"), "num"),
            cell("failed-min", perMinute(q, "failed_last_minute"), "num"),
            cell("state", q.paused ? "paused" : "running", q.paused ? "paused" : "running"),
            READ_ONLY ? null : el("td", { className: "actions" }, queueActions(q, refresh))
          )
        );
        const headers = ["Queue", "Waiting", "Delayed", "Active", "Completed", "Failed", "Done/min", "Failed/min", "State"];
        replace(rows, table(READ_ONLY ? headers : [...headers, "Actions"], lines, "No queue in this store yet."));
      }
      drawThroughput(data.history);
      drawFailures(data.history);
    }
    return every(refresh);
  }

  // -- one queue's jobs -------------------------------------------------------------------

  function queuePage() {
    const name = body.dataset.queue;
    const params = new URLSearchParams(location.search);
    const status = params.get("status") || "";
    const page = Math.max(0, Number(params.get("page")) || 0);
    const search = params.get("q") || "";
    const url = (changes) => {
      const next = new URLSearchParams({ status, page: String(page), q: search, ...changes });
      for (const [k, v] of [...next.entries()]) if (!v || (k === "page" && v === "0")) next.delete(k);
      const query = next.toString();
      return ROOT + queuePath(name) + (query ? "?" + query : "");
    };
    const head = el("div", { className: "queue-head" });
    const tabs = el(
      "nav",
      { className: "tabs" },
      ["", "waiting", "delayed", "active", "completed", "failed"].map((s) =>
        el("a", { href: url({ status: s, page: "0" }), className: s === status ? "current" : "", text: s || "all" })
      )
    );
    const box = el("input", { type: "search", name: "q", value: search, placeholder: "job id or tag", "aria-label": "search" });
    const form = el("form", { className: "search", method: "get", action: ROOT + queuePath(name) },
      status ? el("input", { type: "hidden", name: "status", value: status }) : null,
      box, el("button", { type: "submit", text: "Search" }),
      search ? el("a", { href: url({ q: "", page: "0" }), text: "clear search" }) : null);
    const list = el("div", { id: "jobs" });
    const pager = el("nav", { className: "pager" });
    replace(main, el("p", {}, link("/", "Queues"), " / ", name), head, tabs, form, list, pager);

    async function refresh() {
      const query = new URLSearchParams({ page: String(page) });
      if (status) query.set("status", status);
      if (search) query.set("q", search);
      const data = await getJSON("/api/queues/" + encodeURIComponent(name) + "?" + query);
      const q = data.queue;
      replace(
        head,
        el("h1", {}, "Queue ", el("span", { className: "name", text: q.queue }), " ", el("span", { id: "queue-state", className: q.paused ? "paused" : "running", text: q.paused ? "paused" : "running" })),
        el("p", { className: "counts" },
          ["waiting", "delayed", "active", "completed", "failed"].map((k) => el("span", { data: { count: k } }, k + " ", el("b", { text: q[k] })))),
        el("div", { className: "actions" }, queueActions(q, refresh))
      );
      const rows = data.jobs.map((job) =>
        el(
          "tr",
          { data: { job: job.id, status: job.status } },
          el("td", { className: "id" }, link(jobPath(job.id), job.id)),
          cell("status", job.status, "st " + job.status),
          cell("priority", job.priority),
          cell("attempts", job.attempts + "/" + job.max_attempts, "num"),
          cell("created", when(job.created_at)),
          cell("tags", job.tags.join(", ") || "-"),
          cell("data", job.data, "mono"),
          cell("error", job.error || "-", "mono"),
          READ_ONLY ? null : el("td", { className: "actions" },
            job.status === "failed" ? action("Retry", jobPath(job.id).replace("/jobs/", "/api/jobs/") + "/retry", { after: refresh, done: () => "job " + job.id + " is waiting again" }) : null)
        )
      );
      const headers = ["ID", "Status", "Priority", "Attempts", "Created", "Tags", "Data", "Error"];
      const note = data.found_by === "id" ? "Found by id." : data.found_by === "tag" ? "Jobs tagged \u201c" + search + "\u201d" + (data.complete ? "." : " among the newest 10,000 (older jobs were not searched).") : null;
      replace(list, note ? el("p", { className: "note", text: note }) : null, table(READ_ONLY ? headers : [...headers, ""], rows, "No job here."));
      replace(
        pager,
        page > 0 ? el("a", { href: url({ page: String(page - 1) }), text: "\u2190 newer" }) : null,
        el("span", { text: "page " + (page + 1) }),
        data.has_more && page < data.max_page ? el("a", { href: url({ page: String(page + 1) }), text: "older \u2192" }) : null,
        data.has_more && page >= data.max_page ? el("span", { className: "note", text: "deeper pages: filter by status or search" }) : null
      );
    }
    return every(refresh);
  }

  // -- one job ----------------------------------------------------------------------------

  function jobPage() {
    const id = body.dataset.job;
    let last = "";
    async function refresh() {
      const data = await getJSON("/api/jobs/" + encodeURIComponent(id));
      const key = JSON.stringify(data);
      if (key === last) return;
      last = key;
      const job = data.job;
      const fields = el("dl", { className: "fields" }, data.fields.map(([name, value]) => [
        el("dt", { text: name }),
        el("dd", { data: { field: name } }, typeof value === "object" && value !== null ? el("pre", { text: shown(value) }) : shown(value)),
      ]));
      replace(
        main,
        el("p", {}, link("/", "Queues"), " / ", link(queuePath(job.queue), job.queue), " / ", job.id),
        el("h1", {}, "Job ", el("span", { className: "st " + job.status, id: "job-status", text: job.status })),
        el("div", { className: "actions" },
          job.status === "failed" ? action("Retry", "/api/jobs/" + encodeURIComponent(job.id) + "/retry", { after: refresh, done: () => "job " + job.id + " is waiting again" }) : null,
          job.status !== "active" ? action("Delete", "/api/jobs/" + encodeURIComponent(job.id) + "/delete", {
            danger: true,
            confirm: "Delete job " + job.id + "? This cannot be undone.",
            done: () => "job " + job.id + " was deleted",
            after: () => { window.location.assign(ROOT + queuePath(job.queue)); },
          }) : null),
        fields,
        job.traceback ? [el("h2", { text: "Traceback" }), el("pre", { id: "traceback", className: "traceback", text: job.traceback })] : null
      );
    }
    return every(refresh);
  }

  // -- schedules and workers --------------------------------------------------------------

  function schedulesPage() {
    const holder = el("div", { id: "schedules" });
    replace(main, el("h1", { text: "Schedules" }), holder);
    return every(async () => {
      const data = await getJSON("/api/schedules");
      replace(holder, table(["ID", "Queue", "Cron", "Next run", "Priority", "Data"], data.schedules.map((s) =>
        el("tr", { data: { schedule: s.id } },
          cell("id", s.id), el("td", {}, link(queuePath(s.queue), s.queue)), cell("cron", s.cron, "mono"),
          cell("next", when(s.next_run)), cell("priority", s.priority), cell("data", JSON.stringify(s.data), "mono"))), "No schedule."));
    });
  }

  function workersPage() {
    const holder = el("div", { id: "workers" });
    replace(main, el("h1", { text: "Worker processes" }), holder);
    return every(async () => {
      const data = await getJSON("/api/workers");
      const now = Date.now();
      replace(holder, table(["Host", "PID", "Queues (concurrency)", "Running", "Started", "Last seen"], data.workers.map((w) =>
        el("tr", { data: { worker: w.id } },
          cell("host", w.host), cell("pid", w.pid, "num"),
          cell("queues", w.queues.map((q) => (q in w.concurrency ? q + " (" + w.concurrency[q] + ")" : q)).join(", ")),
          cell("running", w.running, "num"), cell("started", ago(w.started_at, now)), cell("seen", ago(w.last_seen, now)))), "No live worker process."));
    });
  }

  const pages = { queues: queuesPage, queue: queuePage, job: jobPage, schedules: schedulesPage, workers: workersPage };
  if (pages[PAGE]) pages[PAGE]();
})();
