"""A simulated fleet of engines for routing tests: honest load counts, seeded completions.

Each routed request occupies its engine from the step it is chosen until a completion step
drawn from a seeded ``random.Random``; an engine runs up to ``slots`` requests and queues the
rest, and the router sees exactly those counts (``num_running``, ``num_waiting``). Nothing
here decides a route: it only keeps the books the router reads.
"""

from __future__ import annotations

import asyncio
import random
import string
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiscale.llm.routing import EngineView, Router, make_router, routing_text_of_chat

#: A long system prompt that every conversation in a workload shares.
SYSTEM = (
    "You are a careful assistant for a bank's customers. Answer briefly, cite the policy "
    "section you rely on, never reveal account numbers, and ask for clarification when a "
    "request is ambiguous. " * 6
)


class SimulatedFleet:
    """Engines with in-flight requests that finish at seeded, random steps."""

    def __init__(self, num_engines: int, *, slots: int = 4, seed: int = 0) -> None:
        self.urls = [f"http://127.0.0.1:{9000 + i}" for i in range(num_engines)]
        self.slots = slots
        self.rng = random.Random(seed)
        self.step = 0
        self._finishing: dict[str, list[int]] = {url: [] for url in self.urls}
        self.served: Counter[str] = Counter()
        self.draining: set[str] = set()
        self.not_ready: set[str] = set()
        #: The most requests a chosen engine held beyond the least loaded routable engine,
        #: at the moment it was chosen (what the balance guard bounds).
        self.max_excess = 0

    def views(self) -> list[EngineView]:
        views = []
        for replica_id, url in enumerate(self.urls):
            in_flight = len(self._finishing[url])
            views.append(
                EngineView(
                    url=url,
                    replica_id=replica_id,
                    num_waiting=max(0, in_flight - self.slots),
                    num_running=min(in_flight, self.slots),
                    is_ready=url not in self.not_ready,
                    is_draining=url in self.draining,
                )
            )
        return views

    def load(self, url: str) -> int:
        return len(self._finishing[url])

    def advance(self, steps: int = 1) -> None:
        """Time moves on: requests whose completion step has come leave their engine."""
        self.step += steps
        for url, ends in self._finishing.items():
            self._finishing[url] = [end for end in ends if end > self.step]

    async def send(
        self,
        router: Router,
        routing_text: str,
        *,
        session: str | None = None,
        duration_steps: tuple[int, int] = (1, 12),
        answer_text: str | None = None,
    ) -> EngineView:
        """Choose an engine, occupy it until a random later step, and tell the router."""
        views = self.views()
        engine = await router.choose(views, routing_text=routing_text, session=session)
        least = min(v.load for v in views if v.is_ready and not v.is_draining)
        self.max_excess = max(self.max_excess, self.load(engine.url) - least)
        await router.routed(engine, routing_text=routing_text)
        self._finishing[engine.url].append(self.step + self.rng.randint(*duration_steps))
        self.served[engine.url] += 1
        if answer_text is not None:
            await router.routed(engine, routing_text=answer_text)
        return engine


def spread(counts: Counter[str], urls: Iterable[str]) -> float:
    """How uneven the counts are: max / min - 1 over all engines (inf if one got none)."""
    values = [counts.get(url, 0) for url in urls]
    return float("inf") if min(values) == 0 else max(values) / min(values) - 1.0


def random_text(rng: random.Random, min_chars: int, max_chars: int) -> str:
    """Words of random letters: unique text, with spaces like prose."""
    size = rng.randint(min_chars, max_chars)
    words = []
    total = 0
    while total < size:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
        words.append(word)
        total += len(word) + 1
    return " ".join(words)[:size]


def dynamo_workload(
    num_engines: int, num_requests: int = 1000, **knobs: Any
) -> tuple[Counter[str], list[str], dict[str, int]]:
    """Dynamo #7836's traffic: independent single-turn requests that all share a long system
    prompt, arriving faster than they finish (about 32 in flight at once)."""

    async def run() -> tuple[Counter[str], list[str], dict[str, int]]:
        fleet = SimulatedFleet(num_engines, seed=5)
        router = make_router("prefix_aware", deployment="chat", **knobs)
        rng = random.Random(5)
        for _ in range(num_requests):
            text = routing_text_of_chat(
                [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": random_text(rng, 20, 200)},
                ]
            )
            await fleet.send(router, text, duration_steps=(16, 48))
            fleet.advance()
        counts = dict(router.decision_counts)  # type: ignore[attr-defined]
        await router.close()
        return fleet.served, fleet.urls, counts

    return asyncio.run(run())
