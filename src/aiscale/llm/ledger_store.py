"""The seam between the token ledger and where its counters live, and the values that cross it.

``ledger.Ledger`` computes what to reserve and book (prices, periods, limits) and hands a
store an ``Admission`` or a ``Settlement``; the store checks and counts, in this process
(``ledger_local.py``) or in Redis (``ledger_redis.py``), by the same rules. Values only:
nothing here does I/O. ``TokenUsage``, ``Reservation`` and ``LedgerUnavailable`` are part of
the ledger's public interface and re-exported by ``aiscale.llm.ledger``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from aiscale.errors import UpstreamUnavailable

#: Length of one bucket of a per-minute window, and how many full buckets precede the current
#: one in a window (61 buckets: every real 60 s interval lies inside one window).
BUCKET_MS = 1000
WINDOW_BUCKETS_BEFORE = 60
#: The retry hint of a refused concurrent request: slots free when requests end, unknown when.
CONCURRENCY_RETRY_MS = 1000


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """What one request used. ``cached_tokens`` are the part of ``prompt_tokens`` the engine
    served from its prefix cache (OpenAI's ``prompt_tokens_details.cached_tokens``)."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens



class LedgerUnavailable(UpstreamUnavailable):
    """The ledger's shared store (Redis) failed, timed out, or holds values that are not
    the ledger's own. Admission fails closed: a budget exists to stop spending."""



@dataclass(frozen=True, slots=True)
class Reservation:
    """An admitted request's hold on its limits; pass it back to ``settle``. Opaque to
    callers except ``reservation_id`` (for logs)."""

    reservation_id: str
    key_id: str | None
    team: str | None
    model: str
    #: ``key:<id>`` and/or ``team:<name>``: where the reservation is held and usage booked.
    scopes: tuple[str, ...]
    #: The second (bucket) in which it was admitted, and the periods usage is booked to.
    bucket: int
    day: str
    month: str
    tokens: int
    cost_nanos: int



# ----------------------------------------------------------------- what a store is asked


@dataclass(frozen=True, slots=True)
class ScopeLimits:
    """One scope and its limits as whole numbers (``-1``: none; money in nano-dollars), in
    the order of ``LLM_LIMIT_NAMES``."""

    scope: str
    values: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Admission:
    """One ``admit`` as a store executes it: check every limit of every scope, then take."""

    reservation_id: str
    now_ms: int
    bucket: int
    expiry_ms: int
    tokens: int
    cost_nanos: int
    day: str
    month: str
    day_left_ms: int
    month_left_ms: int
    scopes: tuple[ScopeLimits, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a store refused an admission: the first scope's binding limit."""

    scope: str
    limit: str
    retry_after_ms: int
    used: int
    allowed: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """One ``settle`` as a store executes it, at ``now_ms``."""

    reservation: Reservation
    now_ms: int
    bucket: int
    tokens: int
    cost_nanos: int
    usage: TokenUsage
    settled_memory_ms: int


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    """A scope's counters as a store reads them (all whole numbers)."""

    minute_requests: int
    minute_tokens: int
    in_flight: int
    in_flight_tokens: int
    in_flight_nanos: int
    #: Field name -> value of the day's and the month's booked usage (``PERIOD_FIELDS``).
    day: dict[str, int]
    month: dict[str, int]


#: Counters booked per period, in total and per model (``m/<model>/<field>``).
PERIOD_FIELDS: tuple[str, ...] = ("req", "tok", "prompt", "cached", "completion", "nanos")
PERIOD_FIELD_RE = re.compile(
    r"^(?:m/(?P<model>[a-z0-9][a-z0-9._-]{0,62})/)?(?P<field>req|tok|prompt|cached|completion|nanos)$"
)


class LedgerStore(Protocol):
    """Where the counters live: in this process or in Redis. Both implement the same rules
    (module docstring); a store never reads a clock."""

    async def reserve(self, admission: Admission) -> Refusal | None:
        """Check all limits of all scopes; take all (``None``) or nothing (a ``Refusal``)."""
        ...

    async def settle(self, settlement: Settlement) -> bool:
        """Release and book once; ``False`` if this reservation was settled before."""
        ...

    async def read(
        self, scope: str, *, now_ms: int, bucket: int, day: str, month: str
    ) -> ScopeCounts:
        """The counters of one scope now."""
        ...

    async def close(self) -> None: ...

