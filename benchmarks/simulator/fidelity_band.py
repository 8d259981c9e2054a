"""Fidelity with a criterion the machine can meet: the simulator against the band of N real
runs of the same arrivals.

Protocol (one run of this script, on a quiet machine):

1. ``aiscale profile minilm --repeats 3`` (its calibration server writing where the real runs
   will: ``--capture tmpfs`` under /dev/shm; with ``--capture off`` the simulation drops the
   profile's disk terms), right before the real runs;
2. the loads: the conv trace replayed from its start for ``--seconds``, stretched so that
   its mean rate over that window is 30%, 60% and 90% of the capacity the profile gives one
   replica at ``aiscale serve``'s batch limit (``plan.sizing.served_capacity_per_s``);
3. ``--runs`` (N >= 5) real runs of each load, interleaved (round k runs every load, in
   alternating order), each against a fresh ``aiscale serve minilm`` (defaults; its data in a
   fresh folder on the tmpfs, or ``--no-capture``), after a 2 s warm-up at concurrency 1:
   ``aiscale bench URL/v1/embeddings --trace conv --time-scale TS --duration S --json``;
4. ``aiscale simulate`` on the same arrivals (exact mode, static, one replica, batch <= 64)
   with that profile.

**Criterion** per figure (p50, p99, throughput): the simulated value lies within the real
runs' range widened by 10% of their median, ``[min - 0.1 * median, max + 0.1 * median]``.

Writes ``fidelity_band.json`` (every run, the profile's steadiness, machine, versions, git
SHA, command, load averages, CPU stolen), ``fidelity_band.png`` (per load and figure: the
real runs, the band, the simulated value) and a section of ``RESULTS.md`` between
``<!-- fidelity-band:begin -->`` and ``<!-- fidelity-band:end -->`` (replaced on each run,
inserted after the title the first time). ``--quick`` is a smoke test (2 runs of 8 s, a
short profile) that writes into a temporary folder and leaves RESULTS.md alone.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        .venv/bin/python benchmarks/simulator/fidelity_band.py        # about 13 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiscale.plan import load_profile, read_trace_times, save_profile  # noqa: E402
from aiscale.plan.calibration import cpu_steal_reading, steal_share  # noqa: E402
from aiscale.plan.commands import profile_steadiness, simulate_command  # noqa: E402
from aiscale.plan.sizing import served_capacity_per_s  # noqa: E402
from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.simulator.fidelity import CONV, TRACES, _aiscale, replay  # noqa: E402

#: The band is the real runs' range widened by this share of their median.
WIDEN = 0.10
FIGURES = ("p50_ms", "p99_ms", "throughput_rps")
#: ``aiscale serve``'s default batch limit, which the served replica runs with.
SERVED_MAX_BATCH = 64
BEGIN, END = "<!-- fidelity-band:begin -->", "<!-- fidelity-band:end -->"


def band(values: list[float]) -> tuple[float, float]:
    """``[min - WIDEN * median, max + WIDEN * median]`` of the real runs' values."""
    middle = statistics.median(values)
    return min(values) - WIDEN * middle, max(values) + WIDEN * middle


def time_scale_for(times: np.ndarray[Any, Any], rate_per_s: float, seconds: float) -> float:
    """The time scale at which the trace's first ``seconds`` of replay carry ``rate_per_s``
    on average (bisection: the count in the window falls as the scale grows)."""
    low, high = 1e-5, 1e3
    for _ in range(100):
        middle = (low * high) ** 0.5
        rate = np.count_nonzero(times * middle < seconds) / seconds
        if rate > rate_per_s:
            low = middle
        else:
            high = middle
    return float(round(high, 6))


def measure_profile(path: Path, *, quick: bool, data_parent: str | None) -> float:
    started = time.perf_counter()
    command = [
        *_aiscale(ROOT), "profile", "minilm", "--out", str(path), "--repeats",
        "2" if quick else "3", "--seconds-per-size", "0.3" if quick else "0.5",
        "--server-seconds", "2" if quick else "4",
        *(["--server-data-dir", data_parent] if data_parent else []),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        sys.exit(f"aiscale profile failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def simulated(profile: Path, trace: Path, scale: float, seconds: float) -> dict[str, float]:
    """The exact simulator on the replay's arrivals, as ``aiscale simulate`` runs it."""
    sim = simulate_command(
        profile=profile,
        policy="static",
        replicas=1,
        max_batch_size=SERVED_MAX_BATCH,
        slo_p99_ms=500.0,
        trace=trace,
        time_scale=scale,
        duration_s=seconds,
        mode="exact",
        is_unsteady_accepted=True,  # the steadiness is recorded beside the result
    )
    # Completions over the simulated span, like the load generator's answered requests
    # over its window: equal when nothing queues past the window's end.
    throughput = sim["completed"] / max(sim["duration_s"], seconds)
    return {"p50_ms": sim["p50_ms"], "p99_ms": sim["p99_ms"], "throughput_rps": throughput}


def run(args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    data_parent = "/dev/shm" if args.capture == "tmpfs" else None
    serve_args: tuple[str, ...] = ("--no-capture",) if args.capture == "off" else ()
    trace = ROOT / TRACES / CONV
    profile_path = out_dir / "fidelity_band_profile.json"
    if args.profile is not None:
        profile_path, profile_s = args.profile, 0.0
    else:
        print(f"profiling into {profile_path} ...", flush=True)
        profile_s = measure_profile(profile_path, quick=args.quick, data_parent=data_parent)
    profile = load_profile(profile_path)
    simulated_profile = profile_path
    if args.capture == "off" and profile.server is not None:
        simulated_profile = out_dir / "fidelity_band_profile_no_capture.json"
        save_profile(replace(profile, server=replace(profile.server, disk=None)), simulated_profile)
    capacity = served_capacity_per_s(profile, SERVED_MAX_BATCH)
    times = read_trace_times(trace)
    loads = [float(f) for f in args.loads.split(",")]
    cases: list[dict[str, Any]] = [
        {"load": f, "rate_per_s": f * capacity,
         "time_scale": time_scale_for(times, f * capacity, args.seconds), "runs": []}
        for f in loads
    ]  # fmt: skip
    unsteady, unknown = profile_steadiness(profile)
    found: dict[str, Any] = {
        "profile": str(profile_path),
        "profile_seconds": profile_s,
        "profile_unsteady": unsteady,
        "profile_steadiness_unknown": unknown,
        "capacity_per_s": capacity,
        "capture": args.capture,
        "seconds": args.seconds,
        "runs_per_load": args.runs,
        "cases": cases,
    }
    for round_index in range(args.runs):
        order = cases if round_index % 2 == 0 else list(reversed(cases))
        for case in order:
            real = replay(
                ROOT, trace, case["time_scale"], args.seconds, 1,
                data_parent=data_parent, serve_args=serve_args,
            )  # fmt: skip
            entry = {**real["runs"][0], "round": round_index + 1,
                     "load_before": real["load_before"], "load_after": real["load_after"],
                     "steal_share": real["steal_share"]}  # fmt: skip
            case["runs"].append(entry)
            print(f"round {round_index + 1} load {case['load']:.0%}: "
                  f"{entry['throughput_rps']:.1f} req/s, p50 {entry['p50_ms']:.1f} ms, "
                  f"p99 {entry['p99_ms']:.1f} ms", flush=True)  # fmt: skip
            (out_dir / "fidelity_band.json").write_text(json.dumps(found, indent=1) + "\n")
    for case in cases:
        case["simulated"] = simulated(simulated_profile, trace, case["time_scale"], args.seconds)
        case["verdict"] = {}
        for name in FIGURES:
            low, high = band([run[name] for run in case["runs"]])
            value = case["simulated"][name]
            case["verdict"][name] = {"low": low, "high": high, "is_inside": low <= value <= high}
    return found


def render(found: dict[str, Any], machine: dict[str, Any], command: str) -> list[str]:
    steadiness = found["profile_unsteady"] or found["profile_steadiness_unknown"] or "steady"
    lines = [
        BEGIN,
        "## Fidelity against the band of real runs (issue 14's criterion)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"torch {machine['torch']}; git {machine['git_sha']}; {machine['date']}.",
        "",
        f"Profile `{Path(found['profile']).name}` measured right before ({found['profile_seconds']:.0f}"
        f" s; {steadiness}); capacity at batch 64: {found['capacity_per_s']:.0f} req/s. "
        f"{found['runs_per_load']} real runs per load, each a fresh `aiscale serve minilm` "
        f"(capture: {found['capture']}), interleaved across loads; the conv trace from its "
        f"start for {found['seconds']:g} s. A figure passes when the simulated value lies in "
        f"[min - {WIDEN:.0%} x median, max + {WIDEN:.0%} x median] of the real runs.",
        "",
        "| load | TS | figure | real runs (min-max, median) | band | simulated | pass |",
        "| --- | ---: | --- | --- | --- | ---: | --- |",
    ]
    passed = total = 0
    for case in found["cases"]:
        for name in FIGURES:
            values = [run[name] for run in case["runs"]]
            verdict = case["verdict"][name]
            total += 1
            passed += verdict["is_inside"]
            lines.append(
                f"| {case['load']:.0%} ({case['rate_per_s']:.0f}/s) | {case['time_scale']:g} | "
                f"{name.replace('_', ' ')} | {min(values):.1f}-{max(values):.1f}, "
                f"{statistics.median(values):.1f} | {verdict['low']:.1f}-{verdict['high']:.1f} | "
                f"{case['simulated'][name]:.1f} | {'yes' if verdict['is_inside'] else '**no**'} |"
            )
    steal = [run["steal_share"] for case in found["cases"] for run in case["runs"]]
    lines += [
        "",
        f"**{passed} of {total} figures inside their band.** CPU stolen during the real runs: "
        f"{min(steal):.0%}-{max(steal):.0%}. Raw numbers: `fidelity_band.json`; plot: "
        "`fidelity_band.png`.",
        END,
    ]
    return lines


def plot(found: dict[str, Any], path: Path) -> None:
    """Per figure a panel: per load the real runs (dots), the band (bar), the simulated
    value (diamond)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = found["cases"]
    figure, axes = plt.subplots(1, len(FIGURES), figsize=(11, 3.6))
    for axis, name in zip(axes, FIGURES, strict=True):
        for index, case in enumerate(cases):
            values = [run[name] for run in case["runs"]]
            verdict = case["verdict"][name]
            axis.bar(index, verdict["high"] - verdict["low"], bottom=verdict["low"], width=0.5,
                     color="tab:blue", alpha=0.15, label="band" if index == 0 else None)  # fmt: skip
            axis.scatter([index] * len(values), values, color="tab:blue", s=14,
                         label="real runs" if index == 0 else None)  # fmt: skip
            axis.scatter([index + 0.3], [case["simulated"][name]], marker="D",
                         color="tab:green" if verdict["is_inside"] else "tab:red",
                         label="simulated" if index == 0 else None)  # fmt: skip
        axis.set_xticks(range(len(cases)), [f"{case['load']:.0%}" for case in cases])
        axis.set_xlabel("load (share of capacity)")
        axis.set_ylabel(name.replace("_", " "))
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("minilm: the simulator against the band of real runs", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_section(results: Path, lines: list[str]) -> None:
    """Replace the marked section of ``results`` (or insert it after the title)."""
    text = results.read_text() if results.exists() else "# Simulator\n"
    section = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{section}\n{body}"
    results.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="real runs per load (>= 5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per real run")
    parser.add_argument("--loads", default="0.3,0.6,0.9", help="shares of the capacity")
    parser.add_argument("--capture", choices=("tmpfs", "off", "disk"), default="tmpfs")
    parser.add_argument("--profile", type=Path, default=None, help="one measured just now")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 runs of 8 s")
    parser.add_argument("--results", type=Path, default=None,
                        help="RESULTS.md to update [benchmarks/simulator/RESULTS.md; --quick: "
                        "none]")  # fmt: skip
    args = parser.parse_args()
    out_dir = ROOT / "benchmarks" / "simulator"
    results = args.results
    if args.quick:
        args.runs, args.seconds = min(args.runs, 2), min(args.seconds, 8.0)
        out_dir = Path(tempfile.mkdtemp(prefix="aiscale-fidelity-band-"))
    elif results is None:
        results = out_dir / "RESULTS.md"
    if args.runs < 2:
        sys.exit("--runs must be >= 2 (the criterion asks for 5)")
    machine = describe_machine(ROOT)
    command = " ".join(["python", *sys.argv])
    started = time.perf_counter()
    steal_before, load_before = cpu_steal_reading(), os.getloadavg()
    found = run(args, out_dir)
    found.update(machine=machine, command=command, quick=args.quick,
                 wall_s=time.perf_counter() - started, load_before=load_before,
                 steal_share=steal_share(steal_before, cpu_steal_reading()))  # fmt: skip
    (out_dir / "fidelity_band.json").write_text(json.dumps(found, indent=1) + "\n")
    plot(found, out_dir / "fidelity_band.png")
    lines = render(found, machine, command)
    print("\n".join(lines))
    print(f"wrote {out_dir / 'fidelity_band.json'}, {out_dir / 'fidelity_band.png'}"
          f"{', ' + str(results) if results else ''} in {found['wall_s']:.0f} s")  # fmt: skip
    if results is not None:
        write_section(results, lines)


if __name__ == "__main__":
    main()
