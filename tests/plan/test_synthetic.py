"""Synthetic bursty days: bursts where and as large as stated, the day's volume, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from aiscale.errors import ConfigError
from aiscale.plan.synthetic import BurstyDay

DAY = BurstyDay(requests_per_day=20_000_000, seed=4)


def test_bursts_are_as_stated_and_do_not_overlap() -> None:
    """One burst per multiplier, each 60-300 whole seconds long and inside the day,
    none overlapping another."""
    bursts = DAY.bursts()
    assert sorted(b.multiplier for b in bursts) == sorted(DAY.multipliers)
    for burst in bursts:
        assert 60.0 <= burst.duration_s <= 300.0
        assert burst.duration_s == int(burst.duration_s)
        assert burst.start_s == int(burst.start_s)
        assert burst.start_s >= 0.0 and burst.end_s <= DAY.day_s
    for earlier, later in zip(bursts, bursts[1:], strict=False):
        assert earlier.end_s <= later.start_s


def test_the_seed_fixes_the_bursts_and_the_draws() -> None:
    """The same seed gives the same bursts and counts; another seed other bursts."""
    again = BurstyDay(requests_per_day=20_000_000, seed=4)
    assert again.bursts() == DAY.bursts()
    assert np.array_equal(again.counts().counts, DAY.counts().counts)
    assert BurstyDay(requests_per_day=20_000_000, seed=5).bursts() != DAY.bursts()


def test_the_rate_is_multiplied_inside_each_burst_and_only_there() -> None:
    """rate(bursty) / rate(no bursts) is one constant outside the bursts and that constant
    times the burst's multiplier inside it."""
    plain = BurstyDay(requests_per_day=20_000_000, multipliers=(), seed=4).rate_per_s()
    ratio = DAY.rate_per_s() / plain
    inside = np.zeros(ratio.size, dtype=bool)
    base = float(np.median(ratio))
    for burst in DAY.bursts():
        span = slice(int(burst.start_s), int(burst.end_s))
        inside[span] = True
        assert ratio[span] == pytest.approx(burst.multiplier * base)
    assert ratio[~inside] == pytest.approx(base)
    assert base < 1.0  # the bursts take their share of the day's volume


def test_the_day_holds_its_requests() -> None:
    """Expected arrivals sum to requests_per_day at any step; the Poisson draw is within
    five standard deviations of it."""
    for step_s in (1.0, 7.0, 60.0):
        assert DAY.rate_per_s(step_s).sum() * step_s == pytest.approx(20_000_000)
    drawn = DAY.counts().num_requests
    assert abs(drawn - 20_000_000) < 5 * np.sqrt(20_000_000)


def test_the_drawn_counts_show_each_burst() -> None:
    """The counts inside a burst average its multiplier times the ten minutes before it
    (within the daily cycle's drift and Poisson noise)."""
    counts = DAY.counts().counts
    checked = 0
    for burst in DAY.bursts():
        start, end = int(burst.start_s), int(burst.end_s)
        before = counts[max(0, start - 600) : start]
        if before.size < 300:
            continue
        checked += 1
        assert counts[start:end].mean() / before.mean() == pytest.approx(burst.multiplier, rel=0.15)
    assert checked >= 4


def test_partial_steps_get_the_burst_share_they_cover() -> None:
    """With steps longer than a second, a step a burst covers in part is raised by that
    share: the per-second expected arrivals, summed per step, are the step's."""
    per_second = DAY.rate_per_s(1.0)
    per_step = DAY.rate_per_s(7.0) * 7.0
    whole = per_second[: (per_second.size // 7) * 7].reshape(-1, 7).sum(axis=1)
    # The daily cycle is sampled at step midpoints, so allow its curvature, not the bursts'.
    assert per_step[: whole.size] == pytest.approx(whole, rel=2e-3)


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"multipliers": (0.5,)}, "multipliers"),
        ({"min_burst_s": 400.0, "max_burst_s": 300.0}, "min_burst_s"),
        ({"multipliers": (5.0,) * 200}, "day_s"),
        ({"requests_per_day": -1.0}, "requests_per_day"),
        ({"peak_to_trough": 0.5}, "peak_to_trough"),
    ],
)
def test_bad_settings_are_refused_with_their_field(knobs: dict[str, object], field: str) -> None:
    """Impossible settings raise ConfigError naming the field."""
    settings: dict[str, object] = {"requests_per_day": 1000.0, **knobs}
    with pytest.raises(ConfigError) as error:
        BurstyDay(**settings)  # type: ignore[arg-type]
    assert error.value.field == field
