"""TTFT through the gateway minus direct, request by request: a finer probe than rounds.

``gateway_overhead.py`` compares 12 s runs; on this machine the engine's own TTFT moves by
tens of milliseconds from one run to the next, far more than the +5 ms it looks for. This
probe alternates single streamed requests (direct, through the gateway, and back, in
alternating order) against one ``aiscale serve smollm2`` and its own engine, each with a
fresh prompt suffix, and reports the median of the per-pair differences. ``--policy``
sets the engine threads' scheduling policy after start (``default`` or ``batch``) to
compare them on one engine.

    .venv/bin/python benchmarks/llm/ttft_pairs.py [--pairs 40] [--policy batch]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.llm.common import engine_children, gateway_engine_urls, serve  # noqa: E402

PROMPT = " ".join(f"word{i}" for i in range(100))


def first_token_s(client: httpx.Client, base: str, model: str,
                  prompt: str | None = None) -> float | None:
    """Seconds from sending a streamed chat to its first content event (``prompt``: by
    default a fixed prefix with a fresh suffix)."""
    content = prompt if prompt is not None else f"{PROMPT} {time.time_ns()}"
    body = {"model": model, "max_tokens": 4, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": content}]}
    started = time.perf_counter()
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - started
    return None


def alternating_pairs(
    client: httpx.Client, direct: str, gateway: str, model: str, num_pairs: int,
    prompt_of: Callable[[], str | None] = lambda: None,
) -> list[tuple[float, float]]:
    """(direct, through the gateway) TTFT seconds of ``num_pairs`` pairs of single streamed
    requests, the order alternating pair by pair; ``prompt_of`` gives each request's prompt
    (``None``: ``first_token_s``'s default). A pair with a request that streamed no token
    is left out."""
    pairs = []
    for index in range(num_pairs):
        order = [direct, gateway] if index % 2 == 0 else [gateway, direct]
        found = {url: first_token_s(client, url, model, prompt_of()) for url in order}
        if found[direct] is not None and found[gateway] is not None:
            pairs.append((found[direct], found[gateway]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--policy", choices=("default", "batch"), default="default")
    args = parser.parse_args()
    served = serve(["smollm2"])
    try:
        engine, gateway = gateway_engine_urls(served)[0], served.url
        policy = os.SCHED_BATCH if args.policy == "batch" else os.SCHED_OTHER
        for pid in engine_children(served.process.pid):
            for thread in os.listdir(f"/proc/{pid}/task"):
                os.sched_setscheduler(int(thread), policy, os.sched_param(0))
        with httpx.Client(timeout=60) as client:
            model = client.get(f"{gateway}/v1/models").json()["data"][0]["id"]
            pairs = alternating_pairs(client, engine, gateway, model, args.pairs)
        deltas = [through - direct for direct, through in pairs]
        print(f"policy {args.policy}: TTFT p50 direct "
              f"{statistics.median(d for d, _ in pairs) * 1e3:.1f} ms, through the gateway "
              f"{statistics.median(t for _, t in pairs) * 1e3:.1f} ms; per-pair delta median "
              f"{statistics.median(deltas) * 1e3:+.1f} ms over {len(deltas)} pairs")
    finally:
        served.stop()


if __name__ == "__main__":
    main()
