"""The exact simulator: every request, every batch, every replica start, on an event heap.

Arrivals are read in time order from the sorted array (they are not pushed on the heap);
everything else (replica ready, batch done, batch-delay timeout, decision tick) is a heap
event ``(time, insertion counter, kind, replica)``. The counter breaks ties, so the same
input gives the same event order and count (SimPy's rule); at equal times an arrival goes
before heap events.

Routing: one deployment queue, as in the live batcher; an idle ready replica takes up to
``max_batch_size`` by the batcher's rule, and the idle replica chosen is the lowest-numbered
(all idle replicas are equally, i.e. least, loaded). Scaling down cancels starting replicas
first (newest first), then stops idle ones, then drains busy ones (they finish their batch).
A replica is paid for from its launch to its removal.

Server terms (``profile.server``, see ``ServerTerms``): a batch occupies its replica for the
profile's latency (times a ratio drawn from ``profile.spread`` when it has one) times the
slowdown at the arrival rate per ready replica over the last
``CONTENTION_WINDOW_S``; each request's latency then gets its per-request overhead, drawn
with ``config.seed`` (after the event loop, vectorised: the overhead never occupies a
replica, so it does not change the event order or count). With ``server.disk``, each
response first waits for the capture log's group commit (``_commit.py``, also after the
loop).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Any

import numpy as np

from aiscale.plan._commit import commit_waits
from aiscale.plan._simcore import (
    SimulationConfig,
    SimulationResult,
    SpreadDraws,
    make_history,
    summarize,
)
from aiscale.plan.traffic import Arrivals
from aiscale.policies.batching import batch_size_to_take
from aiscale.scaling.observe import LoadSample, observe
from aiscale.scaling.policies.base import ScalingPolicy

#: Seconds of arrivals over which the rate behind the server terms is counted.
CONTENTION_WINDOW_S = 1.0

_READY, _DONE, _TIMEOUT, _TICK = 0, 1, 2, 3
_STARTING, _IDLE, _BUSY, _DRAINING, _GONE = 0, 1, 2, 3, 4


def run_exact(
    arrivals: Arrivals, policy: ScalingPolicy[Any], config: SimulationConfig
) -> SimulationResult:
    times = arrivals.times_s
    num_requests = int(times.size)
    latencies = np.full(num_requests, np.nan)
    lat_table = config.latency_table()
    max_batch = config.max_batch_size
    max_delay = config.max_batch_delay_s
    startup = config.replica_startup_s
    history = make_history(config, arrivals.counts(config.history_bin_s))
    server = config.profile.server
    spread = (
        SpreadDraws(config.profile.spread, config.seed)
        if config.profile.spread is not None
        else None
    )
    #: Per request: the overhead's rate scaling, from the rate when its batch was sent.
    overhead_scale = np.ones(num_requests) if server is not None else None
    window_start = 0  # first arrival inside the contention window

    heap: list[tuple[float, int, int, int]] = []
    seq = 0

    def push(t: float, kind: int, rid: int) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, rid))
        seq += 1

    state: list[int] = []
    launched_s: list[float] = []
    batches: list[list[int]] = []
    service_s: list[float] = []
    batch_scale: list[float] = []
    idle: list[int] = []  # heap of replica ids, lazily cleaned
    replica_seconds = 0.0
    num_ready = 0  # replicas idle or busy (not starting, draining or gone)

    def launch(now: float, is_ready: bool) -> None:
        nonlocal num_ready
        rid = len(state)
        state.append(_IDLE if is_ready else _STARTING)
        launched_s.append(now)
        batches.append([])
        service_s.append(0.0)
        batch_scale.append(1.0)
        if is_ready:
            heapq.heappush(idle, rid)
            num_ready += 1
        else:
            push(now + startup, _READY, rid)

    def remove(rid: int, now: float) -> None:
        nonlocal replica_seconds, num_ready
        if state[rid] in (_IDLE, _BUSY):
            num_ready -= 1
        state[rid] = _GONE
        replica_seconds += now - launched_s[rid]

    for _ in range(config.initial_replicas):
        launch(0.0, True)

    queue: deque[int] = deque()
    target_size = 1
    #: When a replica last became free: the batch delay counts from here or from the oldest
    #: arrival, whichever is later — the live batcher's rule.
    last_free_s = 0.0
    is_timeout_pending = False
    dropped = 0
    num_events = 0
    # Cumulative, as a live FleetSnapshot counts: ``observe`` diffs two samples.
    num_arrived = num_completed = 0
    busy_s = 0.0

    def dispatch(now: float) -> None:
        nonlocal target_size, is_timeout_pending, window_start
        while queue and idle:
            wait_start = max(times[queue[0]], last_free_s)
            # The 1 ns slack: a timeout set at ``wait_start + delay`` must see the full delay
            # despite float rounding, or it would re-arm itself forever.
            waited = now - wait_start + 1e-9
            take = batch_size_to_take(len(queue), target_size, max_batch, waited, max_delay)
            if take == 0:
                if not is_timeout_pending:
                    push(wait_start + max_delay, _TIMEOUT, -1)
                    is_timeout_pending = True
                return
            rid = heapq.heappop(idle)
            if state[rid] != _IDLE:
                continue
            batch = [queue.popleft() for _ in range(take)]
            batches[rid] = batch
            state[rid] = _BUSY
            target_size = take
            service = lat_table[take]
            if spread is not None:
                service *= spread.draw()
            if server is not None:
                while window_start < index and times[window_start] <= now - CONTENTION_WINDOW_S:
                    window_start += 1
                rate = (index - window_start) / CONTENTION_WINDOW_S / max(num_ready, 1)
                service *= server.slowdown(rate)
                batch_scale[rid] = server.overhead_scale(rate)
            service_s[rid] = service
            push(now + service, _DONE, rid)

    policy_state = policy.initial_state()
    previous = LoadSample(0.0, num_ready, 0, 0, 0, 0, 0, 0.0)
    timeline: list[tuple[float, int, int]] = []
    end_s = arrivals.duration_s
    deadline_s = end_s + config.drain_timeout_s
    interval = config.decision_interval_s
    push(interval, _TICK, -1)
    index = 0
    now = last_activity_s = 0.0

    while True:
        next_arrival = times[index] if index < num_requests else math.inf
        if heap and heap[0][0] < next_arrival:
            now, _, kind, rid = heapq.heappop(heap)
        elif index < num_requests:
            now, kind, rid = float(next_arrival), -1, -1
        else:
            break
        if now > deadline_s:
            break
        num_events += 1
        if kind != _TICK:
            last_activity_s = now
        if kind == -1:  # an arrival
            num_arrived += 1
            if len(queue) >= config.max_queue:
                dropped += 1
            else:
                queue.append(index)
                dispatch(now)
            index += 1
        elif kind == _DONE:
            batch = batches[rid]
            for request in batch:
                latencies[request] = now - times[request]
            if overhead_scale is not None and batch_scale[rid] != 1.0:
                overhead_scale[batch] = batch_scale[rid]
            num_completed += len(batch)
            busy_s += service_s[rid]
            batches[rid] = []
            if state[rid] == _DRAINING:
                remove(rid, now)
            else:
                state[rid] = _IDLE
                heapq.heappush(idle, rid)
                last_free_s = now
                dispatch(now)
        elif kind == _READY:
            if state[rid] == _STARTING:
                num_ready += 1
                state[rid] = _IDLE
                heapq.heappush(idle, rid)
                last_free_s = now
                dispatch(now)
        elif kind == _TIMEOUT:
            is_timeout_pending = False
            dispatch(now)
        else:  # a decision tick
            num_starting = state.count(_STARTING)
            in_flight = sum(
                len(batches[r]) for r in range(len(state)) if state[r] in (_BUSY, _DRAINING)
            )
            history.advance(now)
            sample = LoadSample(
                at_s=now,
                num_ready=num_ready,
                num_starting=num_starting,
                num_in_flight=in_flight,
                num_queued=len(queue),
                num_arrived=num_arrived,
                num_completed=num_completed,
                busy_s=busy_s,
            )
            observation = observe(sample, previous, history)
            previous = sample
            decision, policy_state = policy.decide(observation, policy_state)
            # Not ``num_ready += _apply(...)``: that reads num_ready before ``remove`` (called
            # inside) updates it.
            drained = _apply(
                decision.target_replicas - observation.num_replicas, now, state, launch, remove
            )
            num_ready += drained
            num_paid = sum(1 for s in state if s != _GONE)
            timeline.append((now, num_paid, state.count(_IDLE) + state.count(_BUSY)))
            dispatch(now)
            is_work_left = index < num_requests or queue or any(s == _BUSY for s in state)
            if is_work_left or now + interval <= end_s:
                push(now + interval, _TICK, -1)

    sim_end = max(end_s, min(last_activity_s, deadline_s))
    for rid, s in enumerate(state):
        if s != _GONE:
            remove(rid, sim_end)
    if server is not None and server.disk is not None:
        served = ~np.isnan(latencies)
        ready = times[served] + latencies[served]
        rng = np.random.default_rng([config.seed, 2])  # a stream of its own, as the spread's
        latencies[served] += commit_waits(ready, server.disk, rng, sim_end)
    if server is not None and overhead_scale is not None:
        draws = np.random.default_rng(config.seed).random(num_requests)
        latencies += server.overhead_at(draws) * overhead_scale
    completed = latencies[~np.isnan(latencies)]
    unfinished = num_requests - int(completed.size) - dropped
    return summarize(
        config,
        latencies_s=completed,
        requests=num_requests,
        dropped=dropped + unfinished,
        replica_seconds=replica_seconds,
        num_events=num_events,
        duration_s=sim_end,
        timeline=timeline,
    )


def _apply(change: int, now: float, state: list[int], launch: Any, remove: Any) -> int:
    """Start ``change`` replicas, or stop ``-change`` (starting first, then idle, then busy).

    Returns the change in ready replicas it made itself (draining ones taken back or busy
    ones set draining); ``launch`` and ``remove`` keep their own count."""
    num_ready_change = 0
    if change > 0:
        for rid, s in enumerate(state):  # a draining replica is the cheapest one to "add"
            if change and s == _DRAINING:
                state[rid] = _BUSY
                change -= 1
                num_ready_change += 1
        for _ in range(change):
            launch(now, False)
        return num_ready_change
    to_stop = -change
    for wanted in (_STARTING, _IDLE, _BUSY):
        for rid in range(len(state) - 1, -1, -1):
            if to_stop == 0:
                return num_ready_change
            if state[rid] == wanted:
                if wanted == _BUSY:
                    state[rid] = _DRAINING
                    num_ready_change -= 1
                else:
                    remove(rid, now)
                to_stop -= 1
    return num_ready_change
