"""The serving part: gateway app, protocols, batcher, replicas, cache and limits."""

from __future__ import annotations

from aiscale.serving.app import GatewayApp
from aiscale.serving.batcher import BatchingSettings
from aiscale.serving.deployment import Deployment
from aiscale.serving.gateway import Gateway, GatewaySettings
from aiscale.serving.lane import DeploymentSpec
from aiscale.serving.server import start_in_thread

__all__ = [
    "BatchingSettings",
    "Deployment",
    "DeploymentSpec",
    "Gateway",
    "GatewayApp",
    "GatewaySettings",
    "start_in_thread",
]
