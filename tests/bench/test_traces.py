"""Trace loading (the real Azure trace, scaling, cutting, bad files) and Poisson arrivals."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from aiscale.bench.traces import load_arrivals, poisson_arrivals
from aiscale.errors import InvalidInput
from tests.data_sets import public_file, synthetic_trace_times, write_trace


@pytest.fixture(scope="module")
def azure() -> list[float]:
    return load_arrivals(public_file("traces/AzureLLMInferenceTrace_conv.csv"))


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace file shaped like the Azure conversation trace, made here."""
    return write_trace(tmp_path_factory.mktemp("trace") / "conv.csv", synthetic_trace_times())


def test_azure_trace_loads_every_row_sorted_from_zero(azure: list[float]) -> None:
    """19,366 arrivals over 58.4 minutes, ascending, starting at 0 (as the data README says)."""
    assert len(azure) == 19366
    assert azure[0] == 0.0
    assert azure == sorted(azure)
    assert azure[-1] / 60 == pytest.approx(58.36, abs=0.01)
    # 7-digit fractions survive: the first gap is 18:15:50.9951690 - 18:15:46.6805900
    assert azure[1] == pytest.approx(4.314579, abs=1e-6)


@pytest.mark.parametrize(
    ("rate_scale", "time_scale", "span_factor"),
    [(2.0, 1.0, 0.5), (1.0, 3.0, 3.0), (4.0, 2.0, 0.5), (0.5, 1.0, 2.0)],
)
def test_scaling_keeps_the_count_and_scales_the_span(
    trace: Path, rate_scale: float, time_scale: float, span_factor: float
) -> None:
    """Every gap is multiplied by time_scale / rate_scale; no arrival is lost or added."""
    azure = load_arrivals(trace)
    scaled = load_arrivals(trace, rate_scale=rate_scale, time_scale=time_scale)
    assert len(scaled) == len(azure)
    assert scaled[-1] == pytest.approx(azure[-1] * span_factor, rel=1e-12)
    assert scaled[1000] == pytest.approx(azure[1000] * span_factor, rel=1e-12)


def test_duration_cuts_the_scaled_replay(trace: Path) -> None:
    """rate_scale 10 and a 60 s cut keep exactly the arrivals of the first 600 s of the trace."""
    azure = load_arrivals(trace)
    cut = load_arrivals(trace, rate_scale=10.0, duration_s=60.0)
    assert len(cut) == sum(1 for t in azure if t < 600.0)
    assert 2000 < len(cut) < 5000 and cut[-1] < 60.0


def test_numeric_timestamps_are_seconds(tmp_path: Path) -> None:
    """A TIMESTAMP column of plain numbers is read as seconds; order of rows does not matter."""
    trace = tmp_path / "t.csv"
    trace.write_text("id,timestamp\n1,10.5\n2,10.0\n3,12.0\n")
    assert load_arrivals(trace) == [0.0, 0.5, 2.0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2023-11-16 18:15:46.1,1\n", "no TIMESTAMP column"),
        ("TIMESTAMP,x\n2023-11-16 18:15:46.1,1\nyesterday,2\n", "line 3: cannot parse"),
        ("TIMESTAMP,x\n2023-11-16 25:15:46.1,1\n", "line 2: cannot parse"),
        ("TIMESTAMP,x\n2023-11-16 18:15:46,1\n,2\n", "line 3: cannot parse"),
        ("TIMESTAMP,x\n", "has no rows"),
        ("", "is empty"),
    ],
)
def test_bad_trace_files_raise_invalid_input(tmp_path: Path, content: str, message: str) -> None:
    """A bad file fails with InvalidInput on field 'trace', naming the problem and line."""
    trace = tmp_path / "bad.csv"
    trace.write_text(content)
    with pytest.raises(InvalidInput, match=message) as info:
        load_arrivals(trace)
    assert info.value.field == "trace"


def test_missing_trace_file_raises_invalid_input(tmp_path: Path) -> None:
    """A path that does not exist fails clearly, not with a raw OSError."""
    with pytest.raises(InvalidInput, match="cannot read trace"):
        load_arrivals(tmp_path / "missing.csv")


@pytest.mark.parametrize("kwargs", [{"rate_scale": 0.0}, {"time_scale": -1.0}, {"duration_s": 0}])
def test_non_positive_scales_are_rejected(tmp_path: Path, kwargs: dict[str, float]) -> None:
    """Scales and the duration must be > 0."""
    with pytest.raises(InvalidInput, match="must be > 0"):
        load_arrivals(tmp_path / "unused.csv", **kwargs)


def test_poisson_arrivals_have_the_rate_and_are_reproducible() -> None:
    """1000 req/s for 10 s: about 10,000 arrivals in [0, 10), sorted; same seed, same list."""
    first = poisson_arrivals(1000.0, 10.0, random.Random(42))
    assert first == poisson_arrivals(1000.0, 10.0, random.Random(42))
    assert first != poisson_arrivals(1000.0, 10.0, random.Random(43))
    assert len(first) == pytest.approx(10_000, rel=0.05)
    assert first == sorted(first) and first[0] > 0 and first[-1] < 10.0


@pytest.mark.parametrize(("rate", "duration_s"), [(0.0, 1.0), (-5.0, 1.0), (1.0, 0.0)])
def test_poisson_arrivals_reject_non_positive_arguments(rate: float, duration_s: float) -> None:
    """Rate and duration must be > 0."""
    with pytest.raises(InvalidInput, match="must be > 0"):
        poisson_arrivals(rate, duration_s, random.Random(0))
