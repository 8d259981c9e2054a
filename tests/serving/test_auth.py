"""API keys (hashed in the real registry), scopes and per-key rate limits at the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import GatewaySettings
from tests.serving.conftest import python_spec, start_gateway

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, SqlRegistry, dict[str, str]]]:
    folder: Path = tmp_path_factory.mktemp("auth")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    keys = {
        "admin": registry.create_key("ops", frozenset({"admin"}))[0],
        "inference": registry.create_key("app", frozenset({"inference"}))[0],
        "limited": registry.create_key("batch-job", frozenset({"inference"}), rate_limit_per_s=5)[
            0
        ],
    }
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    server = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(drain_timeout_s=5.0, key_refresh_s=0.2),
        control=control,
    )
    yield server.url, registry, keys
    server.stop()
    registry.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_missing_and_wrong_keys(setup: tuple[str, SqlRegistry, dict[str, str]]) -> None:
    """No key or an unknown key: 401 naming the Authorization header; health stays open."""
    url, _, keys = setup
    response = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT)
    assert response.status_code == 401
    assert response.headers["x-aiscale-error-field"] == "authorization"
    assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer("ask_wrong"))
    assert response.status_code == 401 and "unknown" in response.json()["error"]
    response = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": "echo", "input": "x"},
        headers={"authorization": "Basic abc"},
    )
    assert response.status_code == 401
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    ok = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer(keys["inference"]))
    assert ok.status_code == 200


def test_scopes(setup: tuple[str, SqlRegistry, dict[str, str]]) -> None:
    """An inference key cannot use the admin API (403); an admin key cannot infer (403)."""
    url, _, keys = setup
    response = httpx.get(f"{url}/admin/deployments", headers=bearer(keys["inference"]))
    assert response.status_code == 403 and "admin" in response.json()["error"]["message"]
    assert httpx.get(f"{url}/admin/deployments", headers=bearer(keys["admin"])).status_code == 200
    response = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer(keys["admin"]))
    assert response.status_code == 403


def test_rate_limit(setup: tuple[str, SqlRegistry, dict[str, str]]) -> None:
    """A key limited to 5 requests/s gets 429 with Retry-After once its bucket is empty."""
    url, _, keys = setup
    with httpx.Client() as client:
        statuses = [
            client.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer(keys["limited"]))
            for _ in range(12)
        ]
    codes = [r.status_code for r in statuses]
    assert 5 <= codes.count(200) <= 7 and 429 in codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-aiscale-error-type"] == "RateLimited"


def test_new_and_revoked_keys_take_effect(setup: tuple[str, SqlRegistry, dict[str, str]]) -> None:
    """Keys created or revoked in the registry take effect after the next refresh."""
    url, registry, keys = setup
    plaintext, record = registry.create_key("late", frozenset({"inference"}))
    assert httpx.post(f"{url}/admin/keys/refresh", headers=bearer(keys["admin"])).status_code == 200
    assert (
        httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer(plaintext)).status_code
        == 200
    )
    registry.revoke_key(record.key_id)
    assert httpx.post(f"{url}/admin/keys/refresh", headers=bearer(keys["admin"])).status_code == 200
    assert (
        httpx.post(f"{url}/v2/models/echo/infer", json=TEXT, headers=bearer(plaintext)).status_code
        == 401
    )
