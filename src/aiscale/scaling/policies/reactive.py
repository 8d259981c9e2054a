"""Target tracking on ongoing requests per replica, after Ray Serve's default autoscaler.

The raw wish is ``ceil(ready * (1 + (ongoing / (target * ready) - 1) * smoothing))``, Ray's
``_calculate_desired_num_replicas``. A wish above the current count is acted on once it has
held for ``upscale_delay_s``, one below once it has held for ``downscale_delay_s`` (and for
``scale_to_zero_delay_s`` before going from one replica to zero). Ray counts decision periods;
we compare seconds against ``now_s`` (STYLE rule 10) so the policy does not care how often it
is called. With ``min_replicas=0`` a deployment at zero is activated on the first request,
at once, as Ray does.

Pure: no clock, no I/O, no randomness.
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
class ReactiveConfig:
    """Knobs; defaults are Ray Serve's (``AutoscalingConfig``) except the replica bounds."""

    target_ongoing_requests: float = 2.0
    min_replicas: int = 1
    max_replicas: int = 100
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    #: How long a single replica must sit idle before going to zero (Ray's
    #: ``downscale_to_zero_delay_s``; ``None`` means ``downscale_delay_s``).
    scale_to_zero_delay_s: float | None = None
    upscale_smoothing_factor: float = 1.0
    downscale_smoothing_factor: float = 1.0
    #: At most this many replicas added (removed) per decision; ``None``: no limit.
    max_step_up: int | None = None
    max_step_down: int | None = None

    def __post_init__(self) -> None:
        check_bounds(self.min_replicas, self.max_replicas)
        if self.target_ongoing_requests <= 0:
            raise ConfigError("must be > 0", field="target_ongoing_requests")
        for name in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, name) < 0:
                raise ConfigError("must be >= 0", field=name)
        for name in ("upscale_smoothing_factor", "downscale_smoothing_factor"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be > 0", field=name)
        for name in ("max_step_up", "max_step_down"):
            step = getattr(self, name)
            if step is not None and step < 1:
                raise ConfigError("must be >= 1 or None", field=name)


@dataclass(frozen=True, slots=True)
class ReactiveState:
    """Since when the wish has been above (below) the current count; ``None``: it is not."""

    upscale_since_s: float | None = None
    downscale_since_s: float | None = None


def desired_replicas(config: ReactiveConfig, observation: ScalingObservation) -> int:
    """The raw wish before delays, bounds and step limits (Ray's formula)."""
    ongoing = observation.num_ongoing
    base = max(observation.num_ready, 1)
    error_ratio = ongoing / (config.target_ongoing_requests * base)
    factor = (
        config.upscale_smoothing_factor if error_ratio >= 1 else config.downscale_smoothing_factor
    )
    # The small epsilon keeps float noise (2.0000000001) from adding a replica.
    return max(0, math.ceil(base * (1.0 + (error_ratio - 1.0) * factor) - 1e-9))


@dataclass(frozen=True, slots=True)
class ReactivePolicy:
    config: ReactiveConfig = ReactiveConfig()

    def initial_state(self) -> ReactiveState:
        return ReactiveState()

    def decide(
        self, observation: ScalingObservation, state: ReactiveState
    ) -> tuple[ScalingDecision, ReactiveState]:
        cfg = self.config
        now = observation.now_s
        current = observation.num_replicas
        ongoing = observation.num_ongoing
        if current < cfg.min_replicas:
            return ScalingDecision(cfg.min_replicas, "below min_replicas"), ReactiveState()
        if current > cfg.max_replicas:
            return ScalingDecision(cfg.max_replicas, "above max_replicas"), ReactiveState()
        if current == 0:
            if ongoing > 0:  # activation: the first request wakes the deployment at once
                target = clamp_replicas(
                    max(1, desired_replicas(cfg, observation)), 1, cfg.max_replicas
                )
                target = self._limit_step(current, target)
                return ScalingDecision(target, "activate from zero"), ReactiveState()
            return ScalingDecision(0, "idle at zero"), ReactiveState()

        wish = clamp_replicas(
            desired_replicas(cfg, observation), cfg.min_replicas, cfg.max_replicas
        )
        if wish == 0:
            # Scale to zero only from one idle replica: a larger fleet first shrinks to one
            # (downscale delay), which then waits out the idle timeout.
            # Ongoing is a snapshot: under light steady traffic it is often 0 at the instant
            # of a decision while requests keep coming. Idle means no arrivals either.
            is_idle = ongoing == 0 and observation.arrival_rate_per_s == 0
            wish = 0 if current == 1 and is_idle else 1
        if wish > current:
            since = state.upscale_since_s if state.upscale_since_s is not None else now
            if now - since >= cfg.upscale_delay_s:
                target = self._limit_step(current, wish)
                return (
                    ScalingDecision(target, f"{ongoing} ongoing > target; held {now - since:.0f}s"),
                    ReactiveState(),
                )
            return ScalingDecision(current, "upscale pending"), ReactiveState(upscale_since_s=since)
        if wish < current:
            since = state.downscale_since_s if state.downscale_since_s is not None else now
            delay = cfg.downscale_delay_s
            if wish == 0 and cfg.scale_to_zero_delay_s is not None:
                delay = cfg.scale_to_zero_delay_s
            if now - since >= delay:
                target = self._limit_step(current, wish)
                return (
                    ScalingDecision(target, f"{ongoing} ongoing < target; held {now - since:.0f}s"),
                    ReactiveState(),
                )
            return (
                ScalingDecision(current, "downscale pending"),
                ReactiveState(downscale_since_s=since),
            )
        return ScalingDecision(current, "on target"), ReactiveState()

    def _limit_step(self, current: int, target: int) -> int:
        cfg = self.config
        if cfg.max_step_up is not None and target > current:
            target = min(target, current + cfg.max_step_up)
        if cfg.max_step_down is not None and target < current:
            target = max(target, current - cfg.max_step_down)
        return target
