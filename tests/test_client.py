"""``aiscale.serve()`` and ``aiscale.Client`` from Python, against the real server on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import aiscale
from aiscale.errors import ConfigError, NotFound

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}


def test_serve_handle_serves_and_the_client_round_trips(tmp_path: Path) -> None:
    """``aiscale.serve`` returns once the model answers; the client lists, scales, deploys,
    applies and removes deployments and raises the server's error classes with its message;
    ``stop()`` drains and the port then refuses connections."""
    server = aiscale.serve(
        "tests.models:Echo", data_dir=tmp_path, capture=False, batching={"max_batch_size": 4}
    )
    try:
        assert repr(server).endswith("(running)>")
        answer = httpx.post(f"{server.url}/v2/models/echo/infer", json=TEXT, timeout=30)
        assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == ["hi"]

        with aiscale.Client(server.url) as client:
            assert [d["name"] for d in client.deployments()] == ["echo"]
            assert client.deployment("echo")["max_batch_size"] == 4
            assert client.scale("echo", 2)["replicas"]["wanted"] == 2
            added = client.deploy("echo-b", "echo", replicas=1)
            assert added["name"] == "echo-b" and added["replicas"]["ready"] == 1

            config = {
                "deployments": [
                    {"name": "echo", "model": "echo", "replicas": 2,
                     "batching": {"max_batch_size": 4}},
                ]
            }
            planned = client.apply(config, dry_run=True, prune=True)
            assert planned["has_changes"] and planned["applied"] == []
            actions = {d["name"]: d["action"] for d in planned["deployments"]}
            assert actions == {"echo": "none", "echo-b": "remove"}
            assert {d["name"] for d in client.deployments()} == {"echo", "echo-b"}

            client.undeploy("echo-b")
            assert [d["name"] for d in client.deployments()] == ["echo"]
            assert client.apply(config)["has_changes"] is False

            with pytest.raises(NotFound, match="no deployment named 'nope'") as missing:
                client.deployment("nope")
            assert missing.value.field == "model"
            with pytest.raises(NotFound, match="no rollout of 'echo'"):
                client.rollout("echo")
            with pytest.raises(ConfigError, match="deployments.0.version") as bad:
                client.apply({"deployments": [{"name": "x", "model": "echo", "version": "9"}]})
            assert bad.value.field == "deployments.0.version"
    finally:
        server.stop()
    assert server.is_stopped
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live", timeout=5)


def test_import_aiscale_stays_light() -> None:
    """``import aiscale`` loads neither the client nor the server stack until they are used."""
    code = (
        "import sys, aiscale\n"
        "heavy = [m for m in ('httpx', 'uvicorn', 'aiscale.client', 'aiscale.serving')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert aiscale.Client.__module__ == 'aiscale.client'\n"
        "assert callable(aiscale.serve)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
