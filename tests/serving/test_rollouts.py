"""Progressive rollouts end to end: real gateway, real replicas, real registry (SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiscale.config import DeploymentConfig
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl, rollout_history
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.server import ThreadedServer
from aiscale.serving.specs import spec_from_config
from tests.serving.loadgen import SteadyLoad

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
FAST = {"interval_s": 0.3, "min_step_duration_s": 0.6, "min_requests": 150}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SqlRegistry]:
    store = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    for version, cls, config in [
        ("1", "Fail", {"error_rate": 0.0}),
        ("2", "Fail", {"error_rate": 0.05, "seed": 2}),
        ("3", "Fail", {"error_rate": 0.0, "seed": 3}),
        ("4", "Slow", {"delay_ms": 8}),
        ("5", "Slow", {"delay_ms": 16}),
    ]:
        store.register_version(
            "m", runtime="python", uri=f"tests.models:{cls}", config=config, version=version
        )
    yield store
    store.close()


def serve_model(
    registry: SqlRegistry, tmp_path: Path, version: str, max_batch_size: int = 1
) -> ThreadedServer:
    control = RegistryControl(registry, FsspecArtifactStore(tmp_path / "artifacts"))
    config = DeploymentConfig.model_validate(
        {
            "name": "m",
            "model": "m",
            "version": version,
            "num_threads": 1,
            "batching": {"max_batch_size": max_batch_size, "max_batch_delay_ms": 0},
        }
    )
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [spec_from_config(config, control.resolve_version("m", version))],
        control=control,
    )
    gateway.configs["m"] = config
    control.save_deployment(config)
    return start_in_thread(GatewayApp(gateway))


def start_rollout(url: str, version: str, **options: Any) -> dict[str, Any]:
    body = {"version": version, "steps": [10, 50, 100], **FAST, **options}
    response = httpx.post(f"{url}/admin/deployments/m/rollout", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_status(url: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = httpx.get(f"{url}/admin/deployments/m/rollout").json()
        if info["status"] in statuses:
            return dict(info)
        time.sleep(0.1)
    raise TimeoutError(f"rollout still {info['status']}: {info['reason']}")


def served_by(url: str, version: str) -> int:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == "aiscale_gateway_requests":
            total += sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels["version"] == version
            )
    return int(total)


@pytest.mark.parametrize(("bad", "why"), [("2", "error_rate"), ("5", "latency")])
def test_bad_canary_is_rolled_back(
    registry: SqlRegistry, tmp_path: Path, bad: str, why: str
) -> None:
    """A version failing 5% of requests, or 2x slower, is rolled back automatically; the number
    of requests it served first is bounded, and the baseline serves everything afterwards."""
    # Latency is compared as users see it, queueing included: the load stays below what one
    # replica of the baseline serves, so the comparison is of the versions, not of their queues.
    baseline = "4" if why == "latency" else "1"
    server = serve_model(registry, tmp_path, baseline, max_batch_size=8 if why == "latency" else 1)
    try:
        with SteadyLoad(
            f"{server.url}/v2/models/m/infer", TEXT, num_threads=2 if why == "latency" else 6
        ) as load:
            start_rollout(server.url, bad)
            info = wait_status(server.url, {"rolled_back", "promoted"})
        assert info["status"] == "rolled_back", info["reason"]
        assert "canary is worse" in info["reason"]
        served = served_by(server.url, bad)
        assert 150 <= served <= 3000, served
        described = httpx.get(f"{server.url}/admin/deployments/m").json()
        assert described["version"] == baseline and list(described["versions"]) == [baseline]
        if why == "latency":
            assert set(load.statuses) == {200}
    finally:
        server.stop()
    history = rollout_history(registry, "m")
    verdicts = [d["verdict"] for d in history["rollouts"][0]["decisions"]]
    assert verdicts[-1] == "rollback"
    assert history["traffic"][-1]["split"]["weights"] == {baseline: 100.0}


def test_identical_canary_is_promoted_through_every_step_without_failures(
    registry: SqlRegistry, tmp_path: Path
) -> None:
    """An identical version passes every step under steady load, with zero failed requests,
    and ends as the deployment's version."""
    server = serve_model(registry, tmp_path, "1")
    try:
        with SteadyLoad(f"{server.url}/v2/models/m/infer", TEXT, num_threads=6) as load:
            start_rollout(server.url, "3")
            info = wait_status(server.url, {"rolled_back", "promoted"}, timeout_s=90)
        assert info["status"] == "promoted", info["reason"]
        assert set(load.statuses) == {200}, load.statuses
        described = httpx.get(f"{server.url}/admin/deployments/m").json()
        assert described["version"] == "3" and list(described["versions"]) == ["3"]
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'aiscale_rollout_decisions_total{deployment="m",verdict="promote"}' in metrics
        assert 'aiscale_traffic_share_percent{deployment="m",version="3"} 100.0' in metrics
    finally:
        server.stop()
    history = rollout_history(registry, "m")
    splits = [t["split"]["weights"] for t in history["traffic"]]
    assert splits == [{"1": 90.0, "3": 10.0}, {"1": 50.0, "3": 50.0}, {"3": 100.0}]
    assert registry.get_deployment("m").version == "3"


def test_restart_mid_rollout_resumes(registry: SqlRegistry, tmp_path: Path) -> None:
    """A server restarted mid-rollout picks the rollout up at the step it was at."""
    server = serve_model(registry, tmp_path, "1")
    start_rollout(server.url, "3", steps=[20, 100], min_step_duration_s=3600)
    server.stop()
    restarted = serve_model(registry, tmp_path, "1")
    try:
        info = httpx.get(f"{restarted.url}/admin/deployments/m/rollout").json()
        assert (
            info["status"] == "running" and info["canary"] == "3" and info["canary_percent"] == 20
        )
        versions = {
            httpx.post(f"{restarted.url}/v2/models/m/infer", json=TEXT).headers["x-aiscale-version"]
            for _ in range(60)
        }
        assert versions == {"1", "3"}
        paused = httpx.post(f"{restarted.url}/admin/deployments/m/rollout/pause").json()
        assert paused["status"] == "paused"
        aborted = httpx.post(f"{restarted.url}/admin/deployments/m/rollout/abort").json()
        assert aborted["status"] == "aborted"
        assert (
            httpx.post(f"{restarted.url}/v2/models/m/infer", json=TEXT).headers["x-aiscale-version"]
            == "1"
        )
    finally:
        restarted.stop()
