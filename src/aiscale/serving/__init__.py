"""The serving part: the hot path (gateway app, protocols, batcher, router, cache, limits,
capture hand-off) and the gateway's lifecycle. Replicas live in ``aiscale.replicas``.

The public names load on first use (PEP 562), so that importing one module of this package
does not pay for the gateway, the registry and the data stack (about 3 s of CPU).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiscale.serving.app import GatewayApp
    from aiscale.serving.batcher import BatchingSettings
    from aiscale.serving.deployment import Deployment
    from aiscale.serving.gateway import Gateway, GatewaySettings
    from aiscale.serving.lane import DeploymentSpec
    from aiscale.serving.server import start_in_thread

#: Public name → the module that defines it.
_MODULES = {
    "BatchingSettings": "aiscale.serving.batcher",
    "Deployment": "aiscale.serving.deployment",
    "DeploymentSpec": "aiscale.serving.lane",
    "Gateway": "aiscale.serving.gateway",
    "GatewayApp": "aiscale.serving.app",
    "GatewaySettings": "aiscale.serving.gateway",
    "start_in_thread": "aiscale.serving.server",
}

__all__ = [
    "BatchingSettings",
    "Deployment",
    "DeploymentSpec",
    "Gateway",
    "GatewayApp",
    "GatewaySettings",
    "start_in_thread",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'aiscale.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
