"""Serving benchmark for issue 2: physical limit, aiscale serve minilm, framework overhead.

Everything runs in one go on this machine, so the figures compare as ratios:
  1. offline: the minilm runtime called directly, sentences/s at batch 1, 8, 32, 64, 128;
  2. ``aiscale serve minilm`` under ``aiscale bench`` closed loop at concurrency 1, 16, 64,
     plus the cold start (process start to the first embedding);
  3. a no-op model through aiscale (API key auth and metrics on) beside plain FastAPI +
     uvicorn (1 and 2 workers) doing the same parsing, at concurrency 1 and 64.
Writes ``benchmarks/serving/results.json`` and ``benchmarks/serving/RESULTS.md``.

    .venv/bin/python benchmarks/serving/run.py [--seconds 10] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe_machine  # noqa: E402

AISCALE = [sys.executable, "-m", "aiscale.cli"]


def run_json(
    command: list[str], timeout_s: float = 600, env: dict[str, str] | None = None
) -> dict[str, Any]:
    full_env = {**os.environ, **(env or {})}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=full_env
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{command} failed: {completed.stderr[-2000:]}")
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def start_aiscale(args: list[str], data_dir: Path) -> tuple[subprocess.Popen[str], str, float]:
    """Start ``aiscale serve``; return the process, its URL and its cold start in seconds
    (from process start to the first successful inference answer)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [*AISCALE, "serve", *args, "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    url = ""
    for line in process.stdout:
        found = re.search(r"aiscale serving on (http://\S+)", line)
        if found:
            url = found.group(1)
            break
    if not url:
        raise RuntimeError("aiscale serve did not start")
    return process, url, time.perf_counter() - started


def first_answer_s(
    url: str, started: float, path: str, body: dict[str, Any], headers: dict[str, str]
) -> float:
    with httpx.Client(timeout=60) as client:
        response = client.post(f"{url}{path}", json=body, headers=headers)
        response.raise_for_status()
    return time.perf_counter() - started


def bench(url: str, concurrency: int, seconds: float, warmup: float, *extra: str) -> dict[str, Any]:
    return run_json(
        [
            *AISCALE,
            "bench",
            url,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(seconds),
            "--warmup",
            str(warmup),
            "--json",
            *extra,
        ]
    )


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_fastapi(workers: int) -> tuple[subprocess.Popen[str], str]:
    """Start the FastAPI baseline on a port the OS picks; uvicorn logs the port it bound."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.serving.fastapi_noop:app",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            str(workers),
            "--no-access-log",
            "--log-level",
            "info",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line, re.IGNORECASE)
        if found:
            url = found.group(1)
            break
    else:
        raise RuntimeError("uvicorn baseline did not start")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("uvicorn baseline not healthy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--offline-seconds", type=float, default=4.0)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": describe_machine(ROOT), "command": " ".join(sys.argv)}

    print("1/3 offline limit ...", flush=True)
    # Both OpenMP settings: libgomp's default long spin, and the short spin replicas use.
    # The best of the two per batch size is the limit we compare against.
    offline_runs = {}
    for label, env in (("default", {}), ("short_spin", {"GOMP_SPINCOUNT": "10000"})):
        offline_runs[label] = run_json(
            [
                sys.executable,
                "benchmarks/serving/offline.py",
                "--seconds",
                str(args.offline_seconds),
            ],
            env=env,
        )["sentences_per_s"]
    results["offline_runs"] = offline_runs
    results["offline_sentences_per_s"] = {
        size: max(run[size] for run in offline_runs.values()) for size in offline_runs["default"]
    }
    best_offline = max(results["offline_sentences_per_s"].values())

    print("2/3 aiscale serve minilm ...", flush=True)
    with tempfile.TemporaryDirectory() as data_dir:
        started = time.perf_counter()
        process, url, _ = start_aiscale(["minilm"], Path(data_dir))
        try:
            cold = first_answer_s(
                url, started, "/v1/embeddings", {"model": "minilm", "input": "hello"}, {}
            )
            results["cold_start_s"] = cold
            serve_runs = {}
            for concurrency in (1, 16, 64):
                serve_runs[str(concurrency)] = bench(
                    f"{url}/v1/embeddings", concurrency, args.seconds, args.warmup
                )
            results["serve_minilm"] = serve_runs
            results["serve_metrics"] = _batch_summary(httpx.get(f"{url}/metrics").text)
        finally:
            stop(process)
    results["ratio_c64_to_best_offline"] = (
        results["serve_minilm"]["64"]["throughput_rps"] / best_offline
    )

    print("3/3 no-op overhead ...", flush=True)
    noop: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        created = subprocess.run(
            [*AISCALE, "keys", "create", "bench", "--scope", "inference", "--data-dir", data_dir],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        key = re.search(r"ask_[A-Za-z0-9_-]+", created.stdout)
        assert key is not None, created.stdout
        process, url, _ = start_aiscale(["tests.models:NoOp", "--name", "noop"], Path(data_dir))
        try:
            header = ["--header", f"Authorization: Bearer {key.group(0)}"]
            noop["aiscale"] = {
                str(c): bench(f"{url}/v2/models/noop/infer", c, args.seconds, args.warmup, *header)
                for c in (1, 64)
            }
        finally:
            stop(process)
    for workers in (1, 2):
        process, url = start_fastapi(workers)
        try:
            noop[f"fastapi_{workers}w"] = {
                str(c): bench(f"{url}/v2/models/noop/infer", c, args.seconds, args.warmup)
                for c in (1, 64)
            }
        finally:
            stop(process)
    results["noop"] = noop
    results["noop_added_p50_ms_c1"] = (
        noop["aiscale"]["1"]["p50_ms"] - noop["fastapi_1w"]["1"]["p50_ms"]
    )
    out = Path(__file__).parent
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "RESULTS.md").write_text(render(results))
    print((out / "RESULTS.md").read_text())


def _batch_summary(metrics: str) -> dict[str, float]:
    values = {}
    for name in ("aiscale_batcher_batch_size_sum", "aiscale_batcher_batch_size_count"):
        found = re.search(rf"^{name}{{[^}}]*}} (\S+)$", metrics, re.MULTILINE)
        values[name] = float(found.group(1)) if found else 0.0
    count = values["aiscale_batcher_batch_size_count"]
    return {
        "batches": count,
        "mean_batch_size": values["aiscale_batcher_batch_size_sum"] / count if count else 0.0,
    }


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    offline = results["offline_sentences_per_s"]
    best = max(offline.values())
    lines = [
        "# Serving benchmark (issue 2)",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB RAM",
        f"- versions: Python {machine['python']}, torch {machine['torch']}, uvicorn {machine['uvicorn']}, "
        f"fastapi {machine['fastapi']}; aiscale commit {machine['git_sha']}",
        f"- command: `{results['command']}` (each load run: closed loop, {'see results.json'} for durations)",
        f"- date: {machine['date']}",
        "",
        "## 1. Physical limit: minilm called directly (sentences/s)",
        "",
        "One process, 2 torch threads, the same runtime code and sentences as the server, run with "
        "libgomp's default spin and with the short spin the replicas use; the best counts.",
        "",
        "| batch size | default spin | short spin | best |",
        "| ---: | ---: | ---: | ---: |",
        *[
            f"| {size} | {results['offline_runs']['default'][size]:.1f} | "
            f"{results['offline_runs']['short_spin'][size]:.1f} | {rate:.1f} |"
            for size, rate in offline.items()
        ],
        "",
        "## 2. `aiscale serve minilm` (closed loop, `aiscale bench`)",
        "",
        "| concurrency | req/s | p50 ms | p99 ms | errors | ratio to best offline |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency, run in results["serve_minilm"].items():
        lines.append(
            f"| {concurrency} | {run['throughput_rps']:.1f} | {run['p50_ms']:.1f} | {run['p99_ms']:.1f} | "
            f"{run['errors']} | {run['throughput_rps'] / best:.3f} |"
        )
    lines += [
        "",
        f"Target at concurrency 64: at least 0.85 of the best offline throughput ({best:.1f}/s), p99 under 500 ms. "
        f"Measured ratio: **{results['ratio_c64_to_best_offline']:.3f}**. "
        f"Mean batch size over the whole run: {results['serve_metrics']['mean_batch_size']:.1f}. "
        f"Cold start (process start to first embedding): **{results['cold_start_s']:.2f} s**.",
        "",
        "## 3. Framework overhead: a no-op model",
        "",
        "aiscale: API key auth and metrics on (capture is not built yet). FastAPI: the same OIP v2 body parsed by "
        "pydantic, no auth.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for server, runs in results["noop"].items():
        for concurrency, run in runs.items():
            lines.append(
                f"| {server} | {concurrency} | {run['throughput_rps']:.0f} | {run['p50_ms']:.2f} | "
                f"{run['p99_ms']:.2f} | {run['errors']} |"
            )
    aiscale64 = results["noop"]["aiscale"]["64"]["throughput_rps"]
    lines += [
        "",
        f"Throughput ratio at concurrency 64, aiscale / FastAPI 1 worker: "
        f"**{aiscale64 / results['noop']['fastapi_1w']['64']['throughput_rps']:.2f}**; "
        f"/ FastAPI 2 workers: **{aiscale64 / results['noop']['fastapi_2w']['64']['throughput_rps']:.2f}**. "
        f"Added p50 latency at concurrency 1 (aiscale − FastAPI 1 worker): "
        f"**{results['noop_added_p50_ms_c1']:.2f} ms**.",
        "",
        "The load generator runs on the same 2 cores as the servers; its CPU per request is in results.json "
        "(`client_cpu_us_per_request`).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
