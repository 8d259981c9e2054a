"""Gateway state shared through Redis: per-key rate limits and the response cache.

With several gateways behind one load balancer, a key's rate limit must hold across all of
them and an answer cached by one should serve the others. Both live in Redis under one key
prefix. Each request costs at most one round trip per feature (an atomic Lua token bucket;
one ``MGET`` for the cache, whose writes go out in the background), every call has a
deadline, and Redis being slow or down never fails a request:

* a limit check that fails or times out falls back to this gateway's own in-process bucket
  (fail open: while Redis is away, a key may get up to N x its rate across N gateways);
* a cache lookup that fails is a miss; a failed write is dropped.

After a failure Redis is left alone for ``retry_s`` so that an outage costs no waiting per
request; errors are counted in ``aiscale_redis_errors_total`` and logged when the state
changes. This module never decides a limit policy of its own: the bucket is the same one
``limits.py`` keeps in process, computed by Redis on Redis's clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from aiscale.errors import ConfigError
from aiscale.serving.limits import RateLimiter

logger = logging.getLogger(__name__)

#: Cache writes in flight at once; beyond this a write is skipped (and counted).
MAX_PENDING_WRITES = 256

# KEYS[1]: the bucket. ARGV: rate per second, burst. Returns the wait in seconds as a string
# (a Lua number would be truncated to an integer on the way out). Redis's own clock is used,
# so gateways with skewed clocks share one consistent bucket.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where shared state lives and how long each call may take."""

    url: str
    key_prefix: str = "aiscale:"
    timeout_s: float = 0.25
    cache_ttl_s: float = 3600.0
    #: After a failed call, seconds during which Redis is not asked again.
    retry_s: float = 1.0


def check_reachable(settings: RedisSettings) -> None:
    """PING Redis once (synchronously, at start-up); ``ConfigError`` naming the URL if not."""
    try:
        client = redis.Redis.from_url(
            settings.url,
            socket_timeout=max(settings.timeout_s, 1.0),
            socket_connect_timeout=max(settings.timeout_s, 1.0),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {settings.url!r}: {exc}", field="redis_url") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"cannot reach Redis at {settings.url}: {exc}", field="redis_url"
        ) from None
    finally:
        client.close()


class SharedState:
    """One Redis client for a gateway, and its health; ``aclose`` it when the gateway stops."""

    def __init__(self, settings: RedisSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        try:
            self.client: aioredis.Redis = aioredis.Redis.from_url(
                settings.url,
                socket_timeout=settings.timeout_s,
                socket_connect_timeout=settings.timeout_s,
            )
        except ValueError as exc:
            raise ConfigError(
                f"invalid Redis URL {settings.url!r}: {exc}", field="redis_url"
            ) from None
        self._errors = Counter(
            "aiscale_redis_errors_total",
            "Redis calls that failed or timed out, by use (limits, cache); the gateway "
            "fell back to local limits or a cache miss.",
            ["use"],
            registry=metrics_registry,
        )
        self._down_until_s = 0.0
        self.limits = RedisRateLimiter(self)
        self.cache = RedisResponseCache(self)

    def key(self, *parts: str) -> str:
        return self.settings.key_prefix + ":".join(parts)

    @property
    def is_available(self) -> bool:
        """False while a recent failure keeps Redis out of the hot path."""
        return time.monotonic() >= self._down_until_s

    async def call(self, use: str, operation: Awaitable[Any]) -> Any:
        """Await ``operation`` with the deadline; ``None`` (and a counted error) on failure."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                result = await operation
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._errors.labels(use).inc()
            if self.is_available:
                logger.warning(
                    "Redis at %s failed (%s: %s); using local %s for %.1fs",
                    self.settings.url,
                    type(exc).__name__,
                    exc,
                    "limits" if use == "limits" else "misses",
                    self.settings.retry_s,
                )
            self._down_until_s = time.monotonic() + self.settings.retry_s
            return None
        return result

    async def aclose(self) -> None:
        await self.cache.stop()
        await self.client.aclose()


class RedisRateLimiter:
    """Per-key token buckets in Redis; the in-process ``RateLimiter`` while Redis is away."""

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._script = state.client.register_script(_TOKEN_BUCKET)
        self.local = RateLimiter()

    async def try_take(self, key_id: str, rate_per_s: float) -> float:
        """Take one token of ``key_id``'s bucket: 0.0 on success, else seconds to wait."""
        state = self._state
        if state.is_available:
            burst = max(1.0, rate_per_s)
            wait = await state.call(
                "limits",
                self._script(keys=[state.key("limit", key_id)], args=[rate_per_s, burst]),
            )
            if wait is not None:
                return float(wait)
        return self.local.try_take(key_id, rate_per_s, time.monotonic())


class RedisResponseCache:
    """Cached answers in Redis, each with a time to live; misses on any Redis trouble.

    Memory is bounded by Redis itself: run it with ``maxmemory`` and
    ``maxmemory-policy allkeys-lru`` (or ``volatile-lru``), as ``docs/scaleout.md`` says.
    """

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._writes: set[asyncio.Task[None]] = set()
        self.num_skipped_writes = 0

    def _name(self, key: bytes) -> str:
        return self._state.key("cache", key.hex())

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The cached values of ``keys`` in order (``None``: a miss), in one round trip."""
        if not keys or not self._state.is_available:
            return [None] * len(keys)
        found = await self._state.call(
            "cache", self._state.client.mget([self._name(k) for k in keys])
        )
        if found is None:
            return [None] * len(keys)
        return list(found)

    def put_many(self, entries: Sequence[tuple[bytes, bytes]], max_value_bytes: int) -> None:
        """Store entries in the background (the answer never waits for them)."""
        entries = [(k, v) for k, v in entries if len(k) + len(v) <= max_value_bytes]
        if not entries or not self._state.is_available:
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.num_skipped_writes += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(entries))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, entries: Sequence[tuple[bytes, bytes]]) -> None:
        ttl_ms = int(self._state.settings.cache_ttl_s * 1000)
        pipeline = self._state.client.pipeline(transaction=False)
        for key, value in entries:
            pipeline.set(self._name(key), value, px=ttl_ms)
        await self._state.call("cache", pipeline.execute())

    async def stop(self) -> None:
        """Let pending writes finish (each is bounded by the call deadline)."""
        await asyncio.gather(*self._writes, return_exceptions=True)
