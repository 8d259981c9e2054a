"""The registry as the gateway needs it (the ``ControlStore`` of ``gateway.py``).

Resolves a deployment's model version, fetching stored artifacts to a local path, and
persists deployments so that a restarted server comes back with the same ones. All
methods are synchronous SQL: the gateway calls them through ``anyio.to_thread``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from aiscale.errors import NotFound
from aiscale.registry import DeploymentRecord, FsspecArtifactStore, SqlRegistry, VersionRecord


class SavedDeployment(Protocol):
    """What is persisted of a deployment's config (``aiscale.config.DeploymentConfig`` is one).

    A protocol rather than the config class: the registry sits below the config tree, which
    aggregates every part's settings, so it must not import it (docs/decisions.md)."""

    @property
    def name(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    @property
    def replicas(self) -> int: ...

    def model_dump(self, *, mode: str, by_alias: bool) -> dict[str, Any]: ...


class RegistryControl:
    def __init__(self, registry: SqlRegistry, artifacts: FsspecArtifactStore) -> None:
        self.registry = registry
        self.artifacts = artifacts
        #: Which rollouts this process drives (several gateways share the registry).
        self.leases = registry.open_leases()

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

    def save_deployment(self, config: SavedDeployment) -> None:
        self.registry.put_deployment(
            DeploymentRecord(
                name=config.name,
                model=config.model,
                version=config.version or self.resolve_version(config.model, None).version,
                replicas=config.replicas,
                config=config.model_dump(mode="json", by_alias=True),
            )
        )

    def forget_deployment(self, name: str) -> None:
        """Drop a removed deployment's saved state; no-op when none was saved."""
        try:
            self.registry.delete_deployment(name)
        except NotFound:
            pass

    def saved_deployments(self) -> list[dict[str, Any]]:
        """Deployments persisted by earlier runs, as config data to validate and start again."""
        return [
            {**record.config, "replicas": record.replicas}
            for record in self.registry.list_deployments()
        ]

    # ----- rollouts (the ``RolloutRecords`` protocol of rollout/live.py) -------------------
    def start_rollout(
        self,
        deployment: str,
        baseline_version: str,
        canary_version: str,
        steps: list[float],
        config: dict[str, Any],
    ) -> Any:
        return self.registry.rollouts.start_rollout(
            deployment, baseline_version, canary_version, steps, config
        )

    def update_rollout(
        self,
        rollout_id: Any,
        *,
        step_index: int | None = None,
        status: str | None = None,
        reason: str | None = None,
    ) -> Any:
        return self.registry.rollouts.update_rollout(
            rollout_id, step_index=step_index, status=status, reason=reason
        )

    def record_decision(
        self, rollout_id: Any, step_index: int, verdict: str, reason: str, numbers: dict[str, Any]
    ) -> Any:
        return self.registry.rollouts.record_decision(
            rollout_id, step_index, verdict, reason, numbers
        )

    def record_traffic(self, deployment: str, split: dict[str, Any], cause: str) -> Any:
        return self.registry.rollouts.record_traffic(deployment, split, cause)

    def active_rollouts(self) -> list[Any]:
        return list(self.registry.rollouts.active_rollouts())

    def aliases(self, model: str) -> dict[str, str]:
        return dict(self.registry.list_aliases(model))

    # ----- several gateways (the ``SharedRollouts`` protocol of rollout/sync.py) -----
    def latest_traffic(self, deployment: str) -> Any:
        return self.registry.rollouts.latest_traffic(deployment)

    def latest_rollout(self, deployment: str) -> Any:
        found = self.registry.rollouts.list_rollouts(deployment)
        return found[-1] if found else None

    def decisions(self, rollout_id: Any) -> list[Any]:
        return list(self.registry.rollouts.list_decisions(rollout_id))

    def try_lease(self, name: str) -> bool:
        return self.leases.try_acquire(name)

    def release_lease(self, name: str) -> None:
        self.leases.release(name)

    def check_leases(self) -> bool:
        return self.leases.check()

    def close_leases(self) -> None:
        self.leases.close()

    def last_promoted_baseline(self, deployment: str) -> str | None:
        """The version the last promoted rollout replaced: where a rollback goes."""
        for record in reversed(self.registry.rollouts.list_rollouts(deployment)):
            if record.status == "promoted":
                return str(record.baseline_version)
        return None


def rollout_history(registry: SqlRegistry, deployment: str) -> dict[str, Any]:
    """Rollouts with their decisions, and the traffic history, as JSON-ready data."""

    def when(value: Any) -> str:
        return str(value.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))

    records = registry.rollouts
    return {
        "rollouts": [
            {
                "rollout_id": r.rollout_id,
                "baseline": r.baseline_version,
                "canary": r.canary_version,
                "steps": list(r.steps),
                "step_index": r.step_index,
                "status": r.status,
                "reason": r.reason,
                "created_at": when(r.created_at),
                "decisions": [
                    {
                        "at": when(d.at),
                        "step_index": d.step_index,
                        "verdict": d.verdict,
                        "reason": d.reason,
                        "numbers": d.numbers,
                    }
                    for d in records.list_decisions(r.rollout_id)
                ],
            }
            for r in records.list_rollouts(deployment)
        ],
        "traffic": [
            {"at": when(t.at), "split": t.split, "cause": t.cause}
            for t in records.traffic_history(deployment)
        ],
    }
