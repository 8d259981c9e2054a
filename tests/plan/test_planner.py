"""The planner: sizing rules, phases, strategies, the cost ratio and the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiscale.errors import InvalidInput
from aiscale.plan import profile_from_latencies, save_profile
from aiscale.plan.commands import plan_command
from aiscale.plan.planner import STRATEGIES, size_replica

PROFILE = profile_from_latencies(
    "minilm", "CPU", {1: 8.0, 8: 30.0, 32: 110.0, 64: 220.0}, memory_bytes=300_000_000
)


def test_sizing_gives_a_batch_that_fits_and_a_capacity_that_holds_the_slo() -> None:
    """The batch's one full batch fits the SLO (rule 1); a tighter SLO gives a smaller batch
    and less planned capacity; the planned capacity is at most 0.7 of the full one; an SLO
    below one request alone is refused naming the SLO (the rules: tests/plan/test_sizing.py)."""
    loose = size_replica(PROFILE, 500.0)
    tight = size_replica(PROFILE, 60.0)
    for sizing, slo in ((loose, 500.0), (tight, 60.0)):
        assert PROFILE.latency_s(sizing.max_batch_size) + 0.01 <= slo / 1000.0
        assert sizing.capacity_per_s <= 0.7 * sizing.full_capacity_per_s + 1e-9
    assert tight.max_batch_size < loose.max_batch_size
    assert tight.capacity_per_s < loose.capacity_per_s
    assert loose.capacity_per_s == pytest.approx(0.7 * loose.full_capacity_per_s)
    assert 1.0 <= loose.ongoing_at_target() <= 2 * loose.max_batch_size
    with pytest.raises(InvalidInput) as error:
        size_replica(PROFILE, 5.0)
    assert error.value.field == "slo_p99_ms"


def test_plan_writes_the_report_and_the_cost_ratio(tmp_path: Path) -> None:
    """Two phases: each has hardware and replicas, every strategy's cost and SLO attainment,
    a cost ratio >= 1 between the costliest and cheapest architecture meeting the SLO, and
    the report folder holds HTML, Markdown, JSON and non-empty PNGs."""
    profile_path = tmp_path / "profile.json"
    save_profile(PROFILE, profile_path)
    seen: list[tuple[int, int]] = []
    result = plan_command(
        users="2000,2000000",
        requests_per_user=50.0,
        slo_p99_ms=500.0,
        profile=profile_path,
        report=tmp_path / "report",
        hardware=["CPU", "T4"],
        duration_s=1800.0,
        mode="aggregated",
        on_progress=lambda done, total, label: seen.append((done, total)),
    )
    assert [p.num_users for p in result.phases] == [2000, 2000000]
    for phase in result.phases:
        assert phase.hardware in ("CPU", "T4") and phase.replicas_at_peak >= 1
        on_best = {o.strategy for o in phase.outcomes if o.hardware == phase.hardware}
        assert on_best == set(STRATEGIES)
        assert all(0 <= o.slo_attainment <= 1 and o.monthly_cost_usd > 0 for o in phase.outcomes)
        assert phase.cost_ratio is not None and phase.cost_ratio >= 1.0
    big = result.phases[1]
    cpu = next(option for option in big.options if option.hardware == "CPU")
    assert cpu.replicas_at_peak > result.phases[0].replicas_at_peak  # growth needs replicas
    cheapest_at_peak = min(big.options, key=lambda option: option.monthly_cost_at_peak_usd)
    assert big.hardware == cheapest_at_peak.hardware  # right-sizing across the catalog
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    folder = tmp_path / "report"
    for name in ("report.html", "report.md", "plan.json", "cost.png", "traffic_2000.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0
    assert (folder / "cost.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (folder / "report.html").read_text()
    data = json.loads((folder / "plan.json").read_text())
    assert data["phases"][1]["cost_ratio"] == pytest.approx(big.cost_ratio)


def test_plan_refuses_unknown_hardware_and_bad_users(tmp_path: Path) -> None:
    """Unknown hardware and empty user lists are InvalidInput naming the field."""
    profile_path = tmp_path / "profile.json"
    save_profile(PROFILE, profile_path)
    common = {"requests_per_user": 10.0, "slo_p99_ms": 500.0, "profile": profile_path}
    with pytest.raises(InvalidInput) as error:
        plan_command(users=[1000], hardware=["TPU"], **common)  # type: ignore[arg-type]
    assert error.value.field == "hardware"
    with pytest.raises(InvalidInput) as error:
        plan_command(users=[], **common)  # type: ignore[arg-type]
    assert error.value.field == "users"
