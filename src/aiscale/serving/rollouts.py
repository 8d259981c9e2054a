"""Progressive rollouts inside the gateway: one controller task per deployment being rolled out.

Adapts a serving ``Deployment`` to the controller's ``RolloutTarget`` and the registry to its
``RolloutStore`` (SQL in a worker thread). Starting a rollout warms the canary's replicas
before it gets any traffic; a server restarted mid-rollout resumes every active rollout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol, runtime_checkable

import anyio

from aiscale.errors import Conflict, NotFound
from aiscale.rollout.analysis import AnalysisConfig, VersionCounts
from aiscale.rollout.controller import RolloutController, RolloutPlan, RolloutStatus
from aiscale.rollout.split import TrafficSplit
from aiscale.serving.deployment import Deployment
from aiscale.serving.lane import VersionLane
from aiscale.serving.metrics import GatewayMetrics

logger = logging.getLogger(__name__)


def split_json(split: TrafficSplit) -> dict[str, Any]:
    return {
        "weights": dict(split.weights),
        "shadow_version": split.shadow_version,
        "shadow_fraction": split.shadow_fraction,
    }


@runtime_checkable
class RolloutRecords(Protocol):
    """The registry's rollout tables, as the manager uses them (synchronous SQL)."""

    def start_rollout(
        self,
        deployment: str,
        baseline_version: str,
        canary_version: str,
        steps: list[float],
        config: dict[str, Any],
    ) -> Any: ...

    def update_rollout(
        self,
        rollout_id: Any,
        *,
        step_index: int | None = None,
        status: str | None = None,
        reason: str | None = None,
    ) -> Any: ...

    def record_decision(
        self, rollout_id: Any, step_index: int, verdict: str, reason: str, numbers: dict[str, Any]
    ) -> Any: ...

    def record_traffic(self, deployment: str, split: dict[str, Any], cause: str) -> Any: ...

    def active_rollouts(self) -> list[Any]: ...

    def resolve_version(self, model: str, version: str | None) -> Any: ...

    def last_promoted_baseline(self, deployment: str) -> str | None: ...

    def aliases(self, model: str) -> dict[str, str]: ...


@runtime_checkable
class RolloutLeases(Protocol):
    """Who drives a rollout when several gateways share the registry (synchronous SQL)."""

    def try_lease(self, name: str) -> bool:
        """Take ``name`` unless another process holds it; True if this one holds it now."""
        ...

    def release_lease(self, name: str) -> None: ...

    def check_leases(self) -> bool:
        """False once the held leases were lost (the registry connection broke)."""
        ...

    def close_leases(self) -> None:
        """Give every lease back (the gateway stops)."""
        ...


class DeploymentTarget:
    """A serving deployment as the rollout controller steers it."""

    def __init__(
        self, deployment: Deployment, drain_timeout_s: float, on_finish: Any = None
    ) -> None:
        self.deployment = deployment
        self.drain_timeout_s = drain_timeout_s
        self._on_finish = on_finish

    def counts(self, version: str) -> VersionCounts:
        counts = self.deployment.lane(version).counts()
        return VersionCounts(
            counts.num_requests, counts.num_errors, counts.latency_s, counts.metrics
        )

    def set_split(self, split: TrafficSplit) -> None:
        self.deployment.set_split(split)

    async def finish(self, winner: str, loser: str) -> None:
        self.deployment.set_split(TrafficSplit.of({winner: 100.0}))
        self.deployment.make_primary(winner)
        if self._on_finish is not None:
            await self._on_finish(self.deployment.name, winner)
        if loser in self.deployment.lanes:
            await self.deployment.remove_lane(loser, self.drain_timeout_s)


class RegistryRolloutStore:
    """The controller's ``RolloutStore`` on the registry, each call in a worker thread."""

    def __init__(
        self, records: RolloutRecords, metrics: GatewayMetrics | None = None, deployment: str = ""
    ) -> None:
        self.records = records
        self.metrics = metrics
        self.deployment = deployment

    async def save_progress(
        self, rollout_id: Any, step_index: int, status: str, reason: str
    ) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.records.update_rollout(
                rollout_id, step_index=step_index, status=status, reason=reason[:2000]
            )
        )

    async def record_decision(
        self, rollout_id: Any, step_index: int, verdict: str, reason: str, numbers: dict[str, Any]
    ) -> None:
        if self.metrics is not None:
            self.metrics.rollout_decisions.labels(self.deployment, verdict).inc()
        await anyio.to_thread.run_sync(
            self.records.record_decision, rollout_id, step_index, verdict, reason[:2000], numbers
        )

    async def record_traffic(self, deployment: str, split: TrafficSplit, cause: str) -> None:
        if self.metrics is not None:
            for version, share in split.weights:
                self.metrics.traffic_share.labels(deployment, version).set(share)
        await anyio.to_thread.run_sync(
            self.records.record_traffic, deployment, split_json(split), cause
        )


class RolloutManager:
    """Starts, resumes and commands the controllers of one gateway."""

    def __init__(
        self,
        records: RolloutRecords | None,
        drain_timeout_s: float,
        on_finish: Any = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.records = records
        self.metrics = metrics
        self.drain_timeout_s = drain_timeout_s
        self.on_finish = on_finish
        self.controllers: dict[str, RolloutController] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[str, asyncio.Task[None]] = {}
        #: ``None``: one gateway, which drives every rollout of its deployments.
        self.leases = records if isinstance(records, RolloutLeases) else None

    def controller(self, deployment: str) -> RolloutController:
        found = self.controllers.get(deployment)
        if found is None:
            raise NotFound(f"no rollout of {deployment!r}", field="deployment")
        return found

    def start(
        self,
        rollout_id: Any,
        plan: RolloutPlan,
        deployment: Deployment,
        *,
        step_index: int = 0,
        status: RolloutStatus = RolloutStatus.RUNNING,
    ) -> RolloutController:
        """Run a controller for a rollout whose canary lane is already warm."""
        current = self.controllers.get(plan.deployment)
        if current is not None and current.status.is_active:
            raise Conflict(
                f"{plan.deployment!r} already has a rollout in progress", field="deployment"
            )
        if self.records is None:
            raise Conflict("rollouts need a registry", field="deployment")
        controller = RolloutController(
            rollout_id,
            plan,
            DeploymentTarget(deployment, self.drain_timeout_s, self.on_finish),
            RegistryRolloutStore(self.records, self.metrics, plan.deployment),
            step_index=step_index,
            status=status,
        )
        self.controllers[plan.deployment] = controller
        task = asyncio.create_task(self._run(controller), name=f"rollout-{plan.deployment}")
        self._tasks.add(task)
        self._task_of[plan.deployment] = task
        task.add_done_callback(self._tasks.discard)
        return controller

    def is_driving(self, deployment: str) -> bool:
        """True while this gateway runs the active rollout of ``deployment``."""
        current = self.controllers.get(deployment)
        return current is not None and current.status.is_active

    async def _run(self, controller: RolloutController) -> None:
        try:
            await controller.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # a task boundary: the rollout stops where it is, loudly
            logger.exception(
                "rollout of %s failed; traffic stays at the current split",
                controller.plan.deployment,
            )
        finally:
            if not controller.status.is_active and self.leases is not None:
                # Ended: the next rollout of this deployment may be driven by any gateway.
                await anyio.to_thread.run_sync(
                    self.leases.release_lease, controller.plan.deployment
                )

    async def step_down(self, deployment: str) -> None:
        """Stop driving ``deployment``'s rollout here (its lease was lost); the split stays."""
        task = self._task_of.pop(deployment, None)
        self.controllers.pop(deployment, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leases is not None:
            await anyio.to_thread.run_sync(self.leases.close_leases)

    # ----- from admin calls and start-up ------------------------------------------------------
    async def begin(
        self, deployment: Deployment, version: str, plan: RolloutPlan
    ) -> RolloutController:
        """Warm the canary's replicas, record the rollout, then start stepping traffic."""
        records = self._records()
        current = self.controllers.get(deployment.name)
        if current is not None and current.status.is_active:
            raise Conflict(
                f"{deployment.name!r} already has a rollout in progress", field="deployment"
            )
        leases = self.leases
        if leases is not None and not await anyio.to_thread.run_sync(
            leases.try_lease, deployment.name
        ):
            raise Conflict(
                f"another gateway is driving a rollout of {deployment.name!r}",
                field="deployment",
            )
        try:
            active = await anyio.to_thread.run_sync(records.active_rollouts)
            if any(r.deployment == deployment.name for r in active):
                raise Conflict(
                    f"{deployment.name!r} already has a rollout in progress", field="deployment"
                )
            await self.warm_lane(deployment, version)
            try:
                record = await anyio.to_thread.run_sync(
                    lambda: records.start_rollout(
                        deployment.name,
                        plan.baseline,
                        plan.canary,
                        list(plan.steps),
                        plan_config(plan),
                    )
                )
            except Exception:
                await deployment.remove_lane(plan.canary, self.drain_timeout_s)
                raise
        except BaseException:
            if leases is not None:
                await anyio.to_thread.run_sync(leases.release_lease, deployment.name)
            raise
        return self.start(record.rollout_id, plan, deployment)

    async def resume_all(self, deployments: dict[str, Deployment]) -> None:
        """Pick up every rollout the registry says is running or paused."""
        if self.records is None:
            return
        for deployment in deployments.values():
            await self.refresh_aliases(deployment)
        for record in await anyio.to_thread.run_sync(self.records.active_rollouts):
            found = deployments.get(record.deployment)
            if found is None:
                continue
            await self.resume(record, found)

    async def resume(self, record: Any, deployment: Deployment) -> None:
        """Drive an active rollout from the step its record is at, if no other gateway does
        (with several gateways: at start-up, or after the one driving it went away)."""
        if self.leases is not None and not await anyio.to_thread.run_sync(
            self.leases.try_lease, record.deployment
        ):
            return
        plan = plan_from_record(record)
        try:
            await self.warm_lane(deployment, plan.canary)
        except Conflict:
            pass  # already deployed (the canary lane survived in this process)
        logger.info(
            "resuming the rollout of %s at step %d", record.deployment, record.step_index
        )
        self.start(
            record.rollout_id,
            plan,
            deployment,
            step_index=record.step_index,
            status=RolloutStatus(record.status),
        )

    async def rollback(self, deployment: Deployment) -> str:
        """Back to the previous version at once: abort a running rollout, else undo the last one."""
        current = self.controllers.get(deployment.name)
        if current is not None and current.status.is_active:
            await current.abort("rolled back by operator")
            return current.plan.baseline
        records = self._records()
        previous = await anyio.to_thread.run_sync(records.last_promoted_baseline, deployment.name)
        if previous is None or previous == deployment.primary_version:
            raise Conflict(
                f"{deployment.name!r} has no previous version to go back to", field="deployment"
            )
        loser = deployment.primary_version
        await self.warm_lane(deployment, previous)
        target = DeploymentTarget(deployment, self.drain_timeout_s, self.on_finish)
        await target.finish(previous, loser)
        await RegistryRolloutStore(records, self.metrics, deployment.name).record_traffic(
            deployment.name, TrafficSplit.of({previous: 100.0}), f"rollback from {loser}"
        )
        return previous

    async def warm_lane(self, deployment: Deployment, version: str) -> VersionLane:
        """Start a version's replicas beside the serving ones (no traffic until a split says)."""
        records = self._records()
        record = await anyio.to_thread.run_sync(
            records.resolve_version, deployment.spec.model, version
        )
        spec = dataclasses.replace(
            deployment.spec,
            version=str(record.version),
            runtime=str(record.runtime),
            uri=str(record.uri),
            model_config=dict(record.config or {}),
        )
        lane = await deployment.add_lane(spec)
        await self.refresh_aliases(deployment)
        return lane

    async def refresh_aliases(self, deployment: Deployment) -> None:
        """Let ``x-aiscale-version`` name versions by the model's aliases."""
        if self.records is None:
            return
        try:
            deployment.aliases = await anyio.to_thread.run_sync(
                self.records.aliases, deployment.spec.model
            )
        except NotFound:
            deployment.aliases = {}  # a model run from a spec, unknown to the registry

    def _records(self) -> RolloutRecords:
        if self.records is None:
            raise Conflict("rollouts need a registry", field="deployment")
        return self.records


def plan_config(plan: RolloutPlan) -> dict[str, Any]:
    analysis = plan.analysis
    return {
        "interval_s": plan.interval_s,
        "min_step_duration_s": plan.min_step_duration_s,
        "shadow_fraction": plan.shadow_fraction,
        "alpha": analysis.alpha,
        "min_requests": analysis.min_requests,
    }


def plan_from_record(record: Any) -> RolloutPlan:
    config = dict(record.config or {})
    return RolloutPlan(
        deployment=record.deployment,
        baseline=record.baseline_version,
        canary=record.canary_version,
        steps=tuple(float(s) for s in record.steps),
        interval_s=float(config.get("interval_s", 5.0)),
        min_step_duration_s=float(config.get("min_step_duration_s", 30.0)),
        shadow_fraction=float(config.get("shadow_fraction", 0.0)),
        analysis=AnalysisConfig(
            alpha=float(config.get("alpha", 0.05)),
            min_requests=int(config.get("min_requests", 500)),
        ),
    )
