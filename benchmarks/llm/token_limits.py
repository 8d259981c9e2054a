"""Token limits under concurrency: 50 concurrent streams through 3 gateways that share one
tokens-per-minute limit in Redis.

One API key with ``--tpm LIMIT`` is created in a registry the three gateways share; each
gateway (``aiscale serve --config``, ``server.redis_url`` = the local Redis, one key prefix
per run) runs its own ``llamacpp`` replica (1 thread; ``--engines own``, the default), or
fronts one shared llama.cpp engine as an ``openai-upstream`` deployment (``--engines
shared``). The two differ in what a request reserves when the limit refuses its prompt's
byte bound: a ``llamacpp`` replica can count the prompt exactly, so the gateway asks the
ledger once more with the exact count (158 tokens here instead of 1032); an upstream cannot
count, so the byte bound stands. Three ``aiscale bench --chat`` clients,
one per gateway, keep 17 + 17 + 16 streams open for ``--seconds`` (closed loop: a refused or
finished request is followed at once by the next), so requests keep knocking while earlier
ones settle and free their reservations. The run lasts well under a minute, so every admitted
token lies in one sliding minute of the limit.

The defaults make the limit bind: over 40 s (the most that keeps the run inside one
minute) the admitted streams use more than the 4000 tokens, so the minute fills and
admission stops on the limit itself (the rest get 429 at once and knock again). An earlier
default (20 s, limit 3000) never came near its limit (1264 tokens served), so "0 over"
proved little. A round is marked "reached" when the tokens served leave less than one
reservation under the limit (no further request could have been admitted).

Reported: tokens served (prompt + completion of the answered requests, from their usage, and
the ledger's own count of the last minute), the limit, the tokens over it, and one request's reservation (its prompt's byte bound, the
gateway's chat-template allowance, plus ``max_tokens``): the ledger guarantees that the
tokens over the limit stay within one reservation. Also the 429s and what the ledger says
(``aiscale keys usage --json``). Repeated ``--rounds`` times, each with a fresh key.

    .venv/bin/python benchmarks/llm/token_limits.py [--rounds 3] [--limit 4000] [--seconds 40]
    # smoke test at tiny size: --rounds 1 --streams 6 --seconds 5 --out /tmp/x.md

Needs Redis at 127.0.0.1:6379 (``--redis-url``). Duration: about 1 min per round.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    AISCALE,
    MODEL,
    RESULTS,
    ROOT,
    Missing,
    announce_duration,
    chat_bench_parallel,
    command_line,
    llm_deployment,
    machine,
    machine_lines,
    main_guard,
    serve,
    spread,
    start_engine,
    stop_engine,
    write_section,
)

NUM_GATEWAYS = 3


def check_redis(url: str) -> None:
    try:
        import redis
    except ImportError:
        raise Missing("the redis package is not installed") from None
    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
    except redis.RedisError as exc:
        raise Missing(f"no Redis at {url}: {exc}") from None


def create_key(registry_url: str, folder: Path, limit: int) -> tuple[str, str]:
    """A fresh inference key with ``--tpm limit``; (key id, plaintext)."""
    completed = subprocess.run(
        [*AISCALE, "keys", "create", "llm-bench", "--scope", "inference", "--tpm", str(limit),
         "--registry-url", registry_url, "--data-dir", str(folder)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    key_id = re.search(r"key id: (\S+)", completed.stdout)
    plaintext = re.search(r"^(ask_\S+)$", completed.stdout, re.M)
    if completed.returncode != 0 or key_id is None or plaintext is None:
        raise Missing(f"`aiscale keys create --tpm` failed: {completed.stderr.strip()[-300:]}")
    return key_id.group(1), plaintext.group(1)


def reservation_bound(prompt_words: int, max_tokens: int) -> int:
    """One request's reservation at most: the longest prompt of ``prompt_words`` bench words
    in UTF-8 bytes (a BPE token is at least one byte), the gateway's chat-template allowance,
    and ``max_tokens``."""
    from aiscale.bench.chat_workloads import WORDS

    try:
        from aiscale.serving.llm.validation import (
            CHAT_TEMPLATE_BASE_TOKENS,
            CHAT_TEMPLATE_TOKENS_PER_MESSAGE,
        )
    except ImportError as exc:
        raise Missing(f"the gateway's LLM validation is not there yet: {exc}") from None
    longest = max(len(w.encode()) for w in WORDS) + 1
    return (prompt_words * longest + CHAT_TEMPLATE_BASE_TOKENS
            + CHAT_TEMPLATE_TOKENS_PER_MESSAGE + max_tokens)  # fmt: skip


def one_round(args: argparse.Namespace, round_index: int, engine_url: str | None) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="llm-limits-"))
    registry_url = f"sqlite:///{folder / 'registry.db'}"
    key_id, plaintext = create_key(registry_url, folder / "keys", args.limit)
    prefix = f"aiscale-bench-{int(time.time())}-{round_index}:"
    if engine_url is None:
        deployment = llm_deployment(threads=1)
    else:
        deployment = {"name": MODEL, "model": MODEL,
                      "engine": {"kind": "openai-upstream", "model": MODEL,
                                 "urls": [engine_url]}}  # fmt: skip
    config = {"server": {"redis_url": args.redis_url, "redis_key_prefix": prefix,
                         "redis_timeout_s": args.redis_timeout},
              "deployments": [deployment]}  # fmt: skip
    gateways = []
    try:
        for index in range(NUM_GATEWAYS):
            gateways.append(serve([], config=config, data_dir=folder / f"gateway{index}",
                                  registry_url=registry_url))  # fmt: skip
        share = [args.streams // NUM_GATEWAYS + (i < args.streams % NUM_GATEWAYS)
                 for i in range(NUM_GATEWAYS)]  # fmt: skip
        runs = [
            (g.url, ["--model", MODEL, "--header", f"Authorization: Bearer {plaintext}",
                     "--concurrency", str(n), "--duration", str(args.seconds), "--prompt-tokens",
                     str(args.prompt_tokens), "--max-tokens", str(args.max_tokens),
                     "--seed", str(round_index * 10 + i),
                     # No probe requests: every request must be one of the counted streams.
                     "--no-calibrate"])
            for i, (g, n) in enumerate(zip(gateways, share, strict=True))
        ]  # fmt: skip
        started = time.monotonic()
        reports = chat_bench_parallel(runs)
        elapsed = time.monotonic() - started
        ledger = subprocess.run(
            [*AISCALE, "keys", "usage", key_id, "--json", "--redis-url", args.redis_url,
             "--redis-key-prefix", prefix, "--registry-url", registry_url,
             "--data-dir", str(folder / "keys")],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
    finally:
        for gateway in gateways:
            gateway.stop()
    served = sum(r["prompt_tokens"] + r["output_tokens"] for r in reports)
    refused = sum(r["errors_by_kind"].get("429", 0) for r in reports)
    other = sum(r["errors"] for r in reports) - refused
    other_kinds: dict[str, int] = {}
    for report in reports:
        for kind, count in report["errors_by_kind"].items():
            if kind != "429":
                other_kinds[kind] = other_kinds.get(kind, 0) + count
    ledger_minute = None
    try:
        ledger_minute = int(json.loads(ledger.stdout)["key"]["last_minute"]["tokens"])
    except (ValueError, KeyError, TypeError):
        pass
    worst = max(served, ledger_minute or 0)
    stated = [int(m.group(1)) for r in reports
              if (m := re.search(r"reserves up to (\d+)", r.get("first_error") or ""))]
    return {"stated_reservation": max(stated) if stated else None, "served": served, "ledger_minute": ledger_minute, "over": worst - args.limit,
            "ok": sum(r["ok"] for r in reports),
            "refused": refused, "other_errors": other, "other_kinds": other_kinds,
            "first_errors": [r.get("first_error") for r in reports], "elapsed_s": elapsed,
            "ledger": ledger.stdout.strip() if ledger.returncode == 0 else
            f"keys usage failed: {ledger.stderr.strip()[-200:]}"}  # fmt: skip


def expected_duration_s(args: argparse.Namespace) -> float:
    """Seconds a run takes: the shared engine's start (~5 s), then per round a key, three
    gateways started and stopped (~35 s; ~50 s on a loaded machine), the streams' seconds,
    the bench processes and the ledger query (~8 s)."""
    return float(5 + args.rounds * (35 + args.seconds + 8))


def run(args: argparse.Namespace) -> None:
    check_redis(args.redis_url)
    announce_duration(expected_duration_s(args))
    info = machine()
    bound = reservation_bound(args.prompt_tokens, args.max_tokens)
    engine = None
    engine_url = None
    if args.engines == "shared":
        engine, engine_url, _ = start_engine(threads=2, parallel=8)
    try:
        rounds = []
        for round_index in range(args.rounds):
            result = one_round(args, round_index, engine_url)
            rounds.append(result)
            print(f"round {round_index + 1}: served {result['served']} tokens for limit "
                  f"{args.limit} (over {result['over']}, bound {bound}); ok {result['ok']}, "
                  f"429 {result['refused']}, other errors {result['other_errors']} "
                  f"{result['other_kinds']}", flush=True)
    finally:
        if engine is not None:
            stop_engine(engine)
    write_section("token_limits", render(info, args, rounds, bound), args.out)
    print(f"wrote the token_limits section of {args.out}")


def render(info: dict[str, Any], args: argparse.Namespace, rounds: list[dict[str, Any]],
           bound: int) -> str:
    worst = max(r["over"] for r in rounds)
    stated = [r["stated_reservation"] for r in rounds if r["stated_reservation"] is not None]
    lines = [
        "## Token limits under concurrency: 3 gateways, one TPM limit in Redis",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- {args.streams} concurrent streams for {args.seconds:g} s over {NUM_GATEWAYS} "
        f"gateways (one key, --tpm {args.limit}); {args.prompt_tokens}-token prompts, "
        f"{args.max_tokens}-token outputs (ignore_eos); engines: {args.engines}",
        f"- one reservation (bound): {bound} tokens = prompt bytes + chat-template allowance + "
        "max_tokens",
        f"- the reservation the gateways stated in their 429s: "
        f"{max(stated) if stated else 'none seen'} tokens (a key held to a token limit has "
        "its prompt counted exactly at a `llamacpp` engine, `--engines own`; an "
        "`openai-upstream` engine cannot count, so the byte bound is reserved)",
        "",
        "| round | tokens served (clients' usage) | ledger: tokens in the last minute | over "
        "the limit (the larger) | within one reservation | answered | 429 | limit reached "
        "(< one reservation left) | other errors | run s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, r in enumerate(rounds, 1):
        lines.append(f"| {index} | {r['served']} | {r['ledger_minute']} | {r['over']} | "
                     f"{'yes' if r['over'] <= bound else 'NO'} | {r['ok']} | {r['refused']} | "
                     f"{'yes' if r['over'] > -bound else 'no'} | "
                     f"{r['other_errors']} | {r['elapsed_s']:.1f} |")  # fmt: skip
    lines += [
        "",
        f"Over the limit: {spread([r['over'] for r in rounds], '{:.0f}')} tokens; worst "
        f"{worst} against one reservation of at most {bound}: "
        f"{'met' if worst <= bound else 'MISSED'}; the limit was reached in "
        f"{sum(1 for r in rounds if r['over'] > -bound)} of {len(rounds)} rounds.",
        "",
        "The ledger's view of the last round (`aiscale keys usage --json`):",
        "",
        "```json",
        _compact(rounds[-1]["ledger"]),
        "```",
    ]
    return "\n".join(lines)


def _compact(text: str) -> str:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))[:2000]
    except ValueError:
        return text[:2000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="keep the streams busy this long (well under a minute)")
    parser.add_argument("--limit", type=int, default=4000, help="tokens per minute")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--engines", choices=("shared", "own"), default="own")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-timeout", type=float, default=0.25,
                        help="the gateways' server.redis_timeout_s (their default: 0.25)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not 0 < args.seconds <= 40:
        parser.error("--seconds must be in (0, 40]: the run must fit in one minute's window")
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
