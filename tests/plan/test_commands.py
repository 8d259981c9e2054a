"""``simulate_command``: the JSON fields and bad input naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiscale.errors import InvalidInput
from aiscale.plan import profile_from_latencies, save_profile
from aiscale.plan.commands import parse_users, simulate_command
from tests.data_sets import synthetic_trace_times, write_trace


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    """A trace file shaped like the Azure conversation trace (tests/data_sets.py)."""
    return write_trace(tmp_path / "conv.csv", synthetic_trace_times())


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "profile.json"
    profile = profile_from_latencies(
        "minilm", "CPU", {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}, startup_s=5.0
    )
    save_profile(profile, path)
    return path


@pytest.mark.parametrize(
    "policy", ["static", "reactive", "kpa", "predictive", "oracle", "oracle-70"]
)
def test_simulate_gives_the_documented_fields(profile_path: Path, policy: str) -> None:
    """Every policy name runs on synthetic users and returns the documented JSON fields with
    consistent values (cost = replica-hours x the catalog's CPU price)."""
    data = simulate_command(
        profile=profile_path,
        policy=policy,
        slo_p99_ms=500.0,
        users=20_000,
        requests_per_user=50.0,
        shape="daily",
        duration_s=1800.0,
        mode="aggregated",
    )
    for key in ("p50_ms", "p99_ms", "slo_attainment", "replica_hours", "cost_usd", "requests"):
        assert key in data
    assert 0.0 <= data["slo_attainment"] <= 1.0
    assert data["requests"] > 0 and data["mode"] == "aggregated"
    assert data["cost_usd"] == pytest.approx(data["replica_hours"] * 0.17)
    assert data["p50_ms"] <= data["p99_ms"]


def test_the_oracle_is_searched_and_the_old_one_kept_by_name(profile_path: Path) -> None:
    """``--policy oracle`` is the searched oracle: it meets the 99% target in the very
    simulation it reports, with no more replica-hours than ``oracle-70`` (the old
    fixed-70%-capacity bound) where that one meets it too, and says how it was found."""
    common: dict[str, Any] = {
        "profile": profile_path,
        "slo_p99_ms": 500.0,
        "users": 20_000,
        "requests_per_user": 50.0,
        "shape": "bursty",
        "duration_s": 3600.0,
        "mode": "aggregated",
    }
    searched = simulate_command(policy="oracle", **common)
    old = simulate_command(policy="oracle-70", **common)
    assert searched["slo_attainment"] >= 0.99
    assert searched["oracle_found_by"] in ("greedy", "priced", "unlowered", "uniform")
    assert searched["oracle_optimality_gap"] >= 1.0 - 1e-9
    if old["slo_attainment"] >= 0.99:
        assert searched["replica_hours"] <= old["replica_hours"] + 1e-9
    assert "oracle_found_by" not in old


def test_trace_scaling_and_exact_mode(profile_path: Path, trace: Path) -> None:
    """--rate-scale multiplies a trace's requests (Poisson by default: within counting noise;
    copied: exactly) and --time-scale stretches it; auto picks the exact mode for a small
    run; --replicas fixes the static fleet."""
    base: dict[str, Any] = {
        "profile": profile_path,
        "policy": "static",
        "slo_p99_ms": 500.0,
        "trace": trace,
        "replicas": 2,
    }
    one = simulate_command(**base, duration_s=600.0)
    doubled = simulate_command(**base, duration_s=600.0, rate_scale=2.0)
    copied = simulate_command(**base, duration_s=600.0, rate_scale=2.0, scale_by="copy")
    stretched = simulate_command(**base, time_scale=2.0, duration_s=1200.0)
    assert one["mode"] == "exact"
    # Poisson noise (4 sigma) plus the per-minute rate's smoothing across the cut at 600 s.
    assert (
        abs(doubled["requests"] - 2 * one["requests"])
        < 4 * (2 * one["requests"]) ** 0.5 + 0.02 * one["requests"]
    )
    assert copied["requests"] == pytest.approx(2 * one["requests"], rel=0.002)
    assert stretched["requests"] == pytest.approx(one["requests"], rel=0.02)
    assert one["replica_hours"] == pytest.approx(2 * 600.0 / 3600.0, rel=0.05)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"policy": "magic"}, "policy"),
        ({"slo_p99_ms": 0.0}, "slo_p99_ms"),
        ({"slo_p99_ms": 1.0}, "slo_p99_ms"),  # faster than one batch of one
        ({"rate_scale": -1.0}, "rate_scale"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"mode": "fast"}, "mode"),
        ({"shape": "zigzag"}, "shape"),
        ({"users": None}, "trace"),
        ({"trace": "/no/such/file.csv"}, "trace"),
        ({"users": 0}, "users"),
        ({"requests_per_user": None}, "requests_per_user"),
        ({"replicas": 3}, "replicas"),
        ({"hardware": "TPU"}, "hardware"),
        ({"profile": "/no/such/profile.json"}, "profile"),
    ],
)
def test_bad_input_names_the_field(profile_path: Path, change: dict[str, Any], field: str) -> None:
    """Each bad flag raises InvalidInput whose field names it."""
    args: dict[str, Any] = {
        "profile": profile_path,
        "policy": "reactive",
        "slo_p99_ms": 500.0,
        "users": 1000,
        "requests_per_user": 10.0,
        "duration_s": 600.0,
    }
    args.update(change)
    if "trace" in change:
        del args["users"]
    with pytest.raises(InvalidInput) as error:
        simulate_command(**args)
    assert error.value.field == field


def test_users_list_is_parsed_or_refused() -> None:
    """--users takes comma-separated counts; anything else names the users field."""
    assert parse_users("10000,100_000, 1000000") == [10_000, 100_000, 1_000_000]
    for text in ("", "ten", "5,-1"):
        with pytest.raises(InvalidInput) as error:
            parse_users(text)
        assert error.value.field == "users"


def test_simulate_says_whether_server_terms_were_applied(tmp_path: Path, trace: Path) -> None:
    """The JSON names the profile's server terms (measured) or None for the model alone, and
    the terms make the same traffic slower."""
    from aiscale.plan.profile import ServerTerms

    terms = ServerTerms(
        overhead_levels=(0.0, 0.5, 1.0),
        overhead_ms=(2.0, 3.0, 8.0),
        overhead_growth_per_rps=0.001,
        model_slowdown=1.3,
        model_slowdown_per_rps=0.001,
    )
    latencies = {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}
    results = {}
    for name, server in (("alone", None), ("served", terms)):
        path = tmp_path / f"{name}.json"
        save_profile(profile_from_latencies("minilm", "CPU", latencies, server=server), path)
        results[name] = simulate_command(
            profile=path,
            policy="static",
            replicas=1,
            slo_p99_ms=500.0,
            trace=trace,
            time_scale=0.1,
            duration_s=60.0,
            mode="exact",
        )
    assert results["alone"]["server_terms"] is None
    assert results["served"]["server_terms"] == "measured"
    assert results["served"]["p50_ms"] > results["alone"]["p50_ms"] + 2.0
