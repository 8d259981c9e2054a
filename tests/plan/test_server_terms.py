"""Server terms in the profile: the file format (version 2, old files, bad fields), how both
simulator modes apply them, the sizing that accounts for them, and their calibration against a
real server."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiscale.errors import ConfigError
from aiscale.plan import (
    Arrivals,
    ModelProfile,
    SimulationConfig,
    derive_profile,
    load_catalog,
    load_profile,
    profile_from_latencies,
    save_profile,
    simulate,
)
from aiscale.plan.calibration import calibrate_server, fit_server_terms, repeat_figures
from aiscale.plan.planner import served_capacity_per_s, size_replica
from aiscale.plan.profile import CalibrationPoint, ServerTerms
from aiscale.scaling.policies import StaticConfig, StaticPolicy

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (0.0, 0.5, 0.9, 0.99, 0.999, 1.0)


def terms(**change: Any) -> ServerTerms:
    values: dict[str, Any] = {
        "overhead_levels": LEVELS,
        "overhead_ms": (1.0, 2.0, 3.0, 6.0, 9.0, 12.0),
        "overhead_growth_per_rps": 0.002,
        "model_slowdown": 1.2,
        "model_slowdown_per_rps": 0.001,
    }
    values.update(change)
    return ServerTerms(**values)


def profile(server: ServerTerms | None = None) -> ModelProfile:
    return profile_from_latencies(
        "minilm", "CPU", {1: 8.0, 8: 30.0, 64: 220.0}, startup_s=5.0, server=server
    )


def test_profile_with_server_terms_round_trips(tmp_path: Path) -> None:
    """A version-2 profile with measured server terms (and calibration points) saves and loads
    back equal."""
    point = CalibrationPoint(100.0, 1.0, 9.0, 8.0, 0.1, 2.0, 11.0, 30.0)
    measured = profile(replace(terms(), points=(point,)))
    path = tmp_path / "p.json"
    save_profile(measured, path)
    data = json.loads(path.read_text())
    assert data["version"] == 2 and data["server"]["label"] == "measured"
    assert load_profile(path) == measured


def test_an_old_profile_loads_with_the_documented_default(tmp_path: Path) -> None:
    """A version-1 file (no version key, no server) loads with no server terms: the model
    alone, as the simulator ran before."""
    data = profile().to_dict()
    del data["version"], data["server"], data["spread"], data["measured_on"], data["repeats"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert load_profile(path).server is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"version": 3}, "version"),
        ({"server": "fast"}, "server"),
        ({"server": {"model_slowdown": 1.0}}, "server.overhead_levels"),
        ({"server": {**terms().to_dict(), "extra": 1}}, "server.extra"),
        ({"server": {**terms().to_dict(), "model_slowdown": 0.0}}, "server.model_slowdown"),
        ({"server": {**terms().to_dict(), "model_slowdown": "x"}}, "server.model_slowdown"),
        (
            {"server": {**terms().to_dict(), "overhead_ms": [3, 2, 1, 1, 1, 1]}},
            "server.overhead_ms",
        ),
        (
            {"server": {**terms().to_dict(), "overhead_levels": [0.1, 0.5, 0.9, 0.99, 0.999, 1]}},
            "server.overhead_levels",
        ),
        (
            {"server": {**terms().to_dict(), "model_slowdown_per_rps": -1}},
            "server.model_slowdown_per_rps",
        ),
        ({"server": {**terms().to_dict(), "points": [{"rate": 1}]}}, "server.points"),
        (
            {"server": {**terms().to_dict(), "overhead_rates_per_s": [0, 10]}},
            "server.overhead_rates_per_s",
        ),
        (
            {
                "server": {
                    **terms().to_dict(),
                    "overhead_rates_per_s": [5, 10],
                    "overhead_mean_ms": [1, 2],
                }
            },
            "server.overhead_rates_per_s",
        ),
        (
            {
                "server": {
                    **terms().to_dict(),
                    "overhead_rates_per_s": [0, 10],
                    "overhead_mean_ms": [1, -2],
                }
            },
            "server.overhead_mean_ms",
        ),
        ({"spread": {"levels": [0, 1]}}, "spread"),
        ({"spread": {"levels": [0, 1], "ratios": [1.2, 0.8]}}, "spread.ratios"),
        ({"spread": {"levels": [0.2, 1], "ratios": [0.8, 1.2]}}, "spread.levels"),
        ({"spread": {"levels": [0, 1], "ratios": [0, 1.2]}}, "spread.ratios"),
        ({"spread": {"levels": ["a", 1], "ratios": [1, 1.2]}}, "spread"),
        (
            {"server": {**terms().to_dict(), "slowdown_rates_per_s": [0, 10]}},
            "server.slowdown_rates_per_s",
        ),
        (
            {
                "server": {
                    **terms().to_dict(),
                    "slowdown_rates_per_s": [0, 10],
                    "slowdown_values": [1.1, 0.0],
                }
            },
            "server.slowdown_values",
        ),
        ({"repeats": {"count": 3}}, "repeats"),
        ({"repeats": {"count": 0, "figures": []}}, "repeats.count"),
        (
            {"repeats": {"count": 3, "figures": [{"name": "x", "median": 1, "low": 2,
                                                  "high": 3, "checked": True}]}},
            "repeats.figures",
        ),  # fmt: skip
    ],
)
def test_bad_server_fields_are_rejected_with_their_path(change: dict[str, Any], field: str) -> None:
    """A bad or missing server field is a ConfigError naming server.<field>; so is an unknown
    format version."""
    data = {**profile(terms()).to_dict(), **change}
    with pytest.raises(ConfigError) as error:
        ModelProfile.from_dict(data)
    assert error.value.field == field


def test_a_version_2_profile_must_say_whether_it_has_server_terms() -> None:
    """Version 2 without the server key is an error (null is the explicit 'none')."""
    data = profile().to_dict()
    del data["server"]
    with pytest.raises(ConfigError) as error:
        ModelProfile.from_dict(data)
    assert error.value.field == "server"


def test_derived_hardware_keeps_the_overhead_and_drops_the_contention() -> None:
    """On other hardware the per-request overhead stays; the slowdown terms do not apply and
    the terms are labelled estimated."""
    derived = derive_profile(profile(terms()), "T4", load_catalog())
    assert derived.server is not None
    assert derived.server.overhead_ms == terms().overhead_ms
    assert derived.server.slowdown(500.0) == 1.0
    assert derived.server.overhead_scale(500.0) == 1.0
    assert derived.server.label == "estimated"


def spaced(num: int, gap_s: float) -> Arrivals:
    times = np.arange(num) * gap_s
    return Arrivals(times, float(times[-1]) + gap_s)


def run(server: ServerTerms | None, arrivals: Arrivals, mode: str = "exact") -> Any:
    config = SimulationConfig(
        profile=profile(server),
        max_batch_size=64,
        decision_interval_s=10.0,
        mode=mode,  # type: ignore[arg-type]
    )
    return simulate(arrivals, StaticPolicy(StaticConfig(1)), config)


def test_exact_mode_adds_the_overhead_without_changing_the_events() -> None:
    """A constant overhead shifts every latency by exactly that much and leaves the event
    count alone (it never occupies a replica)."""
    arrivals = spaced(500, 0.5)  # 2 req/s, one at a time: every batch is a batch of one
    flat = terms(
        overhead_ms=(5.0,) * 6,
        overhead_growth_per_rps=0.0,
        model_slowdown=1.0,
        model_slowdown_per_rps=0.0,
    )
    alone, served = run(None, arrivals), run(flat, arrivals)
    assert served.num_events == alone.num_events
    assert served.p50_ms == pytest.approx(alone.p50_ms + 5.0)
    assert served.p99_ms == pytest.approx(alone.p99_ms + 5.0)


def test_the_slowdown_stretches_batches_and_grows_with_the_rate() -> None:
    """A slowdown s at light load makes a batch of one take s times longer; with a slope per
    request/s, a higher rate gives longer batches (both modes)."""
    light = spaced(500, 0.5)
    slow = terms(overhead_ms=(0.0,) * 6, model_slowdown=2.0, model_slowdown_per_rps=0.0)
    assert run(slow, light).p50_ms == pytest.approx(2 * run(None, light).p50_ms)
    steep = terms(overhead_ms=(0.0,) * 6, model_slowdown=1.0, model_slowdown_per_rps=0.01)
    rng = np.random.default_rng(3)
    for mode in ("exact", "aggregated"):
        ratios = []
        for rate in (20.0, 100.0):
            times = np.cumsum(rng.exponential(1 / rate, int(rate * 120)))
            arrivals = Arrivals(times, float(times[-1]) + 1e-3)
            ratios.append(run(steep, arrivals, mode).mean_ms / run(None, arrivals, mode).mean_ms)
        assert 1.0 < ratios[0] < ratios[1], mode


def test_modes_agree_on_the_overhead_distribution() -> None:
    """At light load both modes give p50 and p99 near the overhead's own quantiles plus a
    batch of one (the aggregated mode mixes over the overhead's quantiles)."""
    rng = np.random.default_rng(5)
    times = np.cumsum(rng.exponential(1 / 5.0, 3000))
    arrivals = Arrivals(times, float(times[-1]) + 1e-3)
    spread = terms(overhead_growth_per_rps=0.0, model_slowdown=1.0, model_slowdown_per_rps=0.0)
    exact, aggregated = run(spread, arrivals), run(spread, arrivals, "aggregated")
    assert exact.p50_ms == pytest.approx(8.0 + 2.0, rel=0.1)
    assert aggregated.p50_ms == pytest.approx(exact.p50_ms, rel=0.1)
    assert aggregated.p99_ms == pytest.approx(exact.p99_ms, rel=0.15)


def test_sizing_pays_for_the_server_terms() -> None:
    """With a slowdown slope the served capacity solves c = b / (latency(b) * (s0 + s1 c)),
    below the model-alone capacity; the sizing uses it."""
    measured = profile(terms())
    capacity = served_capacity_per_s(measured, 64)
    latency = measured.latency_s(64)
    assert capacity == pytest.approx(64 / (latency * terms().slowdown(capacity)))
    assert capacity < served_capacity_per_s(profile(), 64)
    assert (
        size_replica(measured, 500.0).full_capacity_per_s
        < size_replica(profile(), 500.0).full_capacity_per_s
    )


def test_fit_recovers_lines_and_clips_negative_slopes() -> None:
    """The fit: slowdown = model / alone as a line in the rate, overhead growth as the line's
    relative slope; the quantiles come from the light level's percentiles minus its time in
    queue and model; a falling line is clipped to a flat one."""
    closed = CalibrationPoint(300.0, 1.0, 8.0 * 1.1, 8.0, 0.0, 2.0, 0, 0)  # concurrency 1
    points = [closed] + [
        CalibrationPoint(
            r, 1.0, 8.0 * (1.1 + 0.002 * r), 8.0, 0.0, 2.0 * (1 + 0.01 * r), 0, 0, offered_per_s=r
        )
        for r in (50.0, 100.0, 200.0)
    ]
    light = {"p50_ms": 12.0, "p90_ms": 14.0, "p99_ms": 20.0, "p999_ms": 30.0, "max_ms": 40.0}
    fitted = fit_server_terms(light, points)
    assert fitted.model_slowdown == pytest.approx(1.1)
    assert fitted.model_slowdown_per_rps == pytest.approx(0.002)
    assert fitted.overhead_growth_per_rps == pytest.approx(0.01)
    inside = points[0].model_ms
    assert fitted.overhead_ms[1] == pytest.approx(12.0 - inside)
    assert fitted.overhead_ms[-1] == pytest.approx(40.0 - inside)
    falling = [closed] + [replace(p, model_ms=10.0 - p.rate_per_s / 100) for p in points[1:]]
    assert fit_server_terms(light, falling).model_slowdown_per_rps == 0.0


@pytest.mark.timeout(240)
def test_calibration_against_a_real_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """calibrate_server runs a real aiscale serve and load generator and gives measured terms
    with one point per level: per pass concurrency 1, each open-loop fraction and the closed
    loop at full batches (the model alone measured again before each pass), then
    concurrency 1 once more; the slowdown curve ends at the full-batch loop."""
    monkeypatch.chdir(ROOT)
    alone = profile_from_latencies("echo", "CPU", {1: 0.05, 64: 0.5})
    asked: list[int] = []

    def before_pass(index: int) -> ModelProfile:
        asked.append(index)
        return alone

    measured = calibrate_server(
        "tests.models:Echo",
        alone,
        path="/v2/models/echo/infer",
        seconds_per_level=0.5,
        fractions=(0.3,),
        passes=2,
        disk_seconds=0.5,
        cwd=ROOT,
        before_pass=before_pass,
        saturation_concurrency=8,
    )
    assert measured.label == "measured" and asked == [0, 1]
    points = measured.points
    # Per pass: concurrency 1, the open-loop level, the closed loop of 8; then concurrency 1.
    assert len(points) == 7
    assert [p.concurrency for p in points] == [1, 0, 8, 1, 0, 8, 1]
    assert points[1].offered_per_s == points[4].offered_per_s > 0
    assert all(p.offered_per_s == 0 for p in points if p.concurrency)
    assert measured.speed_drift == pytest.approx(points[6].model_ms / points[0].model_ms)
    assert measured.cpu_steal_share is not None and 0.0 <= measured.cpu_steal_share < 1.0
    # The capture commit: probed on the server's disk, its wait left out of the overhead.
    assert measured.disk is not None and measured.disk.sync_ms[0] > 0
    assert all(p.capture_ms > 0 for p in points)
    assert all(p.rate_per_s > 0 and p.model_ms > 0 for p in points)
    assert list(measured.overhead_ms) == sorted(measured.overhead_ms)
    # Positive at the top; the median can clip to 0 where a busy machine's mean time inside
    # the server (a few stalls) exceeds the client's median latency.
    assert measured.overhead_ms[-1] > 0 and measured.overhead_ms[1] >= 0
    # The curves: the closed loop of one at rate 0, then the open-loop level and the loop of
    # eight (in rising rate, a level left out where its rate does not rise).
    assert measured.overhead_rates_per_s[0] == 0.0 == measured.slowdown_rates_per_s[0]
    assert 2 <= len(measured.slowdown_rates_per_s) <= 3
    figures = {f.name: f for f in repeat_figures(measured)}
    served = figures["served req/s at concurrency 8"]
    assert served.is_checked and served.low <= served.median <= served.high
    assert not figures["overhead mean ms at concurrency 1"].is_checked


def test_a_fixed_batch_size_skips_the_slo_fit() -> None:
    """max_batch_size fixes the batch as aiscale serve does (the SLO only scores); out of
    range is refused naming the field."""
    from aiscale.errors import InvalidInput

    sized = size_replica(profile(terms()), 10.0, max_batch_size=64)
    assert sized.max_batch_size == 64
    assert sized.full_capacity_per_s == pytest.approx(served_capacity_per_s(profile(terms()), 64))
    with pytest.raises(InvalidInput) as error:
        size_replica(profile(), 500.0, max_batch_size=0)
    assert error.value.field == "max_batch_size"


def test_saturated_levels_are_left_out_of_the_fit() -> None:
    """A level served below 90% of its offered rate, or with a queue longer than two batches,
    measures a backlog: the lines ignore it (it stays in the points for the record)."""
    from aiscale.plan.calibration import is_saturated

    steady = [CalibrationPoint(300.0, 1.0, 8.0 * 1.1, 8.0, 1.0, 2.0, 0, 0)] + [
        CalibrationPoint(r, 1.0, 8.0 * 1.1, 8.0, 1.0, 2.0, 0, 0, offered_per_s=r)
        for r in (50.0, 100.0)
    ]
    backlog = CalibrationPoint(120.0, 40.0, 300.0, 200.0, 900.0, 300.0, 0, 0, offered_per_s=200)
    assert not any(is_saturated(p) for p in steady) and is_saturated(backlog)
    light = {"p50_ms": 12.0, "p90_ms": 14.0, "p99_ms": 20.0, "p999_ms": 30.0, "max_ms": 40.0}
    fitted = fit_server_terms(light, [*steady, backlog])
    assert fitted.overhead_growth_per_rps == pytest.approx(0.0, abs=1e-12)
    assert fitted.model_slowdown == pytest.approx(1.1)
    assert len(fitted.points) == 4
    assert fitted.overhead_rates_per_s == (0.0, 50.0, 100.0)


def curve(**change: Any) -> ServerTerms:
    """Terms with a measured mean-overhead curve: 2 ms closed loop, 6 ms at 50/s, 8 at 100/s."""
    return terms(
        overhead_rates_per_s=(0.0, 50.0, 100.0), overhead_mean_ms=(2.0, 6.0, 8.0), **change
    )


def test_the_overhead_follows_the_measured_curve_not_the_line() -> None:
    """With a curve the overhead scale is its mean at the rate over the mean at rate 0:
    linear between the levels, flat past the last, also for arrays of rates; without one
    (files written before) the growth line still applies."""
    measured = curve()
    assert measured.overhead_scale(0.0) == 1.0
    assert measured.overhead_scale(25.0) == pytest.approx(2.0)
    assert measured.overhead_scale(75.0) == pytest.approx(3.5)
    assert measured.overhead_scale(1000.0) == pytest.approx(4.0)
    assert list(measured.overhead_scale(np.array([0.0, 50.0]))) == pytest.approx([1.0, 3.0])
    assert terms().overhead_scale(100.0) == pytest.approx(1.2)
    # A closed-loop overhead of 0 does not divide by zero.
    zero = terms(overhead_rates_per_s=(0.0, 50.0), overhead_mean_ms=(0.0, 5.0))
    assert zero.overhead_scale(50.0) == pytest.approx(50.0)


@pytest.mark.parametrize("made", [curve, terms])
def test_one_rate_scales_as_an_array_of_rates_does(made: Any) -> None:
    """The per-batch (plain Python) path of ``overhead_scale`` gives what the array path
    gives, at the levels, between them, below 0 and past the last."""
    measured = made()
    rates = np.array([-5.0, 0.0, 10.0, 50.0, 50.0001, 77.7, 100.0, 250.0])
    expected = measured.overhead_scale(rates)
    one_by_one = [measured.overhead_scale(float(rate)) for rate in rates]
    assert all(isinstance(value, float) for value in one_by_one)
    assert one_by_one == pytest.approx(list(expected), rel=1e-12)


def test_profiles_with_a_curve_and_a_spread_round_trip(tmp_path: Path) -> None:
    """The curve and the batch-time spread save and load back equal; a file without them
    (version 2 as written before) loads with neither."""
    from aiscale.plan.profile import ServiceSpread

    spread = ServiceSpread((0.0, 0.5, 1.0), (0.8, 1.0, 1.6))
    measured = replace(profile(curve()), spread=spread)
    path = tmp_path / "p.json"
    save_profile(measured, path)
    assert load_profile(path) == measured
    data = json.loads(path.read_text())
    del data["spread"], data["server"]["overhead_rates_per_s"], data["server"]["overhead_mean_ms"]
    path.write_text(json.dumps(data))
    older = load_profile(path)
    assert older.spread is None and older.server is not None
    assert older.server.overhead_rates_per_s == ()


@pytest.mark.parametrize(
    ("drift", "steal", "said"),
    [
        (None, None, None),  # files written before the calibration measured them
        (1.0, 0.0, None),
        (1.09, 0.05, None),  # within both bounds
        (1.2, 0.0, "20% slower at the end"),
        (0.85, 0.0, "15% faster at the end"),
        (1.0, 0.08, "took 8% of the CPU"),
        (1.3, 0.2, "30% slower at the end of the calibration than at its start; the "
                   "hypervisor took 20% of the CPU"),
    ],
)
def test_an_unsteady_calibration_says_why(
    drift: float | None, steal: float | None, said: str | None
) -> None:
    """A calibration during which the model's speed moved by over 10% or the hypervisor
    took over 5% of the CPU says so (``aiscale profile`` prints it as a warning)."""
    found = terms(speed_drift=drift, cpu_steal_share=steal).unsteadiness()
    if said is None:
        assert found is None
    else:
        assert found is not None and said in found


def test_the_calibration_conditions_round_trip_and_are_checked(tmp_path: Path) -> None:
    """The speed drift, the CPU stolen and the machine save and load back; a file without
    them loads with None; a negative or non-finite one is refused naming the field."""
    from aiscale.plan.profile import DiskTerms

    disk = DiskTerms(LEVELS, (0.3, 0.4, 0.5, 0.9, 6.0, 9.0), 0.25, (120.0, 310.0))
    measured = replace(
        profile(terms(speed_drift=1.04, cpu_steal_share=0.02, disk=disk)),
        measured_on="AMD EPYC, 2 cores",
    )
    path = tmp_path / "p.json"
    save_profile(measured, path)
    assert load_profile(path) == measured
    data = json.loads(path.read_text())
    for name in ("speed_drift", "cpu_steal_share", "disk"):
        del data["server"][name]
    del data["measured_on"]
    path.write_text(json.dumps(data))
    older = load_profile(path)
    assert older.measured_on is None and older.server is not None
    assert older.server.speed_drift is None and older.server.cpu_steal_share is None
    assert older.server.disk is None
    for name, bad in (("speed_drift", -1.0), ("cpu_steal_share", float("nan"))):
        with pytest.raises(ConfigError) as error:
            terms(**{name: bad})
        assert error.value.field == f"server.{name}"
    for change, field in (
        ({"stall_rate_per_s": -1.0}, "disk.stall_rate_per_s"),
        ({"stall_ms": (0.0,)}, "disk.stall_ms"),
        ({"stall_ms": ()}, "disk.stall_ms"),  # a rate with no durations to draw from
        ({"sync_ms": (1.0, 0.5, 2.0, 3.0, 4.0, 5.0)}, "disk.sync_ms"),
    ):
        with pytest.raises(ConfigError) as error:
            replace(disk, **change)
        assert error.value.field == field
    data = json.loads(path.read_text())
    data["server"]["disk"] = {"sync_levels": [0, 1], "sync_ms": [1, 2], "stalls": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as error:
        load_profile(path)
    assert error.value.field == "disk.stalls"


def test_the_closed_loop_level_counts_as_no_overlap() -> None:
    """At concurrency 1 nothing overlaps however fast the loop runs: the curve and the
    lines put it at rate 0, the open-loop levels at their rates (saturated ones left out)."""
    from aiscale.plan.calibration import overhead_curve, overlap_rate

    closed = CalibrationPoint(120.0, 1.0, 8.0, 8.0, 0.0, 1.5, 9.0, 12.0)
    opened = [
        CalibrationPoint(r, 1.2, 8.5, 8.0, 2.0, o, 14.0, 30.0, offered_per_s=r)
        for r, o in ((100.0, 6.0), (40.0, 5.0))
    ]
    backlog = CalibrationPoint(150.0, 40.0, 300.0, 200.0, 900.0, 80.0, 0, 0, offered_per_s=200)
    assert overlap_rate(closed) == 0.0 and overlap_rate(opened[0]) == 100.0
    assert overhead_curve([closed, *opened, backlog]) == ((0.0, 40.0, 100.0), (1.5, 5.0, 6.0))
    # Passes at the same offered rate give one point, their medians: one disturbed pass
    # (30 ms) does not move it.
    passes = [replace(opened[0], rate_per_s=r, overhead_ms=o) for r, o in ((99, 6), (101, 7))]
    disturbed = replace(opened[0], overhead_ms=30.0)
    rates, means = overhead_curve([closed, *passes, disturbed])
    assert rates == (0.0, 100.0) and means == (1.5, 7.0)


def test_the_spread_keeps_the_mean_and_widens_the_tail() -> None:
    """Per-batch draws from the spread (exact mode): the same events, the mean batch time
    times the spread's mean ratio, a longer tail than fixed batch times, and the same
    result for the same seed; the aggregated mode and the capacity use the mean ratio."""
    from aiscale.plan.profile import ServiceSpread

    wide = ServiceSpread((0.0, 0.5, 0.9, 1.0), (0.5, 1.0, 1.5, 3.0))
    fixed = profile()
    spread = replace(fixed, spread=wide)
    arrivals = spaced(2000, 0.5)  # one at a time: latency = one batch of one
    config = SimulationConfig(profile=fixed, max_batch_size=64, decision_interval_s=10.0)
    alone = simulate(arrivals, StaticPolicy(StaticConfig(1)), config)
    drawn = simulate(arrivals, StaticPolicy(StaticConfig(1)), replace(config, profile=spread))
    again = simulate(arrivals, StaticPolicy(StaticConfig(1)), replace(config, profile=spread))
    assert drawn.num_events == alone.num_events and drawn == again
    assert drawn.mean_ms == pytest.approx(alone.mean_ms * wide.mean_ratio, rel=0.05)
    assert drawn.p99_ms > 1.4 * alone.p99_ms
    assert spread.max_throughput_per_s(64) == pytest.approx(
        fixed.max_throughput_per_s(64) / wide.mean_ratio
    )
    aggregated = simulate(
        arrivals, StaticPolicy(StaticConfig(1)), replace(config, profile=spread, mode="aggregated")
    )
    assert aggregated.mean_ms == pytest.approx(drawn.mean_ms, rel=0.1)


def test_the_slowdown_curve_runs_through_every_kind_of_level_to_full_batches() -> None:
    """The slowdown curve: the median of the concurrency-1 levels at rate 0, then per kind of
    steady level (an offered rate, a closed-loop concurrency) the median rate and slowdown,
    ending at the closed loop at full batches; a saturated open-loop level is left out, a
    closed loop never counts as saturated. The terms follow the curve (float and array)."""
    from aiscale.plan.calibration import is_saturated, slowdown_curve

    def level(rate: float, ratio: float, **kind: float) -> CalibrationPoint:
        batch_ms = 8.0 * ratio
        return CalibrationPoint(rate, 1.0, batch_ms, 8.0, 1.0, 2.0, 0, 0, **kind)

    points = [
        level(90.0, 1.3, concurrency=1),
        level(50.0, 1.2, offered_per_s=50.0),
        level(100.0, 1.1, offered_per_s=100.0),
        level(280.0, 1.0, concurrency=64),
        level(85.0, 1.25, concurrency=1),
        level(52.0, 1.22, offered_per_s=50.0),
        level(102.0, 1.15, offered_per_s=100.0),
        level(276.0, 1.04, concurrency=64),
        CalibrationPoint(120.0, 40.0, 300.0, 200.0, 900.0, 300.0, 0, 0, offered_per_s=200.0),
        level(88.0, 1.3, concurrency=1),
    ]
    backlog = points[8]
    full = replace(points[3], queue_ms=10 * points[3].model_ms)
    assert is_saturated(backlog) and not is_saturated(full)
    rates, values = slowdown_curve(points)
    assert rates == pytest.approx((0.0, 51.0, 101.0, 278.0))
    assert values == pytest.approx((1.3, 1.21, 1.125, 1.02))
    fitted = fit_server_terms([{"p50_ms": 12, "p90_ms": 14, "p99_ms": 20, "p999_ms": 30,
                                "max_ms": 40}] * 3, points)  # fmt: skip
    assert fitted.slowdown_rates_per_s == pytest.approx(rates)
    assert fitted.slowdown(0.0) == pytest.approx(1.3)
    assert fitted.slowdown(1000.0) == pytest.approx(1.02)
    between = np.array([0.0, 25.5, 189.5, 500.0])
    assert list(fitted.slowdown(between)) == pytest.approx(
        [fitted.slowdown(float(r)) for r in between]
    )
    assert fitted.slowdown(189.5) == pytest.approx((1.125 + 1.02) / 2)
