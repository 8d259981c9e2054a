"""Admin endpoints under ``/admin``: list, deploy, scale and remove deployments; apply a whole
config file (``apply.py``); refresh keys; the LLM token spend of a key or team; the last
rolling-window data-quality report of a deployment.

Called by ``GatewayApp`` after the caller was checked for the ``admin`` scope. Bodies are
validated with the same pydantic config models as the config file (the edge of the system).
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from aiscale.config import DeploymentConfig
from aiscale.contracts.split import TrafficSplit
from aiscale.data.quality_window import QualityStatus
from aiscale.errors import Conflict, MethodNotAllowed, NotFound
from aiscale.llm.ledger_usage import key_usage, team_usage
from aiscale.monitor.api import MonitorApi
from aiscale.registry import validate_name
from aiscale.rollout.analysis import AnalysisConfig, MetricRule
from aiscale.rollout.controller import RolloutPlan, decision_numbers
from aiscale.serving.apply import ApplyApi, ApplyBody
from aiscale.serving.gateway import Gateway
from aiscale.serving.http import Request, Response, validated_body
from aiscale.serving.lane import VersionLane


class MetricRuleBody(BaseModel):
    """A custom metric the canary analysis compares (``rollout.analysis.MetricRule``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    is_higher_better: bool
    min_effect: float = Field(default=0.0, ge=0)
    min_relative_effect: float = Field(default=0.0, ge=0)


class RolloutBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str
    steps: list[float] = Field(default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0])
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    min_step_duration_s: float = Field(default=30.0, ge=0)
    min_requests: int = Field(default=500, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    shadow_fraction: float = Field(default=0.0, ge=0, le=1)
    #: Samples per version below which a metric's test is skipped (reported, not counted).
    min_metric_samples: int = Field(default=100, ge=1)
    #: The effect (probability of superiority minus 1/2) the rank tests detect fastest.
    rank_tau: float = Field(default=0.05, gt=0, le=0.5)
    #: Custom metrics to compare; an LLM deployment adds its own (TTFT, ITL, output
    #: tokens, feedback score) unless named here.
    metrics: list[MetricRuleBody] = Field(default_factory=list, max_length=32)


class SplitBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    weights: dict[str, float]
    shadow_version: str | None = None
    shadow_fraction: float = Field(default=0.0, ge=0, le=1)


class VersionBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: str
    replicas: int | None = Field(default=None, ge=0, le=256)


_RELEASE_PATHS = frozenset({"rollout", "rollback", "split", "stats", "versions"})


def quality_status(gateway: Gateway, name: str) -> dict[str, Any]:
    """The last rolling-window quality report of ``name``: 404 for an unknown deployment,
    409 for one without a ``quality:`` section."""
    deployment = gateway.deployment(name)
    if deployment.spec.quality is None:
        raise Conflict(
            f"deployment {name!r} has no quality section; add quality.expectations to its "
            "config to check its traffic",
            field="quality",
        )
    status = gateway.quality.status(name)
    if status is None:  # configured, but the loop has not picked it up yet
        status = QualityStatus(name, deployment.spec.quality, None, 0, None)
    return status.to_dict()


class ScaleBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    replicas: int = Field(ge=0, le=256)


def describe_lane(lane: VersionLane) -> dict[str, Any]:
    spec = lane.spec
    return {
        "version": spec.version,
        "runtime": spec.runtime,
        "replicas": {
            "ready": lane.pool.num_ready,
            "starting": lane.pool.num_starting,
            "wanted": lane.pool.num_wanted,
            "pids": [r.pid for r in lane.pool.replicas() if not r.is_dead],
            "nodes": [r.node for r in lane.pool.replicas() if not r.is_dead],
        },
        "queue_depth": lane.queue_depth,
        "max_batch_size": spec.batching.max_batch_size,
        "max_batch_delay_ms": spec.batching.max_batch_delay_s * 1000.0,
        "is_ready": lane.is_ready,
        "gpu": None
        if spec.gpu is None
        else {
            "num_gpus": spec.gpu.num_gpus,
            "memory_mb": spec.gpu.memory_mb,
            "team": spec.gpu.team,
        },
        # Each replica's Ray actor resources; ``None`` for local replica processes.
        "ray": None
        if spec.placement is None
        else {
            "num_cpus": spec.placement.num_cpus,
            "num_gpus": spec.placement.num_gpus,
            "memory_bytes": spec.placement.memory_bytes,
            "resources": dict(spec.placement.resources),
        },
    }


def describe(gateway: Gateway, name: str) -> dict[str, Any]:
    """The primary version's fields at the top level, every version under ``versions``."""
    deployment = gateway.deployment(name)
    split = deployment.split
    return {
        "name": deployment.name,
        "model": deployment.spec.model,
        **describe_lane(deployment.primary),
        "is_ready": deployment.is_ready,
        "split": {
            "weights": dict(split.weights),
            "shadow_version": split.shadow_version,
            "shadow_fraction": split.shadow_fraction,
        },
        "versions": {version: describe_lane(lane) for version, lane in deployment.lanes.items()},
    }


class AdminApi:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.monitor = MonitorApi(gateway.monitor, self._rollout_of)
        self.applier = ApplyApi(gateway)

    def _rollout_of(self, name: str) -> dict[str, Any] | None:
        """The monitor snapshot's ``rollout`` entry: this server's rollout of ``name``."""
        if name not in self.gateway.rollouts.controllers:
            return None
        return rollout_status(self.gateway, name)

    async def handle(self, request: Request, method: str, parts: list[str]) -> Response:
        gateway = self.gateway
        if parts and parts[0] == "monitor":
            payload = await self.monitor.handle(method, parts[1:], request.query(), request.body)
            return _ok(payload)
        if parts == ["apply"]:
            if method != "POST":
                raise MethodNotAllowed("use POST", field="method")
            body = validated_body(ApplyBody, await request.body())
            return _ok(await self.applier.apply(body))
        if parts == ["deployments"]:
            if method == "GET":
                return _ok({"deployments": [describe(gateway, n) for n in gateway.deployments]})
            if method == "POST":
                config = validated_body(DeploymentConfig, await request.body())
                deployment = await gateway.deploy_config(config)
                return _ok(describe(gateway, deployment.spec.name))
            raise MethodNotAllowed("use GET or POST", field="method")
        if len(parts) == 2 and parts[0] == "deployments":
            if method == "GET":
                return _ok(describe(gateway, parts[1]))
            if method == "DELETE":
                await gateway.undeploy(parts[1])
                return _ok({"deleted": parts[1]})
            raise MethodNotAllowed("use GET or DELETE", field="method")
        if len(parts) == 3 and parts[0] == "deployments" and parts[2] == "scale":
            if method != "POST":
                raise MethodNotAllowed("use POST", field="method")
            scale = validated_body(ScaleBody, await request.body())
            await gateway.scale(parts[1], scale.replicas, cause="admin: scale")
            return _ok(describe(gateway, parts[1]))
        if len(parts) == 3 and parts[0] == "deployments" and parts[2] == "quality":
            if method != "GET":
                raise MethodNotAllowed("use GET", field="method")
            return _ok(quality_status(gateway, parts[1]))
        if len(parts) >= 3 and parts[0] == "deployments" and parts[2] in _RELEASE_PATHS:
            return await self._release(request, method, parts[1], parts[2:])
        if parts == ["gpus"]:
            if method != "GET":
                raise MethodNotAllowed("use GET", field="method")
            return _ok(gateway.gpus.snapshot())
        if parts == ["keys", "refresh"]:
            if method != "POST":
                raise MethodNotAllowed("use POST", field="method")
            await gateway.refresh_keys()
            return _ok({"refreshed": True})
        if len(parts) == 3 and parts[0] in ("keys", "teams") and parts[2] == "usage":
            if method != "GET":
                raise MethodNotAllowed("use GET", field="method")
            return _ok(await llm_usage(gateway, parts[0], parts[1]))
        raise NotFound(f"no admin endpoint at /admin/{'/'.join(parts)}", field="path")

    async def _release(self, request: Request, method: str, name: str, rest: list[str]) -> Response:
        """Rollouts, manual splits, rollback and per-version stats of one deployment."""
        gateway = self.gateway
        deployment = gateway.deployment(name)
        manager = gateway.rollouts
        if rest == ["rollout"] and method == "POST":
            body = validated_body(RolloutBody, await request.body())
            plan = RolloutPlan(
                deployment=name,
                baseline=deployment.primary_version,
                canary=body.version,
                steps=tuple(body.steps),
                interval_s=body.interval_s,
                min_step_duration_s=body.min_step_duration_s,
                shadow_fraction=body.shadow_fraction,
                analysis=AnalysisConfig(
                    alpha=body.alpha,
                    min_requests=body.min_requests,
                    min_metric_samples=body.min_metric_samples,
                    rank_tau=body.rank_tau,
                    metrics=tuple(
                        MetricRule(
                            rule.name,
                            rule.is_higher_better,
                            rule.min_effect,
                            rule.min_relative_effect,
                        )
                        for rule in body.metrics
                    ),
                ),
            )
            await manager.begin(plan)
            return _ok(rollout_status(gateway, name))
        if rest == ["rollout"] and method == "GET":
            return _ok(await any_rollout_status(gateway, name))
        if len(rest) == 2 and rest[0] == "rollout" and method == "POST":
            # Whichever gateway drives the rollout applies it (``rollout_sync.py``).
            await gateway.rollout_sync.command(name, rest[1])
            return _ok(await any_rollout_status(gateway, name))
        if rest == ["rollback"] and method == "POST":
            view = None if manager.is_driving(name) else await gateway.rollout_sync.status(name)
            if view is not None and view["status"] in ("running", "paused"):
                await gateway.rollout_sync.command(name, "abort")
                version = str(view["baseline"])
            else:
                version = await manager.rollback(name)
            return _ok({"deployment": name, "version": version, **describe(gateway, name)})
        if rest == ["split"] and method == "PUT":
            wanted = validated_body(SplitBody, await request.body())
            split = TrafficSplit.of(
                wanted.weights,
                shadow_version=wanted.shadow_version,
                shadow_fraction=wanted.shadow_fraction,
                salt=name,
            )
            await gateway.set_split(name, split, cause="admin: manual split")
            await gateway.rollout_sync.record_split(name, split, "manual split")
            return _ok(describe(gateway, name))
        if rest == ["versions"] and method == "POST":
            added = validated_body(VersionBody, await request.body())
            if added.version in deployment.lanes:
                raise Conflict(
                    f"version {added.version!r} is already deployed in {name!r}", field="version"
                )
            await gateway.warm(name, added.version)
            if added.replicas is not None:
                await gateway.scale(
                    name, added.replicas, version=added.version, cause="admin: version replicas"
                )
            return _ok(describe(gateway, name))
        if len(rest) == 2 and rest[0] == "versions" and method == "DELETE":
            await deployment.remove_lane(rest[1], gateway.settings.drain_timeout_s)
            return _ok(describe(gateway, name))
        if rest == ["stats"] and method == "GET":
            return _ok(
                {
                    "deployment": name,
                    "versions": {
                        version: counts_json(lane) for version, lane in deployment.lanes.items()
                    },
                }
            )
        raise MethodNotAllowed(f"{method} is not allowed on /{'/'.join(rest)}", field="method")


def counts_json(lane: VersionLane) -> dict[str, Any]:
    counts = lane.counts()
    latency = counts.latency_s
    has_latency = latency.num_samples > 0
    return {
        "num_requests": counts.num_requests,
        "num_errors": counts.num_errors,
        "latency_ms": {
            q: latency.quantile(p) * 1000.0 if has_latency else None
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
        "latency_histogram": {
            "upper_bounds_s": list(latency.upper_bounds),
            "counts": list(latency.counts),
        },
        "metrics": {
            name: {"mean": hist.mean(), "num_samples": hist.num_samples}
            for name, hist in counts.metrics.items()
        },
    }


def rollout_status(gateway: Gateway, name: str) -> dict[str, Any]:
    controller = gateway.rollouts.controller(name)
    plan = controller.plan
    decision = controller.last_decision
    deployment = gateway.deployment(name)
    return {
        "deployment": name,
        "rollout_id": controller.rollout_id,
        "baseline": plan.baseline,
        "canary": plan.canary,
        "steps": list(plan.steps),
        "step_index": controller.step_index,
        "canary_percent": controller.canary_percent,
        "status": str(controller.status),
        "reason": controller.reason,
        "last_decision": None
        if decision is None
        else {
            "verdict": str(decision.verdict),
            "reason": decision.reason,
            **decision_numbers(decision),
        },
        "versions": {version: counts_json(lane) for version, lane in deployment.lanes.items()},
    }


async def any_rollout_status(gateway: Gateway, name: str) -> dict[str, Any]:
    """The rollout's status from this gateway's controller when it drives the rollout, else
    the registry's record (driven by another gateway) with this gateway's own counts."""
    local = gateway.rollouts.controllers.get(name)
    if gateway.rollouts.is_driving(name):
        return {**rollout_status(gateway, name), "driven_here": True}
    view = await gateway.rollout_sync.status(name)
    if local is not None and (view is None or view["rollout_id"] == local.rollout_id):
        return {**rollout_status(gateway, name), "driven_here": True}
    if view is None:
        raise NotFound(f"no rollout of {name!r}", field="deployment")
    deployment = gateway.deployment(name)
    view["versions"] = {version: counts_json(lane) for version, lane in deployment.lanes.items()}
    return view


async def llm_usage(gateway: Gateway, kind: str, name: str) -> dict[str, Any]:
    """Token spend of an active key (with its team's) or of a team, from the token ledger
    that every gateway sharing its Redis sees alike: ``GET /admin/keys/{id}/usage`` and
    ``GET /admin/teams/{team}/usage``. 404 for a key that is not active on this gateway."""
    ledger = gateway.llm.ledger
    if kind == "teams":
        validate_name(name, "team")
        return await team_usage(ledger, name)
    caller = gateway.keyring.caller_of(name)
    if caller is None:
        raise NotFound(
            f"no active API key with id {name!r} (a revoked key's usage: "
            "aiscale keys usage --redis-url)",
            field="key_id",
        )
    return await key_usage(ledger, name, team=caller.team, limits=caller.llm_limits)


def _ok(payload: Any) -> Response:
    return 200, orjson.dumps(payload), [(b"content-type", b"application/json")]
