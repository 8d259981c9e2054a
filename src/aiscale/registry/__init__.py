"""The registry: models, immutable versions, aliases, deployments and API keys in SQL, and
model artifacts in a content-addressed store.

It never serves requests and never loads models; the gateway and controllers read from it.
"""

from __future__ import annotations

from aiscale.registry.artifacts import ArtifactStore, FsspecArtifactStore
from aiscale.registry.records import (
    SCOPES,
    DeploymentRecord,
    KeyRecord,
    ModelRecord,
    VersionRecord,
)
from aiscale.registry.registration import RUNTIMES, register_with_artifact
from aiscale.registry.store import KEY_PREFIX, SqlRegistry, hash_key, validate_name

__all__ = [
    "KEY_PREFIX",
    "RUNTIMES",
    "SCOPES",
    "ArtifactStore",
    "DeploymentRecord",
    "FsspecArtifactStore",
    "KeyRecord",
    "ModelRecord",
    "SqlRegistry",
    "VersionRecord",
    "hash_key",
    "register_with_artifact",
    "validate_name",
]
