"""The autoscaling contract: what a policy observes, what it decides, and its protocol.

A policy is pure (STYLE rule 9): ``decide(observation, state) -> (decision, state)``. It never
reads a clock (``now_s`` travels in the observation), never does I/O and never uses global
randomness. The live controller and the simulator are its only callers; both build a
``ScalingObservation`` every decision interval and apply ``ScalingDecision.target_replicas``.
This module must never import anything outside the standard library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from aiscale.errors import ConfigError

StateT = TypeVar("StateT")


@dataclass(frozen=True, slots=True)
class ScalingObservation:
    """One deployment, seen at ``now_s`` (seconds on the caller's clock: real or simulated).

    ``num_replicas`` counts replicas that exist and are paid for (ready plus starting, not
    draining ones). Rates are per second over the last decision interval.
    ``arrival_history`` holds ``(bin_start_s, count)`` pairs in time order, in evenly spaced
    bins, ending at or before ``now_s``; callers pass an empty sequence when they keep none.
    It is read-only by contract (the simulator passes a view, not a copy).
    """

    now_s: float
    num_replicas: int
    num_ready: int
    num_starting: int
    num_in_flight: int
    num_queued: int
    arrival_rate_per_s: float
    completed_rate_per_s: float
    mean_service_time_s: float | None = None
    arrival_history: Sequence[tuple[float, float]] = ()

    @property
    def num_ongoing(self) -> int:
        """Requests in the system: being served plus waiting (Ray's "ongoing requests")."""
        return self.num_in_flight + self.num_queued


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """The number of replicas the deployment should have, and why (for logs and timelines)."""

    target_replicas: int
    reason: str


class ScalingPolicy(Protocol[StateT]):
    """A pure autoscaling policy; ``StateT`` is its own immutable state value."""

    def initial_state(self) -> StateT:
        """The state before the first observation."""
        ...

    def decide(
        self, observation: ScalingObservation, state: StateT
    ) -> tuple[ScalingDecision, StateT]:
        """Return the target replica count for ``observation`` and the next state."""
        ...


def clamp_replicas(value: int, min_replicas: int, max_replicas: int) -> int:
    """``value`` limited to ``[min_replicas, max_replicas]``."""
    return max(min_replicas, min(max_replicas, value))


def check_bounds(min_replicas: int, max_replicas: int) -> None:
    """Raise ``ConfigError`` unless ``0 <= min_replicas <= max_replicas``."""
    if min_replicas < 0:
        raise ConfigError("min_replicas must be >= 0", field="min_replicas")
    if max_replicas < max(min_replicas, 1):
        raise ConfigError("max_replicas must be >= max(min_replicas, 1)", field="max_replicas")
