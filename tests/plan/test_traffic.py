"""Trace loading and scaling, and the synthetic user model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiscale.errors import InvalidInput
from aiscale.plan import SyntheticTraffic, load_trace, read_trace_times, scale_times
from aiscale.plan.traffic import RATE_BIN_S, day_counts, poisson_counts, scale_trace
from tests.data_sets import public_file, synthetic_trace_times, write_trace

#: The Azure traces' volumes and spans (the data README); the synthetic ones copy them.
CONV_REQUESTS, CONV_SPAN_S = 19_366, 3505.0
CODE_REQUESTS, CODE_SPAN_S = 8_819, 3438.0


@pytest.fixture
def conv(tmp_path: Path) -> Path:
    """A trace file shaped like the Azure conversation trace, made here."""
    return write_trace(tmp_path / "conv.csv", synthetic_trace_times(CONV_REQUESTS, CONV_SPAN_S))


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A burstier trace file with the Azure code trace's volume and span."""
    times = synthetic_trace_times(CODE_REQUESTS, CODE_SPAN_S, burstiness=0.9, seed=3)
    return write_trace(tmp_path / "code.csv", times)


def test_trace_times_match_the_published_counts() -> None:
    """The Azure traces load with the documented request counts and spans, sorted from 0."""
    conv = read_trace_times(public_file("traces/AzureLLMInferenceTrace_conv.csv"))
    code = read_trace_times(public_file("traces/AzureLLMInferenceTrace_code.csv"))
    assert conv.size == 19_366 and code.size == 8_819
    assert conv[0] == 0.0 and np.all(np.diff(conv) >= 0)
    assert conv[-1] / 60 == pytest.approx(58.4, abs=0.1)
    assert code[-1] / 60 == pytest.approx(57.3, abs=0.1)


@pytest.mark.parametrize("scale_by", ["poisson", "copy"])
def test_rate_scale_thins_and_multiplies(conv: Path, scale_by: str) -> None:
    """rate_scale 0.5 keeps about half, 2.5 gives about 2.5 times, seeded and sorted, drawn
    over the trace's rate (default) or copied; rate_scale 1 keeps the trace's own arrivals."""
    base = read_trace_times(conv)
    assert base.size == CONV_REQUESTS and base[0] == 0.0
    half = load_trace(conv, rate_scale=0.5, seed=1, scale_by=scale_by)
    assert abs(half.num_requests - base.size / 2) < 4 * np.sqrt(base.size)
    more = load_trace(conv, rate_scale=2.5, seed=1, scale_by=scale_by)
    assert abs(more.num_requests - 2.5 * base.size) < 4 * np.sqrt(2.5 * base.size)
    assert np.all(np.diff(more.times_s) >= 0)
    again = load_trace(conv, rate_scale=2.5, seed=1, scale_by=scale_by)
    assert np.array_equal(more.times_s, again.times_s)
    assert np.array_equal(load_trace(conv, scale_by=scale_by).times_s, base)


def test_scaling_up_draws_poisson_traffic_not_copies(conv: Path) -> None:
    """x2,000 by default: the mean rate is 2,000 times the trace's and the busiest second
    stays near what Poisson counts around the per-minute rate give (no burst of 2,000
    requests at each original arrival); copying, the explicit option, makes those bursts."""
    times = read_trace_times(conv)
    scale = 2_000.0
    poisson = poisson_counts(times, rate_scale=scale, seed=3).counts
    mean = scale * times.size / (np.ceil(times[-1] / RATE_BIN_S) * RATE_BIN_S)
    assert poisson.mean() == pytest.approx(mean, rel=0.01)
    # The trace's own per-minute swing (its bursts, at most about 2x here) plus 6 sigma.
    per_minute = np.bincount((times // RATE_BIN_S).astype(np.int64)) / RATE_BIN_S
    highest = scale * per_minute.max()
    assert poisson.max() <= highest + 6 * np.sqrt(highest)
    assert poisson.max() < 2.5 * mean
    # Second to second the counts move by Poisson noise only (the rate moves slowly).
    assert np.std(np.diff(poisson)) / np.sqrt(2) < 1.5 * np.sqrt(mean)
    # Copies (x200 here, to stay quick) move by 200 times the trace's own per-second noise,
    # over ten times Poisson's at their mean: the bursts the default avoids.
    copied = scale_trace(times, rate_scale=200.0, scale_by="copy", duration_s=600.0, seed=3)
    copied_counts = copied.counts(1.0).counts
    assert np.std(np.diff(copied_counts)) / np.sqrt(2) > 10 * np.sqrt(copied_counts.mean())


def test_the_day_model_is_the_benchmarks_and_keeps_its_volume(conv: Path) -> None:
    """day_counts: one day of per-second Poisson counts, the trace stretched by day /
    span (rounded up to whole minutes) and scaled to the requests asked for; seeded."""
    times = read_trace_times(conv)
    counts, time_scale, rate_scale = day_counts(times, 2_000_000.0, seed=4)
    assert counts.step_s == 1.0 and counts.counts.size == 86_400
    assert time_scale == pytest.approx(86_400 / (np.ceil(times[-1] / 60) * 60))
    assert rate_scale == pytest.approx(2_000_000.0 / times.size)
    assert abs(counts.num_requests - 2_000_000) < 6 * np.sqrt(2_000_000)
    assert np.array_equal(day_counts(times, 2_000_000.0, seed=4)[0].counts, counts.counts)
    # The same model as poisson_counts: the day is one pass of the stretched trace.
    same = poisson_counts(times, rate_scale=rate_scale, time_scale=time_scale, seed=4)
    assert same.counts.size == 86_400
    assert same.counts.sum() == pytest.approx(counts.num_requests, rel=0.01)


def test_an_unknown_scaling_is_refused_naming_it(conv: Path) -> None:
    """scale_by other than poisson or copy is InvalidInput naming scale_by."""
    with pytest.raises(InvalidInput) as error:
        load_trace(conv, rate_scale=2.0, scale_by="smear")
    assert error.value.field == "scale_by"


def test_time_scale_stretches_and_duration_tiles(conv: Path, code: Path) -> None:
    """time_scale stretches the span; duration_s cuts or repeats the pattern."""
    stretched = load_trace(code, time_scale=24.0)
    assert stretched.num_requests == CODE_REQUESTS
    assert stretched.duration_s / 3600 == pytest.approx(CODE_SPAN_S * 24 / 3600, rel=0.01)
    day = load_trace(conv, duration_s=86_400.0)
    assert day.duration_s == 86_400.0
    assert day.num_requests == pytest.approx(CONV_REQUESTS * 86_400 / CONV_SPAN_S, rel=0.02)
    cut = load_trace(conv, duration_s=600.0)
    assert cut.times_s.max() < 600.0
    counts = cut.counts(60.0)
    assert counts.counts.size == 10 and counts.num_requests == cut.num_requests


def test_a_trace_without_timestamps_is_refused(tmp_path: Path) -> None:
    """A CSV without a TIMESTAMP column raises InvalidInput naming the column."""
    bad = tmp_path / "bad.csv"
    bad.write_text("time,x\n1,2\n")
    with pytest.raises(InvalidInput) as error:
        read_trace_times(bad)
    assert error.value.field == "TIMESTAMP"


def test_scale_times_handles_empty_input() -> None:
    """An empty trace scales to an empty one."""
    assert scale_times(np.empty(0), rate_scale=2.0).num_requests == 0


def test_synthetic_users_give_the_expected_volume_and_shape() -> None:
    """N users x R a day: a week holds 7*N*R requests on average; the daily peak is at
    peak_hour, weekends are lighter, and the same seed gives the same counts."""
    traffic = SyntheticTraffic(num_users=100_000, requests_per_user_per_day=10, bursts_per_day=0.0)
    week = traffic.counts(7 * 86_400, step_s=60.0)
    assert week.num_requests == pytest.approx(7 * 1_000_000, rel=0.01)
    per_hour = week.counts.reshape(7, 24, 60).sum(axis=2)
    assert int(np.argmax(per_hour[0])) == 14 - 1 or int(np.argmax(per_hour[0])) == 14
    assert per_hour[5].sum() < 0.8 * per_hour[0].sum()
    assert per_hour[0].max() / per_hour[0].min() == pytest.approx(4.0, rel=0.15)
    assert np.array_equal(week.counts, traffic.counts(7 * 86_400, step_s=60.0).counts)


def test_bursts_raise_the_rate_for_their_duration() -> None:
    """Inside a burst the rate is burst_multiplier times the base rate."""
    traffic = SyntheticTraffic(
        num_users=1000,
        requests_per_user_per_day=86.4,
        peak_to_trough=1.0,
        weekend_factor=1.0,
        bursts_per_day=20.0,
        burst_multiplier=5.0,
        burst_duration_s=100.0,
        seed=3,
    )
    bursts = traffic.bursts(86_400.0)
    assert bursts.size > 0
    inside = traffic.rate_per_s(bursts + 50.0, bursts)
    base = traffic.rate_per_s(bursts + 50.0, None)
    assert np.allclose(inside, 5.0 * base)


def test_arrival_times_spread_inside_steps() -> None:
    """Times drawn from counts are sorted, inside the duration, and keep the counts."""
    traffic = SyntheticTraffic(num_users=10_000, requests_per_user_per_day=20, seed=5)
    counts = traffic.counts(3600.0, step_s=1.0)
    arrivals = counts.to_arrivals(seed=5)
    assert arrivals.num_requests == counts.num_requests
    assert np.all(np.diff(arrivals.times_s) >= 0) and arrivals.times_s.max() < 3600.0
    assert np.array_equal(arrivals.counts(1.0).counts, counts.counts)
