"""Which engine holds which prompt prefix: an approximate, bounded map of block hash -> engines.

The router never asks an engine what it has cached (that would cost a round trip per engine
per request); it remembers where it sent each prompt, as SGLang's router and the Gateway API
Inference Extension's prefix scorer do. Per engine the index is an LRU of block hashes with a
capacity (in blocks, set to approximate the engine's KV cache: GIE sizes it the same way,
``lruCapacityPerServer``) and a time to live, so it forgets roughly when the engine does.
Within one prompt the first block is the most recent and the last the least, because engines
evict a sequence's tail first (vLLM frees a request's blocks in reverse order); a prefix
therefore survives longer than its ending, in the engine and here.

Two implementations with one interface:

* ``InMemoryPrefixIndex``: this gateway's own view (no server; the default).
* ``RedisPrefixIndex``: one view for all gateways, so that N gateways agree (AIBrix #917: a
  prefix cache is wasted when each gateway routes on its own history). Key layout, under the
  configured prefix: ``{prefix}route:{<deployment>}:<engine>`` is a sorted set per engine
  (``<engine>`` the first 16 hex digits of blake2b(url)); members are block hashes, scores
  ``redis_time_ms * 1024 + rank`` (rank: the block's position counted from the end, so the
  first block scores highest; a write in the same millisecond as the previous one starts
  above it, so scores only grow and the LRU order is the write order). ``{<deployment>}``
  is a Redis Cluster hash tag: a deployment's engines live in one slot, so one script can
  read them all. Each lookup is one ``EVALSHA``
  that returns, per engine, how many leading blocks of the chain it holds unexpired (the loop
  stops at the first miss); each write is one ``EVALSHA`` that adds at most ``max_blocks``
  members, trims expired ones and the least recent beyond the capacity, and sets the key's
  expiry. Times are Redis's own (``TIME``), so gateways with skewed clocks agree.

Redis is treated as a shared, possibly hostile store: nothing read from it is unpickled or
evaluated; a lookup's reply must be exactly one integer in ``[0, len(chain)]`` per engine or it
is discarded; a key of the wrong type counts as holding nothing and is replaced on the next
write. When Redis fails or times out, the call returns "unknown" (``match`` gives ``None``, the
router falls back to the least loaded engine) and Redis is left alone for ``retry_s``: a
request is never failed or slowed by the index. The outage is logged once when it starts and
once when it ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiscale.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Blocks per write at most; the rank is packed below the millisecond in a score (x1024).
MAX_BLOCKS_LIMIT = 1023

# KEYS: one sorted set per engine. ARGV[1]: time to live in ms; ARGV[2..]: the chain.
# Returns, per key, how many leading blocks it holds that are younger than the TTL.
_MATCH = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = (now_ms - tonumber(ARGV[1])) * 1024
local out = {}
for k = 1, #KEYS do
  local n = 0
  if redis.call('TYPE', KEYS[k]).ok == 'zset' then
    for i = 2, #ARGV do
      local score = redis.call('ZSCORE', KEYS[k], ARGV[i])
      if not score or tonumber(score) < cutoff then break end
      n = n + 1
    end
  end
  out[k] = n
end
return out
"""

# KEYS[1]: the engine's sorted set. ARGV[1]: capacity in blocks; ARGV[2]: time to live in ms;
# ARGV[3..]: the chain, first block first. Returns the number of blocks written.
_RECORD = """
local key = KEYS[1]
local kind = redis.call('TYPE', key).ok
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', key) end
local capacity = tonumber(ARGV[1])
local ttl_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #ARGV - 2
-- Scores only grow: a write in the same millisecond as the last one still ranks after it.
local base = now_ms * 1024
local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= base then base = tonumber(top[2]) + 1 end
local args = {}
for i = 3, #ARGV do
  args[#args + 1] = string.format('%.0f', base + (n - (i - 2)))
  args[#args + 1] = ARGV[i]
end
if n > 0 then redis.call('ZADD', key, unpack(args)) end
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.0f', (now_ms - ttl_ms) * 1024))
local extra = redis.call('ZCARD', key) - capacity
if extra > 0 then redis.call('ZREMRANGEBYRANK', key, 0, extra - 1) end
redis.call('PEXPIRE', key, ttl_ms)
return n
"""


class PrefixIndex(Protocol):
    """Where each engine's cached prefixes are believed to be."""

    async def match(self, chain: Sequence[str], urls: Sequence[str]) -> dict[str, int] | None:
        """For each of ``urls``, how many leading blocks of ``chain`` it holds; ``None`` when
        the index cannot say (its store is down): the caller falls back to load alone."""
        ...

    async def record(self, chain: Sequence[str], url: str) -> None:
        """Engine ``url`` now holds ``chain`` (it was just sent the prompt). Never raises."""
        ...

    def forget(self, url: str) -> None:
        """Engine ``url`` is gone: what it held must not attract requests to a successor."""
        ...

    async def close(self) -> None: ...


class InMemoryPrefixIndex:
    """This process's own index: per engine an LRU of block hashes with a TTL.

    ``clock`` gives monotonic seconds (injected so tests can age entries).
    """

    def __init__(
        self,
        *,
        capacity_blocks: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity_blocks < 1 or ttl_s <= 0:
            raise ValueError("capacity_blocks must be >= 1 and ttl_s > 0")
        self._capacity = capacity_blocks
        self._ttl_s = ttl_s
        self._clock = clock
        # url -> block hash -> expiry (monotonic s); least recent first.
        self._engines: dict[str, OrderedDict[str, float]] = {}

    async def match(self, chain: Sequence[str], urls: Sequence[str]) -> dict[str, int] | None:
        now = self._clock()
        found: dict[str, int] = {}
        for url in urls:
            blocks = self._engines.get(url)
            count = 0
            if blocks is not None:
                for block in chain:
                    expiry = blocks.get(block)
                    if expiry is None or expiry <= now:
                        break
                    count += 1
            found[url] = count
        return found

    async def record(self, chain: Sequence[str], url: str) -> None:
        blocks = self._engines.setdefault(url, OrderedDict())
        expiry = self._clock() + self._ttl_s
        # Last block first, so that the first block ends up the most recent.
        for block in reversed(chain):
            blocks[block] = expiry
            blocks.move_to_end(block)
        while len(blocks) > self._capacity:
            blocks.popitem(last=False)

    def forget(self, url: str) -> None:
        self._engines.pop(url, None)

    def num_blocks(self, url: str) -> int:
        """How many block hashes engine ``url`` holds here (expired ones included)."""
        return len(self._engines.get(url, ()))

    async def close(self) -> None:
        self._engines.clear()


class RedisPrefixIndex:
    """The index all gateways share, in Redis (key layout in the module docstring)."""

    def __init__(
        self,
        redis_url: str,
        *,
        deployment: str,
        key_prefix: str = "aiscale:",
        capacity_blocks: int,
        ttl_s: float,
        timeout_s: float = 0.25,
        retry_s: float = 1.0,
    ) -> None:
        if capacity_blocks < 1 or ttl_s <= 0 or timeout_s <= 0 or retry_s < 0:
            raise ValueError("capacity_blocks >= 1, ttl_s > 0, timeout_s > 0, retry_s >= 0")
        try:
            # Imported here: the redis package loads OpenTelemetry when it is installed, and a
            # gateway without a shared index (or with tracing off) must not pay for either.
            import redis.asyncio as aioredis

            self._client: aioredis.Redis = aioredis.Redis.from_url(
                redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL: {exc}", field="redis_url") from None
        self._key_base = f"{key_prefix}route:{{{deployment}}}:"
        self._capacity = capacity_blocks
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._match_script = self._client.register_script(_MATCH)
        self._record_script = self._client.register_script(_RECORD)
        self._down_until_s = 0.0
        self._is_down = False
        self._forgotten: set[str] = set()

    def key_of(self, url: str) -> str:
        """The Redis key of engine ``url``'s sorted set."""
        digest = hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=8)
        return self._key_base + digest.hexdigest()

    @property
    def is_available(self) -> bool:
        """False while a recent failure keeps Redis out of the request path."""
        return time.monotonic() >= self._down_until_s

    async def match(self, chain: Sequence[str], urls: Sequence[str]) -> dict[str, int] | None:
        if not urls:
            return {}
        if not chain:
            return dict.fromkeys(urls, 0)
        await self._flush_forgotten()
        keys = [self.key_of(url) for url in urls]
        reply = await self._call(self._match_script(keys=keys, args=[self._ttl_ms, *chain]))
        if reply is None:
            return None
        counts = _parse_counts(reply, len(keys), len(chain))
        if counts is None:
            logger.warning(
                "prefix index: a malformed reply from Redis (%.80r); routing by load", reply
            )
            return None
        return dict(zip(urls, counts, strict=True))

    async def record(self, chain: Sequence[str], url: str) -> None:
        if not chain:
            return
        await self._flush_forgotten()
        await self._call(
            self._record_script(
                keys=[self.key_of(url)],
                args=[self._capacity, self._ttl_ms, *chain[:MAX_BLOCKS_LIMIT]],
            )
        )

    def forget(self, url: str) -> None:
        # Synchronous by contract: the key is deleted with the next call that reaches Redis
        # (until then no request can be routed to a gone engine anyway).
        self._forgotten.add(url)

    async def close(self) -> None:
        await self._flush_forgotten()
        await self._client.aclose()

    async def _flush_forgotten(self) -> None:
        if not self._forgotten or not self.is_available:
            return
        urls, self._forgotten = self._forgotten, set()
        if await self._call(self._client.delete(*(self.key_of(u) for u in urls))) is None:
            self._forgotten |= urls  # try again with the next call

    async def _call(self, operation: Awaitable[T]) -> T | None:
        """``operation``'s result, or ``None`` if Redis is down, failed or too slow."""
        if not self.is_available:
            _close_unawaited(operation)
            return None
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await operation
        except (_redis_error(), OSError, TimeoutError) as exc:
            self._down_until_s = time.monotonic() + self._retry_s
            if not self._is_down:
                self._is_down = True
                logger.warning(
                    "prefix index: Redis failed (%s: %s); routing by load alone, retrying "
                    "every %.1fs",
                    type(exc).__name__,
                    exc,
                    self._retry_s,
                )
            return None
        if self._is_down:
            self._is_down = False
            logger.info("prefix index: Redis is back; routing by prefix again")
        return result


def _parse_counts(reply: Any, num_keys: int, num_blocks: int) -> list[int] | None:
    """The script's reply as counts, or ``None`` if it is not what the script returns."""
    if not isinstance(reply, list) or len(reply) != num_keys:
        return None
    counts = []
    for value in reply:
        # bool is an int subclass; Redis never sends one here, so one means tampering.
        if type(value) is not int or not 0 <= value <= num_blocks:
            return None
        counts.append(value)
    return counts


def _close_unawaited(operation: Awaitable[Any]) -> None:
    close = getattr(operation, "close", None)
    if callable(close):
        close()  # a coroutine never awaited would warn (and warnings are errors in tests)


def _redis_error() -> type[Exception]:
    """``redis.RedisError``, imported only where a Redis index is in use."""
    import redis

    return redis.RedisError
