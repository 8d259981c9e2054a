"""The rolling-window data-quality check in a running gateway: a deployment's ``quality:``
section is checked against its recent traffic, the report is served, the metrics and the
monitor's ``data_quality_failed`` signal follow it, and a bad section is refused at load."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aiscale.config import AiscaleConfig, parse_config
from aiscale.errors import ConfigError
from aiscale.registry.records import VersionRecord
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.server import ThreadedServer
from aiscale.serving.specs import spec_from_config
from tests.polling import wait_for

#: From the first out-of-range request to the failed report, and to the firing alert: one
#: check interval (0.2 s) and one monitor tick (0.2 s) are the design; the bound is loose for
#: a shared, busy 2-core machine.
FAIL_BOUND_S = 5.0
WINDOW_S = 2.0
EXPECTATIONS = {"columns": {"input_0": {"type": "number", "min_value": 0, "max_value": 10},
                            "output": {"type": "number"}}}


def _config(quality: dict[str, Any]) -> dict[str, Any]:
    return {
        "server": {"monitor": {"interval_s": 0.2, "group_wait_s": 0, "rules": [
            {"name": "bad-data", "signal": "data_quality_failed", "threshold": 1,
             "summary": "served data breaks its expectations"}]}},
        "deployments": [
            {"name": "sum", "model": "sum", "num_threads": 1, "quality": quality},
            {"name": "plain", "model": "sum", "num_threads": 1},
        ],
    }


def _gateway(config: AiscaleConfig) -> Gateway:
    """The gateway ``aiscale serve`` would build from ``config``, with the tiny ``Sum`` model
    as the registry's version of every deployment."""
    version = VersionRecord(model="sum", version="1", runtime="python", uri="tests.models:Sum",
                            artifact_digest=None, config={}, metadata={}, schema=None,
                            created_at=datetime.now(UTC))
    return Gateway(GatewaySettings(drain_timeout_s=5.0),
                   [spec_from_config(d, version) for d in config.deployments],
                   metrics_registry=CollectorRegistry(), monitor=config.server.monitor)


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    config = parse_config(_config({"expectations": EXPECTATIONS, "window_s": WINDOW_S,
                                   "interval_s": 0.2, "max_examples": 1000}))
    started = start_in_thread(GatewayApp(_gateway(config)))
    yield started
    started.stop()


def _infer(client: httpx.Client, url: str, first: float, name: str = "sum") -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64",
                        "data": [first, 1.0]}]}
    response = client.post(f"{url}/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text



def test_out_of_range_traffic_fails_the_window_and_fires_the_alert(
    server: ThreadedServer,
) -> None:
    """In-range traffic passes; within FAIL_BOUND_S of out-of-range traffic the report fails
    naming the check, the gauge counts it and the ``data_quality_failed`` rule fires; once
    the bad rows leave the window (WINDOW_S) the report passes again."""
    url = server.url
    with httpx.Client(timeout=10) as client:
        def report() -> dict[str, Any]:
            response = client.get(f"{url}/admin/deployments/sum/quality")
            assert response.status_code == 200, response.text
            return dict(response.json())

        for value in range(10):
            _infer(client, url, float(value))
        passed = wait_for(lambda: (r := report())["is_passed"] and r["num_rows"] >= 10 and r,
                           FAIL_BOUND_S, "a passing report")
        assert passed["deployment"] == "sum" and passed["window_s"] == WINDOW_S
        assert passed["failed"] == [] and "input_0.range" in [c["name"] for c in passed["checks"]]
        assert not client.get(f"{url}/admin/monitor/alerts").json()["alerts"]

        injected = time.time()  # wall clock: checked_at_s and the alert's since are wall clock
        for _ in range(3):
            _infer(client, url, 50.0)
        failed = wait_for(lambda: (r := report())["is_passed"] is False and r, FAIL_BOUND_S,
                           "a failed report")
        report_s = failed["checked_at_s"] - injected
        assert failed["failed"] == ["input_0.range"]
        (range_check,) = [c for c in failed["checks"] if c["name"] == "input_0.range"]
        assert range_check["num_failing"] == 3 and range_check["examples"][0]["value"] == "50.0"
        metrics = client.get(f"{url}/metrics").text
        assert 'aiscale_data_quality_checks_failed{deployment="sum"} 1.0' in metrics
        assert 'aiscale_data_quality_checks_total{deployment="sum",result="fail"}' in metrics

        alert = wait_for(lambda: [a for a in client.get(f"{url}/admin/monitor/alerts")
                                   .json()["alerts"] if a["state"] == "firing"],
                          FAIL_BOUND_S, "the data-quality alert")[0]
        alert_s = alert["since"] - injected
        assert alert["rule"] == "bad-data" and alert["deployment"] == "sum"
        print(f"\nout-of-range traffic: failed report after {report_s:.2f} s, alert firing "
              f"after {alert_s:.2f} s (bound {FAIL_BOUND_S:g} s)")
        assert 0 < report_s <= FAIL_BOUND_S and 0 < alert_s <= FAIL_BOUND_S

        def passes_again() -> bool:
            _infer(client, url, 1.0)
            return report()["is_passed"] is True

        wait_for(passes_again, WINDOW_S + FAIL_BOUND_S, "the window passing again")


def test_quality_report_errors_name_the_cause(server: ThreadedServer) -> None:
    """An unknown deployment is 404; one without a quality section is 409 naming the field."""
    with httpx.Client(timeout=10) as client:
        unknown = client.get(f"{server.url}/admin/deployments/nope/quality")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "NotFound"
        plain = client.get(f"{server.url}/admin/deployments/plain/quality")
        assert plain.status_code == 409
        assert plain.json()["error"]["field"] == "quality"
        assert "no quality section" in plain.json()["error"]["message"]
        wrong_method = client.post(f"{server.url}/admin/deployments/sum/quality")
        assert wrong_method.status_code == 405


@pytest.mark.parametrize(("quality", "field", "words"), [
    ({"expectations": {"columns": {"input_0": {"type": "number", "min_value": 5,
                                               "max_value": 1}}}},
     "deployments.0.quality.expectations.columns.input_0.min_value", "above max_value"),
    ({"expectations": {"columns": {"input_0": {"type": "colour"}}}},
     "deployments.0.quality.expectations.columns.input_0.type", "must be one of"),
    ({"expectations": {"colums": {}}}, "deployments.0.quality.expectations.colums",
     "unknown key"),
    ({"expectations": EXPECTATIONS, "window_s": 0}, "deployments.0.quality.window_s",
     "greater than 0"),
    ({"expectations": EXPECTATIONS, "windw_s": 30}, "deployments.0.quality.windw_s",
     "Extra inputs"),
    ({"window_s": 30}, "deployments.0.quality.expectations", "Field required"),
])
def test_bad_quality_config_is_refused_with_its_path(
    quality: dict[str, Any], field: str, words: str
) -> None:
    """A bad ``quality:`` section rejects the file, naming the dotted path of the field."""
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(quality))
    assert caught.value.field == field
    assert words in caught.value.message and caught.value.message.startswith(field)
