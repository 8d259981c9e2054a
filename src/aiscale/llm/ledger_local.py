"""The token ledger's counters in this process: one gateway, no Redis.

Implements the rules of ``ledger.py`` exactly as the Lua scripts of ``ledger_redis.py`` do
(the same tests run on both). Every call runs under one ``asyncio.Lock``; nothing inside
awaits, so a check and its take can never interleave with another request's. Memory is
bounded by the number of keys and teams: 61 buckets, the in-flight reservations, 40 days
and 13 months of booked usage per scope, and settled ids for ``settled_memory_ms``.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict
from dataclasses import dataclass, field

from aiscale.llm.ledger_store import (
    BUCKET_MS,
    CONCURRENCY_RETRY_MS,
    WINDOW_BUCKETS_BEFORE,
    Admission,
    Refusal,
    ScopeCounts,
    Settlement,
)
from aiscale.registry.records import LLM_LIMIT_NAMES

#: How much booked usage a scope keeps (the Redis store expires the same periods).
KEPT_DAYS = 40
KEPT_MONTHS = 13


@dataclass(slots=True)
class _InFlight:
    expiry_ms: int
    tokens: int
    nanos: int


@dataclass(slots=True)
class _Scope:
    """The counters of one key or team."""

    #: Bucket (second) -> [requests, tokens] admitted in it, net of settlements.
    buckets: dict[int, list[int]] = field(default_factory=dict)
    in_flight: dict[str, _InFlight] = field(default_factory=dict)
    #: (expiry_ms, reservation id) of in-flight reservations; settled ones are skipped.
    expiries: list[tuple[int, str]] = field(default_factory=list)
    in_flight_tokens: int = 0
    in_flight_nanos: int = 0
    days: dict[str, dict[str, int]] = field(default_factory=dict)
    months: dict[str, dict[str, int]] = field(default_factory=dict)

    def purge(self, now_ms: int, bucket: int) -> None:
        """Forget expired reservations and buckets older than the window."""
        while self.expiries and self.expiries[0][0] <= now_ms:
            _, rid = heapq.heappop(self.expiries)
            gone = self.in_flight.get(rid)
            if gone is not None and gone.expiry_ms <= now_ms:
                del self.in_flight[rid]
                self.in_flight_tokens -= gone.tokens
                self.in_flight_nanos -= gone.nanos
        oldest = bucket - WINDOW_BUCKETS_BEFORE
        for old in [b for b in self.buckets if b < oldest]:
            del self.buckets[old]

    def window_retry_ms(self, now_ms: int, column: int, need: int) -> int:
        """When enough of the window's ``column`` (0 requests, 1 tokens) has aged out to
        free ``need``: the bucket that frees it leaves 61 buckets after it began."""
        freed = 0
        for bucket in sorted(self.buckets):
            freed += self.buckets[bucket][column]
            if freed >= need:
                return max(1, (bucket + WINDOW_BUCKETS_BEFORE + 1) * BUCKET_MS - now_ms)
        return BUCKET_MS  # unreachable when need <= the window's sum


def _check(state: _Scope, scope: str, limits: tuple[int, ...], ask: Admission) -> list[Refusal]:
    """Every limit of one scope that ``ask`` would break, with when to retry."""
    by_name = dict(zip(LLM_LIMIT_NAMES, limits, strict=True))
    requests = sum(b[0] for b in state.buckets.values())
    tokens = sum(b[1] for b in state.buckets.values())
    day = state.days.get(ask.day, {})
    month = state.months.get(ask.month, {})
    found: list[Refusal] = []

    def refuse(name: str, retry_ms: int, used: int) -> None:
        found.append(Refusal(scope, name, retry_ms, used, by_name[name]))

    rpm = by_name["requests_per_minute"]
    if rpm >= 0 and requests + 1 > rpm:
        need = requests + 1 - rpm
        refuse("requests_per_minute", state.window_retry_ms(ask.now_ms, 0, need), requests)
    tpm = by_name["tokens_per_minute"]
    # A request above the limit on its own passes alone, in an empty minute (ledger.py).
    if tpm >= 0 and tokens > 0 and tokens + ask.tokens > tpm:
        need = min(tokens, tokens + ask.tokens - tpm)
        refuse("tokens_per_minute", state.window_retry_ms(ask.now_ms, 1, need), tokens)
    concurrent = by_name["max_concurrent"]
    if concurrent >= 0 and len(state.in_flight) + 1 > concurrent:
        refuse("max_concurrent", CONCURRENCY_RETRY_MS, len(state.in_flight))
    for name, period, left_ms, column, flying, cost in (
        ("budget_tokens_per_day", day, ask.day_left_ms, "tok", state.in_flight_tokens, ask.tokens),
        ("budget_tokens_per_month", month, ask.month_left_ms, "tok", state.in_flight_tokens,
         ask.tokens),
        ("budget_usd_per_day", day, ask.day_left_ms, "nanos", state.in_flight_nanos,
         ask.cost_nanos),
        ("budget_usd_per_month", month, ask.month_left_ms, "nanos", state.in_flight_nanos,
         ask.cost_nanos),
    ):
        budget = by_name[name]
        used = period.get(column, 0) + flying
        if budget >= 0 and used + cost > budget:
            refuse(name, left_ms, used)
    return found


def _binding(refusals: list[Refusal]) -> Refusal:
    """The refusal to report: the one that frees last (the first such, in check order)."""
    best = refusals[0]
    for refusal in refusals[1:]:
        if refusal.retry_after_ms > best.retry_after_ms:
            best = refusal
    return best


def _book(
    periods: dict[str, dict[str, int]], period: str, kept: int, values: dict[str, int]
) -> None:
    counters = periods.get(period)
    if counters is None:
        counters = periods[period] = {}
        for old in sorted(periods)[:-kept]:
            del periods[old]
    for name, value in values.items():
        counters[name] = counters.get(name, 0) + value


class LocalLedgerStore:
    """The ``LedgerStore`` of one process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._scopes: dict[str, _Scope] = {}
        #: Settled reservation ids -> until when they are remembered (insertion order is
        #: expiry order: every id is remembered for the same time).
        self._settled: OrderedDict[str, int] = OrderedDict()

    def _scope(self, scope: str) -> _Scope:
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = _Scope()
        return state

    async def reserve(self, admission: Admission) -> Refusal | None:
        async with self._lock:
            refusals: list[Refusal] = []
            states = []
            for scope in admission.scopes:
                state = self._scope(scope.scope)
                state.purge(admission.now_ms, admission.bucket)
                refusals += _check(state, scope.scope, scope.values, admission)
                states.append(state)
            if refusals:
                return _binding(refusals)
            for state in states:  # every check passed: take from every scope
                counts = state.buckets.setdefault(admission.bucket, [0, 0])
                counts[0] += 1
                counts[1] += admission.tokens
                state.in_flight[admission.reservation_id] = _InFlight(
                    admission.expiry_ms, admission.tokens, admission.cost_nanos
                )
                heapq.heappush(state.expiries, (admission.expiry_ms, admission.reservation_id))
                state.in_flight_tokens += admission.tokens
                state.in_flight_nanos += admission.cost_nanos
            return None

    async def settle(self, settlement: Settlement) -> bool:
        reservation, usage = settlement.reservation, settlement.usage
        rid = reservation.reservation_id
        async with self._lock:
            while self._settled and next(iter(self._settled.values())) <= settlement.now_ms:
                self._settled.popitem(last=False)
            if rid in self._settled:
                return False
            self._settled[rid] = settlement.now_ms + settlement.settled_memory_ms
            values = {
                "req": 1,
                "tok": settlement.tokens,
                "prompt": usage.prompt_tokens,
                "cached": usage.cached_tokens,
                "completion": usage.completion_tokens,
                "nanos": settlement.cost_nanos,
            }
            values |= {f"m/{reservation.model}/{name}": v for name, v in list(values.items())}
            for scope in reservation.scopes:
                state = self._scope(scope)
                held = state.in_flight.pop(rid, None)
                if held is not None:
                    state.in_flight_tokens -= held.tokens
                    state.in_flight_nanos -= held.nanos
                delta = settlement.tokens - reservation.tokens
                if reservation.bucket >= settlement.bucket - WINDOW_BUCKETS_BEFORE:
                    counts = state.buckets.get(reservation.bucket)
                    if counts is not None:
                        counts[1] = max(0, counts[1] + delta)
                elif delta > 0:  # its minute is over: what it used beyond counts now
                    state.buckets.setdefault(settlement.bucket, [0, 0])[1] += delta
                _book(state.days, reservation.day, KEPT_DAYS, values)
                _book(state.months, reservation.month, KEPT_MONTHS, values)
            return True

    async def read(
        self, scope: str, *, now_ms: int, bucket: int, day: str, month: str
    ) -> ScopeCounts:
        async with self._lock:
            state = self._scopes.get(scope) or _Scope()
            state.purge(now_ms, bucket)
            return ScopeCounts(
                minute_requests=sum(b[0] for b in state.buckets.values()),
                minute_tokens=sum(b[1] for b in state.buckets.values()),
                in_flight=len(state.in_flight),
                in_flight_tokens=state.in_flight_tokens,
                in_flight_nanos=state.in_flight_nanos,
                day=dict(state.days.get(day, {})),
                month=dict(state.months.get(month, {})),
            )

    async def close(self) -> None:
        return None

