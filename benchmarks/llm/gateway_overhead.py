"""Gateway overhead on the LLM path: one llama.cpp engine called directly, through
``aiscale serve smollm2``, and through LiteLLM's proxy, side by side in one run.

The engine is the gateway's own replica (4 slots, 2 threads, the bundled SmolLM2): the
benchmark finds its port under the ``aiscale serve`` process (Linux ``/proc``; the gateway
does not publish it), so "direct", "aiscale" and "litellm" all reach the very same engine
process, with the same prompt cache and the same threads. LiteLLM's proxy (PyPI
``litellm[proxy]``, in a venv of its own: its pins clash with ours) is configured with that
engine as an ``openai/`` model, started with a fresh ``LITELLM_MASTER_KEY`` (it refuses to
start without one) that the bench client sends as its bearer key; without LiteLLM that column
is skipped with the reason. Before the rounds, one streamed request per target checks that it
streams content, sends usage (``stream_options.include_usage``) and honours ``ignore_eos``.

Each round runs, for each concurrency (1, 4, 16), the three targets one after another in a
rotating order: ``aiscale bench URL --chat`` closed loop, 128-token prompts, 64-token
outputs forced with ``ignore_eos``. Per round and concurrency it computes the ratio of output
tokens/s (target >= 0.95 of direct) and the TTFT p50 delta (target <= +5 ms); the section
shows their medians and ranges over the rounds (4 rounds by default: 2 were too few, their
tok/s ratios ranged from 0.72 to 1.38). A bench run that fails is a gap in its cell, counted.

Every bench run draws its own prompts (a seed of its own). The three targets share one engine,
and llama.cpp keeps recent prompts' KV in its host-memory prompt cache: a target sent the
prompts another target had just sent skipped their prefill. With one seed per round (how this
script first ran) the first target of each round saw TTFT p50 565-700 ms at concurrency 1
and the next two 19-43 ms, whichever they were: the order decided the TTFT, not the gateway.

    python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
    .venv/bin/python benchmarks/llm/gateway_overhead.py --litellm /tmp/litellm-venv/bin/litellm
    # or AISCALE_BENCH_LITELLM=/tmp/litellm-venv/bin/litellm, or `litellm` on PATH
    # smoke test at tiny size: --rounds 1 --seconds 3 --warmup 1 --max-tokens 8 --out /tmp/x.md

Throughput is the **steady** output rate: the tokens that arrived during the counted seconds,
from any request, over those seconds (``steady_output_tokens_per_s`` of ``aiscale bench``).
The bench's ``output_tokens_per_s`` counts the requests started in the window until the last
one ends; at concurrency 16 on 4 slots a request waits ~15 s, longer than the window, so that
figure mostly measured the start and the drain (direct runs read 18.6-29.9 tok/s at c=16
against 46.7-51.2 at c=4 on the same engine) and its ratios ranged from 0.68 to 1.17.

Beside each proxy's figures stands its CPU time per output token (the proxy's process tree,
from ``/proc``, over its bench runs): the engine's two threads fill both cores, so what the
proxy burns per token is what it takes from the engine.

TTFT is judged three ways, because in separate runs it is mostly the engine's: at c=4 all
four requests of a closed loop start together and prefill together, and at c=16 twelve wait
for a slot, so their TTFT moves with the engine's rate by hundreds of ms from run to run:

* the TTFT p50 delta of the separate runs, as the issue asks (with its spread);
* at c=1, **pairs**: single streamed requests (fresh ~128-token prompts) alternately direct
  and through the gateway, the median of the per-pair differences;
* at c=4 and 16, **mixed** runs: half the streams direct and half through the gateway at the
  same time on the same engine (two bench processes), so that both halves share the engine's
  queue, batches and speed; the difference of their TTFT p50 is the time the gateway adds to
  a request at that load. What the gateway's CPU costs the engine (both halves alike) shows
  in the throughput ratio instead. Each round also runs the same split with both halves
  direct (A/A): the spread of that difference is what the measurement reads when nothing
  differs, its noise floor.

``--kv-slots empty`` gives the gateway an empty KV slot folder instead of the node's (which
holds what earlier runs' engines saved when they drained; with any saved prefix of this
deployment the gateway looks each long chat prompt up, rendering it at the engine first).

Duration: the script prints its estimate (``expected_duration_s``): about rounds x (3
concurrencies x 3 targets + 4 mixed runs) x (seconds + warm-up + ~7 s) + rounds x pairs x
~2 s, ~22 min with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from aiscale.bench.chat_workloads import synthesize_text  # noqa: E402
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    Missing,
    announce_duration,
    chat_bench,
    chat_bench_parallel,
    command_line,
    empty_kv_slots_env,
    engine_children,
    free_port,
    gateway_engine_urls,
    machine,
    machine_lines,
    main_guard,
    process_tree,
    scrape,
    serve,
    spread,
    stop_process,
    write_section,
)
from benchmarks.llm.ttft_pairs import alternating_pairs  # noqa: E402

TARGETS = ("direct", "aiscale", "litellm")
LITELLM_ENV = "AISCALE_BENCH_LITELLM"
#: The proxy's master key for this run (LiteLLM refuses to start without one).
LITELLM_KEY = f"sk-bench-{secrets.token_hex(8)}"
#: Seconds per ``aiscale bench`` run beyond its warm-up and counted seconds: its process
#: start and probes (~3 s) and the requests still in flight at the end (up to ~7 s at c=16
#: on 4 slots). An estimate for the quiet machine: smoke runs on a loaded one (load 3-8,
#: 8-token outputs) took 5-19 s.
BENCH_OVERHEAD_S = 7.0


def find_litellm(option: str | None) -> str | None:
    """LiteLLM's ``litellm`` command: ``--litellm``, else ``$AISCALE_BENCH_LITELLM``, else on
    PATH, else beside our Python. Its proxy usually lives in a venv of its own (its pins
    clash with ours), e.g. ``python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip
    install 'litellm[proxy]'``, then ``--litellm /tmp/litellm-venv/bin/litellm``."""
    for candidate in (option, os.environ.get(LITELLM_ENV), shutil.which("litellm"),
                      str(Path(sys.executable).parent / "litellm")):  # fmt: skip
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def litellm_version(executable: str) -> str:
    """The litellm version installed beside ``executable`` (its own venv's Python)."""
    python = Path(executable).parent / "python"
    try:
        completed = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return completed.stdout.strip() or "unknown"


def start_litellm(
    engine_url: str, executable: str | None
) -> tuple[subprocess.Popen[str] | None, str, str]:
    """LiteLLM's proxy in front of ``engine_url``; (process, url, '') or (None, '', why).

    The proxy refuses to start without ``LITELLM_MASTER_KEY`` (it then wants a bearer key on
    every request): a fresh one is set in its environment, and the bench client sends it
    (``LITELLM_KEY``)."""
    if executable is None:
        return None, "", ("LiteLLM not installed (pip install 'litellm[proxy]' in a venv of "
                          f"its own; pass --litellm PATH or set ${LITELLM_ENV})")  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
    config = {
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{engine_url}/v1",
                               "api_key": "none"},
        }],
        # ignore_eos is an engine extra: pass it through rather than drop or refuse it.
        "litellm_settings": {"drop_params": False},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY,
           # The bundled price map, not a download at start (this machine is offline).
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}  # fmt: skip
    env.pop("DATABASE_URL", None)  # no spend database: nothing to write per request
    log_path = folder / "litellm.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [executable, "--config", str(folder / "config.yaml"), "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = " | ".join(log_path.read_text().strip().splitlines()[-2:])[-300:]
            return None, "", f"LiteLLM's proxy exited at start ({log_path}: {tail})"
        try:
            if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                return process, url, ""
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling readiness with a deadline
    stop_process(process)
    return None, "", "LiteLLM's proxy did not become ready within 180 s"


def check_stream(url: str, headers: dict[str, str], max_tokens: int) -> str:
    """One streamed request with ``include_usage`` and ``ignore_eos``, as the bench sends
    them: whether the target streams content, sends usage, and honours ``ignore_eos`` (the
    bench's tokens/s and ITL are only comparable when all three hold)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    num_content, usage, is_done = 0, None, False
    with httpx.Client(timeout=120) as client, client.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.read()[:300]!r}")
        for line in response.iter_lines():
            if line.strip() == "data: [DONE]":
                is_done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
                num_content += bool(delta.get("content"))
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return (f"{num_content} content chunks, usage "
            f"{'completion_tokens=' + str(completion) if usage else 'MISSING'}, "
            f"ignore_eos {'honoured' if completion == max_tokens else 'NOT honoured'}, "
            f"[DONE] {'yes' if is_done else 'MISSING'}")  # fmt: skip


def expected_duration_s(args: argparse.Namespace, num_targets: int = len(TARGETS)) -> float:
    """Seconds a run takes: the starts (gateway ~10 s, LiteLLM's proxy ~20 s, stream checks)
    plus, per bench run (separate and mixed), its warm-up and counted seconds and
    ``BENCH_OVERHEAD_S``, plus ~2 s per TTFT pair."""
    mixed = 2 * sum(1 for c in args.concurrency if c > 1)  # aiscale beside direct, and A/A
    runs = args.rounds * (len(args.concurrency) * num_targets + mixed)
    pairs = args.rounds * args.pairs if 1 in args.concurrency else 0
    return float(40 + runs * (args.warmup + args.seconds + BENCH_OVERHEAD_S) + 2 * pairs)


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` (Linux ``/proc``; a pid that is
    gone counts 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def ttft_pairs(direct: str, gateway: str, num_pairs: int, rng: random.Random) -> list[float]:
    """TTFT through the gateway minus direct (ms) of alternating pairs of single streamed
    requests, each with a fresh ~128-token prompt of its own (no request reuses another's
    prefill from the engine's prompt cache)."""
    with httpx.Client(timeout=120) as client:
        pairs = alternating_pairs(client, direct, gateway, MODEL, num_pairs,
                                  lambda: synthesize_text(110, rng))  # fmt: skip
    return [(through - direct_s) * 1e3 for direct_s, through in pairs]


def engine_tokens(engine_url: str) -> float:
    """Tokens the engine has generated so far (``llamacpp:tokens_predicted_total``): every
    token a proxy relayed during a run, warm-up and drain included."""
    samples = scrape(engine_url)
    return sum(v for (name, _), v in samples.items() if name == "llamacpp:tokens_predicted_total")


def steady_rate(report: dict[str, Any]) -> float:
    """The run's steady output tokens/s (the bench's total rate when it has none)."""
    steady = report.get("steady_output_tokens_per_s")
    return float(steady if steady is not None else report["output_tokens_per_s"])


def run(args: argparse.Namespace) -> None:
    executable = find_litellm(args.litellm)
    num_targets = len(TARGETS) if executable else len(TARGETS) - 1
    announce_duration(expected_duration_s(args, num_targets))
    info = machine()
    info["litellm"] = litellm_version(executable) if executable else "not installed"
    env = empty_kv_slots_env() if args.kv_slots == "empty" else {}
    info["kv_entries"] = saved_kv_prefixes(env.get("TMPDIR"))
    served = serve([MODEL, "--num-threads", "2"], env=env)
    litellm = None
    checks: dict[str, str] = {}
    try:
        engines = gateway_engine_urls(served)
        if len(engines) != 1:
            raise Missing(f"expected one engine replica under aiscale serve, found {engines}")
        urls = {"direct": engines[0], "aiscale": served.url}
        litellm, litellm_url, litellm_skip = start_litellm(engines[0], executable)
        if litellm is not None:
            urls["litellm"] = litellm_url
        print(f"engine {engines[0]}, gateway {served.url}, litellm {litellm_url or litellm_skip}",
              flush=True)
        for target, url in list(urls.items()):
            try:
                checks[target] = check_stream(url, _headers(target), args.max_tokens)
            except (RuntimeError, httpx.HTTPError) as exc:
                if target != "litellm":
                    raise RuntimeError(f"the {target} target cannot stream: {exc}") from None
                checks[target] = f"FAILED: {exc}"
                litellm_skip = f"LiteLLM's proxy did not stream: {exc}"[:300]
                del urls[target]
            print(f"stream check {target}: {checks[target]}", flush=True)
        engine_pids = engine_children(served.process.pid)
        proxy_pids = {"direct": [], "aiscale": [served.process.pid]}
        if litellm is not None:
            proxy_pids["litellm"] = process_tree(litellm.pid)
        results: dict[str, dict[int, list[dict[str, Any] | None]]] = {t: {} for t in urls}
        mixed: dict[tuple[int, str], list[tuple[dict[str, Any], dict[str, Any]] | None]] = {}
        pairs: list[float] = []
        rng = random.Random(20261207)
        run_number = 0

        def bench_args(concurrency: int, target: str) -> list[str]:
            nonlocal run_number
            run_number += 1  # fresh prompts: no target reuses another's prefill
            auth = [f"--header={k}: {v}" for k, v in _headers(target).items()]
            return ["--model", MODEL, "--concurrency", str(concurrency),
                    "--prompt-tokens", "128", "--max-tokens", str(args.max_tokens),
                    "--duration", str(args.seconds), "--warmup", str(args.warmup),
                    "--seed", str(run_number), *auth]  # fmt: skip

        for round_index in range(args.rounds):
            for concurrency in args.concurrency:
                shift = round_index % len(urls)
                order = list(urls)[shift:] + list(urls)[:shift]
                for target in order:
                    started = time.monotonic()
                    cpu_before = (cpu_seconds(proxy_pids[target]), cpu_seconds(engine_pids))
                    tokens_before = engine_tokens(urls["direct"])
                    try:
                        report: dict[str, Any] | None = chat_bench(
                            urls[target], *bench_args(concurrency, target))
                    except RuntimeError as exc:  # one failed run is a gap, not a lost hour
                        report = None
                        print(f"round {round_index + 1} c={concurrency} {target}: FAILED "
                              f"{exc}", flush=True)  # fmt: skip
                    results[target].setdefault(concurrency, []).append(report)
                    if report is not None:
                        report["proxy_cpu_s"] = cpu_seconds(proxy_pids[target]) - cpu_before[0]
                        report["engine_cpu_s"] = cpu_seconds(engine_pids) - cpu_before[1]
                        report["engine_tokens"] = engine_tokens(urls["direct"]) - tokens_before
                        print(f"round {round_index + 1} c={concurrency} {target}: "
                              f"{steady_rate(report):.1f} tok/s steady, TTFT p50 "
                              f"{report['ttft_p50_ms']:.1f} ms, proxy CPU "
                              f"{report['proxy_cpu_s']:.2f} s, errors {report['errors']} "
                              f"{report.get('errors_by_kind') or ''}; "
                              f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip
                if concurrency == 1 and args.pairs:
                    found = ttft_pairs(urls["direct"], urls["aiscale"], args.pairs, rng)
                    pairs += found
                    print(f"round {round_index + 1} pairs: median "
                          f"{statistics.median(found) if found else float('nan'):+.1f} ms "
                          f"over {len(found)}", flush=True)  # fmt: skip
                elif concurrency > 1:
                    half = concurrency // 2
                    # aiscale beside direct, then direct beside direct (A/A: what the same
                    # measurement reads when nothing differs, its noise floor).
                    for kind, other in (("aiscale", "aiscale"), ("direct", "a/a")):
                        try:
                            both = chat_bench_parallel(
                                [(urls["direct"], bench_args(half, "direct")),
                                 (urls[kind], bench_args(concurrency - half, kind))])
                            mixed.setdefault((concurrency, other), []).append(
                                (both[0], both[1]))
                            print(f"round {round_index + 1} c={concurrency} mixed {other}: "
                                  f"TTFT p50 direct {both[0]['ttft_p50_ms']:.1f} ms, other "
                                  f"{both[1]['ttft_p50_ms']:.1f} ms", flush=True)  # fmt: skip
                        except RuntimeError as exc:
                            mixed.setdefault((concurrency, other), []).append(None)
                            print(f"round {round_index + 1} c={concurrency} mixed {other}: "
                                  f"FAILED {exc}", flush=True)  # fmt: skip
    finally:
        if litellm is not None:
            stop_process(litellm)
        served.stop()
        if "TMPDIR" in env:
            shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    write_section("gateway_overhead",
                  render(info, args, results, litellm_skip, checks, mixed, pairs), args.out)
    print(f"wrote the gateway_overhead section of {args.out}")


def _headers(target: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {LITELLM_KEY}"} if target == "litellm" else {}


def saved_kv_prefixes(tmpdir: str | None) -> int:
    """Saved KV prefixes (of any deployment) in the slot folder of the bundled model that
    ``aiscale serve`` loads at start (under ``tmpdir``, else the node's): with any of its
    deployment, the gateway renders each long enough chat prompt at the engine
    (``KvStore.restore``) before sending it, so the number is recorded beside the TTFT it may
    add to. Each run leaves some: the engine's slots are saved when it drains at stop."""
    try:
        from aiscale.config import EngineConfig
        from aiscale.engines.llamacpp import slot_save_dir_of
    except ImportError:
        return -1
    saved_tmpdir = tempfile.tempdir
    tempfile.tempdir = tmpdir  # where the served gateway will look (its TMPDIR)
    try:
        folder = Path(slot_save_dir_of(EngineConfig(model=MODEL).to_spec(MODEL)))
    finally:
        tempfile.tempdir = saved_tmpdir
    return len(list(folder.glob("kv-*.json")))


def render(info: dict[str, Any], args: argparse.Namespace,
           results: dict[str, dict[int, list[dict[str, Any] | None]]], litellm_skip: str,
           checks: dict[str, str],
           mixed: dict[tuple[int, str], list[tuple[dict[str, Any], dict[str, Any]] | None]],
           pairs: list[float]) -> str:
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
        "- LiteLLM: its proxy (`litellm --config`, 1 worker, a master key sent as the bearer "
        "key, `drop_params: false` so that ignore_eos reaches the engine), the engine as an "
        "`openai/` model",
        f"- KV slot folder: {args.kv_slots} (--kv-slots), {info['kv_entries']} saved prefixes "
        "in it at start (with any of this deployment, the gateway renders each long chat "
        "prompt at the engine before sending it: the KV restore lookup)",
        *[f"- stream check {t}: {c}" for t, c in checks.items()],
        "- tok/s: the steady output rate (tokens that arrived in the counted seconds, from any "
        "request, over those seconds); CPU ms per token: the proxy's process (the gateway "
        "without its engine; LiteLLM's process tree) and the engine, over the engine's "
        "generated tokens (`llamacpp:tokens_predicted_total`) in the same runs",
        "- cells: median (min-max over rounds); ratios and deltas are per round, then "
        "summarised; a failed bench run is left out of its cell and counted in the last column",
        "",
        "| concurrency | target | output tok/s (steady) | TTFT p50 ms | ITL p50 ms | proxy CPU "
        "ms/token | engine CPU ms/token | tok/s ratio to direct (>= 0.95) | TTFT p50 delta ms "
        "(<= +5) | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    direct = results.get("direct", {})
    for concurrency in args.concurrency:
        for target in TARGETS:
            all_runs = results.get(target, {}).get(concurrency)
            if not all_runs:
                if target == "litellm":
                    lines.append(f"| {concurrency} | litellm | skipped: {litellm_skip} "
                                 "| | | | | | | |")
                continue
            runs = [r for r in all_runs if r is not None]
            pairs_of_runs = [(r, b) for r, b in
                             zip(all_runs, direct.get(concurrency, []), strict=False)
                             if r is not None and b is not None]  # fmt: skip
            ratio = delta = "-"
            if target != "direct" and pairs_of_runs:
                ratios = [steady_rate(r) / steady_rate(b)
                          for r, b in pairs_of_runs if steady_rate(b)]
                deltas = [r["ttft_p50_ms"] - b["ttft_p50_ms"] for r, b in pairs_of_runs
                          if r["ttft_p50_ms"] is not None and b["ttft_p50_ms"] is not None]
                ratio = _judged(spread(ratios, "{:.3f}"), ratios, lambda v: v >= 0.95)
                delta = _judged(spread(deltas, "{:+.1f}"), deltas, lambda v: v <= 5.0)
            failed = len(all_runs) - len(runs)
            errors = str(sum(r["errors"] for r in runs)) + (
                f" ({failed} run(s) failed)" if failed else "")
            tokens = sum(r.get("engine_tokens", 0) for r in runs)
            proxy_cpu = ("-" if target == "direct" or not tokens else
                         f"{sum(r['proxy_cpu_s'] for r in runs) / tokens * 1e3:.2f}")
            engine_cpu = (f"{sum(r['engine_cpu_s'] for r in runs) / tokens * 1e3:.1f}"
                          if tokens else "-")
            lines.append(
                f"| {concurrency} | {target} | "
                f"{spread([steady_rate(r) for r in runs])} | "
                f"{spread([r['ttft_p50_ms'] for r in runs if r['ttft_p50_ms'] is not None])} | "
                f"{spread([r['itl_p50_ms'] for r in runs if r['itl_p50_ms'] is not None])} | "
                f"{proxy_cpu} | {engine_cpu} | {ratio} | {delta} | {errors} |"
            )
    lines += ["", *render_paired(args, mixed, pairs)]
    short = sum(r["short_outputs"] for t in results.values() for rs in t.values()
                for r in rs if r is not None)  # fmt: skip
    if short:
        lines += ["", f"Note: {short} answers were shorter than asked although ignore_eos was "
                      "sent (a target that drops the option): their tokens/s is not comparable."]
    return "\n".join(lines)


def render_paired(args: argparse.Namespace,
                  mixed: dict[tuple[int, str], list[tuple[dict[str, Any], dict[str, Any]] | None]],
                  pairs: list[float]) -> list[str]:
    """The TTFT the gateway adds, measured side by side (see the module docstring)."""
    lines = [
        "TTFT the gateway adds, measured side by side on the same engine at the same time "
        "(c=1: alternating single requests, the median and quartiles of the per-pair "
        "differences; c>1: half the streams direct and half through the gateway in one run, "
        "the per-round difference of their TTFT p50):",
        "",
        "| concurrency | how | TTFT p50 direct ms | TTFT p50 other ms | other minus direct ms "
        "(<= +5) |",
        "| --- | --- | --- | --- | --- |",
    ]
    if pairs:
        ordered = sorted(pairs)
        quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
        median = statistics.median(ordered)
        lines.append(
            f"| 1 | {len(pairs)} pairs over {args.rounds} rounds | | | {median:+.1f} "
            f"(quartiles {quartiles[0]:+.1f} to {quartiles[2]:+.1f}) "
            f"{'met' if median <= 5.0 else 'MISSED'} |")
    for (concurrency, other), runs in sorted(mixed.items(), key=lambda kv: (kv[0][0],
                                                                        kv[0][1] == "a/a")):
        done = [r for r in runs if r is not None]
        both = [(d, a) for d, a in done
                if d["ttft_p50_ms"] is not None and a["ttft_p50_ms"] is not None]
        deltas = [a["ttft_p50_ms"] - d["ttft_p50_ms"] for d, a in both]
        failed = len(runs) - len(done)
        judged = (_judged(spread(deltas, "{:+.1f}"), deltas, lambda v: v <= 5.0)
                  if other == "aiscale" else f"{spread(deltas, '{:+.1f}')} (noise floor)")
        lines.append(
            f"| {concurrency} | mixed, {concurrency // 2} direct + "
            f"{concurrency - concurrency // 2} {'direct (A/A)' if other == 'a/a' else other} "
            f"streams{f', {failed} failed' if failed else ''} | "
            f"{spread([d['ttft_p50_ms'] for d, _ in both])} | "
            f"{spread([a['ttft_p50_ms'] for _, a in both])} | {judged} |")
    return lines


def _judged(text: str, values: list[float], is_met: Any) -> str:
    if not values:
        return text
    return f"{text} {'met' if is_met(statistics.median(values)) else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4,
                        help="interleaved rounds (>= 4: 2 gave tok/s ratios from 0.72 to 1.38)")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--pairs", type=int, default=20,
                        help="TTFT pairs per round at concurrency 1 (0: none)")
    parser.add_argument("--litellm", default=None,
                        help=f"LiteLLM's `litellm` command (else ${LITELLM_ENV}, else PATH)")
    parser.add_argument("--kv-slots", choices=("node", "empty"), default="node",
                        help="the gateway's KV slot folder: the node's (with what earlier runs "
                        "saved, as in production) or an empty one of this run's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
