"""The live autoscaler: a load step adds replicas, their removal follows the delay, and a
deployment scaled to zero answers its first request after a cold start."""

from __future__ import annotations

import time

import httpx

from aiscale.serving import BatchingSettings
from aiscale.serving.lane import AutoscalingSettings
from tests.serving.conftest import ServerFactory, python_spec
from tests.serving.loadgen import SteadyLoad

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


def replicas(url: str) -> dict[str, int]:
    return dict(httpx.get(f"{url}/admin/deployments/slow").json()["replicas"])


def wait_for_replicas(url: str, wanted: int, ready: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        state = replicas(url)
        if state["wanted"] == wanted and state["ready"] == ready:
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"replicas {replicas(url)} never reached wanted={wanted} ready={ready}")


def test_load_step_scales_up_and_back_down(serve: ServerFactory) -> None:
    """Six busy clients against a 50 ms model (target 1 request per replica) bring the
    deployment to its maximum of 3; without load it returns to 1 after the downscale delay,
    and no request fails on the way."""
    autoscaling = AutoscalingSettings(
        "reactive",
        0.2,
        {
            "target_ongoing_requests": 1.0,
            "min_replicas": 1,
            "max_replicas": 3,
            "upscale_delay_s": 0.4,
            "downscale_delay_s": 1.5,
            # The guard's ceiling follows the peak rate of the last window (60 s by default,
            # one start-up) and takes replicas away once a whole window is idle, even before
            # the rule's downscale delay; a window longer than the delay leaves the delay in
            # charge here. This test's clock is compressed like its delays.
            "rate_window_s": 2.0,
        },
    )
    spec = python_spec(
        "slow",
        "Slow",
        model_config={"delay_ms": 50},
        autoscaling=autoscaling,
        batching=BatchingSettings(max_batch_size=1, max_batch_delay_s=0.0),
    )
    url = serve(spec).url
    with SteadyLoad(f"{url}/v2/models/slow/infer", TEXT, num_threads=6) as load:
        wait_for_replicas(url, wanted=3, ready=3, timeout_s=30)
    idle_started = time.monotonic()
    wait_for_replicas(url, wanted=1, ready=1, timeout_s=30)
    assert time.monotonic() - idle_started >= 1.5 - 0.2  # not before the downscale delay
    assert set(load.statuses) == {200}, load.statuses
    metrics = httpx.get(f"{url}/metrics").text
    assert (
        'aiscale_autoscaler_decisions_total{deployment="slow",direction="up",version="1"}'
        in metrics
    )


def test_scale_to_zero_and_back_on_the_first_request(serve: ServerFactory) -> None:
    """An idle deployment goes to zero replicas yet stays ready; the next request is held
    while a replica starts, then answered (never failed), and the cold start is measured."""
    autoscaling = AutoscalingSettings(
        "reactive", 0.2, {"min_replicas": 0, "max_replicas": 1, "scale_to_zero_delay_s": 0.5}
    )
    url = serve(
        python_spec("slow", "Slow", model_config={"delay_ms": 1}, autoscaling=autoscaling)
    ).url
    wait_for_replicas(url, wanted=0, ready=0, timeout_s=30)
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    started = time.monotonic()
    response = httpx.post(f"{url}/v2/models/slow/infer", json=TEXT, timeout=60)
    cold_start_s = time.monotonic() - started
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == ["x"]
    assert cold_start_s > 0.05  # it really waited for a replica to start
    assert replicas(url)["ready"] == 1
    metrics = httpx.get(f"{url}/metrics").text
    assert 'aiscale_replica_start_seconds_count{deployment="slow",version="1"} 2.0' in metrics
