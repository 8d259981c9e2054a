"""Offline schedules: the fixed-utilisation oracle and the replay of a searched schedule.

``SchedulePolicy`` replays a fixed number of replicas per decision interval: the true
minimum found by search in the simulator (``aiscale.plan.oracle_search``) is such a schedule,
and replaying it through the same simulator as every other policy is how its SLO
attainment is measured.

``OraclePolicy`` (below, ``oracle-70`` in the benchmarks) is the older, simpler bound:
the fewest replicas per time step, knowing every future arrival, at a fixed planned
utilisation. It is not a lower bound (a policy that runs replicas hotter can go below it);
it is kept for comparison and for the planner.

Given the arrival rate of every step and the capacity of a replica (requests/s at the
utilisation that meets the SLO), step ``t`` needs ``r(t) = ceil(rate(t) / capacity)`` ready
replicas. A replica needed at ``t`` must have been started at ``t - startup_s``, and it is paid
for from its start, so the cheapest fleet at ``t`` is ``max r(tau)`` over
``tau in [t, t + startup_s]``; no schedule can pay for fewer replicas at ``t`` and still have
``r`` ready everywhere: minimal *for that capacity*, which fixes the utilisation instead of
finding the fewest replicas that meet the SLO.

Pure: each schedule is computed once from its config; ``decide`` only looks it up. Neither
is a live policy: both need the future.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiscale.errors import ConfigError
from aiscale.scaling.policies.base import (
    ScalingDecision,
    ScalingObservation,
    check_bounds,
    clamp_replicas,
)


def oracle_schedule(
    rates_per_s: Sequence[float],
    capacity_per_replica_per_s: float,
    startup_steps: int,
    min_replicas: int = 0,
    max_replicas: int = 1_000_000,
) -> tuple[int, ...]:
    """Replicas to pay for in each step (see the module docstring for why it is minimal)."""
    if capacity_per_replica_per_s <= 0:
        raise ConfigError("must be > 0", field="capacity_per_replica_per_s")
    needed = [
        clamp_replicas(
            math.ceil(rate / capacity_per_replica_per_s - 1e-9), min_replicas, max_replicas
        )
        for rate in rates_per_s
    ]
    # Sliding-window maximum over [t, t + startup_steps] with a monotonic deque of indices.
    result = [0] * len(needed)
    window: list[int] = []
    head = 0
    for t in range(len(needed) - 1, -1, -1):
        while len(window) > head and needed[window[-1]] <= needed[t]:
            window.pop()
        window.append(t)
        while window[head] > t + startup_steps:
            head += 1
        result[t] = needed[window[head]]
    return tuple(result)


@dataclass(frozen=True, slots=True)
class OracleConfig:
    """``rates_per_s[i]``: the arrival rate in ``[start_s + i*step_s, start_s + (i+1)*step_s)``."""

    rates_per_s: tuple[float, ...]
    step_s: float
    capacity_per_replica_per_s: float
    startup_s: float = 60.0
    start_s: float = 0.0
    min_replicas: int = 0
    max_replicas: int = 1_000_000
    #: How long a decision stands (the caller's decision interval): each decision covers the
    #: busiest step until the next one. ``None``: one step.
    decision_interval_s: float | None = None

    def __post_init__(self) -> None:
        check_bounds(self.min_replicas, self.max_replicas)
        if self.step_s <= 0:
            raise ConfigError("must be > 0", field="step_s")
        if self.startup_s < 0:
            raise ConfigError("must be >= 0", field="startup_s")


@dataclass(frozen=True, slots=True)
class OraclePolicy:
    config: OracleConfig
    schedule: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        schedule = oracle_schedule(
            cfg.rates_per_s,
            cfg.capacity_per_replica_per_s,
            math.ceil(cfg.startup_s / cfg.step_s),
            cfg.min_replicas,
            cfg.max_replicas,
        )
        object.__setattr__(self, "schedule", schedule)

    def initial_state(self) -> None:
        return None

    def target_at(self, now_s: float) -> int:
        """Replicas to pay for from ``now_s`` until the next decision (the last step's value
        after the schedule ends)."""
        cfg = self.config
        if not self.schedule:
            return cfg.min_replicas
        last = len(self.schedule) - 1
        first = min(max(int((now_s - cfg.start_s) // cfg.step_s), 0), last)
        num_steps = max(1, math.ceil((cfg.decision_interval_s or cfg.step_s) / cfg.step_s - 1e-9))
        return max(self.schedule[first : min(first + num_steps, last + 1)])

    def decide(self, observation: ScalingObservation, state: None) -> tuple[ScalingDecision, None]:
        return ScalingDecision(self.target_at(observation.now_s), "oracle schedule"), None


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """``replicas[i]``: replicas to pay for from ``start_s + i * interval_s`` until the next
    decision. ``replicas[0]`` is the fleet the run starts with (the simulator's
    ``initial_replicas``; its first decision comes one interval in); after the last entry
    the last value holds."""

    replicas: tuple[int, ...]
    interval_s: float
    start_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ConfigError("a schedule needs at least one entry", field="replicas")
        if any(count < 0 for count in self.replicas):
            raise ConfigError("replica counts must be >= 0", field="replicas")
        if self.interval_s <= 0:
            raise ConfigError("must be > 0", field="interval_s")


@dataclass(frozen=True, slots=True)
class SchedulePolicy:
    """Replays ``config.replicas``, one entry per decision interval; state ``None``."""

    config: ScheduleConfig

    def initial_state(self) -> None:
        return None

    def target_at(self, now_s: float) -> int:
        """The entry for the interval that starts at or just before ``now_s`` (decisions
        come at whole multiples of the interval; the slack absorbs float sums of them)."""
        cfg = self.config
        index = math.floor((now_s - cfg.start_s) / cfg.interval_s + 1e-6)
        return cfg.replicas[min(max(index, 0), len(cfg.replicas) - 1)]

    def decide(self, observation: ScalingObservation, state: None) -> tuple[ScalingDecision, None]:
        return ScalingDecision(self.target_at(observation.now_s), "replayed schedule"), None
