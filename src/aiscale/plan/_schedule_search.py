"""The oracle search's two ways of lowering a replica schedule, and its window helpers.

A schedule ``P`` pays ``P[i]`` replicas in decision interval ``i``; with a start-up of
``s`` intervals, ``ready[j] = min(P[j - s .. j])`` (``window_min_behind``) and the cheapest
schedule that keeps ``ready >= need`` is ``P[i] = max(need[i .. i + s])``
(``window_max_ahead``). From there:

- ``greedy_moves`` lowers runs of equal ``P`` one replica at a time, cheapest estimated
  misses per interval saved first, and records the order of its moves;
- ``chain_dp`` finds, for one price of a miss, the ready path that minimises replica time
  plus start-ups plus priced misses, exactly (a shortest path over replica levels).

``oracle_search`` judges what both propose in the simulator. Pure functions, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque

import numpy as np

#: A whole run of equal ``P`` is a move only up to this many start-up windows long (a short
#: peak skipped); longer runs are worn down from their ends.
WHOLE_RUN_WINDOWS = 4


def window_max_ahead(values: list[int], width: int) -> list[int]:
    """``out[i] = max(values[i .. i + width])`` (monotonic deque, one pass)."""
    out = [0] * len(values)
    window: deque[int] = deque()
    for i in range(len(values) - 1, -1, -1):
        while window and values[window[-1]] <= values[i]:
            window.pop()
        window.append(i)
        while window[0] > i + width:
            window.popleft()
        out[i] = values[window[0]]
    return out


def window_min_behind(values: list[int], width: int) -> list[int]:
    """``out[j] = min(values[max(0, j - width) .. j])``."""
    out = [0] * len(values)
    window: deque[int] = deque()
    for j, value in enumerate(values):
        while window and values[window[-1]] >= value:
            window.pop()
        window.append(j)
        while window[0] < j - width:
            window.popleft()
        out[j] = values[window[0]]
    return out


def greedy_moves(
    start: list[int],
    table: list[list[float]],
    min_level: int,
    startup: int,
    floor: int,
    stop_misses: float,
) -> tuple[list[tuple[int, int]], list[float]]:
    """Moves ``(first, last)`` that each lower ``P[first..last]`` by one, in the greedy's
    order, and the estimated misses after each, until they pass ``stop_misses``.

    ``table[j][k]``: estimated misses of interval ``j`` with ``min_level + k`` ready
    (``inf`` where a count is not to be used; the last entry stands for every count above).
    On each run ``[a, b]`` of equal ``P`` the moves are ``[a, a]`` (start a replica one
    interval later), ``[b, b]`` (stop it one earlier) and, for short runs, ``[a, b]`` (skip
    a short peak); a move's cost is the extra misses of the intervals whose ready count
    drops, its score that cost per interval saved. Scores change only near a move, and
    stale heap entries are re-scored when popped (lazy greedy).
    """
    num = len(start)
    schedule = list(start)
    ready = window_min_behind(schedule, startup)
    width = len(table[0]) if table else 1
    whole_limit = WHOLE_RUN_WINDOWS * (startup + 1)

    def miss(j: int, count: int) -> float:
        k = count - min_level
        return math.inf if k < 0 else table[j][min(k, width - 1)]

    def cost(first: int, last: int, value: int) -> float:
        total = 0.0
        for j in range(first, min(num - 1, last + startup) + 1):
            if ready[j] == value:
                total += miss(j, value - 1) - miss(j, value)
        return total

    heap: list[tuple[float, int, int, int, int]] = []
    order = itertools.count()

    def offer(first: int, last: int) -> None:
        value = schedule[first]
        if value <= floor:
            return
        extra = cost(first, last, value)
        if extra < math.inf:
            score = max(extra, 0.0) / (last - first + 1)
            heapq.heappush(heap, (score, next(order), first, last, value))

    def offer_runs(low: int, high: int) -> None:
        i = max(low, 0)
        while i <= min(high, num - 1):
            a = b = i
            while a > 0 and schedule[a - 1] == schedule[i]:
                a -= 1
            while b + 1 < num and schedule[b + 1] == schedule[i]:
                b += 1
            offer(a, a)
            if b > a:
                offer(b, b)
                if b - a + 1 <= whole_limit:
                    offer(a, b)
            i = b + 1

    offer_runs(0, num - 1)
    moves: list[tuple[int, int]] = []
    spent: list[float] = []
    total = 0.0
    while heap and total <= stop_misses:
        score, _, first, last, value = heapq.heappop(heap)
        if any(schedule[i] != value for i in range(first, last + 1)):
            continue
        extra = cost(first, last, value)
        if extra == math.inf:
            continue
        fresh = max(extra, 0.0) / (last - first + 1)
        if fresh > score + 1e-12 and heap and fresh > heap[0][0]:
            heapq.heappush(heap, (fresh, next(order), first, last, value))
            continue
        for i in range(first, last + 1):
            schedule[i] = value - 1
        for j in range(first, min(num - 1, last + startup) + 1):
            ready[j] = min(ready[j], value - 1)
        total += max(extra, 0.0)
        moves.append((first, last))
        spent.append(total)
        offer_runs(first - startup - 1, last + startup + 1)
    return moves, spent


def apply_moves(start: list[int], moves: list[tuple[int, int]], count: int) -> list[int]:
    """``start`` with the first ``count`` of ``moves`` applied."""
    schedule = list(start)
    for first, last in moves[:count]:
        for i in range(first, last + 1):
            schedule[i] -= 1
    return schedule


def chain_dp(costs: np.ndarray, switch: float) -> tuple[float, list[int]]:
    """The cheapest level path: ``sum costs[j, k_j] + switch * sum max(0, k_j - k_{j-1})``.

    ``costs[j, k]`` is interval ``j``'s cost at level ``k`` (levels are consecutive replica
    counts; ``inf`` forbids one); ``switch`` is what one more ready replica costs before it
    is ready (its start-up). The first interval pays no switch (the fleet the run starts
    with). O(intervals x levels): the cheapest way into level ``k`` comes from the cheapest
    level at or above it (free) or below it (``switch`` per level up): two running minima.
    """
    num, width = costs.shape
    ramp = switch * np.arange(width)
    values = np.empty((num, width))
    current = costs[0].copy()
    values[0] = current
    for j in range(1, num):
        from_above = np.minimum.accumulate(current[::-1])[::-1]
        from_below = np.minimum.accumulate(current - ramp) + ramp
        current = costs[j] + np.minimum(from_above, from_below)
        values[j] = current
    level = int(np.argmin(current))
    path = [0] * num
    path[-1] = level
    index = np.arange(width)
    for j in range(num - 2, -1, -1):
        level = int(np.argmin(values[j] + switch * np.maximum(0, level - index)))
        path[j] = level
    return float(current.min()), path
