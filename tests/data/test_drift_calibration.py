"""Statistical behaviour of detect_drift: calibrated under no drift, powerful under large shifts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from aiscale.data import adjust_p_values, detect_drift

ALPHA = 0.05
TRIALS = 100
#: Allowed false-alarm rate over TRIALS: alpha plus three binomial standard errors.
RATE_LIMIT = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


def _sample(kind: str, n: int, rng: np.random.Generator, shift: bool = False) -> Any:
    """One column of ``kind``; ``shift`` gives the drifted version."""
    if kind == "numeric":
        return rng.normal(1.0 if shift else 0.0, 1.0, size=n)
    if kind == "categorical":
        p = [0.2, 0.2, 0.2, 0.4] if shift else [0.4, 0.3, 0.2, 0.1]
        return list(rng.choice(["a", "b", "c", "d"], size=n, p=p))
    if kind == "boolean":
        return [bool(v) for v in rng.random(n) < (0.6 if shift else 0.3)]
    if kind == "embedding":
        center = np.zeros(8)
        center[0] = 1.5 if shift else 0.0
        return rng.normal(size=(n, 8)) + center
    words = ["alpha", "beta", "gamma", "delta"]
    lengths = rng.integers(8, 20, size=n) if shift else rng.integers(2, 10, size=n)
    return [" ".join(rng.choice(words, size=int(k))) for k in lengths]


@pytest.mark.parametrize(
    ("kind", "n"),
    [("numeric", 40), ("numeric", 300), ("categorical", 60), ("categorical", 400),
     ("boolean", 30), ("boolean", 300), ("embedding", 25), ("text", 25)],
)  # fmt: skip
def test_no_drift_false_alarm_rate_stays_at_alpha(kind: str, n: int) -> None:
    """With reference and current drawn from one distribution, drift is reported in at most
    alpha (+3 SE) of trials, for every kind and at small and moderate sample sizes."""
    rng = np.random.default_rng(1234)
    alarms = 0
    for _ in range(TRIALS):
        report = detect_drift(
            {"x": _sample(kind, n, rng)},
            {"x": _sample(kind, n, rng)},
            kinds={"x": kind},
            alpha=ALPHA,
            rng=rng,
            num_permutations=200,
        )
        alarms += report.is_drift
    assert alarms / TRIALS <= RATE_LIMIT


@pytest.mark.parametrize("kind", ["numeric", "categorical", "boolean", "embedding", "text"])
def test_large_shift_is_detected(kind: str) -> None:
    """A large shift of each kind is flagged as drift with a tiny p-value."""
    rng = np.random.default_rng(7)
    report = detect_drift(
        {"x": _sample(kind, 200, rng)},
        {"x": _sample(kind, 200, rng, shift=True)},
        kinds={"x": kind},
        rng=rng,
    )
    assert report.is_drift
    assert report.feature("x").p_value < 0.005


def test_correction_keeps_family_wise_false_alarms_at_alpha_with_20_features() -> None:
    """Under no drift in 20 features, uncorrected tests raise a report-level alarm most of the
    time, while Benjamini–Hochberg and Bonferroni keep it at alpha (+3 SE)."""
    rng = np.random.default_rng(99)
    alarms = {"none": 0, "bh": 0, "bonferroni": 0}
    for _ in range(TRIALS):
        ref = {f"f{i}": rng.normal(size=40) for i in range(20)}
        cur = {f"f{i}": rng.normal(size=40) for i in range(20)}
        raw = detect_drift(ref, cur, correction="none")
        alarms["none"] += raw.is_drift
        alarms["bh"] += detect_drift(ref, cur, correction="bh").is_drift
        # Same raw p-values, so Bonferroni is checked on them without a third full run.
        bonferroni = adjust_p_values([f.p_value for f in raw.features], "bonferroni")
        alarms["bonferroni"] += min(bonferroni) <= ALPHA
    assert alarms["none"] / TRIALS > 0.3
    assert alarms["bh"] / TRIALS <= RATE_LIMIT
    assert alarms["bonferroni"] / TRIALS <= RATE_LIMIT
    assert alarms["bonferroni"] <= alarms["bh"] < alarms["none"]


def test_correction_still_finds_one_drifted_feature_among_20() -> None:
    """One strongly drifted feature among 20 survives both corrections, the others do not."""
    rng = np.random.default_rng(5)
    ref = {f"f{i}": rng.normal(size=200) for i in range(20)}
    cur = {f"f{i}": rng.normal(size=200) for i in range(20)}
    cur["f3"] = rng.normal(1.0, 1.0, size=200)
    for correction in ("bh", "bonferroni"):
        assert detect_drift(ref, cur, correction=correction).drifted == ("f3",)


def test_embedding_drift_detected_through_the_callers_embedder() -> None:
    """Text goes through the caller's embedder when one is given, and MMD on its vectors
    detects a topic change that leaves lengths unchanged."""
    topics = {"cat": np.eye(4)[0], "dog": np.eye(4)[1], "car": np.eye(4)[2]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([topics[t.split()[0]] + 0.1 * len(t.split()) for t in texts])

    rng = np.random.default_rng(3)
    ref = [f"{rng.choice(['cat', 'dog'])} sat here" for _ in range(60)]
    cur = [f"{rng.choice(['car', 'dog'])} sat here" for _ in range(60)]
    with_embedder = detect_drift({"t": ref}, {"t": cur}, kinds={"t": "text"}, embed=embed)
    features_only = detect_drift({"t": ref}, {"t": cur}, kinds={"t": "text"})
    assert with_embedder.feature("t").test == "mmd_rbf_embedded_text"
    assert with_embedder.is_drift
    assert features_only.feature("t").test == "mmd_rbf_text_features"
    assert not features_only.is_drift
