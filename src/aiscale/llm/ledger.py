"""The token ledger: tokens as the unit of account of the LLM endpoints.

Per API key and per team it enforces requests per minute, tokens per minute, concurrent
requests, and budgets in tokens or money per UTC day and month; it books what every request
really used (prompt, cached prompt and completion tokens, and their price) so that spend can
be queried and exported. The gateway calls it twice per request::

    reservation = await ledger.admit(key_id=..., team=..., model=...,
                                     prompt_tokens_max=..., max_tokens=...)  # or LimitExceeded
    try:
        ...  # generate, stream
    finally:
        await ledger.settle(reservation, usage)  # streamed, cancelled or failed alike

**Reserve, then settle.** ``admit`` reserves ``prompt_tokens_max + max_tokens`` (and their
price at the dearer of the prompt prices) against every limit of the key and of its team in
one atomic step: all are checked, then all are taken, or none is. ``settle`` releases the
reservation and books the real usage instead; it is idempotent (a reservation is booked
once). So concurrent requests, on one gateway or many, cannot together pass a limit: a
request is admitted only if its whole reservation fits, and its real usage is at most its
reservation whenever ``prompt_tokens_max`` is a true upper bound. The one allowed overshoot
is by a single request: a request whose reservation alone is above the tokens-per-minute
limit passes when the key's (or team's) minute is empty, as a request costlier than a
token bucket's burst does in ``serving/limits.py``; otherwise it could never be served.
Budgets allow no such exception: a request that could exceed a budget is refused.

**Windows.** Per-minute limits count over a *sliding* window of one-second buckets: a check
at time t sums the buckets of the seconds floor(t)-60 .. floor(t). Every real interval of 60
seconds lies inside the buckets some later check summed, so no such interval ever holds
more admitted tokens (or requests) than the limit, unlike a fixed minute (up to twice the
limit across a boundary) or a token bucket (its burst plus a minute's refill). It costs at
most 61 counters per scope, whatever the rate, which a sliding log (one entry per request)
does not; GCRA would be O(1) but is a token bucket, with the same 2x minute. Budgets count
per UTC calendar day and month (``YYYY-MM-DD``, ``YYYY-MM``); usage is booked to the period
in which the request was admitted.

**Expiry.** A reservation that is never settled (its gateway crashed) stops holding its
concurrent slot and its budget share ``reservation_ttl_s`` after admission; the tokens it
put into a minute leave with that minute. A settle that comes later still books the real
usage once.

**Where.** In process (``ledger_local.py``, one ``asyncio.Lock``) when no Redis is
configured; in Redis (``ledger_redis.py``, one Lua script per call) to share limits across
gateways; both behind the ``LedgerStore`` seam of ``ledger_store.py``. Prices and money
(exact, in nano-dollars) are ``ledger_pricing.py``'s. Both stores take time from this
module's clock (Unix seconds), so they behave the same and a test can drive either with a
fake clock. With Redis the gateways' clocks must agree (NTP): a skew of s seconds loosens
a minute's bound by about s seconds' worth, and a budget's period flips at each gateway's
own midnight.

This module never imports the web framework; ``LimitExceeded`` becomes a 429 with
``Retry-After`` through ``serving/errors.py`` (it is a ``RateLimited``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from aiscale.errors import Forbidden, InvalidInput, RateLimited
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.llm.ledger_metrics import LedgerMetrics
from aiscale.llm.ledger_pricing import NANOS_PER_USD, TokenPrices, limit_values, usd_of
from aiscale.llm.ledger_store import (
    BUCKET_MS,
    PERIOD_FIELD_RE,
    Admission,
    LedgerStore,
    LedgerUnavailable,
    Refusal,
    Reservation,
    ScopeCounts,
    ScopeLimits,
    Settlement,
    TokenUsage,
)
from aiscale.registry.records import LLM_LIMIT_NAMES, LlmLimits

__all__ = [
    "Ledger",
    "LedgerUnavailable",
    "LimitExceeded",
    "Reservation",
    "TokenLedger",
    "TokenUsage",
    "make_ledger",
]

logger = logging.getLogger(__name__)

#: Unix seconds now (``time.time``); budgets are calendar periods, so wall-clock time.
Clock = Callable[[], float]

#: Settlements kept for a retry while the store is unreachable; beyond this they are dropped
#: (and counted): their reservations then expire, and their usage is not booked.
MAX_PENDING_SETTLES = 10_000
#: Waiting settlements a call books before its own work, once the store is back.
MAX_FLUSH_PER_CALL = 16
#: How long a settled reservation's id is remembered, so that a second settle is a no-op.
MIN_SETTLED_MEMORY_S = 86_400.0

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: Limits a request counts against as one, whatever its tokens.
_PER_REQUEST = ("requests_per_minute", "max_concurrent")




class LimitExceeded(RateLimited):
    """A request refused by a limit or budget (429 with ``Retry-After``).

    ``limit`` names it as ``<key|team>:<measure>``, e.g. ``key:tokens_per_minute``; the
    error's ``field`` is the same name, so the error body names the limit. ``retry_after_s``
    is when the window frees enough (per-minute limits), the next UTC day or month (budgets),
    or a short hint (concurrency)."""

    def __init__(self, message: str, *, limit: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s=retry_after_s, field=limit)
        self.limit = limit

    @property
    def is_about_tokens(self) -> bool:
        """Whether the limit counts tokens or money (priced per token): a smaller
        reservation, from the prompt's exact count rather than its byte bound, may fit."""
        return self.limit.partition(":")[2] not in _PER_REQUEST




class TokenLedger(Protocol):
    """Admission and accounting of LLM requests in tokens; see the module docstring."""

    async def admit(
        self,
        *,
        key_id: str | None,
        team: str | None,
        model: str,
        prompt_tokens_max: int,
        max_tokens: int,
        key_limits: LlmLimits | None = None,
    ) -> Reservation:
        """Reserve ``prompt_tokens_max + max_tokens`` against every limit of the key
        (``key_limits``, the caller's from the registry; ``None``: none) and of ``team``
        (from the config); raises ``LimitExceeded`` (nothing taken), ``Forbidden`` when a
        money budget applies to a model without a price, ``InvalidInput`` for bad
        arguments, ``LedgerUnavailable`` when the shared store fails."""
        ...

    async def settle(self, reservation: Reservation, usage: TokenUsage) -> None:
        """Release the reservation and book ``usage``; call it exactly once per admitted
        request (``finally:``), a second call is a no-op. Never raises for store trouble:
        the settlement is retried later. Finishes even if the calling task is cancelled."""
        ...

    async def usage(self, *, key_id: str | None = None, team: str | None = None) -> dict[str, Any]:
        """Spend of a key and/or a team: the last minute, in flight, this UTC day and
        month (totals and per model), as JSON-ready data ``{"key": ..., "team": ...}``."""
        ...

    async def close(self) -> None:
        """Finish pending settlements (best effort) and release the store."""
        ...




# ------------------------------------------------------------------------ the rules


def day_of(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%d")


def month_of(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m")


def ms_to_next_day(now_s: float) -> int:
    start = datetime.fromtimestamp(now_s, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((start.timestamp() + 86_400 - now_s) * 1000))


def ms_to_next_month(now_s: float) -> int:
    at = datetime.fromtimestamp(now_s, UTC)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    start = datetime(year, month, 1, tzinfo=UTC)
    return max(1, math.ceil((start.timestamp() - now_s) * 1000))




def _checked_id(value: str | None, field: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not _ID_RE.match(value)):
        raise InvalidInput(f"invalid {field} {value!r}", field=field)
    return value


def _checked_count(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{field} must be a whole number >= 0, got {value!r}", field=field)
    return value


def _clean_usage(usage: TokenUsage, reservation_id: str) -> TokenUsage:
    """Usage as booked: counts clamped to >= 0, cached tokens to at most the prompt. Bad
    numbers from an engine must not stop the booking; they are logged."""
    prompt = max(0, int(usage.prompt_tokens))
    completion = max(0, int(usage.completion_tokens))
    cached = min(prompt, max(0, int(usage.cached_tokens)))
    clean = TokenUsage(prompt, cached, completion)
    if clean != usage:
        logger.warning(
            "usage %s of reservation %s clamped to %s", usage, reservation_id, clean,
            extra={"reservation_id": reservation_id},
        )
    return clean


_DESCRIPTIONS = {
    "requests_per_minute": "requests in the last minute",
    "tokens_per_minute": "tokens in the last minute",
    "max_concurrent": "requests in flight",
    "budget_tokens_per_day": "tokens today (UTC)",
    "budget_tokens_per_month": "tokens this month (UTC)",
    "budget_usd_per_day": "US dollars today (UTC)",
    "budget_usd_per_month": "US dollars this month (UTC)",
}


def refusal_error(refusal: Refusal, admission: Admission, asked: str) -> LimitExceeded:
    """The 429 for a refusal: names the limit, the use, what the request reserves (``asked``
    says how it was computed) and when to retry."""
    kind = refusal.scope.partition(":")[0]
    is_money = refusal.limit.startswith("budget_usd")
    show: Callable[[int], str] = usd_of if is_money else str
    message = (
        f"{refusal.scope}: {refusal.limit} limit {show(refusal.allowed)} reached: "
        f"{show(refusal.used)} {_DESCRIPTIONS[refusal.limit]}"
    )
    if refusal.limit not in _PER_REQUEST:
        cost = admission.cost_nanos if is_money else admission.tokens
        message += f", and this request reserves up to {show(cost)} ({asked})"
        if cost > refusal.allowed:
            message += (
                ", more than the limit: it runs only alone in an empty minute"
                if refusal.limit == "tokens_per_minute"
                else ", more than the budget allows at all: lower max_tokens or the prompt"
            )
    retry_s = refusal.retry_after_ms / 1000.0
    message += f"; retry after {max(1, math.ceil(retry_s))} s"
    return LimitExceeded(message, limit=f"{kind}:{refusal.limit}", retry_after_s=retry_s)


# ------------------------------------------------------------------------ the ledger


class Ledger:
    """The ``TokenLedger`` over a ``LedgerStore``: computes what to reserve and book (prices,
    periods, limits), and leaves checking and counting to the store."""

    def __init__(
        self,
        config: LedgerConfig,
        store: LedgerStore,
        *,
        metrics: LedgerMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._clock: Clock = clock or time.time
        self._prices = TokenPrices(config)
        self._teams: dict[str, LlmLimits] = {team.name: team.to_limits() for team in config.teams}
        self._ttl_ms = int(config.reservation_ttl_s * 1000)
        memory_s = max(MIN_SETTLED_MEMORY_S, 2 * config.reservation_ttl_s)
        self._settled_memory_ms = int(memory_s * 1000)
        self._metrics = metrics
        self._pending: deque[Settlement] = deque()
        #: Held by the one caller booking ``_pending``: concurrent callers each took the same
        #: head, and each then removed one, so a settlement nobody had booked was dropped
        #: (or the deque ran empty: IndexError, a 500 in the gateway).
        self._flushing = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()

    def team_limits(self, team: str) -> LlmLimits:
        """A team's limits from the config (none for a team the config does not name)."""
        return self._teams.get(team, LlmLimits())

    async def admit(
        self,
        *,
        key_id: str | None,
        team: str | None,
        model: str,
        prompt_tokens_max: int,
        max_tokens: int,
        key_limits: LlmLimits | None = None,
    ) -> Reservation:
        _checked_id(key_id, "key_id")
        _checked_id(team, "team")
        if not isinstance(model, str) or not _MODEL_RE.match(model):
            raise InvalidInput(f"invalid model {model!r}", field="model")
        _checked_count(prompt_tokens_max, "prompt_tokens_max")
        _checked_count(max_tokens, "max_tokens")
        scopes: list[ScopeLimits] = []
        if key_id is not None:
            scopes.append(ScopeLimits(f"key:{key_id}", limit_values(key_limits or LlmLimits())))
        if team is not None:
            scopes.append(ScopeLimits(f"team:{team}", limit_values(self.team_limits(team))))
        if not self._prices.has_price(model):
            for scope in scopes:
                for name, value in zip(LLM_LIMIT_NAMES, scope.values, strict=True):
                    if name.startswith("budget_usd") and value >= 0:
                        raise Forbidden(
                            f"{scope.scope} has a money budget ({name}) but model {model!r} "
                            "has no price (server.ledger.prices), so it cannot be charged",
                            field="model",
                        )
        await self._flush_pending()
        now_s = self._clock()
        now_ms = int(now_s * 1000)
        tokens = prompt_tokens_max + max_tokens
        admission = Admission(
            reservation_id=secrets.token_hex(12),
            now_ms=now_ms,
            bucket=now_ms // BUCKET_MS,
            expiry_ms=now_ms + self._ttl_ms,
            tokens=tokens,
            cost_nanos=self._prices.reservation_nanos(model, prompt_tokens_max, max_tokens),
            day=day_of(now_s),
            month=month_of(now_s),
            day_left_ms=ms_to_next_day(now_s),
            month_left_ms=ms_to_next_month(now_s),
            scopes=tuple(scopes),
        )
        if scopes:
            refusal = await self._store.reserve(admission)
            if refusal is not None:
                asked = f"prompt <= {prompt_tokens_max} tokens + max_tokens {max_tokens}"
                error = refusal_error(refusal, admission, asked)
                self._metrics.refusals.labels(error.limit).inc()
                raise error
        self._metrics.in_flight.inc()
        return Reservation(
            reservation_id=admission.reservation_id,
            key_id=key_id,
            team=team,
            model=model,
            scopes=tuple(s.scope for s in scopes),
            bucket=admission.bucket,
            day=admission.day,
            month=admission.month,
            tokens=tokens,
            cost_nanos=admission.cost_nanos,
        )

    async def settle(self, reservation: Reservation, usage: TokenUsage) -> None:
        # A shielded task: a request cancelled by its client still books what it used.
        task = asyncio.get_running_loop().create_task(self._settle(reservation, usage))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _settle(self, reservation: Reservation, usage: TokenUsage) -> None:
        usage = _clean_usage(usage, reservation.reservation_id)
        now_ms = int(self._clock() * 1000)
        settlement = Settlement(
            reservation=reservation,
            now_ms=now_ms,
            bucket=now_ms // BUCKET_MS,
            tokens=usage.total_tokens,
            cost_nanos=self._prices.cost_nanos(reservation.model, usage),
            usage=usage,
            settled_memory_ms=self._settled_memory_ms,
        )
        await self._flush_pending()
        try:
            is_new = await self._store.settle(settlement)
        except LedgerUnavailable as exc:
            self._keep_pending(settlement, exc)
            return
        if is_new:
            self._book_metrics(settlement)

    def _book_metrics(self, settlement: Settlement) -> None:
        reservation, usage = settlement.reservation, settlement.usage
        self._metrics.in_flight.dec()
        labels = (reservation.key_id or "", reservation.team or "", reservation.model)
        tokens = self._metrics.tokens
        tokens.labels(*labels, "prompt").inc(usage.prompt_tokens - usage.cached_tokens)
        tokens.labels(*labels, "cached_prompt").inc(usage.cached_tokens)
        tokens.labels(*labels, "completion").inc(usage.completion_tokens)
        self._metrics.spend.labels(*labels).inc(settlement.cost_nanos / NANOS_PER_USD)

    def _keep_pending(self, settlement: Settlement, exc: Exception) -> None:
        if len(self._pending) >= MAX_PENDING_SETTLES:
            self._metrics.dropped_settles.inc()
            logger.error(
                "ledger store unreachable and %d settlements pending: dropped reservation %s "
                "(its hold expires; its usage is not booked)",
                len(self._pending),
                settlement.reservation.reservation_id,
                extra={"reservation_id": settlement.reservation.reservation_id},
            )
            return
        if not self._pending:
            logger.warning("ledger store unreachable (%s); settlements wait for it", exc)
        self._pending.append(settlement)
        self._metrics.pending_settles.set(len(self._pending))

    async def _flush_pending(
        self, max_count: int = MAX_FLUSH_PER_CALL, *, wait: bool = False
    ) -> None:
        """Book up to ``max_count`` settlements that failed earlier, oldest first, until one
        fails again (a bound, so that a request never waits for a long backlog). One caller
        books at a time; another returns at once (``wait``: waits its turn, as ``close``)."""
        if not self._pending or (self._flushing.locked() and not wait):
            return
        async with self._flushing:
            for _ in range(max_count):
                if not self._pending:
                    return
                settlement = self._pending[0]
                try:
                    is_new = await self._store.settle(settlement)
                except LedgerUnavailable:
                    return
                self._pending.popleft()  # still the head: only the lock holder removes
                self._metrics.pending_settles.set(len(self._pending))
                if is_new:
                    self._book_metrics(settlement)

    async def usage(self, *, key_id: str | None = None, team: str | None = None) -> dict[str, Any]:
        _checked_id(key_id, "key_id")
        _checked_id(team, "team")
        now_s = self._clock()
        now_ms = int(now_s * 1000)
        result: dict[str, Any] = {"key": None, "team": None}
        for kind, name in (("key", key_id), ("team", team)):
            if name is None:
                continue
            counts = await self._store.read(
                f"{kind}:{name}",
                now_ms=now_ms,
                bucket=now_ms // BUCKET_MS,
                day=day_of(now_s),
                month=month_of(now_s),
            )
            entry = scope_usage_json(counts, now_s=now_s)
            if kind == "team":
                entry = {"name": name, **entry, "limits": self.team_limits(name).as_dict()}
            else:
                entry = {"id": name, **entry}
            result[kind] = entry
        return result

    async def close(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self._flush_pending(len(self._pending), wait=True)
        if self._pending:
            logger.error(
                "closing the ledger with %d settlements not booked (store unreachable)",
                len(self._pending),
            )
        await self._store.close()


def scope_usage_json(counts: ScopeCounts, *, now_s: float) -> dict[str, Any]:
    """A scope's counters as the admin API and the CLI show them."""
    return {
        "at": datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "last_minute": {"requests": counts.minute_requests, "tokens": counts.minute_tokens},
        "in_flight": {
            "requests": counts.in_flight,
            "reserved_tokens": counts.in_flight_tokens,
            "reserved_usd": usd_of(counts.in_flight_nanos),
        },
        "day": {"period": day_of(now_s), **period_json(counts.day)},
        "month": {"period": month_of(now_s), **period_json(counts.month)},
    }


def period_json(fields: Mapping[str, int]) -> dict[str, Any]:
    """Booked counters of a period (``PERIOD_FIELDS``, totals and ``m/<model>/...``)."""
    totals: dict[str, int] = {}
    by_model: dict[str, dict[str, int]] = {}
    for name, value in fields.items():
        match = PERIOD_FIELD_RE.match(name)
        if match is None:
            continue
        target = totals if match["model"] is None else by_model.setdefault(match["model"], {})
        target[match["field"]] = value

    def shown(counts: Mapping[str, int]) -> dict[str, Any]:
        return {
            "requests": counts.get("req", 0),
            "tokens": counts.get("tok", 0),
            "prompt_tokens": counts.get("prompt", 0),
            "cached_tokens": counts.get("cached", 0),
            "completion_tokens": counts.get("completion", 0),
            "usd": usd_of(counts.get("nanos", 0)),
        }

    return {**shown(totals), "by_model": {m: shown(c) for m, c in sorted(by_model.items())}}


def make_ledger(
    limits: LedgerConfig,
    *,
    redis_url: str | None,
    key_prefix: str,
    timeout_s: float = 0.25,
    metrics_registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
) -> TokenLedger:
    """The ledger for ``limits`` (``server.ledger``): in Redis under ``<key_prefix>ledger:``
    when ``redis_url`` is set, shared by every gateway using the same Redis and prefix; in
    this process otherwise. Each Redis call has the deadline ``timeout_s``. Metrics go to
    ``metrics_registry`` (a private one if ``None``)."""
    metrics = LedgerMetrics(metrics_registry or CollectorRegistry())
    store: LedgerStore
    if redis_url is None:
        from aiscale.llm.ledger_local import LocalLedgerStore

        store = LocalLedgerStore()
    else:
        from aiscale.llm.ledger_redis import RedisLedgerStore

        store = RedisLedgerStore(
            redis_url,
            key_prefix=key_prefix,
            timeout_s=timeout_s,
            reservation_ttl_s=limits.reservation_ttl_s,
        )
    return Ledger(limits, store, metrics=metrics, clock=clock)
