"""Rules of the streaming anomaly detectors in aiscale.monitor.anomaly."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import pytest

from aiscale.errors import InvalidInput
from aiscale.monitor import (
    DETECTOR_NAMES,
    detect_csv,
    make_detector,
    parse_timestamp,
    score_series,
)
from tests.data_sets import public_file

FIVE_MIN_S = 300.0
DAY = 288  # points per day at five-minute spacing


def _daily_sine(num_days: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    n = DAY * num_days
    times = [1_400_000_000.0 + i * FIVE_MIN_S for i in range(n)]
    values = [10 + 5 * math.sin(2 * math.pi * i / DAY) + rng.gauss(0, 0.5) for i in range(n)]
    return times, values


def _read_nab(name: str, max_rows: int) -> tuple[list[float], list[float]]:
    lines = public_file(f"nab/data/{name}").read_text().splitlines()[1 : max_rows + 1]
    times = [parse_timestamp(line.split(",")[0]) for line in lines]
    values = [float(line.split(",")[1]) for line in lines]
    return times, values


@pytest.mark.parametrize("name", DETECTOR_NAMES)
@pytest.mark.parametrize(
    "source",
    ["realTraffic/speed_7578.csv", "realAdExchange/exchange-4_cpm_results.csv", "synthetic"],
)
def test_score_at_row_i_does_not_depend_on_later_rows(name: str, source: str) -> None:
    """Causality: cutting the series after row i leaves the scores of rows 0..i unchanged."""
    if source == "synthetic":
        times, values = _daily_sine(2, seed=1)
        values[400] += 8.0
    else:
        times, values = _read_nab(source, 500)
    full = score_series(times, values, make_detector(name))
    for cut in (40, 150, 333, len(values) - 1):
        partial = score_series(times[: cut + 1], values[: cut + 1], make_detector(name))
        assert partial == full[: cut + 1]


def test_scores_are_in_unit_interval_and_deterministic() -> None:
    """Every score is in [0, 1], including for constant stretches, huge jumps and NaN, and the
    same stream gives the same scores."""
    times, values = _daily_sine(2, seed=2)
    values[300:360] = [7.0] * 60  # flat stretch
    values[450] = 1e12
    values[470] = -1e12
    values[500] = math.nan
    first = score_series(times, values)
    second = score_series(times, values)
    assert first == second
    assert all(0.0 <= s <= 1.0 for s in first)
    constant = score_series(times[:400], [3.0] * 400)
    assert all(0.0 <= s <= 1.0 for s in constant)


def test_quiet_on_noisy_daily_sine_after_warmup() -> None:
    """On a clean daily sine with noise, after two days of warm-up no point beats its record by
    a fifth (score 0.55: alert thresholds sit above that), and at most two tie it."""
    times, values = _daily_sine(10, seed=7)
    scores = score_series(times, values)
    assert max(scores[2 * DAY :]) < 0.55
    assert sum(s >= 0.5 for s in scores[2 * DAY :]) <= 2


def test_stuck_sensor_and_missing_daily_peak_are_found() -> None:
    """A sensor stuck at its last value, and a day whose peak is missing, each beat every score
    of the clean series within a day of their start."""
    times, values = _daily_sine(10, seed=7)
    clean_max = max(score_series(times, values)[2 * DAY :])
    stuck = values[:2500] + [values[2499]] * 200 + values[2700:]
    assert max(score_series(times, stuck)[2500 : 2500 + DAY]) > clean_max
    flat_day = values[: 7 * DAY] + [10.0 + (v - 10.0) * 0.1 for v in values[7 * DAY : 8 * DAY]]
    flat_day += values[8 * DAY :]
    assert max(score_series(times, flat_day)[7 * DAY : 8 * DAY]) > clean_max


def test_injected_spike_scores_high_at_once() -> None:
    """A spike gets a score >= 0.6 on its own row, above every score of the clean series."""
    times, values = _daily_sine(10, seed=7)
    clean_max = max(score_series(times, values)[2 * DAY :])
    values[2500] += 6.0
    scores = score_series(times, values)
    assert scores[2500] >= 0.6
    assert scores[2500] > clean_max


def test_injected_level_shift_scores_high_within_a_few_points() -> None:
    """A lasting level shift beats the record, and the clean series' maximum, within 3 points."""
    times, values = _daily_sine(10, seed=7)
    clean_max = max(score_series(times, values)[2 * DAY :])
    shifted = [v + (4.0 if i >= 2500 else 0.0) for i, v in enumerate(values)]
    scores = score_series(times, shifted)
    assert max(scores[2500:2503]) > 0.5
    assert max(scores[2500:2503]) > clean_max


def _spikes(second_height: float, refractory: int) -> list[float]:
    times, values = _daily_sine(10, seed=7)
    values[2500] += 6.0
    values[2510] += second_height
    return score_series(times, values, make_detector("default", refractory=refractory))


def test_refractory_damps_a_repeat_alert_but_not_an_escalation_or_the_first_one() -> None:
    """After a point fires, a like one within the hold scores lower than without the hold;
    a much larger one (escalation) scores as without it; the first one is never touched."""
    plain, held = _spikes(6.0, refractory=0), _spikes(6.0, refractory=25)
    assert held[2500] == plain[2500] >= 0.6
    assert held[2510] < plain[2510]
    assert held[2510] < 0.5
    plain_big, held_big = _spikes(30.0, refractory=0), _spikes(30.0, refractory=25)
    assert held_big[2510] == plain_big[2510] > 0.6
    # the hold ends: 60 points later nothing is shaped any more
    assert held[2600:2700] == plain[2600:2700]


def test_detect_csv_writes_one_scored_row_per_input_row(tmp_path: Path) -> None:
    """detect_csv keeps every row, in order, with columns timestamp,value,anomaly_score."""
    src = tmp_path / "in.csv"
    lines = ["timestamp,value"] + [
        f"2014-04-01 {h:02d}:{m:02d}:00,{math.sin(h + m / 60):.4f}"
        for h in range(24)
        for m in range(0, 60, 5)
    ]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.csv"
    report = detect_csv(src, out)
    assert (report.num_rows, report.num_scored, report.warnings()) == (288, 288, [])
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["timestamp", "value", "anomaly_score"]
    assert len(rows) == 289
    assert [r[0] for r in rows[1:]] == [line.split(",")[0] for line in lines[1:]]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows[1:])


@pytest.mark.parametrize(
    ("text", "field", "where"),
    [
        ("time,value\n2014-04-01 00:00:00,1\n", "timestamp", "line 1"),
        ("timestamp,reading\n2014-04-01 00:00:00,1\n", "value", "line 1"),
        ("", "header", "empty"),
        ("timestamp,value\n2014-04-01 00:00:00,1\nyesterday,2\n", "timestamp", "line 3"),
        ("timestamp,value\n2014-04-01 00:00:00,1\n,2\n", "timestamp", "line 3"),
        ("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00\n", "row", "line 3"),
    ],
)
def test_detect_csv_rejects_bad_input_naming_the_line(
    tmp_path: Path, text: str, field: str, where: str
) -> None:
    """A row whose time cannot be read, a short row, a missing column or an empty file raises
    InvalidInput naming the line; nothing is written. (Bad values are skipped, not errors: see
    test_anomaly_input.py.)"""
    src = tmp_path / "in.csv"
    src.write_text(text)
    out = tmp_path / "out.csv"
    with pytest.raises(InvalidInput) as info:
        detect_csv(src, out)
    assert info.value.field == field
    assert where in info.value.message
    assert not out.exists()


def test_bad_detector_names_params_and_lengths_raise_invalid_input() -> None:
    """Unknown detector names, bad parameters and mismatched series lengths are InvalidInput."""
    with pytest.raises(InvalidInput) as info:
        make_detector("no-such-detector")
    assert info.value.field == "detector"
    with pytest.raises(InvalidInput):
        make_detector("default", shape_len=1)
    with pytest.raises(InvalidInput):
        make_detector("default", no_such_param=3)
    for bad in ({"refractory": -1}, {"refractory_damping": 0.0}, {"escalation": 0.5}):
        with pytest.raises(InvalidInput):
            make_detector("default", **bad)
    with pytest.raises(InvalidInput) as info:
        score_series([0.0, 1.0], [1.0])
    assert info.value.field == "values"


def test_parse_timestamp_reads_nab_iso_and_epoch_forms() -> None:
    """NAB's format is read as UTC; ISO with offset and plain epoch seconds are accepted."""
    assert parse_timestamp("1970-01-01 00:01:00") == 60.0
    assert parse_timestamp("2011-07-01 00:00:01.000000") == parse_timestamp("2011-07-01T00:00:01")
    assert parse_timestamp("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_timestamp("1234.5") == 1234.5
    with pytest.raises(ValueError):
        parse_timestamp("not a time")


def test_old_half_life_param_still_configures_the_default_detector() -> None:
    """A monitor config written for the pre-issue-13 default (``half_life``) still validates, and
    ``half_life`` means ``record_half_life``; giving both with different values is refused."""
    from aiscale.monitor.config import AnomalySettings

    settings = AnomalySettings(params={"half_life": 500.0})
    assert settings.params == {"half_life": 500.0}
    times, values = _daily_sine(2, seed=5)
    values[450] += 6.0
    old_name = score_series(times, values, make_detector("default", half_life=500.0))
    new_name = score_series(times, values, make_detector("default", record_half_life=500.0))
    assert old_name == new_name
    assert old_name != score_series(times, values, make_detector("default"))
    with pytest.raises(InvalidInput):
        make_detector("default", half_life=500.0, record_half_life=100.0)
