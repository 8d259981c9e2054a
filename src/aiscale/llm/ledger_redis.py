"""The token ledger's counters in Redis, shared by every gateway using the same prefix.

Each ledger call is one Lua script, which Redis runs atomically: ``admit`` checks every limit
of the key and of its team and then takes from all of them, or from none; so gateways
racing for the last tokens of a limit cannot both win. The rules are those of ``ledger.py``,
line for line the ones ``ledger_local.py`` runs in process; time comes from the caller (the
gateway's clock), never from Redis, so both stores behave the same under one clock.

Key layout, under ``P = <key_prefix>ledger:`` and a scope ``S`` (``key:<id>`` or
``team:<name>``)::

    P S:w             HASH  r:<second> / t:<second> -> requests / tokens admitted in that
                            second, net of settlements (the sliding minute: 61 seconds);
                            expires 62 s after its last write
    P S:f             ZSET  reservation id -> its expiry (ms): the requests in flight
    P S:a             HASH  <id>:t / <id>:u -> tokens / nano-dollars each holds, and
                            t / u -> their sums; :f and :a expire reservation_ttl + 60 s
                            after the last admission
    P S:d:YYYY-MM-DD  HASH  usage booked that UTC day: req, tok, prompt, cached, completion,
                            nanos, and m/<model>/<same> per model; kept 40 days
    P S:m:YYYY-MM     HASH  the same per UTC month; kept 400 days
    P done:<id>       STR   "1": the reservation is settled (for settled_memory)

Everything read back is untrusted: a value must be a decimal integer of at most 18 digits
and a field one of the ledger's own names, or the call fails (``LedgerUnavailable``) naming
the key; nothing is ever unpickled or evaluated. Every call has a deadline; a failed admit
is refused (fail closed), a failed settle is kept and retried by ``ledger.Ledger``; after a
failure Redis is left alone for ``RETRY_S`` (calls fail at once, nobody waits on a timeout).
A script that times out on the client may still have run: its reservation then expires.
Redis Cluster is not supported (a script touches the keys of two scopes).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from aiscale.errors import ConfigError
from aiscale.llm.ledger_store import (
    BUCKET_MS,
    CONCURRENCY_RETRY_MS,
    PERIOD_FIELD_RE,
    WINDOW_BUCKETS_BEFORE,
    Admission,
    LedgerUnavailable,
    Refusal,
    ScopeCounts,
    Settlement,
)
from aiscale.registry.records import LLM_LIMIT_NAMES

#: How long booked usage is kept (as ``ledger_local.KEPT_DAYS`` / ``KEPT_MONTHS``).
DAY_TTL_S = 40 * 86_400
MONTH_TTL_S = 400 * 86_400
#: After a failed call, seconds during which Redis is not asked again.
RETRY_S = 1.0
#: A minute's buckets outlive their last write by the window and a second.
WINDOW_TTL_MS = (WINDOW_BUCKETS_BEFORE + 2) * BUCKET_MS

_INTEGER = re.compile(rb"^-?[0-9]{1,18}$")

# Helpers every script shares. ``int`` is the only way a stored value is read: anything but
# a decimal integer of at most 18 digits stops the script with an error naming the key.
# Numbers go back to Redis through ``fmt`` (%d): Lua would print large ones as 1.5e+14.
_PRELUDE = f"""
local BEFORE = {WINDOW_BUCKETS_BEFORE}
local BUCKET_MS = {BUCKET_MS}
local function int(value, key)
  if value == false or value == nil then return 0 end
  if type(value) ~= 'string' or #value > 19 or not string.find(value, '^%-?%d+$') then
    error('aiscale ledger: a value in ' .. key .. ' is not an integer')
  end
  return tonumber(value)
end
local function fmt(number)
  return string.format('%d', number)
end
-- Forget expired reservations of a scope: drop them from :f and their holds from :a.
local function purge(F, A, now)
  local gone = redis.call('ZRANGEBYSCORE', F, '-inf', now)
  if #gone == 0 then return end
  local t, u = 0, 0
  for _, id in ipairs(gone) do
    t = t + int(redis.call('HGET', A, id .. ':t'), A)
    u = u + int(redis.call('HGET', A, id .. ':u'), A)
    redis.call('HDEL', A, id .. ':t', id .. ':u')
  end
  redis.call('ZREMRANGEBYSCORE', F, '-inf', now)
  redis.call('HINCRBY', A, 't', fmt(-t))
  redis.call('HINCRBY', A, 'u', fmt(-u))
end
-- The window's sums, and per bucket {{requests, tokens}}; buckets older than it are deleted.
local function window(W, bucket)
  local all = redis.call('HGETALL', W)
  local oldest = bucket - BEFORE
  local requests, tokens = 0, 0
  local buckets, stale = {{}}, {{}}
  for i = 1, #all, 2 do
    local kind, at = string.match(all[i], '^([rt]):(%d+)$')
    if not kind or #at > 15 then error('aiscale ledger: an unknown field in ' .. W) end
    at = tonumber(at)
    if at < oldest then
      stale[#stale + 1] = all[i]
    else
      local value = int(all[i + 1], W)
      local entry = buckets[at]
      if not entry then entry = {{0, 0}}; buckets[at] = entry end
      if kind == 'r' then
        entry[1] = entry[1] + value; requests = requests + value
      else
        entry[2] = entry[2] + value; tokens = tokens + value
      end
    end
  end
  for i = 1, #stale, 100 do
    redis.call('HDEL', W, unpack(stale, i, math.min(i + 99, #stale)))
  end
  return requests, tokens, buckets
end
"""

# KEYS: per scope W F A D M. ARGV: now_ms, bucket, id, expiry_ms, tokens, nanos, day_left_ms,
# month_left_ms, flight_ttl_ms, number of scopes, then per scope its 7 limits (-1: none) in
# the order of LLM_LIMIT_NAMES. Returns {'ok'} or {'no', scope, limit, retry_ms, used,
# allowed} (1-based indexes) for the refusal that frees last.
_ADMIT = _PRELUDE + f"""
local now = tonumber(ARGV[1])
local bucket = tonumber(ARGV[2])
local tokens, nanos = tonumber(ARGV[5]), tonumber(ARGV[6])
local day_left, month_left = tonumber(ARGV[7]), tonumber(ARGV[8])
local num_scopes = tonumber(ARGV[10])
local best = nil
local function refuse(scope, limit, retry, used, allowed)
  if best == nil or retry > best[3] then best = {{scope, limit, retry, used, allowed}} end
end
local function retry_of(buckets, column, need)
  local order = {{}}
  for at in pairs(buckets) do order[#order + 1] = at end
  table.sort(order)
  local freed = 0
  for _, at in ipairs(order) do
    freed = freed + buckets[at][column]
    if freed >= need then return math.max(1, (at + BEFORE + 1) * BUCKET_MS - now) end
  end
  return BUCKET_MS
end
for i = 1, num_scopes do
  local W, F, A, D, M = KEYS[i*5-4], KEYS[i*5-3], KEYS[i*5-2], KEYS[i*5-1], KEYS[i*5]
  local L = {{}}
  for j = 1, 7 do L[j] = tonumber(ARGV[10 + (i - 1) * 7 + j]) end
  purge(F, A, ARGV[1])
  local requests, used_tokens, buckets = window(W, bucket)
  if L[1] >= 0 and requests + 1 > L[1] then
    refuse(i, 1, retry_of(buckets, 1, requests + 1 - L[1]), requests, L[1])
  end
  -- A request above the limit on its own passes alone, in an empty minute (ledger.py).
  if L[2] >= 0 and used_tokens > 0 and used_tokens + tokens > L[2] then
    local need = math.min(used_tokens, used_tokens + tokens - L[2])
    refuse(i, 2, retry_of(buckets, 2, need), used_tokens, L[2])
  end
  local flying = redis.call('ZCARD', F)
  if L[3] >= 0 and flying + 1 > L[3] then refuse(i, 3, {CONCURRENCY_RETRY_MS}, flying, L[3]) end
  local held_tokens = int(redis.call('HGET', A, 't'), A)
  local held_nanos = int(redis.call('HGET', A, 'u'), A)
  local day = redis.call('HMGET', D, 'tok', 'nanos')
  local month = redis.call('HMGET', M, 'tok', 'nanos')
  local checks = {{
    {{4, int(day[1], D) + held_tokens, tokens, day_left}},
    {{5, int(month[1], M) + held_tokens, tokens, month_left}},
    {{6, int(day[2], D) + held_nanos, nanos, day_left}},
    {{7, int(month[2], M) + held_nanos, nanos, month_left}},
  }}
  for _, c in ipairs(checks) do
    local budget = L[c[1]]
    if budget >= 0 and c[2] + c[3] > budget then refuse(i, c[1], c[4], c[2], budget) end
  end
end
if best ~= nil then
  return {{'no', fmt(best[1]), fmt(best[2]), fmt(best[3]), fmt(best[4]), fmt(best[5])}}
end
for i = 1, num_scopes do
  local W, F, A = KEYS[i*5-4], KEYS[i*5-3], KEYS[i*5-2]
  redis.call('HINCRBY', W, 'r:' .. ARGV[2], 1)
  redis.call('HINCRBY', W, 't:' .. ARGV[2], ARGV[5])
  redis.call('PEXPIRE', W, {WINDOW_TTL_MS})
  redis.call('ZADD', F, ARGV[4], ARGV[3])
  redis.call('HSET', A, ARGV[3] .. ':t', ARGV[5], ARGV[3] .. ':u', ARGV[6])
  redis.call('HINCRBY', A, 't', ARGV[5])
  redis.call('HINCRBY', A, 'u', ARGV[6])
  redis.call('PEXPIRE', F, ARGV[9])
  redis.call('PEXPIRE', A, ARGV[9])
end
return {{'ok'}}
"""

# KEYS: the done marker, then per scope W F A D M (D and M of the admission's periods).
# ARGV: id, admission bucket, current bucket, reserved tokens, used tokens, marker ttl (ms),
# number of scopes, then field/increment pairs booked to D and M. Returns 1, or 0 when the
# reservation was settled before.
_SETTLE = _PRELUDE + f"""
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[6]) then return 0 end
local id = ARGV[1]
local admitted, bucket = tonumber(ARGV[2]), tonumber(ARGV[3])
local delta = tonumber(ARGV[5]) - tonumber(ARGV[4])
local num_scopes = tonumber(ARGV[7])
for i = 1, num_scopes do
  local W, F, A, D, M = KEYS[i*5-3], KEYS[i*5-2], KEYS[i*5-1], KEYS[i*5], KEYS[i*5+1]
  if redis.call('ZREM', F, id) == 1 then
    local t = int(redis.call('HGET', A, id .. ':t'), A)
    local u = int(redis.call('HGET', A, id .. ':u'), A)
    redis.call('HDEL', A, id .. ':t', id .. ':u')
    redis.call('HINCRBY', A, 't', fmt(-t))
    redis.call('HINCRBY', A, 'u', fmt(-u))
  end
  if admitted >= bucket - BEFORE then
    local field = 't:' .. ARGV[2]
    local held = redis.call('HGET', W, field)
    if held then redis.call('HSET', W, field, fmt(math.max(0, int(held, W) + delta))) end
  elseif delta > 0 then
    redis.call('HINCRBY', W, 't:' .. ARGV[3], fmt(delta))
    redis.call('PEXPIRE', W, {WINDOW_TTL_MS})
  end
  for j = 8, #ARGV, 2 do
    redis.call('HINCRBY', D, ARGV[j], ARGV[j + 1])
    redis.call('HINCRBY', M, ARGV[j], ARGV[j + 1])
  end
  redis.call('EXPIRE', D, {DAY_TTL_S})
  redis.call('EXPIRE', M, {MONTH_TTL_S})
end
return 1
"""

# KEYS: W F A D M of one scope. ARGV: now_ms, bucket. Returns {requests, tokens, in flight,
# held tokens, held nanos, day fields, month fields}; the periods are checked in Python.
_READ = _PRELUDE + """
purge(KEYS[2], KEYS[3], ARGV[1])
local requests, tokens = window(KEYS[1], tonumber(ARGV[2]))
return {fmt(requests), fmt(tokens), fmt(redis.call('ZCARD', KEYS[2])),
        fmt(int(redis.call('HGET', KEYS[3], 't'), KEYS[3])),
        fmt(int(redis.call('HGET', KEYS[3], 'u'), KEYS[3])),
        redis.call('HGETALL', KEYS[4]), redis.call('HGETALL', KEYS[5])}
"""


def _integer(value: Any, where: str) -> int:
    """A value Redis returned, as an int: only a decimal integer of at most 18 digits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes) and _INTEGER.match(value):
        return int(value)
    raise LedgerUnavailable(f"the ledger's Redis holds a value that is not an integer in {where}")


def _period(flat: Any, where: str) -> dict[str, int]:
    """A period hash (flat field/value list) with the ledger's own field names only."""
    if not isinstance(flat, list) or len(flat) % 2:
        raise LedgerUnavailable(f"the ledger's Redis returned a malformed hash for {where}")
    fields: dict[str, int] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else ""
        if PERIOD_FIELD_RE.match(text) is None:
            raise LedgerUnavailable(f"the ledger's Redis holds an unknown field in {where}")
        fields[text] = _integer(value, where)
    return fields


class RedisLedgerStore:
    """The ``LedgerStore`` in Redis (see the module docstring); ``close`` it."""

    def __init__(
        self, url: str, *, key_prefix: str, timeout_s: float, reservation_ttl_s: float
    ) -> None:
        try:
            self._client: aioredis.Redis = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        except ValueError as exc:
            raise ConfigError(
                f"invalid Redis URL for the ledger: {exc}", field="redis_url"
            ) from None
        self._prefix = f"{key_prefix}ledger:"
        self._timeout_s = timeout_s
        self._down_until_s = 0.0
        self._flight_ttl_ms = int(reservation_ttl_s * 1000) + 60_000
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._read = self._client.register_script(_READ)

    def _keys(self, scope: str, day: str, month: str) -> list[str]:
        base = f"{self._prefix}{scope}:"
        return [f"{base}w", f"{base}f", f"{base}a", f"{base}d:{day}", f"{base}m:{month}"]

    async def _call(self, what: str, operation: Coroutine[Any, Any, Any]) -> Any:
        """Await ``operation`` with the deadline. After a failure Redis is left alone for
        ``RETRY_S``: calls fail at once meanwhile, so an outage costs no waiting per request."""
        left_s = self._down_until_s - time.monotonic()
        if left_s > 0:
            operation.close()
            raise LedgerUnavailable(
                f"the ledger's Redis failed recently; not asked to {what} for {left_s:.1f} s"
            )
        try:
            async with asyncio.timeout(self._timeout_s):
                return await operation
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._down_until_s = time.monotonic() + RETRY_S
            # The URL (it may hold a password) is never part of the message.
            detail = str(exc) or type(exc).__name__
            raise LedgerUnavailable(f"the ledger's Redis failed to {what}: {detail}") from None

    async def reserve(self, admission: Admission) -> Refusal | None:
        keys: list[str] = []
        limits: list[int] = []
        for scope in admission.scopes:
            keys += self._keys(scope.scope, admission.day, admission.month)
            limits += scope.values
        args: list[int | str] = [
            admission.now_ms, admission.bucket, admission.reservation_id, admission.expiry_ms,
            admission.tokens, admission.cost_nanos, admission.day_left_ms,
            admission.month_left_ms, self._flight_ttl_ms, len(admission.scopes), *limits,
        ]
        reply = await self._call("admit", self._admit(keys=keys, args=args))
        if not isinstance(reply, list) or not reply:
            raise LedgerUnavailable("the ledger's Redis gave an unexpected answer to admit")
        if reply[0] == b"ok":
            return None
        scope_index, limit_index, retry_ms, used, allowed = (
            _integer(value, "an admit answer") for value in reply[1:6]
        )
        return Refusal(
            scope=admission.scopes[scope_index - 1].scope,
            limit=LLM_LIMIT_NAMES[limit_index - 1],
            retry_after_ms=retry_ms,
            used=used,
            allowed=allowed,
        )

    async def settle(self, settlement: Settlement) -> bool:
        reservation, usage = settlement.reservation, settlement.usage
        keys = [f"{self._prefix}done:{reservation.reservation_id}"]
        for scope in reservation.scopes:
            keys += self._keys(scope, reservation.day, reservation.month)
        values = {
            "req": 1,
            "tok": settlement.tokens,
            "prompt": usage.prompt_tokens,
            "cached": usage.cached_tokens,
            "completion": usage.completion_tokens,
            "nanos": settlement.cost_nanos,
        }
        pairs: list[int | str] = []
        for name, value in values.items():
            pairs += [name, value, f"m/{reservation.model}/{name}", value]
        args: Sequence[int | str] = [
            reservation.reservation_id, reservation.bucket, settlement.bucket,
            reservation.tokens, settlement.tokens, settlement.settled_memory_ms,
            len(reservation.scopes), *pairs,
        ]
        reply = await self._call("settle", self._settle(keys=keys, args=args))
        return _integer(reply, "a settle answer") == 1

    async def read(
        self, scope: str, *, now_ms: int, bucket: int, day: str, month: str
    ) -> ScopeCounts:
        keys = self._keys(scope, day, month)
        reply = await self._call("read usage", self._read(keys=keys, args=[now_ms, bucket]))
        if not isinstance(reply, list) or len(reply) != 7:
            raise LedgerUnavailable("the ledger's Redis gave an unexpected answer to a read")
        where = f"{self._prefix}{scope}"
        requests, tokens, flying, held_tokens, held_nanos = (
            _integer(value, where) for value in reply[:5]
        )
        return ScopeCounts(
            minute_requests=requests,
            minute_tokens=tokens,
            in_flight=flying,
            in_flight_tokens=held_tokens,
            in_flight_nanos=held_nanos,
            day=_period(reply[5], keys[3]),
            month=_period(reply[6], keys[4]),
        )

    async def close(self) -> None:
        await self._client.aclose()
