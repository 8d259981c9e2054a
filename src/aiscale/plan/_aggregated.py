"""The aggregated simulator: per time step and per batch size, not per request.

Each step of ``step_s`` carries a count of arrivals. The fleet (starting and ready replicas)
and the policy calls are simulated step by step, exactly as in the exact mode; the queue is a
fluid: a step serves at most ``ready * max_batch_size / latency(max_batch_size) * step_s``
requests, and what is left waits, in FIFO order, for later steps (dropped past ``max_queue``).

Latency per step is then computed for all steps at once (numpy): the fluid wait (from the
cumulative arrival and service curves) plus a queueing term for the randomness inside a step.
For that term a replica is a server of batches: the batch size ``b`` solves
``b = clip(rate_per_replica * latency(b), 1, max_batch_size)`` (requests that arrive while a
batch runs form the next one); the chance to wait is Erlang C with ``ready`` servers at the
busy share ``rate * latency(b) / (ready * b)``; a wait is exponential with the Allen-Cunneen
M/D/c mean ``latency(b) / (2 * ready * (1 - rate / max_throughput))``. With batch size 1 this
is the M/D/c approximation; with batching it is a heuristic whose error against the exact
mode ``plan.simulator.compare_modes`` reports.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan._simcore import SimulationConfig, SimulationResult, make_history
from aiscale.plan.traffic import ArrivalCounts, Arrivals, FloatArray
from aiscale.scaling.observe import LoadSample, observe
from aiscale.scaling.policies.base import ScalingPolicy

#: Seconds over which arrival rates are averaged for the queueing term, and how many Poisson
#: standard deviations a step's count must exceed that average by to count as a burst.
RATE_WINDOW_S = 10.0
BURST_SIGMAS = 1.0
#: Quantile levels whose bins discretise the per-request overhead (finer in the tail).
OVERHEAD_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def _erlang_c_one(servers: float, offered: float) -> float:
    """``_erlang_c`` for one value (the per-decision path, where numpy's call overhead on
    one-element arrays cost 95% of a day's simulation)."""
    n = int(servers)
    erlang_b = 1.0
    for k in range(1, max(n, 1) + 1):
        erlang_b = offered * erlang_b / (k + offered * erlang_b)
    rho = min(offered / max(n, 1), 0.999999)
    return min(max(erlang_b / (1 - rho * (1 - erlang_b)), 0.0), 1.0)


def _clip(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


def _erlang_c(servers: FloatArray, offered: FloatArray) -> FloatArray:
    """P(wait) in M/M/c for ``servers`` (integers >= 1) and ``offered`` load (< servers)."""
    n = servers.astype(np.int64)
    erlang_b = np.ones_like(offered)
    for k in range(1, int(n.max(initial=1)) + 1):
        active = k <= n
        updated = offered * erlang_b / (k + offered * erlang_b)
        erlang_b = np.where(active, updated, erlang_b)
    rho = np.minimum(offered / np.maximum(n, 1), 0.999999)
    return np.clip(erlang_b / (1 - rho * (1 - erlang_b)), 0.0, 1.0)


class _StepModel:
    """Batch size, wait chance and wait mean for given rates and ready counts (vectorised)."""

    def __init__(self, config: SimulationConfig) -> None:
        # The mean batch time (``profile.spread``): the exact mode draws around the median.
        spread = config.profile.spread
        self.table = np.asarray(config.latency_table()) * (
            1.0 if spread is None else spread.mean_ratio
        )
        self.max_batch = config.max_batch_size
        self.max_delay_s = config.max_batch_delay_s
        self.sizes = np.arange(1, self.max_batch + 1, dtype=np.float64)
        self.max_rate = float(self.max_batch / self.table[self.max_batch])
        self._table_list = [float(v) for v in self.table]

    def latency(self, batch: FloatArray) -> FloatArray:
        result: FloatArray = np.interp(batch, self.sizes, self.table[1:])
        return result

    def stats_one(
        self, rate: float, ready: float, is_overloaded: bool, slowdown: float = 1.0
    ) -> tuple[float, float, float, float, float]:
        """``stats`` for one step, in plain floats: the same formulas, line by line (the
        policy observation's path, once per decision)."""
        table, max_batch, factor = self._table_list, float(self.max_batch), slowdown

        def latency(batch: float) -> float:
            if batch <= 1.0:
                return table[1] * factor
            if batch >= max_batch:
                return table[self.max_batch] * factor
            low = int(batch)
            return (table[low] + (table[low + 1] - table[low]) * (batch - low)) * factor

        servers = max(ready, 1.0)
        per_replica = rate / servers
        max_rate = self.max_rate / factor
        batch = 1.0
        for _ in range(30):
            batch = _clip(per_replica * latency(batch), 1.0, max_batch)
        all_busy = _erlang_c_one(servers, min(per_replica * latency(batch) / batch, 0.99) * servers)
        gathered = _clip(1.0 + max(rate * self.max_delay_s - 1.0, 0.0) * all_busy, 1.0, max_batch)
        for _ in range(30):
            batch = _clip(max(per_replica * latency(batch), gathered), 1.0, max_batch)
        load_max = min(per_replica / max_rate, 0.99)
        overloaded = per_replica >= max_rate or is_overloaded
        if overloaded:
            batch = max_batch
        batch_latency = latency(batch)
        busy = min(per_replica * batch_latency / batch, 0.99)
        p_wait = 1.0 if overloaded else _erlang_c_one(servers, busy * servers)
        if overloaded:
            mean_wait = batch_latency / (2 * servers)
        else:
            mean_wait = batch_latency / (2 * servers * (1 - load_max))
        if self.max_batch > 1:  # the cap explained in ``stats``
            high = max_batch
            for _ in range(60):
                high = _clip(per_replica * latency(high), 1.0, max_batch)
            cap = max(latency(max(high, batch)), table[1] * factor)
            mean_wait = min(mean_wait, cap)
        gather_s = min(self.max_delay_s, (batch - 1) / max(rate, 1e-9)) / 2
        return gather_s + batch_latency, batch_latency, p_wait, mean_wait, batch

    def stats(
        self,
        rate: FloatArray,
        ready: FloatArray,
        is_overloaded: FloatArray,
        slowdown: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
        """``(no-wait latency, batch latency, P(wait), mean wait, batch size)``; seconds.
        ``slowdown`` multiplies every batch latency (the server terms; default 1)."""
        factor = np.ones_like(rate) if slowdown is None else slowdown

        def latency(batch: FloatArray) -> FloatArray:
            return self.latency(batch) * factor

        servers = np.maximum(ready, 1.0)
        per_replica = rate / servers
        max_rate = self.max_rate / factor
        # The batcher waits (up to max_batch_delay_s) for as many as the last batch had, so
        # batches hold at least what arrives in that delay; the rest is what arrives while
        # a batch runs.
        # That only happens when a request finds every replica busy (else an idle replica
        # takes it alone and the last batch size stays 1), hence the Erlang C weight.
        batch = np.ones_like(rate)
        for _ in range(30):
            batch = np.clip(per_replica * latency(batch), 1.0, self.max_batch)
        all_busy = _erlang_c(
            servers, np.minimum(per_replica * latency(batch) / batch, 0.99) * servers
        )
        gathered = np.clip(
            1.0 + np.maximum(rate * self.max_delay_s - 1.0, 0.0) * all_busy, 1.0, self.max_batch
        )
        for _ in range(30):
            batch = np.clip(np.maximum(per_replica * latency(batch), gathered), 1.0, self.max_batch)
        load_max = np.minimum(per_replica / max_rate, 0.99)
        overloaded = np.greater_equal(per_replica, max_rate) | is_overloaded.astype(bool)
        batch = np.where(overloaded, float(self.max_batch), batch)
        batch_latency = latency(batch)
        busy = np.minimum(per_replica * batch_latency / batch, 0.99)
        p_wait = np.where(overloaded, 1.0, _erlang_c(servers, busy * servers))
        # Past saturation the fluid backlog carries the queueing; only a batch residual is left.
        mean_wait = np.where(
            overloaded,
            batch_latency / (2 * servers),
            batch_latency / (2 * servers * (1 - load_max)),
        )
        if self.max_batch > 1:
            # Below saturation a batching replica does not queue like M/D/c: the batch grows
            # with the load, so a waiting request waits for the running batch and leaves in
            # the next. The size that running batch settles at is the largest fixed point of
            # b = rate * latency(b) (the one reached from a backlog); the mean wait is capped
            # at one such batch (half a batch fits the mean at high load better, but
            # underestimates the tail on bursty arrivals). Without this cap the 1/(1 - load)
            # term made waits explode near the knee, and ongoing-based policies (reactive,
            # KPA) saw 2-5x the exact mode's concurrency (benchmarks/simulator/RESULTS.md).
            high = np.full_like(rate, float(self.max_batch))
            for _ in range(60):
                high = np.clip(per_replica * latency(high), 1.0, self.max_batch)
            # Never below one batch of one: at light load the M/D/c term is the better one.
            cap = np.maximum(latency(np.maximum(high, batch)), self.table[1] * factor)
            mean_wait = np.minimum(mean_wait, cap)
        # A request that finds a replica idle still waits, on average half the time the
        # batch takes to fill to its target (capped by the delay).
        gather_s = np.minimum(self.max_delay_s, (batch - 1) / np.maximum(rate, 1e-9)) / 2
        no_wait = gather_s + batch_latency
        return no_wait, batch_latency, p_wait, mean_wait, batch


def run_aggregated(
    arrivals: Arrivals | ArrivalCounts, policy: ScalingPolicy[Any], config: SimulationConfig
) -> SimulationResult:
    dt = config.step_s
    if isinstance(arrivals, Arrivals):
        counts = arrivals.counts(dt)
        end_s = arrivals.duration_s
    else:
        if not math.isclose(arrivals.step_s, dt):
            raise ConfigError("counts must use the simulation step", field="step_s")
        counts, end_s = arrivals, arrivals.duration_s
    given = counts.counts.astype(np.float64)
    num_given = given.size
    max_steps = num_given + math.ceil(config.drain_timeout_s / dt)
    history = make_history(config, counts)
    model = _StepModel(config)
    capacity_per_replica = model.max_rate * dt
    interval_steps = max(1, round(config.decision_interval_s / dt))
    startup = config.replica_startup_s
    server = config.profile.server

    ready = config.initial_replicas
    starting: deque[float] = deque()
    backlog = 0.0
    ready_per_step: list[int] = []
    paid_per_step: list[int] = []
    served_per_step: list[float] = []
    dropped_per_step: list[float] = []
    timeline: list[tuple[float, int, int]] = []
    policy_state = policy.initial_state()
    arrived_since = served_since = 0.0
    # Cumulative, as a live FleetSnapshot counts: ``observe`` diffs two samples.
    num_arrived = num_served = busy_s = 0.0
    previous = LoadSample(0.0, ready, 0, 0, 0, 0.0, 0.0, 0.0)
    num_decisions = 0

    k = 0
    while k < max_steps:
        t = k * dt
        while starting and starting[0] <= t + 1e-9:
            starting.popleft()
            ready += 1
        if k and k % interval_steps == 0:
            interval = interval_steps * dt
            rate = arrived_since / interval
            interval_slowdown = 1.0 if server is None else server.slowdown(rate / max(ready, 1))
            _, one_latency, one_p_wait, one_wait, one_batch = model.stats_one(
                rate, float(ready), backlog > 0, interval_slowdown
            )
            # Little's law for the requests inside the step model, plus the fluid backlog.
            in_flight = min(rate * one_latency, ready * config.max_batch_size)
            # The steady-state wait explodes near saturation, but a queue cannot build for
            # longer than the interval the rate was measured over: cap it there.
            queued = rate * one_p_wait * min(one_wait, interval) + backlog
            history.advance(t)
            # The step model's replica-busy seconds per item, charged to what was served.
            busy_s += served_since * (one_latency / one_batch)
            sample = LoadSample(
                at_s=t,
                num_ready=ready,
                num_starting=len(starting),
                num_in_flight=round(in_flight),
                num_queued=round(queued),
                num_arrived=num_arrived,
                num_completed=num_served,
                busy_s=busy_s,
            )
            observation = observe(sample, previous, history)
            previous = sample
            decision, policy_state = policy.decide(observation, policy_state)
            change = decision.target_replicas - observation.num_replicas
            for _ in range(max(change, 0)):
                starting.append(t + startup)
            for _ in range(max(-change, 0)):
                if starting:
                    starting.pop()
                else:
                    ready -= 1
            timeline.append((t, ready + len(starting), ready))
            arrived_since = served_since = 0.0
            num_decisions += 1
        arriving = given[k] if k < num_given else 0.0
        total = backlog + arriving
        step_capacity = ready * capacity_per_replica
        if server is not None:
            step_capacity /= server.slowdown(arriving / dt / max(ready, 1))
        served = min(total, step_capacity)
        backlog = total - served
        if backlog < 1e-9:
            backlog = 0.0
        dropped = max(0.0, backlog - config.max_queue)
        backlog -= dropped
        ready_per_step.append(ready)
        paid_per_step.append(ready + len(starting))
        served_per_step.append(served)
        dropped_per_step.append(dropped)
        arrived_since += arriving
        served_since += served
        num_arrived += arriving
        num_served += served
        k += 1
        if k >= num_given and backlog == 0.0 and k * dt >= end_s:
            break

    num_steps = k
    arrived = np.zeros(num_steps)
    arrived[: min(num_given, num_steps)] = given[:num_steps]
    ready_arr = np.asarray(ready_per_step, dtype=np.float64)
    served_arr = np.asarray(served_per_step)
    admitted = arrived - np.asarray(dropped_per_step)
    cum_admitted = np.cumsum(admitted)
    cum_served = np.cumsum(served_arr)
    total_served = float(cum_served[-1]) if num_steps else 0.0
    # FIFO fluid: the middle request of step i leaves when cumulative service reaches it.
    position = cum_admitted - admitted / 2
    j = np.minimum(np.searchsorted(cum_served, position - 1e-9), num_steps - 1)
    before = np.where(j > 0, cum_served[np.maximum(j - 1, 0)], 0.0)
    fraction = np.clip((position - before) / np.maximum(served_arr[j], 1e-12), 0.0, 1.0)
    departure = (j + fraction) * dt
    fluid_wait = np.maximum(departure - (np.arange(num_steps) + 0.5) * dt, 0.0)
    completed = np.clip(total_served - (cum_admitted - admitted), 0.0, admitted)

    # The queueing term already holds Poisson randomness, so it is fed a smoothed rate plus
    # only the part of each step's count that lies beyond Poisson noise (a real burst).
    window = max(1, round(RATE_WINDOW_S / dt))
    smooth = np.convolve(arrived, np.ones(window) / window, mode="same")
    excess = np.maximum(arrived - smooth - BURST_SIGMAS * np.sqrt(smooth), 0.0)
    rates = (smooth + excess) / dt
    ready_at_departure = np.maximum(ready_arr[j], 1.0)
    per_replica_rate = rates / ready_at_departure
    if server is None:
        step_slowdown = None
        # One point of no overhead: the model alone.
        overhead = np.zeros((1, 1))
        overhead_weights = np.ones((1, 1))
    else:
        step_slowdown = server.slowdown(per_replica_rate)
        grid = np.asarray(OVERHEAD_GRID)
        points = server.overhead_at((grid[1:] + grid[:-1]) / 2)
        scale = server.overhead_scale(per_replica_rate)
        overhead = points[:, None] * scale[None, :]
        overhead_weights = np.diff(grid)[:, None]
        if server.disk is not None:
            # The capture commit: a few weighted waits (an ordinary commit, or the rest of a
            # disk stall) mixed with each overhead point. The exact mode replays the group
            # commit itself, with the queue behind a stall that this leaves out.
            waits, chances = server.disk.wait_points()
            overhead = (overhead[:, None, :] + waits[None, :, None]).reshape(-1, num_steps)
            overhead_weights = (overhead_weights[:, None, :] * chances[None, :, None]).reshape(
                -1, 1
            )
    no_wait, batch_latency, p_wait, mean_wait, _ = model.stats(
        rates, ready_at_departure, fluid_wait > dt, step_slowdown
    )
    low = fluid_wait + no_wait
    high = fluid_wait + batch_latency
    weights = completed
    total_completed = float(weights.sum())
    num_requests = int(round(float(arrived.sum())))

    def cdf(x: float) -> float:
        if total_completed <= 0:
            return 0.0
        shifted = x - overhead  # (points, steps): the core latency left after each overhead
        part_low = (1 - p_wait) * (low <= shifted)
        tail = 1 - np.exp(-np.maximum(shifted - high, 0.0) / np.maximum(mean_wait, 1e-12))
        mixed = np.sum(overhead_weights * (part_low + p_wait * tail), axis=0)
        return float(np.sum(weights * mixed)) / total_completed

    def quantile(q: float) -> float:
        top = np.maximum(low, high + 40 * mean_wait) + np.max(overhead, axis=0)
        lo, hi = 0.0, float(np.max(top, initial=0.0))
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cdf(mid) < q else (lo, mid)
        return hi

    if total_completed > 0:
        p50, p99 = quantile(0.5), quantile(0.99)
        mean_overhead = np.sum(overhead_weights * overhead, axis=0)
        mean = float(
            np.sum(weights * ((1 - p_wait) * low + p_wait * (high + mean_wait) + mean_overhead))
            / total_completed
        )
        within = cdf(config.slo_p99_ms / 1000.0) * total_completed
    else:
        p50 = p99 = mean = math.nan
        within = 0.0
    num_completed = int(round(total_completed))
    hours = float(np.sum(paid_per_step)) * dt / 3600.0
    return SimulationResult(
        mode="aggregated",
        requests=num_requests,
        completed=num_completed,
        dropped=num_requests - num_completed,
        p50_ms=p50 * 1000,
        p99_ms=p99 * 1000,
        mean_ms=mean * 1000,
        slo_p99_ms=config.slo_p99_ms,
        slo_attainment=within / num_requests if num_requests else 1.0,
        replica_hours=hours,
        cost_usd=hours * config.price_per_replica_hour,
        num_events=num_steps + num_decisions,
        duration_s=max(end_s, num_steps * dt),
        timeline=tuple(timeline),
    )
