"""The Grafana dashboard queries only metrics a gateway really exports: every metric name in
its PromQL is found on the ``/metrics`` of a real gateway (with capture on), a histogram's
``_bucket``/``_sum``/``_count`` and a counter's ``_total`` included."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.files import ROOT
from tests.serving.conftest import python_spec, start_gateway
from tests.serving.test_capture_served import local_capture, text_body

DASHBOARD = ROOT / "deploy" / "grafana" / "aiscale.json"
#: PromQL words that are not metric names (aggregation modifiers and set operators).
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "offset", "bool", "le"}
_SUFFIXES = {"counter": ("", "_total"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created")}


def _queries(dashboard: dict[str, Any]) -> list[str]:
    found = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (inside ``{}`` or ``by (...)``), strings, ranges or variables."""
    text = re.sub(r'"[^"]*"', "", expr)  # strings (label values, legends)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    if text.lstrip().startswith("label_values("):  # label_values(metric, label)
        return {text.split("(", 1)[1].split(",", 1)[0].strip()}
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()
        if following.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function call, or a keyword
        names.add(match.group())
    return names


def exported_names(exposition: str) -> set[str]:
    """Every sample name a ``/metrics`` page can carry, from its ``# TYPE`` lines (which are
    written even for a labelled metric that has no sample yet)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return names


def test_dashboard_queries_only_exported_metrics(tmp_path: Path) -> None:
    """Each metric the dashboard queries is on a live gateway's /metrics, and the dashboard
    covers requests, latency, queue, batches, replicas, autoscaler, capture, cache and GPUs."""
    # The extractor finds the metrics of typical queries and nothing else.
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x=~"$d"}[$__rate_interval])))'
    ) == {"a_seconds_bucket"}
    assert metric_names("sum(rate(a_sum[5m])) / sum(rate(a_count[5m])) and on (x) b") == {
        "a_sum", "a_count", "b"
    }
    assert metric_names("label_values(c_total, deployment)") == {"c_total"}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for expr in _queries(dashboard) for name in metric_names(expr)}
    server = start_gateway(python_spec("echo", "Echo"), capture=local_capture(tmp_path))
    try:
        answer = httpx.post(f"{server.url}/v2/models/echo/infer", json=text_body("hi"))
        assert answer.status_code == 200, answer.text
        scraped = httpx.get(f"{server.url}/metrics")
        assert scraped.status_code == 200
    finally:
        server.stop()
    exported = exported_names(scraped.text)
    assert used <= exported, sorted(used - exported)
    for family in (
        "aiscale_gateway_requests_total",
        "aiscale_gateway_request_seconds_bucket",
        "aiscale_batcher_queue_depth",
        "aiscale_batcher_batch_size_bucket",
        "aiscale_replicas",
        "aiscale_autoscaler_target_replicas",
        "aiscale_autoscaler_decisions_total",
        "aiscale_capture_append_seconds_bucket",
        "aiscale_cache_lookups_total",
        "aiscale_gpus_team_gpus",
    ):
        assert family in used, family
