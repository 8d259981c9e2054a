"""The dashboard page, served by a real gateway on loopback and run in headless Chromium."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiscale.dashboard import plotly_js_path
from aiscale.monitor.config import MonitorConfig
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from tests.dashboard.conftest import PageErrors
from tests.serving.conftest import python_spec, start_gateway
from tests.serving.loadgen import SteadyLoad

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}
WAIT_MS = 15_000


#: A monitor that fills every live section within seconds: two SLOs, 2 s forecast bins, and
#: a detector that scores after 15 points (defaults: 5 min bins, 100 points of warm-up).
LIVE_MONITOR = MonitorConfig.model_validate({
    "interval_s": 0.5,
    "slos": [{"deployment": "echo", "kind": "availability", "objective": 0.999},
             {"deployment": "echo", "name": "p99 under 100 ms", "kind": "latency",
              "objective": 0.99, "latency_threshold_ms": 100}],
    "forecast": {"step_s": 2, "horizon_s": 120, "trend_window_s": 30},
    "anomaly": {"params": {"history": 200, "shape_len": 4, "warmup": 15}},
})


@pytest.fixture(scope="module")
def open_server() -> Iterator[str]:
    """A gateway with one Echo deployment, no API keys and a fast live monitor."""
    gateway = Gateway(GatewaySettings(drain_timeout_s=5.0), [python_spec("echo", "Echo")],
                      monitor=LIVE_MONITOR)
    server = start_in_thread(GatewayApp(gateway))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A gateway whose registry holds keys: (url, an admin key)."""
    folder: Path = tmp_path_factory.mktemp("dashboard-keys")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    admin_key = registry.create_key("ops", frozenset({"admin"}))[0]
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    server = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(drain_timeout_s=5.0),
        control=control,
    )
    yield server.url, admin_key
    server.stop()
    registry.close()


def open_page(browser: Any, url: str) -> tuple[Any, Any, PageErrors]:
    """A fresh browser context and page at ``url``, recording console errors and exceptions."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors = PageErrors()
    page.on("console", lambda m: errors.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))
    page.goto(url, wait_until="load")
    return context, page, errors


def wait_until(check: Any, timeout_s: float = WAIT_MS / 1000) -> None:
    """Poll ``check()`` from Python until true (the page's CSP forbids Playwright's eval-based
    ``wait_for_function``)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {check.__doc__}")
        time.sleep(0.2)


def number_in(page: Any, selector: str) -> float | None:
    """The number a KPI shows (``"0.79ms"`` -> 0.79); ``None`` for the "–" of no value."""
    found = re.match(r"\s*(-?[0-9][0-9.]*)", page.inner_text(selector).replace(",", ""))
    return float(found.group(1)) if found else None


# ----- the files -----------------------------------------------------------------------------


def test_page_and_plotly_are_served_from_this_server(open_server: str) -> None:
    """/dashboard is HTML whose scripts come from this server only (a CSP forbids any other
    origin); plotly.js is the plotly package's bundled file, gzip-compressed when accepted."""
    page = httpx.get(f"{open_server}/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/plotly.min.js"></script>' in page.text
    assert '<script src="/dashboard/dashboard.js"></script>' in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert httpx.get(f"{open_server}/dashboard/").text == page.text

    script = httpx.get(f"{open_server}/dashboard/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("application/javascript")
    assert "/admin/monitor/snapshot" in script.text

    bundled = plotly_js_path()
    assert bundled is not None
    plain = httpx.get(f"{open_server}/dashboard/plotly.min.js", headers={"accept-encoding": ""})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.content == bundled.read_bytes()
    packed = httpx.get(f"{open_server}/dashboard/plotly.min.js",
                       headers={"accept-encoding": "gzip"})
    assert packed.headers["content-encoding"] == "gzip"
    assert int(packed.headers["content-length"]) < len(plain.content) / 2
    assert packed.content == plain.content  # httpx decodes the gzip body


def test_unknown_files_and_other_methods_get_json_errors(open_server: str) -> None:
    """Any other file under /dashboard is a 404 naming the path; a POST is a 405."""
    missing = httpx.get(f"{open_server}/dashboard/secrets.js")
    assert missing.status_code == 404
    assert missing.json()["error"]["field"] == "path"
    assert "/dashboard/secrets.js" in missing.json()["error"]["message"]
    posted = httpx.post(f"{open_server}/dashboard", content=b"x")
    assert posted.status_code == 405
    assert posted.json()["error"]["field"] == "method"


def test_page_needs_no_key_but_its_data_does(keyed_server: tuple[str, str]) -> None:
    """With keys configured, the static page is public while the admin data stays closed."""
    url, admin_key = keyed_server
    assert httpx.get(f"{url}/dashboard").status_code == 200
    assert httpx.get(f"{url}/dashboard/dashboard.js").status_code == 200
    refused = httpx.get(f"{url}/admin/deployments")
    assert refused.status_code == 401
    allowed = httpx.get(
        f"{url}/admin/deployments", headers={"authorization": f"Bearer {admin_key}"}
    )
    assert allowed.status_code == 200


# ----- in the browser ------------------------------------------------------------------------


@pytest.mark.slow
def test_dashboard_shows_live_values_that_change_under_load(
    browser: Any, open_server: str, artifacts: Path
) -> None:
    """The page loads without JS errors, shows the deployment with its version, and its
    requests/s figure rises from idle once bounded load is applied; while the load runs the
    live SLO table, the latency percentiles and the forecast band appear; a screenshot is
    kept (``test-artifacts/dashboard.png``)."""
    context, page, errors = open_page(browser, f"{open_server}/dashboard")
    try:
        page.wait_for_selector('#dep-echo h2:text("echo")', timeout=WAIT_MS)
        assert "v1" in page.inner_text("#versions-echo")
        wait_until(lambda: page.inner_text("#status-text") == "live")
        idle = number_in(page, "#kpi-echo-rps")
        assert idle is None or idle == 0.0

        with SteadyLoad(f"{open_server}/v2/models/echo/infer", TEXT, num_threads=4,
                        max_seconds=20) as load:
            wait_until(lambda: (number_in(page, "#kpi-echo-rps") or 0.0) > 5)
            page.wait_for_selector("#chart-echo-traffic .main-svg", timeout=WAIT_MS)
            page.wait_for_selector("#chart-echo-latency .main-svg", timeout=WAIT_MS)
            page.wait_for_selector("#chart-echo-forecast .main-svg", timeout=WAIT_MS)
            wait_until(lambda: number_in(page, "#kpi-echo-p99_ms") is not None)
            wait_until(lambda: "99.90%" in page.inner_text("#slos-echo"))
            # The forecaster has learnt bins under load (its first bins were idle).
            wait_until(lambda: page.eval_on_selector(
                "#chart-echo-forecast", "el => el.data[3].y[el.data[3].y.length - 1]") > 5)
            under_load = number_in(page, "#kpi-echo-rps")
            total = number_in(page, "#total-rps")
            slos = page.inner_text("#slos-echo")
            band = page.eval_on_selector("#chart-echo-forecast", "el => el.data.map(t => t.name)")
            page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
        assert load.statuses[200] > 0 and set(load.statuses) == {200}
        assert under_load is not None and under_load > 5
        assert total is not None and total > 5
        assert page.inner_text("#total-deployments") == "1"
        assert "p99 under 100 ms" in slos and "99.00%" in slos and "ok" in slos
        assert band == ["observed", "upper", "prediction band", "forecast"]
        assert page.inner_text("#cost-echo") == "$0.17 / h"  # one CPU replica, catalog price
        assert errors.all() == []
    finally:
        context.close()
    assert (artifacts / "dashboard.png").stat().st_size > 10_000


@pytest.mark.slow
def test_dashboard_asks_for_a_key_and_takes_one_from_the_url(
    browser: Any, keyed_server: tuple[str, str]
) -> None:
    """Without a key the page says it needs one; with ?key= it shows the deployment and
    drops the key from the address bar (it is kept in the browser's local storage)."""
    url, admin_key = keyed_server
    context, page, _ = open_page(browser, f"{url}/dashboard")
    try:
        page.wait_for_selector("#key-banner:not(.hidden)", timeout=WAIT_MS)
        assert page.query_selector("#dep-echo") is None

        page.goto(f"{url}/dashboard?key={admin_key}", wait_until="load")
        page.wait_for_selector('#dep-echo h2:text("echo")', timeout=WAIT_MS)
        assert "key=" not in page.url
        assert page.is_hidden("#key-banner")
        stored = page.evaluate("window.localStorage.getItem('aiscale.adminKey')")
        assert stored == admin_key
    finally:
        context.close()


def full_snapshot(now_s: float) -> dict[str, Any]:
    """A snapshot with every section filled, in the monitor endpoint's schema."""
    times = [now_s - 120 + 2 * i for i in range(61)]
    rps = [[t, 40.0 + 10.0 * ((i % 20) / 20)] for i, t in enumerate(times)]
    p99 = [[t, 30.0 + (90.0 if 50 <= i <= 53 else 0.0)] for i, t in enumerate(times)]
    horizon = [now_s + 300 * i for i in range(13)]
    return {
        "time": now_s,
        "deployments": [
            {
                "name": "search",
                "model": "minilm",
                "versions": [
                    {"version": "3", "weight": 0.75, "replicas": 3, "ready": 3},
                    {"version": "4", "weight": 0.25, "replicas": 1, "ready": 1},
                ],
                "series": {
                    "rps": rps,
                    "p50_ms": [[t, 12.0] for t in times],
                    "p99_ms": p99,
                    "error_rate": [[t, 0.002] for t in times],
                    "batch_size": [[t, 6.5] for t in times],
                    "replicas": [[t, 4.0] for t in times],
                    "queue_depth": [[t, 2.0] for t in times],
                },
                "anomalies": {"p99_ms": [[times[50], 0.93], [times[51], 0.88], [times[10], 0.1]]},
                "forecast": {
                    "t": horizon,
                    "mean": [50.0 + 2 * i for i in range(13)],
                    "lower": [40.0 + 2 * i for i in range(13)],
                    "upper": [60.0 + 2 * i for i in range(13)],
                },
                "capacity": {"saturates_in_s": 720.0,
                             "message": "at this trend the queue saturates in 12 minutes"},
                "slos": [
                    {"name": "availability", "objective": 0.999, "budget_remaining": 0.62,
                     "burn_rates": {"3600": 1.4, "300": 0.8}, "alerting": False},
                    {"name": "p99 under 100 ms", "objective": 0.99, "budget_remaining": 0.08,
                     "burn_rates": {"3600": 15.2, "300": 18.0}, "alerting": "page"},
                ],
                "rollout": {"baseline": "3", "canary": "4", "canary_percent": 25.0,
                            "steps": [1, 5, 25, 50, 100], "step_index": 2, "status": "running",
                            "reason": "canary within bounds"},
                "cost_per_hour_usd": 1.84,
            }
        ],
        "alerts": [
            {"id": "a1", "rule": "latency-burn", "deployment": "search", "severity": "page",
             "state": "firing", "since": now_s - 40, "message": "p99 SLO burning at 15x"},
            {"id": "a2", "rule": "traffic-anomaly", "deployment": "search",
             "severity": "ticket", "state": "resolved", "since": now_s - 900,
             "message": "traffic dropped"},
        ],
        "actions": [
            {"time": now_s - 30, "action": "scale_up", "deployment": "search",
             "cause": "latency-burn", "result": "replicas 3 -> 4"},
        ],
    }


@pytest.mark.slow
def test_dashboard_draws_every_section_of_a_full_snapshot(
    browser: Any, open_server: str, artifacts: Path
) -> None:
    """Given a snapshot with every section (a fixed file answered in place of the monitor
    endpoint), the page shows versions with weights, the forecast band, anomaly markers,
    SLO budgets, the capacity warning, the rollout, alerts, actions and cost, without errors."""
    snapshot = json.dumps(full_snapshot(time.time()))
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors = PageErrors()
    page.on("console", lambda m: errors.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))
    page.route(
        "**/admin/monitor/snapshot",
        lambda route: route.fulfill(status=200, content_type="application/json", body=snapshot),
    )
    try:
        page.goto(f"{open_server}/dashboard", wait_until="load")
        page.wait_for_selector("#chart-search-forecast .main-svg", timeout=WAIT_MS)
        assert page.inner_text("#versions-search") == "v3 · 75% · 3/3 ready\nv4 · 25% · 1/1 ready"
        assert page.inner_text("#cost-search") == "$1.84 / h"
        assert page.inner_text("#total-cost") == "$1.84"
        assert page.inner_text("#total-alerts") == "1"
        assert page.inner_text("#kpi-search-p99_ms") == "30.0ms"
        assert "saturates in 12 minutes" in page.inner_text("#capacity-search")
        assert "v3 → v4 at 25%" in page.inner_text("#rollout-search")
        slos = page.inner_text("#slos-search")
        assert "99.90%" in slos and "62.0%" in slos and "1h 15.2×" in slos and "page" in slos
        alerts = page.inner_text("#alerts")
        assert alerts.index("latency-burn") < alerts.index("traffic-anomaly")  # firing first
        assert "replicas 3 -> 4" in page.inner_text("#actions")
        # Two anomalies at or above 0.5 are marked on the latency chart; the 0.1 is not.
        markers = page.eval_on_selector(
            "#chart-search-latency",
            "el => el.data.filter(t => t.name === 'anomaly').map(t => t.x.length)",
        )
        assert markers == [2]
        band = page.eval_on_selector(
            "#chart-search-forecast", "el => el.data.map(t => t.name)"
        )
        assert band == ["observed", "upper", "prediction band", "forecast"]
        page.screenshot(path=str(artifacts / "dashboard-full.png"), full_page=True)
        assert errors.all() == []
    finally:
        context.close()


def idle_snapshot(now_s: float) -> dict[str, Any]:
    """A snapshot whose deployment served until a minute ago and is idle now: its latency
    series stops at the last busy point and every series misses 20 s of samples."""
    times = [now_s - 120 + 2 * i for i in range(61)]
    missing = set(range(15, 25))  # a monitor that did not sample (a restart): no points
    busy = [t for i, t in enumerate(times) if i < 30 and i not in missing]
    return {
        "time": now_s, "window_s": 900.0, "step_s": 2.0, "interval_s": 1.0,
        "deployments": [{
            "name": "search", "model": "minilm",
            "versions": [{"version": "3", "weight": 100.0, "replicas": 1, "ready": 1}],
            "series": {
                "rps": [[t, 40.0 if i < 30 else 0.0] for i, t in enumerate(times)
                        if i not in missing],
                "p50_ms": [[t, 12.0] for t in busy],
                "p99_ms": [[t, 30.0] for t in busy],
                "error_rate": [[t, 0.0] for i, t in enumerate(times) if i not in missing],
            },
            "latest": {"rps": 0.0, "p50_ms": None, "p99_ms": None, "error_rate": 0.0,
                       "batch_size": None, "replicas": 1.0, "queue_depth": 0.0},
            "anomalies": {}, "forecast": None,
            "capacity": {"saturates_in_s": None, "message": None},
            "slos": [], "rollout": None, "cost_per_hour_usd": 0.17,
        }],
        "gateway": {"unknown_model_requests": 1, "unknown_model_requests_in_window": 3},
        "alerts": [], "actions": [],
    }


@pytest.mark.slow
def test_dashboard_shows_an_idle_card_gaps_and_unknown_models(
    browser: Any, open_server: str
) -> None:
    """Given an idle deployment (a fixed snapshot answered in place of the monitor endpoint),
    its card shows "—" for the latencies and batch size the latest interval did not have
    (not the last busy figures), its lines break where samples are missing (a null between
    points more than 1.5 steps apart) instead of running across, and the header shows the
    requests that named an unknown model."""
    snapshot = json.dumps(idle_snapshot(time.time()))
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    errors = PageErrors()
    page.on("console", lambda m: errors.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.uncaught.append(str(exc)))
    page.route(
        "**/admin/monitor/snapshot",
        lambda route: route.fulfill(status=200, content_type="application/json", body=snapshot),
    )
    try:
        page.goto(f"{open_server}/dashboard", wait_until="load")
        page.wait_for_selector("#chart-search-latency .main-svg", timeout=WAIT_MS)
        for kpi in ("p50_ms", "p99_ms", "batch_size"):
            assert page.inner_text(f"#kpi-search-{kpi}") == "—"
        assert page.get_attribute('#dep-search [data-kpi="p99_ms"]', "title") == (
            "idle: no requests in the latest interval")
        assert page.inner_text("#kpi-search-rps") == "0.0"
        assert page.inner_text("#kpi-search-replicas") == "1"

        traffic = page.eval_on_selector("#chart-search-traffic", "el => el.data[0].y")
        assert traffic.count(None) == 1  # one break: the 20 s without samples
        gap = traffic.index(None)
        assert traffic[:gap] == [40.0] * 15 and len(traffic) == 51 + 1
        latency = page.eval_on_selector(
            "#chart-search-latency", "el => el.data.map(t => t.y.filter(v => v === null).length)")
        assert latency == [1, 1]  # p50 and p99: broken at the same gap
        observed = page.eval_on_selector("#chart-search-errors", "el => el.data[0].y")
        assert observed.count(None) == 1

        assert page.is_visible("#unknown-models")
        assert page.inner_text("#total-unknown-models") == "3"
        assert page.inner_text("#unknown-models-label") == "UNKNOWN-MODEL 404S / 15M"
        assert page.inner_text("#unknown-models-recent") == "1 in the last 1s"
        assert errors.all() == []
    finally:
        context.close()


@pytest.mark.slow
def test_live_card_goes_idle_and_counts_unknown_models(browser: Any, open_server: str) -> None:
    """Against the live monitor: once requests stop, the card's latencies turn to "—" within
    a few intervals rather than keeping the last busy figures; requests naming an unknown
    model (404) appear in the header's count."""
    before = httpx.get(f"{open_server}/admin/monitor/snapshot").json()["gateway"][
        "unknown_model_requests_in_window"]
    context, page, errors = open_page(browser, f"{open_server}/dashboard")
    try:
        page.wait_for_selector('#dep-echo h2:text("echo")', timeout=WAIT_MS)
        with httpx.Client(timeout=10) as client:

            def latency_shown() -> bool:
                """a latency on the busy card"""
                assert client.post(f"{open_server}/v2/models/echo/infer",
                                   json=TEXT).status_code == 200
                return number_in(page, "#kpi-echo-p99_ms") is not None

            wait_until(latency_shown)
            for _ in range(2):
                missing = client.post(f"{open_server}/v2/models/nope/infer", json=TEXT)
                assert missing.status_code == 404

        def is_idle() -> bool:
            """the idle card's p99 as a dash"""
            return bool(page.inner_text("#kpi-echo-p99_ms") == "—")

        wait_until(is_idle)
        assert page.inner_text("#kpi-echo-p50_ms") == "—"
        assert number_in(page, "#kpi-echo-rps") == 0.0
        wait_until(lambda: page.inner_text("#total-unknown-models") == str(before + 2))
        assert errors.all() == []
    finally:
        context.close()
