"""The GPU pool through a real ``aiscale serve``: a declared inventory of two 24 GB "L4"
devices, two teams with quotas, real replica processes that report the
``CUDA_VISIBLE_DEVICES`` they were started with, and the admin API and CLI on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from aiscale.cli import app

ROOT = Path(__file__).parent.parent.parent
L4_MB = 24_576
SHARE_MB = 12_288
#: Two L4s; team "vision" may hold one GPU, team "nlp" two.
POOL = {
    "discovery": "declared",
    "devices": [{"kind": "L4", "memory_mb": L4_MB, "count": 2}],
    "teams": [{"name": "vision", "max_gpus": 1}, {"name": "nlp", "max_gpus": 2}],
}
DEPLOYMENTS = [
    # One whole device for the vision team.
    {"name": "detector", "model": "visibledevices", "gpus": 1, "team": "vision", "num_threads": 1},
    # Two half-device replicas for nlp, packed on one device; a scale-up may wait 30 s.
    {
        "name": "embedder",
        "model": "visibledevices",
        "replicas": 2,
        "gpus": 0.5,
        "gpu_memory_mb": SHARE_MB,
        "team": "nlp",
        "gpu_wait_s": 30,
        "num_threads": 1,
    },
]


def text_request(text: str = "hi") -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.05)  # a poll interval, not a readiness guess


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    client: httpx.Client

    def visible_devices(self, deployment: str) -> str:
        response = self.client.post(f"/v2/models/{deployment}/infer", json=text_request())
        assert response.status_code == 200, response.text
        return str(response.json()["outputs"][0]["data"][0])

    def pool(self) -> dict[str, Any]:
        response = self.client.get("/admin/gpus")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def deployment(self, name: str) -> dict[str, Any]:
        return dict(self.client.get(f"/admin/deployments/{name}").json())

    def holders(self, device_id: str) -> list[dict[str, Any]]:
        device = next(d for d in self.pool()["devices"] if d["id"] == device_id)
        return list(device["holders"])


def start_serve(tmp_path: Path, pool: dict[str, Any], deployments: list[Any]) -> Served:
    config = tmp_path / "aiscale.yaml"
    config.write_text(yaml.safe_dump({"server": {"gpus": pool}, "deployments": deployments}))
    with (tmp_path / "serve.log").open("w") as log:
        process = _popen_serve(config, tmp_path, log)
    assert process.stdout is not None
    deadline = time.monotonic() + 90  # four replicas start; a shared 2-core machine is slow
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            url = found.group(1)
            return Served(url, process, httpx.Client(base_url=url, timeout=90))
    process.kill()
    process.wait(timeout=30)
    process.stdout.close()
    raise AssertionError(f"server did not start: {(tmp_path / 'serve.log').read_text()[-4000:]}")


def _popen_serve(config: Path, tmp_path: Path, log: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "aiscale.cli", "serve", "tests.models:VisibleDevices",
            "--num-threads", "1", "--no-capture", "--config", str(config),
            "--port", "0", "--data-dir", str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = start_serve(tmp_path, POOL, DEPLOYMENTS)
    yield server
    server.client.close()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=30)
    assert server.process.stdout is not None
    server.process.stdout.close()


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})


@pytest.mark.timeout(300)  # bounded by the deadlines above; typically 20-45 s
def test_pool_places_refuses_queues_and_releases(served: Served) -> None:
    """A whole GPU is held alone and shares pack on one device, each replica seeing only its
    own device; a scale-up past the team's quota and a deploy with no free capacity are
    refused with 409s naming team, quota and request; a replica that dies gives its share
    back to its replacement; a scale-up with ``gpu_wait_s`` waits in the queue (shown by
    ``GET /admin/gpus`` and ``aiscale gpus``) until another team scales down, and the time
    from its request to a serving replica is measured and shown."""
    s = served
    # ----- placement: CUDA_VISIBLE_DEVICES per replica --------------------------------------
    assert s.visible_devices("detector") == "0"
    assert s.visible_devices("embedder") == "1"
    # A CPU-only deployment must not see, and so not use, devices the pool hands out.
    assert s.visible_devices("visibledevices") == ""
    assert [(h["holder"], h["is_exclusive"], h["memory_mb"]) for h in s.holders("0")] == [
        ("detector/1", True, L4_MB)
    ]
    shares = s.holders("1")
    assert [(h["holder"], h["memory_mb"], h["is_serving"]) for h in shares] == [
        ("embedder/1", SHARE_MB, True),
        ("embedder/1", SHARE_MB, True),
    ]
    teams = {t["team"]: t for t in s.pool()["teams"]}
    assert teams["vision"]["used"] == {"gpus": 1.0, "memory_mb": L4_MB}
    assert teams["nlp"]["used"] == {"gpus": 1.0, "memory_mb": 2 * SHARE_MB}

    # ----- refusal: over the team's quota (admin API and CLI) ------------------------------
    refused = s.client.post("/admin/deployments/detector/scale", json={"replicas": 2})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["type"] == "GpuQuotaExceeded"
    assert error["field"] == "team"
    for part in ("team 'vision'", "quota of 1 GPUs", "holds 1 GPUs", "detector/1", "1 whole GPU"):
        assert part in error["message"], error["message"]
    assert s.deployment("detector")["replicas"]["wanted"] == 1  # nothing changed
    result = cli("scale", "detector", "2", "--url", s.url)
    assert result.exit_code == 1
    assert "error: server answered 409: team 'vision' is over its GPU quota" in result.stderr
    assert result.stderr.rstrip().endswith("[team]")

    # ----- refusal: no capacity free (a new deployment, before any replica starts) ---------
    body = {"name": "trainer", "model": "visibledevices", "gpus": 1, "team": "nlp"}
    refused = s.client.post("/admin/deployments", json=body)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["field"]) == ("GpuCapacityUnavailable", "gpus")
    assert "no GPU capacity for 1 replica(s) of trainer/1" in error["message"]
    assert "0 of 2 devices free" in error["message"]
    unknown = s.client.post("/admin/deployments", json={**body, "team": "nobody"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["field"] == "team"
    assert "team 'nobody' is not declared" in unknown.json()["error"]["message"]
    assert s.client.get("/admin/deployments/trainer").status_code == 404

    # ----- a replica that dies releases its share: the replacement gets it back ------------
    # Device 1 is full and device 0 is held whole, so the replacement can only start on
    # the share its dead predecessor held.
    old_pids = s.deployment("embedder")["replicas"]["pids"]
    old_grants = {h["grant_id"] for h in shares}
    os.kill(old_pids[0], signal.SIGKILL)
    wait_for(
        "the replacement replica",
        lambda: (r := s.deployment("embedder")["replicas"])["ready"] == 2
        and old_pids[0] not in r["pids"],
    )
    shares = s.holders("1")
    assert len(shares) == 2 and all(h["is_serving"] for h in shares)
    assert len(old_grants & {h["grant_id"] for h in shares}) == 1  # one old grant, one new
    assert s.visible_devices("embedder") == "1"

    # ----- queueing: a scale-up waits for capacity, granted on another's scale-down --------
    answers: list[httpx.Response] = []

    def scale_up() -> None:
        with httpx.Client(base_url=s.url, timeout=90) as client:
            answers.append(client.post("/admin/deployments/embedder/scale", json={"replicas": 3}))

    waiter = threading.Thread(target=scale_up)
    requested = time.monotonic()
    waiter.start()
    waiting = wait_for("a waiting GPU request", lambda: s.pool()["waiting"])
    assert [(w["holder"], w["team"], w["num_gpus"], w["memory_mb"]) for w in waiting] == [
        ("embedder/1", "nlp", 0.5, SHARE_MB)
    ]
    shown = cli("gpus", "--url", s.url)
    assert shown.exit_code == 0, shown.output
    assert "waiting" in shown.stdout and "embedder/1" in shown.stdout
    assert "waiting: none" not in shown.stdout
    as_json = json.loads(cli("gpus", "--url", s.url, "--json").stdout)
    assert as_json["waiting"][0]["holder"] == "embedder/1"
    assert s.deployment("embedder")["replicas"]["wanted"] == 2  # not yet scaled

    released_at = time.monotonic()
    down = s.client.post("/admin/deployments/detector/scale", json={"replicas": 0})
    assert down.status_code == 200, down.text
    waiter.join(timeout=90)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    granted = answers[0].json()["replicas"]
    assert (granted["ready"], granted["wanted"]) == (3, 3)
    after = s.pool()
    assert after["waiting"] == []
    assert [(h["holder"], h["memory_mb"]) for h in s.holders("0")] == [("embedder/1", SHARE_MB)]
    teams = {t["team"]: t for t in after["teams"]}
    assert teams["vision"]["used"] == {"gpus": 0.0, "memory_mb": 0}
    assert teams["nlp"]["used"] == {"gpus": 1.5, "memory_mb": 3 * SHARE_MB}
    # Measured from the request, so the queued replica's time covers its wait.
    serving = after["request_to_serving_s"]
    assert serving["count"] == 5  # detector, 2 embedders, the replacement, the queued one
    assert released_at - requested <= serving["last"] <= time.monotonic() - requested
    shown = cli("gpus", "--url", s.url)
    assert "waiting: none" in shown.stdout
    assert f"request to serving replica: 5 measured, last {serving['last']:.2f}s" in shown.stdout
    metrics = s.client.get("/metrics").text
    assert 'aiscale_gpus_request_to_serving_seconds_count{team="nlp"} 4.0' in metrics
    assert 'aiscale_gpus_team_gpus{team="nlp"} 1.5' in metrics
    print(f"\nrequest to serving: {serving}")
