"""The capture log's group commit as the exact simulator replays it (``plan/_commit.py``)
and the disk probe that measures it (``calibration.probe_disk``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiscale.plan import Arrivals, SimulationConfig, simulate
from aiscale.plan._commit import commit_waits, stall_windows
from aiscale.plan.calibration import probe_disk
from aiscale.plan.profile import DiskTerms, ModelProfile, ServerTerms, profile_from_latencies
from aiscale.scaling.policies import StaticConfig, StaticPolicy

LEVELS = (0.0, 0.5, 1.0)
NO_STALLS = (np.empty(0), np.empty(0))


def disk(sync_ms: float = 1.0, **change: Any) -> DiskTerms:
    return replace(DiskTerms(LEVELS, (sync_ms, sync_ms, sync_ms)), **change)


def waits(ready: list[float], stalls: tuple[np.ndarray, np.ndarray] = NO_STALLS) -> list[float]:
    found = commit_waits(np.array(ready), disk(), np.random.default_rng(0), 10.0, stalls)
    return [round(float(w), 6) for w in found]


@pytest.mark.parametrize(
    ("ready", "expected"),
    [
        ([0.0, 1.0, 2.0], [0.001, 0.001, 0.001]),  # apart: one commit each
        ([0.0, 0.0, 0.0], [0.001, 0.001, 0.001]),  # together: one commit for all
        ([0.0, 0.0005], [0.001, 0.0015]),  # ready during a commit: waits for the next one
        ([0.0005, 0.0], [0.0015, 0.001]),  # any order in, the same order out
        ([0.0, 0.0002, 0.0004], [0.001, 0.0018, 0.0016]),  # the second commit takes both
    ],
)
def test_group_commit_without_stalls(ready: list[float], expected: list[float]) -> None:
    """A request waits for the first commit that starts once it is ready; everything ready
    when a commit starts goes into it."""
    assert waits(ready) == expected


def test_a_stall_holds_every_commit_that_overlaps_it() -> None:
    """A stall from 0.1 s to 0.4 s: a commit before it is not held; one starting inside it
    ends when it ends; a request ready during that held commit waits for the next one."""
    stalls = (np.array([0.1]), np.array([0.4]))
    assert waits([0.05, 0.2, 0.25, 0.39, 0.5], stalls) == [0.001, 0.2, 0.151, 0.011, 0.001]
    # A commit already running when the stall begins is held to its end as well.
    assert waits([0.0995], stalls) == [0.3005]


def test_stalls_come_at_their_rate_with_their_measured_durations() -> None:
    """Over 10,000 s at 0.25 stalls/s the count is Poisson around 2,500 and every stall lasts
    one of the measured durations."""
    terms = disk(stall_rate_per_s=0.25, stall_ms=(100.0, 300.0))
    starts, ends = stall_windows(terms, 10_000.0, np.random.default_rng(1))
    assert abs(starts.size - 2500) < 4 * 50
    assert list(starts) == sorted(starts) and starts[0] >= 0 and starts[-1] <= 10_000
    assert set(np.round(ends - starts, 6)) == {0.1, 0.3}
    assert stall_windows(disk(), 100.0, np.random.default_rng(1))[0].size == 0


def test_the_mean_wait_adds_the_rest_of_a_stall() -> None:
    """At light load a response waits an ordinary commit plus, on average, rate x E[L^2]/2
    of a stall it lands in; the replayed group commit agrees with that within 10%."""
    terms = disk(sync_ms=0.5, stall_rate_per_s=0.25, stall_ms=(300.0,))
    assert terms.mean_wait_s == pytest.approx(0.0005 + 0.25 * 0.09 / 2)
    rng = np.random.default_rng(3)
    ready = np.sort(rng.uniform(0, 2000.0, 20_000))
    replayed = commit_waits(ready, terms, rng, 2000.0).mean()
    assert replayed == pytest.approx(terms.mean_wait_s, rel=0.1)


def test_the_exact_simulator_adds_the_commit_and_its_stalls() -> None:
    """With disk terms every simulated response waits for its commit: the median rises by
    the ordinary commit, and stalls lift the tail."""
    server = ServerTerms(LEVELS, (0.0, 0.0, 0.0), 0.0, 1.0, 0.0)
    base = profile_from_latencies("m", "CPU", {1: 5.0, 64: 100.0}, server=server)
    with_disk = replace(base, server=replace(server, disk=disk(sync_ms=4.0)))
    stalling = replace(
        base, server=replace(server, disk=disk(4.0, stall_rate_per_s=0.5, stall_ms=(400.0,)))
    )
    times = np.cumsum(np.random.default_rng(2).exponential(1 / 20.0, 2000))
    arrivals = Arrivals(times, float(times[-1]) + 1e-3)

    def run(profile: ModelProfile) -> tuple[float, float]:
        config = SimulationConfig(profile=profile)
        found = simulate(arrivals, StaticPolicy(StaticConfig(1)), config)
        return found.p50_ms, found.p99_ms

    plain, synced, stalled = run(base), run(with_disk), run(stalling)
    assert synced[0] - plain[0] == pytest.approx(4.0, abs=0.5)
    assert stalled[1] > synced[1] + 100.0


def test_the_disk_probe_measures_this_disk(tmp_path: Path) -> None:
    """A short probe gives ordinary commit quantiles (rising, positive), a stall rate of 0 or
    more with a duration for each stall counted, and leaves no file behind."""
    found = probe_disk(tmp_path, 0.3)
    assert list(found.sync_ms) == sorted(found.sync_ms) and found.sync_ms[0] > 0
    assert found.stall_rate_per_s >= 0
    assert (found.stall_rate_per_s > 0) == bool(found.stall_ms)
    assert list(tmp_path.iterdir()) == []


def test_the_wait_points_keep_the_mean_and_the_chance_of_a_stall() -> None:
    """The aggregated mode's commit waits: weights summing to 1, the chance of landing in a
    stall equal to the time stalls cover, rising points, and the mean of ``mean_wait_s``."""
    terms = disk(sync_ms=0.5, stall_rate_per_s=0.5, stall_ms=(40.0, 200.0, 600.0))
    values, weights = terms.wait_points()
    assert weights.sum() == pytest.approx(1.0)
    assert 1.0 - weights[0] == pytest.approx(0.5 * (0.04 + 0.2 + 0.6) / 3)
    assert list(values) == sorted(values) and values[0] == pytest.approx(0.0005)
    assert float(np.sum(values * weights)) == pytest.approx(terms.mean_wait_s)
    single_values, single_weights = disk(sync_ms=0.5).wait_points()
    assert list(single_values) == [0.0005] and list(single_weights) == [1.0]


def test_the_aggregated_mode_shows_the_stalls_in_its_tail() -> None:
    """Stalls lift the aggregated mode's p99 as they lift the exact one's, without moving its
    median much; both modes agree on the p99 within a third."""
    server = ServerTerms(LEVELS, (0.0, 0.0, 0.0), 0.0, 1.0, 0.0)
    base = profile_from_latencies("m", "CPU", {1: 5.0, 64: 100.0}, server=server)
    stalling = replace(
        base, server=replace(server, disk=disk(0.5, stall_rate_per_s=0.3, stall_ms=(300.0,)))
    )
    times = np.cumsum(np.random.default_rng(4).exponential(1 / 20.0, 12_000))
    arrivals = Arrivals(times, float(times[-1]) + 1e-3)

    def run(profile: ModelProfile, mode: str) -> tuple[float, float]:
        config = SimulationConfig(profile=profile, mode=mode)  # type: ignore[arg-type]
        found = simulate(arrivals, StaticPolicy(StaticConfig(1)), config)
        return found.p50_ms, found.p99_ms

    plain, stalled = run(base, "aggregated"), run(stalling, "aggregated")
    exact = run(stalling, "exact")
    assert stalled[1] > plain[1] + 100.0
    assert stalled[0] == pytest.approx(plain[0], abs=2.0)
    assert stalled[1] == pytest.approx(exact[1], rel=1 / 3)
