"""Data-quality expectations: building them from plain data, and checking rows against them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from aiscale.data import ColumnExpectation, Expectations, check_quality
from aiscale.errors import ConfigError, InvalidInput

SPEC: dict[str, Any] = {
    "columns": {
        "age": {"type": "integer", "min_value": 0, "max_value": 120, "max_null_rate": 0.25},
        "country": {"type": "string", "allowed_values": ["fr", "de"]},
        "prompt": {"type": "string", "min_length": 1, "max_length": 10},
        "emb": {"type": "embedding", "dim": 3, "min_norm": 0.99, "max_norm": 1.01},
        "note": {"is_required": False},
    },
    "max_duplicate_rate": 0.0,
    "extra_columns": "forbid",
}

GOOD: dict[str, Any] = {"age": 30, "country": "fr", "prompt": "hello", "emb": [1.0, 0.0, 0.0]}


def _rows(*changes: dict[str, Any]) -> list[dict[str, Any]]:
    """Four distinct good rows, then one row per change applied to a fresh good row."""
    rows = [dict(GOOD, age=GOOD["age"] + i) for i in range(4)]
    return rows + [{**GOOD, "age": 90 + i, **change} for i, change in enumerate(changes)]


def test_expectations_from_dict_builds_a_frozen_config() -> None:
    """from_dict maps keys onto the frozen dataclasses, in order."""
    exp = Expectations.from_dict(SPEC)
    assert [name for name, _ in exp.columns] == ["age", "country", "prompt", "emb", "note"]
    assert dict(exp.columns)["age"] == ColumnExpectation(
        type="integer", min_value=0.0, max_value=120.0, max_null_rate=0.25
    )
    assert dict(exp.columns)["country"].allowed_values == ("fr", "de")
    with pytest.raises(AttributeError):
        exp.max_examples = 3  # type: ignore[misc]


def test_good_data_passes_every_check() -> None:
    """Rows that meet every expectation give a passing report with no examples."""
    report = check_quality(_rows(), Expectations.from_dict(SPEC))
    assert report.is_passed
    assert report.num_rows == 4
    assert all(not c.examples for c in report.checks)
    assert "table.duplicate_rate" in {c.name for c in report.checks}


@pytest.mark.parametrize(
    ("change", "failing", "example"),
    [
        ({"age": -1}, "age.range", "-1"),
        ({"age": 121.5}, "age.type", "121.5"),
        ({"age": True}, "age.type", "True"),
        ({"country": "us"}, "country.allowed_values", "'us'"),
        ({"country": 3}, "country.type", "3"),
        ({"prompt": ""}, "prompt.length", "''"),
        ({"prompt": "x" * 11}, "prompt.length", "'xxxxxxxxxxx'"),
        ({"emb": [1.0, 1.0, 0.0]}, "emb.norm", "1.4142135623730951"),
        ({"emb": [1.0, 0.0]}, "emb.type", "[1.0, 0.0]"),
        ({"emb": np.array([0.0, 2.0, 0.0])}, "emb.norm", "2.0"),
        ({"extra": 1}, "table.extra_columns", None),
    ],
)
def test_one_bad_value_fails_exactly_its_check(
    change: dict[str, Any], failing: str, example: str | None
) -> None:
    """A single offending row fails the matching expectation only, and is shown as an example
    with its row index."""
    report = check_quality(_rows(change), Expectations.from_dict(SPEC))
    assert [c.name for c in report.failed] == [failing]
    check = report.check(failing)
    if example is not None:
        assert [(e.row, e.value) for e in check.examples] == [(4, example)]
        assert check.num_failing == 1
        assert check.observed == pytest.approx(1 / check.num_checked)


@pytest.mark.parametrize(("num_nulls", "is_passed"), [(0, True), (1, True), (2, False)])
def test_null_rate_threshold(num_nulls: int, is_passed: bool) -> None:
    """The null rate (None or NaN) passes while at most max_null_rate (here 1 in 4 ≤ 0.25)."""
    rows = _rows()
    for row, null in zip(rows, [None, float("nan")][:num_nulls], strict=False):
        row["age"] = null
    report = check_quality(rows, Expectations.from_dict(SPEC))
    check = report.check("age.null_rate")
    assert check.observed == pytest.approx(num_nulls / len(rows))
    assert check.is_passed is is_passed


@pytest.mark.parametrize(("num_dups", "limit", "is_passed"), [(1, 0.15, True), (2, 0.15, False)])
def test_duplicate_rate_threshold(num_dups: int, limit: float, is_passed: bool) -> None:
    """Rows equal to an earlier row on the chosen columns count as duplicates."""
    rows = [{"a": i, "b": "x"} for i in range(8)] + [{"a": 0, "b": "x"}] * num_dups
    exp = Expectations.from_dict({"max_duplicate_rate": limit})
    check = check_quality(rows, exp).check("table.duplicate_rate")
    assert check.num_failing == num_dups
    assert check.is_passed is is_passed
    assert check.examples[0].value == "same as row 0"
    by_b = Expectations.from_dict({"max_duplicate_rate": limit, "duplicate_columns": ["b"]})
    assert check_quality(rows, by_b).check("table.duplicate_rate").num_failing == 7 + num_dups


def test_missing_required_column_fails_and_optional_one_does_not() -> None:
    """A required column absent from the data fails 'present'; an optional one is skipped."""
    rows = [{k: v for k, v in GOOD.items() if k != "prompt"}]
    report = check_quality(rows, Expectations.from_dict(SPEC))
    assert [c.name for c in report.failed] == ["prompt.present"]
    assert not any(c.name.startswith("note.") for c in report.checks)


def test_examples_are_bounded_and_rows_equal_columns() -> None:
    """At most max_examples offending rows are listed; a column mapping checks the same as
    the equivalent rows; the report is strict JSON."""
    rows = [{"x": -i} for i in range(1, 50)]
    exp = Expectations.from_dict({"columns": {"x": {"min_value": 0}}, "max_examples": 3})
    report = check_quality(rows, exp)
    assert len(report.check("x.range").examples) == 3
    assert report.check("x.range").num_failing == 49
    assert check_quality({"x": [r["x"] for r in rows]}, exp) == report
    assert json.loads(report.to_json())["failed"] == ["x.range"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"colums": {}}, "quality.colums"),
        ({"columns": {"age": {"rnage": [0, 1]}}}, "quality.columns.age.rnage"),
        ({"columns": {"age": {"type": "int"}}}, "quality.columns.age.type"),
        ({"columns": {"age": {"max_null_rate": 1.5}}}, "quality.columns.age.max_null_rate"),
        ({"columns": {"age": {"min_value": "0"}}}, "quality.columns.age.min_value"),
        ({"columns": {"age": {"min_value": 5, "max_value": 1}}}, "quality.columns.age.min_value"),
        (
            {"columns": {"age": {"type": "integer", "min_length": 1}}},
            "quality.columns.age.min_length",
        ),
        ({"columns": {"e": {"dim": -3}}}, "quality.columns.e.dim"),
        ({"columns": {"e": {"allowed_values": [[1]]}}}, "quality.columns.e.allowed_values"),
        ({"columns": {"e": "string"}}, "quality.columns.e"),
        ({"columns": {"e": {"is_required": "yes"}}}, "quality.columns.e.is_required"),
        ({"extra_columns": "ignore"}, "quality.extra_columns"),
        ({"duplicate_columns": "a"}, "quality.duplicate_columns"),
        ({"max_examples": -1}, "quality.max_examples"),
    ],
)  # fmt: skip
def test_bad_config_is_rejected_with_its_dotted_path(spec: dict[str, Any], field: str) -> None:
    """Unknown keys and bad values raise ConfigError naming the full dotted path."""
    with pytest.raises(ConfigError) as info:
        Expectations.from_dict(spec, path="quality")
    assert info.value.field == field


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "no rows"),
        ({"a": [1, 2], "b": [1]}, "differ in length"),
        ([{"a": 1}, 5], "row 1 is a int"),
        ("text", "list of row mappings"),
    ],
)
def test_bad_data_is_rejected(data: Any, message: str) -> None:
    """Data of the wrong shape, or no rows, is an InvalidInput with a clear message."""
    with pytest.raises(InvalidInput, match=message):
        check_quality(data, Expectations())
