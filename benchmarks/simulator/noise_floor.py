"""The fidelity target's floor on this machine: the real server against itself, and profiles
against each other, on the same arrivals.

The fidelity benchmark asks the simulator, given a profile measured minutes earlier, to
predict a real replay within 10%. Two things bound how well any simulator can do that:

* **the real server against itself**: the same replay run again a minute later on the same
  machine. If two real runs differ by more than 10%, a prediction cannot meet 10% against
  both;
* **the profile against itself**: ``aiscale profile`` run again a few minutes later. If the
  simulator's answers with two such profiles differ by more than 10%, at most one of them can
  be within 10% of a given run.

Per round, back to back: ``aiscale profile minilm`` (as ``fidelity.py`` runs it), then a fresh
``aiscale serve minilm`` and ``--runs`` open-loop replays of one trace (``fidelity.replay``).
Afterwards every profile is simulated on the same arrivals (exact mode, static, 1 replica).
Writes ``noise_floor.json``, a Markdown section (``--md``) and a PNG plot (``--png``).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        .venv/bin/python benchmarks/simulator/noise_floor.py --rounds 4 --runs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiscale.plan import load_profile  # noqa: E402
from aiscale.plan.calibration import cpu_steal_reading, steal_share  # noqa: E402
from aiscale.plan.profiling import machine_description  # noqa: E402
from benchmarks.simulator.fidelity import (  # noqa: E402
    CONV,
    TRACES,
    _aiscale,
    _load,
    adaptive_time_scale,
    replay,
    simulated,
)

#: How close two numbers must be for the fidelity target (relative to the reference).
TOLERANCE = 0.10
_FIGURES = ("throughput_rps", "p50_ms", "p99_ms")


def within(value: float, reference: float) -> bool:
    return abs(value - reference) <= TOLERANCE * abs(reference)


def measure(
    root: Path,
    out_dir: Path,
    *,
    rounds: int,
    runs: int,
    time_scale: float | None,
    capacity_fraction: float | None,
    duration_s: float,
) -> dict[str, Any]:
    """Profiles and real runs, interleaved as the fidelity protocol runs them. Without a
    ``time_scale``, the first profile sets it (``capacity_fraction`` of its capacity, as
    ``fidelity.adaptive_time_scale``); every round then replays the same arrivals."""
    trace = root / TRACES / CONV
    measured: dict[str, Any] = {
        "trace": CONV, "time_scale": time_scale, "capacity_fraction": capacity_fraction,
        "duration_s": duration_s, "machine": machine_description(), "rounds": [],
    }  # fmt: skip
    for index in range(rounds):
        profile = out_dir / f"noise_profile_{index + 1}.json"
        cpu_before, load_before, started = cpu_steal_reading(), _load(), time.perf_counter()
        subprocess.run(
            [*_aiscale(root), "profile", "minilm", "--out", str(profile),
             "--seconds-per-size", "1", "--server-seconds", "5"],
            cwd=root, check=True, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        profile_s = time.perf_counter() - started
        if time_scale is None:
            assert capacity_fraction is not None
            time_scale = adaptive_time_scale(root, CONV, profile, capacity_fraction)
            measured["time_scale"] = time_scale
        real = replay(root, trace, time_scale, duration_s, runs)
        terms = load_profile(profile).server
        measured["rounds"].append({
            "profile": profile.name,
            "speed_drift": None if terms is None else terms.speed_drift,
            "profile_s": profile_s,
            "profile_load": load_before,
            "profile_steal": steal_share(cpu_before, cpu_steal_reading()),
            "runs": real["runs"],
            "replay_steal": real["steal_share"],
            "replay_load": [real["load_before"], real["load_after"]],
        })  # fmt: skip
        print(f"round {index + 1}: profiled in {profile_s:.0f} s; runs p50/p99 "
              f"{[(round(r['p50_ms'], 1), round(r['p99_ms'], 1)) for r in real['runs']]}",
              flush=True)  # fmt: skip
        (out_dir / "noise_floor.json").write_text(json.dumps(measured, indent=1) + "\n")
    for entry in measured["rounds"]:
        sim = simulated(out_dir / entry["profile"], trace, measured["time_scale"], duration_s)[
            "exact"
        ]
        sim["throughput_rps"] = sim["completed"] / max(sim["duration_s"], duration_s)
        entry["sim"] = {name: sim[name] for name in (*_FIGURES, "requests")}
    (out_dir / "noise_floor.json").write_text(json.dumps(measured, indent=1) + "\n")
    return measured


def pair_shares(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The share of ``(value, reference)`` pairs within ``TOLERANCE``, per figure and on all
    three at once."""
    if not pairs:
        return {"pairs": 0}
    out: dict[str, Any] = {"pairs": len(pairs)}
    for name in _FIGURES:
        out[name] = sum(within(a[name], b[name]) for a, b in pairs) / len(pairs)
    out["all"] = sum(all(within(a[n], b[n]) for n in _FIGURES) for a, b in pairs) / len(pairs)
    return out


def agreement(measured: dict[str, Any]) -> dict[str, Any]:
    """Shares of pairs within ``TOLERANCE``: real run vs real run, profile vs profile (their
    simulations), and each profile's simulation vs the real runs of its own round (the
    fidelity protocol); and each round's simulated p99 over the mean of its real runs'."""
    rounds = measured["rounds"]
    runs = [run for entry in rounds for run in entry["runs"]]
    sims = [entry["sim"] for entry in rounds]
    # Both orders of each pair: "within 10% of the other" is relative to the reference.
    real_pairs = list(itertools.permutations(runs, 2))
    profile_pairs = list(itertools.permutations(sims, 2))
    own_round = [(entry["sim"], run) for entry in rounds for run in entry["runs"]]
    any_round = [(sim, run) for sim in sims for run in runs]
    ratios = [
        entry["sim"]["p99_ms"] / statistics.mean(run["p99_ms"] for run in entry["runs"])
        for entry in rounds
    ]
    return {
        "real_vs_real": pair_shares(real_pairs),
        "profile_vs_profile": pair_shares(profile_pairs),
        "sim_vs_own_round": pair_shares(own_round),
        "sim_vs_any_run": pair_shares(any_round),
        "real_median": {n: statistics.median(r[n] for r in runs) for n in _FIGURES},
        "sim_median": {n: statistics.median(s[n] for s in sims) for n in _FIGURES},
        "p99_ratios": ratios,
        "p99_ratio_geomean": statistics.geometric_mean(ratios),
    }


def load_class(row: dict[str, Any]) -> str:
    """The fidelity benchmark's cases by load: the conv trace at 100 req/s or 30% of the
    profile's capacity is light, the other conv cases are near saturation, then the code
    trace (bursts)."""
    if row["trace"] == "code":
        return "code trace, 30% of capacity"
    if row["time_scale"] == 0.05 or row.get("capacity_fraction") == 0.3:
        return "conv, light load"
    return "conv, near saturation"


def fidelity_pairs(paths: list[Path]) -> list[str]:
    """Real run vs real run in recorded ``fidelity.json`` files (each case's ``real.runs``:
    the same server on the same arrivals, back to back), by load."""
    pairs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            found = itertools.permutations(row["real"]["runs"], 2)
            pairs.setdefault(load_class(row), []).extend(found)
    lines = [
        f"Real run vs another real run of the same case in {', '.join(str(p) for p in paths)}:",
        "",
        "| load | pairs | throughput | p50 | p99 | all three |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, found in pairs.items():
        share = pair_shares(found)
        lines.append(
            f"| {label} | {share['pairs']} | {share['throughput_rps']:.0%} | "
            f"{share['p50_ms']:.0%} | {share['p99_ms']:.0%} | {share['all']:.0%} |"
        )
    return lines


def render(measured: dict[str, Any], found: dict[str, Any]) -> list[str]:
    rounds = measured["rounds"]
    lines = [
        f"Machine: {measured.get('machine', 'not recorded')}; {measured['trace']} at time "
        f"scale {measured['time_scale']:g} for {measured['duration_s']:g} s per run"
        + (
            f" ({measured['capacity_fraction']:.0%} of the first profile's capacity)"
            if measured.get("capacity_fraction") else ""
        )
        + ".",
        "",
        "| round | profile: load 1m, CPU stolen, speed drift | run | real req/s | real p50 ms | real p99 ms "
        "| sim req/s | sim p50 ms | sim p99 ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for index, entry in enumerate(rounds, start=1):
        sim = entry["sim"]
        for number, run in enumerate(entry["runs"], start=1):
            drift = entry.get("speed_drift")
            head = (
                f"| {index} | {entry['profile_load'][0]:.1f}, {entry['profile_steal']:.0%}, "
                f"{'n/a' if drift is None else format(drift, '.2f')} "
                if number == 1 else "| | "
            )  # fmt: skip
            tail = (
                f"| {sim['throughput_rps']:.1f} | {sim['p50_ms']:.1f} | {sim['p99_ms']:.1f} |"
                if number == 1 else "| | | |"
            )  # fmt: skip
            lines.append(
                f"{head}| {number} | {run['throughput_rps']:.1f} | {run['p50_ms']:.1f} "
                f"| {run['p99_ms']:.1f} {tail}"
            )
    lines += [
        "",
        "Share of pairs within 10% (each ordered pair: the second is the reference):",
        "",
        "| pairs | n | throughput | p50 | p99 | all three |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {
        "real_vs_real": "real run vs another real run",
        "profile_vs_profile": "simulation with one profile vs with another",
        "sim_vs_own_round": "simulation vs the real runs right after its profile (the protocol)",
        "sim_vs_any_run": "simulation vs any real run",
    }
    for key, label in names.items():
        share = found[key]
        if not share["pairs"]:
            continue
        lines.append(
            f"| {label} | {share['pairs']} | {share['throughput_rps']:.0%} | "
            f"{share['p50_ms']:.0%} | {share['p99_ms']:.0%} | {share['all']:.0%} |"
        )
    lines += [
        "",
        "Simulated p99 over the mean of its round's real p99, by round: "
        + ", ".join(f"{ratio:.2f}" for ratio in found["p99_ratios"])
        + f" (geometric mean {found['p99_ratio_geomean']:.2f}).",
    ]
    return lines


def plot(measured: dict[str, Any], path: Path) -> None:
    """p50 and p99 of every real run and every profile's simulation, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = measured["rounds"]
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, name, label in ((axes[0], "p50_ms", "p50 ms"), (axes[1], "p99_ms", "p99 ms")):
        for index, entry in enumerate(rounds, start=1):
            real = [run[name] for run in entry["runs"]]
            axis.scatter([index - 0.1] * len(real), real, color="tab:blue",
                         label="real runs" if index == 1 else None)  # fmt: skip
            axis.scatter([index + 0.1], [entry["sim"][name]], color="tab:orange", marker="D",
                         label="simulated with this round's profile" if index == 1 else None)
        runs = [run[name] for entry in rounds for run in entry["runs"]]
        middle = statistics.median(runs)
        axis.axhspan(middle * (1 - TOLERANCE), middle * (1 + TOLERANCE), color="tab:blue",
                     alpha=0.12, label="real median ±10%")  # fmt: skip
        axis.set_xticks(range(1, len(rounds) + 1))
        axis.set_xlim(0.5, len(rounds) + 0.5)
        axis.set_xlabel("round (profile, then its real runs)")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    figure.suptitle(
        f"{measured['trace'].removesuffix('.csv')} at time scale {measured['time_scale']:g}: "
        "the same arrivals, real and simulated", fontsize=10,
    )  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="real runs per round")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--time-scale", type=float, default=None)
    load.add_argument(
        "--capacity-fraction", type=float, default=None,
        help="replay at this fraction of the first profile's capacity [0.3]",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--from-json", type=Path, default=None,
        help="render a recorded run (next to it unless --md / --png say otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--from-fidelity", type=Path, nargs="+", default=None,
        help="real vs real pairs of recorded fidelity.json files, by load; nothing is run",
    )  # fmt: skip
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    if args.from_fidelity is not None:
        print("\n".join(fidelity_pairs(args.from_fidelity)))
        return
    out_dir = root / "benchmarks" / "simulator" / "noise_floor"
    if args.from_json is not None:
        measured = json.loads(args.from_json.read_text())
        out_dir = args.from_json.parent
    else:
        fraction = args.capacity_fraction
        if args.time_scale is None and fraction is None:
            fraction = 0.3
        out_dir.mkdir(exist_ok=True)
        measured = measure(
            root, out_dir, rounds=args.rounds, runs=args.runs, time_scale=args.time_scale,
            capacity_fraction=fraction, duration_s=args.duration,
        )  # fmt: skip
    found = agreement(measured)
    lines = render(measured, found)
    print("\n".join(lines))
    (args.md or out_dir / "noise_floor.md").write_text("\n".join(lines) + "\n")
    plot(measured, args.png or out_dir / "noise_floor.png")


if __name__ == "__main__":
    main()
