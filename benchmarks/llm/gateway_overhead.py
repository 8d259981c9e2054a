"""Gateway overhead on the LLM path: one llama.cpp engine called directly, through
``aiscale serve smollm2``, and through LiteLLM's proxy, side by side in one run.

The engine is the gateway's own replica (4 slots, 2 threads, the bundled SmolLM2): the
benchmark finds its port under the ``aiscale serve`` process (Linux ``/proc``; the gateway
does not publish it), so "direct", "aiscale" and "litellm" all reach the very same engine
process, with the same prompt cache and the same threads. LiteLLM's proxy (PyPI
``litellm[proxy]``) is configured with that engine as an ``openai/`` model; without it
installed that column is skipped with the reason.

Each round runs, for each concurrency (1, 4, 16), the three targets one after another in a
rotating order: ``aiscale bench URL --chat`` closed loop, 128-token prompts, 64-token
outputs forced with ``ignore_eos``. Per round and concurrency it computes the ratio of output
tokens/s (target >= 0.95 of direct) and the TTFT p50 delta (target <= +5 ms); the section
shows their medians and ranges over the rounds.

    .venv/bin/python benchmarks/llm/gateway_overhead.py [--rounds 3] [--seconds 20]
    # LiteLLM column: .venv/bin/pip install 'litellm[proxy]' first (not a dependency)
    # smoke test at tiny size: --rounds 1 --seconds 2 --concurrency 1 --out /tmp/x.md

Duration: about rounds x 3 concurrencies x 3 targets x (seconds + warmup + ~5 s), so
~15 min with the defaults.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    Missing,
    chat_bench,
    command_line,
    free_port,
    gateway_engine_urls,
    machine,
    machine_lines,
    main_guard,
    serve,
    spread,
    stop_process,
    write_section,
)

TARGETS = ("direct", "aiscale", "litellm")


def start_litellm(engine_url: str) -> tuple[subprocess.Popen[str] | None, str, str]:
    """LiteLLM's proxy in front of ``engine_url``; (process, url, '') or (None, '', why)."""
    executable = shutil.which("litellm") or str(Path(sys.executable).parent / "litellm")
    # The proxy may live in a venv of its own (its pins clash with ours): found on PATH.
    if not Path(executable).exists():
        return None, "", "LiteLLM not installed (pip install 'litellm[proxy]'; its `litellm` on PATH)"
    folder = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
    config = {
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{engine_url}/v1",
                               "api_key": "none"},
        }],
        # ignore_eos is an engine extra: pass it through rather than drop or refuse it.
        "litellm_settings": {"drop_params": False},
        "general_settings": {},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "litellm.log").open("w")
    process = subprocess.Popen(
        [executable, "--config", str(folder / "config.yaml"), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None, "", f"LiteLLM's proxy exited at start (log: {folder / 'litellm.log'})"
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return process, url, ""
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling readiness with a deadline
    stop_process(process)
    return None, "", "LiteLLM's proxy did not become ready within 180 s"


def run(args: argparse.Namespace) -> None:
    info = machine()
    served = serve([MODEL, "--num-threads", "2"])
    litellm = None
    try:
        engines = gateway_engine_urls(served)
        if len(engines) != 1:
            raise Missing(f"expected one engine replica under aiscale serve, found {engines}")
        urls = {"direct": engines[0], "aiscale": served.url}
        litellm, litellm_url, litellm_skip = start_litellm(engines[0])
        if litellm is not None:
            urls["litellm"] = litellm_url
        print(f"engine {engines[0]}, gateway {served.url}, litellm {litellm_url or litellm_skip}",
              flush=True)
        results: dict[str, dict[int, list[dict[str, Any]]]] = {t: {} for t in urls}
        for round_index in range(args.rounds):
            for concurrency in args.concurrency:
                shift = round_index % len(urls)
                order = list(urls)[shift:] + list(urls)[:shift]
                for target in order:
                    report = chat_bench(
                        urls[target], "--model", MODEL, "--concurrency", str(concurrency),
                        "--prompt-tokens", "128", "--max-tokens", str(args.max_tokens),
                        "--duration", str(args.seconds), "--warmup", str(args.warmup),
                        "--seed", str(round_index),
                    )  # fmt: skip
                    results[target].setdefault(concurrency, []).append(report)
                    print(f"round {round_index + 1} c={concurrency} {target}: "
                          f"{report['output_tokens_per_s']:.1f} tok/s, TTFT p50 "
                          f"{report['ttft_p50_ms']:.1f} ms, errors {report['errors']}",
                          flush=True)  # fmt: skip
    finally:
        if litellm is not None:
            stop_process(litellm)
        served.stop()
    write_section("gateway_overhead", render(info, args, results, litellm_skip), args.out)
    print(f"wrote the gateway_overhead section of {args.out}")


def render(info: dict[str, Any], args: argparse.Namespace,
           results: dict[str, dict[int, list[dict[str, Any]]]], litellm_skip: str) -> str:
    lines = [
        "## Gateway overhead: the same engine direct, through aiscale, through LiteLLM",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- workload: closed loop, 128-token prompts, {args.max_tokens}-token outputs "
        f"(ignore_eos), {args.seconds:g} s counted after {args.warmup:g} s warm-up; "
        f"{args.rounds} interleaved rounds (targets in rotating order)",
        "- engine: the gateway's own llama.cpp replica (4 slots, 2 threads), called directly "
        "at its port (found under the aiscale serve process); LiteLLM's proxy points at it "
        "too",
        "- cells: median (min-max over rounds); ratios and deltas are per round, then summarised",
        "",
        "| concurrency | target | output tok/s | TTFT p50 ms | ITL p50 ms | tok/s ratio to "
        "direct (>= 0.95) | TTFT p50 delta ms (<= +5) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    direct = results.get("direct", {})
    for concurrency in args.concurrency:
        for target in TARGETS:
            runs = results.get(target, {}).get(concurrency)
            if not runs:
                if target == "litellm":
                    lines.append(f"| {concurrency} | litellm | skipped: {litellm_skip} "
                                 "| | | | | |")
                continue
            base = direct.get(concurrency, [])
            ratio = delta = "-"
            if target != "direct" and base:
                ratios = [r["output_tokens_per_s"] / b["output_tokens_per_s"]
                          for r, b in zip(runs, base, strict=False) if b["output_tokens_per_s"]]
                deltas = [r["ttft_p50_ms"] - b["ttft_p50_ms"]
                          for r, b in zip(runs, base, strict=False)
                          if r["ttft_p50_ms"] is not None and b["ttft_p50_ms"] is not None]
                ratio = _judged(spread(ratios, "{:.3f}"), ratios, lambda v: v >= 0.95)
                delta = _judged(spread(deltas, "{:+.1f}"), deltas, lambda v: v <= 5.0)
            lines.append(
                f"| {concurrency} | {target} | "
                f"{spread([r['output_tokens_per_s'] for r in runs])} | "
                f"{spread([r['ttft_p50_ms'] for r in runs if r['ttft_p50_ms'] is not None])} | "
                f"{spread([r['itl_p50_ms'] for r in runs if r['itl_p50_ms'] is not None])} | "
                f"{ratio} | {delta} | {sum(r['errors'] for r in runs)} |"
            )
    short = sum(r["short_outputs"] for t in results.values() for rs in t.values() for r in rs)
    if short:
        lines += ["", f"Note: {short} answers were shorter than asked although ignore_eos was "
                      "sent (a target that drops the option): their tokens/s is not comparable."]
    return "\n".join(lines)


def _judged(text: str, values: list[float], is_met: Any) -> str:
    if not values:
        return text
    import statistics

    return f"{text} {'met' if is_met(statistics.median(values)) else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
