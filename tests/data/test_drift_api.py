"""detect_drift's contract: kinds, report fields and JSON, corrections, and bad inputs."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from scipy import stats

from aiscale.data import adjust_p_values, detect_drift, infer_kind
from aiscale.errors import InvalidInput


def _tables(n: int = 50, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    rng = np.random.default_rng(seed)

    def table() -> dict[str, Any]:
        return {
            "age": [float(v) for v in rng.normal(40, 10, size=n)],
            "country": [str(v) for v in rng.choice(["fr", "de", "it"], size=n)],
            "is_member": [bool(v) for v in rng.random(n) < 0.5],
            "emb": [list(v) for v in rng.normal(size=(n, 4))],
            "score": [float(v) for v in rng.random(n)],
        }

    return table(), table()


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1, 2.5, None, 3], "numeric"),
        (np.arange(20), "numeric"),
        ([True, False, None], "boolean"),
        (["a", "b", "a", "b", None, "a"], "categorical"),
        ([f"a much longer sentence number {i}" for i in range(20)], "text"),
        ([f"id{i}" for i in range(20)], "text"),
        ([[0.1, 0.2], (0.3, 0.4)], "embedding"),
        (np.zeros((5, 3)), "embedding"),
    ],
)
def test_kind_is_inferred_from_values(values: object, kind: str) -> None:
    """bool → boolean, numbers → numeric, short repeated strings → categorical, long or
    mostly distinct strings → text, vectors → embedding."""
    assert infer_kind("c", values) == kind  # type: ignore[arg-type]


def test_report_has_one_entry_per_column_with_its_test_and_role() -> None:
    """Each column gets the test of its kind; output columns are marked as outputs; the report
    is strict JSON with the documented fields."""
    ref, cur = _tables()
    report = detect_drift(ref, cur, output_columns=["score"], rng=np.random.default_rng(1))
    tests = {f.name: (f.kind, f.test, f.role) for f in report.features}
    assert tests == {
        "age": ("numeric", "ks_2samp", "input"),
        "country": ("categorical", "chi2_contingency", "input"),
        "is_member": ("boolean", "chi2_contingency", "input"),
        "emb": ("embedding", "mmd_rbf", "input"),
        "score": ("numeric", "ks_2samp", "output"),
    }
    age = report.feature("age")
    assert {"wasserstein", "wasserstein_sd", "psi", "mean_shift_sd", "std_ratio"} <= set(
        age.effect_sizes
    )
    assert age.n_ref == age.n_cur == 50
    assert age.adjusted_p_value >= age.p_value
    doc = json.loads(report.to_json())
    assert doc["is_drift"] == report.is_drift
    assert [f["name"] for f in doc["features"]] == list(ref)
    assert set(doc["features"][0]) >= {
        "name", "kind", "test", "statistic", "p_value", "adjusted_p_value", "effect_sizes",
        "is_drift", "n_ref", "n_cur",
    }  # fmt: skip


def test_output_drift_is_reported_on_the_output_column() -> None:
    """A shift only in a model output column is found and attributed to that column."""
    ref, cur = _tables(n=200)
    assert not detect_drift(ref, cur).feature("score").is_drift
    cur["score"] = [v + 0.5 for v in cur["score"]]
    report = detect_drift(ref, cur, output_columns=["score"])
    assert report.feature("score").is_drift
    assert report.feature("score").role == "output"
    assert report.feature("age").role == "input"


def test_new_category_is_reported_even_when_rare() -> None:
    """A category absent from the reference is listed with its share of current rows."""
    ref = {"c": ["a", "b"] * 100}
    cur = {"c": ["a", "b"] * 99 + ["zz", "a"]}
    feature = detect_drift(ref, cur).feature("c")
    assert feature.new_categories == ("zz",)
    assert feature.effect_sizes["new_category_rate"] == pytest.approx(0.005)
    assert not feature.is_drift


def test_frequent_new_category_is_drift() -> None:
    """A new category in 10% of current rows is drift."""
    rng = np.random.default_rng(2)
    ref = {"c": list(rng.choice(["a", "b", "c"], size=500))}
    cur_values = list(rng.choice(["a", "b", "c"], size=450)) + ["new"] * 50
    feature = detect_drift(ref, {"c": cur_values}).feature("c")
    assert feature.is_drift
    assert feature.new_categories == ("new",)


def test_rise_in_nulls_of_a_categorical_column_is_drift() -> None:
    """Nulls are a category of their own, so a jump in missing values shows as drift."""
    ref = {"c": ["a", "b"] * 100}
    cur = {"c": ["a", "b"] * 70 + [None] * 60}
    assert detect_drift(ref, cur).feature("c").is_drift


def test_same_seed_gives_the_same_report_and_random_random_is_accepted() -> None:
    """Permutation p-values depend only on the generator passed in."""
    ref, cur = _tables()
    one = detect_drift(ref, cur, rng=random.Random(4)).to_json()
    two = detect_drift(ref, cur, rng=random.Random(4)).to_json()
    assert one == two


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_scipy(seed: int) -> None:
    """BH adjusted p-values equal scipy's false_discovery_control; Bonferroni is p·m capped."""
    p = np.random.default_rng(seed).random(12) ** 3
    assert adjust_p_values(list(p), "bh") == pytest.approx(
        list(stats.false_discovery_control(p, method="bh"))
    )
    assert adjust_p_values(list(p), "bonferroni") == pytest.approx(list(np.minimum(1, p * 12)))


def _bad(**changes: object) -> tuple[dict[str, Any], dict[str, Any]]:
    ref: dict[str, Any] = {"x": [float(i) for i in range(20)], "c": ["a", "b"] * 10}
    cur: dict[str, Any] = {"x": [float(i) for i in range(20)], "c": ["a", "b"] * 10}
    for key, value in changes.items():
        side, column = key.split("__")
        (ref if side == "ref" else cur)[column] = value
    return ref, cur


@pytest.mark.parametrize(
    ("ref", "cur", "kwargs", "message", "field"),
    [
        ({}, {"x": [1.0]}, {}, "reference has no columns", "reference"),
        ({"x": []}, {"x": []}, {}, "at least 10 rows are needed", "reference"),
        ({"x": [1.0] * 20}, {"y": [1.0] * 20}, {}, "same columns", "x"),
        (*_bad(cur__x=[1.0] * 5, cur__c=["a"] * 5), {}, "at least 10 are needed", "x"),
        (*_bad(cur__x=[1.0] * 4 + [None] * 16), {}, "has 4 non-null values; at least 10", "x"),
        (*_bad(cur__x=[1.0] * 19 + ["oops"]), {}, "row 19 holds 'oops'", "x"),
        (*_bad(cur__x=[1.0] * 19 + [float("inf")]), {}, "infinite", "x"),
        (*_bad(ref__x=[1.0] * 19), {}, "differ in length", "reference"),
        (*_bad(), {"kinds": {"x": "vector"}}, "kind of 'x' must be one of", "kinds.x"),
        (*_bad(), {"kinds": {"nope": "numeric"}}, "unknown column", "kinds.nope"),
        (*_bad(), {"alpha": 1.5}, "alpha must be in (0, 1)", "alpha"),
        (*_bad(), {"correction": "holm"}, "correction must be one of", "correction"),
        (*_bad(), {"output_columns": ["y"]}, "output column 'y'", "y"),
        (*_bad(ref__x=[[1.0]] * 20, cur__x=[[1.0, 2.0]] * 20), {}, "dimensions", "x"),
        (*_bad(ref__x=[None] * 20), {}, "only nulls", "x"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(
    ref: dict[str, Any], cur: dict[str, Any], kwargs: dict[str, Any], message: str,
    field: str,
) -> None:  # fmt: skip
    """Empty, mismatched, too small or ill-typed samples and bad options raise InvalidInput
    naming the field and, for short samples, how many values are needed."""
    with pytest.raises(InvalidInput) as info:
        detect_drift(ref, cur, **kwargs)
    assert message in info.value.message
    assert info.value.field == field


def test_embedder_returning_the_wrong_shape_is_rejected() -> None:
    """An embedder that returns fewer vectors than texts is an InvalidInput, not a crash."""
    texts = [f"sentence {i} with words" for i in range(20)]
    with pytest.raises(InvalidInput, match="embedder returned shape"):
        detect_drift({"t": texts}, {"t": texts}, embed=lambda ts: np.zeros((1, 3)))
