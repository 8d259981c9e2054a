"""A small simulation of routing policies on multi-turn chat: prefix-cache hits and load spread.

It predicts, without engines, what the LLM benchmark then measures: how much of each prompt
the chosen engine already holds under each policy, and how evenly requests spread. Each
engine is modelled by its true cache, an LRU of block hashes (``InMemoryPrefixIndex`` with the
engine's capacity) that holds every prompt it served and the answer it generated; a request
"hits" the leading blocks of its chain found there. Users hold conversations of ``turns``
turns that share a system prompt; a user's next turn arrives after its previous one finished
(a closed loop per user), and requests hold their engine for a seeded random number of steps.

Deterministic for a seed: the same arguments give the same result. It uses the real routers
(``make_router``, in-process index) and never touches the network, a clock or global
randomness. Not a timing model: no TTFT here, only cache and load.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiscale.llm.prefix_index import InMemoryPrefixIndex
from aiscale.llm.routing import EngineView, make_router
from aiscale.llm.routing_text import DEFAULT_BLOCK_CHARS, prefix_chain, routing_text_of_chat


@dataclass(frozen=True, slots=True)
class RoutingSimResult:
    """What one policy did to one workload."""

    policy: str
    num_requests: int
    #: Prompt characters in full blocks, over all requests, and how many of them were cached.
    num_prompt_chars: int
    num_cached_chars: int
    #: Requests served per engine URL.
    served: dict[str, int]
    #: The router's choices by reason (``prefix``, ``balance``, ...).
    decisions: dict[str, int]

    @property
    def cache_hit_rate(self) -> float:
        return self.num_cached_chars / self.num_prompt_chars if self.num_prompt_chars else 0.0

    @property
    def load_spread(self) -> float:
        """max / min - 1 of requests served per engine (``inf`` if one served none)."""
        values = list(self.served.values())
        return float("inf") if min(values) == 0 else max(values) / min(values) - 1.0


def simulate_multi_turn(
    policy: str,
    *,
    num_engines: int = 2,
    num_users: int = 16,
    num_conversations: int = 64,
    turns: int = 6,
    slots: int = 4,
    engine_cache_tokens: int = 8192,
    duration_steps: tuple[int, int] = (2, 10),
    seed: int = 0,
    **knobs: Any,
) -> RoutingSimResult:
    """Run ``num_conversations`` conversations of ``turns`` turns, ``num_users`` at a time,
    through a ``policy`` router over ``num_engines`` engines of ``slots`` slots each whose KV
    cache holds ``engine_cache_tokens`` tokens (4 characters each). ``knobs`` go to
    ``make_router``."""
    return asyncio.run(
        _simulate(
            policy, num_engines, num_users, num_conversations, turns, slots,
            engine_cache_tokens, duration_steps, seed, knobs,
        )
    )


async def _simulate(
    policy: str,
    num_engines: int,
    num_users: int,
    num_conversations: int,
    turns: int,
    slots: int,
    engine_cache_tokens: int,
    duration_steps: tuple[int, int],
    seed: int,
    knobs: dict[str, Any],
) -> RoutingSimResult:
    rng = random.Random(seed)
    urls = [f"http://engine-{i}" for i in range(num_engines)]
    capacity = max(1, engine_cache_tokens * 4 // DEFAULT_BLOCK_CHARS)
    caches = {url: InMemoryPrefixIndex(capacity_blocks=capacity, ttl_s=1e18, clock=lambda: 0.0)
              for url in urls}
    in_flight: dict[str, list[int]] = {url: [] for url in urls}
    router = make_router(policy, deployment="sim", **knobs)
    system = _words(rng, 600)
    # Each user: (conversation number, messages, turns left, step at which it may send).
    users = [(c, [{"role": "system", "content": system}], turns, 0) for c in range(num_users)]
    next_conversation = num_users
    served: Counter[str] = Counter()
    num_requests = num_prompt_chars = num_cached_chars = 0
    step = 0
    while users:
        step += 1
        for url in urls:
            in_flight[url] = [end for end in in_flight[url] if end > step]
        waiting = []
        for conversation, messages, left, ready_at in users:
            if ready_at > step:
                waiting.append((conversation, messages, left, ready_at))
                continue
            messages = [*messages, {"role": "user", "content": _words(rng, rng.randint(40, 400))}]
            text = routing_text_of_chat(messages)
            views = [
                EngineView(url, i, max(0, len(in_flight[url]) - slots),
                           min(len(in_flight[url]), slots))
                for i, url in enumerate(urls)
            ]
            engine = await router.choose(views, routing_text=text, session=f"c{conversation}")
            await router.routed(engine, routing_text=text)
            chain = prefix_chain(text, seed="sim")
            hits = await caches[engine.url].match(chain, [engine.url])
            num_cached_chars += (hits or {}).get(engine.url, 0) * DEFAULT_BLOCK_CHARS
            num_prompt_chars += len(chain) * DEFAULT_BLOCK_CHARS
            answer = _words(rng, rng.randint(100, 600))
            held = routing_text_of_chat(messages, answer=answer)
            await caches[engine.url].record(prefix_chain(held, seed="sim"), engine.url)
            await router.routed(engine, routing_text=held)
            done = step + rng.randint(*duration_steps)
            in_flight[engine.url].append(done)
            served[engine.url] += 1
            num_requests += 1
            messages = [*messages, {"role": "assistant", "content": answer}]
            if left > 1:
                waiting.append((conversation, messages, left - 1, done + 1))
            elif next_conversation < num_conversations:
                waiting.append(
                    (next_conversation, [{"role": "system", "content": system}], turns, done + 1)
                )
                next_conversation += 1
        users = waiting
    decisions = dict(getattr(router, "decision_counts", {}))
    await router.close()
    return RoutingSimResult(
        policy=policy,
        num_requests=num_requests,
        num_prompt_chars=num_prompt_chars,
        num_cached_chars=num_cached_chars,
        served={url: served.get(url, 0) for url in urls},
        decisions=decisions,
    )


def _words(rng: random.Random, num_chars: int) -> str:
    words: list[str] = []
    total = 0
    while total < num_chars:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:num_chars]
