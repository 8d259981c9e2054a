"""Forecast error of aiscale's SeasonalForecaster against seasonal-naive baselines.

Usage (from the project root):
    .venv/bin/python benchmarks/forecast/run.py [--traces ../shared/data/traces] [--days 21]
        [--out benchmarks/forecast/RESULTS.md]

The Azure LLM traces are about an hour long, so each is turned into weeks of 5-minute arrival
counts, the way the autoscaler's issue stretches them (``aiscale.plan.traffic.scale_times``'s
``time_scale``):

- ``day`` stretch: the trace's arrival times are multiplied by ``86400 / span`` so the hour
  becomes one day; its counts per 5-minute bin are the daily profile ``c[slot]`` (288 slots).
- ``week`` stretch: times multiplied by ``604800 / span``; the hour becomes one week and its
  counts per bin are a weekly profile (2016 slots) with no repeating daily shape.

Day ``d`` of the evaluated series has rate ``rate_scale * c[slot] * weekly(d) * 1.01**d * u_d``
per bin (``day`` stretch only: ``weekly`` = 0.7 on days 5 and 6 of each week, else 1; ``u_d``:
lognormal day factor, sigma 0.1; ``week`` stretch: ``1.01**d * u_d`` only) and counts drawn
from a Poisson law with that mean (numpy seed 0). Forecasts are made causally after every bin;
the first 7 days are warm-up and the rest is scored at horizons of 1 bin (5 min: reactive
scaling), 12 bins (1 h: a cold start plus margin) and 72 bins (6 h: capacity planning).

Baselines, scored on the same bins: seasonal naive with a one-day lag and with a one-week
lag (the same clock time a day / a week before). Their intervals are built like aiscale's:
empirical quantiles of their own past log1p errors (last 600), so coverage compares methods,
not interval recipes. aiscale runs with its defaults (``ForecastConfig(step_s=300)``); the
defaults were chosen before and while looking at these results (the trend is off because it
raised the error on every series here), so treat them as in-sample.
Benchmark code: it is never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402

from aiscale.monitor.forecast import ForecastConfig, SeasonalForecaster  # noqa: E402
from aiscale.plan.traffic import read_trace_times  # noqa: E402

STEP_S = 300.0
BINS_PER_DAY = 288
DAY_S = 86_400.0
WEEK_S = 7 * DAY_S
HORIZONS = (1, 12, 72)
COVERAGES = (0.8, 0.95)
WARMUP_DAYS = 7
DEFAULT_TRACES = ROOT.parent / "shared" / "data" / "traces"
TRACES = ("AzureLLMInferenceTrace_code.csv", "AzureLLMInferenceTrace_conv.csv")


def stretched_profile(times_s: np.ndarray, period_s: float) -> np.ndarray:
    """Counts per 5-minute bin after stretching the trace's span to ``period_s``."""
    span = math.ceil(float(times_s[-1]) + 1e-9)
    stretched = times_s * (period_s / span)
    num = round(period_s / STEP_S)
    index = np.minimum((stretched // STEP_S).astype(np.int64), num - 1)
    return np.bincount(index, minlength=num).astype(np.float64)


def make_series(profile: np.ndarray, stretch: str, days: int, rate_scale: float,
                seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    day_factor = rng.lognormal(0.0, 0.1, days) * 1.01 ** np.arange(days)
    if stretch == "day":
        weekly = np.array([0.7 if d % 7 in (5, 6) else 1.0 for d in range(days)])
        mean = np.concatenate([profile * weekly[d] * day_factor[d] for d in range(days)])
    else:
        tiled = np.tile(profile, math.ceil(days / 7))[: days * BINS_PER_DAY]
        mean = tiled * np.repeat(day_factor, BINS_PER_DAY)
    return rng.poisson(mean * rate_scale).astype(np.float64)


@dataclass
class Score:
    """Errors of one method at one horizon over the scored bins."""

    abs_pct: list[float] = field(default_factory=list)
    abs_err: float = 0.0
    actual_sum: float = 0.0
    num: int = 0
    num_under: int = 0
    covered: dict[float, int] = field(default_factory=lambda: {c: 0 for c in COVERAGES})

    def add(self, actual: float, point: float, bounds: dict[float, tuple[float, float]]) -> None:
        self.num += 1
        if actual > 0:
            self.abs_pct.append(abs(point - actual) / actual)
        self.abs_err += abs(point - actual)
        self.actual_sum += actual
        self.num_under += point < actual
        for c, (lo, hi) in bounds.items():
            self.covered[c] += lo <= actual <= hi

    def row(self) -> dict[str, float]:
        return {"mape_pct": 100 * float(np.mean(self.abs_pct)),
                "wmape_pct": 100 * self.abs_err / max(self.actual_sum, 1e-9),
                "under_rate": self.num_under / self.num,
                **{f"coverage_{round(c * 100)}": self.covered[c] / self.num for c in COVERAGES}}


def _quantile_bounds(errors: deque[float], point: float) -> dict[float, tuple[float, float]]:
    if len(errors) < 30:
        return {c: (-math.inf, math.inf) for c in COVERAGES}  # not scored as a miss or a hit
    ordered = np.sort(np.fromiter(errors, dtype=np.float64))
    out = {}
    for c in COVERAGES:
        lo, hi = np.quantile(ordered, [(1 - c) / 2, (1 + c) / 2])
        out[c] = (max(0.0, math.expm1(math.log1p(point) + lo)),
                  math.expm1(math.log1p(point) + hi))
    return out


def run_naive(series: np.ndarray, lag: int) -> dict[int, Score]:
    """Seasonal naive: the forecast for bin k is bin k - lag (needs k - lag <= origin)."""
    scores = {h: Score() for h in HORIZONS}
    errors = deque(maxlen=600)  # log1p errors of this baseline, known at the forecast origin
    first_scored = WARMUP_DAYS * BINS_PER_DAY
    pending: dict[int, list[tuple[int, float, dict[float, tuple[float, float]]]]] = {}
    for k, x in enumerate(series):
        if k >= lag:
            errors.append(math.log1p(x) - math.log1p(series[k - lag]))
        for h, point, bounds in pending.pop(k, []):
            if k >= first_scored:
                scores[h].add(float(x), point, bounds)
        for h in HORIZONS:
            target = k + h
            if h <= lag and target - lag >= 0 and target < len(series):
                point = float(series[target - lag])
                pending.setdefault(target, []).append((h, point, _quantile_bounds(errors, point)))
    return scores


def run_aiscale(series: np.ndarray, config: ForecastConfig) -> dict[int, Score]:
    scores = {h: Score() for h in HORIZONS}
    f = SeasonalForecaster(config)
    first_scored = WARMUP_DAYS * BINS_PER_DAY
    pending: dict[int, list[tuple[int, float, dict[float, tuple[float, float]]]]] = {}
    for k, x in enumerate(series):
        for h, point, bounds in pending.pop(k, []):
            if k >= first_scored:
                scores[h].add(float(x), point, bounds)
        f.update(k * STEP_S, float(x))
        if k + 1 < first_scored:
            continue  # forecasts made before the scored span are not needed
        fcs = {c: f.forecast(max(HORIZONS) * STEP_S, coverage=c) for c in COVERAGES}
        for h in HORIZONS:
            if k + h < len(series):
                p = {c: fc.points[h - 1] for c, fc in fcs.items()}
                point = p[COVERAGES[0]].count
                pending.setdefault(k + h, []).append(
                    (h, point, {c: (q.lower, q.upper) for c, q in p.items()}))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = parser.parse_args()
    started = time.perf_counter()
    config = ForecastConfig(step_s=STEP_S)
    methods: dict[str, Callable[[np.ndarray], dict[int, Score]]] = {
        "aiscale seasonal": lambda s: run_aiscale(s, config),
        "naive 1 day": lambda s: run_naive(s, BINS_PER_DAY),
        "naive 1 week": lambda s: run_naive(s, 7 * BINS_PER_DAY),
    }
    results: list[dict[str, object]] = []
    for trace in TRACES:
        times = read_trace_times(args.traces / trace)
        for stretch, period_s in (("day", DAY_S), ("week", WEEK_S)):
            profile = stretched_profile(times, period_s)
            for rate_scale in (1.0, 100.0):
                series = make_series(profile, stretch, args.days, rate_scale)
                for method, fn in methods.items():
                    scores = fn(series)
                    for h, sc in scores.items():
                        results.append({"trace": trace.split("_")[1].removesuffix(".csv"),
                                        "stretch": stretch, "rate_scale": rate_scale,
                                        "mean_per_bin": float(series.mean()),
                                        "method": method, "horizon_min": h * STEP_S / 60,
                                        "num_scored": sc.num, **sc.row()})
                print(f"{trace} {stretch} x{rate_scale:g} done "
                      f"({time.perf_counter() - started:.1f} s)", flush=True)
    elapsed = time.perf_counter() - started
    machine = describe_machine(ROOT)
    command = "benchmarks/forecast/run.py " + " ".join(sys.argv[1:])
    (args.out.parent / "results.json").write_text(json.dumps(
        {"machine": machine, "command": command, "seconds": elapsed, "config": str(config),
         "results": results}, indent=1))
    write_markdown(args.out, results, machine, command, elapsed, config, args.days)
    print(f"wrote {args.out} in {elapsed:.1f} s")


def write_markdown(out: Path, results: list[dict[str, object]], machine: dict[str, object],
                   command: str, elapsed: float, config: ForecastConfig, days: int) -> None:
    lines = [
        "# Forecast benchmark (issue 7)", "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{float(str(machine['memory_gb'])):.0f} GB RAM, {machine['platform']}",
        f"- versions: Python {machine['python']}, numpy {np.__version__}; "
        f"aiscale commit {machine['git_sha']}",
        f"- command: `.venv/bin/python {command.strip()}` ({elapsed:.1f} s)",
        f"- date: {machine['date']}",
        f"- forecaster: `{config}`",
        f"- data: each trace stretched to a day or a week, {days} days of 5-min Poisson counts "
        "(see the run.py docstring for the exact construction); first 7 days warm-up, "
        "the rest scored.", "",
        "MAPE over bins with arrivals; wMAPE = sum |error| / sum actual; under = share of bins "
        "forecast below the actual (under-provisioning risk); cov80 / cov95 = share of actuals "
        "inside the 80 % / 95 % interval.", "",
        "| trace | stretch | mean/bin | method | horizon | MAPE % | wMAPE % | under | cov80 | "
        "cov95 |", "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['trace']} | {r['stretch']} | {float(str(r['mean_per_bin'])):.0f} | "
            f"{r['method']} | {float(str(r['horizon_min'])):g} min | "
            f"{float(str(r['mape_pct'])):.1f} | {float(str(r['wmape_pct'])):.1f} | "
            f"{float(str(r['under_rate'])):.2f} | {float(str(r['coverage_80'])):.2f} | "
            f"{float(str(r['coverage_95'])):.2f} |")
    lines += ["", "## Against seasonal-naive (computed from the table above)", "",
              "Ratios of aiscale's error to the better seasonal-naive baseline (the one with "
              "the lower wMAPE on the same bins; below 1: aiscale is better), and the "
              "under-forecast rate (share of bins forecast below the actual) of both.", "",
              "| trace | stretch | mean/bin | horizon | better naive | MAPE ratio | "
              "wMAPE ratio | under: aiscale | under: naive | aiscale cov80 | aiscale cov95 |",
              "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    keyed = {(r["trace"], r["stretch"], r["rate_scale"], r["horizon_min"], r["method"]): r
             for r in results}

    def number(row: dict[str, object], key: str) -> float:
        return float(str(row[key]))

    for (trace, stretch, scale, horizon, method), r in keyed.items():
        if method != "aiscale seasonal":
            continue
        naive_name = min(("naive 1 day", "naive 1 week"), key=lambda m: number(
            keyed[(trace, stretch, scale, horizon, m)], "wmape_pct"))
        naive = keyed[(trace, stretch, scale, horizon, naive_name)]
        lines.append(
            f"| {trace} | {stretch} | {number(r, 'mean_per_bin'):.0f} | "
            f"{float(str(horizon)):g} min | {naive_name} | "
            f"{number(r, 'mape_pct') / number(naive, 'mape_pct'):.2f} | "
            f"{number(r, 'wmape_pct') / number(naive, 'wmape_pct'):.2f} | "
            f"{number(r, 'under_rate'):.2f} | {number(naive, 'under_rate'):.2f} | "
            f"{number(r, 'coverage_80'):.2f} | {number(r, 'coverage_95'):.2f} |")
    lines += ["", "## Caveats", "",
              "- `day` stretch: the only real shape is one hour of each trace, so every day "
              "has the same profile (plus Poisson noise, a weekend factor, growth and a "
              "day-level factor). That flatters any method that learns a daily profile.",
              "- `week` stretch: no daily repetition at all, and the week repeats exactly "
              "(up to noise), which is the seasonal-naive-1-week baseline's best case.",
              "- The code trace is very bursty: at 5-minute bins of the stretched day, more "
              "than half of the 288 daily slots are empty, so MAPE (bins with arrivals only) "
              "is dominated by quiet bins; wMAPE is the steadier number.",
              "- Intervals come from each method's own past errors (the last 2016 bins for "
              "aiscale, 600 forecasts for the baselines); coverage above nominal means wider "
              "intervals than needed."]
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
