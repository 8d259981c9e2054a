"""The live autoscaler of one model version: a scaling policy applied on a clock, to a Fleet.

Every ``interval_s`` on its ``Clock`` (or at once when ``wake`` is called: a request reached
a version scaled to zero) it reads the version's ``FleetSnapshot``, adds the arrivals since
its last look to its ``ArrivalHistory``, builds the observation with ``observe`` (the same
function the simulator uses), asks the pure policy for a target, and asks the fleet for it
with ``Fleet.scale(..., cause="autoscaler: <the policy's reason>")``. That call reserves GPUs,
persists and records the cause, so the autoscaler, the monitor and an admin share one path.

A token-aware policy (``llm-*``, ``policies/llm_factory.py``) runs the same loop on an LLM
version: the observation is then ``observe_llm`` of the snapshot's ``llm`` signals (engine
queues, KV-cache use, TTFT/ITL p99 over the interval, tokens per second; the function the
LLM simulator shares, ``llm_observe.py``), and the histories it keeps are of prompt and
output tokens.

Two rules sit on top of the policy, both about other askers:
* a count set by someone else (a ``last_scale`` whose source is not ``autoscaler``: the
  monitor's ``scale_up``, an admin) is a floor for ``hold_s`` after it was set (default: the
  policy's downscale delay), not a mistake to undo on the next tick;
* a version taking part in a rollout is never scaled down (its analysis needs the traffic),
  and a warm version with no traffic is never taken to zero (that would remove it; removal
  is the rollout's call).

It never holds a lane or the gateway, never reads ``time`` and never sleeps except through
its clock, so a test or the simulator drives the same object in its own time. It never
raises out of its task: a failed decision or scale is logged and the fleet left as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from aiscale.contracts.clock import Clock, wait_or_timeout
from aiscale.contracts.fleet import Fleet, FleetSnapshot
from aiscale.errors import AiscaleError
from aiscale.scaling.history import DEFAULT_MAX_BINS, ArrivalHistory
from aiscale.scaling.llm_observe import LlmLoadSample, observe_llm
from aiscale.scaling.observe import LoadSample, observe
from aiscale.scaling.policies import (
    GuardedPolicy,
    KpaPolicy,
    PredictivePolicy,
    ReactivePolicy,
    ScalingDecision,
    make_policy,
)
from aiscale.scaling.policies.llm_factory import LLM_POLICY_NAMES, make_llm_policy
from aiscale.scaling.policies.llm_predictive import LlmPredictivePolicy
from aiscale.scaling.policies.llm_slo import LlmSloPolicy
from aiscale.scaling.policies.llm_target import LlmTargetPolicy

__all__ = [
    "AutoscalerMetrics",
    "VersionAutoscaler",
    "hold_s_of",
    "is_llm_policy",
    "make_scaling_policy",
]

logger = logging.getLogger(__name__)

#: The floor window after another asker's scale, for policies without a downscale delay.
DEFAULT_HOLD_S = 300.0
#: How long the first decision waits for the stored history before deciding without it.
HISTORY_RESTORE_TIMEOUT_S = 10.0
#: Points one restore asks for at most (Prometheus refuses more than 11,000 per query).
MAX_RESTORE_POINTS = 10_000

#: Stored arrivals of one version: ``(start_unix_s, end_unix_s, step_s)`` to
#: ``(unix_s, items_per_s)`` points, oldest first (the metrics history: Prometheus or the
#: monitor's own store). Raises on failure; the autoscaler then starts with no history.
HistorySource = Callable[[float, float, float], Awaitable[Sequence[tuple[float, float]]]]


class AutoscalerMetrics(Protocol):
    """The two metric families the autoscaler sets (``GatewayMetrics`` has them), labelled
    ``(deployment, version)`` and ``(deployment, version, direction)``."""

    autoscaler_target: Gauge
    autoscaler_decisions: Counter


def is_llm_policy(name: str) -> bool:
    """Whether ``name`` is a token-aware policy (it needs an LLM version's signals)."""
    return name in LLM_POLICY_NAMES


def make_scaling_policy(name: str, knobs: Mapping[str, Any]) -> Any:
    """The policy ``name``: a request/response one (``make_policy``) or a token-aware one
    (``make_llm_policy``). Unknown names or knobs raise ``ConfigError``."""
    if is_llm_policy(name):
        return make_llm_policy(name, **dict(knobs))
    return make_policy(name, **dict(knobs))


def hold_s_of(policy: Any) -> float:
    """How long another asker's count is a floor: the policy's own wait before scaling down
    (reactive and predictive: ``downscale_delay_s``; KPA: its stable window; token-aware:
    the scale-down stabilisation window); a guarded policy's is its inner policy's."""
    if isinstance(policy, GuardedPolicy):
        return hold_s_of(policy.inner)
    if isinstance(policy, LlmTargetPolicy | LlmSloPolicy):
        return policy.config.window.downscale_stabilization_s
    if isinstance(policy, LlmPredictivePolicy):
        return policy.config.slo.window.downscale_stabilization_s
    if isinstance(policy, ReactivePolicy):
        return policy.config.downscale_delay_s
    if isinstance(policy, PredictivePolicy):
        return policy.config.reactive.downscale_delay_s
    if isinstance(policy, KpaPolicy):
        return policy.config.stable_window_s
    return DEFAULT_HOLD_S


class VersionAutoscaler:
    """One version's scaling loop: ``start`` once its replicas are up, ``stop`` before they
    stop, ``wake`` from the request path (it only sets an event).

    ``lane_id``: the ``FleetSnapshot.lane_id`` this loop runs; snapshots of another lane of
    the same version (an old one being replaced, or its replacement) are left alone.
    ``None`` follows whichever lane serves the version.
    """

    def __init__(
        self,
        fleet: Fleet,
        clock: Clock,
        deployment: str,
        version: str,
        *,
        policy: str,
        knobs: Mapping[str, Any],
        interval_s: float,
        metrics: AutoscalerMetrics | None = None,
        lane_id: int | None = None,
        hold_s: float | None = None,
        history: ArrivalHistory | None = None,
        history_source: HistorySource | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.fleet = fleet
        self.clock = clock
        self.deployment = deployment
        self.version = version
        self.lane_id = lane_id
        self.interval_s = interval_s
        #: A ``ScalingPolicy`` or, for an LLM version, an ``LlmScalingPolicy``.
        self.policy: Any = make_scaling_policy(policy, knobs)
        self.is_llm = is_llm_policy(policy)
        self.hold_s = hold_s_of(self.policy) if hold_s is None else hold_s
        #: Arrivals in bins of one decision interval, a week at most (``history.py``),
        #: seeded from ``history_source`` when the loop starts (a restart, a redeploy).
        self.history = history if history is not None else ArrivalHistory(interval_s)
        #: Prompt and output tokens in the same bins (token-aware policies forecast them;
        #: up to 1 MiB each, so other loops keep two bins only).
        max_token_bins = DEFAULT_MAX_BINS if self.is_llm else 2
        self.prompt_token_history = ArrivalHistory(interval_s, max_bins=max_token_bins)
        self.output_token_history = ArrivalHistory(interval_s, max_bins=max_token_bins)
        self._history_source = history_source
        #: Points the last restore put into the history (0: none, or it failed).
        self.num_restored_points = 0
        #: The last decision (target and reason), for logs and tests.
        self.last_decision: ScalingDecision | None = None
        self._metrics = metrics
        self._state: Any = self.policy.initial_state()
        self._previous: LoadSample | None = None
        self._previous_llm: LlmLoadSample | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._scaling: asyncio.Task[None] | None = None

    # ----- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        snapshot = self._snapshot()
        if snapshot is not None:
            self._previous = LoadSample.of(snapshot, self.clock.monotonic())
            if self.is_llm and snapshot.llm is not None:
                self._previous_llm = LlmLoadSample.of(snapshot, self._previous.at_s)
        self._task = asyncio.create_task(
            self._run(), name=f"autoscaler-{self.deployment}-{self.version}"
        )

    async def stop(self) -> None:
        # The scale task may be the caller (scaling a warm version to zero removes its lane,
        # which stops this loop): it must not cancel and await itself.
        current = asyncio.current_task()
        tasks = [t for t in (self._task, self._scaling) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        """A request reached the version with no replica: decide now, not at the next tick."""
        self._wake.set()

    async def _restore_history(self) -> None:
        """Seed the history from the metrics history, so that a predictive policy forecasts
        from the first tick after a restart instead of a week later. Stored points are on
        the wall clock; the history is on the loop's monotonic clock."""
        if self._history_source is None or len(self.history) > 0:
            return
        end_s = self.clock.time()
        # Both clocks read at one moment, before the query's wait, so that wait does not
        # shift the restored points.
        offset_s = self.clock.monotonic() - end_s
        span_s = self.history.capacity * self.history.bin_s
        step_s = max(self.interval_s, span_s / MAX_RESTORE_POINTS)
        try:
            points = await asyncio.wait_for(
                self._history_source(end_s - span_s, end_s, step_s), HISTORY_RESTORE_TIMEOUT_S
            )
        except Exception as exc:  # a task boundary: deciding without history is safe
            logger.warning(
                "autoscaler %s version %s starts without stored history: %s",
                self.deployment, self.version, exc,
            )
            return
        start_mono_s = self._previous.at_s if self._previous is not None else None
        shifted = [
            (t_s + offset_s, rate)
            for t_s, rate in points
            if start_mono_s is None or t_s + offset_s <= start_mono_s
        ]
        self.history.restore(shifted)
        if shifted and start_mono_s is not None and start_mono_s > shifted[-1][0]:
            # The last point stands for the span up to the loop's first look, which
            # would otherwise read as bins with no traffic.
            last_s, last_rate = shifted[-1]
            self.history.add(last_s, start_mono_s, last_rate * (start_mono_s - last_s))
        self.num_restored_points = len(shifted)
        if shifted:
            logger.info(
                "autoscaler %s version %s restored %d history points (%.0f s)",
                self.deployment, self.version, len(shifted), shifted[-1][0] - shifted[0][0],
            )

    async def _run(self) -> None:
        await self._restore_history()
        while True:
            self._wake.clear()
            await wait_or_timeout(self.clock, self._wake, self.interval_s)
            try:
                self._step()
            except Exception:  # a task boundary: keep the fleet as it is, and say why
                logger.exception(
                    "autoscaler of %s version %s failed to decide", self.deployment, self.version
                )

    # ----- one decision ----------------------------------------------------------------
    def _snapshot(self) -> FleetSnapshot | None:
        for snapshot in self.fleet.snapshot(self.deployment):
            if snapshot.version == self.version:
                if self.lane_id is None or snapshot.lane_id == self.lane_id:
                    return snapshot
                return None
        return None

    def _step(self) -> None:
        snapshot = self._snapshot()
        if snapshot is None:
            return  # not serving (yet, or any more): nothing to observe
        now = self.clock.monotonic()
        sample = LoadSample.of(snapshot, now)
        previous = self._previous
        if previous is not None and previous.lane_id == sample.lane_id:
            self.history.add(previous.at_s, now, sample.num_arrived - previous.num_arrived)
        self._previous = sample
        if self.is_llm:
            if snapshot.llm is None:
                logger.warning(
                    "autoscaler %s version %s: a token-aware policy on a version without "
                    "LLM signals; nothing decided", self.deployment, self.version,
                )
                return
            observation: Any = self._observe_llm(snapshot, now)
        else:
            observation = observe(sample, previous, self.history)
        decision, self._state = self.policy.decide(observation, self._state)
        decision = self._with_other_askers(decision, snapshot, now)
        self.last_decision = decision
        target = decision.target_replicas
        labels = (self.deployment, self.version)
        if self._metrics is not None:
            self._metrics.autoscaler_target.labels(*labels).set(target)
        wanted = snapshot.num_wanted
        if target == wanted or (self._scaling is not None and not self._scaling.done()):
            return
        direction = "up" if target > wanted else "down"
        if self._metrics is not None:
            self._metrics.autoscaler_decisions.labels(*labels, direction).inc()
        logger.info(
            "autoscaler %s version %s: %d -> %d replicas (%s)",
            self.deployment,
            self.version,
            wanted,
            target,
            decision.reason,
        )
        self._scaling = asyncio.create_task(
            self._scale(target, decision.reason), name=f"autoscale-{self.deployment}"
        )

    def _observe_llm(self, snapshot: FleetSnapshot, now_s: float) -> Any:
        """The token-aware observation, the token histories brought up to ``now_s``."""
        sample = LlmLoadSample.of(snapshot, now_s)
        previous = self._previous_llm
        if previous is not None and previous.lane_id == sample.lane_id:
            self.prompt_token_history.add(
                previous.at_s, now_s, max(0.0, sample.prompt_tokens - previous.prompt_tokens)
            )
            self.output_token_history.add(
                previous.at_s, now_s, max(0.0, sample.output_tokens - previous.output_tokens)
            )
        self._previous_llm = sample
        return observe_llm(
            sample, previous, self.prompt_token_history, self.output_token_history
        )

    def _with_other_askers(
        self, decision: ScalingDecision, snapshot: FleetSnapshot, now_s: float
    ) -> ScalingDecision:
        """The policy's decision with the floors of other askers and of rollouts applied."""
        target, reason = decision.target_replicas, decision.reason
        record = snapshot.last_scale
        if record is not None and record.source != "autoscaler":
            age_s = now_s - record.at_s
            if age_s < self.hold_s and target < record.num_after:
                target = record.num_after
                reason = (
                    f"held at {target} set by {record.source} {age_s:.0f}s ago "
                    f"(for {self.hold_s:g}s); policy: {reason}"
                )
        if snapshot.is_in_rollout and target < snapshot.num_wanted:
            target = snapshot.num_wanted
            reason = f"in a rollout: not scaled down; policy: {reason}"
        if target == 0 and not snapshot.is_primary and snapshot.traffic_percent == 0:
            target = 1
            reason = f"a warm version is not taken to zero; policy: {reason}"
        if target == decision.target_replicas:
            return decision
        return ScalingDecision(target, reason)

    async def _scale(self, target: int, reason: str) -> None:
        try:
            await self.fleet.scale(
                self.deployment, target, version=self.version, cause=f"autoscaler: {reason}"
            )
        except AiscaleError as exc:  # e.g. no GPU within the team's quota: try next tick
            logger.warning(
                "autoscaler %s version %s could not scale to %d: %s",
                self.deployment,
                self.version,
                target,
                exc,
            )
        except Exception:  # a task boundary: log with context, keep the loop alive
            logger.exception(
                "autoscaler %s version %s failed to scale to %d",
                self.deployment,
                self.version,
                target,
            )
