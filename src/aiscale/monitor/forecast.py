"""Arrival forecasts with prediction intervals.

What it does: ``SeasonalForecaster`` forecasts one series of per-bin counts (arrivals per
``step_s``) over the next hours as *level x seasonal index*, updated causally with each bin:

- seasonal indices change only when a day is finished (so the level and the profile never
  chase each other within a day): the daily profile ``D[slot]`` (mean 1) moves toward each bin's
  share of that day's mean, with weight ``max(season_rate, 1 / days_seen)`` (the first days
  average, later days track); the day-of-week factor ``W[dow]`` (mean 1) compares the day's
  total with the mean of the last seven (once seven days are seen);
- the index is ``D[slot] * W[dow]``, or, once a week is seen and only while it has been the
  better one-bin-ahead forecaster over about the last day, a weekly profile (each bin of the
  week's share of its day's mean, learnt the same way) times ``W[dow]``: traffic whose
  Monday morning differs from its Sunday morning;
- the level is the seasonally adjusted mean of the last ``level_window_s``,
  ``(sum(x) + p * L_day) / (sum(index) + p)``, shrunk toward the last day's adjusted mean
  ``L_day`` by ``p = level_prior_bins`` average bins, so a burst in a normally empty hour is not
  divided by almost nothing; an optional damped trend (``trend_rate``, off by default: it
  raised the error on every benchmark series) follows the level's change per bin;
- intervals are empirical: every forecast path made is scored when its bins arrive, the
  errors ``log1p(actual) - log1p(forecast)`` are kept per horizon group (1, 2, 3-4, 5-8 bins...,
  one error per group and bin, of the group's longest horizon) over the last
  ``residual_window`` bins, and an interval of coverage ``c`` moves the forecast by those
  errors' ``(1-c)/2`` and ``(1+c)/2`` quantiles (split-conformal on the log scale: relative at
  high counts, absolute near zero). Until a group has ``min_residuals`` errors a wide fallback
  is used, and the point says so (``is_calibrated``).

The capacity warnings that read these forecasts live in ``capacity.py``.

What it must never do: read a clock, do I/O, use randomness, look at a bin before it is given,
or keep memory that grows with the length of the stream.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiscale.errors import ConfigError, InvalidInput

__all__ = [
    "Forecast",
    "ForecastConfig",
    "ForecastPoint",
    "SeasonalForecaster",
]

DAY_S = 86_400.0
_FALLBACK_LOG_SPREAD = 0.5  # +-0.5 in log1p space (about x0.6 to x1.65) before calibration


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """Knobs of ``SeasonalForecaster``. Times in seconds; ``step_s`` must divide a day."""

    step_s: float = 300.0
    level_window_s: float = 3600.0
    level_prior_bins: float = 1.0
    season_rate: float = 0.2
    week_rate: float = 0.3
    is_weekly: bool = True
    trend_rate: float = 0.0
    trend_damping: float = 0.97
    max_horizon_s: float = 6 * 3600.0
    residual_window: int = 2016
    min_residuals: int = 30

    def __post_init__(self) -> None:
        bins_per_day = DAY_S / self.step_s if self.step_s > 0 else 0.0
        if self.step_s <= 0 or abs(bins_per_day - round(bins_per_day)) > 1e-9:
            raise ConfigError("step_s must be > 0 and divide a day", field="step_s")
        if self.level_window_s < self.step_s:
            raise ConfigError("must be >= step_s", field="level_window_s")
        if self.level_prior_bins < 0:
            raise ConfigError("must be >= 0", field="level_prior_bins")
        for name in ("season_rate", "week_rate", "trend_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError("must be in [0, 1]", field=name)
        if not 0.0 <= self.trend_damping <= 1.0:
            raise ConfigError("must be in [0, 1]", field="trend_damping")
        if self.max_horizon_s < self.step_s:
            raise ConfigError("must be >= step_s", field="max_horizon_s")
        if self.residual_window < 1 or self.min_residuals < 1:
            raise ConfigError("must be >= 1", field="residual_window")


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    """Forecast arrivals in the bin ``[t_s, t_s + step_s)`` with a prediction interval."""

    t_s: float
    step_s: float
    count: float
    lower: float
    upper: float
    is_calibrated: bool

    @property
    def rate_per_s(self) -> float:
        return self.count / self.step_s

    @property
    def lower_per_s(self) -> float:
        return self.lower / self.step_s

    @property
    def upper_per_s(self) -> float:
        return self.upper / self.step_s


@dataclass(frozen=True, slots=True)
class Forecast:
    """Points for the bins after the last one observed (``made_at_s``: that bin's end)."""

    made_at_s: float
    step_s: float
    coverage: float
    points: tuple[ForecastPoint, ...]


def _horizon_group(h: int) -> int:
    """1 -> 0, 2 -> 1, 3-4 -> 2, 5-8 -> 3, ...: errors grow with the horizon, slowly."""
    return (h - 1).bit_length()


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted, non-empty sequence."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class SeasonalForecaster:
    """One series' forecaster. Feed bins in time order with ``update``; ask ``forecast``."""

    def __init__(self, config: ForecastConfig | None = None) -> None:
        self.config = cfg = config if config is not None else ForecastConfig()
        self._bins_per_day = round(DAY_S / cfg.step_s)
        self._window_bins = max(1, round(cfg.level_window_s / cfg.step_s))
        self._max_h = max(1, math.floor(cfg.max_horizon_s / cfg.step_s + 1e-9))
        self._daily = [1.0] * self._bins_per_day
        self._daily_seen = [0] * self._bins_per_day
        self._weekly = [1.0] * 7
        self._weekly_seen = [0] * 7
        self._recent: deque[tuple[int, float]] = deque(maxlen=self._window_bins)  # (bin, x)
        self._last_day: deque[tuple[int, float]] = deque(maxlen=self._bins_per_day)
        self._last_day_x = 0.0  # running sums over _last_day
        self._last_day_s = 0.0
        self._level: float | None = None
        self._trend = 0.0
        self._last_bin: int | None = None
        self._today: list[tuple[int, float]] = []  # (slot, x) of the current day
        self._day_totals: deque[tuple[int, float]] = deque(maxlen=7)  # (dow, full-day total)
        # Weekly profile: per bin of the week, its share of that day's mean (Monday mornings
        # that differ from Sunday mornings); an alternative to the daily profile.
        self._week_shape = [1.0] * (7 * self._bins_per_day)
        self._week_shape_seen = [0] * (7 * self._bins_per_day)
        self._num_days_closed = 0
        # Mean |log1p error| one bin ahead without / with the weekly shape (EWMA over a day),
        # and the pending one-bin-ahead forecasts of both: (bin, without, with).
        self._shape_error = [0.0, 0.0]
        self._next_bin: tuple[int, float, float] | None = None
        self._paths: deque[tuple[int, list[float]]] = deque(maxlen=self._max_h)
        groups = _horizon_group(self._max_h) + 1
        # Per horizon group: errors in arrival order (to expire the oldest) and sorted (for
        # quantiles without sorting at every forecast).
        self._errors: list[deque[float]] = [deque() for _ in range(groups)]
        self._sorted_errors: list[list[float]] = [[] for _ in range(groups)]
        self.num_bins_seen = 0

    def _add_error(self, group: int, error: float) -> None:
        fifo, ordered = self._errors[group], self._sorted_errors[group]
        fifo.append(error)
        bisect.insort(ordered, error)
        if len(fifo) > self.config.residual_window:
            del ordered[bisect.bisect_left(ordered, fifo.popleft())]

    # -- seasonal indices ---------------------------------------------------------------
    def _season(self, k: int) -> float:
        day = k // self._bins_per_day
        w = self._weekly[day % 7] if self.config.is_weekly else 1.0
        return self._daily[k % self._bins_per_day] * w

    def _day_level(self) -> float | None:
        """Seasonally adjusted mean over the last day: the slow, stable level."""
        return self._last_day_x / self._last_day_s if self._last_day_s > 1e-9 else None

    def _short_level(self, day_level: float | None,
                     index: Callable[[int], float] | None = None) -> float | None:
        """Seasonally adjusted mean of the last ``level_window_s``, shrunk toward the day's
        level by ``level_prior_bins`` average bins, so that a window whose profile is near
        zero (quiet hours) does not divide a burst by almost nothing."""
        season = index if index is not None else self._season
        num = sum(x for _, x in self._recent)
        den = sum(season(k) for k, _ in self._recent)
        if day_level is None:
            return num / den if den > 1e-9 else None
        prior = self.config.level_prior_bins
        return (num + prior * day_level) / (den + prior)

    def _close_day(self, day: int) -> None:
        """Fold a finished day into the profile (each bin's share of the day's mean) and the
        day-of-week factors. Only whole days change the seasonal indices, so the level and
        the profile never chase each other within a day."""
        today, self._today = self._today, []
        if today:
            mean_x = sum(x for _, x in today) / len(today)
            self._day_totals.append((day % 7, mean_x * self._bins_per_day))
            self._num_days_closed += 1
            if self.config.is_weekly and mean_x > 0:
                first = (day % 7) * self._bins_per_day
                for slot, x in today:
                    ws = first + slot
                    self._week_shape_seen[ws] += 1
                    g = max(self.config.week_rate, 1.0 / self._week_shape_seen[ws])
                    self._week_shape[ws] += g * (x / mean_x - self._week_shape[ws])
            if mean_x > 0:
                for slot, x in today:
                    self._daily_seen[slot] += 1
                    g = max(self.config.season_rate, 1.0 / self._daily_seen[slot])
                    self._daily[slot] += g * (x / mean_x - self._daily[slot])
                mean_d = sum(self._daily) / self._bins_per_day
                self._daily = [d / mean_d for d in self._daily]
        if self.config.is_weekly and len(self._day_totals) == 7:
            mean_total = sum(t for _, t in self._day_totals) / 7
            if mean_total > 0:
                dow, total = self._day_totals[-1]
                self._weekly_seen[dow] += 1
                g = max(self.config.week_rate, 1.0 / self._weekly_seen[dow])
                self._weekly[dow] += g * (total / mean_total - self._weekly[dow])
                mean_w = sum(self._weekly) / 7
                self._weekly = [w / mean_w for w in self._weekly]
        # The indices changed: recompute the day window's seasonal sum.
        self._last_day_s = sum(self._season(k) for k, _ in self._last_day)

    # -- the stream ---------------------------------------------------------------------
    def update(self, t_s: float, count: float) -> None:
        """Arrivals ``count`` in the bin holding ``t_s`` (``floor(t_s / step_s)``).

        Bins must arrive in order; a skipped bin is treated as not observed (a scrape gap),
        not as zero. Raises ``InvalidInput`` for a negative or non-finite count, or a bin
        that is not after the last one.
        """
        if not (math.isfinite(count) and count >= 0 and math.isfinite(t_s)):
            raise InvalidInput("count must be finite and >= 0", field="count")
        k = math.floor(t_s / self.config.step_s)
        if self._last_bin is not None and k <= self._last_bin:
            raise InvalidInput(f"bin at {t_s} s is not after the last one", field="t_s")
        cfg = self.config
        log_x = math.log1p(count)
        if self._next_bin is not None and self._next_bin[0] == k:
            rate = 1.0 / self._bins_per_day
            for i, f in enumerate(self._next_bin[1:]):
                err = abs(log_x - math.log1p(f))
                self._shape_error[i] += rate * (err - self._shape_error[i])
        # One error per horizon group and bin: that of the group's longest horizon (the
        # cautious one), so a window of N errors spans N bins whatever the group's width.
        for k0, path in self._paths:
            h = k - k0
            if 1 <= h <= len(path) and (h == self._max_h or h & (h - 1) == 0):
                self._add_error(_horizon_group(h), log_x - math.log1p(path[h - 1]))
        if self._last_bin is not None:
            last_day = self._last_bin // self._bins_per_day
            for day in range(last_day, k // self._bins_per_day):
                self._close_day(day)
        self._today.append((k % self._bins_per_day, count))
        self._recent.append((k, count))
        if len(self._last_day) == self._last_day.maxlen:
            k_old, x_old = self._last_day[0]
            self._last_day_x -= x_old
            self._last_day_s -= self._season(k_old)
        self._last_day.append((k, count))
        self._last_day_x += count
        self._last_day_s += self._season(k)
        level = self._short_level(self._day_level())
        if level is not None:
            if self._level is not None and self._last_bin is not None:
                step = (level - self._level) / (k - self._last_bin)
                self._trend += cfg.trend_rate * (step - self._trend)
            self._level = level
        self._last_bin = k
        self.num_bins_seen += 1
        self._next_bin = (k + 1, self._point_path(1, False)[0], self._point_path(1, True)[0])
        self._paths.append((k, self._point_path(self._max_h, self.is_using_week_shape)))

    @property
    def is_using_week_shape(self) -> bool:
        """Whether forecasts apply the weekly shape: once a week is seen and only while it
        has been the better forecaster one bin ahead (mean error over about a day)."""
        return (self.config.is_weekly and self._num_days_closed >= 7
                and self._shape_error[1] < self._shape_error[0])

    def _week_index(self, k: int) -> float:
        """The seasonal index of the weekly-profile alternative."""
        return (self._weekly[(k // self._bins_per_day) % 7]
                * self._week_shape[k % (7 * self._bins_per_day)])

    def _point_path(self, num_bins: int, with_week_shape: bool) -> list[float]:
        if self._level is None or self._last_bin is None:
            return [0.0] * num_bins
        index: Callable[[int], float] = self._season
        level = self._level
        if with_week_shape:
            # The same level estimate, with the weekly profile as the seasonal index.
            index = self._week_index
            day_s = sum(index(k) for k, _ in self._last_day)
            week_level = self._short_level(self._last_day_x / day_s if day_s > 1e-9 else None,
                                           index)
            if week_level is None:
                return [0.0] * num_bins
            level = week_level
        out = []
        damp, trend_sum = self.config.trend_damping, 0.0
        factor = 1.0
        for h in range(1, num_bins + 1):
            factor *= damp
            trend_sum += factor
            base = max(0.0, level + self._trend * trend_sum)
            out.append(base * index(self._last_bin + h))
        return out

    def forecast(self, horizon_s: float | None = None, coverage: float = 0.9) -> Forecast:
        """Points for each bin of the next ``horizon_s`` (default ``max_horizon_s``; capped at
        it) with intervals of the given coverage. Raises ``InvalidInput`` for a coverage outside
        (0, 1) or when no bin has been seen."""
        if not 0.0 < coverage < 1.0:
            raise InvalidInput("coverage must be in (0, 1)", field="coverage")
        if self._last_bin is None:
            raise InvalidInput("no bin seen yet", field="series")
        step = self.config.step_s
        horizon = self.config.max_horizon_s if horizon_s is None else horizon_s
        num_bins = max(1, min(self._max_h, math.ceil(horizon / step - 1e-9)))
        path = self._point_path(num_bins, self.is_using_week_shape)
        bounds: dict[int, tuple[float, float, bool]] = {}
        points = []
        for h, f in enumerate(path, start=1):
            group = _horizon_group(h)
            if group not in bounds:
                ordered = self._sorted_errors[group]
                if len(ordered) >= self.config.min_residuals:
                    bounds[group] = (_quantile(ordered, (1 - coverage) / 2),
                                     _quantile(ordered, (1 + coverage) / 2), True)
                else:
                    bounds[group] = (-_FALLBACK_LOG_SPREAD, _FALLBACK_LOG_SPREAD, False)
            lo, hi, calibrated = bounds[group]
            log_f = math.log1p(f)
            points.append(ForecastPoint(
                t_s=(self._last_bin + h) * step, step_s=step, count=f,
                lower=max(0.0, math.expm1(log_f + lo)), upper=max(0.0, math.expm1(log_f + hi)),
                is_calibrated=calibrated))
        return Forecast((self._last_bin + 1) * step, step, coverage, tuple(points))
