"""Estimated SLO misses of one decision interval's arrivals at a given number of ready replicas.

The oracle search (``oracle_search.py``) asks, for every decision interval and many candidate
ready counts, how many of that interval's requests would miss the latency objective. The
answer comes from the aggregated simulator's own model (``_aggregated.py``) applied to each
interval alone, all intervals at once in numpy:

- the interval's per-step arrivals enter an empty queue served as a fluid by ``ready``
  replicas (each step at most ``ready * max_rate * step_s``, divided by the server slowdown
  when the profile has server terms; dropped past ``max_queue``), then drained with no more
  arrivals for as many steps again;
- each step's fluid wait is the FIFO departure of its middle request, as in the simulator;
- the share answered within the objective is the simulator's latency mixture at the
  objective: the step model's batch, wait chance and mean wait (``_StepModel.stats``) on the
  same smoothed step rates, plus the per-request overhead points;
- backlog left at the interval's end delays the next interval's first requests: those that
  arrive before it drains, less the objective, are charged to this interval as misses.

Only the search's guesses come from here: every schedule it returns is replayed through
``simulate`` and judged there, so a change to the simulator's model makes the search slower
to converge, never its answer wrong. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math

import numpy as np

from aiscale.errors import ConfigError
from aiscale.plan._aggregated import BURST_SIGMAS, OVERHEAD_GRID, RATE_WINDOW_S, _StepModel
from aiscale.plan._simcore import SimulationConfig
from aiscale.plan.traffic import ArrivalCounts, FloatArray, IntArray

#: Intervals estimated per numpy block (bounds the (intervals, steps, steps) comparison).
_BLOCK = 2048


class IntervalMisses:
    """Per-interval miss estimates for one day of ``counts`` under ``config``'s deployment."""

    def __init__(self, counts: ArrivalCounts, config: SimulationConfig) -> None:
        dt = counts.step_s
        ratio = config.decision_interval_s / dt
        steps = max(1, round(ratio))
        if not math.isclose(ratio, steps):
            raise ConfigError(
                "the decision interval must be a whole number of steps", field="step_s"
            )
        num_intervals = max(1, math.ceil(counts.counts.size / steps))
        arrived = np.zeros(num_intervals * steps)
        arrived[: counts.counts.size] = counts.counts
        # The simulator's step rates: a smoothed rate plus what lies beyond Poisson noise.
        window = max(1, round(RATE_WINDOW_S / dt))
        smooth = np.convolve(arrived, np.ones(window) / window, mode="same")
        excess = np.maximum(arrived - smooth - BURST_SIGMAS * np.sqrt(smooth), 0.0)
        self._rates = ((smooth + excess) / dt).reshape(num_intervals, steps)
        self._arrived = arrived.reshape(num_intervals, steps)
        self._model = _StepModel(config)
        self._config = config
        self._dt = dt
        self._steps = steps
        self._slo_s = config.slo_p99_ms / 1000.0
        server = config.profile.server
        if server is None:
            self._points = np.zeros(1)
            self._weights = np.ones((1, 1))
        else:
            grid = np.asarray(OVERHEAD_GRID)
            points = np.asarray(server.overhead_at((grid[1:] + grid[:-1]) / 2))
            weights = np.diff(grid)
            if server.disk is not None:
                waits, chances = server.disk.wait_points()
                points = (points[:, None] + waits[None, :]).ravel()
                weights = (weights[:, None] * chances[None, :]).ravel()
            self._points = points
            self._weights = weights[:, None]

    @property
    def num_intervals(self) -> int:
        return int(self._arrived.shape[0])

    @property
    def steps_per_interval(self) -> int:
        return self._steps

    @property
    def max_rate_per_replica_s(self) -> float:
        """Requests/s one replica serves in the simulator's fluid (full batches)."""
        return float(self._model.max_rate)

    def arrivals_per_interval(self) -> FloatArray:
        result: FloatArray = self._arrived.sum(axis=1)
        return result

    def misses(
        self, intervals: IntArray, ready: IntArray, *, is_optimistic: bool = False
    ) -> FloatArray:
        """Estimated misses of each of ``intervals`` with ``ready[i]`` replicas ready in it.

        ``is_optimistic``: what no run of the aggregated model can beat for the interval's
        own requests, for the search's lower bound: the backlog left at its end is served
        the moment it ends (any later only adds wait), and nothing is charged for the next
        interval. With an empty queue at the start (a backlog carried in only adds wait;
        past one step of fluid wait every request already misses an objective under a
        step) this is the simulator's own count for the interval."""
        out = np.empty(intervals.size)
        for start in range(0, intervals.size, _BLOCK):
            part = slice(start, start + _BLOCK)
            out[part] = self._block(intervals[part], ready[part].astype(np.float64), is_optimistic)
        return out

    def _block(self, intervals: IntArray, ready: FloatArray, is_optimistic: bool) -> FloatArray:
        config, dt, steps = self._config, self._dt, self._steps
        server = config.profile.server
        num = intervals.size
        horizon = 2 * steps  # the interval, then as long again to drain
        arrived = np.zeros((num, horizon))
        arrived[:, :steps] = self._arrived[intervals]
        served = np.zeros((num, horizon))
        dropped = np.zeros((num, horizon))
        capacity = ready * self._model.max_rate * dt
        servers = np.maximum(ready, 1.0)
        backlog = np.zeros(num)
        leftover = np.zeros(num)
        for k in range(horizon):
            step_capacity = capacity
            if is_optimistic and k >= steps:
                step_capacity = np.full(num, np.inf)
            elif server is not None:
                step_capacity = capacity / server.slowdown(arrived[:, k] / dt / servers)
            total = backlog + arrived[:, k]
            served[:, k] = np.minimum(total, step_capacity)
            backlog = total - served[:, k]
            backlog[backlog < 1e-9] = 0.0
            dropped[:, k] = np.maximum(0.0, backlog - config.max_queue)
            backlog -= dropped[:, k]
            if k == steps - 1:
                leftover = backlog.copy()
        admitted = arrived - dropped
        cum_admitted = np.cumsum(admitted, axis=1)
        cum_served = np.cumsum(served, axis=1)
        position = (cum_admitted - admitted / 2)[:, :steps]
        # FIFO fluid, as the simulator: the middle request of step k leaves when cumulative
        # service reaches it.
        j = np.count_nonzero(cum_served[:, None, :] < position[:, :, None] - 1e-9, axis=2)
        j = np.minimum(j, horizon - 1)
        before = np.where(j > 0, np.take_along_axis(cum_served, np.maximum(j - 1, 0), axis=1), 0.0)
        at_j = np.maximum(np.take_along_axis(served, j, axis=1), 1e-12)
        fraction = np.clip((position - before) / at_j, 0.0, 1.0)
        mids = (np.arange(steps) + 0.5) * dt
        fluid_wait = np.maximum((j + fraction) * dt - mids[None, :], 0.0)
        own = admitted[:, :steps]
        completed = np.clip(cum_served[:, -1:] - (cum_admitted[:, :steps] - own), 0.0, own)

        rates = self._rates[intervals]
        per_server = np.broadcast_to(servers[:, None], rates.shape)
        per_replica = (rates / per_server).ravel()
        if server is None:
            step_slowdown = None
            overhead = self._points[:, None] * np.ones((1, per_replica.size))
        else:
            step_slowdown = np.asarray(server.slowdown(per_replica))
            scale = np.asarray(server.overhead_scale(per_replica))
            overhead = self._points[:, None] * scale[None, :]
        wait = fluid_wait.ravel()
        no_wait, batch_latency, p_wait, mean_wait, _ = self._model.stats(
            rates.ravel(), per_server.ravel().copy(), (wait > dt).astype(np.float64), step_slowdown
        )
        shifted = self._slo_s - overhead
        part_low = (1 - p_wait) * (wait + no_wait <= shifted)
        tail = 1 - np.exp(
            -np.maximum(shifted - (wait + batch_latency), 0.0) / np.maximum(mean_wait, 1e-12)
        )
        mixed = np.sum(self._weights * (part_low + p_wait * tail), axis=0)
        within = (completed.ravel() * mixed).reshape(num, steps).sum(axis=1)
        misses = arrived[:, :steps].sum(axis=1) - within

        # The backlog left at the end holds up the next interval's first arrivals.
        next_index = np.minimum(intervals + 1, self.num_intervals - 1)
        next_count = np.where(
            intervals + 1 < self.num_intervals, self._arrived[next_index].sum(axis=1), 0.0
        )
        per_s = capacity / dt
        drain_s = np.where(leftover > 0, leftover / np.maximum(per_s, 1e-12), 0.0)
        held = next_count / (steps * dt) * np.maximum(drain_s - self._slo_s, 0.0)
        result: FloatArray = np.maximum(misses, 0.0)
        if not is_optimistic:
            result += np.minimum(next_count, held)
        return result
