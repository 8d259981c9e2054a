"""The capture log's group commit, as the exact simulator replays it after its event loop.

A served request's response waits until its capture record is durable
(``data/capture.py``): one writer takes every record waiting, writes them and fdatasyncs
once, and while it syncs the next records gather for the following commit. So a request
whose batch finished at ``t`` waits for the first commit that starts at or after ``t`` to
end. A commit takes an ordinary sync time (``DiskTerms.sync_ms``) unless a disk stall
overlaps it: then it ends when the stall ends, and every request ready meanwhile waits
for it too. The commit never occupies a replica, so it does not change the event loop.
"""

from __future__ import annotations

import numpy as np

from aiscale.plan.profile import DiskTerms
from aiscale.plan.traffic import FloatArray


def stall_windows(
    disk: DiskTerms, duration_s: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """``(starts, ends)`` of the disk's stalls over ``[0, duration_s]``, by start time."""
    if disk.stall_rate_per_s <= 0 or duration_s <= 0:
        empty = np.empty(0)
        return empty, empty
    count = int(rng.poisson(disk.stall_rate_per_s * duration_s))
    starts = np.sort(rng.uniform(0.0, duration_s, count))
    lengths = rng.choice(np.asarray(disk.stall_ms) / 1000.0, count)
    return starts, starts + lengths


def commit_waits(
    ready_s: FloatArray,
    disk: DiskTerms,
    rng: np.random.Generator,
    duration_s: float,
    stalls: tuple[FloatArray, FloatArray] | None = None,
) -> FloatArray:
    """Seconds each request waits for its commit, given when it is ready (``ready_s``, any
    order). ``duration_s`` bounds the stall process (the simulated span); ``stalls`` gives
    the ``(starts, ends)`` windows instead of drawing them (``stall_windows``)."""
    count = int(ready_s.size)
    waits = np.zeros(count)
    if count == 0:
        return waits
    order = np.argsort(ready_s, kind="stable")
    ready = ready_s[order]
    syncs = disk.sync_at(rng.random(count))  # at most one commit per request
    if stalls is None:
        stalls = stall_windows(disk, max(duration_s, float(ready[-1])) + 1.0, rng)
    starts, ends = stalls
    stall = 0  # the first stall that may still overlap a commit
    num_stalls = int(starts.size)
    free_s = -np.inf
    first = 0
    commit = 0
    while first < count:
        begin = max(float(ready[first]), free_s)
        # Everything ready when the commit starts goes into it.
        last = int(np.searchsorted(ready, begin, side="right"))
        end = begin + float(syncs[commit])
        while stall < num_stalls and ends[stall] <= begin:
            stall += 1
        probe = stall
        while probe < num_stalls and starts[probe] < end:
            end = max(end, float(ends[probe]))
            probe += 1
        waits[order[first:last]] = end - ready[first:last]
        free_s = end
        first = last
        commit += 1
    return waits
