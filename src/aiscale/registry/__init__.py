"""The registry: models, immutable versions, aliases, deployments, API keys, and the record of
rollouts and traffic splits in SQL, and model artifacts in a content-addressed store.

It never serves requests and never loads models; the gateway and controllers read from it.
"""

from __future__ import annotations

from aiscale.registry.artifacts import ArtifactStore, FsspecArtifactStore
from aiscale.registry.leases import SqlLeases
from aiscale.registry.records import (
    ACTIVE_ROLLOUT_STATUSES,
    LLM_LIMIT_NAMES,
    ROLLOUT_STATUSES,
    ROLLOUT_VERDICTS,
    SCOPES,
    DeploymentRecord,
    KeyRecord,
    LlmLimits,
    ModelRecord,
    RolloutDecisionRecord,
    RolloutRecord,
    TrafficRecord,
    VersionRecord,
)
from aiscale.registry.registration import PICKLE_RUNTIMES, RUNTIMES, register_with_artifact
from aiscale.registry.rollouts import SqlRolloutRecords
from aiscale.registry.store import (
    KEY_PREFIX,
    SqlRegistry,
    hash_key,
    parse_usd,
    validate_llm_limits,
    validate_name,
)

__all__ = [
    "ACTIVE_ROLLOUT_STATUSES",
    "KEY_PREFIX",
    "LLM_LIMIT_NAMES",
    "ROLLOUT_STATUSES",
    "ROLLOUT_VERDICTS",
    "PICKLE_RUNTIMES",
    "RUNTIMES",
    "SCOPES",
    "ArtifactStore",
    "DeploymentRecord",
    "FsspecArtifactStore",
    "KeyRecord",
    "LlmLimits",
    "ModelRecord",
    "RolloutDecisionRecord",
    "RolloutRecord",
    "SqlLeases",
    "SqlRegistry",
    "SqlRolloutRecords",
    "TrafficRecord",
    "VersionRecord",
    "hash_key",
    "parse_usd",
    "register_with_artifact",
    "validate_llm_limits",
    "validate_name",
]
