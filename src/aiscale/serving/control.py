"""The registry as the gateway needs it (the ``ControlStore`` of ``gateway.py``).

Resolves a deployment's model version, fetching stored artifacts to a local path, and
persists deployments so that a restarted server comes back with the same ones. All
methods are synchronous SQL: the gateway calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiscale.config import DeploymentConfig
from aiscale.errors import NotFound
from aiscale.registry import DeploymentRecord, FsspecArtifactStore, SqlRegistry, VersionRecord


class RegistryControl:
    def __init__(self, registry: SqlRegistry, artifacts: FsspecArtifactStore) -> None:
        self.registry = registry
        self.artifacts = artifacts

    def active_keys(self) -> list[Any]:
        return list(self.registry.active_keys())

    def resolve_version(self, model: str, version: str | None) -> VersionRecord:
        """The version record to run, with ``uri`` pointing at a local copy of its artifact."""
        if version is None:
            versions = self.registry.list_versions(model)
            if not versions:
                raise NotFound(f"model {model!r} has no versions", field="model")
            record = versions[-1]
        else:
            record = self.registry.get_version(model, version)
        if record.artifact_digest is not None:
            local = self.artifacts.get_local(record.uri)
            record = dataclasses.replace(record, uri=str(local))
        return record

    def save_deployment(self, config: DeploymentConfig) -> None:
        self.registry.put_deployment(
            DeploymentRecord(
                name=config.name,
                model=config.model,
                version=config.version or self.resolve_version(config.model, None).version,
                replicas=config.replicas,
                config=config.model_dump(mode="json", by_alias=True),
            )
        )

    def saved_deployments(self) -> list[DeploymentConfig]:
        """Deployments persisted by earlier runs, as configs to start again."""
        return [
            DeploymentConfig.model_validate({**record.config, "replicas": record.replicas})
            for record in self.registry.list_deployments()
        ]
