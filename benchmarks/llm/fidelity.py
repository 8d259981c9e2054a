"""Fidelity of the LLM simulator against a real engine: the exact mode against the band of N
real runs of the same arrivals (issue 16).

Protocol (one run of this script, on a quiet machine):

1. ``aiscale profile smollm2 --num-threads T`` right before the real runs (or ``--profile``);
2. one fresh ``aiscale serve smollm2`` answers three probes that calibrate prompt lengths
   (``PromptShaper``: template tokens, tokens per word, template tokens per earlier
   exchange), then the schedules are fixed (``fidelity_workload.py``): per workload
   (``unique`` prompts; ``conversations`` sharing prefixes) and load (``--loads``, shares of
   one replica's capacity for that workload's token mix, ``capacity_per_s``: the saturated
   replica of the measured profile), ``--seconds`` of open-loop arrivals;
3. ``--runs`` rounds; each round runs every case (in alternating order) against a fresh
   ``aiscale serve smollm2`` (one llama.cpp replica, 4 slots, 2048-token window, T threads;
   ``--direct``: the engine alone), warmed by one short request, driven by the chat bench's
   stream client and tally (``aiscale.bench.chat_stream``/``chat_results``: the definitions
   of ``aiscale bench URL --chat``), every request at its scheduled time with its output
   forced (``ignore_eos``);
4. the exact simulator (one static replica, prefix caching on) on exactly those arrivals,
   output tokens and the prompt tokens the server reported (the same in every run: the texts
   are), with reuse of the previous turn's prompt for conversations.

Figures: TTFT p50/p99 (from the scheduled time), ITL p50/p99 (every gap between two
tokens), output tokens/s (tokens over the arrival window, or until the last token when the
queue drains later). Quantiles are ``weighted_quantiles``' on both sides. **Criterion** per
figure: the simulated value lies in ``[min - 0.1 * median, max + 0.1 * median]`` of the real
runs (``benchmarks/simulator/fidelity_band.band``, the minilm benchmark's).

Writes ``benchmarks/llm/fidelity.json`` (every run, the schedules' summary, the profile,
machine, versions, command, load averages) and the ``fidelity`` section of
``benchmarks/llm/RESULTS.md``. With ``--runs`` below 5 it is a smoke test: both go to a
temporary folder and RESULTS.md is left alone. Defaults (5 runs x 2 loads x 2 workloads of
25 s, about 35 s each with the server's start and the drain, plus ~1 min of profile and
calibration): about 13 minutes.

    .venv/bin/python benchmarks/llm/fidelity.py
    .venv/bin/python benchmarks/llm/fidelity.py --runs 2 --seconds 10 --loads 0.4   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from aiscale.bench.chat_config import chat_url  # noqa: E402
from aiscale.bench.chat_results import ChatTally  # noqa: E402
from aiscale.bench.chat_stream import ChatStreamClient, StreamOutcome  # noqa: E402
from aiscale.bench.chat_workloads import PromptShaper, synthesize_text  # noqa: E402
from aiscale.plan.llm import LlmSimConfig, TokenRequests, load_llm_profile  # noqa: E402
from aiscale.plan.llm.profile import LlmProfile  # noqa: E402
from aiscale.plan.llm.simconfig import weighted_quantiles  # noqa: E402
from aiscale.plan.llm.simulate import simulate_llm  # noqa: E402
from aiscale.plan.llm.sizing import build_llm_policy  # noqa: E402
from benchmarks.llm.common import (  # noqa: E402
    AISCALE,
    MODEL,
    Served,
    command_line,
    machine,
    main_guard,
    serve,
    start_engine,
    stop_engine,
    write_section,
)
from benchmarks.llm.fidelity_report import judge, render  # noqa: E402
from benchmarks.llm.fidelity_workload import (  # noqa: E402
    WORKLOADS,
    Planned,
    capacity_per_s,
    prefilled,
    schedule,
)

HERE = ROOT / "benchmarks" / "llm"
#: Seconds the real runs wait after their last arrival for streams still open.
DRAIN_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------- servers


class Server:
    """A fresh server for one run: ``aiscale serve smollm2`` or, ``direct``, the engine."""

    def __init__(self, *, threads: int, direct: bool) -> None:
        started = time.perf_counter()
        self._engine: subprocess.Popen[str] | None = None
        self._served: Served | None = None
        if direct:
            self._engine, self.url, _ = start_engine(threads=threads)
        else:
            self._served = serve([MODEL, "--num-threads", str(threads)])
            self.url = self._served.url
        self.start_s = time.perf_counter() - started

    def stop(self) -> None:
        if self._engine is not None:
            stop_engine(self._engine)
        if self._served is not None:
            self._served.stop()
            shutil.rmtree(self._served.data_dir, ignore_errors=True)


def _body(messages: tuple[dict[str, str], ...] | list[dict[str, str]], max_tokens: int,
          *, ignore_eos: bool) -> bytes:  # fmt: skip
    value: dict[str, Any] = {"model": MODEL, "messages": list(messages), "max_tokens": max_tokens,
                             "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    if ignore_eos:
        value["ignore_eos"] = True
    return json.dumps(value, separators=(",", ":")).encode()


async def _one(client: ChatStreamClient, messages: list[dict[str, str]]) -> StreamOutcome:
    outcome = await client.stream(
        _body(messages, 1, ignore_eos=False), started_s=time.perf_counter(), keep_text=False
    )
    if outcome.error is not None or outcome.prompt_tokens is None:
        raise RuntimeError(f"probe failed: {outcome.error} {outcome.error_text} (usage: "
                           f"{outcome.usage})")  # fmt: skip
    return outcome


async def _calibrate(url: str) -> tuple[PromptShaper, float]:
    """Prompt tokens of 1 and 65 words, and of one more exchange: the shaper and the template
    tokens an earlier exchange adds."""
    import random

    client = ChatStreamClient(chat_url(url), headers=(), max_connections=1, timeout_s=60)
    rng = random.Random(-1)
    try:
        short = synthesize_text(1, rng)
        one = await _one(client, [{"role": "user", "content": short}])
        long = await _one(client, [{"role": "user", "content": synthesize_text(65, rng)}])
        two = await _one(client, [{"role": "user", "content": short},
                                  {"role": "assistant", "content": synthesize_text(1, rng)},
                                  {"role": "user", "content": short}])  # fmt: skip
    finally:
        await client.close()
    assert one.prompt_tokens is not None and long.prompt_tokens is not None
    assert two.prompt_tokens is not None
    shaper = PromptShaper.calibrated(1, one.prompt_tokens, 65, long.prompt_tokens)
    turn = two.prompt_tokens - one.prompt_tokens - 2 * shaper.tokens_per_word
    return shaper, max(0.0, turn)


# ---------------------------------------------------------------------- one real run


async def _play(url: str, plan: list[Planned], tick: Callable[[float], None]) -> dict[str, Any]:
    """Send ``plan`` on schedule; the figures and per-request token counts."""
    client = ChatStreamClient(chat_url(url), headers=(), max_connections=256, timeout_s=60)
    tally = ChatTally(slo_ttft_s=1.0, slo_itl_s=0.1, ignore_eos=True)
    outcomes: list[StreamOutcome | None] = [None] * len(plan)
    try:
        warm = _body([{"role": "user", "content": "Say hello."}], 8, ignore_eos=True)
        await client.stream(warm, started_s=time.perf_counter(), keep_text=False)
        start = time.perf_counter() + 0.2

        async def send(index: int, request: Planned) -> None:
            body = _body(request.messages, request.max_tokens, ignore_eos=True)
            outcome = await client.stream(body, started_s=start + request.offset_s, keep_text=False)
            outcomes[index] = outcome
            tally.record(outcome, request.max_tokens)

        async with asyncio.timeout(plan[-1].offset_s + DRAIN_TIMEOUT_S if plan else 1):
            async with asyncio.TaskGroup() as group:
                for index, request in enumerate(plan):
                    delay = start + request.offset_s - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tick(request.offset_s)
                    group.create_task(send(index, request))
    finally:
        await client.close()
    return {"tally": tally, "outcomes": outcomes, "start": start}


def real_run(url: str, plan: list[Planned], seconds: float,
             tick: Callable[[float], None]) -> dict[str, Any]:  # fmt: skip
    try:
        played = asyncio.run(_play(url, plan, tick))
    except TimeoutError:
        raise RuntimeError(
            f"streams still open {DRAIN_TIMEOUT_S:.0f} s after the last arrival"
        ) from None
    tally: ChatTally = played["tally"]
    outcomes: list[StreamOutcome | None] = played["outcomes"]
    ttft = weighted_quantiles(np.asarray(tally.ttft_s), None, (0.5, 0.99))
    itl = weighted_quantiles(np.asarray(tally.itl_s), None, (0.5, 0.99))
    span = max(seconds, tally.last_done_s - played["start"])
    return {
        "figures": {"ttft_p50_s": ttft[0], "ttft_p99_s": ttft[1], "itl_p50_s": itl[0],
                    "itl_p99_s": itl[1], "output_tokens_per_s": tally.output_tokens / span},
        "requests": tally.requests, "ok": tally.ok, "errors": dict(tally.errors),
        "first_error": tally.first_error, "short_outputs": tally.num_short,
        "span_s": span, "output_tokens": tally.output_tokens,
        "prompt_tokens": [o.prompt_tokens if o else None for o in outcomes],
        "cached_tokens": [o.cached_tokens if o else None for o in outcomes],
        "completion_tokens": [o.completion_tokens if o else None for o in outcomes],
    }  # fmt: skip


# ---------------------------------------------------------------------- the simulator


def prompt_tokens_of(case: dict[str, Any]) -> tuple[list[int], int]:
    """Per request the prompt tokens the server reported (the first run that reported it),
    and how many requests were reported differently by some run (should be 0)."""
    tokens, differing = [], 0
    for index, request in enumerate(case["plan"]):
        seen = {r["prompt_tokens"][index] for r in case["runs"]} - {None}
        differing += len(seen) > 1
        tokens.append(min(seen) if seen else request.planned_prompt_tokens)
    return tokens, differing


def simulate(profile: LlmProfile, case: dict[str, Any], seconds: float) -> dict[str, Any]:
    plan: list[Planned] = case["plan"]
    prompts, differing = prompt_tokens_of(case)
    reused = [r for r, _ in prefilled(plan, prompts)]
    is_conversation = any(r.session >= 0 for r in plan)
    requests = TokenRequests(
        np.array([r.offset_s for r in plan]), np.array(prompts, dtype=np.int64),
        np.array([r.max_tokens for r in plan], dtype=np.int64), seconds,
        session=np.array([r.session for r in plan], dtype=np.int64) if is_conversation else None,
        reusable_tokens=np.array(reused, dtype=np.int64) if is_conversation else None,
    )  # fmt: skip
    policy = build_llm_policy("llm-static", profile, ttft_slo_s=1.0, itl_slo_s=0.1,
                              mean_prompt=float(np.mean(prompts)),
                              mean_output=float(requests.output_tokens.mean()),
                              static_replicas=1)  # fmt: skip
    config = LlmSimConfig(profile, mode="exact", initial_replicas=1, max_wait_s=3600.0,
                          is_prefix_caching=True)  # fmt: skip
    result = simulate_llm(requests, policy, config)
    end = result.last_token_s if math.isfinite(result.last_token_s) else seconds
    span = max(seconds, end)
    return {
        "figures": {"ttft_p50_s": result.ttft_p50_s, "ttft_p99_s": result.ttft_p99_s,
                    "itl_p50_s": result.itl_p50_s, "itl_p99_s": result.itl_p99_s,
                    "output_tokens_per_s": result.output_tokens_per_s * seconds / span},
        "completed": result.completed, "dropped": result.dropped,
        "preemptions": result.preemptions, "prompt_tokens": result.prompt_tokens,
        "cached_prompt_tokens": result.cached_prompt_tokens, "span_s": span,
        "prompt_tokens_differing_between_runs": differing,
    }  # fmt: skip


# ---------------------------------------------------------------------- the protocol


def measure_profile(path: Path, threads: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [*AISCALE, "profile", MODEL, "--out", str(path), "--num-threads", str(threads),
         "--repeats", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"aiscale profile {MODEL} failed: {done.stderr.strip()[-600:]}")
    return time.perf_counter() - started


def build_cases(args: argparse.Namespace, profile: LlmProfile, shaper: PromptShaper,
                turn_tokens: float) -> list[dict[str, Any]]:  # fmt: skip
    cases = []
    for workload in args.workloads:
        # The token mix does not depend on the rate: a long pilot schedule gives the capacity.
        pilot = schedule(workload, 1.0, 600.0, shaper, turn_tokens=turn_tokens, seed=args.seed)
        capacity = capacity_per_s(profile, pilot)
        for load in args.loads:
            rate = load * capacity["capacity_per_s"]
            plan = schedule(workload, rate, args.seconds, shaper, turn_tokens=turn_tokens,
                            seed=args.seed)  # fmt: skip
            if not plan:
                raise RuntimeError(
                    f"{workload} at {load:.0%} of {capacity['capacity_per_s']:.3f} req/s: no "
                    f"arrival in {args.seconds:g} s; give more --seconds"
                )
            cases.append({"workload": workload, "load": load, "rate_per_s": rate,
                          "capacity": capacity, "plan": plan, "runs": []})  # fmt: skip
    return cases


def run(args: argparse.Namespace, out_dir: Path, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    info = machine()
    profile_path, profile_s = args.profile, 0.0
    if profile_path is None:
        profile_path = out_dir / "fidelity_profile.json"
        console.print(f"profiling {MODEL} into {profile_path} ...")
        profile_s = measure_profile(profile_path, args.threads)
    profile = load_llm_profile(profile_path)
    server = Server(threads=args.threads, direct=args.direct)
    try:
        shaper, turn_tokens = asyncio.run(_calibrate(server.url))
    finally:
        server.stop()
    cases = build_cases(args, profile, shaper, turn_tokens)
    console.print(
        f"{len(cases)} cases x {args.runs} runs of {args.seconds:g} s; "
        f"estimated {len(cases) * args.runs * (args.seconds + 10) / 60:.0f} min"
    )
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/"
               "{task.total:.0f}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("real runs", total=len(cases) * args.runs)
        current = progress.add_task("run", total=args.seconds)
        for round_index in range(args.runs):
            for case in cases if round_index % 2 == 0 else list(reversed(cases)):
                label = f"round {round_index + 1}: {case['workload']} at {case['load']:.0%}"
                progress.update(current, description=label, completed=0)
                load_before = os.getloadavg()[0]
                server = Server(threads=args.threads, direct=args.direct)
                try:
                    result = real_run(server.url, case["plan"], args.seconds,
                                      lambda t: progress.update(current, completed=t))  # fmt: skip
                finally:
                    server.stop()
                result.update(round=round_index + 1, load_before=load_before,
                              load_after=os.getloadavg()[0], server_start_s=server.start_s)  # fmt: skip
                case["runs"].append(result)
                progress.advance(overall)
    for case in cases:
        case["simulated"] = simulate(profile, case, args.seconds)
        case["verdict"] = judge(case)
    return {
        "machine": info, "command": command_line(), "wall_s": time.perf_counter() - started,
        "profile": profile.to_dict(), "profile_path": str(profile_path),
        "profile_seconds": profile_s, "target": "engine" if args.direct else "aiscale serve",
        "threads": args.threads, "seconds": args.seconds, "runs_per_case": args.runs,
        "seed": args.seed, "smoke": args.runs < 5, "load_average_at_end": os.getloadavg()[0],
        "shaper": {"template_tokens": shaper.overhead_tokens,
                   "tokens_per_word": shaper.tokens_per_word, "turn_tokens": turn_tokens},
        "cases": [_case_json(case) for case in cases],
    }  # fmt: skip


def _case_json(case: dict[str, Any]) -> dict[str, Any]:
    plan: list[Planned] = case["plan"]
    return {
        **{k: v for k, v in case.items() if k != "plan"},
        "requests": len(plan),
        "arrivals_s": [round(r.offset_s, 4) for r in plan],
        "output_tokens": [r.max_tokens for r in plan],
        "sessions": [r.session for r in plan],
        "planned_prompt_tokens": [r.planned_prompt_tokens for r in plan],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="real runs per case (>= 5 to count)")
    parser.add_argument("--seconds", type=float, default=25.0, help="seconds of arrivals per run")
    parser.add_argument("--loads", default="0.4,0.8", help="shares of one replica's capacity")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"of {', '.join(WORKLOADS)}")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="engine threads")
    parser.add_argument("--profile", type=Path, default=None,
                        help="an LLM profile measured just now [measure one]")  # fmt: skip
    parser.add_argument("--direct", action="store_true", help="the engine alone, no gateway")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        args.loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        parser.error(f"--loads must be numbers separated by commas, got {args.loads!r}")
    args.workloads = [w.strip() for w in args.workloads.split(",")]
    if any(w not in WORKLOADS for w in args.workloads):
        parser.error(f"--workloads must be among {', '.join(WORKLOADS)}")
    if args.runs < 2 or args.seconds <= 0 or any(not 0 < x < 2 for x in args.loads):
        parser.error("need --runs >= 2, --seconds > 0 and loads in (0, 2)")
    is_smoke = args.runs < 5
    out_dir = Path(tempfile.mkdtemp(prefix="aiscale-llm-fidelity-")) if is_smoke else HERE
    console = Console()

    def go() -> None:
        found = run(args, out_dir, console)
        (out_dir / "fidelity.json").write_text(json.dumps(found, indent=1) + "\n")
        markdown = render(found)
        console.print(markdown, highlight=False, markup=False, soft_wrap=True)
        if is_smoke:
            (out_dir / "RESULTS.md").write_text(markdown + "\n")
            console.print(f"smoke run (--runs < 5): wrote {out_dir}; RESULTS.md left alone")
        else:
            write_section("fidelity", markdown)
            console.print(f"wrote {out_dir / 'fidelity.json'} and the fidelity section of "
                          "RESULTS.md")  # fmt: skip

    main_guard(go)


if __name__ == "__main__":
    main()
