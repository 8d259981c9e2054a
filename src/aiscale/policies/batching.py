"""The dynamic batching rule: how many queued items a free replica takes now.

One implementation for the live batcher (``serving/batcher.py``) and the simulator
(``plan/_exact.py``), so that simulated batches form exactly as served ones do. Pure: no
clock, no I/O; the caller passes how long a free replica has already waited.
"""

from __future__ import annotations


def batch_size_to_take(
    num_queued: int, target_size: int, max_batch_size: int, waited_s: float, max_delay_s: float
) -> int:
    """How many items to dispatch now; 0 means wait for more.

    Dispatch when the queue reached the target (recent demand: the last batch's size,
    capped by the max batch size) or when a free replica has waited ``max_delay_s`` for it.
    ``waited_s`` counts from when both a replica was free and an item was waiting: counting
    from the oldest arrival instead would send requests that queued behind a busy replica
    alone, splitting closed-loop clients into two alternating half-size batches.
    """
    if num_queued == 0:
        return 0
    target = max(1, min(target_size, max_batch_size))
    if num_queued >= target or waited_s >= max_delay_s:
        return min(num_queued, max_batch_size)
    return 0
