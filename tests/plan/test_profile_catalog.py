"""Model profiles (format, interpolation) and the hardware catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiscale.errors import ConfigError, InvalidInput, NotFound
from aiscale.plan import (
    ModelProfile,
    derive_profile,
    load_catalog,
    load_profile,
    profile_from_latencies,
    save_profile,
)


def cpu_profile() -> ModelProfile:
    return profile_from_latencies(
        "minilm", "CPU", {1: 8.0, 8: 30.0, 64: 220.0}, memory_bytes=400_000_000, startup_s=5.0
    )


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    """save then load gives the same profile, in the documented JSON shape."""
    profile = cpu_profile()
    path = tmp_path / "p.json"
    save_profile(profile, path)
    data = json.loads(path.read_text())
    assert set(data) == {
        "version",
        "server",
        "spread",
        "measured_on",
        "repeats",
        "model",
        "hardware",
        "batch_sizes",
        "latency_ms",
        "throughput_per_s",
        "memory_bytes",
        "startup_s",
        "estimated",
    }
    assert load_profile(path) == profile
    assert data["version"] == 2 and data["server"] is None and data["spread"] is None
    assert data["throughput_per_s"][0] == pytest.approx(125.0)


@pytest.mark.parametrize(
    ("batch", "expected_ms"),
    [
        (1, 8.0),
        (8, 30.0),
        (4, 8.0 + 22.0 * 3 / 7),
        (36, 30.0 + 190.0 * 28 / 56),
        (64, 220.0),
        (128, 220.0 + 190.0 * 64 / 56),
    ],
)
def test_latency_interpolates_between_measured_sizes(batch: int, expected_ms: float) -> None:
    """latency_s is linear between measured batch sizes and extends the last segment."""
    assert cpu_profile().latency_s(batch) * 1000 == pytest.approx(expected_ms)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"latency_ms": [1.0]}, "latency_ms"),
        ({"batch_sizes": [8, 1, 64]}, "batch_sizes"),
        ({"latency_ms": [0.0, 1.0, 2.0]}, "latency_ms"),
    ],
)
def test_bad_profiles_are_rejected_with_the_field(change: dict[str, object], field: str) -> None:
    """A malformed profile raises ConfigError naming the bad field."""
    data = {**cpu_profile().to_dict(), **change}
    with pytest.raises(ConfigError) as error:
        ModelProfile.from_dict(data)
    assert error.value.field == field


def test_catalog_lists_each_hardware_with_sourced_prices() -> None:
    """Every catalog entry has memory, a speed and three prices, each with a source and date."""
    catalog = load_catalog()
    assert set(catalog) == {"CPU", "T4", "L4", "A10G", "A100", "H100", "H200"}
    for spec in catalog.values():
        assert spec.memory_bytes > 0
        for figure in (spec.relative_speed, spec.on_demand, spec.spot, spec.reserved):
            assert figure.value > 0 and figure.source and figure.date
        assert spec.spot.value < spec.on_demand.value
        assert spec.reserved.value < spec.on_demand.value
    assert catalog["T4"].price_per_hour("on_demand") == pytest.approx(0.526)


def test_derived_profile_scales_by_relative_speed_and_is_labelled() -> None:
    """A profile for unmeasured hardware is the measured one scaled by the speed ratio, marked
    estimated; unknown hardware and models too big for the memory are refused."""
    catalog = load_catalog()
    measured = cpu_profile()
    t4 = derive_profile(measured, "T4", catalog)
    ratio = catalog["T4"].relative_speed.value / catalog["CPU"].relative_speed.value
    assert t4.estimated and t4.hardware == "T4"
    assert t4.latency_s(64) == pytest.approx(measured.latency_s(64) / ratio)
    assert derive_profile(measured, "CPU", catalog) == measured
    with pytest.raises(NotFound):
        derive_profile(measured, "TPU", catalog)
    huge = profile_from_latencies("big", "CPU", {1: 1.0}, memory_bytes=10**12)
    with pytest.raises(InvalidInput) as error:
        derive_profile(huge, "T4", catalog)
    assert error.value.field == "memory_bytes"
