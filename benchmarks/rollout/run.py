"""Release safety, measured on a real server: time to roll back a bad canary, and what shadowing costs.

1. A canary that fails 5% of requests is rolled out (steps 10, 25, 50, 100; min 200 requests per
   version per step; a look every second) under open-loop load of 200 requests/s; we record the
   time from the rollout's start (the canary's first request follows within milliseconds) to the
   automatic rollback, and how many requests the canary served.
2. The p99 latency of the primary answer at 500 requests/s open loop, with no shadow and with
   100% of traffic mirrored to a shadow version, in the same run.
Writes ``benchmarks/rollout/results.json`` and ``benchmarks/rollout/RESULTS.md``.

    .venv/bin/python benchmarks/rollout/run.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.serving.run import AISCALE, run_json, start_aiscale, stop  # noqa: E402


def register(data_dir: str, version: str, cls: str, config: dict[str, Any]) -> None:
    subprocess.run(
        [
            *AISCALE,
            "models",
            "register",
            "m",
            "--runtime",
            "python",
            "--uri",
            f"tests.models:{cls}",
            "--version",
            version,
            "--config",
            json.dumps(config),
            "--data-dir",
            data_dir,
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def bench_in_background(
    url: str, rate: float, seconds: float, out: dict[str, Any]
) -> threading.Thread:
    def target() -> None:
        out.update(
            run_json(
                [
                    *AISCALE,
                    "bench",
                    f"{url}/v2/models/m/infer",
                    "--rate",
                    str(rate),
                    "--duration",
                    str(seconds),
                    "--json",
                ]
            )
        )

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def served(url: str, version: str) -> int:
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aiscale_gateway_requests_total{") and f'version="{version}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def time_to_rollback() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        register(data_dir, "1", "Fail", {"error_rate": 0.0})
        register(data_dir, "2", "Fail", {"error_rate": 0.05, "seed": 7})
        process, url, _ = start_aiscale(
            ["m", "--version", "1", "--max-batch-size", "1"], Path(data_dir)
        )
        try:
            load: dict[str, Any] = {}
            thread = bench_in_background(url, 200, 60, load)
            time.sleep(3)  # steady load before the rollout starts
            started = time.monotonic()
            body = {
                "version": "2",
                "steps": [10, 25, 50, 100],
                "interval_s": 1.0,
                "min_step_duration_s": 5.0,
                "min_requests": 200,
            }
            httpx.post(
                f"{url}/admin/deployments/m/rollout", json=body, timeout=60
            ).raise_for_status()
            while True:
                info = httpx.get(f"{url}/admin/deployments/m/rollout").json()
                if info["status"] != "running" or time.monotonic() - started > 55:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            canary_requests = served(url, "2")
            thread.join()
        finally:
            stop(process)
    return {
        "status": info["status"],
        "seconds_to_decision": elapsed,
        "canary_requests": canary_requests,
        "reason": info["reason"],
        "load": load,
    }


def shadow_overhead() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as data_dir:
        register(data_dir, "1", "Echo", {})
        register(data_dir, "2", "Echo", {})
        process, url, _ = start_aiscale(["m", "--version", "1"], Path(data_dir))
        try:
            httpx.post(
                f"{url}/admin/deployments/m/versions", json={"version": "2"}, timeout=60
            ).raise_for_status()
            runs = {}
            for label, shadow in (
                ("no_shadow", None),
                ("shadow_100pct", "2"),
                ("no_shadow_again", None),
            ):
                httpx.put(
                    f"{url}/admin/deployments/m/split",
                    json={
                        "weights": {"1": 100},
                        "shadow_version": shadow,
                        "shadow_fraction": 1.0 if shadow else 0.0,
                    },
                ).raise_for_status()
                runs[label] = run_json(
                    [
                        *AISCALE,
                        "bench",
                        f"{url}/v2/models/m/infer",
                        "--rate",
                        "500",
                        "--duration",
                        "10",
                        "--warmup",
                        "1",
                        "--json",
                    ]
                )
        finally:
            stop(process)
    return runs


def main() -> None:
    results: dict[str, Any] = {"machine": describe_machine(ROOT), "command": " ".join(sys.argv)}
    print("1/2 time to roll back a bad canary ...", flush=True)
    results["rollback"] = time_to_rollback()
    print("2/2 shadow overhead ...", flush=True)
    results["shadow"] = shadow_overhead()
    out = Path(__file__).parent
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(render(results))
    print((out / "RESULTS.md").read_text())


def render(results: dict[str, Any]) -> str:
    machine, rollback, shadow = results["machine"], results["rollback"], results["shadow"]
    base = (shadow["no_shadow"]["p99_ms"] + shadow["no_shadow_again"]["p99_ms"]) / 2
    lines = [
        "# Release safety benchmark (issue 3)",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"aiscale commit {machine['git_sha']}; {machine['date']}",
        f"- command: `{results['command']}`",
        "",
        "## Time to roll back a canary that fails 5% of requests",
        "",
        "Open loop at 200 requests/s (`aiscale bench --rate 200`), baseline `tests.models:Fail` with error rate 0, "
        "canary the same class with error rate 0.05; steps 10, 25, 50, 100 %; at least 200 requests per "
        "version per step; a look every second; alpha 0.05.",
        "",
        f"- outcome: **{rollback['status']}** after **{rollback['seconds_to_decision']:.1f} s**; "
        f"the canary served **{rollback['canary_requests']}** requests",
        f"- reason: {rollback['reason']}",
        f"- load: {rollback['load'].get('requests')} requests, errors by status {rollback['load'].get('errors_by_status')}",
        "",
        "## p99 of the primary answer with and without shadow traffic",
        "",
        "Open loop at 500 requests/s, `tests.models:Echo` as primary and as shadow (its own replica).",
        "",
        "| run | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: |",
        *[
            f"| {label} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {run['errors']} |"
            for label, run in shadow.items()
        ],
        "",
        f"p99 with 100% shadowing / mean p99 of the two runs without: **{shadow['shadow_100pct']['p99_ms'] / base:.2f}**.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
