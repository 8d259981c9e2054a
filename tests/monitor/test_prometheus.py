"""Prometheus as the scale-out metrics history, for real: Debian's ``/usr/bin/prometheus``
scrapes a running ``aiscale serve`` every second, and the monitor reads its history back
through Prometheus's HTTP API (``monitor.prometheus_url``).

Both processes listen on port 0 and report the port they were given (aiscale on stdout,
Prometheus in its log: ``msg="Listening on" address=127.0.0.1:PORT``), so no port is picked
by bind-then-close. Prometheus learns the scrape target from a file (``file_sd_configs``)
written once aiscale is up; every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiscale.monitor.config import MonitorConfig
from aiscale.monitor.prometheus import PrometheusReader
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from tests.polling import wait_for
from tests.serving.conftest import python_spec

PROMETHEUS = Path("/usr/bin/prometheus")
ROOT = Path(__file__).resolve().parents[2]
AISCALE = [sys.executable, "-m", "aiscale.cli"]
TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
NUM_REQUESTS = 120
RATE_WINDOW_S = 4.0  # four scrape intervals, the least a rate() should span

pytestmark = pytest.mark.skipif(
    not PROMETHEUS.is_file(), reason="Debian's prometheus is not installed at /usr/bin/prometheus")



def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _start_prometheus(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on 127.0.0.1:0 with storage in ``folder``; returns it and its URL once ready."""
    config = folder / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: aiscale\n    scrape_interval: 1s\n"
        f"    file_sd_configs:\n      - files: ['{folder / 'targets.json'}']\n"
        "        refresh_interval: 1s\n")
    log = folder / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             "--web.listen-address=127.0.0.1:0", "--storage.tsdb.retention.time=1h"],
            stdout=sink, stderr=subprocess.STDOUT)

    def bound_port() -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited: {log.read_text()[-2000:]}")
        found = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', log.read_text())
        return found.group(1) if found else None

    try:
        url = f"http://127.0.0.1:{wait_for(bound_port, 30, 'prometheus listening')}"
        wait_for(lambda: _is_ok(f"{url}/-/ready"), 30, "prometheus ready")
    except BaseException:
        _stop(process)
        raise
    return process, url


def _is_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start_serve(folder: Path, prometheus_url: str) -> tuple[subprocess.Popen[str], str]:
    config = folder / "aiscale.yaml"
    config.write_text(json.dumps({"server": {"monitor": {
        "prometheus_url": prometheus_url, "prometheus_rate_window_s": RATE_WINDOW_S}}}))
    process = subprocess.Popen(
        [*AISCALE, "serve", "tests.models:Echo", "--port", "0", "--config", str(config),
         "--data-dir", str(folder / "state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            return process, found.group(1)
    _stop(process)
    raise AssertionError("aiscale serve did not start")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(aiscale URL, Prometheus URL): Prometheus scraping the server, the target up."""
    folder = tmp_path_factory.mktemp("prometheus")
    prometheus, prometheus_url = _start_prometheus(folder)
    serve: subprocess.Popen[str] | None = None
    try:
        serve, url = _start_serve(folder, prometheus_url)
        (folder / "targets.json").write_text(json.dumps(
            [{"targets": [url.removeprefix("http://")], "labels": {"instance": "gateway-1"}}]))

        def target_up() -> bool:
            body = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": "up"},
                             timeout=5).json()
            return any(r["value"][1] == "1" for r in body["data"]["result"])

        wait_for(target_up, 30, "the first scrape of aiscale")
        yield url, prometheus_url
    finally:
        if serve is not None:
            _stop(serve)
            assert serve.stdout is not None
            serve.stdout.close()
        _stop(prometheus)


def _served_counter(url: str) -> float:
    """``aiscale_gateway_requests_total`` of deployment echo, status 200, as /metrics serves it."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "aiscale_gateway_requests_total"
               and s.labels.get("deployment") == "echo" and s.labels.get("status") == "200")


def _instant(prometheus_url: str, promql: str) -> float | None:
    """One instant query through the monitor's own reader; ``None`` when it has no value."""

    async def read() -> float | None:
        reader = PrometheusReader(prometheus_url, timeout=httpx.Timeout(5.0))
        try:
            found = await reader.query(promql)
        finally:
            await reader.aclose()
        return found[0][1] if found else None

    return anyio.run(read)


def _history(url: str, series: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{url}/admin/monitor/history", timeout=30,
                         params={"deployment": "echo", "series": series, **params})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_history_read_from_prometheus_matches_what_was_served(stack: tuple[str, str]) -> None:
    """After a bounded burst of requests, Prometheus holds exactly the counter /metrics served,
    and the monitor's history (read through Prometheus's HTTP API, the default source once
    ``prometheus_url`` is set) gives the same request count, replicas and latencies as the
    embedded store that sampled the same server."""
    url, prometheus_url = stack
    reader_query = 'sum(aiscale_gateway_requests_total{deployment="echo",status="200"})'
    # One request first, scraped before the burst: a counter's first scraped value is its
    # start for rate() (Prometheus cannot know it began at 0), so the burst must come after.
    with httpx.Client(timeout=10) as client:
        assert client.post(f"{url}/v2/models/echo/infer", json=TEXT).status_code == 200
        wait_for(lambda: _instant(prometheus_url, reader_query) == 1.0, 30, "the first scrape")
        started = time.time()
        for _ in range(NUM_REQUESTS):
            assert client.post(f"{url}/v2/models/echo/infer", json=TEXT).status_code == 200
    served = _served_counter(url)
    assert served == NUM_REQUESTS + 1

    rate_query = ('sum(rate(aiscale_gateway_requests_total{deployment="echo"}'
                  f'[{RATE_WINDOW_S:g}s]))')
    wait_for(lambda: _instant(prometheus_url, reader_query) == served, 30,
          "Prometheus scraping the final count")
    # Once the instant rate is 0 the rate window has moved past the whole burst.
    wait_for(lambda: _instant(prometheus_url, rate_query) == 0.0, 30,
             "the burst leaving the window")

    step = 1.0
    since, until = started - 2 * RATE_WINDOW_S, time.time()
    remote = _history(url, "rps", since_s=since, until_s=until, step_s=step)
    assert remote["source"] == "prometheus" and remote["points"], (remote, time.time())
    # Each point is the mean rate over the RATE_WINDOW_S before it, so summed over points one
    # step apart (times the step) it counts every request once; Prometheus extrapolates a rate
    # to the window's edges, hence the tolerance.
    remote_total = sum(v for _, v in remote["points"]) * step
    assert remote_total == pytest.approx(NUM_REQUESTS, rel=0.25), remote["points"]

    replicas = _history(url, "replicas", since_s=since, until_s=until, step_s=step)
    assert replicas["source"] == "prometheus"
    assert {v for _, v in replicas["points"]} == {1.0}

    # The embedded store's points are whole-second bins: the burst's first bin can start up
    # to a second before ``started`` (the one request before it lies further back, behind
    # the wait for the first scrape, and counts at most once more).
    local = _history(url, "rps", since_s=started - 1.5, until_s=until, step_s=step,
                     source="local")
    local_total = sum(v for _, v in local["points"]) * step
    assert local_total == pytest.approx(NUM_REQUESTS, rel=0.1), local["points"]

    remote_p50 = [v for _, v in _history(url, "p50_ms", since_s=since, until_s=until,
                                         step_s=step)["points"]]
    local_p50 = [v for _, v in _history(url, "p50_ms", since_s=since, until_s=until,
                                        step_s=step, source="local")["points"]]
    assert remote_p50 and local_p50
    # The same histogram buckets, read two ways: medians agree to within a bucket.
    assert max(remote_p50) < 4 * max(local_p50) + 5.0


def test_an_unreachable_prometheus_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    """With ``prometheus_url`` naming a port nobody listens on, the server says so in its log
    at start-up and a history read is an error that names the URL and the setting
    (502 ``PrometheusError``), not a bare connection error or an empty answer; the embedded store
    still answers with ``source=local``."""
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens there on a test box
    gateway = Gateway(GatewaySettings(drain_timeout_s=5.0), [python_spec("echo", "Echo")],
                      monitor=MonitorConfig(prometheus_url=dead))
    server = start_in_thread(GatewayApp(gateway))
    try:
        wait_for(lambda: any("cannot reach Prometheus at http://127.0.0.1:9" in r.getMessage()
                          for r in caplog.records if r.name == "aiscale.monitor.live"), 30,
              "the start-up warning")
        response = httpx.get(f"{server.url}/admin/monitor/history", timeout=30,
                             params={"deployment": "echo", "series": "rps"})
        local = httpx.get(f"{server.url}/admin/monitor/history", timeout=30,
                          params={"deployment": "echo", "series": "rps", "source": "local"})
    finally:
        server.stop()
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["type"] == "PrometheusError" and error["field"] == "prometheus_url"
    assert f"cannot reach Prometheus at {dead} (monitor.prometheus_url)" in error["message"]
    assert local.status_code == 200 and local.json()["source"] == "local"
