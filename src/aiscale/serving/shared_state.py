"""Gateway state shared through Redis: per-key rate limits and the response cache.

With several gateways behind one load balancer, a key's rate limit must hold across all of
them and an answer cached by one should serve the others. Both live in Redis under one key
prefix. Each request costs at most one round trip per feature (an atomic Lua token bucket;
one ``MGET`` for the cache, whose writes go out in the background), every call has a
deadline, and Redis being slow or down never fails a request:

* a limit check that fails or times out falls back to this gateway's own in-process bucket
  (fail open: while Redis is away, a key may get up to N x its rate across N gateways);
* a cache lookup that fails is a miss; a failed write is dropped.

Whoever can write to Redis can write cache entries, so every cached value is sealed with an
HMAC-SHA256 of its Redis key and its bytes under the gateways' shared secret
(``RedisSettings.cache_secret``). A value whose seal does not verify (planted, tampered,
or sealed under another secret) is a miss, counted in ``aiscale_cache_rejected_total``;
the bytes themselves are only ever decoded as data (``cache.decode_output``), never
unpickled. The Redis URL may carry a user and password (ACL) and use TLS (``rediss://``);
both are handled by redis-py, and the password never appears in a log line or an error.

After a failure Redis is left alone for ``retry_s`` so that an outage costs no waiting per
request; errors are counted in ``aiscale_redis_errors_total`` and logged when the state
changes. This module never decides a limit policy of its own: the bucket is the same one
``limits.py`` keeps in process, computed by Redis on Redis's clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter

from aiscale.errors import ConfigError
from aiscale.serving.limits import RateLimiter

logger = logging.getLogger(__name__)

#: Cache writes in flight at once; beyond this a write is skipped (and counted).
MAX_PENDING_WRITES = 256

#: First byte of a sealed cache value: the seal's format, so a later one can be told apart.
_SEAL_VERSION = b"\x01"
_MAC_BYTES = 32

# KEYS[1]: the bucket. ARGV: rate per second, burst, cost (the request's items). Returns the
# wait in seconds as a string (a Lua number would be truncated to an integer on the way out).
# Redis's own clock is used, so gateways with skewed clocks share one consistent bucket. A cost
# above the burst passes on a full bucket and leaves a debt, as ``limits.TokenBucket`` does.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
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
local needed = math.min(cost, burst)
local wait = 0
if tokens >= needed then
  tokens = tokens - cost
else
  wait = (needed - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
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
    #: Key of the HMAC that seals cached values; every gateway sharing the cache needs the
    #: same one. ``None``: a random one for this process (its entries serve only itself).
    cache_secret: bytes | None = None


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else netloc
    query = parts.query
    if "password" in query.lower():
        query = urlencode(
            [(k, "***" if k.lower() == "password" else v)
             for k, v in parse_qsl(query, keep_blank_values=True)]
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def check_reachable(settings: RedisSettings) -> None:
    """PING Redis once (synchronously, at start-up); ``ConfigError`` naming the URL if not."""
    try:
        client = redis.Redis.from_url(
            settings.url,
            socket_timeout=max(settings.timeout_s, 1.0),
            socket_connect_timeout=max(settings.timeout_s, 1.0),
        )
    except ValueError as exc:
        raise ConfigError(
            f"invalid Redis URL {redact_url(settings.url)!r}: {exc}", field="redis_url"
        ) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"cannot reach Redis at {redact_url(settings.url)}: {exc}", field="redis_url"
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
                f"invalid Redis URL {redact_url(settings.url)!r}: {exc}", field="redis_url"
            ) from None
        self._errors = Counter(
            "aiscale_redis_errors_total",
            "Redis calls that failed or timed out, by use (limits, cache); the gateway "
            "fell back to local limits or a cache miss.",
            ["use"],
            registry=metrics_registry,
        )
        self._rejected = Counter(
            "aiscale_cache_rejected_total",
            "Cached values read from Redis and refused, by reason (seal: not sealed with "
            "this server's secret, i.e. planted or tampered; format: not a cached output); "
            "each was treated as a miss and never decoded into code.",
            ["reason"],
            registry=metrics_registry,
        )
        self._num_rejected = 0
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
                    redact_url(self.settings.url),
                    type(exc).__name__,
                    exc,
                    "limits" if use == "limits" else "misses",
                    self.settings.retry_s,
                )
            self._down_until_s = time.monotonic() + self.settings.retry_s
            return None
        return result

    def count_rejected(self, reason: str) -> None:
        """Count a cached value refused (``seal`` or ``format``); log the first of each
        thousand, so that a flood of planted values cannot flood the log too."""
        self._rejected.labels(reason).inc()
        if self._num_rejected % 1000 == 0:
            logger.warning(
                "refused a cached value from Redis (%s: not sealed by a gateway with this "
                "server's cache secret); treated as a miss (%d refused before)",
                reason,
                self._num_rejected,
            )
        self._num_rejected += 1

    async def aclose(self) -> None:
        await self.cache.stop()
        await self.client.aclose()


class RedisRateLimiter:
    """Per-key token buckets in Redis; the in-process ``RateLimiter`` while Redis is away."""

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._script = state.client.register_script(_TOKEN_BUCKET)
        self.local = RateLimiter()

    async def try_take(self, key_id: str, rate_per_s: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens (the request's items) of ``key_id``'s bucket: 0.0 on success,
        else seconds to wait."""
        state = self._state
        if state.is_available:
            burst = max(1.0, rate_per_s)
            wait = await state.call(
                "limits",
                self._script(keys=[state.key("limit", key_id)], args=[rate_per_s, burst, cost]),
            )
            if wait is not None:
                return float(wait)
        return self.local.try_take(key_id, rate_per_s, time.monotonic(), cost)


class RedisResponseCache:
    """Cached answers in Redis, each with a time to live; misses on any Redis trouble.

    Memory is bounded by Redis itself: run it with ``maxmemory`` and
    ``maxmemory-policy allkeys-lru`` (or ``volatile-lru``), as ``docs/scaleout.md`` says.
    """

    def __init__(self, state: SharedState) -> None:
        self._state = state
        self._writes: set[asyncio.Task[None]] = set()
        self.num_skipped_writes = 0
        secret = state.settings.cache_secret
        if secret is None:
            logger.warning(
                "no cache secret configured: cached values are sealed with a random key "
                "of this process, so other gateways cannot use them"
            )
            secret = secrets.token_bytes(32)
        self._secret = secret

    def _name(self, key: bytes) -> str:
        return self._state.key("cache", key.hex())

    def _mac(self, name: str, value: bytes) -> bytes:
        # The Redis key is inside the MAC: a valid entry copied to another key is refused.
        mac = hmac.new(self._secret, name.encode(), hashlib.sha256)
        mac.update(b"\0")
        mac.update(value)
        return mac.digest()

    def _seal(self, name: str, value: bytes) -> bytes:
        return _SEAL_VERSION + self._mac(name, value) + value

    def _open(self, name: str, sealed: bytes) -> bytes | None:
        """The value inside ``sealed`` if its seal verifies, else ``None`` (and counted)."""
        header = len(_SEAL_VERSION) + _MAC_BYTES
        value = sealed[header:]
        if (
            len(sealed) < header
            or not sealed.startswith(_SEAL_VERSION)
            or not hmac.compare_digest(sealed[1:header], self._mac(name, value))
        ):
            self._state.count_rejected("seal")
            return None
        return value

    def count_rejected(self, reason: str) -> None:
        """Count a value that passed the seal but could not be decoded (``format``)."""
        self._state.count_rejected(reason)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The cached values of ``keys`` in order (``None``: a miss), in one round trip.

        Only values sealed by a gateway holding this secret come back; anything else
        found under a key is a miss and counted in ``aiscale_cache_rejected_total``."""
        if not keys or not self._state.is_available:
            return [None] * len(keys)
        names = [self._name(k) for k in keys]
        found = await self._state.call("cache", self._state.client.mget(names))
        if found is None:
            return [None] * len(keys)
        return [
            None if sealed is None else self._open(name, sealed)
            for name, sealed in zip(names, found, strict=True)
        ]

    def put_many(self, entries: Sequence[tuple[bytes, bytes]], max_value_bytes: int) -> None:
        """Seal and store entries in the background (the answer never waits for them)."""
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
            name = self._name(key)
            pipeline.set(name, self._seal(name, value), px=ttl_ms)
        await self._state.call("cache", pipeline.execute())

    async def stop(self) -> None:
        """Let pending writes finish (each is bounded by the call deadline)."""
        await asyncio.gather(*self._writes, return_exceptions=True)
