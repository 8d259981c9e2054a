"""The verdict and the Markdown of the LLM fidelity benchmark (``fidelity.py``).

The band is the minilm benchmark's (``benchmarks/simulator/fidelity_band.band``): the real
runs' range widened by 10% of their median. No I/O.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from benchmarks.llm.common import machine_lines
from benchmarks.simulator.fidelity_band import WIDEN, band

#: ``(key, label, scale to display, unit)``.
FIGURES = (
    ("ttft_p50_s", "TTFT p50", 1000.0, "ms"),
    ("ttft_p99_s", "TTFT p99", 1000.0, "ms"),
    ("itl_p50_s", "ITL p50", 1000.0, "ms"),
    ("itl_p99_s", "ITL p99", 1000.0, "ms"),
    ("output_tokens_per_s", "output tokens/s", 1.0, "tok/s"),
)


def judge(case: dict[str, Any]) -> dict[str, Any]:
    """Per figure: the real runs' median, min and max, the band, the simulated value and
    whether it lies inside (a figure some run could not measure, e.g. no request finished,
    is not judged: ``is_inside`` None)."""
    verdict = {}
    for key, *_ in FIGURES:
        values = [r["figures"][key] for r in case["runs"]]
        simulated = case["simulated"]["figures"][key]
        if not values or any(not math.isfinite(v) for v in [*values, simulated]):
            verdict[key] = {"is_inside": None, "simulated": simulated, "real": values}
            continue
        low, high = band(values)
        verdict[key] = {
            "median": statistics.median(values), "min": min(values), "max": max(values),
            "low": low, "high": high, "simulated": simulated,
            "is_inside": low <= simulated <= high,
        }  # fmt: skip
    return verdict


def _num(value: float, scale: float) -> str:
    scaled = value * scale
    return f"{scaled:.0f}" if abs(scaled) >= 100 else f"{scaled:.1f}"


def _case_line(case: dict[str, Any]) -> str:
    runs = case["runs"]
    capacity = case["capacity"]
    prompt = sum(sum(t for t in r["prompt_tokens"] if t) for r in runs)
    cached = sum(sum(t for t in r["cached_tokens"] if t) for r in runs)
    errors = sum(sum(r["errors"].values()) for r in runs)
    short = sum(r["short_outputs"] for r in runs)
    sim = case["simulated"]
    sim_share = sim["cached_prompt_tokens"] / sim["prompt_tokens"] if sim["prompt_tokens"] else 0
    return (
        f"- **{case['workload']} at {case['load']:.0%}**: {case['rate_per_s']:.2f} req/s "
        f"(capacity {capacity['capacity_per_s']:.2f} req/s: mean prompt "
        f"{capacity['mean_prompt_tokens']:.0f} tokens, {capacity['mean_prefilled_tokens']:.0f} "
        f"prefilled, output {capacity['mean_output_tokens']:.0f}, {capacity['slots']} slots), "
        f"{case['requests']} requests; cached prompt tokens real "
        f"{cached / prompt if prompt else 0:.0%}, simulated {sim_share:.0%}; real errors "
        f"{errors}, short outputs {short}; simulated preemptions {sim['preemptions']}, "
        f"prompt tokens differing between runs {sim['prompt_tokens_differing_between_runs']}"
    )


def render(found: dict[str, Any]) -> str:
    """The ``fidelity`` section of ``benchmarks/llm/RESULTS.md``."""
    info = found["machine"]
    profile = found["profile"]
    smoke = " (SMOKE TEST: fewer than 5 runs, not a result)" if found["smoke"] else ""
    measured = (
        f"`aiscale profile {profile['model']}` right before ({found['profile_seconds']:.0f} s)"
        if found["profile_seconds"]
        else f"given (`{found['profile_path']}`, {profile['provenance']['source']})"
    )
    lines = [
        f"## Simulator fidelity: exact mode against the band of real runs{smoke}",
        "",
        *machine_lines(info),
        f"- command: `{found['command']}` ({found['wall_s'] / 60:.1f} min); load average at "
        f"the end {found['load_average_at_end']:.2f}",
        f"- profile: {measured}: step {profile['step_base_s'] * 1000:.1f} ms + "
        f"{profile['decode_per_seq_s'] * 1000:.2f} ms per sequence, prefill "
        f"{profile['prefill_per_token_s'] * 1000:.3f} ms per token, KV "
        f"{profile['kv_capacity_tokens']} tokens, {profile['max_num_seqs']} slots",
        f"- real runs: {found['runs_per_case']} per case, each against a fresh "
        f"{found['target']} (smollm2, llama.cpp, {found['threads']} threads), interleaved "
        f"across cases; {found['seconds']:g} s of open-loop arrivals, outputs forced "
        "(ignore_eos), TTFT from the scheduled time",
        "- load: a share of one replica's capacity for the case's token mix, from the profile: "
        "the saturated replica (every slot decoding, each request's prefill of what it does "
        "not reuse), `fidelity_workload.capacity_per_s`",
        "- simulated: the exact mode, one static replica, prefix caching on, on the same "
        "arrivals, output tokens and the prompt tokens the server reported",
        f"- pass: simulated within [min - {WIDEN:.0%} x median, max + {WIDEN:.0%} x median] of "
        "the real runs; the reason of a miss is for the lead to fill in",
        "",
        *[_case_line(case) for case in found["cases"]],
        "",
        "| workload | load | figure | real median | real min-max | band | simulated | pass "
        "| reason |",
        "| --- | --- | --- | ---: | --- | --- | ---: | --- | --- |",
    ]
    passed = total = 0
    for case in found["cases"]:
        for key, label, scale, unit in FIGURES:
            v = case["verdict"][key]
            if v["is_inside"] is None:
                lines.append(f"| {case['workload']} | {case['load']:.0%} | {label} ({unit}) | "
                             "not measured | | | | - | |")  # fmt: skip
                continue
            total += 1
            passed += bool(v["is_inside"])
            lines.append(
                f"| {case['workload']} | {case['load']:.0%} | {label} ({unit}) | "
                f"{_num(v['median'], scale)} | {_num(v['min'], scale)}-{_num(v['max'], scale)} | "
                f"{_num(v['low'], scale)}-{_num(v['high'], scale)} | "
                f"{_num(v['simulated'], scale)} | {'pass' if v['is_inside'] else '**miss**'} | |"
            )
    lines += ["", f"**{passed} of {total} figures inside their band.** Every run: "
              "`benchmarks/llm/fidelity.json`."]  # fmt: skip
    return "\n".join(lines)
