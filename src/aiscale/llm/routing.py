"""Which engine replica serves an LLM request: least loaded, prefix-aware, session, round robin.

The gateway's LLM path asks a ``Router`` for an engine (``choose``), sends the request, then
tells it where the prompt went (``routed``) so that the prefix index learns; ``forget`` drops
an engine that is gone. Nothing is ever routed to an engine that is draining or not ready;
with none left, ``choose`` raises ``ReplicaUnavailable`` (503).

Policies (``make_router(policy, ...)``):

* ``least_loaded``: fewest requests waiting, then fewest running (the engine's queue as its
  metrics report it plus what this gateway has sent and not had answered); equal engines take
  turns, so equal loads spread evenly.
* ``prefix_aware``: the engine most likely to hold the longest cached prefix of the prompt
  (chained block hashes, ``routing_text.py``; an index of where prompts went,
  ``prefix_index.py``, shared by all gateways through Redis when a URL is given), guarded
  against piling load on one engine (``routing_choice.pick_by_prefix``); prompts that match
  nothing go to the least loaded engine. When the index cannot answer (Redis down), routing
  is by load alone and no request fails.
* ``session``: sticky by a session key (a user or conversation id) through rendezvous
  hashing over the routable engines, so that a draining engine's sessions move and all others
  stay; without a session key, least loaded.
* ``round_robin``: each routable engine in turn.

This module decides; it never sends a request, and never imports the serving side.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from aiscale.errors import ConfigError, ReplicaUnavailable
from aiscale.llm.prefix_index import (
    MAX_BLOCKS_LIMIT,
    InMemoryPrefixIndex,
    PrefixIndex,
    RedisPrefixIndex,
)
from aiscale.llm.routing_choice import (
    BalanceGuard,
    EngineView,
    pick_by_prefix,
    pick_by_session,
    pick_least_loaded,
    pick_round_robin,
    routable,
)
from aiscale.llm.routing_text import (
    DEFAULT_BLOCK_CHARS,
    DEFAULT_MAX_BLOCKS,
    prefix_chain,
    routing_text_of_chat,
    routing_text_of_completion,
)

__all__ = [
    "POLICIES",
    "BalanceGuard",
    "EngineView",
    "LoadRouter",
    "PrefixAwareRouter",
    "Router",
    "make_router",
    "routing_text_of_chat",
    "routing_text_of_completion",
]

POLICIES = ("least_loaded", "prefix_aware", "session", "round_robin")

#: Characters per token assumed when an engine's cache size is given in tokens.
CHARS_PER_TOKEN = 4
#: Default index capacity per engine, in blocks: 8192 blocks = 512 Ki characters, about
#: 128 Ki tokens: llama.cpp's context (8 Ki for the bundled model) plus the dozens of
#: prompts its host-memory prompt cache keeps. Pass ``cache_tokens`` (or
#: ``capacity_blocks``) to size it to the engine at hand (GIE's default, 31250 blocks, is
#: sized for an 8B model on an 80 GB GPU).
DEFAULT_CAPACITY_BLOCKS = 8192
#: Seconds an entry is believed: engines evict by LRU under load, so a prefix untouched for
#: five minutes on a busy engine has likely been displaced; forgetting it costs one choice
#: by load.
DEFAULT_TTL_S = 300.0
#: Chains remembered between ``choose`` and ``routed`` (both hash the same text; hashing the
#: longest chain, 256 blocks, takes a few hundred microseconds in Python).
_CHAIN_MEMO_SIZE = 64


class Router(Protocol):
    """Picks an engine replica for each request of one deployment."""

    async def choose(
        self, engines: Sequence[EngineView], *, routing_text: str, session: str | None
    ) -> EngineView:
        """One of ``engines`` that is ready and not draining; ``ReplicaUnavailable`` if none."""
        ...

    async def routed(self, engine: EngineView, *, routing_text: str) -> None:
        """The request was sent to ``engine``: learn it (prefix index). Never raises.

        Call it once the request is on its way (its cost, one Redis round trip at most,
        then overlaps the engine's prefill), and again when the answer is complete with
        ``routing_text_of_chat(messages, answer=...)``: the engine's cache then holds the
        answer too, and the next turn of the conversation matches all of it.
        """
        ...

    def forget(self, url: str) -> None:
        """Engine ``url`` is gone; drop what is known about it."""
        ...

    async def close(self) -> None: ...


def _routable_or_raise(engines: Sequence[EngineView], deployment: str) -> list[EngineView]:
    ready = routable(engines)
    if not ready:
        raise ReplicaUnavailable(
            f"deployment {deployment!r} has no engine replica that is ready and not draining"
        )
    return ready


class LoadRouter:
    """``least_loaded``, ``round_robin`` and ``session``: choices from the views alone.

    ``decision_counts`` says how many choices were made for which reason (for tests, logs
    and benchmarks).
    """

    def __init__(self, policy: str, *, deployment: str) -> None:
        if policy not in ("least_loaded", "round_robin", "session"):
            raise ValueError(f"LoadRouter does not do {policy!r}")
        self._policy = policy
        self._deployment = deployment
        self._turn = 0
        self._counts: Counter[str] = Counter()

    @property
    def decision_counts(self) -> Mapping[str, int]:
        """Choices made so far, by reason (a copy)."""
        return dict(self._counts)

    async def choose(
        self, engines: Sequence[EngineView], *, routing_text: str, session: str | None
    ) -> EngineView:
        ready = _routable_or_raise(engines, self._deployment)
        self._turn += 1
        if self._policy == "round_robin":
            self._counts["round_robin"] += 1
            return pick_round_robin(ready, self._turn)
        if self._policy == "session" and session:
            self._counts["session"] += 1
            return pick_by_session(ready, session)
        self._counts["least_loaded"] += 1
        return pick_least_loaded(ready, self._turn)

    async def routed(self, engine: EngineView, *, routing_text: str) -> None:
        return None

    def forget(self, url: str) -> None:
        return None

    async def close(self) -> None:
        return None


class PrefixAwareRouter:
    """The engine holding the longest prefix of the prompt, within the balance guard."""

    def __init__(
        self,
        *,
        deployment: str,
        index: PrefixIndex,
        guard: BalanceGuard,
        block_chars: int = DEFAULT_BLOCK_CHARS,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
    ) -> None:
        self._deployment = deployment
        self._index = index
        self._guard = guard
        self._block_chars = block_chars
        self._max_blocks = max_blocks
        self._turn = 0
        self._chains: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._counts: Counter[str] = Counter()

    @property
    def decision_counts(self) -> Mapping[str, int]:
        """Choices made so far, by reason: ``prefix``, ``no_match``, ``small_match``,
        ``balance`` (the guard sent it to the least loaded), ``index_unavailable``,
        ``only_engine``."""
        return dict(self._counts)

    async def choose(
        self, engines: Sequence[EngineView], *, routing_text: str, session: str | None
    ) -> EngineView:
        ready = _routable_or_raise(engines, self._deployment)
        self._turn += 1
        if len(ready) == 1:  # nothing to choose: spare the index a lookup
            self._counts["only_engine"] += 1
            return ready[0]
        chain = self._chain(routing_text)
        if not chain:
            self._counts["no_match"] += 1
            return pick_least_loaded(ready, self._turn)
        matched = await self._index.match(chain, [e.url for e in ready])
        if matched is None:
            self._counts["index_unavailable"] += 1
            return pick_least_loaded(ready, self._turn)
        engine, reason = pick_by_prefix(ready, matched, len(chain), self._turn, self._guard)
        self._counts[reason] += 1
        return engine

    async def routed(self, engine: EngineView, *, routing_text: str) -> None:
        chain = self._chain(routing_text)
        if chain:
            await self._index.record(chain, engine.url)

    def forget(self, url: str) -> None:
        self._index.forget(url)

    async def close(self) -> None:
        await self._index.close()

    def _chain(self, text: str) -> tuple[str, ...]:
        # Only the hashed part is kept as the memo's key: a huge prompt is not held on to.
        text = text[: self._block_chars * self._max_blocks]
        chain = self._chains.get(text)
        if chain is None:
            chain = prefix_chain(
                text,
                seed=self._deployment,
                block_chars=self._block_chars,
                max_blocks=self._max_blocks,
            )
            self._chains[text] = chain
            if len(self._chains) > _CHAIN_MEMO_SIZE:
                self._chains.popitem(last=False)
        else:
            self._chains.move_to_end(text)
        return chain


_KNOBS = frozenset(
    {
        "block_chars",
        "max_blocks",
        "capacity_blocks",
        "cache_tokens",
        "ttl_s",
        "cache_threshold",
        "balance_abs_threshold",
        "balance_rel_threshold",
        "redis_timeout_s",
        "redis_retry_s",
    }
)


def make_router(
    policy: str,
    *,
    deployment: str,
    redis_url: str | None = None,
    key_prefix: str = "aiscale:",
    **knobs: Any,
) -> Router:
    """A router of ``policy`` (one of ``POLICIES``) for ``deployment``'s engines.

    ``redis_url``: where ``prefix_aware`` keeps the index all gateways share (``None``: in
    this process). Knobs (``prefix_aware`` only; ``ConfigError`` for an unknown one):
    ``block_chars`` (64), ``max_blocks`` (256), ``capacity_blocks`` per engine (8192) or
    ``cache_tokens`` (the engine's cache in tokens; 4 characters each), ``ttl_s`` (300),
    ``cache_threshold`` (0.3), ``balance_abs_threshold`` (4), ``balance_rel_threshold`` (1.5),
    ``redis_timeout_s`` (0.25), ``redis_retry_s`` (1.0).
    """
    unknown = sorted(set(knobs) - _KNOBS)
    if unknown:
        raise ConfigError(f"unknown routing option(s): {', '.join(unknown)}", field=unknown[0])
    if policy in ("least_loaded", "round_robin", "session"):
        return LoadRouter(policy, deployment=deployment)
    if policy != "prefix_aware":
        raise ConfigError(
            f"unknown routing policy {policy!r}; expected one of {', '.join(POLICIES)}",
            field="policy",
        )
    try:
        return _prefix_aware(deployment, redis_url, key_prefix, knobs)
    except (TypeError, ValueError) as exc:
        # Every message below starts with the knob's name.
        raise ConfigError(f"invalid routing option: {exc}", field=str(exc).split()[0]) from None


def _prefix_aware(
    deployment: str, redis_url: str | None, key_prefix: str, knobs: Mapping[str, Any]
) -> PrefixAwareRouter:
    block_chars = _positive_int(knobs, "block_chars", DEFAULT_BLOCK_CHARS)
    max_blocks = _positive_int(knobs, "max_blocks", DEFAULT_MAX_BLOCKS)
    if max_blocks > MAX_BLOCKS_LIMIT:
        raise ValueError(f"max_blocks must be at most {MAX_BLOCKS_LIMIT}")
    if "cache_tokens" in knobs:
        tokens = _positive_int(knobs, "cache_tokens", 1)
        capacity = math.ceil(tokens * CHARS_PER_TOKEN / block_chars)
    else:
        capacity = _positive_int(knobs, "capacity_blocks", DEFAULT_CAPACITY_BLOCKS)
    ttl_s = _number(knobs, "ttl_s", DEFAULT_TTL_S)
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
    guard = BalanceGuard(
        cache_threshold=_number(knobs, "cache_threshold", 0.3),
        balance_abs_threshold=_positive_int(knobs, "balance_abs_threshold", 4, minimum=0),
        balance_rel_threshold=_number(knobs, "balance_rel_threshold", 1.5),
    )
    timeout_s = _number(knobs, "redis_timeout_s", 0.25)
    retry_s = _number(knobs, "redis_retry_s", 1.0)
    if timeout_s <= 0 or retry_s < 0:
        raise ValueError("redis_timeout_s must be > 0 and redis_retry_s >= 0")
    index: PrefixIndex
    if redis_url is None:
        index = InMemoryPrefixIndex(capacity_blocks=capacity, ttl_s=ttl_s)
    else:
        index = RedisPrefixIndex(
            redis_url,
            deployment=deployment,
            key_prefix=key_prefix,
            capacity_blocks=capacity,
            ttl_s=ttl_s,
            timeout_s=timeout_s,
            retry_s=retry_s,
        )
    return PrefixAwareRouter(
        deployment=deployment,
        index=index,
        guard=guard,
        block_chars=block_chars,
        max_blocks=max_blocks,
    )


def _positive_int(knobs: Mapping[str, Any], name: str, default: int, minimum: int = 1) -> int:
    value = knobs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(knobs: Mapping[str, Any], name: str, default: float) -> float:
    value = knobs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
