"""Rules of the anomaly detectors' input layer (aiscale.monitor.anomaly_input): real metric
streams as they come, the same in ``aiscale detect`` and in the live monitor."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aiscale.cli import app
from aiscale.errors import InvalidInput
from aiscale.monitor import detect_csv, make_detector, score_series

DAY = 288
START = 1_400_000_000.0


def _series(n: int = 3 * DAY, seed: int = 3) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    times = [START + 300.0 * i for i in range(n)]
    values = [10 + 5 * math.sin(2 * math.pi * i / DAY) + rng.gauss(0, 0.5) for i in range(n)]
    values[(2 * DAY + 17) % n] += 9.0
    return times, values


def _stamp(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("timestamp,value\n" + "".join(f"{t},{v}\n" for t, v in rows))
    return path


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.mark.parametrize("bad", ["", "nan", "NaN", "inf", "-inf", "n/a", "12,5x"])
def test_bad_values_are_skipped_in_place_without_shifting_other_scores(
    tmp_path: Path, bad: str
) -> None:
    """A missing, NaN, infinite or non-numeric value keeps its row with an empty score, is
    counted and named, and the other rows score exactly as if it were not there."""
    times, values = _series()
    holes = {5, 400, 2 * DAY + 3}
    rows = [(_stamp(t), ('"' + bad + '"') if i in holes else repr(v))
            for i, (t, v) in enumerate(zip(times, values, strict=True))]
    out = tmp_path / "out.csv"
    report = detect_csv(_write(tmp_path / "in.csv", rows), out)
    written = _read(out)
    assert len(written) == len(values) == report.num_rows
    assert report.num_scored == len(values) - len(holes)
    assert [i for i, r in enumerate(written) if r[2] == ""] == sorted(holes)
    kept = [i for i in range(len(values)) if i not in holes]
    expected = score_series([times[i] for i in kept], [values[i] for i in kept])
    assert [float(written[i][2]) for i in kept] == pytest.approx(expected, abs=1e-6)
    (warning,) = report.warnings()
    assert "skipped 3 row(s)" in warning and "row(s) 7, 402" in warning  # file line numbers


def test_clock_step_back_is_scored_in_arrival_order_and_reported(tmp_path: Path) -> None:
    """A timestamp 55 minutes earlier than the previous one (NAB's machine temperature) is
    scored in arrival order: every row keeps its score, equal to scoring the values in file
    order, and the report names the row and the size of the step."""
    times, values = _series()
    times = [t - 3300.0 if i >= 500 else t for i, t in enumerate(times)]
    out = tmp_path / "out.csv"
    report = detect_csv(_write(tmp_path / "in.csv", [(_stamp(t), repr(v)) for t, v in
                                                     zip(times, values, strict=True)]), out)
    scores = [float(r[2]) for r in _read(out)]
    assert scores == pytest.approx(score_series(times, values), abs=1e-6)
    assert report.counts.num_steps_back == 1
    assert report.counts.step_back_rows == (502,)
    assert report.counts.largest_step_back_s == 3000.0  # 55 min back, 5 min after the last
    assert "earlier than the previous row" in report.warnings()[0]


def test_unsorted_file_and_repeated_timestamps_are_counted_not_reordered(tmp_path: Path) -> None:
    """Shuffled rows are scored in the order given (no silent sort) and each step back is
    counted; a repeated timestamp is scored and counted too."""
    times, values = _series(n=200)
    order = list(range(200))
    random.Random(1).shuffle(order)
    rows = [(_stamp(times[i]), repr(values[i])) for i in order]
    rows.append(rows[-1])
    out = tmp_path / "out.csv"
    report = detect_csv(_write(tmp_path / "in.csv", rows), out)
    written = _read(out)
    assert [r[0] for r in written] == [t for t, _ in rows]
    num_back = sum(1 for a, b in zip(order, order[1:], strict=False) if b < a)
    assert report.counts.num_steps_back == num_back > 50
    assert report.counts.num_repeated_times == 1
    assert report.num_scored == 201


def test_gap_is_scored_and_reported(tmp_path: Path) -> None:
    """A six-hour outage in a five-minute series is reported as a gap; every row is scored."""
    times, values = _series()
    times = [t + 6 * 3600.0 if i >= 600 else t for i, t in enumerate(times)]
    report = detect_csv(_write(tmp_path / "in.csv", [(_stamp(t), repr(v)) for t, v in
                                                     zip(times, values, strict=True)]),
                        tmp_path / "out.csv")
    assert report.counts.gap_rows == (602,)
    assert report.num_scored == len(values)


def test_one_row_header_only_and_empty_files(tmp_path: Path) -> None:
    """One row gives one scored row; a header-only file gives a header-only output; an empty
    file is an InvalidInput naming the header."""
    out = tmp_path / "out.csv"
    one = detect_csv(_write(tmp_path / "one.csv", [("2014-04-01 00:00:00", "3")]), out)
    assert (one.num_rows, one.num_scored) == (1, 1)
    assert _read(out) == [["2014-04-01 00:00:00", "3", "0.000000"]]
    none = detect_csv(_write(tmp_path / "none.csv", []), out)
    assert (none.num_rows, none.warnings()) == (0, [])
    assert out.read_text().splitlines() == ["timestamp,value,anomaly_score"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InvalidInput) as info:
        detect_csv(tmp_path / "empty.csv", tmp_path / "never.csv")
    assert info.value.field == "header"


def test_live_detector_treats_input_like_detect_csv() -> None:
    """``make_detector`` (what the live monitor calls) skips a NaN with score 0 and no effect
    on later scores, scores a stepped-back clock in arrival order, and counts both."""
    times, values = _series()
    live = make_detector()
    fed = []
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if i == 300:
            assert live.update(t, math.nan) == 0.0
        fed.append(live.update(t - (600.0 if i == 301 else 0.0), v))
    stepped = [t - (600.0 if i == 301 else 0.0) for i, t in enumerate(times)]
    assert fed == score_series(stepped, values)
    counts = live.counts()
    assert (counts.num_skipped, counts.num_steps_back, counts.num_scored) == (1, 1, len(values))


def test_detect_command_reports_skips_and_clock_steps_without_traceback(tmp_path: Path) -> None:
    """`aiscale detect` on messy input exits 0, writes every row and warns on stderr."""
    times, values = _series(n=400)
    rows = [(_stamp(t), repr(v)) for t, v in zip(times, values, strict=True)]
    rows[10] = (rows[10][0], "")
    rows[200] = (rows[150][0], rows[200][1])
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(app, ["detect", str(_write(tmp_path / "in.csv", rows)),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "scored 399 of 400 rows" in result.output
    assert "skipped 1 row(s)" in result.output and "earlier than the previous row" in result.output
    assert len(_read(out)) == 400
