"""What durable capture does to the tail: the disk's fdatasync, and p99 with capture on and off.

A captured ``200`` is sent once its record is fdatasync'ed (``data/capture.py``), so the
disk's sync stalls reach the served p99. First the disk under the data folder is probed as
the calibration probes it (``calibration.probe_disk``: write + fdatasync every 10 ms). Then
``aiscale serve minilm`` with capture (the default) and with ``--no-capture`` take turns, a
fresh server each time, under the same open-loop Poisson load (``aiscale bench --rate``);
the capturing server's own ``aiscale_capture_append_seconds`` gives the mean wait.
Writes ``benchmarks/capture/tail.json`` and ``benchmarks/capture/TAIL.md``.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/capture/tail.py \\
        [--rate 60] [--seconds 40] [--repetitions 2] [--probe-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.machine import describe_machine  # noqa: E402
from benchmarks.serving.run import AISCALE, run_json, start_aiscale, stop  # noqa: E402

from aiscale.plan.calibration import probe_disk  # noqa: E402

OUT = Path(__file__).resolve().parent


def _append_wait(url: str) -> tuple[float, float]:
    """``(sum, count)`` of the requests log's ``aiscale_capture_append_seconds``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for part in ("sum", "count"):
        match = re.search(
            rf'^aiscale_capture_append_seconds_{part}{{log="requests"}} (\S+)$', text, re.M
        )
        found[part] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def one_run(is_captured: bool, rate: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="aiscale-tail-") as data_dir:
        args = ["minilm", *([] if is_captured else ["--no-capture"])]
        process, url, _ = start_aiscale(args, Path(data_dir))
        try:
            target = f"{url}/v1/embeddings"
            run_json([*AISCALE, "bench", target, "--concurrency", "1", "--duration", "2",
                      "--json"])  # fmt: skip
            before = _append_wait(url)
            result = run_json([*AISCALE, "bench", target, "--rate", f"{rate:g}", "--duration",
                               f"{seconds:g}", "--warmup", "2", "--json"])  # fmt: skip
            after = _append_wait(url)
        finally:
            stop(process)
    waited = after[1] - before[1]
    return {
        "capture": is_captured,
        "throughput_rps": result["throughput_rps"],
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "errors": result["errors"],
        "capture_wait_mean_ms": (after[0] - before[0]) / waited * 1000 if waited > 0 else None,
    }


def render(results: dict[str, Any]) -> str:
    disk, machine = results["disk"], results["machine"]
    lines = [
        "# Durable capture and the tail (the disk's fdatasync)",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}; "
        f"git {machine['git_sha']}; {machine['date']}",
        f"- command: `{results['command']}`",
        f"- disk probe ({results['probe_seconds']:g} s, write + fdatasync every 10 ms in a "
        f"temporary folder): ordinary commit p50 {disk['sync_ms'][1]:.2f} ms, p99 "
        f"{disk['sync_ms'][3]:.2f} ms; {disk['stall_rate_per_s']:.2f} stalls/s"
        + (
            f" of {min(disk['stall_ms']):.0f}-{max(disk['stall_ms']):.0f} ms"
            if disk["stall_ms"] else ""
        )
        + "",
        f"- load: `aiscale bench URL/v1/embeddings --rate {results['rate']:g} --duration "
        f"{results['seconds']:g} --warmup 2` (open loop, Poisson) against a fresh `aiscale "
        "serve minilm` per run, capture on and off taking turns",
        "",
        "| run | capture | req/s | p50 ms | p99 ms | max ms | errors | mean capture wait ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for number, run in enumerate(results["runs"], start=1):
        wait = run["capture_wait_mean_ms"]
        lines.append(
            f"| {number} | {'on' if run['capture'] else 'off'} | {run['throughput_rps']:.1f} | "
            f"{run['p50_ms']:.1f} | {run['p99_ms']:.1f} | {run['max_ms']:.0f} | "
            f"{run['errors']} | {'-' if wait is None else format(wait, '.2f')} |"
        )
    for is_captured in (True, False):
        chosen = [r for r in results["runs"] if r["capture"] is is_captured]
        lines.append(
            f"\nCapture {'on' if is_captured else 'off'}: median p50 "
            f"{statistics.median(r['p50_ms'] for r in chosen):.1f} ms, median p99 "
            f"{statistics.median(r['p99_ms'] for r in chosen):.1f} ms."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--probe-seconds", type=float, default=20.0)
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="aiscale-disk-") as folder:
        disk = probe_disk(Path(folder), args.probe_seconds).to_dict()
    runs = []
    for _ in range(args.repetitions):
        for is_captured in (True, False):
            runs.append(one_run(is_captured, args.rate, args.seconds))
            print(json.dumps(runs[-1]), flush=True)
    results = {
        "command": " ".join(["benchmarks/capture/tail.py", *sys.argv[1:]]),
        "machine": describe_machine(root),
        "probe_seconds": args.probe_seconds,
        "rate": args.rate,
        "seconds": args.seconds,
        "disk": disk,
        "runs": runs,
    }
    (OUT / "tail.json").write_text(json.dumps(results, indent=1) + "\n")
    (OUT / "TAIL.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
