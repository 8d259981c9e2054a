"""Per-request limits: per-key rate limits as token buckets kept in process, counted in items,
and the cap on items per request.

Time comes in as ``now_s`` (monotonic seconds) so the bucket is a plain, testable object.
A request of N items (OIP v2 rows, ``/v1/embeddings`` inputs) costs N tokens, so a key's
``rate_limit_per_s`` is items per second whatever the request sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiscale.errors import PayloadTooLarge


@dataclass(slots=True)
class TokenBucket:
    """``rate_per_s`` tokens refill each second up to ``burst``; a request takes its cost.

    A request costing more than ``burst`` would never fit: it is let through on a full
    bucket and leaves it in debt (negative), which the key then waits out at ``rate_per_s``.
    """

    rate_per_s: float
    burst: float
    tokens: float
    updated_s: float

    @classmethod
    def full(cls, rate_per_s: float, now_s: float, burst: float | None = None) -> TokenBucket:
        capacity = burst if burst is not None else max(1.0, rate_per_s)
        return cls(rate_per_s, capacity, capacity, now_s)

    def try_take(self, now_s: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0.0 on success, else seconds until it would succeed."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        needed = min(cost, self.burst)
        if self.tokens >= needed:
            self.tokens -= cost
            return 0.0
        return (needed - self.tokens) / self.rate_per_s


class RateLimiter:
    """One token bucket per key id; buckets are created on first use."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def try_take(self, key_id: str, rate_per_s: float, now_s: float, cost: float = 1.0) -> float:
        """Take ``cost`` (the request's items) from ``key_id``'s bucket; 0.0 or seconds to wait."""
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate_per_s != rate_per_s:
            bucket = TokenBucket.full(rate_per_s, now_s)
            self._buckets[key_id] = bucket
        return bucket.try_take(now_s, cost)


def check_item_count(num_items: int, max_items: int, field: str) -> None:
    """Refuse a request of more than ``max_items`` items with ``PayloadTooLarge`` (413).

    Called with the declared count (a tensor's shape, a list's length) before any item is
    decoded, so an oversized request costs nothing but its parse.
    """
    if num_items > max_items:
        raise PayloadTooLarge(
            f"{num_items} items in one request; the limit is {max_items} "
            "(max_items_per_request, and no more than the deployment's batching.max_queue)",
            field=field,
        )
