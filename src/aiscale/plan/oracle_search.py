"""The true-minimum oracle: the fewest replica-hours that meet the SLO target, by search.

Knowing every arrival and the start-up time, which replica schedule pays for the fewest
replica-hours while ``slo_target`` of all requests are answered within the objective, in the
same simulator that judges the policies? A schedule pays ``P[i]`` replicas in decision
interval ``i`` (``P[0]``: the fleet the run starts with). The simulator starts replicas at a
decision and cancels the newest first, so with a start-up of ``s = ceil(startup / interval)``
intervals a replica is ready in interval ``j`` exactly when it was paid for through
``[j - s, j]``: ``ready[j] = min(P[j - s .. j])``. The search:

1. **Estimates.** For every interval ``j`` and ready count ``r``, the misses of ``j``'s
   requests (``_interval_misses``: the aggregated simulator's own fluid and latency model,
   per interval). ``need[j]``: the fewest ready replicas missing at most ``1e-4`` of them.
2. **Start-up.** ``P[i] = max(need[i .. i + s])``: each replica started ``s`` intervals
   ahead and paid from its start; with no violations this is the cheapest way to keep every
   ``need`` (``_schedule_search.window_max_ahead``).
3. **The violation budget** (only ``slo_target`` of the requests must be on time) is spent
   two ways, each a family of schedules from cautious to bold:
   - *greedy*: lower runs of equal ``P`` one replica at a time where it saves the most
     replica-time per estimated miss (start a replica later, stop it sooner, skip a short
     peak), recording the order of the moves;
   - *priced*: for a price ``lambda`` of one miss, the ready path minimising replica time +
     start-ups + ``lambda`` x estimated misses, exactly (``_schedule_search.chain_dp``),
     then paid ``s`` intervals ahead as in 2.
4. **Judged by the simulator.** Each family is bisected (on the number of moves; on
   ``log lambda``: the global slack) with every candidate replayed through ``simulate``
   (``SchedulePolicy``); its best is the cheapest candidate meeting ``slo_target`` there. If
   the unlowered schedule of 2 misses it (the estimates ignore how a backlog spreads), the
   needs are raised a replica at a time until it does. The cheapest constant fleet meeting
   the target is tried too. The answer is the cheapest of all, with its replay.

**Bounds.** No schedule meeting the target pays less than either of:

- *model bound*: the priced path of 3 on the optimistic per-interval misses (an empty queue
  at the interval's start, its backlog served the moment it ends: the aggregated model's
  own count, which a carried backlog only raises), maximised over ``lambda`` (Lagrangian
  duality: every ``lambda`` gives a bound); start-ups charged ``floor(startup / interval)``
  intervals per replica that becomes ready. It is a bound for the aggregated model; in the
  exact mode it is an estimate;
- *fluid bound* (``fluid_lower_bound_replica_hours``): the same with misses counted only
  for lack of capacity: each replica serving at most its best throughput, a request on
  time if served in its interval or, for the interval's last ``slo`` seconds, just after.

``optimality_gap`` is the oracle's replica-hours over the model bound.

Pure computation: no clock, no I/O; progress goes to an injected callback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan._interval_misses import IntervalMisses
from aiscale.plan._oracle_bounds import (
    dual_bound,
    fluid_lower_bound_replica_hours,
    fluid_terms,
)
from aiscale.plan._schedule_search import (
    apply_moves,
    chain_dp,
    greedy_moves,
    window_max_ahead,
)
from aiscale.plan._simcore import SimulationConfig, SimulationResult
from aiscale.plan.simulator import simulate
from aiscale.plan.traffic import ArrivalCounts, Arrivals, FloatArray
from aiscale.scaling.policies.oracle import ScheduleConfig, SchedulePolicy

__all__ = [
    "OracleSearch",
    "fluid_lower_bound_replica_hours",
    "replay_schedule",
    "search_oracle",
]

#: An interval's need: the fewest ready replicas missing at most this share of its requests.
NEED_TOLERANCE = 1e-4
#: Ready counts below the need that the estimates cover (lower ones are never proposed).
LEVELS_BELOW_NEED = 16
#: The greedy records moves until its estimated misses reach this many violation budgets.
GREEDY_BUDGETS = 3.0
#: Simulations per family's bisection (by default).
BISECTIONS = 9
ProgressCallback = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class OracleSearch:
    """The searched schedule, its replay through the simulator, and two lower bounds."""

    #: Replicas paid for in each decision interval; ``schedule[0]`` is the initial fleet.
    schedule: tuple[int, ...]
    interval_s: float
    startup_intervals: int
    #: The schedule replayed through ``simulate`` (the same model as every policy's run).
    result: SimulationResult
    model_bound_replica_hours: float
    fluid_bound_replica_hours: float
    #: Which family gave the answer: ``greedy``, ``priced``, ``unlowered`` or ``uniform``.
    how: str
    num_simulations: int
    slo_target: float

    @property
    def replica_hours(self) -> float:
        return self.result.replica_hours

    @property
    def slo_attainment(self) -> float:
        return self.result.slo_attainment

    @property
    def optimality_gap(self) -> float:
        """Oracle replica-hours over the model bound (1 would be provably optimal)."""
        bound = self.model_bound_replica_hours
        return self.replica_hours / bound if bound > 0 else math.inf

    def policy(self) -> SchedulePolicy:
        return SchedulePolicy(ScheduleConfig(self.schedule, self.interval_s))


def replay_schedule(
    arrivals: Arrivals | ArrivalCounts, config: SimulationConfig, schedule: Sequence[int]
) -> SimulationResult:
    """Run ``schedule`` (see ``OracleSearch.schedule``) through the simulator."""
    policy = SchedulePolicy(ScheduleConfig(tuple(schedule), config.decision_interval_s))
    return simulate(arrivals, policy, replace(config, initial_replicas=schedule[0]))


@dataclass(frozen=True, slots=True)
class _Tables:
    """Per interval ``j`` and level ``k`` (``min_level + k`` ready replicas)."""

    need: list[int]
    min_level: int
    #: Estimated misses (``inf`` below the estimated band); above the need, the need's.
    misses: FloatArray
    #: Misses no run can go below (the model bound's); zero above the need.
    least_misses: FloatArray
    #: Ready replica-seconds.
    ready_s: FloatArray


def search_oracle(
    arrivals: Arrivals | ArrivalCounts,
    config: SimulationConfig,
    *,
    slo_target: float = 0.99,
    min_replicas: int = 1,
    bisections: int = BISECTIONS,
    on_progress: ProgressCallback | None = None,
) -> OracleSearch:
    """The fewest replica-hours meeting ``slo_target`` in ``config``'s simulator (module
    docstring). ``arrivals`` as ``simulate`` takes them (``Arrivals`` for the exact mode).
    ``bisections``: simulations per family at most (fewer: faster, a coarser slack; the
    search costs about ``2 * bisections + 2`` simulations of the day). Raises
    ``ConfigError`` for a target outside (0, 1], a negative floor or no bisections."""
    if not 0 < slo_target <= 1:
        raise ConfigError("must be in (0, 1]", field="slo_target")
    if min_replicas < 0:
        raise ConfigError("must be >= 0", field="min_replicas")
    if bisections < 1:
        raise ConfigError("must be >= 1", field="bisections")
    counts = arrivals.counts(config.step_s) if isinstance(arrivals, Arrivals) else arrivals
    interval_s = config.decision_interval_s
    startup = max(0, math.ceil(config.replica_startup_s / interval_s - 1e-9))
    budget = (1.0 - slo_target) * counts.num_requests
    num_sims = 0

    def report(message: str) -> None:
        if on_progress is not None:
            on_progress(message)

    judged: dict[tuple[int, ...], SimulationResult] = {}

    def judge(schedule: Sequence[int]) -> SimulationResult:
        nonlocal num_sims
        key = tuple(schedule)
        if key not in judged:
            num_sims += 1
            judged[key] = replay_schedule(arrivals, config, schedule)
        return judged[key]

    def meets(result: SimulationResult) -> bool:
        return result.slo_attainment >= slo_target - 1e-12

    report("estimating each interval's misses per replica count")
    tables = _tables(IntervalMisses(counts, config), counts, config, min_replicas)
    best: tuple[list[int], SimulationResult, str] | None = None

    def consider(schedule: list[int], result: SimulationResult, how: str) -> None:
        nonlocal best
        if meets(result) and (best is None or result.replica_hours < best[1].replica_hours):
            best = (schedule, result, how)

    # 2. The unlowered schedule, raised until the simulator agrees it meets the target.
    for extra in range(51):
        start = window_max_ahead([n + extra for n in tables.need], startup)
        first = judge(start)
        report(f"unlowered schedule (need + {extra}): SLO {first.slo_attainment:.4f}")
        if meets(first):
            consider(start, first, "unlowered")
            break
    if best is None:
        raise ConfigError(
            f"no schedule up to 50 replicas above the estimated need meets {slo_target:.2%}",
            field="slo_target",
        )
    # 3-4. The greedy family, bisected on the number of moves.
    misses_rows = tables.misses.tolist()
    moves, spent = greedy_moves(
        start, misses_rows, tables.min_level, startup, min_replicas, GREEDY_BUDGETS * budget
    )
    safe, risky = 0, len(moves)
    mid = _first_over(spent, budget)  # first try: where the estimate spends the budget
    for _ in range(bisections):
        if risky - safe <= 1:
            break
        trial = apply_moves(start, moves, mid)
        result = judge(trial)
        report(
            f"greedy, {mid}/{len(moves)} moves (estimated {spent[mid - 1]:,.0f} misses of "
            f"{budget:,.0f} allowed): SLO {result.slo_attainment:.4f}, "
            f"{result.replica_hours:.2f} h"
        )
        consider(trial, result, "greedy")
        safe, risky = (mid, risky) if meets(result) else (safe, mid)
        mid = (safe + risky) // 2
    # 3-4. The priced family, bisected on log10 of the price of a miss.
    priced = _PricedFamily(tables, startup * interval_s, startup)
    low, high = priced.price_at(3.0 * budget), priced.price_at(0.3 * budget)
    for _ in range(bisections):
        log_price = (low + high) / 2
        trial, estimated = priced.schedule(log_price)
        result = judge(trial)
        report(
            f"priced, a miss = 10^{log_price:.2f} replica-s (estimated {estimated:,.0f} "
            f"misses): SLO {result.slo_attainment:.4f}, {result.replica_hours:.2f} h"
        )
        consider(trial, result, "priced")
        low, high = (low, log_price) if meets(result) else (log_price, high)
    assert best is not None
    schedule, result, how = best
    uniform = _cheapest_uniform(result.replica_hours, len(schedule), config, judge, meets)
    if uniform is not None:
        schedule, result, how = [uniform[0]] * len(schedule), uniform[1], "uniform"
    report(f"oracle: {result.replica_hours:.2f} replica-hours ({how})")
    return OracleSearch(
        schedule=tuple(schedule),
        interval_s=interval_s,
        startup_intervals=startup,
        result=result,
        model_bound_replica_hours=dual_bound(tables.ready_s, tables.least_misses, config, budget),
        fluid_bound_replica_hours=fluid_lower_bound_replica_hours(
            counts, config, slo_target=slo_target, min_replicas=min_replicas
        ),
        how=how,
        num_simulations=num_sims,
        slo_target=slo_target,
    )


def _first_over(spent: list[float], budget: float) -> int:
    """The move count whose estimate first passes the budget (at least one move)."""
    return max(1, min(len(spent), int(np.searchsorted(spent, budget)) + 1))


@dataclass(slots=True)
class _PricedFamily:
    tables: _Tables
    switch_s: float
    startup: int

    def path(self, log_price: float) -> tuple[list[int], float]:
        costs = self.tables.ready_s + 10.0**log_price * self.tables.misses
        _, path = chain_dp(costs, self.switch_s)
        estimated = float(self.tables.misses[np.arange(len(path)), path].sum())
        return path, estimated

    def schedule(self, log_price: float) -> tuple[list[int], float]:
        path, estimated = self.path(log_price)
        ready = [self.tables.min_level + k for k in path]
        return window_max_ahead(ready, self.startup), estimated

    def price_at(self, misses: float) -> float:
        """log10 of the price whose path's estimated misses come closest to ``misses``."""
        low, high = -9.0, 6.0
        for _ in range(16):
            mid = (low + high) / 2
            _, estimated = self.path(mid)
            low, high = (mid, high) if estimated > misses else (low, mid)
        return high


def _tables(
    estimate: IntervalMisses, counts: ArrivalCounts, config: SimulationConfig, floor: int
) -> _Tables:
    num = estimate.num_intervals
    arrivals = estimate.arrivals_per_interval()
    per_interval = estimate.max_rate_per_replica_s * estimate.steps_per_interval
    need = np.maximum(np.floor(arrivals / per_interval).astype(np.int64), floor)
    tolerance = NEED_TOLERANCE * np.maximum(arrivals, 1.0)
    open_ = np.arange(num)
    while open_.size:
        done = estimate.misses(open_, need[open_]) <= tolerance[open_]
        need[open_[~done]] += 1
        open_ = open_[~done]
    top = int(need.max(initial=floor))
    levels = np.arange(floor, top + 1)
    lost, _, lengths = fluid_terms(counts, config, levels)
    misses = np.full((num, levels.size), math.inf)
    least = lost.copy()
    every = np.arange(num)
    for d in range(LEVELS_BELOW_NEED + 1):
        ready = need - d
        valid = ready >= floor
        if not valid.any():
            break
        rows, cols = every[valid], ready[valid] - floor
        misses[rows, cols] = estimate.misses(rows, ready[valid])
        optimistic = estimate.misses(rows, ready[valid], is_optimistic=True)
        least[rows, cols] = np.maximum(optimistic, lost[rows, cols])
    above = levels[None, :] > need[:, None]
    misses = np.where(above, misses[every, need - floor][:, None], misses)
    least = np.where(above, 0.0, least)
    return _Tables(
        need=[int(v) for v in need],
        min_level=floor,
        misses=misses,
        least_misses=least,
        ready_s=levels[None, :] * lengths[:, None],
    )


def _cheapest_uniform(
    hours_to_beat: float,
    length: int,
    config: SimulationConfig,
    judge: Callable[[Sequence[int]], SimulationResult],
    meets: Callable[[SimulationResult], bool],
) -> tuple[int, SimulationResult] | None:
    """The smallest constant fleet meeting the target, if it pays less than
    ``hours_to_beat`` (bisection; only counts that could pay less are tried)."""
    day_h = length * config.decision_interval_s / 3600.0
    high = math.floor(hours_to_beat / day_h - 1e-9)
    if high < 1:
        return None
    result = judge([high] * length)
    if not meets(result):
        return None
    found, low = (high, result), 0
    while high - low > 1:
        mid = (low + high) // 2
        result = judge([mid] * length)
        if meets(result):
            found, high = (mid, result), mid
        else:
            low = mid
    return found if found[1].replica_hours < hours_to_beat else None
