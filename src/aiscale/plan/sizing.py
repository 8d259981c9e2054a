"""Replica sizing: how one replica of a profiled model runs under load, and what it is planned
to serve.

The replica is modelled as it runs (the same service model as the exact simulator,
``_exact.py``; checked against a real ``aiscale serve`` by
``benchmarks/simulator/sizing_check.py``):

- a batch of ``b`` takes ``S(b, r) = mean_latency(b) * slowdown(r)`` at ``r`` requests/s per
  replica: the model alone (the profile's latency times its composition spread's mean) times
  the measured in-server slowdown (``ServerTerms.slowdown``: its curve ends at the
  calibration's closed loop at full batches, so the served capacity is the measured one);
- the live batcher takes what is queued, up to ``max_batch_size``, when the replica frees, so
  at load ``r`` batches settle where ``b = r * S(b, r)``: the requests that arrive while one
  batch runs form the next (``batch_at``; the largest such ``b``, the one a backlog settles
  at). A large ``max_batch_size`` therefore costs nothing at light load: batches grow only
  with the load;
- the full capacity with batches of ``B`` solves ``c = B / S(B, c)``
  (``served_capacity_per_s``);
- each request also spends the per-request overhead outside the replica (the measured
  quantiles times ``overhead_scale(r)``) and, with capture, the commit's wait.

The rules ``size_replica`` applies (stated, and returned in ``ReplicaSizing``):

1. ``max_batch_size``: among the batches whose one full batch fits the SLO (``S(B, c) + delay
   <= SLO``: otherwise every request of a full batch misses it), the smallest whose full
   capacity is within ``THROUGHPUT_TOLERANCE`` (1%) of the best. Throughput is not throttled.
2. The latency rule: the planned capacity is the highest rate, up to ``target_utilization``
   times the full capacity, at which one replica keeps the 99th percentile of its latency
   within the SLO on Poisson arrivals: the exact simulator's replica (the batcher's rule,
   the slowdown, the overhead and the capture commit with its stalls) on
   ``_RULE_REQUESTS`` arrivals, seeded; found by bisection when the cap misses it. A
   batching replica at a steady 70% of its capacity queues far more than one batch ahead
   (batch sizes swing with the Poisson counts: at 200/s of 290/s a p99 of 80 ms where one
   batch takes 13 ms), so no closed formula of the kind the old rule used is trusted here.
   ``target_utilization`` (0.7, Knative's and the predictive policy's default) is the
   headroom above that for bursts and the start-up time; when the latency rule binds first,
   ``ReplicaSizing.target_utilization`` is the lower share it allows. Before any of it, one
   request alone (its batch of one, the overhead and the commit at the 99th percentile)
   must fit the SLO, or the SLO is refused saying which part is too slow.

Pure functions of the profile (the simulations are seeded), cached per profile: no I/O, no
clock. Used by the planner, ``aiscale simulate``, the policies' configuration and the
benchmarks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiscale.errors import InvalidInput
from aiscale.plan._simcore import SimulationConfig, SimulationResult
from aiscale.plan.profile import ModelProfile
from aiscale.plan.simulator import simulate
from aiscale.plan.traffic import Arrivals
from aiscale.scaling.policies import StaticConfig, StaticPolicy

#: Largest batch considered (the profile measures 1..128).
MAX_BATCH_LIMIT = 128
#: A larger batch must add more than this share of throughput to be chosen (rule 1).
THROUGHPUT_TOLERANCE = 0.01
#: The percentile the latency rule holds (rule 2).
LATENCY_QUANTILE = 0.99
#: Arrivals of each simulation of rule 2, and its bisection's steps below the cap.
_RULE_REQUESTS = 20_000
_RULE_STEPS = 12
#: Draws behind the light-load check.
_LIGHT_DRAWS = 4096


@dataclass(frozen=True, slots=True)
class ReplicaSizing:
    """How one replica of ``profile`` is run to meet ``slo_p99_ms`` (module docstring)."""

    profile: ModelProfile
    slo_p99_ms: float
    max_batch_size: int
    max_batch_delay_s: float
    #: Requests/s the replica serves with full batches of ``max_batch_size`` (saturated).
    full_capacity_per_s: float
    #: The planned share of the full capacity: the one asked for, or lower where the latency
    #: rule binds first (``is_latency_limited``).
    target_utilization: float
    startup_s: float
    #: The live batch at the planned capacity (``batch_at``).
    planned_batch: float = 1.0
    #: The simulated replica's p99 at the planned capacity (rule 2), in ms.
    planned_p99_ms: float = math.nan
    #: Whether the latency rule, not the asked utilisation, set the planned capacity.
    is_latency_limited: bool = False

    @property
    def capacity_per_s(self) -> float:
        """Requests/s one replica is planned to serve (at the target utilisation)."""
        return self.full_capacity_per_s * self.target_utilization

    def batch_at(self, rate_per_s: float) -> float:
        """The mean batch the live batcher forms at ``rate_per_s`` arrivals per replica."""
        return float(batch_at(self.profile, np.array([rate_per_s]), self.max_batch_size)[0])

    def ongoing_at_target(self, num_requests: int = 20_000, seed: int = 0) -> float:
        """Requests in one replica (queued plus in a batch) when it serves ``capacity_per_s``.

        A batching replica's concurrency is far from linear in its load (batches stay small,
        then grow quickly near the knee), so no closed formula is trusted here: one replica is
        simulated exactly on ``num_requests`` Poisson arrivals at ``capacity_per_s`` (seeded,
        so the answer is a pure function of the profile) and Little's law gives the mean
        number in the system: ``rate * mean latency``.
        """
        return _ongoing(
            self.profile,
            self.max_batch_size,
            self.max_batch_delay_s,
            self.capacity_per_s,
            num_requests,
            seed,
        )


def _one_replica(
    profile: ModelProfile,
    max_batch_size: int,
    max_batch_delay_s: float,
    rate: float,
    num_requests: int,
    seed: int,
) -> SimulationResult:
    """One replica simulated exactly on ``num_requests`` Poisson arrivals at ``rate``."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(1.0 / rate, num_requests))
    duration = float(times[-1]) + 1e-6
    config = SimulationConfig(
        profile=profile,
        max_batch_size=max_batch_size,
        max_batch_delay_s=max_batch_delay_s,
        max_queue=num_requests,
        initial_replicas=1,
        decision_interval_s=duration,
        mode="exact",
        seed=seed,
    )
    return simulate(Arrivals(times, duration), StaticPolicy(StaticConfig(1)), config)


@functools.lru_cache(maxsize=256)
def _ongoing(
    profile: ModelProfile,
    max_batch_size: int,
    max_batch_delay_s: float,
    rate: float,
    num_requests: int,
    seed: int,
) -> float:
    result = _one_replica(profile, max_batch_size, max_batch_delay_s, rate, num_requests, seed)
    mean_s = result.mean_ms / 1000.0
    server = profile.server
    if server is not None:
        # The per-request overhead is spent outside the replica (HTTP, gateway): the
        # ongoing count a policy sees holds only the queued and batched requests.
        mean_s -= server.mean_overhead_s * float(server.overhead_scale(rate))
        if server.disk is not None:  # the capture commit comes after the batch, too
            mean_s -= server.disk.mean_wait_s
    return max(1.0, rate * mean_s)


def _slowdown(profile: ModelProfile, rates: Any) -> Any:
    """The in-server slowdown at ``rates`` (1 without server terms)."""
    if profile.server is None:
        return np.ones_like(np.asarray(rates, dtype=np.float64))
    return profile.server.slowdown(np.asarray(rates, dtype=np.float64))


def _latency_table(profile: ModelProfile, max_batch: int) -> Any:
    """``mean_latency_s(b)`` for ``b = 1..max_batch`` (index ``b - 1``): exact under linear
    interpolation, as the profile's latency is linear between whole measured sizes."""
    return np.array([profile.mean_latency_s(b) for b in range(1, max_batch + 1)])


def batch_at(profile: ModelProfile, rates_per_s: Any, max_batch_size: int) -> Any:
    """The batch the live batcher settles at for each rate (numpy array in and out).

    The largest fixed point of ``b = clip(r * S(b, r), 1, max_batch_size)``, iterated down
    from ``max_batch_size`` (the map rises with ``b``, so the iteration falls monotonically
    onto it): after a burst, batches shrink back to it, not below."""
    rates = np.asarray(rates_per_s, dtype=np.float64)
    sizes = np.arange(1, max_batch_size + 1, dtype=np.float64)
    table = _latency_table(profile, max_batch_size)
    factor = rates * _slowdown(profile, rates)
    batch = np.full_like(rates, float(max_batch_size))
    for _ in range(500):
        following = np.clip(factor * np.interp(batch, sizes, table), 1.0, max_batch_size)
        if np.all(np.abs(following - batch) < 1e-9):
            break
        batch = following
    return batch


def served_capacity_per_s(profile: ModelProfile, batch_size: int) -> float:
    """Requests/s one replica serves with full batches of ``batch_size`` in the server.

    The batch takes ``latency(b) * slowdown(c)`` at the rate ``c`` it serves, so ``c = b /
    (latency(b) * slowdown(c))``; with the line ``s0 + s1 * c`` that is the root of
    ``s1 * latency * c**2 + s0 * latency * c - b``, with the measured curve the lowest
    crossing (found on a grid, then by bisection); without server terms ``b / latency(b)``.
    """
    latency = profile.mean_latency_s(batch_size)
    server = profile.server
    if server is None:
        return batch_size / latency
    if not server.slowdown_rates_per_s:
        s0, s1 = server.model_slowdown, server.model_slowdown_per_rps
        if s1 <= 0:
            return batch_size / (latency * s0)
        a, b = s1 * latency, s0 * latency
        return (-b + math.sqrt(b * b + 4 * a * batch_size)) / (2 * a)
    highest = batch_size / (latency * min(server.slowdown_values))
    grid = np.linspace(0.0, highest, 1025)
    excess = grid * latency * server.slowdown(grid) - batch_size
    above = int(np.argmax(excess >= 0))  # the last grid point is >= 0 by construction
    low, high = float(grid[max(above - 1, 0)]), float(grid[above])
    for _ in range(60):
        middle = (low + high) / 2
        if middle * latency * server.slowdown(middle) - batch_size >= 0:
            high = middle
        else:
            low = middle
    return high


def light_p99_s(profile: ModelProfile) -> tuple[float, str]:
    """The p99 latency of one request alone (a batch of one with its composition spread, the
    overhead and the capture commit at rate 0) and, for a message, each part's own p99."""
    rng = np.random.default_rng(0)
    ratio_draws, overhead_draws, commit_draws = rng.random((3, _LIGHT_DRAWS))
    batch = np.full(_LIGHT_DRAWS, profile.latency_s(1) * float(_slowdown(profile, 0.0)))
    if profile.spread is not None:
        batch = batch * np.asarray(profile.spread.ratio_at(ratio_draws))
    overhead = np.zeros(_LIGHT_DRAWS)
    commit = np.zeros(_LIGHT_DRAWS)
    server = profile.server
    if server is not None:
        overhead = np.asarray(server.overhead_at(overhead_draws))
        if server.disk is not None:
            waits, chances = server.disk.wait_points()
            edges = np.cumsum(chances)
            index = np.minimum(np.searchsorted(edges, commit_draws * edges[-1]), len(waits) - 1)
            commit = np.asarray(waits)[index]
    parts = ", ".join(
        f"{name} {float(np.quantile(values, LATENCY_QUANTILE)) * 1000:.0f} ms"
        for name, values in (
            ("a batch of one", batch),
            ("the server's overhead", overhead),
            ("the capture commit", commit),
        )
    )
    return float(np.quantile(batch + overhead + commit, LATENCY_QUANTILE)), parts


def simulated_p99_s(
    profile: ModelProfile, max_batch_size: int, max_batch_delay_s: float, rate_per_s: float
) -> float:
    """Rule 2's figure: the p99 latency (s) of one replica simulated at ``rate_per_s``."""
    result = _one_replica(
        profile, max_batch_size, max_batch_delay_s, rate_per_s, _RULE_REQUESTS, seed=0
    )
    if result.completed < result.requests:
        return math.inf  # it fell behind past the drain: far over any SLO
    return result.p99_ms / 1000.0


def size_replica(
    profile: ModelProfile,
    slo_p99_ms: float,
    *,
    target_utilization: float = 0.7,
    max_batch_delay_s: float = 0.010,
    startup_s: float | None = None,
    max_batch_size: int | None = None,
) -> ReplicaSizing:
    """Size one replica of ``profile`` by rules 1 and 2 of the module docstring.

    ``max_batch_size`` fixes the batch instead (as ``aiscale serve --max-batch-size`` does);
    then an SLO no load meets only scores the result and the planned capacity stays at
    ``target_utilization`` of the full one. Raises ``InvalidInput`` naming the field: the SLO
    (``slo_p99_ms``) when even one request alone cannot meet it, a bad utilisation or batch.
    """
    if not slo_p99_ms > 0:
        raise InvalidInput("the SLO must be > 0 ms", field="slo_p99_ms")
    if not 0 < target_utilization <= 1:
        raise InvalidInput("must be in (0, 1]", field="target_utilization")
    if max_batch_size is not None and not 1 <= max_batch_size <= MAX_BATCH_LIMIT:
        raise InvalidInput(f"must be in 1..{MAX_BATCH_LIMIT}", field="max_batch_size")
    return _size(
        profile, float(slo_p99_ms), target_utilization, max_batch_delay_s, startup_s,
        max_batch_size,
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _size(
    profile: ModelProfile,
    slo_p99_ms: float,
    target_utilization: float,
    max_batch_delay_s: float,
    startup_s: float | None,
    max_batch_size: int | None,
) -> ReplicaSizing:
    slo_s = slo_p99_ms / 1000.0
    is_fixed = max_batch_size is not None
    if max_batch_size is None:
        max_batch_size = choose_max_batch(profile, slo_s - max_batch_delay_s)
    light_s, parts = light_p99_s(profile)
    if light_s > slo_s and not is_fixed:
        raise InvalidInput(
            f"{profile.model} on {profile.hardware} needs {light_s * 1000:.0f} ms at the p99"
            f" for one request alone (p99 of each part: {parts}); the SLO of "
            f"{slo_p99_ms:g} ms cannot be met",
            field="slo_p99_ms",
        )
    full = served_capacity_per_s(profile, max_batch_size)
    cap = target_utilization * full

    def p99_at(rate: float) -> float:
        return simulated_p99_s(profile, max_batch_size, max_batch_delay_s, rate)

    planned, planned_p99, is_limited = cap, p99_at(cap), False
    if planned_p99 > slo_s and light_s <= slo_s:
        low, high, low_p99 = 0.0, cap, light_s
        for _ in range(_RULE_STEPS):
            middle = (low + high) / 2
            found = p99_at(middle)
            if found <= slo_s:
                low, low_p99 = middle, found
            else:
                high = middle
        planned, planned_p99, is_limited = max(low, cap / 2**_RULE_STEPS), low_p99, True
    return ReplicaSizing(
        profile=profile,
        slo_p99_ms=slo_p99_ms,
        max_batch_size=max_batch_size,
        max_batch_delay_s=max_batch_delay_s,
        full_capacity_per_s=full,
        target_utilization=planned / full,
        startup_s=profile.startup_s if startup_s is None else startup_s,
        planned_batch=float(batch_at(profile, np.array([planned]), max_batch_size)[0]),
        planned_p99_ms=planned_p99 * 1000.0,
        is_latency_limited=is_limited,
    )


def choose_max_batch(profile: ModelProfile, budget_s: float) -> int:
    """Rule 1: the smallest batch within ``THROUGHPUT_TOLERANCE`` of the best full capacity
    among those whose one full batch takes at most ``budget_s`` (the SLO less the batch
    delay) at that capacity; 1 when none does (the latency rule then decides)."""
    best_batch, best_capacity = 1, 0.0
    capacities: dict[int, float] = {}
    for size in range(1, MAX_BATCH_LIMIT + 1):
        capacity = served_capacity_per_s(profile, size)
        served_s = profile.mean_latency_s(size) * float(_slowdown(profile, capacity))
        if served_s > budget_s:
            continue
        capacities[size] = capacity
        if capacity > best_capacity:
            best_batch, best_capacity = size, capacity
    for size, capacity in capacities.items():
        if capacity >= (1.0 - THROUGHPUT_TOLERANCE) * best_capacity:
            return size
    return best_batch
