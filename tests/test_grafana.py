"""The Grafana dashboard in deploy/grafana: it imports as is, and every PromQL expression in it
names only series that ``rnode_queue.metrics.QueueCollector`` exports (compared with a real
scrape after a few jobs ran, so that every family has samples)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ManagerPool
from helpers import WAIT
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rnode_queue import Job
from rnode_queue.metrics import QueueCollector

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "rnode-queue.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana's own variables an expression may use.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}

#: PromQL functions and aggregation operators (the names that may precede "(").
FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    # functions
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute",
    "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc",
    "sort_by_label", "sort_by_label_desc", "sqrt", "time", "timestamp", "vector", "year",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time", "mad_over_time",
}  # fmt: skip
#: Words of the language that are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
#: Clauses whose parenthesised list holds label names, not metrics.
LABEL_LIST_CLAUSES = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"


def metric_names(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression selects.

    Strips strings, Grafana variables, ``{...}`` label matchers, ``[...]`` ranges, label lists
    of ``by``/``without``/``on``/``ignoring``/``group_*``, ``offset`` and ``@`` modifiers; what
    is left is functions (checked against PromQL's), keywords, numbers and metric names.
    """
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(LABEL_LIST_CLAUSES, " ", s)
    s = re.sub(r"\boffset\s+-?[\w.]+|@\s*[\w.()]+", " ", s)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        word = match.group()
        if s[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
        elif word.lower() not in KEYWORDS:
            names.add(word)
    return names


def test_the_expression_parser() -> None:
    assert metric_names(
        'sum by (queue) (rate(queue_jobs_total{queue=~"$queue", x="a{b}"}[$__rate_interval]))'
    ) == {"queue_jobs_total"}
    assert metric_names(
        'histogram_quantile(0.95, sum(rate(h_bucket{le!="1"}[5m])) by (le, queue))'
        " / on(queue) group_left(env) other_metric offset 1h > bool 1e3"
    ) == {"h_bucket", "other_metric"}
    assert metric_names("a_sum / a_count and ignoring(instance) up") == {"a_sum", "a_count", "up"}
    with pytest.raises(AssertionError, match="unknown PromQL function 'rtae'"):
        metric_names("rtae(queue_jobs_total[5m])")


# -- the dashboard ----------------------------------------------------------------------------


def load() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every PromQL expression of every panel and target."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                found.append((f"{panel['title']} / {target['refId']}", target["expr"]))
    return found


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_the_dashboard_imports_as_is() -> None:
    dashboard = load()
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "an exported id would overwrite another dashboard"
    assert "${DS_" not in json.dumps(dashboard), "no import-time input left unresolved"

    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), ids
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        assert panel["type"] and panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for t in targets:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), panel["title"]

    defined = variables(dashboard)
    source = defined["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    queue = defined["queue"]
    assert queue["type"] == "query" and queue["datasource"] == DATASOURCE
    assert queue["multi"] is True and queue["includeAll"] is True
    for where, expr in expressions(dashboard):
        used = set(re.findall(r"\$\{?(\w+)", expr))
        assert used <= set(defined) | GRAFANA_VARIABLES, f"{where}: undefined {used}"


def test_the_dashboard_has_the_issues_panels() -> None:
    exprs = " ".join(expr for _, expr in expressions(load()))
    for needed in (
        "queue_jobs_waiting",  # jobs in queues
        "queue_jobs_delayed",
        "queue_jobs_active",
        "rate(queue_jobs_total",  # throughput
        "rate(queue_jobs_processed_total",
        "rate(queue_jobs_failed_total",
        "histogram_quantile(0.5,",  # processing time
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "rate(queue_jobs_retried_total",  # error rate
        "queue_workers_busy",  # worker activity
        "queue_paused",
    ):
        assert needed in exprs, needed


@pytest.fixture
def scraped_names(manager_pool: ManagerPool) -> set[str]:
    """The sample names of a real scrape, after runs that succeed, retry and fail."""
    qm = manager_pool.open(backend="memory")
    q = qm.create_queue("board", max_retries=1, retry_delay=0.01, backoff="fixed")

    @q.process
    def handler(job: Job) -> None:
        if job.data["fail"]:
            raise ValueError("fails both runs")

    q.push({"fail": False})
    q.push({"fail": True})
    assert qm.join("board", timeout=WAIT)
    qm.pause_queue("paused")
    registry = CollectorRegistry()
    registry.register(QueueCollector(qm))

    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_expression_names_only_exported_series(scraped_names: set[str]) -> None:
    dashboard = load()
    assert "queue_processing_duration_seconds_bucket" in scraped_names
    used: set[str] = set()
    for where, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= scraped_names, f"{where}: {names - scraped_names} not exported"
        used |= names

    query = variables(dashboard)["queue"]["query"]
    text = query["query"] if isinstance(query, dict) else query
    match = re.fullmatch(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", text.strip())
    assert match, text
    assert match.group(1) in scraped_names and match.group(2) == "queue"

    families = {
        name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
        for name in scraped_names
    }
    unused = families - {
        n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in used
    }
    assert not unused, f"exported but on no panel: {unused}"
