"""Run anomaly detectors on the NAB files in ../shared/data/nab and write RESULTS.md.

Usage (from the project root):
    .venv/bin/python benchmarks/anomaly/run.py [--data ../shared/data/nab]
        [--out benchmarks/anomaly/RESULTS.md]

Scores aiscale's default detector and, with the same scorer on the same files in the same run,
NAB's ``random`` and ``windowedGaussian`` baselines. Benchmark code: it is never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import RandomDetector, WindowedGaussianDetector  # noqa: E402
from nab_score import PROFILES, FileCase, ProfileResult, score_corpus, windows_to_rows  # noqa: E402

from aiscale.monitor.anomaly import StreamingDetector, make_detector, parse_timestamp  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "nab"


@dataclass(frozen=True, slots=True)
class Series:
    name: str  # path relative to data/, as in windows.json
    timestamps: list[str]
    times_s: list[float]
    values: list[float]
    windows: list[tuple[int, int]]


def load_corpus(data_dir: Path) -> list[Series]:
    windows = json.loads((data_dir / "windows.json").read_text())
    corpus = []
    for name in sorted(windows):
        lines = (data_dir / "data" / name).read_text().splitlines()
        stamps, values = [], []
        for line in lines[1:]:
            if line.strip():
                t, v = line.split(",")
                stamps.append(t)
                values.append(float(v))
        times = [parse_timestamp(t) for t in stamps]
        corpus.append(Series(name, stamps, times, values, windows_to_rows(stamps, windows[name])))
    return corpus


def run_detector(
    corpus: list[Series], factory: Callable[[str], StreamingDetector]
) -> tuple[list[FileCase], float]:
    """Scores of a fresh detector per file; returns the cases and the seconds spent."""
    cases = []
    start = time.perf_counter()
    for s in corpus:
        det = factory(s.name)
        scores = [det.update(t, v) for t, v in zip(s.times_s, s.values, strict=True)]
        cases.append(FileCase(s.name, scores, s.windows))
    return cases, time.perf_counter() - start


def evaluate(cases: list[FileCase]) -> dict[str, ProfileResult]:
    return {p: score_corpus(cases, p) for p in PROFILES}


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return sha + (" (working tree has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no commit yet)"


def detectors() -> dict[str, Callable[[str], StreamingDetector]]:
    return {
        "aiscale default": lambda name: make_detector("default"),
        "windowed Gaussian": lambda name: WindowedGaussianDetector(),
        # NAB's random detector: one seeded generator per file
        "random": lambda name: RandomDetector(random.Random(f"nab-random:{name}")),
    }


# Neighbours of the default parameters, for the sensitivity and leave-one-category-out check.
VARIANTS: dict[str, dict[str, float]] = {
    "default (history=2000, shape_len=8)": {},
    "shape_len=6": {"shape_len": 6},
    "shape_len=12": {"shape_len": 12},
    "history=1000": {"history": 1000},
}


def _category_raw(result: ProfileResult) -> dict[str, float]:
    raw: dict[str, float] = {}
    for f in result.files:
        category = f.name.split("/")[0]
        raw[category] = raw.get(category, 0.0) + f.raw
    return raw


def sensitivity(corpus: list[Series]) -> list[str]:
    """Standard-profile score of each variant, and a leave-one-category-out choice among them."""
    by_variant: dict[str, dict[str, float]] = {}
    lines = ["## Sensitivity (standard profile) and leave-one-category-out check", "",
             "| variant | NAB standard | raw per category |", "| --- | ---: | --- |"]
    for label, params in VARIANTS.items():
        cases, _ = run_detector(corpus, lambda name, p=params: make_detector("default", **p))
        result = score_corpus(cases, "standard")
        by_variant[label] = _category_raw(result)
        cats = ", ".join(f"{c} {v:+.2f}" for c, v in by_variant[label].items())
        lines.append(f"| {label} | {result.normalised:.1f} | {cats} |")
    lines += ["", "Held-out category: the variant that scores best on the other categories "
              "(threshold swept on all files, as NAB does), and its raw score on the held-out one.",
              "", "| held out | chosen variant | held-out raw | default's held-out raw |",
              "| --- | --- | ---: | ---: |"]
    default = next(iter(VARIANTS))
    for category in by_variant[default]:
        chosen = max(by_variant, key=lambda v: sum(
            r for c, r in by_variant[v].items() if c != category))
        lines.append(f"| {category} | {chosen} | {by_variant[chosen][category]:+.2f} | "
                     f"{by_variant[default][category]:+.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-sensitivity", action="store_true",
                        help="skip the parameter-neighbour runs (about four more detector runs)")
    args = parser.parse_args()
    corpus = load_corpus(args.data)
    num_rows = sum(len(s.values) for s in corpus)
    num_windows = sum(len(s.windows) for s in corpus)
    results: dict[str, dict[str, ProfileResult]] = {}
    seconds: dict[str, float] = {}
    for label, factory in detectors().items():
        cases, seconds[label] = run_detector(corpus, factory)
        results[label] = evaluate(cases)
        std = results[label]["standard"]
        print(f"{label:20s} standard {std.normalised:6.1f}  ({seconds[label]:.1f} s)", flush=True)
    extra = [] if args.no_sensitivity else sensitivity(corpus)
    write_report(args, corpus, num_rows, num_windows, results, seconds, extra)


def write_report(
    args: argparse.Namespace, corpus: list[Series], num_rows: int, num_windows: int,
    results: dict[str, dict[str, ProfileResult]], seconds: dict[str, float], extra: list[str],
) -> None:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# NAB evaluation of aiscale's streaming anomaly detector",
        "",
        "- command: `" + " ".join([".venv/bin/python", "benchmarks/anomaly/run.py", *sys.argv[1:]])
        + "`",
        f"- git: {_git_sha()}",
        f"- machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs visible, "
        f"{platform.platform()}",
        f"- versions: Python {platform.python_version()}, numpy {np.__version__}",
        f"- data: {len(corpus)} NAB v1.1 files ({num_rows} rows, {num_windows} windows) from "
        "`../shared/data/nab`; scorer `benchmarks/anomaly/nab_score.py` (SCORING.md), "
        "normalised with n_win = the windows of these files",
        "",
        "## NAB score (0 = null detector, 100 = perfect), threshold swept per profile",
        "",
        "| detector | standard | reward_low_FP_rate | reward_low_FN_rate | θ* (standard) | "
        "seconds (one core) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, res in results.items():
        lines.append(
            f"| {label} | {res['standard'].normalised:.1f} | "
            f"{res['reward_low_FP_rate'].normalised:.1f} | "
            f"{res['reward_low_FN_rate'].normalised:.1f}"
            f" | {res['standard'].threshold:.4f} | {seconds[label]:.1f} |"
        )
    lines += [
        "",
        "Published NAB scoreboard (all 58 files, standard profile, not this subset): ARTime 74.9, "
        "Numenta HTM 70.1, CAD OSE 69.9, random cut forest 51.7, windowed Gaussian 39.7, "
        "random 16.8. Only the rows above were measured in this run, on these 24 files.",
        "",
        "## Per file, standard profile (raw score; windows hit / missed; false-positive rows)",
        "",
        "| file | windows | " + " | ".join(results) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in results) + " |",
    ]
    for k, s in enumerate(corpus):
        cells = []
        for res in results.values():
            f = res["standard"].files[k]
            cells.append(f"{f.raw:+.2f} ({f.num_tp_windows}/{f.num_fn_windows}; {f.num_fp_rows})")
        lines.append(f"| {s.name} | {len(s.windows)} | " + " | ".join(cells) + " |")
    lines += ["", *extra] if extra else []
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
