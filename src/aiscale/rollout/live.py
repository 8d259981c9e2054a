"""Progressive rollouts of one server: one controller task per deployment being rolled out.

Adapts the ``Fleet`` (``contracts/fleet.py``) to the controller's ``RolloutTarget`` and the
registry to its ``RolloutStore`` (SQL in a worker thread). Starting a rollout warms the
canary's replicas (``Fleet.warm``) before it gets any traffic; finishing makes the winner
the primary (``Fleet.set_split``) and drains the loser (``Fleet.scale`` to 0); a server
restarted mid-rollout resumes every active rollout.

A rollout of an LLM deployment (its snapshots carry ``llm`` signals) is judged on the LLM
metrics too (``analysis.with_llm_metrics``: time to first token, inter-token latency,
output length, feedback score), so a canary slower to first token or that stops early is
rolled back on its own. The plan's metric rules are recorded with the rollout, so a resumed
rollout judges on the same ones.

It never holds the gateway or imports the serving part: everything it sees and changes of
the serving side goes through the ``Fleet`` it is given, and its time through a ``Clock``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Protocol, runtime_checkable

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge

from aiscale.contracts.clock import Clock, SystemClock
from aiscale.contracts.fleet import Fleet, FleetSnapshot
from aiscale.contracts.split import TrafficSplit
from aiscale.errors import Conflict, NotFound
from aiscale.rollout.analysis import AnalysisConfig, MetricRule, VersionCounts, with_llm_metrics
from aiscale.rollout.controller import RolloutController, RolloutPlan, RolloutStatus

logger = logging.getLogger(__name__)


def split_json(split: TrafficSplit) -> dict[str, Any]:
    return {
        "weights": dict(split.weights),
        "shadow_version": split.shadow_version,
        "shadow_fraction": split.shadow_fraction,
    }


class RolloutMetrics:
    """The rollout part's metrics, registered on the server's injected registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "aiscale_rollout_decisions_total",
            "Rollout decisions by verdict (analysis verdicts and operator actions).",
            ("deployment", "verdict"),
            registry=registry,
        )
        self.traffic_share = Gauge(
            "aiscale_traffic_share_percent",
            "Share of a deployment's traffic each version gets.",
            ("deployment", "version"),
            registry=registry,
        )


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


def version_snapshot(fleet: Fleet, deployment: str, version: str) -> FleetSnapshot:
    """One version of one deployment now; ``NotFound`` when it runs no replicas here."""
    for snapshot in fleet.snapshot(deployment):
        if snapshot.version == version:
            return snapshot
    raise NotFound(f"version {version!r} of {deployment!r} is not deployed", field="version")


class FleetTarget:
    """One deployment of the fleet as the rollout controller steers it."""

    def __init__(self, fleet: Fleet, deployment: str) -> None:
        self.fleet = fleet
        self.deployment = deployment

    def counts(self, version: str) -> VersionCounts:
        found = version_snapshot(self.fleet, self.deployment, version)
        return VersionCounts(
            found.num_requests, found.num_errors, found.latency_s, dict(found.custom_metrics)
        )

    async def set_split(self, split: TrafficSplit, cause: str) -> None:
        await self.fleet.set_split(self.deployment, split, cause=cause)

    async def finish(self, winner: str, loser: str) -> None:
        """``winner`` takes all traffic and becomes the primary (persisted); ``loser`` drains."""
        await finish_rollout(self.fleet, self.deployment, winner, loser)


async def finish_rollout(fleet: Fleet, deployment: str, winner: str, loser: str | None) -> None:
    """Make ``winner`` the primary with all traffic, then drain ``loser`` (every other
    version when ``None``): a version with no share scaled to zero is removed."""
    await fleet.set_split(
        deployment,
        TrafficSplit.of({winner: 100.0}),
        primary=winner,
        cause=f"rollout: {winner} takes all traffic",
    )
    for snapshot in fleet.snapshot(deployment):
        if snapshot.version != winner and loser in (None, snapshot.version):
            try:
                await fleet.scale(
                    deployment, 0, version=snapshot.version, cause=f"rollout: {winner} won"
                )
            except NotFound:
                pass  # removed meanwhile (another finish, an admin call)


class RegistryRolloutStore:
    """The controller's ``RolloutStore`` on the registry, each call in a worker thread."""

    def __init__(
        self, records: RolloutRecords, metrics: RolloutMetrics | None = None, deployment: str = ""
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
            self.metrics.decisions.labels(self.deployment, verdict).inc()
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
    """Starts, resumes and commands the controllers of one server.

    Owned by the composition root (the gateway): ``resume_all`` after the deployments are
    up, ``stop`` before they stop. Besides the admin calls it answers the monitor's
    actions (``phase``, ``pause``, ``rollback``: ``monitor.actions.RolloutCommands``).
    """

    def __init__(
        self,
        fleet: Fleet,
        records: RolloutRecords | None,
        *,
        metrics: RolloutMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.fleet = fleet
        self.records = records
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.controllers: dict[str, RolloutController] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[str, asyncio.Task[None]] = {}
        #: ``None``: one gateway, which drives every rollout of its deployments.
        self.leases = records if isinstance(records, RolloutLeases) else None
        #: Set by ``stop`` (or by the owner as it begins to drain): nothing is resumed or
        #: taken over any more.
        self.is_stopping = False

    def controller(self, deployment: str) -> RolloutController:
        found = self.controllers.get(deployment)
        if found is None:
            raise NotFound(f"no rollout of {deployment!r}", field="deployment")
        return found

    def start(
        self,
        rollout_id: Any,
        plan: RolloutPlan,
        *,
        step_index: int = 0,
        status: RolloutStatus = RolloutStatus.RUNNING,
    ) -> RolloutController:
        """Run a controller for a rollout whose canary is already warm."""
        current = self.controllers.get(plan.deployment)
        if current is not None and current.status.is_active:
            raise Conflict(
                f"{plan.deployment!r} already has a rollout in progress", field="deployment"
            )
        records = self._records()
        controller = RolloutController(
            rollout_id,
            plan,
            FleetTarget(self.fleet, plan.deployment),
            RegistryRolloutStore(records, self.metrics, plan.deployment),
            step_index=step_index,
            status=status,
            clock=self.clock,
        )
        self.controllers[plan.deployment] = controller
        task = asyncio.create_task(self._run(controller), name=f"rollout-{plan.deployment}")
        self._tasks.add(task)
        self._task_of[plan.deployment] = task
        task.add_done_callback(self._tasks.discard)
        return controller

    def is_driving(self, deployment: str) -> bool:
        """True while this server runs the active rollout of ``deployment``."""
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
        self.is_stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leases is not None:
            await anyio.to_thread.run_sync(self.leases.close_leases)

    # ----- the monitor's actions (``monitor.actions.RolloutCommands``) -------------------------
    def phase(self, deployment: str) -> tuple[str, float] | None:
        """The status and canary percent of the active rollout this server drives, if any."""
        current = self.controllers.get(deployment)
        if current is None or not current.status.is_active:
            return None
        return str(current.status), current.canary_percent

    async def pause(self, deployment: str) -> None:
        await self.controller(deployment).pause()

    # ----- from admin calls and start-up ------------------------------------------------------
    async def begin(self, plan: RolloutPlan) -> RolloutController:
        """Warm the canary's replicas, record the rollout, then start stepping traffic.

        Raises ``Conflict`` when a rollout of the deployment is in progress (here or through
        another gateway), when no registry is configured or when the canary already runs."""
        records = self._records()
        name = plan.deployment
        current = self.controllers.get(name)
        if current is not None and current.status.is_active:
            raise Conflict(f"{name!r} already has a rollout in progress", field="deployment")
        versions = self.fleet.snapshot(name)
        if not versions:
            raise NotFound(f"no deployment named {name!r}", field="model")
        plan = self._judged_as_served(plan)
        # An alias names a version only until it moves: the rollout records the number.
        canary = await anyio.to_thread.run_sync(
            records.resolve_version, versions[0].model, plan.canary
        )
        plan = dataclasses.replace(plan, canary=str(canary.version))
        if any(s.version == plan.canary for s in versions):
            raise Conflict(
                f"version {plan.canary!r} is already deployed in {name!r}", field="version"
            )
        leases = self.leases
        if leases is not None and not await anyio.to_thread.run_sync(leases.try_lease, name):
            raise Conflict(f"another gateway is driving a rollout of {name!r}", field="deployment")
        try:
            active = await anyio.to_thread.run_sync(records.active_rollouts)
            if any(r.deployment == name for r in active):
                raise Conflict(f"{name!r} already has a rollout in progress", field="deployment")
            await self.fleet.warm(name, plan.canary)
            try:
                record = await anyio.to_thread.run_sync(
                    lambda: records.start_rollout(
                        name, plan.baseline, plan.canary, list(plan.steps), plan_config(plan)
                    )
                )
            except Exception:
                await self.fleet.scale(
                    name, 0, version=plan.canary, cause="rollout: not recorded, canary removed"
                )
                raise
        except BaseException:
            if leases is not None:
                await anyio.to_thread.run_sync(leases.release_lease, name)
            raise
        return self.start(record.rollout_id, plan)

    async def resume_all(self) -> None:
        """Pick up every rollout the registry says is running or paused."""
        if self.records is None:
            return
        names = {s.deployment for s in self.fleet.snapshot()}
        for record in await anyio.to_thread.run_sync(self.records.active_rollouts):
            if record.deployment in names:
                await self.resume(record)

    async def resume(self, record: Any) -> None:
        """Drive an active rollout from the step its record is at, if no other gateway does
        (with several gateways: at start-up, or after the one driving it went away)."""
        if self.is_stopping:
            return
        if self.leases is not None and not await anyio.to_thread.run_sync(
            self.leases.try_lease, record.deployment
        ):
            return
        plan = self._judged_as_served(plan_from_record(record))
        await self.fleet.warm(plan.deployment, plan.canary)  # kept as it is when already warm
        logger.info("resuming the rollout of %s at step %d", record.deployment, record.step_index)
        self.start(
            record.rollout_id,
            plan,
            step_index=record.step_index,
            status=RolloutStatus(record.status),
        )

    async def rollback(self, deployment: str) -> str:
        """Back to the previous version at once: abort a running rollout, else undo the last
        one. Returns the version now served; ``Conflict`` when there is none to go back to."""
        current = self.controllers.get(deployment)
        if current is not None and current.status.is_active:
            await current.abort("rolled back by operator")
            return current.plan.baseline
        records = self._records()
        primary = next((s.version for s in self.fleet.snapshot(deployment) if s.is_primary), None)
        if primary is None:
            raise NotFound(f"no deployment named {deployment!r}", field="model")
        previous = await anyio.to_thread.run_sync(records.last_promoted_baseline, deployment)
        if previous is None or previous == primary:
            raise Conflict(
                f"{deployment!r} has no previous version to go back to", field="deployment"
            )
        await self.fleet.warm(deployment, previous)
        await finish_rollout(self.fleet, deployment, previous, primary)
        await RegistryRolloutStore(records, self.metrics, deployment).record_traffic(
            deployment, TrafficSplit.of({previous: 100.0}), f"rollback from {primary}"
        )
        return previous

    def _judged_as_served(self, plan: RolloutPlan) -> RolloutPlan:
        """``plan`` with the LLM metrics when its deployment serves an LLM."""
        if any(s.llm is not None for s in self.fleet.snapshot(plan.deployment)):
            return dataclasses.replace(plan, analysis=with_llm_metrics(plan.analysis))
        return plan

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
        "min_metric_samples": analysis.min_metric_samples,
        "rank_tau": analysis.rank_tau,
        "is_latency_judged": analysis.is_latency_judged,
        "metrics": [
            {
                "name": rule.name,
                "is_higher_better": rule.is_higher_better,
                "min_effect": rule.min_effect,
                "min_relative_effect": rule.min_relative_effect,
            }
            for rule in analysis.metrics
        ],
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
            min_metric_samples=int(config.get("min_metric_samples", 100)),
            rank_tau=float(config.get("rank_tau", 0.05)),
            is_latency_judged=bool(config.get("is_latency_judged", True)),
            metrics=tuple(
                MetricRule(
                    str(rule["name"]),
                    bool(rule["is_higher_better"]),
                    float(rule.get("min_effect", 0.0)),
                    float(rule.get("min_relative_effect", 0.0)),
                )
                for rule in config.get("metrics", ())
            ),
        ),
    )
