"""Time to first token of a long conversation's follow-up turn on a replica that takes the
conversation over: with its KV prefix restored (``aiscale.llm.kv_store``) against recomputed.

Two llama.cpp engines of the bundled SmolLM2 share one slot folder, as the replicas of one
deployment on one node do. Each round takes a new conversation of about ``--tokens`` prompt
tokens: engine A answers its first turn; the store saves A's slot (``KvStore.save_engine``,
what the drain hook runs); then the follow-up turn goes to engine B twice, interleaved,
each time on a B with its slots erased:

* recompute: B prefills the whole conversation;
* restore:   ``KvStore.restore`` loads the saved prefix into a free slot of B (render the
             chat with B's template, pick the file by prefix hash, ``/slots?action=restore``),
             then the turn is sent pinned to that slot; the restore is inside the timing.

Each arm reports the seconds from the decision to send the turn to B until its first
streamed token, and B's own ``prompt_n`` (tokens it had to compute).

    .venv/bin/python benchmarks/llm/kv_restore.py [--rounds 5 --tokens 1500]
    # smoke test at tiny size: --rounds 1 --tokens 300 --out /tmp/x.md

Duration: a few times the prefill of ``--tokens`` per round (tens of seconds at 1500).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.llm.common import (  # noqa: E402
    MODEL,
    RESULTS,
    announce_duration,
    command_line,
    machine,
    machine_lines,
    main_guard,
    spread,
    write_section,
)

WORDS = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo",
         "juniper", "kestrel", "lagoon", "meadow", "nectar", "obsidian", "prairie")  # fmt: skip


def conversation(seed: int, num_tokens: int) -> list[dict[str, Any]]:
    """A first user turn of about ``num_tokens`` tokens (a sentence is ~20), new per seed so
    no round finds another's prefix in any cache."""
    rng = random.Random(seed)
    sentences = [
        f"Record {seed}-{i}: the {rng.choice(WORDS)} crate holds {rng.randint(2, 99)} "
        f"{rng.choice(WORDS)} parts." for i in range(max(1, num_tokens // 20))
    ]  # fmt: skip
    return [{"role": "user", "content": " ".join(sentences) + " Which crate holds the most?"}]


async def chat(client: httpx.AsyncClient, url: str, messages: list[dict[str, Any]],
               **extra: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": 32, "temperature": 0, **extra}
    response = await client.post(f"{url}/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:200]}")
    return dict(response.json())


async def stream_first_token(client: httpx.AsyncClient, url: str,
                             messages: list[dict[str, Any]], **extra: Any) -> tuple[float, int]:
    """(perf_counter of the first content token, the engine's prompt_n for the request)."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0,
            "stream": True, **extra}  # fmt: skip
    first = 0.0
    prompt_n = -1
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            delta = (chunk.get("choices") or [{}])[0].get("delta", {})
            if not first and delta.get("content"):
                first = time.perf_counter()
            if "timings" in chunk:
                prompt_n = int(chunk["timings"].get("prompt_n", -1))
    if not first:
        raise RuntimeError(f"{url} streamed no token")
    return first, prompt_n


async def erase_slots(client: httpx.AsyncClient, url: str) -> None:
    for slot in (await client.get(f"{url}/slots")).json():
        await client.post(f"{url}/slots/{slot['id']}?action=erase")


async def run_rounds(args: argparse.Namespace) -> dict[str, list[float]]:
    from aiscale.engines.llamacpp import LlamaCppBackend, slot_save_dir_of
    from aiscale.engines.models import locate_model
    from aiscale.engines.spec import EngineSpec
    from aiscale.llm.kv_store import KvStore

    rows: dict[str, list[float]] = {k: [] for k in (
        "recompute_s", "restore_s", "recompute_prompt_n", "restore_prompt_n", "restore_call_s",
        "save_s", "file_mb", "num_tokens")}  # fmt: skip
    context = max(2048, 2 * args.tokens + 256)
    with tempfile.TemporaryDirectory(prefix="aiscale-kv-bench-") as folder:
        spec = EngineSpec("llamacpp", str(locate_model(MODEL)), MODEL, context_window=context,
                          parallel=2, threads=args.threads, max_output_tokens=64,
                          slot_save_dir=folder)  # fmt: skip
        store = KvStore(slot_save_dir_of(spec), deployment=MODEL, min_tokens=64)
        backend = LlamaCppBackend(spec, on_drained=store.save_engine)
        a, _ = await backend.spawn(0, num_replicas=2, lease=None)
        b, _ = await backend.spawn(1, num_replicas=2, lease=None)
        try:
            async with httpx.AsyncClient(timeout=600) as client:
                for index in range(args.rounds):
                    await measure_round(client, store, a, b, index, args, rows)
        finally:
            await store.aclose()
            await backend.stop(a, 10.0)
            await backend.stop(b, 10.0)
    return rows


async def measure_round(client: httpx.AsyncClient, store: Any, a: Any, b: Any, index: int,
                        args: argparse.Namespace, rows: dict[str, list[float]]) -> None:
    messages = conversation(1000 + index, args.tokens)
    await erase_slots(client, a.url)
    first = await chat(client, a.url, messages)
    started = time.perf_counter()
    saved = await store.save_engine(a)
    if len(saved) != 1:
        raise RuntimeError(f"round {index + 1}: expected one saved slot, got {len(saved)}")
    rows["save_s"].append(time.perf_counter() - started)
    rows["file_mb"].append(saved[0].size_bytes / 1e6)
    rows["num_tokens"].append(saved[0].num_tokens)
    follow_up = [*messages, {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "And which holds the fewest?"}]  # fmt: skip
    for arm in (("recompute", "restore") if index % 2 == 0 else ("restore", "recompute")):
        await erase_slots(client, b.url)
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if arm == "restore":
            restored = await store.restore(b, messages=follow_up)
            if restored is None:
                raise RuntimeError(f"round {index + 1}: nothing was restored")
            rows["restore_call_s"].append(time.perf_counter() - started)
            extra["id_slot"] = restored.slot_id
        token_at, prompt_n = await stream_first_token(client, b.url, follow_up, **extra)
        rows[f"{arm}_s"].append(token_at - started)
        rows[f"{arm}_prompt_n"].append(prompt_n)
        print(f"round {index + 1} {arm}: first token after {token_at - started:.3f} s "
              f"(prompt_n {prompt_n})", flush=True)  # fmt: skip


def render(info: dict[str, Any], args: argparse.Namespace, rows: dict[str, list[float]]) -> str:
    def cell(name: str, fmt: str = "{:.3f}") -> str:
        return spread(rows[name], fmt)

    ratio = [r / s for r, s in zip(rows["recompute_s"], rows["restore_s"], strict=True)]
    return "\n".join([
        "## KV restore: TTFT of a long follow-up turn on the replica that takes it over",
        "",
        *machine_lines(info),
        f"- command: `{command_line()}`",
        f"- {MODEL} on two llama.cpp engines ({args.threads} threads, 2 slots each) sharing a "
        f"slot folder; first turn ~{args.tokens} prompt tokens on A, A's slot saved, the "
        f"follow-up sent to B (slots erased) with the prefix restored vs recomputed; "
        f"{args.rounds} rounds, arms interleaved; cells: median (min-max)",
        "",
        "| follow-up on B | seconds to first token | prompt tokens B computed |",
        "| --- | --- | --- |",
        f"| recompute | {cell('recompute_s')} | {cell('recompute_prompt_n', '{:.0f}')} |",
        f"| restore (restore call included) | {cell('restore_s')} | "
        f"{cell('restore_prompt_n', '{:.0f}')} |",
        f"| recompute / restore (per round) | {spread(ratio, '{:.1f}')} | |",
        "",
        "| step | value |",
        "| --- | --- |",
        f"| tokens in the saved slot | {cell('num_tokens', '{:.0f}')} |",
        f"| saved file, MB | {cell('file_mb', '{:.1f}')} |",
        f"| save (`save_engine`, one slot), s | {cell('save_s')} |",
        f"| `restore` call (template, lookup, slot restore), s | {cell('restore_call_s')} |",
    ])  # fmt: skip


#: Prompt tokens per second one engine prefills on 2 threads of the quiet machine (a rough
#: figure for the duration estimate only; the smoke run on a loaded machine saw ~70).
PREFILL_TOKENS_PER_S = 400


def expected_duration_s(args: argparse.Namespace) -> float:
    """Seconds a run takes: two engines started (~6 s), then per round the conversation
    prefilled twice (A's first turn, B's recompute), the save and restore (~2 s), and the
    short answers (~2 s)."""
    return float(6 + args.rounds * (2 * args.tokens / PREFILL_TOKENS_PER_S + 4))


def run(args: argparse.Namespace) -> None:
    announce_duration(expected_duration_s(args))
    info = machine()
    rows = asyncio.run(run_rounds(args))
    write_section("kv_restore", render(info, args, rows), args.out)
    print(f"wrote the kv_restore section of {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    main_guard(lambda: run(args))


if __name__ == "__main__":
    main()
