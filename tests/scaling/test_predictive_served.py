"""Predictive scaling on a real gateway: with a short season, a load step that comes back
every season is met by replicas the autoscaler started before it, from the arrival history
it keeps; the reactive policy starts them only once the step is there."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from aiscale.serving import BatchingSettings
from aiscale.serving.lane import AutoscalingSettings, DeploymentSpec
from aiscale.serving.server import ThreadedServer
from tests.serving.conftest import python_spec, start_gateway

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
SEASON_S = 12.0
STEP_AT_S, STEP_FOR_S = 6.0, 3.0
BASE_PER_S, PEAK_PER_S = 4.0, 12.0
#: Two seasons, up to the end of the second step.
DURATION_S = SEASON_S + STEP_AT_S + STEP_FOR_S
#: A 100 ms model, one request per replica at a time: one replica serves 10/s at most.
REACTIVE = {
    "target_ongoing_requests": 1.0,
    "min_replicas": 1,
    "max_replicas": 3,
    "upscale_delay_s": 0.5,
    "downscale_delay_s": 2.0,
}
#: The platform's guard on both, on this test's compressed clock: it judges demand over the
#: last 2 s (a start-up time), not over its default minute, which spans two seasons here.
GUARD = {"rate_window_s": 2.0}
PREDICTIVE = {
    **GUARD,
    "reactive": REACTIVE,
    "season_s": SEASON_S,
    "startup_s": 2.0,
    "lookahead_s": 1.0,
    "level_window_s": 2.0,
    # The first season has only a trend to go on; its misses must not switch forecasts off.
    "max_forecast_error": 100.0,
}


def rate_at(t_s: float) -> float:
    return PEAK_PER_S if STEP_AT_S <= t_s % SEASON_S < STEP_AT_S + STEP_FOR_S else BASE_PER_S


@dataclass
class PacedLoad:
    """Open loop: a request to every url at each scheduled time, from a bounded thread pool,
    for ``DURATION_S``; answers are counted, never awaited by the schedule."""

    urls: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    started_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _clients: list[httpx.Client] = field(default_factory=list)

    def _post(self, url: str) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=30)
            with self._lock:
                self._clients.append(client)
        try:
            status = client.post(url, json=TEXT).status_code
        except httpx.TransportError:
            status = 0
        with self._lock:
            self.statuses[status] += 1

    def run(self) -> None:
        pause = threading.Event()
        with ThreadPoolExecutor(max_workers=48) as pool:
            self.started_at = time.time()
            start = time.monotonic()
            t = 0.0
            while t < DURATION_S:
                pause.wait(max(0.0, start + t - time.monotonic()))  # pacing, not readiness
                for url in self.urls:
                    pool.submit(self._post, url)
                t += 1.0 / rate_at(t)
        for client in self._clients:
            client.close()


@dataclass(frozen=True)
class Decision:
    t_s: float
    deployment: str
    num_before: int
    num_after: int
    reason: str


def spec(name: str, policy: str, knobs: Mapping[str, object]) -> DeploymentSpec:
    return python_spec(
        name,
        "Slow",
        model_config={"delay_ms": 100},
        autoscaling=AutoscalingSettings(policy, 0.5, dict(knobs)),
        batching=BatchingSettings(max_batch_size=1, max_batch_delay_s=0.0),
    )


@pytest.fixture
def server() -> Iterator[ThreadedServer]:
    """One gateway serving the same model twice: ``pred`` (predictive), ``reac`` (reactive)."""
    started = start_gateway(
        spec("pred", "predictive", PREDICTIVE), spec("reac", "reactive", {**REACTIVE, **GUARD})
    )
    yield started
    started.stop()


@pytest.fixture
def decisions(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The autoscalers' decision log and the gateway's scale log (written once replicas are
    up), which the test reads back."""
    caplog.set_level(logging.INFO, logger="aiscale.scaling.controller")
    caplog.set_level(logging.INFO, logger="aiscale.serving.gateway")
    return caplog


def test_predictive_adds_replicas_before_a_seasonal_step_and_reactive_after(
    server: ThreadedServer, decisions: pytest.LogCaptureFixture
) -> None:
    """From the second season on, the predictive autoscaler asks for more replicas before
    the step arrives, and its log says a seasonal forecast caused it; the reactive one, on
    the same load, asks only after the step has started. No request fails either way."""
    url = server.url
    load = PacedLoad([f"{url}/v2/models/pred/infer", f"{url}/v2/models/reac/infer"])
    load.run()

    def logged(message_start: str) -> list[Decision]:
        found = []
        for record in decisions.records:
            if not record.msg.startswith(message_start):
                continue
            args: tuple[Any, ...] = tuple(record.args or ())
            name, _version, before, after, reason = args
            found.append(
                Decision(record.created - load.started_at, name, before, after, str(reason))
            )
        return found

    ups = [d for d in logged("autoscaler %s version %s") if d.num_after > d.num_before]
    ready = [d for d in logged("scaled %s version %s") if d.num_after > d.num_before]
    step_s = SEASON_S + STEP_AT_S
    pred = [d for d in ups if d.deployment == "pred" and d.t_s >= SEASON_S]
    reac = [d for d in ups if d.deployment == "reac" and d.t_s >= SEASON_S]
    pred_ready = [d.t_s for d in ready if d.deployment == "pred" and d.t_s >= SEASON_S]
    reac_ready = [d.t_s for d in ready if d.deployment == "reac" and d.t_s >= SEASON_S]
    summary = (
        f"step at {step_s:.1f}s; predictive asked at {[round(d.t_s, 2) for d in pred]} "
        f"({[d.reason for d in pred]}), ready at {[round(t, 2) for t in pred_ready]}; "
        f"reactive asked at {[round(d.t_s, 2) for d in reac]}, "
        f"ready at {[round(t, 2) for t in reac_ready]}"
    )
    print(summary)
    assert pred and pred[0].t_s < step_s, summary
    assert "seasonal" in pred[0].reason and "forecast" in pred[0].reason, summary
    assert reac and reac[0].t_s >= step_s, summary
    assert set(load.statuses) == {200}, load.statuses
