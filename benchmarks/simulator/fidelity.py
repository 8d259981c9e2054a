"""Fidelity: the simulator against a real ``aiscale serve`` on the same arrivals.

Per case, back to back: ``aiscale profile minilm`` (the model alone, then the server terms
through a real server: ``src/aiscale/plan/calibration.py``), then the trace replay (a fresh
``aiscale serve minilm`` with the defaults, a 2 s warm-up, ``aiscale bench --trace`` three
times back to back: the real tail moves by tens of percent between identical runs), then
``aiscale simulate`` on the same arrivals with the profile of this case: exact mode with the
server terms, the same without them (the model alone, what the simulator did before), and the
aggregated mode. Nothing is fitted to the traces: the profile is measured on synthetic load
only. Load averages are recorded with every row; the machine is shared.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiscale.plan.calibration import cpu_steal_reading, steal_share

TRACES = Path("..") / "shared" / "data" / "traces"
CONV = "AzureLLMInferenceTrace_conv.csv"
CODE = "AzureLLMInferenceTrace_code.csv"


def _aiscale(root: Path) -> list[str]:
    return [str(root / ".venv" / "bin" / "aiscale")]


def _load() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


def _run_json(command: list[str], root: Path, timeout_s: float = 900) -> dict[str, Any]:
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, cwd=root, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _serve(
    root: Path, data_dir: str, serve_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*_aiscale(root), "serve", "minilm", "--port", "0", "--data-dir", data_dir, *serve_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=root,
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            return process, found.group(1)
    raise RuntimeError("aiscale serve did not start")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def replay(
    root: Path,
    trace: Path,
    time_scale: float,
    duration_s: float,
    replays: int = 1,
    *,
    data_parent: str | None = None,
    serve_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Real replays: a fresh server, a warm-up, then ``replays`` open-loop runs of the same
    arrivals back to back; load average around them. The server's data folder is a fresh
    one in ``data_parent`` (a tmpfs, say; default: the system's temporary folder), and
    ``serve_args`` go to ``aiscale serve`` (``--no-capture``, say).

    Returns the median run's numbers (by p99; p50 and throughput are medians of their own)
    with every run under ``runs`` and the runs' own spread under ``spread``: what the same
    server does on the same arrivals minutes apart, the floor under any simulator error."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="aiscale-fidelity-", dir=data_parent) as data_dir:
        process, url = _serve(root, data_dir, serve_args)
        try:
            target = f"{url}/v1/embeddings"
            _run_json([*_aiscale(root), "bench", target, "--concurrency", "1", "--duration",
                       "2", "--json"], root)  # fmt: skip
            before = _load()
            cpu_before = cpu_steal_reading()
            for _ in range(replays):
                runs.append(
                    _run_json(
                        [*_aiscale(root), "bench", target, "--trace", str(trace), "--time-scale",
                         f"{time_scale:g}", "--duration", f"{duration_s:g}", "--json"],
                        root,
                    )  # fmt: skip
                )
            after = _load()
            steal = steal_share(cpu_before, cpu_steal_reading())
        finally:
            _stop(process)
    result = dict(sorted(runs, key=lambda run: run["p99_ms"])[len(runs) // 2])
    for name in ("p50_ms", "throughput_rps"):
        result[name] = statistics.median(run[name] for run in runs)
    result["runs"] = [{k: run[k] for k in _RUN_KEYS} for run in runs]
    result["spread"] = {
        name: [min(run[name] for run in runs), max(run[name] for run in runs)]
        for name in ("p50_ms", "p99_ms", "throughput_rps")
    }
    result["load_before"] = before
    result["load_after"] = after
    result["steal_share"] = steal
    return result


_RUN_KEYS = ("requests", "throughput_rps", "p50_ms", "p99_ms", "mean_ms")


def simulated(
    profile: Path, trace: Path, time_scale: float, duration_s: float
) -> dict[str, dict[str, Any]]:
    """The simulator on the replay's arrivals: exact with and without server terms, and
    aggregated with them."""
    from aiscale.plan import load_profile, save_profile
    from aiscale.plan.commands import simulate_command

    common: dict[str, Any] = {
        "policy": "static",
        "replicas": 1,
        "max_batch_size": 64,  # aiscale serve's default, as in the replay
        "slo_p99_ms": 500.0,
        "trace": trace,
        "time_scale": time_scale,
        "duration_s": duration_s,
    }
    out = {
        "exact": simulate_command(profile=profile, mode="exact", **common),
        "aggregated": simulate_command(profile=profile, mode="aggregated", **common),
    }
    with tempfile.TemporaryDirectory() as folder:
        alone = Path(folder) / "alone.json"
        save_profile(replace(load_profile(profile), server=None), alone)
        out["model_alone"] = simulate_command(profile=alone, mode="exact", **common)
    return out


def _err(sim: float, real: float) -> str:
    return f"{(sim - real) / real:+.0%}" if real else "n/a"


def adaptive_time_scale(root: Path, name: str, profile: Path, fraction: float) -> float:
    """The time scale at which trace ``name``'s mean rate is ``fraction`` of one replica's
    served capacity in ``profile`` (batches of 64, server terms applied): a load chosen from
    the profile alone, so that a busy shared machine is still tested below saturation."""
    from aiscale.plan import load_profile, read_trace_times
    from aiscale.plan.planner import served_capacity_per_s

    times = read_trace_times(root / TRACES / name)
    mean_rate = (len(times) - 1) / float(times[-1] - times[0])
    capacity = served_capacity_per_s(load_profile(profile), 64)
    return round(mean_rate / (fraction * capacity), 4)


def fidelity_section(
    root: Path, *, quick: bool, repeats: int, replays: int = 3
) -> tuple[list[str], Path]:
    """Run the fidelity benchmark; returns its RESULTS.md lines and the last profile.

    Cases: the conv trace at time scales 0.05 and 0.025 (about 100 and 240 req/s, the rates
    of the earlier table), and the conv (and, in full mode, the code) trace at 30% and 60%
    of the capacity the fresh profile gives (``adaptive_time_scale``)."""
    duration = 30.0 if quick else 60.0
    fixed: list[tuple[str, float | None, float | None]] = [(CONV, 0.05, None), (CONV, 0.025, None)]
    adaptive: list[tuple[str, float | None, float | None]] = [(CONV, None, 0.3), (CONV, None, 0.6)]
    if not quick:
        adaptive.append((CODE, None, 0.3))
    server_seconds = 3.0 if quick else 5.0
    seconds_per_size = 0.5 if quick else 1.0
    out_dir = root / "benchmarks" / "simulator"
    rows: list[dict[str, Any]] = []
    profile_path = out_dir / "minilm_profile.json"
    cases = fixed + adaptive
    for repeat in range(repeats):
        for case, (name, fixed_scale, fraction) in enumerate(cases):
            # A profile right before each case (model alone, then the server terms): the
            # machine's speed drifts within minutes, so the simulator gets the server of now.
            profile_path = out_dir / f"minilm_profile_r{repeat + 1}_c{case + 1}.json"
            load_before = _load()
            cpu_before = cpu_steal_reading()
            started = time.perf_counter()
            subprocess.run(
                [*_aiscale(root), "profile", "minilm", "--out", str(profile_path),
                 "--seconds-per-size", f"{seconds_per_size:g}", "--server-seconds",
                 f"{server_seconds:g}"],
                cwd=root, check=True, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            profile_s = time.perf_counter() - started
            profile_steal = steal_share(cpu_before, cpu_steal_reading())
            print(f"repeat {repeat + 1} case {case + 1}: profiled in {profile_s:.0f} s, "
                  f"load {load_before}, steal {profile_steal:.0%}", flush=True)  # fmt: skip
            trace = root / TRACES / name
            if fixed_scale is not None:
                scale = fixed_scale
            else:
                assert fraction is not None
                scale = adaptive_time_scale(root, name, profile_path, fraction)
            real = replay(root, trace, scale, duration, replays)
            sims = simulated(profile_path, trace, scale, duration)
            row = {
                "repeat": repeat + 1,
                "trace": name.removeprefix("AzureLLMInferenceTrace_").removesuffix(".csv"),
                "time_scale": scale,
                "capacity_fraction": fraction,
                "profile": profile_path.name,
                "profile_load": load_before,
                "profile_steal": profile_steal,
                "real": real,
                **sims,
            }
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("repeat", "trace", "time_scale")}
                             | {"real": [real["requests"], real["p50_ms"], real["p99_ms"]],
                                "sim": [sims["exact"]["requests"], sims["exact"]["p50_ms"],
                                        sims["exact"]["p99_ms"]]}), flush=True)  # fmt: skip
            (out_dir / "fidelity.json").write_text(json.dumps(rows, indent=1) + "\n")
    return _render(
        rows, profile_path, quick=quick, duration=duration, replays=replays
    ), profile_path


def _render(
    rows: list[dict[str, Any]],
    profile_path: Path,
    *,
    quick: bool,
    duration: float,
    replays: int = 1,
) -> list[str]:
    lines = [
        "",
        "## Fidelity against a real server",
        "",
        f"Per case, back to back: `aiscale profile minilm` (model alone, then the server terms "
        f"through a real `aiscale serve`), then a fresh `aiscale serve minilm` "
        f"(defaults: 1 replica, 2 threads, batch <= 64, 10 ms delay, capture on), 2 s warm-up, "
        f"{replays} runs of `aiscale bench URL/v1/embeddings --trace T --time-scale TS "
        f"--duration {duration:g} --json` (open loop) back to back, then `aiscale simulate "
        f"--profile P --trace T --time-scale TS --duration {duration:g} --policy static "
        f"--replicas 1 --max-batch-size 64 --mode exact --json`. Real columns: the median of "
        f"the {replays} runs; 'real runs' gives their range (the same server on the same "
        f"arrivals minutes apart). "
        f"{'Quick mode. ' if quick else ''}Raw numbers: `benchmarks/simulator/fidelity.json`; "
        f"profiles: `benchmarks/simulator/minilm_profile_r*.json`.",
        "",
        "| rep | trace | TS | load 1m (before/after), CPU stolen | requests real / sim | real req/s | sim req/s "
        "| err | real p50 ms | sim p50 ms | err | real p99 ms | sim p99 ms | err "
        "| all within 10% | real runs p50 / p99 range | model-alone sim p50 / p99 "
        "| aggregated sim p50 / p99 |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | --- | --- | --- | --- |",
    ]
    for row in rows:
        real, sim, alone, agg = row["real"], row["exact"], row["model_alone"], row["aggregated"]
        # Completions over the simulated span (the arrivals' window plus the drain), like
        # the load generator's answered requests over its window: equal when nothing queues
        # past the window's end.
        sim_rate = sim["completed"] / max(sim["duration_s"], duration)
        lines.append(
            f"| {row['repeat']} | {row['trace']} | {row['time_scale']:g}"
            f"{'' if row.get('capacity_fraction') is None else ' (' + format(row['capacity_fraction'], '.0%') + ' cap.)'} | "
            f"{real['load_before'][0]:.1f} / {real['load_after'][0]:.1f}, "
            f"{_share(real.get('steal_share'))} | "
            f"{real['requests']:,} / {sim['requests']:,} | {real['throughput_rps']:.1f} | "
            f"{sim_rate:.1f} | {_err(sim_rate, real['throughput_rps'])} | "
            f"{real['p50_ms']:.1f} | {sim['p50_ms']:.1f} | {_err(sim['p50_ms'], real['p50_ms'])} | "
            f"{real['p99_ms']:.1f} | {sim['p99_ms']:.1f} | {_err(sim['p99_ms'], real['p99_ms'])} | "
            f"{_verdict(sim, sim_rate, real)} | {_range(real)} | "
            f"{alone['p50_ms']:.1f} / {alone['p99_ms']:.1f} | "
            f"{agg['p50_ms']:.1f} / {agg['p99_ms']:.1f} |"
        )
    lines += ["", "Profiles measured (server terms):", ""]
    seen: set[str] = set()
    for row in rows:
        if row["profile"] in seen:
            continue
        seen.add(row["profile"])
        data = json.loads((profile_path.parent / row["profile"]).read_text())
        server = data["server"]
        lines.append(
            f"- `{row['profile']}` (load 1m {row['profile_load'][0]:.1f}, CPU stolen "
            f"{_share(row.get('profile_steal'))}): model alone batch 1 / "
            f"64: {data['latency_ms'][0]:.1f} / "
            f"{dict(zip(data['batch_sizes'], data['latency_ms'], strict=True)).get(64, float('nan')):.1f} ms; "
            f"overhead p50 / p99 {_q(server, 0.5):.1f} / {_q(server, 0.99):.1f} ms, mean by "
            f"rate {_curve(server)}; model slowdown "
            f"{server['model_slowdown']:.2f} + {server['model_slowdown_per_rps']:.4f}/(req/s); "
            f"points (rate req/s, batch, model ms vs alone ms, overhead ms): "
            + "; ".join(
                f"{p['rate_per_s']:.0f}, {p['mean_batch']:.1f}, {p['model_ms']:.1f} vs "
                f"{p['alone_ms']:.1f}, {p['overhead_ms']:.1f}"
                for p in server["points"]
            )
        )
    return lines


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _verdict(sim: dict[str, Any], sim_rate: float, real: dict[str, Any]) -> str:
    errors = (
        abs(sim_rate - real["throughput_rps"]) / real["throughput_rps"],
        abs(sim["p50_ms"] - real["p50_ms"]) / real["p50_ms"],
        abs(sim["p99_ms"] - real["p99_ms"]) / real["p99_ms"],
    )
    return "yes" if max(errors) <= 0.10 else "no"


def _range(real: dict[str, Any]) -> str:
    spread = real.get("spread")
    if not spread:
        return "one run"
    (p50_low, p50_high), (p99_low, p99_high) = spread["p50_ms"], spread["p99_ms"]
    return f"{p50_low:.1f}-{p50_high:.1f} / {p99_low:.1f}-{p99_high:.1f}"


def _curve(server: dict[str, Any]) -> str:
    rates, means = server.get("overhead_rates_per_s") or [], server.get("overhead_mean_ms") or []
    if not rates:
        return f"+{server['overhead_growth_per_rps'] * 100:.2f} %/(req/s)"
    return ", ".join(f"{m:.1f} ms at {r:.0f}/s" for r, m in zip(rates, means, strict=True))


def _q(server: dict[str, Any], level: float) -> float:
    import numpy as np

    return float(np.interp(level, server["overhead_levels"], server["overhead_ms"]))


def resimulate(rows_path: Path) -> list[str]:
    """The recorded real replays of ``rows_path`` (a ``fidelity.json``) against the simulator
    with each row's own profile refitted by the current fit (``refit_server_terms``: the
    lines again from the profile's own calibration points; nothing from the replays)."""
    from aiscale.plan import load_profile, save_profile
    from aiscale.plan.calibration import refit_server_terms

    rows = json.loads(rows_path.read_text())
    lines = [
        "| rep | trace | TS | real req/s | sim req/s | err | real p50 ms | sim p50 ms | err "
        "| real p99 ms | sim p99 ms | err | refitted slowdown |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        profile = load_profile(rows_path.parent / row["profile"])
        assert profile.server is not None
        terms = refit_server_terms(profile.server)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "refit.json"
            save_profile(replace(profile, server=terms), path)
            trace = TRACES / f"AzureLLMInferenceTrace_{row['trace']}.csv"
            duration = float(round(row["real"]["duration_s"]))
            sim = simulated(path, trace, row["time_scale"], duration)["exact"]
        real = row["real"]
        sim_rate = sim["completed"] / max(sim["duration_s"], duration)
        fraction = row.get("capacity_fraction")
        lines.append(
            f"| {row['repeat']} | {row['trace']} | {row['time_scale']:g}"
            f"{'' if fraction is None else f' ({fraction:.0%} cap.)'} | "
            f"{real['throughput_rps']:.1f} | {sim_rate:.1f} | "
            f"{_err(sim_rate, real['throughput_rps'])} | {real['p50_ms']:.1f} | "
            f"{sim['p50_ms']:.1f} | {_err(sim['p50_ms'], real['p50_ms'])} | "
            f"{real['p99_ms']:.1f} | {sim['p99_ms']:.1f} | {_err(sim['p99_ms'], real['p99_ms'])} | "
            f"{terms.model_slowdown:.2f} + {terms.model_slowdown_per_rps:.4f}/(req/s) |"
        )
    return lines


def self_check(profile_paths: list[Path], seconds: float = 30.0) -> list[str]:
    """Each profile against its own steady calibration levels: Poisson arrivals at the
    level's asked rate for ``seconds`` (seeded) through the exact simulator, beside the
    p50 / p99 the level measured. Set against the trace replays, it tells whether an error
    follows the load or the arrival pattern."""
    import numpy as np

    from aiscale.plan import Arrivals, SimulationConfig, load_profile, simulate
    from aiscale.plan.calibration import is_saturated
    from aiscale.scaling.policies import StaticConfig, StaticPolicy

    lines = [
        "| profile | rate req/s | real p50 / sim ms | err | real p99 / sim ms | err |",
        "| --- | ---: | --- | ---: | --- | ---: |",
    ]
    for path in profile_paths:
        profile = load_profile(path)
        assert profile.server is not None, f"{path} has no server terms"
        for point in profile.server.points[1:]:
            if is_saturated(point):
                continue
            rng = np.random.default_rng(1)
            gaps = rng.exponential(1 / point.offered_per_s, int(point.offered_per_s * seconds))
            times = np.cumsum(gaps)
            result = simulate(
                Arrivals(times, float(times[-1]) + 1e-3),
                StaticPolicy(StaticConfig(1)),
                SimulationConfig(profile=profile, max_batch_size=64),
            )
            lines.append(
                f"| {path.name} | {point.offered_per_s:.0f} | {point.p50_ms:.1f} / "
                f"{result.p50_ms:.1f} | {_err(result.p50_ms, point.p50_ms)} | "
                f"{point.p99_ms:.1f} / {result.p99_ms:.1f} | {_err(result.p99_ms, point.p99_ms)} |"
            )
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--resimulate":
        print("\n".join(resimulate(Path(sys.argv[2]))))
    elif len(sys.argv) >= 3 and sys.argv[1] == "--self-check":
        print("\n".join(self_check([Path(arg) for arg in sys.argv[2:]])))
    else:
        sys.exit(
            "run benchmarks/simulator/run.py, or fidelity.py --resimulate FIDELITY.json, or "
            "fidelity.py --self-check PROFILE.json..."
        )
