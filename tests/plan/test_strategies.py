"""The planner's strategies really differ: spot and reserved are priced as such, scale to
zero counts its cold starts, an availability floor from a phase on, estimates are marked,
and a profile from an unsteady machine is refused unless allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiscale.errors import InvalidInput
from aiscale.plan import ServerTerms, profile_from_latencies, save_profile
from aiscale.plan.commands import plan_command
from aiscale.plan.planner import PhasePlan, PlanResult
from aiscale.plan.report import recommendation
from aiscale.plan.strategies import StrategyOutcome

LATENCIES = {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}


def _terms(speed_drift: float) -> ServerTerms:
    return ServerTerms(
        overhead_levels=(0.0, 0.5, 1.0),
        overhead_ms=(1.0, 1.5, 3.0),
        overhead_growth_per_rps=0.0,
        model_slowdown=1.0,
        model_slowdown_per_rps=0.0,
        speed_drift=speed_drift,
        cpu_steal_share=0.0,
    )


def _profile(tmp_path: Path, server: ServerTerms | None = None) -> Path:
    path = tmp_path / "profile.json"
    profile = profile_from_latencies(
        "minilm", "CPU", LATENCIES, memory_bytes=300_000_000, startup_s=5.0, server=server
    )
    save_profile(profile, path)
    return path


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> PlanResult:
    return plan_command(
        users=[2000, 2_000_000],
        requests_per_user=50.0,
        slo_p99_ms=500.0,
        profile=_profile(tmp_path_factory.mktemp("plan")),
        hardware=["CPU", "H100"],
        duration_s=6 * 3600.0,
        mode="aggregated",
    )


def _on_best(phase: PhasePlan, strategy: str) -> StrategyOutcome:
    return next(
        o for o in phase.outcomes if o.hardware == phase.hardware and o.strategy == strategy
    )


def test_spot_and_reserved_cost_less_than_on_demand_for_the_same_fleet(result: PlanResult) -> None:
    """Spot mix and reserved base run the predictive fleet; both cost less than it on demand
    once the fleet is larger than its floor, and each says how it is bought."""
    big = result.phases[1]
    predictive = _on_best(big, "predictive")
    spot = _on_best(big, "spot mix")
    reserved = _on_best(big, "reserved base")
    assert predictive.max_replicas > big.floor_replicas
    assert spot.monthly_cost_usd < predictive.monthly_cost_usd
    assert reserved.monthly_cost_usd < predictive.monthly_cost_usd
    assert predictive.pricing == "on demand" and "spot" in spot.pricing
    assert "reserved" in reserved.pricing and "reserved" in reserved.note
    assert "spare" in spot.note  # the replicas kept for reclaims are paid for


def test_two_replicas_at_least_from_ten_thousand_users(result: PlanResult) -> None:
    """Below 10K users one replica is enough; above it every strategy but scale to zero keeps
    two, and the plan says so."""
    small, big = result.phases
    assert small.floor_replicas == 1 and big.floor_replicas == 2
    for outcome in big.outcomes:
        if outcome.strategy != "scale to zero":
            assert outcome.min_replicas >= 2, outcome
    assert result.to_dict()["redundancy_from_users"] == 10_000


def test_estimated_rows_are_marked(result: PlanResult) -> None:
    """A row on hardware that was not measured says its speed is estimated; a spot or
    reserved row says its price is; a measured CPU on demand row says nothing."""
    for phase in result.phases:
        by = {(o.strategy, o.hardware): o for o in phase.outcomes}
        assert "speed" in by[("static at peak", "H100")].estimates
        cpu_static = by[("static at peak", "CPU")]
        assert not cpu_static.is_estimated
        if phase.hardware == "CPU":
            assert "spot price" in by[("spot mix", "CPU")].estimates
            assert "reserved price" in by[("reserved base", "CPU")].estimates
    row = result.to_dict()["phases"][0]["strategies"][0]
    assert {"is_estimated", "estimates", "pricing", "min_replicas"} <= set(row)


def test_scale_to_zero_counts_cold_starts_against_the_slo(tmp_path: Path) -> None:
    """Sparse traffic: scale to zero pays less than an always-on replica, and the requests
    that waited for a cold start count against its SLO attainment."""
    plan = plan_command(
        users=[200],
        requests_per_user=10.0,
        slo_p99_ms=500.0,
        profile=_profile(tmp_path),
        hardware=["CPU"],
        duration_s=6 * 3600.0,
        mode="exact",
    )
    phase = plan.phases[0]
    zero = _on_best(phase, "scale to zero")
    always = _on_best(phase, "reactive")
    assert zero.num_cold_starts > 0 and zero.min_replicas == 0
    assert zero.monthly_cost_usd < always.monthly_cost_usd
    assert zero.slo_attainment < always.slo_attainment
    assert "cold start" in zero.note


def test_recommendation_names_what_to_buy_and_why(result: PlanResult) -> None:
    """One paragraph for the largest phase: hardware, count, strategy, cost and the reason."""
    text = recommendation(result)
    assert text.startswith("For 2,000,000 users buy ")
    assert "because" in text and "$" in text and "2,000 users" in text
    assert "\n" not in text


def test_unsteady_profile_is_refused_unless_allowed(tmp_path: Path) -> None:
    """A profile whose model speed drifted 30% is refused naming the profile and the flag;
    with the flag the plan is made and carries the warning; a steady one without recorded
    repeats is planned with only the warning that its steadiness is unknown."""
    path = _profile(tmp_path, _terms(speed_drift=1.3))
    args = {
        "users": [1000],
        "requests_per_user": 10.0,
        "slo_p99_ms": 500.0,
        "profile": path,
        "hardware": ["CPU"],
        "duration_s": 1800.0,
    }
    with pytest.raises(InvalidInput) as error:
        plan_command(**args)  # type: ignore[arg-type]
    assert error.value.field == "profile" and "--accept-unsteady" in error.value.message
    allowed = plan_command(**args, is_unsteady_profile_allowed=True)  # type: ignore[arg-type]
    assert allowed.warnings and "unsteady" in allowed.warnings[0]
    steady = plan_command(**{**args, "profile": _profile(tmp_path, _terms(1.02))})  # type: ignore[arg-type]
    assert len(steady.warnings) == 1 and "steadiness" in steady.warnings[0]
    assert "unsteady machine" not in steady.warnings[0]
