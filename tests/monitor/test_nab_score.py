"""Rules of the NAB scorer in benchmarks/anomaly/nab_score.py, on tiny constructed cases."""

from __future__ import annotations

import importlib.util
import math
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load_scorer() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "anomaly" / "nab_score.py"
    spec = importlib.util.spec_from_file_location("nab_score_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


nab = _load_scorer()
PROFILES = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]


def _cases(kind: str, seed: int = 0) -> list:  # type: ignore[type-arg]
    rng = random.Random(seed)
    specs = [("a.csv", 1000, [(400, 499)]), ("b.csv", 600, [(150, 209), (400, 459)]),
             ("c.csv", 800, [])]
    cases = []
    for name, n, windows in specs:
        if kind == "perfect":
            scores = [0.0] * n
            for left, _ in windows:
                scores[left] = 1.0
        elif kind == "null":
            scores = [0.5] * n
        else:
            scores = [rng.random() for _ in range(n)]
        cases.append(nab.FileCase(name, scores, windows))
    return cases


@pytest.mark.parametrize("profile", PROFILES)
def test_perfect_detector_scores_100_and_null_detector_scores_0(profile: str) -> None:
    """A score of 1 on each window's first row gives 100; a constant score gives 0."""
    assert nab.score_corpus(_cases("perfect"), profile).normalised == pytest.approx(100.0)
    null = nab.score_corpus(_cases("null"), profile)
    assert null.normalised == pytest.approx(0.0)
    assert null.threshold == nab.NO_DETECTION_THRESHOLD


def test_random_detector_scores_low() -> None:
    """Random scores stay far below a useful detector (and never above 50)."""
    for seed in range(3):
        assert nab.score_corpus(_cases("random", seed), "standard").normalised < 50.0


def test_probation_sigmoid_and_weights_follow_scoring_md() -> None:
    """Probation is min(floor(0.15 N), 750); S(y) values and the per-row weights match the spec."""
    assert nab.probation_rows(1000) == 150
    assert nab.probation_rows(100_000) == 750
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.848284, abs=1e-6)
    assert nab.scaled_sigmoid(3.5) == -1.0
    weights, window_of = nab.row_weights(20, [(5, 9)], 1.0, 0.11)
    assert weights[5] == pytest.approx(1.0)  # first row of the window is worth A_TP
    assert weights[0] == pytest.approx(-0.11)  # before any window: full FP cost
    # just after the window: y = (10 - 9) / (5 - 1), cost A_FP * S(0.25), about half of A_FP
    assert weights[10] == pytest.approx(0.11 * (2 / (1 + math.exp(1.25)) - 1))
    assert weights[19] == pytest.approx(0.11 * nab.scaled_sigmoid(10 / 4))
    assert -0.11 < weights[19] < weights[10] < 0.0 < weights[9] < weights[5]
    assert window_of[7] == 0 and window_of[10] == -1


def test_late_detection_and_false_positive_cost_what_the_spec_says() -> None:
    """One detection mid-window plus one early false positive gives S(-0.5)/S(-1) - A_FP raw."""
    scores = [0.0] * 1000
    scores[450] = 0.9  # window 400..499: y = -(499 - 450 + 1) / 100 = -0.5
    scores[200] = 0.9  # before the window: -A_FP
    result = nab.score_corpus([nab.FileCase("a.csv", scores, [(400, 499)])], "standard")
    expected = nab.scaled_sigmoid(-0.5) / nab.scaled_sigmoid(-1.0) - 0.11
    assert result.threshold == 0.9
    assert result.raw == pytest.approx(expected)
    assert result.normalised == pytest.approx(100 * (expected + 1) / 2)
