"""Per-key rate limits as token buckets, kept in process.

Time comes in as ``now_s`` (monotonic seconds) so the bucket is a plain, testable object.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    """``rate_per_s`` tokens refill each second up to ``burst``; each request takes one."""

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
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate_per_s


class RateLimiter:
    """One token bucket per key id; buckets are created on first use."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def try_take(self, key_id: str, rate_per_s: float, now_s: float) -> float:
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate_per_s != rate_per_s:
            bucket = TokenBucket.full(rate_per_s, now_s)
            self._buckets[key_id] = bucket
        return bucket.try_take(now_s)
