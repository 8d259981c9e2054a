"""Fixtures that run the real gateway on uvicorn (127.0.0.1, port 0) with real replica processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from aiscale.serving import (
    BatchingSettings,
    DeploymentSpec,
    Gateway,
    GatewayApp,
    GatewaySettings,
    start_in_thread,
)
from aiscale.serving.server import ThreadedServer

ServerFactory = Callable[..., ThreadedServer]


def python_spec(name: str, cls: str, **kwargs: Any) -> DeploymentSpec:
    """A deployment of one of the tiny models in tests/models.py."""
    batching = kwargs.pop("batching", BatchingSettings())
    return DeploymentSpec(
        name=name,
        model=name,
        version="1",
        runtime="python",
        uri=f"tests.models:{cls}",
        batching=batching,
        num_threads=1,
        **kwargs,
    )


def start_gateway(
    *specs: DeploymentSpec,
    settings: GatewaySettings | None = None,
    control: Any = None,
    capture: Any = None,
) -> ThreadedServer:
    """``capture`` is a function of the gateway's metrics registry giving a capture backend."""
    registry = CollectorRegistry()
    gateway = Gateway(
        settings or GatewaySettings(drain_timeout_s=5.0),
        list(specs),
        metrics_registry=registry,
        control=control,
        capture=capture(registry) if capture is not None else None,
    )
    return start_in_thread(GatewayApp(gateway))


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """Start gateways on demand; every one is stopped (drained) when the test ends."""
    started: list[ThreadedServer] = []

    def factory(
        *specs: DeploymentSpec,
        settings: GatewaySettings | None = None,
        control: Any = None,
        capture: Any = None,
    ) -> ThreadedServer:
        server = start_gateway(*specs, settings=settings, control=control, capture=capture)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
