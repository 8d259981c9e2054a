"""Drift detection: does the current window of production data differ from a reference?

``detect_drift`` runs one two-sample test per column, chosen by the column's kind:

- numeric: Kolmogorov–Smirnov; effect sizes Wasserstein (raw and in sd), PSI on reference
  quantile bins, mean shift in sd, sd ratio;
- categorical and boolean: chi-squared on the 2 × K count table, rare categories pooled,
  Fisher's exact test for a small 2 × 2; effect sizes total variation, PSI, Cramér's V and
  the share of rows in categories the reference never had (those categories are listed);
- embedding: MMD² with an RBF kernel (median-heuristic bandwidth) and a permutation
  p-value; effect sizes unbiased MMD² and centroid distance;
- text: embedded with the caller's ``embed`` and tested as embeddings, or, without one,
  the same MMD test on simple per-text features (length, tokens, character mix).

Model outputs are columns like any other (name them in ``output_columns`` so the report says
which side drifted). The raw p-values of all columns are corrected together
(Benjamini–Hochberg by default, Bonferroni on request), so with no drift anywhere the chance
that the *report* says drift stays at ``alpha``.

This module must never do I/O, read a clock or use global randomness: the random generator
for permutation tests is passed in, and the embedder is the caller's function.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aiscale.data.drift_multivariate import (
    DEFAULT_MAX_N,
    DEFAULT_NUM_PERMUTATIONS,
    centroid_distance,
    mmd_permutation_test,
    standardize_pooled,
    text_features,
)
from aiscale.data.drift_univariate import UnivariateResult, compare_categorical, compare_numeric
from aiscale.data.drift_values import (
    KINDS,
    MIN_SAMPLES,
    Column,
    categorical_values,
    check_tables,
    embedding_values,
    infer_kind,
    numeric_values,
    text_values,
)
from aiscale.errors import InvalidInput

CORRECTIONS = ("bh", "bonferroni", "none")

#: Turns a batch of texts into an ``(n, d)`` array of embeddings (e.g. the default model).
Embedder = Callable[[list[str]], Any]


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    """The drift verdict for one column (an input feature or a model output)."""

    name: str
    kind: str
    role: str
    """``"input"`` or ``"output"``."""
    test: str
    statistic: float
    p_value: float
    adjusted_p_value: float
    effect_sizes: Mapping[str, float]
    is_drift: bool
    n_ref: int
    """Non-null reference values tested (before any subsampling, see ``notes``)."""
    n_cur: int
    new_categories: tuple[str, ...] = ()
    """Categories seen in the current window but never in the reference (reported always)."""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "effect_sizes": dict(self.effect_sizes),
            "is_drift": self.is_drift,
            "n_ref": self.n_ref,
            "n_cur": self.n_cur,
            "new_categories": list(self.new_categories),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Per-column results and the overall verdict of one reference-vs-current comparison."""

    features: tuple[FeatureDrift, ...]
    alpha: float
    correction: str

    @property
    def is_drift(self) -> bool:
        """True when any column drifted after correction."""
        return any(f.is_drift for f in self.features)

    @property
    def drifted(self) -> tuple[str, ...]:
        """Names of the drifted columns, in report order."""
        return tuple(f.name for f in self.features if f.is_drift)

    def feature(self, name: str) -> FeatureDrift:
        """The result for column ``name``; raises ``KeyError`` for an unknown one."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "is_drift": self.is_drift,
            "alpha": self.alpha,
            "correction": self.correction,
            "drifted": list(self.drifted),
            "features": [f.to_dict() for f in self.features],
        }

    def to_json(self) -> str:
        """The report as a JSON document (strict JSON: no NaN or infinity)."""
        return json.dumps(self.to_dict(), allow_nan=False, sort_keys=False)


def detect_drift(
    reference: Mapping[str, Column],
    current: Mapping[str, Column],
    *,
    kinds: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    correction: str = "bh",
    rng: np.random.Generator | random.Random | None = None,
    output_columns: Collection[str] = (),
    embed: Embedder | None = None,
    num_permutations: int = DEFAULT_NUM_PERMUTATIONS,
    max_n: int = DEFAULT_MAX_N,
    min_samples: int = MIN_SAMPLES,
) -> DriftReport:
    """Compare ``current`` with ``reference`` column by column.

    Both are column mappings (name → values, one value per row, ``None`` or NaN for null)
    with the same column names. ``kinds`` names each column's kind (one of
    :data:`~aiscale.data.drift_values.KINDS`); columns missing from it are inferred with
    :func:`infer_kind`. Nulls are dropped before numeric, text and embedding tests and are a
    category of their own for categorical and boolean columns (so a rise in nulls shows).

    ``rng`` draws MMD subsamples and permutations; pass a seeded ``numpy`` Generator or
    ``random.Random``. ``None`` means a fixed seed, so results are reproducible.

    Raises ``InvalidInput`` (naming the column in ``field``) for empty or mismatched tables,
    an unknown kind, values that do not fit the kind, or fewer than ``min_samples`` non-null
    values on either side.
    """
    if not 0.0 < alpha < 1.0:
        raise InvalidInput(f"alpha must be in (0, 1), got {alpha}", field="alpha")
    if correction not in CORRECTIONS:
        raise InvalidInput(
            f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}",
            field="correction",
        )
    if num_permutations < 1 or max_n < 2 or min_samples < 2:
        raise InvalidInput("num_permutations ≥ 1, max_n ≥ 2 and min_samples ≥ 2 are required")
    check_tables(reference, current, min_samples)
    kinds = dict(kinds or {})
    for name, kind in kinds.items():
        if name not in reference:
            raise InvalidInput(f"kinds names unknown column {name!r}", field=f"kinds.{name}")
        if kind not in KINDS:
            raise InvalidInput(
                f"kind of {name!r} must be one of {', '.join(KINDS)}, got {kind!r}",
                field=f"kinds.{name}",
            )
    for name in output_columns:
        if name not in reference:
            raise InvalidInput(f"output column {name!r} is not in the tables", field=name)
    generator = _generator(rng)

    raw: list[tuple[str, str, UnivariateResult, int, int]] = []
    for name in reference:
        kind = kinds.get(name) or infer_kind(name, reference[name])
        result, n_ref, n_cur = _test_column(
            name,
            kind,
            reference[name],
            current[name],
            rng=generator,
            embed=embed,
            num_permutations=num_permutations,
            max_n=max_n,
            min_samples=min_samples,
        )
        raw.append((name, kind, result, n_ref, n_cur))

    adjusted = adjust_p_values([r.p_value for _, _, r, _, _ in raw], correction)
    features = tuple(
        FeatureDrift(
            name=name,
            kind=kind,
            role="output" if name in output_columns else "input",
            test=result.test,
            statistic=result.statistic,
            p_value=result.p_value,
            adjusted_p_value=adj,
            effect_sizes=dict(result.effect_sizes),
            is_drift=adj <= alpha,
            n_ref=n_ref,
            n_cur=n_cur,
            new_categories=result.new_categories,
            notes=result.notes,
        )
        for (name, kind, result, n_ref, n_cur), adj in zip(raw, adjusted, strict=True)
    )
    return DriftReport(features=features, alpha=alpha, correction=correction)


def adjust_p_values(p_values: Sequence[float], correction: str) -> list[float]:
    """Adjusted p-values for a family of tests, in the input order.

    ``bh``: Benjamini–Hochberg step-up (controls the false discovery rate, and the chance of
    any false alarm when nothing drifted). ``bonferroni``: p × m (controls that chance under
    any dependence). ``none``: unchanged. Adjusted values are capped at 1.
    """
    m = len(p_values)
    if correction == "none" or m == 0:
        return [float(p) for p in p_values]
    if correction == "bonferroni":
        return [min(1.0, float(p) * m) for p in p_values]
    if correction != "bh":
        raise InvalidInput(f"unknown correction {correction!r}", field="correction")
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 1.0
    for rank in range(m, 0, -1):  # from the largest p-value down: a running minimum
        i = order[rank - 1]
        running = min(running, float(p_values[i]) * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def _test_column(
    name: str,
    kind: str,
    ref_values: Column,
    cur_values: Column,
    *,
    rng: np.random.Generator,
    embed: Embedder | None,
    num_permutations: int,
    max_n: int,
    min_samples: int,
) -> tuple[UnivariateResult, int, int]:
    """Run the kind's test on one column; returns the result and the tested sample sizes."""
    if kind == "numeric":
        ref_num = numeric_values(name, "reference", ref_values, min_samples)
        cur_num = numeric_values(name, "current", cur_values, min_samples)
        return compare_numeric(ref_num, cur_num), ref_num.size, cur_num.size
    if kind in ("categorical", "boolean"):
        ref_cat = categorical_values(name, "reference", ref_values, kind, min_samples)
        cur_cat = categorical_values(name, "current", cur_values, kind, min_samples)
        return compare_categorical(ref_cat, cur_cat), len(ref_cat), len(cur_cat)
    if kind == "embedding":
        ref_emb = embedding_values(name, "reference", ref_values, min_samples)
        cur_emb = embedding_values(name, "current", cur_values, min_samples)
        if ref_emb.shape[1] != cur_emb.shape[1]:
            raise InvalidInput(
                f"column {name!r}: reference embeddings have {ref_emb.shape[1]} dimensions, "
                f"current ones {cur_emb.shape[1]}",
                field=name,
            )
        return _mmd(ref_emb, cur_emb, "mmd_rbf", rng, num_permutations, max_n)
    # text
    ref_text = text_values(name, "reference", ref_values, min_samples)
    cur_text = text_values(name, "current", cur_values, min_samples)
    if embed is not None:
        ref_emb = _embed(name, "reference", embed, ref_text)
        cur_emb = _embed(name, "current", embed, cur_text)
        return _mmd(ref_emb, cur_emb, "mmd_rbf_embedded_text", rng, num_permutations, max_n)
    ref_feat, cur_feat = standardize_pooled(text_features(ref_text), text_features(cur_text))
    return _mmd(ref_feat, cur_feat, "mmd_rbf_text_features", rng, num_permutations, max_n)


def _mmd(
    ref: NDArray[np.float64],
    cur: NDArray[np.float64],
    test: str,
    rng: np.random.Generator,
    num_permutations: int,
    max_n: int,
) -> tuple[UnivariateResult, int, int]:
    res = mmd_permutation_test(ref, cur, rng=rng, num_permutations=num_permutations, max_n=max_n)
    notes = [f"rbf bandwidth {res.bandwidth:.4g} (median heuristic)"]
    if res.n_ref_used < ref.shape[0] or res.n_cur_used < cur.shape[0]:
        notes.append(f"subsampled to {res.n_ref_used} reference and {res.n_cur_used} current rows")
    result = UnivariateResult(
        test=test,
        statistic=res.statistic,
        p_value=res.p_value,
        effect_sizes={
            "mmd2_unbiased": res.mmd2_unbiased,
            "centroid_distance": centroid_distance(ref, cur),
        },
        notes=tuple(notes),
    )
    return result, ref.shape[0], cur.shape[0]


def _embed(name: str, side: str, embed: Embedder, texts: list[str]) -> NDArray[np.float64]:
    vectors = np.asarray(embed(texts), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise InvalidInput(
            f"column {name!r}: the embedder returned shape {vectors.shape} for {len(texts)} "
            f"{side} texts; expected ({len(texts)}, d)",
            field=name,
        )
    if not np.all(np.isfinite(vectors)):
        raise InvalidInput(f"column {name!r}: the embedder returned non-finite values", field=name)
    return vectors


def _generator(rng: np.random.Generator | random.Random | None) -> np.random.Generator:
    """A numpy Generator from the caller's generator (never the global one)."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    raise InvalidInput(
        f"rng must be a numpy Generator or random.Random, got {type(rng).__name__}", field="rng"
    )
