"""Traffic policy at the gateway: weighted sticky split, forced versions, shadow traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiscale.config import DeploymentConfig
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.server import ThreadedServer
from aiscale.serving.specs import spec_from_config

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    folder: Path = tmp_path_factory.mktemp("routing")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    registry.register_version("m", runtime="python", uri="tests.models:Echo", version="1")
    registry.register_version("m", runtime="python", uri="tests.models:Echo", version="2")
    registry.register_version("m", runtime="python", uri="tests.models:Fail", version="3")
    registry.set_alias("m", "staging", "2")
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    config = DeploymentConfig(name="m", model="m", version="1", num_threads=1)
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [spec_from_config(config, control.resolve_version("m", "1"))],
        control=control,
    )
    running = start_in_thread(GatewayApp(gateway))
    for version in ("2", "3"):
        response = httpx.post(
            f"{running.url}/admin/deployments/m/versions", json={"version": version}, timeout=60
        )
        assert response.status_code == 200, response.text
    yield running
    running.stop()
    registry.close()


def split(url: str, weights: dict[str, float], **shadow: object) -> None:
    response = httpx.put(f"{url}/admin/deployments/m/split", json={"weights": weights, **shadow})
    assert response.status_code == 200, response.text


def version_for(client: httpx.Client, url: str, user: str) -> str:
    response = client.post(f"{url}/v2/models/m/infer", json=TEXT, headers={"x-user-id": user})
    assert response.status_code == 200
    return response.headers["x-aiscale-version"]


def test_sticky_users_move_only_towards_the_growing_version(server: ThreadedServer) -> None:
    """The same user key always lands on the same version; raising version 2's weight moves
    users from 1 to 2 only, never back."""
    users = [f"user-{i}" for i in range(400)]
    with httpx.Client() as client:
        split(server.url, {"1": 80, "2": 20})
        before = {u: version_for(client, server.url, u) for u in users}
        assert before == {u: version_for(client, server.url, u) for u in users}
        assert 40 <= sum(v == "2" for v in before.values()) <= 120
        split(server.url, {"1": 50, "2": 50})
        after = {u: version_for(client, server.url, u) for u in users}
    assert all(after[u] == "2" for u in users if before[u] == "2")
    assert sum(v == "2" for v in after.values()) > sum(v == "2" for v in before.values())
    split(server.url, {"1": 100})


def test_header_forces_a_version_or_alias(server: ThreadedServer) -> None:
    """x-aiscale-version (a version or an alias) overrides the split; an unknown one is a 404."""
    split(server.url, {"1": 100})

    def post(value: str) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v2/models/m/infer", json=TEXT, headers={"x-aiscale-version": value}
        )

    assert post("2").headers["x-aiscale-version"] == "2"
    assert post("staging").headers["x-aiscale-version"] == "2"
    missing = post("9")
    assert missing.status_code == 404 and missing.headers["x-aiscale-error-field"] == "version"
    assert (
        httpx.post(f"{server.url}/v2/models/m/versions/2/infer", json=TEXT).headers[
            "x-aiscale-version"
        ]
        == "2"
    )


def test_shadow_never_fails_the_primary_answer(server: ThreadedServer) -> None:
    """All traffic mirrored to a version that always fails: every client answer is still 200
    from the primary, and the shadow's failures are counted on its own version."""
    split(server.url, {"1": 100}, shadow_version="3", shadow_fraction=1.0)
    with httpx.Client() as client:
        responses = [client.post(f"{server.url}/v2/models/m/infer", json=TEXT) for _ in range(50)]
    assert {r.status_code for r in responses} == {200}
    assert {r.headers["x-aiscale-version"] for r in responses} == {"1"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server.url}/admin/deployments/m/stats").json()["versions"]
        if stats["3"]["num_errors"] >= 50:
            break
        time.sleep(0.05)
    assert stats["3"]["num_errors"] == stats["3"]["num_requests"] >= 50
    split(server.url, {"1": 100}, shadow_version="2", shadow_fraction=1.0)
    with httpx.Client() as client:
        for _ in range(30):
            client.post(f"{server.url}/v2/models/m/infer", json=TEXT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        divergence = httpx.get(f"{server.url}/admin/deployments/m/stats").json()["versions"]["2"][
            "metrics"
        ]
        if divergence.get("shadow_divergence", {}).get("num_samples", 0) >= 30:
            break
        time.sleep(0.05)
    assert divergence["shadow_divergence"]["mean"] == 0.0  # identical answers
    split(server.url, {"1": 100})


def test_bad_splits_are_rejected(server: ThreadedServer) -> None:
    """Weights that do not sum to 100 or name an undeployed version: 400 naming the field."""
    bad = httpx.put(f"{server.url}/admin/deployments/m/split", json={"weights": {"1": 60, "2": 30}})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "weights"
    missing = httpx.put(f"{server.url}/admin/deployments/m/split", json={"weights": {"9": 100}})
    assert missing.status_code == 400 and "9" in missing.json()["error"]["message"]


def test_experiment_report_from_a_live_split(server: ThreadedServer, tmp_path: Path) -> None:
    """`aiscale experiment report` reads a running A/B split and writes tables, HTML and plots."""
    import subprocess
    import sys

    split(server.url, {"1": 50, "2": 50})
    with httpx.Client() as client:
        for i in range(200):
            version_for(client, server.url, f"u{i}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiscale.cli",
            "experiment",
            "report",
            "m",
            "--url",
            server.url,
            "--out",
            str(tmp_path / "report"),
            "--baseline",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    split(server.url, {"1": 100})
    assert result.returncode == 0, result.stderr
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.html", "report.md", "report.json", "latency.png", "errors.png"} <= written
    assert (tmp_path / "report" / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert "Mann-Whitney" in (tmp_path / "report" / "report.md").read_text()
