"""NAB (Numenta Anomaly Benchmark v1.1) scoring, re-implemented from ../shared/data/nab/SCORING.md.

What it does: given per-row anomaly scores for a set of files, the labelled windows and a cost
profile, it computes the per-row sweep weights (windows, probation period, scaled sigmoid), runs
the exhaustive threshold sweep that picks ONE threshold per profile for the whole corpus, scores
every file at that threshold and normalises against the null and perfect detectors.

What it must never do: look at the data values, or change a detector's scores. It is benchmark
code (pure, no I/O); the loading of CSV/JSON lives in ``run.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PROFILES: dict[str, tuple[float, float, float]] = {
    # name: (A_TP, A_FP, A_FN), as in profiles.json
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}

NO_DETECTION_THRESHOLD = 1.1


@dataclass(frozen=True, slots=True)
class FileCase:
    """One file to score: its anomaly scores and its windows as inclusive row-index pairs."""

    name: str
    scores: Sequence[float]
    windows: Sequence[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class FileResult:
    name: str
    raw: float
    num_tp_windows: int
    num_fn_windows: int
    num_fp_rows: int


@dataclass(frozen=True, slots=True)
class ProfileResult:
    profile: str
    threshold: float
    raw: float
    normalised: float
    files: tuple[FileResult, ...]


def scaled_sigmoid(y: float) -> float:
    """NAB's S(y) = 2 / (1 + exp(5y)) - 1 for y <= 3, and -1 beyond."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_rows(num_rows: int) -> int:
    """Rows with index below this are never scored: min(floor(0.15 N), 750)."""
    return int(min(math.floor(0.15 * num_rows), 0.15 * 5000))


def row_weights(
    num_rows: int, windows: Sequence[tuple[int, int]], a_tp: float, a_fp: float
) -> tuple[list[float], list[int]]:
    """Per-row sweep weight s_i and window id (-1 outside every window) for one file."""
    window_of = [-1] * num_rows
    for k, (left, right) in enumerate(windows):
        for i in range(left, right + 1):
            window_of[i] = k
    s_minus_1 = scaled_sigmoid(-1.0)
    weights = [0.0] * num_rows
    prev: tuple[int, int] | None = None  # (right edge, width) of the latest window seen
    for i in range(num_rows):
        k = window_of[i]
        if k >= 0:
            left, right = windows[k]
            width = right - left + 1
            weights[i] = a_tp * scaled_sigmoid(-(right - i + 1) / width) / s_minus_1
            prev = (right, width)
        elif prev is None:
            weights[i] = -a_fp
        else:
            right_p, width_p = prev
            y = (i - right_p) / max(width_p - 1, 1)
            weights[i] = a_fp * scaled_sigmoid(y)
    return weights, window_of


def _file_score(
    case: FileCase, weights: Sequence[float], window_of: Sequence[int], threshold: float,
    a_fn: float,
) -> FileResult:
    start = probation_rows(len(case.scores))
    best: dict[int, float] = {}
    fp_sum = 0.0
    num_fp = 0
    for i in range(start, len(case.scores)):
        if case.scores[i] < threshold:
            continue
        k = window_of[i]
        if k >= 0:
            best[k] = max(best.get(k, -math.inf), weights[i])
        else:
            fp_sum += weights[i]
            num_fp += 1
    scorable = [k for k, (_, right) in enumerate(case.windows) if right >= start]
    raw = fp_sum
    num_tp = 0
    for k in scorable:
        if k in best:
            raw += best[k]
            num_tp += 1
        else:
            raw -= a_fn
    return FileResult(case.name, raw, num_tp, len(scorable) - num_tp, num_fp)


def score_corpus(
    cases: Sequence[FileCase], profile: str, num_windows: int | None = None
) -> ProfileResult:
    """Sweep the threshold over the pooled scorable rows, then score every file at the best one.

    ``num_windows`` is n_win of the normalisation (default: the windows in ``cases``).
    """
    a_tp, a_fp, a_fn = PROFILES[profile]
    per_file: list[tuple[list[float], list[int]]] = []
    pooled: list[tuple[float, int, int]] = []  # (score, file index, row)
    raw = 0.0
    for f, case in enumerate(cases):
        for s in case.scores:
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"{case.name}: anomaly score {s!r} outside [0, 1]")
        weights, window_of = row_weights(len(case.scores), case.windows, a_tp, a_fp)
        per_file.append((weights, window_of))
        start = probation_rows(len(case.scores))
        raw -= a_fn * sum(1 for _, right in case.windows if right >= start)
        pooled.extend((case.scores[i], f, i) for i in range(start, len(case.scores)))
    pooled.sort(key=lambda t: -t[0])
    best_raw, best_theta = raw, NO_DETECTION_THRESHOLD
    window_value: dict[tuple[int, int], float] = {}
    j = 0
    while j < len(pooled):
        theta = pooled[j][0]
        while j < len(pooled) and pooled[j][0] == theta:
            _, f, i = pooled[j]
            weights, window_of = per_file[f]
            k = window_of[i]
            if k >= 0:
                old = window_value.get((f, k), -a_fn)
                if weights[i] > old:
                    raw += weights[i] - old
                    window_value[(f, k)] = weights[i]
            else:
                raw += weights[i]
            j += 1
        if raw > best_raw:  # strict: on ties the higher threshold (seen first) stays
            best_raw, best_theta = raw, theta
    files = tuple(
        _file_score(case, w, wo, best_theta, a_fn)
        for case, (w, wo) in zip(cases, per_file, strict=True)
    )
    total = sum(r.raw for r in files)
    n_win = num_windows if num_windows is not None else sum(len(c.windows) for c in cases)
    s_null = -a_fn * n_win
    s_perfect = a_tp * n_win
    normalised = 100.0 * (total - s_null) / (s_perfect - s_null)
    return ProfileResult(profile, best_theta, total, normalised, files)


def score_at(cases: Sequence[FileCase], profile: str, threshold: float) -> float:
    """Raw score of ``cases`` at a given threshold (no sweep): for held-out files."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    total = 0.0
    for case in cases:
        weights, window_of = row_weights(len(case.scores), case.windows, a_tp, a_fp)
        total += _file_score(case, weights, window_of, threshold, a_fn).raw
    return total


def normalise(raw: float, profile: str, num_windows: int) -> float:
    """NAB's 0-100 scale: 0 is the null detector, 100 the perfect one."""
    a_tp, _, a_fn = PROFILES[profile]
    return 100.0 * (raw + a_fn * num_windows) / ((a_tp + a_fn) * num_windows)


def windows_to_rows(
    timestamps: Sequence[str], windows: Sequence[Sequence[str]]
) -> list[tuple[int, int]]:
    """Map [start, end] timestamp windows to inclusive row indices (NAB's JSON adds '.000000')."""
    index: Mapping[str, int] = {_canonical(t): i for i, t in enumerate(timestamps)}
    rows = []
    for start, end in windows:
        rows.append((index[_canonical(start)], index[_canonical(end)]))
    return rows


def _canonical(ts: str) -> str:
    ts = ts.strip()
    if "." in ts:
        head, frac = ts.split(".", 1)
        if frac.strip("0") == "":
            return head
    return ts
