"""Cold start to the first token, and memory per replica, of ``aiscale serve smollm2``.

Each round starts ``aiscale serve smollm2`` (one llama.cpp replica, 4 slots, 2 threads) and
measures, from the moment the process is started: when it prints its URL, when
``/v2/health/ready`` first answers 200, and when the first streamed token of a chat request
arrives. Then the resident memory (RSS) of the gateway process and of its engine replica,
idle and after a short load (``aiscale bench --chat``, 4 streams). For scale, the same engine
started alone (``aiscale.engines.llamacpp_process`` with the gateway's own settings) to its
first token, in the same rounds (interleaved).

    .venv/bin/python benchmarks/llm/cold_start.py [--rounds 5]
    # smoke test at tiny size: --rounds 1 --load-seconds 1 --out /tmp/x.md

Duration: about 30 s per round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    announce_duration,
    chat_bench,
    command_line,
    engine_children,
    first_token_s,
    machine,
    machine_lines,
    main_guard,
    rss_mb,
    serve,
    spread,
    start_engine,
    stop_engine,
    write_section,
)


def gateway_round(args: argparse.Namespace) -> dict[str, Any]:
    served = serve([MODEL, "--num-threads", "2"])
    try:
        ready_s = time.perf_counter() - served.started
        first_s = first_token_s(served.url, served.started)
        engines = engine_children(served.process.pid)
        idle = {"gateway": rss_mb(served.process.pid),
                "engine": sum(rss_mb(pid) for pid in engines)}  # fmt: skip
        chat_bench(served.url, "--model", MODEL, "--concurrency", "4", "--duration",
                   str(args.load_seconds), "--max-tokens", "32")  # fmt: skip
        loaded = {"gateway": rss_mb(served.process.pid),
                  "engine": sum(rss_mb(pid) for pid in engines)}  # fmt: skip
        # A second health check proves the server outlived the load.
        httpx.get(f"{served.url}/v2/health/ready", timeout=5).raise_for_status()
    finally:
        served.stop()
    return {"ready_s": ready_s, "first_token_s": first_s, "num_engines": len(engines),
            "idle_mb": idle, "loaded_mb": loaded}  # fmt: skip


def engine_round() -> dict[str, Any]:
    started = time.perf_counter()
    process, url, load_s = start_engine(threads=2, parallel=4)
    try:
        first_s = first_token_s(url, started)
        memory = rss_mb(process.pid)
    finally:
        stop_engine(process)
    return {"first_token_s": first_s, "load_s": load_s, "rss_mb": memory}


def expected_duration_s(args: argparse.Namespace) -> float:
    """Seconds a run takes: per round, ``aiscale serve`` to its first token (~10 s), the load
    (its seconds and ~4 s of bench process), the stop (~3 s), and the engine alone (~5 s)."""
    return float(args.rounds * (10 + args.load_seconds + 4 + 3 + 5))


def run(args: argparse.Namespace) -> None:
    announce_duration(expected_duration_s(args))
    info = machine()
    gateway: list[dict[str, Any]] = []
    engine: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        steps = [("gateway", gateway), ("engine", engine)]
        for name, sink in steps if round_index % 2 == 0 else reversed(steps):
            result = gateway_round(args) if name == "gateway" else engine_round()
            sink.append(result)
            print(f"round {round_index + 1} {name}: first token after "
                  f"{result['first_token_s']:.2f} s", flush=True)  # fmt: skip
    write_section("cold_start", render(info, args, gateway, engine), args.out)
    print(f"wrote the cold_start section of {args.out}")


def render(info: dict[str, Any], args: argparse.Namespace, gateway: list[dict[str, Any]],
           engine: list[dict[str, Any]]) -> str:
    def mb(rows: list[dict[str, Any]], phase: str, part: str) -> str:
        return spread([r[phase][part] for r in rows], "{:.0f}")

    return "\n".join([
        "## Cold start to the first token, and memory per replica",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- `aiscale serve {MODEL} --num-threads 2` (one llama.cpp replica, 4 slots); "
        f"{args.rounds} rounds interleaved with the engine started alone; cells: median "
        "(min-max)",
        "",
        "| what | seconds from process start |",
        "| --- | --- |",
        f"| aiscale serve: ready (/v2/health/ready 200) | "
        f"{spread([r['ready_s'] for r in gateway], '{:.2f}')} |",
        f"| aiscale serve: first streamed token | "
        f"{spread([r['first_token_s'] for r in gateway], '{:.2f}')} |",
        f"| engine alone: model loaded | {spread([r['load_s'] for r in engine], '{:.2f}')} |",
        f"| engine alone: first streamed token | "
        f"{spread([r['first_token_s'] for r in engine], '{:.2f}')} |",
        "",
        "| process | RSS MiB idle | RSS MiB after load |",
        "| --- | --- | --- |",
        f"| aiscale gateway | {mb(gateway, 'idle_mb', 'gateway')} | "
        f"{mb(gateway, 'loaded_mb', 'gateway')} |",
        f"| its engine replica | {mb(gateway, 'idle_mb', 'engine')} | "
        f"{mb(gateway, 'loaded_mb', 'engine')} |",
        f"| engine alone | {spread([r['rss_mb'] for r in engine], '{:.0f}')} | - |",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
