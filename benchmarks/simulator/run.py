"""The simulator against a real server (fidelity), its speed on a full day, and the
aggregated mode's error against the exact one.

Usage (from the project root; do not pin it with taskset: the servers need both cores, the
speed part pins itself to one core after the fidelity part):
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        .venv/bin/python benchmarks/simulator/run.py [--quick] [--repeats N] \
        [--out benchmarks/simulator/RESULTS.md]

Fidelity (``fidelity.py``), per case: ``aiscale profile minilm`` (model alone, then the
server terms through a real server), then the trace replayed ``--replays`` times against a
fresh ``aiscale serve minilm`` with ``aiscale bench --trace``, then ``aiscale simulate`` on the
same arrivals with the profile just measured: back to back, so that profile and replay see
the same machine.
Speed: one day of 1,000,000 users x 20 requests (the synthetic ``daily`` shape, about 22
million requests) in the aggregated mode, per policy; the exact mode's rate on a smaller run.
Error: ``compare_modes`` on one hour of smaller traffic, per policy. Benchmark code: never run
by the tests; records machine, versions and load averages with the numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiscale.plan import ArrivalCounts, compare_modes, load_profile, simulate  # noqa: E402
from aiscale.plan.planner import build_policy, simulation_config, size_replica, traffic_for  # noqa: E402
from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.simulator.fidelity import fidelity_section  # noqa: E402

PROFILE = ROOT / "benchmarks" / "autoscaling" / "minilm_cpu_profile.json"
POLICIES = ("static", "reactive", "kpa", "predictive", "oracle")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter runs")
    parser.add_argument("--repeats", type=int, default=None, help="fidelity repeats [2; quick 1]")
    parser.add_argument(
        "--replays", type=int, default=3, help="real runs per fidelity case, back to back [3]"
    )
    parser.add_argument("--skip-fidelity", action="store_true")
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="profile for the speed part when the fidelity part is skipped",
    )  # fmt: skip
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    machine = describe_machine(ROOT)
    lines = [
        "# Simulator: fidelity against a real server, speed, aggregated-vs-exact error",
        "",
        f"Command: `{' '.join(sys.argv)}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared; Python "
        f"{machine['python']}; git {machine['git_sha']}; {machine['date']}.",
    ]
    profile_path = args.profile or PROFILE
    if not args.skip_fidelity:
        repeats = args.repeats if args.repeats is not None else (1 if args.quick else 2)
        section, measured = fidelity_section(
            ROOT, quick=args.quick, repeats=repeats, replays=args.replays
        )
        lines += section
        profile_path = measured
    if not args.skip_speed:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        lines += speed_sections(profile_path, quick=args.quick)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def speed_sections(profile_path: Path, *, quick: bool) -> list[str]:
    """Speed and aggregated-vs-exact, pinned to one core, with ``profile_path``."""
    sizing = size_replica(load_profile(profile_path), 500.0, startup_s=60.0)
    shown = profile_path.relative_to(ROOT) if profile_path.is_relative_to(ROOT) else profile_path
    lines = [
        "",
        f"Speed and aggregated-vs-exact: pinned to one core; profile `{shown}`"
        f" (server terms: {'yes' if sizing.profile.server is not None else 'none'}), SLO 500 ms,"
        f" start-up 60 s, load average before {_load()}.",
    ]
    lines += ["", "## Speed: one day, 1,000,000 users x 20 requests/day (aggregated)", ""]
    lines += [
        "| policy | requests | build traffic s | simulate s | events |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    speed_policies = ("static", "predictive") if quick else POLICIES
    for name in speed_policies:
        started = time.perf_counter()
        traffic, day = traffic_for("daily", 1_000_000, 20.0, seed=0)
        counts = traffic.counts(day)
        built = time.perf_counter() - started
        policy = build_policy(name, sizing, counts)
        config = simulation_config(sizing, counts, mode="aggregated")
        started = time.perf_counter()
        result = simulate(counts, policy, config)
        elapsed = time.perf_counter() - started
        lines.append(
            f"| {name} | {result.requests:,} | {built:.2f} | {elapsed:.2f} | "
            f"{result.num_events:,} |"
        )
        print(lines[-1], flush=True)

    if quick:
        return lines
    started = time.perf_counter()
    day_arrivals = counts.to_arrivals(seed=0)
    spread = time.perf_counter() - started
    policy = build_policy("reactive", sizing, counts)
    config = simulation_config(sizing, counts, mode="exact")
    started = time.perf_counter()
    exact_day = simulate(day_arrivals, policy, config)
    exact_s = time.perf_counter() - started
    del day_arrivals
    lines += [
        "",
        f"The same day in the **exact** mode (reactive policy): {exact_day.requests:,} requests, "
        f"{exact_day.num_events:,} events in **{exact_s:.1f} s** "
        f"({exact_day.num_events / exact_s:,.0f} events/s; spreading the counts into arrival "
        f"times took {spread:.1f} s more).",
    ]
    print(lines[-1], flush=True)
    lines += [
        "",
        "## Exact mode rate (one hour, 500,000 users x 50 requests/day, daily shape, "
        "08:00-09:00: the morning ramp)",
        "",
    ]
    lines += [
        "| policy | requests | simulate s | events | events/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    traffic, _ = traffic_for("daily", 500_000, 50.0, seed=1)
    noon = traffic.counts(9 * 3600.0)
    hour = ArrivalCounts(noon.counts[8 * 3600 :], 1.0)
    arrivals = hour.to_arrivals(seed=1)
    for name in ("static", "reactive", "predictive"):
        policy = build_policy(name, sizing, hour)
        config = simulation_config(sizing, hour, mode="exact")
        started = time.perf_counter()
        result = simulate(arrivals, policy, config)
        elapsed = time.perf_counter() - started
        lines.append(
            f"| {name} | {result.requests:,} | {elapsed:.2f} | {result.num_events:,} | "
            f"{result.num_events / elapsed:,.0f} |"
        )
        print(lines[-1], flush=True)

    lines += ["", "## Aggregated vs exact on the same hour (relative errors; SLO: absolute)", ""]
    lines += [
        "| policy | exact p50 / p99 ms | aggregated p50 / p99 ms | p50 err | p99 err | SLO err "
        "| replica-h err |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in POLICIES:
        config = simulation_config(sizing, hour, mode="exact")
        comparison = compare_modes(arrivals, lambda n=name: build_policy(n, sizing, hour), config)
        e, a = comparison.exact, comparison.aggregated
        lines.append(
            f"| {name} | {e.p50_ms:.1f} / {e.p99_ms:.1f} | {a.p50_ms:.1f} / {a.p99_ms:.1f} | "
            f"{comparison.p50_error:.1%} | {comparison.p99_error:.1%} | "
            f"{comparison.slo_attainment_error:.4f} | {comparison.replica_hours_error:.1%} |"
        )
        print(lines[-1], flush=True)
    return lines


def _load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
