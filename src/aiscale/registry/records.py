"""Plain records the registry hands out: models, versions, deployments and API keys.

These are values that cross from the store to its callers (CLI, gateway, controllers). They
hold no connection and do no I/O. Timestamps are timezone-aware UTC wall-clock datetimes,
recorded by the store; they are never used to measure intervals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: The scopes an API key may carry.
SCOPES: frozenset[str] = frozenset({"admin", "inference"})


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A named model; its versions live in ``VersionRecord``s."""

    name: str
    description: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One immutable version of a model.

    ``runtime`` names how it is loaded (``python``, ``sklearn``, ``onnx``, ...), ``uri`` where
    its artifact is (or, for ``python``, the ``pkg.module:Class`` path), ``artifact_digest`` the
    sha256 of the stored artifact when the artifact store holds it.
    """

    model: str
    version: str
    runtime: str
    uri: str
    artifact_digest: str | None
    config: dict[str, Any]
    metadata: dict[str, Any]
    schema: dict[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    """A named deployment of one model version (or alias) with its replica count and config.

    ``created_at`` and ``updated_at`` are set by the store; values passed in are ignored.
    """

    name: str
    model: str
    version: str
    replicas: int = 1
    config: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: only the sha256 of its plaintext is kept.

    ``rate_limit_per_s`` is ``None`` for no per-key limit; ``revoked_at`` is ``None`` while
    the key is active.
    """

    key_id: str
    name: str
    key_hash: str
    scopes: frozenset[str]
    rate_limit_per_s: float | None
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
