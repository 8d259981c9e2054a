"""Knative's Pod Autoscaler (KPA): stable and panic windows over observed concurrency.

Each decision samples the concurrency (in flight plus queued) and averages it over the stable
window (60 s) and the panic window (10% of it, 6 s). The wish is ``ceil(average / target)``,
bounded per decision by the maximum scale-up rate (``ceil(rate * ready)``) and scale-down
rate (``floor(ready / rate)``). When the panic wish reaches ``panic_threshold`` times the ready
count the policy panics: for at least one stable window it follows the panic wish and never
scales down. This follows ``pkg/autoscaler/scaling/autoscaler.go`` in knative/serving; the
defaults are Knative's ``config-autoscaler`` defaults.

With ``min_replicas=0`` the deployment scales to zero once the stable window saw no load and
``scale_to_zero_grace_s`` has passed, and is activated at once on the next request.

Pure: no clock, no I/O, no randomness. Samples are kept in the immutable state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import (
    ScalingDecision,
    ScalingObservation,
    check_bounds,
    clamp_replicas,
)


@dataclass(frozen=True, slots=True)
class KpaConfig:
    """Knobs; defaults are Knative's (target = 100 concurrent x 70% utilisation)."""

    target_concurrency: float = 100.0
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_to_zero_grace_s: float = 30.0
    min_replicas: int = 1
    max_replicas: int = 100

    def __post_init__(self) -> None:
        check_bounds(self.min_replicas, self.max_replicas)
        if self.target_concurrency <= 0:
            raise ConfigError("must be > 0", field="target_concurrency")
        if not 0 < self.target_utilization <= 1:
            raise ConfigError("must be in (0, 1]", field="target_utilization")
        if self.stable_window_s <= 0:
            raise ConfigError("must be > 0", field="stable_window_s")
        if not 0 < self.panic_window_percentage <= 100:
            raise ConfigError("must be in (0, 100]", field="panic_window_percentage")
        if self.max_scale_up_rate <= 1 or self.max_scale_down_rate <= 1:
            raise ConfigError("scale rates must be > 1", field="max_scale_up_rate")

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0

    @property
    def target_per_replica(self) -> float:
        return self.target_concurrency * self.target_utilization


@dataclass(frozen=True, slots=True)
class KpaState:
    """Concurrency samples inside the stable window, and the panic bookkeeping."""

    samples: tuple[tuple[float, float], ...] = ()
    panic_since_s: float | None = None
    max_panic_replicas: int = 0
    idle_since_s: float | None = None


def _window_average(samples: tuple[tuple[float, float], ...], since_s: float) -> float:
    values = [value for t, value in samples if t > since_s]
    return sum(values) / len(values) if values else 0.0


@dataclass(frozen=True, slots=True)
class KpaPolicy:
    config: KpaConfig = KpaConfig()

    def initial_state(self) -> KpaState:
        return KpaState()

    def decide(
        self, observation: ScalingObservation, state: KpaState
    ) -> tuple[ScalingDecision, KpaState]:
        cfg = self.config
        now = observation.now_s
        concurrency = float(observation.num_ongoing)
        samples = tuple(s for s in state.samples if s[0] > now - cfg.stable_window_s) + (
            (now, concurrency),
        )
        # Concurrency is a snapshot, often 0 under light steady traffic: idle also needs
        # no arrivals over the last interval.
        is_busy = concurrency > 0 or observation.arrival_rate_per_s > 0
        idle_since = (
            None
            if is_busy
            else (state.idle_since_s if state.idle_since_s is not None else now)
        )
        current = observation.num_replicas

        if current == 0 and concurrency > 0:  # the activator woke us up
            wish = clamp_replicas(
                math.ceil(concurrency / cfg.target_per_replica),
                max(1, cfg.min_replicas),
                cfg.max_replicas,
            )
            next_state = KpaState(samples, None, 0, idle_since)
            return ScalingDecision(wish, "activate from zero"), next_state

        stable = _window_average(samples, now - cfg.stable_window_s)
        panic = _window_average(samples, now - cfg.panic_window_s)
        ready = max(observation.num_ready, 1)
        max_up = math.ceil(cfg.max_scale_up_rate * ready)
        max_down = math.floor(ready / cfg.max_scale_down_rate)
        stable_wish = min(max(math.ceil(stable / cfg.target_per_replica - 1e-9), max_down), max_up)
        panic_wish = min(max(math.ceil(panic / cfg.target_per_replica - 1e-9), max_down), max_up)
        is_over_threshold = panic_wish / ready >= cfg.panic_threshold_percentage / 100.0

        panic_since = state.panic_since_s
        if is_over_threshold:
            panic_since = now  # (re)start panic; it lasts a stable window past the last trigger
        elif panic_since is not None and now - panic_since >= cfg.stable_window_s:
            panic_since = None

        if panic_since is not None:
            # Knative provisions for the larger of the two windows and never scales down
            # while panicking (the floor is the ready count when panic began).
            floor = state.max_panic_replicas if state.panic_since_s is not None else ready
            wish = max(panic_wish, stable_wish, floor)
            reason = f"panic: {panic:.1f} concurrent over {cfg.panic_window_s:.0f}s"
            max_panic = wish
        else:
            wish = stable_wish
            reason = f"stable: {stable:.1f} concurrent over {cfg.stable_window_s:.0f}s"
            max_panic = 0

        if wish == 0 and cfg.min_replicas == 0:
            if idle_since is None or now - idle_since < cfg.scale_to_zero_grace_s or stable > 0:
                wish = min(current, 1)  # hold the last replica through the grace period
            else:
                reason = f"idle {now - idle_since:.0f}s: scale to zero"
        target = clamp_replicas(wish, cfg.min_replicas, cfg.max_replicas)
        next_state = KpaState(samples, panic_since, max_panic, idle_since)
        return ScalingDecision(target, reason), next_state
