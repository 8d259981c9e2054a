"""``POST /admin/apply``: bring a running server to what an ``aiscale.yaml`` describes.

The body is ``{"config": <the file as a mapping>, "dry_run": bool, "prune": bool}``. The
answer lists, per deployment, what is added, changed (field by field: old and new value) or
removed, and what was done. A second apply of the same file reports no changes.

All or nothing, in two phases:

1. *Plan* (changes nothing): the whole file is validated with the config model (an error
   names its dotted path, e.g. ``deployments.1.batching.max_batch_size``); every model,
   version and split version is resolved in the registry; every split is built; a deployment
   whose rollout is running here is refused. Any error here leaves the server untouched.
2. *Apply*: each step records how to undo itself. If a step fails (a replica that cannot
   load, no GPU), the steps already taken are undone in reverse order (a replaced deployment
   is deployed again from its previous spec, a removed one too, counts and splits are set
   back) and the error is raised, saying that the change was rolled back.

What is applied where: fields that change how a version runs (model, version, batching,
cache, autoscaling, quality, resources, ...) redeploy with zero downtime
(``Gateway.deploy_config``: the new replicas are ready before the old ones stop); a new
``replicas`` count goes through ``Fleet.scale`` (``cause="apply"``) and is not compared for
autoscaled deployments; a ``split`` warms the versions it names (``Fleet.warm``), swaps the
split (``Fleet.set_split``), records it for other gateways and drains versions left without
a share. ``server:`` settings (monitor SLOs and alerts included) are read at start-up only:
they are validated and answered with a warning, never silently dropped.

Never holds the hot path: requests keep flowing while applying, and only one apply runs at a
time per server (``ApplyApi``'s lock).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict

from aiscale.config import DeploymentConfig, parse_config
from aiscale.contracts.split import TrafficSplit
from aiscale.errors import AiscaleError, ConfigError, Conflict, InvalidInput, NotFound
from aiscale.serving.gateway import Gateway

logger = logging.getLogger(__name__)

#: Compared and applied on their own rather than by redeploying.
_OWN_FIELDS = {"name", "model", "version", "replicas", "split"}


class ApplyBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    config: dict[str, Any]
    dry_run: bool = False
    prune: bool = False


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(slots=True)
class PlannedDeployment:
    """One deployment's planned change; ``action`` is add, change, remove, none or unmanaged."""

    name: str
    action: str
    changes: list[FieldChange] = field(default_factory=list)
    config: DeploymentConfig | None = None
    version: str = ""
    split: TrafficSplit | None = None
    is_redeploy: bool = False
    is_scale: bool = False
    is_split: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "changes": [{"field": c.field, "old": c.old, "new": c.new} for c in self.changes],
        }


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``dotted.path -> value``, for field-by-field differences."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def _config_fields(config: DeploymentConfig) -> dict[str, Any]:
    return _flat(config.model_dump(mode="json", by_alias=True, exclude=_OWN_FIELDS))


def _split_json(split: TrafficSplit) -> dict[str, Any]:
    weights = {version: weight for version, weight in split.weights}
    if split.shadow_version is None:
        return weights
    return {**weights, "shadow": f"{split.shadow_version} ({split.shadow_fraction:g})"}


async def _resolve(
    gateway: Gateway, model: str, version: str | None, path: str, version_path: str = ""
) -> str:
    """The canonical version number, or a ``ConfigError`` naming the file's field (the
    deployment's ``model``, else ``version_path`` or its ``version``)."""
    assert gateway.control is not None
    try:
        record = await anyio.to_thread.run_sync(gateway.control.resolve_version, model, version)
    except (NotFound, InvalidInput) as exc:
        if exc.field == "model":
            where = f"{path}.model"
        else:
            where = version_path or f"{path}.version"
        raise ConfigError(f"{where}: {exc.message}", field=where) from None
    return str(record.version)


async def _plan_one(gateway: Gateway, index: int, config: DeploymentConfig) -> PlannedDeployment:
    path = f"deployments.{index}"
    version = await _resolve(gateway, config.model, config.version, path)
    weights: dict[str, float] = {version: 100.0}
    if config.split is not None:
        weights = {}
        for name, weight in config.split.items():
            where = f"{path}.split.{name}"
            resolved = await _resolve(gateway, config.model, name, path, where)
            if resolved in weights:
                raise ConfigError(f"{where}: names version {resolved} twice", field=where)
            weights[resolved] = weight
        if version not in weights:
            where = f"{path}.split"
            raise ConfigError(
                f"{where}: must give a share to the deployment's version {version}", field=where
            )
    try:
        split = TrafficSplit.of(weights, salt=config.name)
    except InvalidInput as exc:
        raise ConfigError(f"{path}.split: {exc.message}", field=f"{path}.split") from None
    planned = PlannedDeployment(config.name, "add", config=config, version=version, split=split)
    current = gateway.deployments.get(config.name)
    if current is None:
        planned.changes = [
            FieldChange("model", None, config.model),
            FieldChange("version", None, version),
            FieldChange("replicas", None, config.replicas),
        ]
        if len(weights) > 1:
            planned.changes.append(FieldChange("split", None, _split_json(split)))
            planned.is_split = True
        return planned
    planned.action = "change"
    changes = planned.changes
    if current.spec.model != config.model:
        changes.append(FieldChange("model", current.spec.model, config.model))
    if current.primary_version != version:
        changes.append(FieldChange("version", current.primary_version, version))
    old_config = gateway.configs.get(config.name)
    if old_config is None:  # started from a spec: its settings are unknown, so redeploy
        changes.append(FieldChange("config", None, "from the file"))
    else:
        old_fields, new_fields = _config_fields(old_config), _config_fields(config)
        for key in sorted(old_fields.keys() | new_fields.keys()):
            if old_fields.get(key) != new_fields.get(key):
                changes.append(FieldChange(key, old_fields.get(key), new_fields.get(key)))
    planned.is_redeploy = bool(changes)
    wanted = current.primary.pool.num_wanted
    if config.autoscaling is None and wanted != config.replicas:
        changes.append(FieldChange("replicas", wanted, config.replicas))
        planned.is_scale = True
    old_split = _split_json(current.split)
    if old_split != _split_json(split):
        changes.append(FieldChange("split", old_split, _split_json(split)))
        planned.is_split = True
    if not changes:
        planned.action = "none"
    elif gateway.rollouts.is_driving(config.name):
        raise Conflict(
            f"deployments.{index}: {config.name!r} has a rollout in progress; let it finish "
            "or abort it before applying changes to it",
            field=f"deployments.{index}",
        )
    return planned


async def plan(
    gateway: Gateway, data: dict[str, Any], *, is_prune: bool
) -> list[PlannedDeployment]:
    """Every deployment's change, changing nothing; raises on the first bad field."""
    config = parse_config(data)
    seen: dict[str, int] = {}
    for index, deployment in enumerate(config.deployments):
        if deployment.name in seen:
            where = f"deployments.{index}.name"
            raise ConfigError(
                f"{where}: {deployment.name!r} is also deployments.{seen[deployment.name]}",
                field=where,
            )
        seen[deployment.name] = index
    if config.deployments and gateway.control is None:
        raise InvalidInput("this server has no registry to deploy from", field="deployments")
    planned = [await _plan_one(gateway, i, d) for i, d in enumerate(config.deployments)]
    for name in gateway.deployments:
        if name in seen:
            continue
        if not is_prune:
            planned.append(PlannedDeployment(name, "unmanaged"))
            continue
        if gateway.rollouts.is_driving(name):
            raise Conflict(f"{name!r} has a rollout in progress; cannot prune it", field=name)
        current = gateway.deployments[name]
        planned.append(
            PlannedDeployment(
                name,
                "remove",
                [
                    FieldChange("model", current.spec.model, None),
                    FieldChange("version", current.primary_version, None),
                ],
            )
        )
    return planned


Undo = Callable[[], Awaitable[None]]


class _Steps:
    """The changes made so far, each with its undo; ``rollback`` undoes them newest first."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.done: list[str] = []
        self._undo: list[Undo] = []

    def took(self, what: str, undo: Undo) -> None:
        self.done.append(what)
        self._undo.append(undo)

    async def rollback(self) -> list[str]:
        failures = []
        for undo in reversed(self._undo):
            try:
                await undo()
            except Exception as exc:  # keep undoing the rest; report what could not be undone
                logger.exception("undoing an apply step failed")
                failures.append(str(exc))
        return failures

    def restorer(self, name: str) -> Undo:
        """Undo for replacing or removing ``name``: its previous versions, counts and split."""
        gateway = self.gateway
        old = gateway.deployments[name]
        old_config = gateway.configs.get(name)
        lanes = {version: lane.pool.num_wanted for version, lane in old.lanes.items()}
        specs = {version: lane.spec for version, lane in old.lanes.items()}
        primary, split = old.primary_version, old.split

        async def restore() -> None:
            await gateway.deploy(specs[primary])
            for version, spec in specs.items():
                if version != primary:
                    await gateway.deployment(name).add_lane(spec)
            for version, count in lanes.items():
                if gateway.deployment(name).lane(version).pool.num_wanted != count:
                    await gateway.scale(name, count, version=version, cause="apply: rollback")
            await gateway.set_split(name, split, cause="apply: rollback")
            if old_config is not None and gateway.control is not None:
                gateway.configs[name] = old_config
                await anyio.to_thread.run_sync(gateway.control.save_deployment, old_config)

        return restore


async def _apply_one(gateway: Gateway, planned: PlannedDeployment, steps: _Steps) -> None:
    name = planned.name
    if planned.action == "remove":
        undo = steps.restorer(name)
        await gateway.undeploy(name)
        steps.took(f"removed {name}", undo)
        return
    config = planned.config
    assert config is not None and planned.split is not None
    # The split lives in the live deployment and the registry's traffic records, not in the
    # saved config (a rollout moves it without touching the config).
    saved = config.model_copy(update={"version": planned.version, "split": None})
    if planned.action == "add":
        await gateway.deploy_config(saved)
        steps.took(f"deployed {name} version {planned.version}", _undeploy(gateway, name))
    elif planned.is_redeploy:
        undo = steps.restorer(name)
        await gateway.deploy_config(saved)
        steps.took(f"redeployed {name} version {planned.version}", undo)
    elif planned.is_scale:
        before = gateway.deployment(name).primary.pool.num_wanted
        await gateway.scale(name, config.replicas, cause="apply")
        steps.took(
            f"scaled {name} to {config.replicas} replicas",
            _scaler(gateway, name, before),
        )
    if planned.is_split:
        await _apply_split(gateway, name, planned.version, planned.split, steps)


async def _apply_split(
    gateway: Gateway, name: str, primary: str, split: TrafficSplit, steps: _Steps
) -> None:
    deployment = gateway.deployment(name)
    for version in split.versions:
        if version not in deployment.lanes:
            await gateway.warm(name, version)
            steps.took(f"warmed {name} version {version}", _dropper(gateway, name, version))
    old_split, old_primary = deployment.split, deployment.primary_version
    await gateway.set_split(name, split, primary=primary, cause="apply")

    async def set_back() -> None:
        await gateway.set_split(name, old_split, primary=old_primary, cause="apply: rollback")
        await gateway.rollout_sync.record_split(name, old_split, "apply: rollback")

    steps.took(f"split {name}: {_split_json(split)}", set_back)
    await gateway.rollout_sync.record_split(name, split, "apply")
    for version in list(deployment.lanes):
        if version not in split.versions and version != primary:
            await gateway.scale(name, 0, version=version, cause="apply")
            steps.took(f"drained {name} version {version}", _warmer(gateway, name, version))


def _undeploy(gateway: Gateway, name: str) -> Undo:
    async def undo() -> None:
        await gateway.undeploy(name)

    return undo


def _scaler(gateway: Gateway, name: str, count: int) -> Undo:
    async def undo() -> None:
        await gateway.scale(name, count, cause="apply: rollback")

    return undo


def _dropper(gateway: Gateway, name: str, version: str) -> Undo:
    async def undo() -> None:
        await gateway.scale(name, 0, version=version, cause="apply: rollback")

    return undo


def _warmer(gateway: Gateway, name: str, version: str) -> Undo:
    async def undo() -> None:
        await gateway.warm(name, version)

    return undo


class ApplyApi:
    """Serves ``POST /admin/apply`` for ``AdminApi``; one apply at a time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = asyncio.Lock()

    async def apply(self, body: ApplyBody) -> dict[str, Any]:
        """Plan, then (unless ``dry_run``) apply all of it or none of it; see the module doc."""
        async with self._lock:
            planned = await plan(self.gateway, body.config, is_prune=body.prune)
            to_change = [p for p in planned if p.action in ("add", "change", "remove")]
            warnings = []
            if body.config.get("server"):
                warnings.append(
                    "server: settings (monitor SLOs and alerts included) are read when the "
                    "server starts; restart 'aiscale serve --config' to change them"
                )
            steps = _Steps(self.gateway)
            if not body.dry_run:
                for item in to_change:
                    try:
                        await _apply_one(self.gateway, item, steps)
                    except AiscaleError as exc:
                        failures = await steps.rollback()
                        raise _rolled_back(exc, item.name, len(steps.done), failures) from None
                    except BaseException:
                        await steps.rollback()
                        raise
            return {
                "dry_run": body.dry_run,
                "has_changes": bool(to_change),
                "deployments": [p.to_json() for p in planned],
                "applied": steps.done,
                "warnings": warnings,
            }


def _rolled_back(exc: AiscaleError, name: str, num_steps: int, failures: list[str]) -> AiscaleError:
    """The same error (class, field, retry hint), saying where apply stopped and what was undone."""
    undone = (
        f"rolled back {num_steps} change(s)"
        if not failures
        else f"rolling back failed too: {'; '.join(failures)}"
    )
    error = copy.copy(exc)
    error.message = f"apply failed at {name}: {exc.message}; {undone}"
    error.args = (error.message,)
    return error
