"""Cache-aware routing: ``prefix_aware`` against ``round_robin`` with 2 llama.cpp replicas.

For each policy a fresh ``aiscale serve --config`` (one deployment of the bundled SmolLM2,
``replicas: 2``, each engine 4 slots and 1 thread, ``engine.routing: <policy>``; caches start
cold) is driven by two workloads, one after the other:

1. multi-turn conversations (``aiscale bench --chat --turns``): simultaneous users, each
   resending its whole history every turn, with think time. Reported: TTFT p50/p99, output
   tokens/s, and the prefix-cache hit rate of each replica (cached prompt tokens over prompt
   tokens, from the gateway's ``aiscale_llm_*_prompt_tokens_total`` per replica, which come
   from the engines' usage) over the run;
2. unique single-turn prompts (closed loop): the share of requests each replica served
   (``aiscale_llm_e2e_request_latency_seconds_count`` per replica), whose spread must stay
   within 20% (no piling on one replica).

Rounds interleave the policies (ABBA...). Target: TTFT p50 of round_robin over prefix_aware
>= 1.5 on the multi-turn workload (median of the per-round ratios).

    .venv/bin/python benchmarks/llm/routing.py [--rounds 3] [--seconds 60]
    # smoke test at tiny size: --rounds 1 --seconds 3 --users 2 --out /tmp/x.md

Each server gets an empty KV slot folder of its own: otherwise it would load, and restore,
the same conversations that the other policy's server saved when its engines drained.

Duration (printed at start): rounds x 2 policies x (start and stop ~20 s + multi-turn seconds
+ unique seconds + warm-up + ~8 s of bench processes), about 11 min with the defaults.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    Missing,
    announce_duration,
    by_label,
    chat_bench,
    command_line,
    delta,
    empty_kv_slots_env,
    llm_deployment,
    machine,
    machine_lines,
    main_guard,
    scrape,
    serve,
    spread,
    write_section,
)

POLICIES = ("prefix_aware", "round_robin")
_PROMPT = "aiscale_llm_prompt_tokens_total"
_CACHED = "aiscale_llm_cached_prompt_tokens_total"
_ANSWERED = "aiscale_llm_e2e_request_latency_seconds_count"


def measure(policy: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    config = {"deployments": [llm_deployment(replicas=2, threads=1, routing=policy)]}
    # An empty KV slot folder: the other policy's server saved the same conversations (same
    # seed) when it stopped, and restoring them here would warm a cache meant to be cold.
    env = empty_kv_slots_env()
    try:
        served = serve([], config=config, env=env)
    except BaseException:
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
        raise
    try:
        if not _has_family(served.url):
            raise Missing(f"the gateway's /metrics has no {_PROMPT} (LLM metrics missing)")
        before = scrape(served.url)
        turns = chat_bench(
            served.url, "--model", MODEL, "--turns", str(args.turns), "--concurrency",
            str(args.users), "--think-time", str(args.think_time), "--prompt-tokens",
            str(args.prompt_tokens), "--max-tokens", str(args.max_tokens), "--duration",
            str(args.seconds), "--warmup", str(args.warmup), "--seed", str(seed),
        )  # fmt: skip
        middle = scrape(served.url)
        unique = chat_bench(
            served.url, "--model", MODEL, "--concurrency", str(args.users), "--prompt-tokens",
            str(args.prompt_tokens), "--max-tokens", "16", "--duration",
            str(args.unique_seconds), "--seed", str(seed + 1000),
        )  # fmt: skip
        after = scrape(served.url)
    finally:
        served.stop()
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    prompt = delta(by_label(middle, _PROMPT, "replica"), by_label(before, _PROMPT, "replica"))
    cached = delta(by_label(middle, _CACHED, "replica"), by_label(before, _CACHED, "replica"))
    answered = delta(by_label(after, _ANSWERED, "replica"), by_label(middle, _ANSWERED, "replica"))
    hit_rates = {r: cached.get(r, 0.0) / p for r, p in sorted(prompt.items()) if p > 0}
    counts = [answered[r] for r in sorted(answered)]
    while len(counts) < 2:
        counts.append(0.0)  # a replica that served nothing is in no sample
    mean = sum(counts) / len(counts)
    spread_share = (max(counts) - min(counts)) / mean if mean else float("nan")
    return {"turns": turns, "unique": unique, "hit_rates": hit_rates,
            "hit_rate": sum(cached.values()) / sum(prompt.values()) if prompt else None,
            "unique_counts": counts, "unique_spread": spread_share}  # fmt: skip


def _has_family(url: str) -> bool:
    import httpx

    return "aiscale_llm_prompt_tokens" in httpx.get(f"{url}/metrics", timeout=10).text


def expected_duration_s(args: argparse.Namespace) -> float:
    """Seconds a run takes: per policy and round, a server with 2 engines started and
    stopped (~20 s) and two ``aiscale bench`` runs (~4 s each beyond their own seconds)."""
    per_server = 20 + 2 * 4 + args.warmup + args.seconds + args.unique_seconds
    return float(args.rounds * len(POLICIES) * per_server)


def run(args: argparse.Namespace) -> None:
    announce_duration(expected_duration_s(args))
    info = machine()
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in POLICIES}
    for round_index in range(args.rounds):
        order = POLICIES if round_index % 2 == 0 else tuple(reversed(POLICIES))
        for policy in order:
            result = measure(policy, args, seed=round_index)
            results[policy].append(result)
            turns = result["turns"]
            print(f"round {round_index + 1} {policy}: TTFT p50 {turns['ttft_p50_ms']:.0f} ms, "
                  f"hit rate {result['hit_rate']}, unique spread "
                  f"{result['unique_spread']:.2f}", flush=True)  # fmt: skip
    write_section(args.section, render(info, args, results), args.out)
    print(f"wrote the {args.section} section of {args.out}")


def render(info: dict[str, Any], args: argparse.Namespace,
           results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        f"## Routing: prefix_aware against round_robin, 2 replicas{args.title}",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- deployment: `{MODEL}`, 2 llama.cpp replicas (4 slots, 1 thread each), a fresh "
        "server with an empty KV slot folder per policy and round (cold caches)",
        f"- multi-turn: {args.users} users, {args.turns} turns each, {args.prompt_tokens}-token "
        f"user messages, {args.max_tokens}-token answers, think time {args.think_time:g} s "
        f"(mean), {args.seconds:g} s after {args.warmup:g} s warm-up",
        f"- unique prompts: closed loop of {args.users}, {args.prompt_tokens}-token prompts, "
        f"16-token answers, {args.unique_seconds:g} s",
        f"- {args.rounds} rounds, policies interleaved; cells: median (min-max over rounds)",
        "",
        "| policy | TTFT p50 ms | TTFT p99 ms | output tok/s | cache hit rate (all) | hit rate "
        "per replica | unique-prompt spread (max-min)/mean (<= 0.20) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for policy in POLICIES:
        runs = results[policy]
        per_replica = "; ".join(
            ", ".join(f"{r}: {v:.2f}" for r, v in run["hit_rates"].items()) for run in runs
        )
        spreads = [run["unique_spread"] for run in runs]
        lines.append(
            f"| {policy} | {spread([r['turns']['ttft_p50_ms'] for r in runs])} | "
            f"{spread([r['turns']['ttft_p99_ms'] for r in runs])} | "
            f"{spread([r['turns']['output_tokens_per_s'] for r in runs])} | "
            f"{spread([r['hit_rate'] for r in runs if r['hit_rate'] is not None], '{:.2f}')} | "
            f"{per_replica} | {spread(spreads, '{:.2f}')} "
            f"{'met' if spreads and statistics.median(spreads) <= 0.2 else 'MISSED'} | "
            f"{sum(r['turns']['errors'] + r['unique']['errors'] for r in runs)} |"
        )
    ratios = [
        rr["turns"]["ttft_p50_ms"] / pa["turns"]["ttft_p50_ms"]
        for pa, rr in zip(results["prefix_aware"], results["round_robin"], strict=False)
        if pa["turns"]["ttft_p50_ms"]
    ]
    if ratios:
        verdict = "met" if statistics.median(ratios) >= 1.5 else "MISSED"
        lines += ["", f"TTFT p50 round_robin / prefix_aware (>= 1.5): "
                      f"{spread(ratios, '{:.2f}')} {verdict}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--unique-seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--think-time", type=float, default=0.5)
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--section", default="routing",
                        help="the RESULTS.md section to write (another workload: its own one)")
    parser.add_argument("--title", default="",
                        help="what to add to the section's heading (e.g. the workload)")
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
