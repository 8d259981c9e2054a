"""Replica crashes and scaling under steady load: explicit failures only, none when scaling."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from aiscale.serving import BatchingSettings
from tests.serving.conftest import ServerFactory, python_spec
from tests.serving.loadgen import SteadyLoad

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


def replicas_of(url: str, name: str) -> dict[str, object]:
    return dict(httpx.get(f"{url}/admin/deployments/{name}").json()["replicas"])


def wait_for(predicate: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


def wait_requests(load: SteadyLoad, count: int) -> None:
    wait_for(lambda: sum(load.statuses.values()) >= count, 30)


@pytest.mark.parametrize("max_retries", [0, 1])
def test_kill_replica_under_load(serve: ServerFactory, max_retries: int) -> None:
    """kill -9 of one replica: the server keeps serving, only that replica's in-flight requests
    fail (503 naming the exit), or none when a retry is allowed, and a new replica replaces it."""
    batching = BatchingSettings(max_batch_size=4, max_batch_delay_s=0.005, max_retries=max_retries)
    spec = python_spec(
        "slow", "Slow", model_config={"delay_ms": 100}, replicas=2, batching=batching
    )
    url = serve(spec).url
    with SteadyLoad(f"{url}/v2/models/slow/infer", TEXT, num_threads=8) as load:
        wait_requests(load, 20)
        before = replicas_of(url, "slow")
        victim = int(before["pids"][0])  # type: ignore[index]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                replicas_of(url, "slow")["ready"] == 2
                and victim not in replicas_of(url, "slow")["pids"]
            ),
            30,
        )  # type: ignore[operator]
        served_after = sum(load.statuses.values())
        wait_requests(load, served_after + 20)
    assert set(load.statuses) <= {200, 503}, load.statuses
    failed = load.statuses[503]
    if max_retries:
        assert failed == 0, load.messages
    else:
        assert failed <= 4, load.statuses  # at most one batch: the dead replica's in-flight work
        assert all("exited with code -9" in m for m in load.messages), load.messages
    metrics = httpx.get(f"{url}/metrics").text
    assert 'aiscale_replica_restarts_total{deployment="slow",version="1"} 1.0' in metrics


def test_scale_up_and_down_under_load_fails_nothing(serve: ServerFactory) -> None:
    """Scaling 1 → 2 → 1 under steady load fails no request."""
    spec = python_spec("slow", "Slow", model_config={"delay_ms": 20}, replicas=1)
    url = serve(spec).url
    with SteadyLoad(f"{url}/v2/models/slow/infer", TEXT, num_threads=6) as load:
        wait_requests(load, 20)
        up = httpx.post(f"{url}/admin/deployments/slow/scale", json={"replicas": 2}, timeout=60)
        assert up.status_code == 200 and up.json()["replicas"]["ready"] == 2
        count = sum(load.statuses.values())
        wait_requests(load, count + 30)
        down = httpx.post(f"{url}/admin/deployments/slow/scale", json={"replicas": 1}, timeout=60)
        assert down.status_code == 200 and down.json()["replicas"]["ready"] == 1
        count = sum(load.statuses.values())
        wait_requests(load, count + 30)
    assert set(load.statuses) == {200}, (load.statuses, load.messages[:3])
