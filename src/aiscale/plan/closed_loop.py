"""One simulated replica driven by a closed loop: ``aiscale bench --concurrency N`` in
simulated time.

``N`` clients each send a request, wait for its answer and send the next at once. The
replica is the exact simulator's (``_exact.py``): one queue, the live batcher's rule
(``policies.batching``), a batch of ``b`` taking the profile's latency times a drawn
composition ratio times the in-server slowdown at the rate over the last
``CONTENTION_WINDOW_S``. What a request spends outside the replica, the per-request
overhead (the measured quantiles times ``overhead_scale`` at that rate) and its capture
commit wait (a draw from ``DiskTerms.wait_points``), is the exact mode's too, spent between
its answer and its client's next request: in a closed loop it delays the next request and so
decides how full the next batch gets.

The requests of one batch share one draw of that time. They are answered at one instant:
their records go into one group commit (``_commit.py``) and the server answers none of them
before it; the gateway and the load generator then work through all of them under the same
load, so what slows one (the contention behind ``overhead_scale``, a pause of the gateway's
process) slows the others. Independent draws would spread the next requests' arrivals as
widely as the overhead itself: on a measured minilm profile at 64 clients (overhead x4.3 at
340/s, a p99 of 35 ms) that spread passed the 10 ms batch delay, a straggler closed a batch
short, and the batcher's rule (the target is the last batch's size) then kept two
alternating groups apart for good: simulated batches of 40 where the server formed 64, as
did the profile's own calibration at 64 clients (mean batch 62-64, mean queue 1.3-4.6 ms).
What one draw per batch leaves out is the few milliseconds over which a batch's next
requests really trickle in (that calibration's queue time), so the simulated cycle is that
much short.

Requests that arrive at the same instant are queued together before the batcher looks, as
the live batcher, woken by an event, sees everything the gateway queued meanwhile. One
client overlaps no one, so its terms are taken at rate 0, as the calibration measured them.

What the sizing check (``benchmarks/simulator/sizing_check.py``) sets against a real
``aiscale serve`` at concurrency 64. Pure and seeded: no I/O, no clock.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from aiscale.errors import InvalidInput
from aiscale.plan._exact import CONTENTION_WINDOW_S
from aiscale.plan._simcore import SpreadDraws
from aiscale.plan.profile import ModelProfile
from aiscale.policies.batching import batch_size_to_take

_ENQUEUE, _DONE, _TIMEOUT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class ClosedLoopResult:
    """What the load generator would report, over the measured window (after warm-up)."""

    concurrency: int
    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    mean_batch: float
    completed: int
    duration_s: float


def simulate_closed_loop(
    profile: ModelProfile,
    concurrency: int,
    *,
    duration_s: float = 20.0,
    warmup_s: float = 2.0,
    max_batch_size: int = 64,
    max_batch_delay_s: float = 0.010,
    seed: int = 0,
) -> ClosedLoopResult:
    """Run ``concurrency`` closed-loop clients against one replica of ``profile`` for
    ``warmup_s + duration_s`` simulated seconds; the figures count the requests answered
    after the warm-up. Raises ``InvalidInput`` naming the field for bad arguments."""
    if concurrency < 1:
        raise InvalidInput("must be >= 1", field="concurrency")
    if not duration_s > 0 or warmup_s < 0:
        raise InvalidInput("the duration must be > 0 and the warm-up >= 0", field="duration_s")
    if max_batch_size < 1 or max_batch_delay_s < 0:
        raise InvalidInput("bad batching settings", field="max_batch_size")
    server = profile.server
    lat_table = [0.0] + [profile.latency_s(b) for b in range(1, max_batch_size + 1)]
    spread = SpreadDraws(profile.spread, seed) if profile.spread is not None else None
    rng = np.random.default_rng([seed, 3])
    disk_waits: tuple[list[float], list[float]] | None = None
    if server is not None and server.disk is not None:
        waits, chances = server.disk.wait_points()
        disk_waits = ([float(w) for w in waits], [float(c) for c in np.cumsum(chances)])

    heap: list[tuple[float, int, int, int]] = []
    seq = 0

    def push(t: float, kind: int, ident: int) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, ident))
        seq += 1

    sent_s: list[float] = []  # per request: when its client sent it
    queue: deque[int] = deque()
    recent: deque[float] = deque()  # enqueue times within the contention window
    batch: list[int] = []
    batch_scale = 1.0
    is_busy = False
    is_timeout_pending = False
    target_size = 1
    last_free_s = 0.0
    end_s = warmup_s + duration_s
    latencies: list[float] = []
    batch_sizes: list[int] = []

    def dispatch(now: float) -> None:
        nonlocal is_busy, is_timeout_pending, target_size, batch, batch_scale
        if is_busy or not queue:
            return
        wait_start = max(sent_s[queue[0]], last_free_s)
        waited = now - wait_start + 1e-9
        take = batch_size_to_take(
            len(queue), target_size, max_batch_size, waited, max_batch_delay_s
        )
        if take == 0:
            if not is_timeout_pending:
                push(wait_start + max_batch_delay_s, _TIMEOUT, -1)
                is_timeout_pending = True
            return
        batch = [queue.popleft() for _ in range(take)]
        target_size = take
        service = lat_table[take]
        if spread is not None:
            service *= spread.draw()
        batch_scale = 1.0
        if server is not None:
            while recent and recent[0] <= now - CONTENTION_WINDOW_S:
                recent.popleft()
            # One client overlaps no one: the calibration measured the terms of that loop
            # at rate 0 (``calibration.overlap_rate``), and so they are applied here.
            rate = len(recent) / CONTENTION_WINDOW_S if concurrency > 1 else 0.0
            service *= server.slowdown(rate)
            batch_scale = server.overhead_scale(rate)
        is_busy = True
        push(now + service, _DONE, -1)

    def outside_s() -> float:
        """The time outside the replica that the requests of the finished batch share: its
        overhead and its commit wait (module docstring)."""
        if server is None:
            return 0.0
        spent = float(server.overhead_at(rng.random())) * batch_scale
        if disk_waits is not None:
            waits, edges = disk_waits
            draw = rng.random() * edges[-1]
            spent += waits[min(int(np.searchsorted(edges, draw)), len(waits) - 1)]
        return spent

    for client in range(concurrency):
        push(0.0, _ENQUEUE, client)
    while heap:
        now, _, kind, ident = heapq.heappop(heap)
        if now > end_s:
            break
        if kind == _ENQUEUE:
            sent_s.append(now)
            queue.append(len(sent_s) - 1)
            recent.append(now)
            if not (heap and heap[0][0] == now and heap[0][2] == _ENQUEUE):
                dispatch(now)  # after the last of the requests arriving at this instant
        elif kind == _DONE:
            is_busy = False
            last_free_s = now
            if now >= warmup_s:
                batch_sizes.append(len(batch))
            answered = now + outside_s()
            for request in batch:
                if warmup_s <= answered <= end_s:
                    latencies.append(answered - sent_s[request])
                push(answered, _ENQUEUE, request)  # the client sends its next one at once
            batch = []
            dispatch(now)
        else:
            is_timeout_pending = False
            dispatch(now)
    found = np.asarray(latencies)
    if found.size:
        p50, p99 = (float(v) * 1000 for v in np.percentile(found, [50, 99]))
        mean = float(found.mean()) * 1000
    else:
        p50 = p99 = mean = math.nan
    return ClosedLoopResult(
        concurrency=concurrency,
        throughput_per_s=found.size / duration_s,
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        mean_batch=float(np.mean(batch_sizes)) if batch_sizes else math.nan,
        completed=int(found.size),
        duration_s=duration_s,
    )
