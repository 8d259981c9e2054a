"""Service level objectives: error budgets and multiwindow, multi-burn-rate alerts.

What it does: an ``Slo`` declares, per deployment, which requests are good (availability: not a
5xx; latency: answered under a threshold, which is also how "p99 under 300 ms" is stated:
99 % of requests under 300 ms) and the objective over a window (e.g. 0.999 over 30 days).
``evaluate`` turns good/total counts over the windows the SLO needs into an ``SloStatus``: the
error budget left, the burn rate of every window (error rate / (1 - objective)) and the burn
alerts that fire. As the Google SRE workbook (ch. 5, "Alerting on SLOs") recommends, a rule
fires while *both* its long and its short window burn faster than its factor; the short window
makes it clear soon after the problem stops. Default rules: page on 1 h / 5 min at 14.4x and on
6 h / 30 min at 6x, ticket on 3 d / 6 h at 1x. ``RollingCounts`` keeps the counts in bounded
buckets for a caller that sees requests one interval at a time.

What it must never do: read a clock (``now_s`` is passed in), do I/O, or keep memory that
grows with time.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from aiscale.errors import ConfigError, InvalidInput

__all__ = [
    "BurnAlert",
    "BurnRule",
    "DEFAULT_BURN_RULES",
    "RollingCounts",
    "Severity",
    "Slo",
    "SloStatus",
    "WindowCounts",
    "evaluate",
]

Severity = Literal["page", "ticket"]
MINUTE_S = 60.0
HOUR_S = 3600.0
DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class BurnRule:
    """Fire at ``severity`` while both windows burn faster than ``factor``."""

    severity: Severity
    long_window_s: float
    short_window_s: float
    factor: float

    def __post_init__(self) -> None:
        if not 0 < self.short_window_s <= self.long_window_s or self.factor <= 0:
            raise ConfigError("need 0 < short_window_s <= long_window_s and factor > 0",
                              field="burn_rules")


DEFAULT_BURN_RULES: tuple[BurnRule, ...] = (
    BurnRule("page", HOUR_S, 5 * MINUTE_S, 14.4),
    BurnRule("page", 6 * HOUR_S, 30 * MINUTE_S, 6.0),
    BurnRule("ticket", 3 * DAY_S, 6 * HOUR_S, 1.0),
)


@dataclass(frozen=True, slots=True)
class Slo:
    """One objective of one deployment.

    ``kind="availability"``: a request is good unless it got a 5xx. ``kind="latency"``: good
    when answered in under ``latency_threshold_s``. ``objective`` is the share of good requests
    wanted over ``window_s``.
    """

    deployment: str
    kind: Literal["availability", "latency"]
    objective: float
    window_s: float = 30 * DAY_S
    latency_threshold_s: float | None = None
    burn_rules: tuple[BurnRule, ...] = DEFAULT_BURN_RULES

    def __post_init__(self) -> None:
        if not 0.0 < self.objective < 1.0:
            raise ConfigError("objective must be in (0, 1)", field="objective")
        if self.window_s <= 0:
            raise ConfigError("window_s must be > 0", field="window_s")
        if self.kind == "latency":
            if self.latency_threshold_s is None or self.latency_threshold_s <= 0:
                raise ConfigError("a latency SLO needs latency_threshold_s > 0",
                                  field="latency_threshold_s")
        elif self.kind != "availability":
            raise ConfigError(f"unknown SLO kind {self.kind!r}", field="kind")
        elif self.latency_threshold_s is not None:
            raise ConfigError("an availability SLO has no latency threshold",
                              field="latency_threshold_s")

    @classmethod
    def latency_percentile(cls, deployment: str, percentile: float, threshold_s: float,
                           window_s: float = 30 * DAY_S) -> Slo:
        """"p<percentile> under threshold_s": the same as ``percentile`` % of requests under
        the threshold, over the window."""
        return cls(deployment, "latency", percentile / 100.0, window_s, threshold_s)

    @property
    def name(self) -> str:
        if self.kind == "availability":
            return f"{self.deployment}:availability:{self.objective:g}"
        return f"{self.deployment}:latency<{self.latency_threshold_s:g}s:{self.objective:g}"

    @property
    def error_budget(self) -> float:
        """The share of requests that may be bad: ``1 - objective``."""
        return 1.0 - self.objective

    @property
    def windows_s(self) -> tuple[float, ...]:
        """Every window ``evaluate`` needs counts for, sorted."""
        ws = {self.window_s}
        for r in self.burn_rules:
            ws.update((r.long_window_s, r.short_window_s))
        return tuple(sorted(ws))


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Requests in a window and how many of them were good."""

    total: float
    good: float

    def __post_init__(self) -> None:
        if not (0 <= self.good <= self.total) or not math.isfinite(self.total):
            raise InvalidInput("need 0 <= good <= total", field="counts")

    @property
    def error_rate(self) -> float:
        """Share of bad requests; 0 for an empty window (nothing burned)."""
        return (self.total - self.good) / self.total if self.total > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BurnAlert:
    """A burn rule that fires, with the burn rates that made it fire."""

    severity: Severity
    rule: BurnRule
    long_burn: float
    short_burn: float


@dataclass(frozen=True, slots=True)
class SloStatus:
    """``budget_remaining``: share of the window's error budget left (1 = untouched, 0 = spent,
    below 0 = overspent). ``burn_rates``: per window in seconds. ``alerts``: the firing rules."""

    slo: Slo
    now_s: float
    error_rate: float
    budget_remaining: float
    burn_rates: Mapping[float, float]
    alerts: tuple[BurnAlert, ...]

    @property
    def is_paging(self) -> bool:
        return any(a.severity == "page" for a in self.alerts)

    @property
    def is_ticketing(self) -> bool:
        return any(a.severity == "ticket" for a in self.alerts)

    @property
    def severity(self) -> Severity | None:
        """The most severe firing alert, or None."""
        return "page" if self.is_paging else "ticket" if self.is_ticketing else None


def evaluate(slo: Slo, counts_by_window: Mapping[float, WindowCounts], now_s: float) -> SloStatus:
    """The SLO's status at ``now_s`` from counts over each of ``slo.windows_s`` ending now.

    Raises ``InvalidInput`` (field ``counts_by_window``) naming a missing window.
    """
    missing = [w for w in slo.windows_s if w not in counts_by_window]
    if missing:
        raise InvalidInput(f"counts missing for windows {missing} s", field="counts_by_window")
    budget = slo.error_budget
    burn = {w: counts_by_window[w].error_rate / budget for w in slo.windows_s}
    whole = counts_by_window[slo.window_s]
    remaining = 1.0 - whole.error_rate / budget
    alerts = tuple(
        BurnAlert(r.severity, r, burn[r.long_window_s], burn[r.short_window_s])
        for r in slo.burn_rules
        if burn[r.long_window_s] > r.factor and burn[r.short_window_s] > r.factor
    )
    return SloStatus(slo, now_s, whole.error_rate, remaining, burn, alerts)


class RollingCounts:
    """Good/total counts in buckets of ``bucket_s``, kept for ``max_window_s``.

    ``add(t_s, total, good)`` in time order; ``counts(now_s, windows_s)`` sums the buckets in
    ``(now_s - w, now_s]`` at bucket resolution (a bucket counts when its start is inside).
    Memory: at most about ``2 * max_window_s / bucket_s`` buckets. Each bucket stores running
    totals, so a window of any length is two lookups (a difference of cumulative sums).
    """

    def __init__(self, max_window_s: float = 30 * DAY_S, bucket_s: float = 60.0) -> None:
        if bucket_s <= 0 or max_window_s < bucket_s:
            raise ConfigError("need bucket_s > 0 and max_window_s >= bucket_s", field="bucket_s")
        self.bucket_s = bucket_s
        self.max_window_s = max_window_s
        self._keep = math.ceil(max_window_s / bucket_s) + 1
        self._index: list[int] = []
        self._cum_total: list[float] = []
        self._cum_good: list[float] = []
        self._head = 0  # buckets before _head are expired; trimmed in chunks (amortised O(1))

    def add(self, t_s: float, total: float, good: float) -> None:
        if not 0 <= good <= total:
            raise InvalidInput("need 0 <= good <= total", field="counts")
        index = math.floor(t_s / self.bucket_s)
        cum_t = self._cum_total[-1] if self._index else 0.0
        cum_g = self._cum_good[-1] if self._index else 0.0
        if self._index and index < self._index[-1]:
            raise InvalidInput("counts must arrive in time order", field="t_s")
        if self._index and self._index[-1] == index:
            self._cum_total[-1] += total
            self._cum_good[-1] += good
        else:
            self._index.append(index)
            self._cum_total.append(cum_t + total)
            self._cum_good.append(cum_g + good)
        while self._head < len(self._index) and self._index[self._head] <= index - self._keep:
            self._head += 1
        if self._head > self._keep:
            del self._index[: self._head], self._cum_total[: self._head]
            del self._cum_good[: self._head]
            self._head = 0

    def _cumulative_before(self, index: int) -> tuple[float, float]:
        """Running totals of every stored bucket with an index below ``index``."""
        pos = bisect.bisect_left(self._index, index, lo=self._head)
        if pos == 0:
            return 0.0, 0.0
        return self._cum_total[pos - 1], self._cum_good[pos - 1]

    def counts(self, now_s: float, windows_s: Iterable[float]) -> dict[float, WindowCounts]:
        now_index = math.floor(now_s / self.bucket_s)
        end_t, end_g = self._cumulative_before(now_index + 1)
        out: dict[float, WindowCounts] = {}
        for w in windows_s:
            first = now_index - max(1, round(w / self.bucket_s)) + 1
            first = max(first, self._index[self._head] if self._head < len(self._index) else first)
            start_t, start_g = self._cumulative_before(first)
            total = max(0.0, end_t - start_t)
            out[w] = WindowCounts(total, min(max(0.0, end_g - start_g), total))
        return out
