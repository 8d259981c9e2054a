"""Seasonal arrival forecasts, their intervals, and capacity-exhaustion warnings."""

from __future__ import annotations

import math
import random

import pytest

from aiscale.errors import ConfigError, InvalidInput
from aiscale.monitor.capacity import capacity_warning, is_arrival_rate_settling, trend_warning
from aiscale.monitor.forecast import Forecast, ForecastConfig, ForecastPoint, SeasonalForecaster

STEP_S = 300.0
BINS_PER_DAY = 288


def _daily(slot: int) -> float:
    """A daily shape: trough at night, peak in the afternoon (peak/trough 5)."""
    return 1.0 + 0.667 * math.cos(2 * math.pi * (slot / BINS_PER_DAY - 0.6))


def _rate(k: int, weekend_factor: float = 0.6) -> float:
    day = k // BINS_PER_DAY
    return 400.0 * _daily(k % BINS_PER_DAY) * (weekend_factor if day % 7 in (5, 6) else 1.0)


def _config(**kw: float) -> ForecastConfig:
    return ForecastConfig(step_s=STEP_S, max_horizon_s=3600.0, **kw)  # type: ignore[arg-type]


def test_learns_a_daily_shape_without_noise() -> None:
    """With an exact daily pattern, forecasts one bin and one hour ahead are within 3 %
    after three days."""
    f = SeasonalForecaster(_config(is_weekly=False))
    for k in range(3 * BINS_PER_DAY + 100):
        f.update(k * STEP_S, 400.0 * _daily(k % BINS_PER_DAY))
    fc = f.forecast(3600.0)
    assert len(fc.points) == 12
    for h, p in enumerate(fc.points, start=1):
        k = 3 * BINS_PER_DAY + 99 + h
        assert p.t_s == k * STEP_S
        assert p.count == pytest.approx(400.0 * _daily(k % BINS_PER_DAY), rel=0.03)


def test_learns_the_weekend_from_day_totals() -> None:
    """After two weeks at 0.6x on weekends, Saturday's forecast is about 0.6 of Friday's
    same hour."""
    f = SeasonalForecaster(_config())
    friday_end = (14 + 4) * BINS_PER_DAY + BINS_PER_DAY - 1  # day 18: day % 7 == 4
    for k in range(friday_end + 1):
        f.update(k * STEP_S, _rate(k))
    first_saturday = f.forecast(STEP_S).points[0]
    assert first_saturday.count == pytest.approx(_rate(friday_end + 1), rel=0.1)


def test_intervals_cover_their_nominal_share() -> None:
    """On noisy seasonal data (Poisson plus 10 % lognormal noise per bin), 80 % and 95 %
    intervals one bin and one hour ahead cover within 5 points of nominal over a week."""
    rng = random.Random(7)
    f = SeasonalForecaster(_config())
    num_days, scored_from = 15, 8 * BINS_PER_DAY
    series = []
    for k in range(num_days * BINS_PER_DAY):
        mean = _rate(k) * math.exp(rng.gauss(0.0, 0.1))
        # Poisson by normal approximation (mean >= 100 here)
        series.append(max(0.0, round(rng.gauss(mean, math.sqrt(mean)))))
    hits: dict[tuple[float, int], list[bool]] = {(c, h): [] for c in (0.8, 0.95) for h in (1, 12)}
    pending: list[tuple[int, float, int, float, float]] = []
    for k, x in enumerate(series):
        for item in [p for p in pending if p[0] == k]:
            pending.remove(item)
            _, c, h, lo, hi = item
            hits[(c, h)].append(lo <= x <= hi)
        f.update(k * STEP_S, x)
        if k + 1 >= scored_from and k + 12 < len(series):
            for c in (0.8, 0.95):
                points = f.forecast(3600.0, coverage=c).points
                for h in (1, 12):
                    assert points[h - 1].is_calibrated
                    pending.append((k + h, c, h, points[h - 1].lower, points[h - 1].upper))
    for (c, h), got in hits.items():
        share = sum(got) / len(got)
        assert abs(share - c) <= 0.05, (c, h, share)


def test_forecasts_are_causal() -> None:
    """A forecast depends only on the bins given so far: two series equal up to bin k give
    the same forecast at k whatever comes after."""
    a, b = SeasonalForecaster(_config()), SeasonalForecaster(_config())
    for k in range(2 * BINS_PER_DAY):
        a.update(k * STEP_S, _rate(k))
        b.update(k * STEP_S, _rate(k))
    before = a.forecast(3600.0)
    assert before == b.forecast(3600.0)
    a.update(2 * BINS_PER_DAY * STEP_S, 1e6)
    assert b.forecast(3600.0) == before


def test_uses_a_weekly_profile_when_days_differ_in_shape() -> None:
    """Traffic whose Monday peaks in the morning and other days in the evening is forecast
    with the weekly profile, and better than by the daily profile alone."""
    def rate(k: int) -> float:
        slot, day = k % BINS_PER_DAY, k // BINS_PER_DAY
        peak = 0.3 if day % 7 == 0 else 0.8
        return 100.0 + 900.0 * math.exp(-((slot / BINS_PER_DAY - peak) ** 2) / 0.005)

    weekly, daily = SeasonalForecaster(_config()), SeasonalForecaster(_config(is_weekly=False))
    errors = {"weekly": 0.0, "daily": 0.0}
    end = 3 * 7 * BINS_PER_DAY
    for k in range(end):
        for name, f in (("weekly", weekly), ("daily", daily)):
            if k >= 2 * 7 * BINS_PER_DAY:
                errors[name] += abs(f.forecast(STEP_S).points[0].count - rate(k))
            f.update(k * STEP_S, rate(k))
    assert weekly.is_using_week_shape
    assert errors["weekly"] < 0.5 * errors["daily"]


def test_bad_inputs_are_refused() -> None:
    """Negative counts, bins out of order, coverage outside (0, 1), a step that does not
    divide a day, and a forecast before any bin raise domain errors."""
    f = SeasonalForecaster(_config())
    with pytest.raises(InvalidInput):
        f.forecast(600.0)
    f.update(600.0, 1.0)
    with pytest.raises(InvalidInput) as exc:
        f.update(600.0, 1.0)
    assert exc.value.field == "t_s"
    with pytest.raises(InvalidInput):
        f.update(900.0, -1.0)
    with pytest.raises(InvalidInput):
        f.forecast(600.0, coverage=1.0)
    with pytest.raises(ConfigError):
        ForecastConfig(step_s=7.0)


def _flat(rate_per_s: float, num_bins: int = 12, step_s: float = 60.0) -> Forecast:
    points = tuple(ForecastPoint(i * step_s, step_s, rate_per_s * step_s, 0.0,
                                 2 * rate_per_s * step_s, True) for i in range(1, num_bins + 1))
    return Forecast(step_s, step_s, 0.9, points)


@pytest.mark.parametrize(
    ("rate", "capacity", "queue_free", "use_upper", "expected_in_s"),
    [
        (10.0, 20.0, 0.0, False, None),  # below capacity: never
        (30.0, 20.0, 0.0, False, 0.0),  # above capacity from the first bin
        (30.0, 20.0, 500.0, False, 50.0),  # 10 req/s excess fills 500 free slots in 50 s
        (30.0, 20.0, 10_000.0, False, None),  # not within the 12-minute forecast
        (15.0, 20.0, 0.0, True, 0.0),  # the upper bound (30/s) exceeds capacity
    ],
)
def test_capacity_warning_table(rate: float, capacity: float, queue_free: float,
                                use_upper: bool, expected_in_s: float | None) -> None:
    """The queue saturates when the forecast backlog above capacity exceeds its free room."""
    w = capacity_warning(_flat(rate), capacity, now_s=60.0, queue_free=queue_free,
                         use_upper=use_upper)
    if expected_in_s is None:
        assert w is None
    else:
        assert w is not None
        assert w.saturates_in_s == pytest.approx(expected_in_s)
        assert w.saturates_at_s == pytest.approx(60.0 + expected_in_s)
        assert w.basis == ("forecast_upper" if use_upper else "forecast")


def test_trend_warning_extrapolates_a_ramp() -> None:
    """Rates rising 0.1/s per second from 10/s cross 40/s in 300 s; 45 free queue slots
    take 30 s more (0.1 / 2 * 30^2 = 45). A flat or falling trend gives None."""
    times = [float(t) for t in range(-60, 1, 10)]
    rates = [10.0 + 0.1 * t for t in times]
    w = trend_warning(times, rates, 40.0, now_s=0.0, horizon_s=3600.0)
    assert w is not None and w.saturates_in_s == pytest.approx(300.0)
    w = trend_warning(times, rates, 40.0, now_s=0.0, horizon_s=3600.0, queue_free=45.0)
    assert w is not None and w.saturates_in_s == pytest.approx(330.0)
    assert trend_warning(times, rates, 40.0, now_s=0.0, horizon_s=200.0) is None
    assert trend_warning(times, [20.0 - 0.01 * t for t in times], 40.0, 0.0, 3600.0) is None


def test_warnings_refuse_bad_inputs() -> None:
    """Capacity must be positive and a trend needs two points."""
    with pytest.raises(InvalidInput):
        capacity_warning(_flat(1.0), 0.0, 0.0)
    with pytest.raises(InvalidInput):
        trend_warning([0.0], [1.0], 1.0, 0.0, 10.0)


def test_no_saturation_warning_at_zero_or_falling_rate() -> None:
    """After a load ends (a steep ramp, then 0 req/s) the line through the window still
    rises, but no warning is given; nor while the rate falls at each of the last points.
    The same ramp still warns while it is on."""
    times = [float(t) for t in range(-60, 1, 10)]
    ramp = [10.0 + 2.0 * (t + 60) for t in times]  # 10 .. 130 req/s
    assert trend_warning(times, ramp, 140.0, now_s=0.0, horizon_s=3600.0) is not None
    ended = [*ramp[:-1], 0.0]
    assert trend_warning(times, ended, 140.0, now_s=0.0, horizon_s=3600.0) is None
    easing = [*ramp[:-2], ramp[-3] - 5.0, ramp[-3] - 10.0]  # ..., 90, 85, 80 req/s
    assert trend_warning(times, easing, 140.0, now_s=0.0, horizon_s=3600.0) is None
    assert is_arrival_rate_settling([5.0, 0.0]) and not is_arrival_rate_settling([1.0, 2.0])
