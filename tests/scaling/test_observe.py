"""``observe`` and the live arrival history: one observation rule for production and the
simulator, a bounded history of complete bins, and no I/O library behind either."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiscale.scaling.history import ArrivalHistory
from aiscale.scaling.observe import LoadSample, observe
from aiscale.scaling.policies import PredictiveConfig, forecast_peak_rate


def sample(
    at_s: float, arrived: float, completed: float, busy_s: float, lane_id: int = 1
) -> LoadSample:
    return LoadSample(
        at_s=at_s,
        num_ready=2,
        num_starting=1,
        num_in_flight=3,
        num_queued=4,
        num_arrived=arrived,
        num_completed=completed,
        busy_s=busy_s,
        lane_id=lane_id,
    )


def test_rates_and_mean_service_time_come_from_the_interval_between_two_samples() -> None:
    """Rates are the cumulative counts' differences over the time between the samples; the
    mean service time is replica-busy seconds per completed item in that interval."""
    seen = observe(sample(20.0, 150, 120, 9.0), sample(10.0, 50, 40, 1.0), [(0.0, 5.0)])
    assert seen.now_s == 20.0
    assert (seen.num_replicas, seen.num_ready, seen.num_starting) == (3, 2, 1)
    assert (seen.num_in_flight, seen.num_queued) == (3, 4)
    assert seen.arrival_rate_per_s == pytest.approx(10.0)
    assert seen.completed_rate_per_s == pytest.approx(8.0)
    assert seen.mean_service_time_s == pytest.approx(0.1)
    assert list(seen.arrival_history) == [(0.0, 5.0)]


@pytest.mark.parametrize(
    "previous",
    [None, sample(10.0, 50, 40, 1.0, lane_id=2), sample(20.0, 150, 120, 9.0)],
    ids=["first look", "another lane", "no time passed"],
)
def test_no_interval_means_no_rates(previous: LoadSample | None) -> None:
    """Without a previous sample of the same lane (or with no time between) nothing is
    diffed: rates are zero and the service time unknown, never negative or infinite."""
    seen = observe(sample(20.0, 150, 120, 9.0), previous)
    assert seen.arrival_rate_per_s == 0.0 and seen.completed_rate_per_s == 0.0
    assert seen.mean_service_time_s is None or previous is not None


def test_history_shows_complete_bins_only_and_spreads_arrivals_by_overlap() -> None:
    """Arrivals over a span are split over the bins it covers; the open bin is hidden until
    time reaches its end; a gap between spans is recorded as idle (zero) bins."""
    history = ArrivalHistory(10.0)
    history.add(0.0, 15.0, 30)  # 20 in [0, 10), 10 in [10, 20)
    assert list(history) == [(0.0, 20.0)]
    history.add(15.0, 20.0, 5)
    assert list(history) == [(0.0, 20.0), (10.0, 15.0)]
    history.add(40.0, 50.0, 7)  # nothing recorded for [20, 40): idle
    assert list(history) == [(0.0, 20.0), (10.0, 15.0), (20.0, 0.0), (30.0, 0.0), (40.0, 7.0)]
    assert history[-1] == (40.0, 7.0) and history[1:3] == [(10.0, 15.0), (20.0, 0.0)]


def test_history_is_bounded_to_a_week_or_its_bin_budget() -> None:
    """However long it runs, the history keeps at most a week, and at most ``max_bins``."""
    week = ArrivalHistory(3600.0)
    for hour in range(24 * 10):
        week.add(hour * 3600.0, (hour + 1) * 3600.0, 1)
    assert len(week) == 7 * 24
    assert week[0][0] == (24 * 10 - 7 * 24) * 3600.0
    small = ArrivalHistory(1.0, max_bins=100)
    small.add(0.0, 1000.0, 1000)
    assert len(small) == 100 and small[0] == (900.0, 1.0) and small[-1] == (999.0, 1.0)


def test_a_live_history_feeds_the_seasonal_forecast() -> None:
    """The predictive policy's forecast reads the live history as it reads the simulator's:
    with one season recorded, the step seen a season ago is forecast ahead of time."""
    config = PredictiveConfig(season_s=100.0, startup_s=10.0, lookahead_s=5.0, level_window_s=10.0)
    history = ArrivalHistory(5.0)
    for t in range(0, 180, 5):
        rate = 20.0 if 60 <= t % 100 < 75 else 2.0
        history.add(float(t), t + 5.0, rate * 5.0)
    forecast = forecast_peak_rate(config, history, 148.0)  # 12 s before the next step
    assert forecast is not None
    peak, _, method = forecast
    assert method.startswith("seasonal") and peak == pytest.approx(20.0, rel=0.05)


def test_observe_and_history_import_no_io_libraries() -> None:
    """A fresh interpreter importing observe and history loads no web, database or cluster
    library (they are the simulator's as much as the live loop's)."""
    code = (
        "import sys\n"
        "import aiscale.scaling.observe, aiscale.scaling.history\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('starlette', 'sqlalchemy', 'redis', 'ray', 'uvicorn', 'prometheus_client'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == ""
