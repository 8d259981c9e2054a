"""Open mode is decided at start-up, never by revoking keys.

A server that has required keys keeps requiring them: revoking the last key (through the
CLI, as users do) locks the server within the refresh interval rather than opening it.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.config import load_config
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import GatewaySettings
from aiscale.serving.launch import build_gateway
from tests.serving.conftest import python_spec, start_gateway

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
REFRESH_S = 0.2


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_revoking_the_last_key_locks_the_server(tmp_path: Path) -> None:
    """With one key, revoked through ``aiscale keys revoke``: within the refresh interval the
    revoked key gets 401 and so does an admin call with no key (it used to open the server)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    registry = SqlRegistry.open(f"sqlite:///{data_dir / 'registry.db'}")
    plaintext, record = registry.create_key("ops", frozenset({"admin", "inference"}))
    control = RegistryControl(registry, FsspecArtifactStore(data_dir / "artifacts"))
    server = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(drain_timeout_s=5.0, key_refresh_s=REFRESH_S),
        control=control,
    )
    try:
        assert httpx.get(f"{server.url}/admin/deployments").status_code == 401
        meta = httpx.get(f"{server.url}/v2", headers=bearer(plaintext))
        assert meta.status_code == 200 and meta.json()["auth"] == "api_key"
        assert (
            httpx.get(f"{server.url}/admin/deployments", headers=bearer(plaintext)).status_code
            == 200
        )

        result = CliRunner().invoke(
            app, ["keys", "revoke", record.key_id, "--data-dir", str(data_dir)]
        )
        assert result.exit_code == 0, result.output
        revoked_at = time.monotonic()
        while (
            httpx.get(f"{server.url}/admin/deployments", headers=bearer(plaintext)).status_code
            != 401
        ):
            assert time.monotonic() - revoked_at < 2.0, "revocation took longer than 2 s"
            time.sleep(0.05)
        # Refreshes after the revocation keep it locked: no key, no access.
        time.sleep(3 * REFRESH_S)
        for method, path in [("GET", "/admin/deployments"),
                             ("POST", "/admin/deployments/echo/scale")]:
            response = httpx.request(method, f"{server.url}{path}", json={"replicas": 0})
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["field"] == "authorization"
        response = httpx.post(f"{server.url}/v2/models/echo/infer", json=TEXT)
        assert response.status_code == 401
    finally:
        server.stop()
        registry.close()


def test_open_mode_is_shown_and_ends_with_the_first_key(tmp_path: Path) -> None:
    """A loopback server with no keys is open and says so in ``/v2`` (auth: none); once a
    key is created it requires keys, and keeps requiring them after that key is revoked."""
    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    control = RegistryControl(registry, FsspecArtifactStore(tmp_path / "artifacts"))
    server = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(drain_timeout_s=5.0, key_refresh_s=REFRESH_S),
        control=control,
    )
    try:
        meta = httpx.get(f"{server.url}/v2")
        assert meta.status_code == 200 and meta.json()["auth"] == "none"
        plaintext, record = registry.create_key("late", frozenset({"admin"}))
        refresh = httpx.post(f"{server.url}/admin/keys/refresh", headers=bearer(plaintext))
        assert refresh.status_code == 200
        assert httpx.get(f"{server.url}/admin/deployments").status_code == 401
        registry.revoke_key(record.key_id)
        deadline = time.monotonic() + 2.0
        while httpx.get(f"{server.url}/admin/deployments",
                        headers=bearer(plaintext)).status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{server.url}/admin/deployments").status_code == 401
    finally:
        server.stop()
        registry.close()


def test_open_mode_needs_loopback_and_no_key_ever_created(tmp_path: Path) -> None:
    """``serve``'s gateway may run open only on loopback with no key ever created (a
    revoked key counts), or with ``--insecure``; otherwise keys are required from the start."""
    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    artifacts = FsspecArtifactStore(tmp_path / "artifacts")

    def is_open(**server: object) -> bool:
        config = load_config(
            server_overrides={"data_dir": str(tmp_path / "data"), "capture": {"enabled": False},
                              **server},
        )
        return build_gateway(config, registry, artifacts, []).keyring.is_open

    try:
        assert is_open(host="127.0.0.1")
        _, record = registry.create_key("old", frozenset({"admin"}))
        registry.revoke_key(record.key_id)
        assert not is_open(host="127.0.0.1")
        assert not is_open(host="0.0.0.0")
        assert is_open(host="0.0.0.0", insecure=True)
    finally:
        registry.close()
