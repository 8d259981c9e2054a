"""The live rollout controller: moves a canary through its steps on a real clock.

It owns time and I/O for one rollout; every judgement is the pure ``analysis.decide``. Each
step compares canary and baseline over the same period (counts since the step began). It
steers a deployment through the small ``RolloutTarget`` protocol and persists every change
through ``RolloutStore``, so a restarted server resumes where it was. Time is read from an
injected ``Clock`` (a test drives it with ``ManualClock``). It never imports the web
framework, the serving part or the database: ``live.py`` adapts the fleet and the registry.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from aiscale.contracts.clock import Clock, SystemClock, wait_or_timeout
from aiscale.contracts.histogram import Histogram
from aiscale.contracts.split import TrafficSplit, canary_split
from aiscale.errors import Conflict, InvalidInput
from aiscale.rollout.analysis import (
    AnalysisConfig,
    AnalysisState,
    CanaryDecision,
    CanaryObservation,
    RolloutStep,
    Verdict,
    VersionCounts,
    decide,
)

logger = logging.getLogger(__name__)


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"

    @property
    def is_active(self) -> bool:
        return self in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """What to roll out and how fast. ``steps`` are canary percents ending at 100."""

    deployment: str
    baseline: str
    canary: str
    steps: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
    interval_s: float = 5.0
    min_step_duration_s: float = 30.0
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    shadow_fraction: float = 0.0

    def __post_init__(self) -> None:
        steps = self.steps
        if not steps or steps[-1] != 100.0:
            raise InvalidInput("steps must end at 100", field="steps")
        if any(not 0 < s <= 100 for s in steps) or any(
            b <= a for a, b in zip(steps, steps[1:], strict=False)
        ):
            raise InvalidInput("steps must be increasing percents in (0, 100]", field="steps")
        if self.baseline == self.canary:
            raise InvalidInput("the canary must differ from the serving version", field="version")
        if self.interval_s <= 0 or self.min_step_duration_s < 0:
            raise InvalidInput(
                "interval_s must be > 0 and min_step_duration_s >= 0", field="interval_s"
            )


class RolloutTarget(Protocol):
    """The deployment a rollout steers (the ``Fleet`` behind an adapter, ``live.py``)."""

    def counts(self, version: str) -> VersionCounts:
        """Cumulative counts of a version since its lane started."""
        ...

    async def set_split(self, split: TrafficSplit, cause: str) -> None: ...

    async def finish(self, winner: str, loser: str) -> None:
        """Give ``winner`` all traffic, make it the primary version and drain ``loser``."""
        ...


class RolloutStore(Protocol):
    """Where rollout progress, decisions and traffic history are kept (the registry)."""

    async def save_progress(
        self, rollout_id: Any, step_index: int, status: str, reason: str
    ) -> None: ...

    async def record_decision(
        self, rollout_id: Any, step_index: int, verdict: str, reason: str, numbers: dict[str, Any]
    ) -> None: ...

    async def record_traffic(self, deployment: str, split: TrafficSplit, cause: str) -> None: ...


def subtract(later: VersionCounts, earlier: VersionCounts) -> VersionCounts:
    """Counts of the period between two cumulative snapshots of one version."""

    def minus(a: Histogram, b: Histogram) -> Histogram:
        counts = tuple(x - y for x, y in zip(a.counts, b.counts, strict=True))
        return Histogram(a.upper_bounds, counts, max(0.0, a.total - b.total))

    metrics = {
        name: minus(hist, earlier.metrics[name]) if name in earlier.metrics else hist
        for name, hist in later.metrics.items()
    }
    return VersionCounts(
        later.num_requests - earlier.num_requests,
        later.num_errors - earlier.num_errors,
        minus(later.latency_s, earlier.latency_s),
        metrics,
    )


def decision_numbers(decision: CanaryDecision) -> dict[str, Any]:
    return {
        "needs_requests": decision.num_requests_needed,
        "tests": [
            {
                "name": t.name,
                "method": t.method,
                "baseline": t.baseline_value,
                "canary": t.canary_value,
                "p_value": t.p_value,
                "alpha": t.alpha,
                "is_worse": t.is_significant and t.is_material,
                "n_baseline": t.num_baseline,
                "n_canary": t.num_canary,
                "summary": t.summary,
            }
            for t in decision.tests
        ],
    }


class RolloutController:
    """Runs one rollout to its end; pause, resume, promote and abort come from admin calls."""

    def __init__(
        self,
        rollout_id: Any,
        plan: RolloutPlan,
        target: RolloutTarget,
        store: RolloutStore,
        *,
        step_index: int = 0,
        status: RolloutStatus = RolloutStatus.RUNNING,
        clock: Clock | None = None,
    ) -> None:
        self.rollout_id = rollout_id
        self._clock: Clock = clock if clock is not None else SystemClock()
        self.plan = plan
        self.target = target
        self.store = store
        self.step_index = step_index
        self.status = status
        self.last_decision: CanaryDecision | None = None
        self.reason = ""
        self._analysis = AnalysisState()
        self._wake = asyncio.Event()
        self._step_started_s = self._clock.monotonic()
        self._at_step_start: tuple[VersionCounts, VersionCounts] | None = None
        self.done = asyncio.Event()

    @property
    def canary_percent(self) -> float:
        return self.plan.steps[self.step_index]

    # ----- commands --------------------------------------------------------------------------
    async def pause(self) -> None:
        self._require_active()
        self.status = RolloutStatus.PAUSED
        await self._operator("pause", "paused by operator")

    async def resume(self) -> None:
        self._require_active()
        self.status = RolloutStatus.RUNNING
        await self._operator("resume", "resumed by operator")
        self._wake.set()

    async def promote(self) -> None:
        """Finish now: the canary takes all traffic."""
        self._require_active()
        await self._operator("promote_manual", "promoted by operator")
        await self._finish_promoted("promoted by operator")

    async def abort(self, reason: str = "aborted by operator") -> None:
        self._require_active()
        await self._operator("abort", reason)
        await self._roll_back(RolloutStatus.ABORTED, reason)

    async def _operator(self, verdict: str, reason: str) -> None:
        self.reason = reason
        await self.store.record_decision(self.rollout_id, self.step_index, verdict, reason, {})
        if self.status.is_active:
            await self._save(reason)

    def _require_active(self) -> None:
        if not self.status.is_active:
            raise Conflict(
                f"the rollout of {self.plan.deployment!r} has ended ({self.status})",
                field="rollout",
            )

    # ----- the loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Enter the current step, then look every ``interval_s`` until the rollout ends."""
        try:
            await self._enter_step(self.step_index, "rollout step")
            while self.status.is_active:
                self._wake.clear()
                await wait_or_timeout(self._clock, self._wake, self.plan.interval_s)
                if self.status is RolloutStatus.RUNNING:
                    await self._look()
        finally:
            self.done.set()

    async def _look(self) -> None:
        assert self._at_step_start is not None
        baseline_start, canary_start = self._at_step_start
        observation = CanaryObservation(
            baseline=subtract(self.target.counts(self.plan.baseline), baseline_start),
            canary=subtract(self.target.counts(self.plan.canary), canary_start),
            step=RolloutStep(
                self.step_index,
                self.canary_percent,
                self._step_started_s,
                self.plan.min_step_duration_s,
            ),
            now_s=self._clock.monotonic(),
        )
        decision, self._analysis = decide(observation, self._analysis, self.plan.analysis)
        changed = self.last_decision is None or self.last_decision.verdict != decision.verdict
        self.last_decision = decision
        self.reason = decision.reason
        if changed or decision.verdict in (Verdict.PROMOTE, Verdict.ROLLBACK):
            logger.info(
                "rollout of %s step %d: %s (%s)",
                self.plan.deployment,
                self.step_index,
                decision.verdict,
                decision.reason,
            )
            await self.store.record_decision(
                self.rollout_id,
                self.step_index,
                str(decision.verdict),
                decision.reason,
                decision_numbers(decision),
            )
        if decision.verdict is Verdict.ROLLBACK:
            await self._roll_back(RolloutStatus.ROLLED_BACK, decision.reason)
        elif decision.verdict is Verdict.PROMOTE:
            if self.plan.steps[self.step_index + 1] >= 100.0:
                await self._finish_promoted(decision.reason)
            else:
                await self._enter_step(self.step_index + 1, decision.reason)

    async def _enter_step(self, index: int, cause: str) -> None:
        if self.plan.steps[index] >= 100.0:
            await self._finish_promoted(cause)
            return
        self.step_index = index
        split = canary_split(
            self.plan.baseline,
            self.plan.canary,
            self.plan.steps[index],
            salt=self.plan.deployment,
            shadow_version=self.plan.canary if self.plan.shadow_fraction else None,
            shadow_fraction=self.plan.shadow_fraction,
        )
        await self.target.set_split(split, f"rollout step {index}: {cause}")
        self._step_started_s = self._clock.monotonic()
        self._at_step_start = (
            self.target.counts(self.plan.baseline),
            self.target.counts(self.plan.canary),
        )
        await self.store.record_traffic(self.plan.deployment, split, f"step {index}: {cause}")
        await self._save(f"step {index} at {self.plan.steps[index]:g}%")

    async def _finish_promoted(self, reason: str) -> None:
        self.step_index = len(self.plan.steps) - 1
        await self._end(RolloutStatus.PROMOTED, self.plan.canary, self.plan.baseline, reason)

    async def _roll_back(self, status: RolloutStatus, reason: str) -> None:
        await self._end(status, self.plan.baseline, self.plan.canary, reason)

    async def _end(self, status: RolloutStatus, winner: str, loser: str, reason: str) -> None:
        """Switch all traffic to ``winner`` at once and record it, then drain ``loser``.

        The switch and the records come first, so that a server stopped while the loser
        drains restarts with the outcome already in the registry.
        """
        split = TrafficSplit.of({winner: 100.0})
        await self.target.set_split(split, f"rollout {status}: {reason}")
        await self.store.record_traffic(self.plan.deployment, split, f"{status}: {reason}")
        self.status = status
        self.reason = reason
        await self._save(reason)
        self._wake.set()
        await self.target.finish(winner, loser)

    async def _save(self, reason: str) -> None:
        await self.store.save_progress(self.rollout_id, self.step_index, str(self.status), reason)


def steps_from_text(text: str) -> tuple[float, ...]:
    """``"1,5,25,50,100"`` → ``(1.0, 5.0, 25.0, 50.0, 100.0)``; ``InvalidInput`` otherwise."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InvalidInput(
            f"steps must be comma-separated percents, not {text!r}", field="steps"
        ) from None
