"""The sizing check: the simulated replica against a served one at concurrency 64, one run.

Back to back, on one quiet machine:

1. ``aiscale profile minilm --repeats R`` (or ``--profile P``, a profile measured just
   before on this machine);
2. a fresh ``aiscale serve minilm`` (the defaults: one replica, batch <= 64, 10 ms delay,
   capture on, its data in a fresh temporary folder, or ``--data-parent``), a warm-up, then
   ``aiscale bench URL/v1/embeddings --concurrency 64 --duration S --json`` (closed loop);
   the server's ``/metrics`` give the mean batch;
3. the same replica simulated (``plan.closed_loop.simulate_closed_loop``: 64 clients, batch
   <= 64, the profile's service model) and sized by the planner (``plan.sizing``: its full
   capacity with batches of 64, and the batch and capacities it would choose for a 500 ms
   SLO).

**Pass**: the simulated throughput within 10% of the served one. The planner's full
capacity at batch 64 is reported beside it (the design target: planner sizing within 10% of
the served replica). Writes ``--json`` (default ``benchmarks/simulator/sizing_check.json``)
and a Markdown section (``--md``, default ``benchmarks/simulator/SIZING.md``) with the
machine, versions, git SHA, command, load averages and CPU stolen; exits 1 when the check
fails. Never run by the tests; timings are results only on a quiet machine.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \\
        .venv/bin/python benchmarks/simulator/sizing_check.py            # about 4 minutes
    ... sizing_check.py --quick                                          # about 1.5 minutes
    ... sizing_check.py --sim-only      # the simulated side again, against the recorded run

``--sim-only`` serves nothing and measures nothing: it reads the served figures, the profile
and the machine from a recorded result (``--from``, default ``sizing_check.json``; or
``--profile``), runs steps 3 again (seconds, deterministic) and prints the Markdown; it writes
files only where ``--json`` or ``--md`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiscale.errors import InvalidInput  # noqa: E402
from aiscale.plan import load_profile  # noqa: E402
from aiscale.plan.calibration import cpu_steal_reading, steal_share  # noqa: E402
from aiscale.plan.closed_loop import simulate_closed_loop  # noqa: E402
from aiscale.plan.commands import profile_steadiness  # noqa: E402
from aiscale.plan.live_server import run_bench, scrape_histograms, served  # noqa: E402
from aiscale.plan.sizing import size_replica  # noqa: E402
from benchmarks.machine import describe_machine  # noqa: E402

#: The check: simulated throughput within this share of the served one.
TOLERANCE = 0.10
#: ``aiscale serve``'s default batch limit, which the served replica runs with.
SERVED_MAX_BATCH = 64
_BATCH = "aiscale_batcher_batch_size"


def measure_profile(path: Path, *, repeats: int, quick: bool) -> float:
    """``aiscale profile minilm`` into ``path``; returns the seconds it took."""
    started = time.perf_counter()
    command = [
        str(ROOT / ".venv" / "bin" / "aiscale"), "profile", "minilm", "--out", str(path),
        "--repeats", str(repeats),
        *(["--seconds-per-size", "0.3", "--server-seconds", "2"] if quick else []),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        sys.exit(f"aiscale profile failed: {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def serve_and_load(
    *, concurrency: int, seconds: float, warmup_s: float, data_parent: str | None
) -> dict[str, Any]:
    """A fresh ``aiscale serve minilm``, a warm-up, then the closed loop; the load
    generator's result with the server's mean batch over the measured run."""
    env = dict(os.environ)
    with (
        tempfile.TemporaryDirectory(prefix="aiscale-sizing-", dir=data_parent) as data_dir,
        served("minilm", data_dir, ROOT, env, timeout_s=180.0) as url,
    ):
        target = f"{url}/v1/embeddings"
        run_bench(target, ["--concurrency", str(concurrency), "--duration", f"{warmup_s:g}"],
                  ROOT, env)  # fmt: skip
        before = scrape_histograms(url, (_BATCH,))[_BATCH]
        steal_before, load_before = cpu_steal_reading(), os.getloadavg()
        result = run_bench(
            target, ["--concurrency", str(concurrency), "--duration", f"{seconds:g}"], ROOT, env
        )
        after = scrape_histograms(url, (_BATCH,))[_BATCH]
        result["steal_share"] = steal_share(steal_before, cpu_steal_reading())
        result["load_before"], result["load_after"] = load_before, os.getloadavg()
    batches = after[1] - before[1]
    result["mean_batch"] = (after[0] - before[0]) / batches if batches > 0 else float("nan")
    return result


def check(
    profile_path: Path, served_run: dict[str, Any], *, concurrency: int, seconds: float
) -> dict[str, Any]:
    """The simulated closed loop and the planner's sizing beside the served run."""
    profile = load_profile(profile_path)
    simulated = simulate_closed_loop(
        profile, concurrency, duration_s=seconds, max_batch_size=SERVED_MAX_BATCH
    )
    at_64 = size_replica(profile, 500.0, max_batch_size=SERVED_MAX_BATCH)
    served_rps = float(served_run["throughput_rps"])
    error = (simulated.throughput_per_s - served_rps) / served_rps
    planner_error = (at_64.full_capacity_per_s - served_rps) / served_rps
    unsteady, unknown = profile_steadiness(profile)
    out: dict[str, Any] = {
        "served": {
            k: served_run.get(k)
            for k in (
                "throughput_rps",
                "p50_ms",
                "p99_ms",
                "mean_ms",
                "requests",
                "mean_batch",
                "steal_share",
                "load_before",
                "load_after",
            )
        },  # fmt: skip
        "simulated": {
            "throughput_rps": simulated.throughput_per_s,
            "p50_ms": simulated.p50_ms,
            "p99_ms": simulated.p99_ms,
            "mean_batch": simulated.mean_batch,
        },
        "throughput_error": error,
        "planner_full_capacity_at_64": at_64.full_capacity_per_s,
        "planner_error": planner_error,
        "is_pass": abs(error) <= TOLERANCE,
        "is_planner_within": abs(planner_error) <= TOLERANCE,
        "profile": str(profile_path),
        "profile_unsteady": unsteady,
        "profile_steadiness_unknown": unknown,
    }
    try:
        chosen = size_replica(profile, 500.0)
        out["planner_500ms"] = {
            "max_batch_size": chosen.max_batch_size,
            "full_capacity_per_s": chosen.full_capacity_per_s,
            "capacity_per_s": chosen.capacity_per_s,
            "planned_batch": chosen.planned_batch,
            "planned_p99_ms": chosen.planned_p99_ms,
            "is_latency_limited": chosen.is_latency_limited,
        }
    except InvalidInput as exc:  # a profile whose SLO cannot be met: recorded, not fatal
        out["planner_500ms"] = {"error": exc.message}
    return out


def render(result: dict[str, Any], machine: dict[str, Any], command: str) -> list[str]:
    served_run, simulated = result["served"], result["simulated"]
    chosen = result["planner_500ms"]
    verdict = "PASS" if result["is_pass"] else "FAIL"
    lines = [
        "# Sizing check: the simulated replica against a served one at concurrency "
        f"{result['concurrency']}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"torch {machine['torch']}; git {machine['git_sha']}; {machine['date']}. Profile: "
        f"`{result['profile']}` ({result['profile_seconds']:.0f} s to measure"
        + (f"; unsteady: {result['profile_unsteady']}" if result["profile_unsteady"] else "")
        + (
            f"; {result['profile_steadiness_unknown']}"
            if result["profile_steadiness_unknown"]
            else ""
        )  # fmt: skip
        + f"). Served run: load 1m {served_run['load_before'][0]:.1f} / "
        f"{served_run['load_after'][0]:.1f}, CPU stolen {served_run['steal_share']:.0%}.",
        "",
        "| | req/s | vs served | mean batch | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| served (`aiscale serve minilm`, closed loop, {result['seconds']:g} s) | "
        f"{served_run['throughput_rps']:.1f} | | {served_run['mean_batch']:.1f} | "
        f"{served_run['p50_ms']:.1f} | {served_run['p99_ms']:.1f} |",
        f"| simulated (`simulate_closed_loop`) | {simulated['throughput_rps']:.1f} | "
        f"{result['throughput_error']:+.1%} | {simulated['mean_batch']:.1f} | "
        f"{simulated['p50_ms']:.1f} | {simulated['p99_ms']:.1f} |",
        f"| planner, full capacity at batch 64 | {result['planner_full_capacity_at_64']:.1f} | "
        f"{result['planner_error']:+.1%} | 64 | | |",
        "",
        f"**{verdict}**: simulated throughput within {TOLERANCE:.0%} of the served one "
        f"({result['throughput_error']:+.1%}); planner's full capacity "
        f"{'within' if result['is_planner_within'] else 'NOT within'} {TOLERANCE:.0%} "
        f"({result['planner_error']:+.1%}).",
    ]
    if "error" in chosen:
        lines += ["", f"Planner at a 500 ms SLO: {chosen['error']}"]
    else:
        lines += [
            "",
            f"Planner at a 500 ms SLO (its own batch limit): batch <= {chosen['max_batch_size']}, "
            f"full {chosen['full_capacity_per_s']:.0f}/s, planned {chosen['capacity_per_s']:.0f}/s "
            f"(live batch {chosen['planned_batch']:.1f}, simulated p99 "
            f"{chosen['planned_p99_ms']:.0f} ms"
            f"{', latency-limited' if chosen['is_latency_limited'] else ''}).",
        ]
    return lines


def sim_only(args: argparse.Namespace, out_dir: Path) -> None:
    """``--sim-only``: the check's simulated side against a recorded served run."""
    recorded_path = args.recorded or out_dir / "sizing_check.json"
    try:
        recorded = json.loads(recorded_path.read_text())
        served_run = recorded["served"]
        concurrency = int(recorded["concurrency"])
        seconds = float(recorded["seconds"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"--sim-only needs a recorded result with its served run: {recorded_path}: {exc}")
    profile_path = args.profile or Path(recorded["profile"])
    if not profile_path.is_file():  # recorded on another checkout: the file beside the result
        profile_path = recorded_path.with_name(profile_path.name)
    result = check(profile_path, served_run, concurrency=concurrency, seconds=seconds)
    command = " ".join(["python", *sys.argv])
    result.update(
        concurrency=concurrency,
        seconds=seconds,
        profile_seconds=float(recorded.get("profile_seconds", 0.0)),
        machine=recorded["machine"],
        command=f"{recorded.get('command', '?')} (served); {command} (simulated again)",
        quick=bool(recorded.get("quick", False)),
        sim_only_from=str(recorded_path),
    )
    lines = render(result, result["machine"], result["command"])
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md is not None:
        args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not result["is_pass"]:
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", type=Path, default=None, help="a profile measured just now")
    parser.add_argument("--repeats", type=int, default=3, help="aiscale profile --repeats")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--data-parent", default=None, help="where the server writes its data")
    parser.add_argument("--quick", action="store_true", help="a smoke test: short everything")
    parser.add_argument(
        "--sim-only", action="store_true",
        help="serve nothing: the simulated side against the served run recorded in --from",
    )  # fmt: skip
    parser.add_argument(
        "--from", dest="recorded", type=Path, default=None,
        help="the recorded result --sim-only reads [benchmarks/simulator/sizing_check.json]",
    )  # fmt: skip
    parser.add_argument(
        "--json", type=Path, default=None,
        help="results [benchmarks/simulator/sizing_check.json; --quick: a temporary folder]",
    )  # fmt: skip
    parser.add_argument(
        "--md", type=Path, default=None,
        help="Markdown [benchmarks/simulator/SIZING.md; --quick: a temporary folder]",
    )  # fmt: skip
    args = parser.parse_args()
    out_dir = ROOT / "benchmarks" / "simulator"
    if args.sim_only:
        sim_only(args, out_dir)
        return
    if args.quick:
        args.seconds, args.warmup = min(args.seconds, 5.0), 1.0
        args.repeats = min(args.repeats, 2)
        out_dir = Path(tempfile.mkdtemp(prefix="aiscale-sizing-quick-"))
    args.json = args.json or out_dir / "sizing_check.json"
    args.md = args.md or out_dir / "SIZING.md"
    machine = describe_machine(ROOT)
    profile_path = args.profile
    profile_seconds = 0.0
    if profile_path is None:
        profile_path = args.json.with_name("sizing_check_profile.json")
        print(f"profiling into {profile_path} ...", flush=True)
        profile_seconds = measure_profile(profile_path, repeats=args.repeats, quick=args.quick)
    print(f"serving and loading at concurrency {args.concurrency} ...", flush=True)
    served_run = serve_and_load(
        concurrency=args.concurrency,
        seconds=args.seconds,
        warmup_s=args.warmup,
        data_parent=args.data_parent,
    )
    result = check(profile_path, served_run, concurrency=args.concurrency, seconds=args.seconds)
    result.update(
        concurrency=args.concurrency,
        seconds=args.seconds,
        profile_seconds=profile_seconds,
        machine=machine,
        command=" ".join(["python", *sys.argv]),
        quick=args.quick,
    )
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    lines = render(result, machine, result["command"])
    args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not result["is_pass"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
