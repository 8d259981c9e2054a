"""How the token-aware policies turn a raw wish into a replica count: stabilisation windows,
the scale-up rate limit, bounds, and scale to zero.

Kubernetes' HPA (which KEDA drives) keeps every recommendation of the last few minutes and
acts on the *least* of those in the scale-up window and the *most* of those in the
scale-down window (``behavior.scaleUp/scaleDown.stabilizationWindowSeconds``; 0 s and 300 s
by default), so a dip in load shrinks the fleet only once it has lasted the window, while a
rise acts at once. Its default scale-up policy adds at most ``max(100%, 4 pods)`` per period.
KEDA adds scale to zero: a deployment at zero is activated by the first waiting request, and
one is taken to zero only after its triggers have been idle for ``cooldownPeriod`` (300 s).
All three LLM policies share this, so their comparison is about the signal, not the damping.
A scale-down rate limit (HPA's ``scaleDown.policies``, e.g. the Kubernetes docs' "10% per
minute") is an option, off by default as in HPA.

Pure: ``now_s`` comes in, the recommendations travel in an immutable state value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import ScalingDecision, check_bounds, clamp_replicas
from aiscale.scaling.policies.llm_observation import LlmScalingObservation

__all__ = ["WindowConfig", "WindowState", "settle"]


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """Bounds and damping (defaults: HPA's and KEDA's, module docstring)."""

    min_replicas: int = 1
    max_replicas: int = 100
    upscale_stabilization_s: float = 0.0
    downscale_stabilization_s: float = 300.0
    #: Idle time before one replica goes to zero (KEDA ``cooldownPeriod``); only with
    #: ``min_replicas == 0``.
    scale_to_zero_delay_s: float = 300.0
    #: Scale-up limit per decision: at most ``max(current * (1 + fraction), current + pods)``.
    max_step_up_fraction: float = 1.0
    max_step_up_pods: int = 4
    #: Scale-down limit per decision: at most ``max(1, floor(current * fraction))`` replicas
    #: removed; ``None``: no limit (HPA's default policy removes up to 100% at once).
    max_step_down_fraction: float | None = None

    def __post_init__(self) -> None:
        check_bounds(self.min_replicas, self.max_replicas)
        for name in (
            "upscale_stabilization_s",
            "downscale_stabilization_s",
            "scale_to_zero_delay_s",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError("must be a finite number >= 0", field=name)
        step_down = self.max_step_down_fraction
        if step_down is not None and not 0 < step_down <= 1:
            raise ConfigError("must be in (0, 1] or None", field="max_step_down_fraction")
        if not self.max_step_up_fraction >= 0 or self.max_step_up_pods < 1:
            raise ConfigError("must be >= 0 (fraction) and >= 1 (pods)", field="max_step_up_pods")


@dataclass(frozen=True, slots=True)
class WindowState:
    """Recent ``(t_s, wish)`` recommendations (oldest first) and since when it is idle."""

    recommendations: tuple[tuple[float, int], ...] = ()
    idle_since_s: float | None = None


def settle(
    config: WindowConfig,
    observation: LlmScalingObservation,
    wish: int,
    state: WindowState,
    why: str,
) -> tuple[ScalingDecision, WindowState]:
    """The replica count for a raw ``wish`` (already ``>= 0``), and the next state.

    A deployment at zero with a request waiting (held at the gateway) or arriving gets at
    least one replica at once, never waiting out a window: the held request is never failed,
    it waits for the engine to load (the cold start the simulator reports).
    """
    now = observation.now_s
    current = observation.num_replicas
    idle_since = state.idle_since_s
    if observation.is_idle:
        idle_since = now if idle_since is None else idle_since
    else:
        idle_since = None
    if current == 0:
        if observation.num_waiting > 0 or observation.arrival_rate_per_s > 0:
            target = clamp_replicas(max(1, wish), max(1, config.min_replicas), config.max_replicas)
            return (
                ScalingDecision(target, f"activate from zero ({observation.num_waiting} held)"),
                WindowState(((now, target),), None),
            )
        return ScalingDecision(config.min_replicas, "idle at zero"), WindowState((), idle_since)
    bounded = clamp_replicas(max(wish, 1), max(config.min_replicas, 1), config.max_replicas)
    horizon = max(config.upscale_stabilization_s, config.downscale_stabilization_s)
    kept = tuple((t, w) for t, w in state.recommendations if now - t <= horizon)
    if not state.recommendations and (
        config.downscale_stabilization_s > config.upscale_stabilization_s
    ):
        # No history yet (the first decision): the fleet as it stands counts as a
        # recommendation of the scale-down window (not of the scale-up one, placed just
        # before it), so a window must pass before it shrinks but it may grow at once.
        kept = ((now - config.upscale_stabilization_s - 1e-6, current),)
    recommendations = (*kept, (now, bounded))
    up = min(w for t, w in recommendations if now - t <= config.upscale_stabilization_s)
    down = max(w for t, w in recommendations if now - t <= config.downscale_stabilization_s)
    if current < up:
        limit = max(
            math.ceil(current * (1.0 + config.max_step_up_fraction) - 1e-9),
            current + config.max_step_up_pods,
        )
        target, reason = min(up, limit), f"up: {why}"
    elif current > down:
        target, reason = down, f"down after {config.downscale_stabilization_s:.0f}s: {why}"
        if config.max_step_down_fraction is not None:
            step = max(1, math.floor(current * config.max_step_down_fraction))
            target = max(target, current - step)
    else:
        target, reason = current, f"hold: {why}"
    target = clamp_replicas(target, max(config.min_replicas, 1), config.max_replicas)
    if (
        config.min_replicas == 0
        and current == 1
        and idle_since is not None
        and now - idle_since >= config.scale_to_zero_delay_s
    ):
        return (
            ScalingDecision(0, f"idle for {now - idle_since:.0f}s: to zero"),
            WindowState((), idle_since),
        )
    return ScalingDecision(target, reason), WindowState(recommendations, idle_since)
