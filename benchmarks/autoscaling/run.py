"""Autoscaling policies on real arrival patterns: replica-hours and SLO attainment per policy.

Usage (from the project root):
    .venv/bin/python benchmarks/autoscaling/run.py [--trace FILE ...] [--users 1000000]
        [--requests-per-user 20] [--profile benchmarks/autoscaling/minilm_cpu_profile.json]
        [--startup-s 60] [--slo-p99-ms 500] [--mode exact|aggregated|auto]
        [--policies static,reactive,kpa,predictive,oracle]
        [--json benchmarks/autoscaling/results.json] [--out benchmarks/autoscaling/RESULTS.md]

Each trace (a CSV with a ``TIMESTAMP`` column; default: both Azure LLM traces in
../shared/data/traces) becomes one day of traffic for ``--users`` users making
``--requests-per-user`` requests a day (see ``day_counts``), and every policy runs on it with
the defaults of ``aiscale.plan.planner`` (chosen from the profile and the SLO only, never
from a trace). Benchmark code: never run by the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import describe_machine  # noqa: E402

from aiscale.plan import ArrivalCounts, load_profile, read_trace_times, simulate  # noqa: E402
from aiscale.plan.planner import (  # noqa: E402
    POLICY_NAMES,
    build_policy,
    peak_replicas,
    simulation_config,
    size_replica,
)

DEFAULT_TRACES = [
    ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_code.csv",
    ROOT.parent / "shared" / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv",
]
DAY_S = 86_400.0
#: Bin of the *original* trace over which its rate is estimated before stretching.
RATE_BIN_S = 60.0
#: Exact mode handles up to this many requests within the time bound; beyond it, aggregated.
EXACT_LIMIT = 3_000_000


def day_counts(
    times_s: np.ndarray[Any, Any],
    requests_per_day: float,
    *,
    day_s: float = DAY_S,
    rate_bin_s: float = RATE_BIN_S,
    seed: int = 0,
) -> tuple[ArrivalCounts, float, float]:
    """One day of per-second Poisson counts following the trace's rate.

    The trace's rate is estimated in ``rate_bin_s`` bins of its own time (a minute: enough
    requests per bin that the estimate is the trace's pattern, not its counting noise), its
    time axis is stretched by ``time_scale = day_s / span`` (one trace minute becomes about
    25 minutes of the day), the rate is interpolated linearly between bin centres and scaled
    by ``rate_scale = requests_per_day / len(trace)``, and each second's count is drawn from a
    Poisson law of that mean: many independent users follow the trace's pattern, with the
    randomness of a population of that size (not each original request copied
    ``rate_scale`` times). Returns ``(counts, time_scale, rate_scale)``.
    """
    span = float(math.ceil(times_s[-1] / rate_bin_s) * rate_bin_s)
    num_bins = int(span // rate_bin_s)
    per_bin = np.bincount(
        np.minimum((times_s // rate_bin_s).astype(np.int64), num_bins - 1), minlength=num_bins
    ).astype(np.float64)
    time_scale = day_s / span
    rate_scale = requests_per_day / times_s.size
    centres = (np.arange(num_bins) + 0.5) * rate_bin_s * time_scale
    seconds = np.arange(int(day_s), dtype=np.float64) + 0.5
    rate = np.interp(seconds, centres, per_bin / (rate_bin_s * time_scale)) * rate_scale
    rate *= requests_per_day / rate.sum()  # the interpolation keeps the total only nearly
    rng = np.random.default_rng(seed)
    return ArrivalCounts(rng.poisson(rate).astype(np.int64), 1.0), time_scale, rate_scale


def run_trace(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    profile = load_profile(args.profile)
    sizing = size_replica(profile, args.slo_p99_ms, startup_s=args.startup_s)
    times = read_trace_times(path)
    counts, time_scale, rate_scale = day_counts(
        times, args.users * args.requests_per_user, seed=args.seed
    )
    mode = args.mode
    if mode == "auto":
        mode = "exact" if counts.num_requests <= EXACT_LIMIT else "aggregated"
    arrivals = counts.to_arrivals(seed=args.seed) if mode == "exact" else None
    rows = []
    for name in args.policies.split(","):
        policy = build_policy(name, sizing, counts, decision_interval_s=args.interval_s)
        config = simulation_config(sizing, counts, mode=mode, decision_interval_s=args.interval_s)
        started = time.perf_counter()
        result = simulate(arrivals if arrivals is not None else counts, policy, config)
        elapsed = time.perf_counter() - started
        label = "static-at-peak" if name == "static" else name
        rows.append(
            {
                "policy": label,
                "mode": result.mode,
                "replica_hours": result.replica_hours,
                "slo_attainment": result.slo_attainment,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "dropped": result.dropped,
                "requests": result.requests,
                "seconds": elapsed,
            }
        )
        print(f"  {label:15s} {json.dumps(rows[-1])}", flush=True)
    return {
        "trace": path.name,
        "users": args.users,
        "requests_per_user": args.requests_per_user,
        "trace_requests": int(times.size),
        "trace_span_s": float(times[-1]),
        "time_scale": time_scale,
        "rate_scale": rate_scale,
        "requests": counts.num_requests,
        "peak_rate_per_s": float(counts.counts.reshape(-1, 60).sum(axis=1).max() / 60.0),
        "mean_rate_per_s": counts.num_requests / DAY_S,
        "static_at_peak_replicas": peak_replicas(sizing, counts, args.interval_s),
        "sizing": {
            "max_batch_size": sizing.max_batch_size,
            "full_capacity_per_s": sizing.full_capacity_per_s,
            "capacity_per_s": sizing.capacity_per_s,
            "target_ongoing_per_replica": sizing.ongoing_at_target(),
            "startup_s": sizing.startup_s,
        },
        "rows": rows,
    }


POLICY_ORDER = ["static-at-peak", "reactive", "kpa", "predictive", "oracle"]


def verdict(rows: dict[str, dict[str, Any]], slo_target: float) -> str:
    """The issue's target on one set of rows (one trace, one mode)."""
    if "oracle" not in rows or "predictive" not in rows:
        return "not all policies ran in this mode"
    oracle, predictive = rows["oracle"], rows["predictive"]
    ratio = predictive["replica_hours"] / oracle["replica_hours"]
    meets = predictive["slo_attainment"] >= slo_target
    beats = []
    for other in ("reactive", "kpa"):
        if other not in rows:
            continue
        row = rows[other]
        better = meets and (
            row["slo_attainment"] < slo_target or predictive["replica_hours"] < row["replica_hours"]
        )
        beats.append(f"{'better than' if better else 'NOT better than'} {other}")
    is_met = meets and ratio <= 1.15 and len(beats) == 2 and "NOT" not in " ".join(beats)
    return (
        f"predictive / oracle replica-hours = {ratio:.3f}, predictive SLO attainment "
        f"{predictive['slo_attainment']:.4f}; {', '.join(beats)}: target "
        f"{'MET' if is_met else 'NOT MET'}"
    )


def merge(store: dict[str, Any], result: dict[str, Any], command: str) -> None:
    """Add one run's rows to the store (keyed by trace and users; rows by policy and mode)."""
    key = f"{result['trace']} @ {result['users']:,} users"
    entry = store.setdefault(key, {**{k: v for k, v in result.items() if k != "rows"}, "rows": {}})
    for row in result["rows"]:
        entry["rows"][f"{row['policy']}|{row['mode']}"] = {**row, "command": command}


def write_markdown(store: dict[str, Any], slo_target: float, out: Path) -> None:
    machine = describe_machine(ROOT)
    lines = [
        "# Autoscaling benchmark: replica-hours and SLO attainment per policy",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"git {machine['git_sha']}; written {machine['date']}. Each row names the command "
        "that produced it in `results.json`.",
        "",
        "**How a one-hour trace becomes a day of 1M users** (`day_counts`): the trace's",
        "arrival rate is estimated per minute of its own time; the time axis is stretched by",
        "`86400 / span` (span rounded up to whole minutes: x24.83 for code, x24.41 for conv), so",
        "one trace minute becomes about 25 minutes of the day; the rate is interpolated linearly",
        "between minute centres and multiplied by `rate_scale = users x requests_per_user /",
        "trace requests` (20,000,000 / 8,819 = x2268 for code, / 19,366 = x1033 for conv); each",
        "second's arrivals are drawn from a Poisson law of that mean (seed 0). Many independent",
        "users follow the trace's shape with the randomness of a population that size; each",
        "original request is *not* copied 2268 times (that would turn the trace's per-second",
        "counting noise into 25-second bursts of 2268 requests).",
        "",
        "**Policy defaults** (`aiscale.plan.planner`, chosen from the profile and the SLO only,",
        "never from a trace): batch <= the largest b with 2 x latency(b) + 10 ms <= SLO;",
        "planned capacity = 0.7 x full-batch throughput; reactive (Ray Serve rule) and KPA",
        "(Knative rule) target the ongoing requests one replica holds at that capacity (one",
        "replica simulated exactly at that rate, Little's law); their delays and windows are",
        "the products' defaults (Ray 30 s up / 600 s down; Knative 60 s stable / 6 s panic);",
        "predictive = seasonal-naive forecast with a trend fallback (no previous day exists",
        "here, so it runs on the 15-minute linear trend), floored by the same reactive rule;",
        "oracle = the fewest replicas knowing every future 10-second rate, at the same planned",
        "capacity, paying for start-up. Start-up 60 s (a new node plus the model); decisions",
        "every 10 s; min 1 replica; SLO: 99% of requests within 500 ms.",
        "",
    ]
    for key, result in store.items():
        s = result["sizing"]
        lines += [
            f"## {key}",
            "",
            f"{result['trace_requests']:,} requests over {result['trace_span_s']:.0f} s, "
            f"stretched x{result['time_scale']:.2f} to one day and scaled x"
            f"{result['rate_scale']:.1f} to {result['users']:,} users x "
            f"{result['requests_per_user']:g} requests/day = {result['requests']:,} requests "
            f"(mean {result['mean_rate_per_s']:.1f}/s, busiest minute "
            f"{result['peak_rate_per_s']:.1f}/s). Replica: batch <= {s['max_batch_size']}, "
            f"{s['full_capacity_per_s']:.0f}/s full, planned {s['capacity_per_s']:.0f}/s, "
            f"target {s['target_ongoing_per_replica']:.1f} ongoing, start-up "
            f"{s['startup_s']:.0f} s; static at peak = {result['static_at_peak_replicas']} "
            "replicas.",
            "",
            "| policy | mode | replica-hours | vs oracle | SLO attainment | p50 ms | p99 ms "
            "| dropped | sim s |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        rows = result["rows"]
        verdicts = []
        for mode in ("exact", "aggregated"):
            by_policy = {r["policy"]: r for r in rows.values() if r["mode"] == mode}
            if not by_policy:
                continue
            oracle_hours = by_policy.get("oracle", {}).get("replica_hours", math.nan)
            for name in POLICY_ORDER:
                if name not in by_policy:
                    continue
                row = by_policy[name]
                lines.append(
                    f"| {name} | {mode} | {row['replica_hours']:.1f} | "
                    f"{row['replica_hours'] / oracle_hours:.2f}x | {row['slo_attainment']:.4f} | "
                    f"{row['p50_ms']:.1f} | {row['p99_ms']:.0f} | {row['dropped']:,} | "
                    f"{row['seconds']:.1f} |"
                )
            verdicts.append(f"- {mode}: **{verdict(by_policy, slo_target)}**")
        lines += ["", *verdicts, ""]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, action="append", help="CSV with TIMESTAMP")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--requests-per-user", type=float, default=20.0)
    parser.add_argument(
        "--profile", type=Path, default=ROOT / "benchmarks/autoscaling/minilm_cpu_profile.json"
    )
    parser.add_argument("--startup-s", type=float, default=60.0)
    parser.add_argument("--slo-p99-ms", type=float, default=500.0)
    parser.add_argument("--slo-target", type=float, default=0.99)
    parser.add_argument("--interval-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=["exact", "aggregated", "auto"], default="auto")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES))
    parser.add_argument(
        "--json", type=Path, default=None, help="results store to update (created if missing)"
    )
    parser.add_argument("--out", type=Path, default=None, help="Markdown from the store")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing; write --out from --json"
    )
    args = parser.parse_args()
    store: dict[str, Any] = {}
    if args.json and args.json.exists():
        store = json.loads(args.json.read_text())
    command = " ".join(["python", *sys.argv])
    for path in [] if args.report_only else (args.trace or DEFAULT_TRACES):
        print(path.name, flush=True)
        result = run_trace(path, args)
        rows = {row["policy"]: row for row in result["rows"]}
        print("  " + verdict(rows, args.slo_target), flush=True)
        merge(store, result, command)
        if args.json:  # saved after each trace, so a bounded run keeps what it finished
            args.json.write_text(json.dumps(store, indent=1) + "\n")
    if args.out:
        write_markdown(store, args.slo_target, args.out)


if __name__ == "__main__":
    main()
