"""The routing decisions themselves: which engine, given loads and what each engine holds.

Pure functions over ``EngineView`` values (the routers in ``routing.py`` own the state and the
I/O, and the simulator can call these directly): no clock, no I/O, no global randomness.
Ties are broken by a rotation counter the caller passes in and advances, so equal engines
take turns instead of the first one in the list taking everything.

The prefix choice follows SGLang's cache-aware router (``sgl-router/src/policies/
cache_aware.rs``): route to the engine with the longest cached prefix while load is balanced,
and to the least loaded engine when it is not, "imbalanced" meaning both
``load - min_load > balance_abs_threshold`` and ``load > balance_rel_threshold * min_load``.
Two changes keep it from piling every request on one engine (Dynamo #7836, #737: with a shared
system prompt and independent requests, a KV router sent everything to the engines that held
the system prompt):

* the guard compares the *chosen* engine with the least loaded one, not the fleet's max with
  its min, so a hot engine elsewhere never stops a conversation from going home, and a hot
  home always lets it go;
* a match counts only where it is longer than what the least loaded engine holds: a system
  prompt every engine has seen is no reason to prefer any of them, so independent requests
  that share one spread by load (ties between equal matches go to the least loaded). As in
  SGLang, the match must also cover more than ``cache_threshold`` of the prompt's blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineView:
    """What the router sees of one engine replica at the moment of a choice."""

    #: Base URL (``http://127.0.0.1:PORT``): the engine's identity, the same in every gateway.
    url: str
    replica_id: int
    #: The engine's queue (from its metrics) plus this gateway's sent-but-unanswered requests.
    num_waiting: int
    num_running: int
    is_ready: bool = True
    is_draining: bool = False

    @property
    def load(self) -> int:
        """Requests at the engine, waiting or running: the unit of the balance guard."""
        return self.num_waiting + self.num_running


@dataclass(frozen=True, slots=True)
class BalanceGuard:
    """When a prefix match is not worth the queue (see the module docstring)."""

    #: Fraction of the prompt's blocks the longest match must cover (SGLang's default, 0.3).
    cache_threshold: float = 0.3
    #: The chosen engine may carry this many requests more than the least loaded one...
    balance_abs_threshold: int = 4
    #: ...or be up to this many times as loaded; beyond both, the least loaded one is used.
    balance_rel_threshold: float = 1.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold < 1.0:
            raise ValueError("cache_threshold must be in [0, 1)")
        if self.balance_abs_threshold < 0:
            raise ValueError("balance_abs_threshold must be >= 0")
        if self.balance_rel_threshold < 1.0:
            raise ValueError("balance_rel_threshold must be >= 1")

    def is_imbalanced(self, load: int, min_load: int) -> bool:
        return (
            load - min_load > self.balance_abs_threshold
            and load > self.balance_rel_threshold * min_load
        )


def routable(engines: Sequence[EngineView]) -> list[EngineView]:
    """The engines that may take a request (ready, not draining), in a stable order (URL)."""
    return sorted((e for e in engines if e.is_ready and not e.is_draining), key=_url_of)


def pick_least_loaded(engines: Sequence[EngineView], turn: int) -> EngineView:
    """The engine with the fewest waiting, then fewest running requests; among equals the
    ``turn``-th (modulo their number) in URL order. ``engines`` must not be empty."""
    best = min((e.num_waiting, e.num_running) for e in engines)
    tied = sorted((e for e in engines if (e.num_waiting, e.num_running) == best), key=_url_of)
    return tied[turn % len(tied)]


def pick_round_robin(engines: Sequence[EngineView], turn: int) -> EngineView:
    """The ``turn``-th engine (modulo their number) in URL order."""
    ordered = sorted(engines, key=_url_of)
    return ordered[turn % len(ordered)]


def pick_by_session(engines: Sequence[EngineView], session: str) -> EngineView:
    """Rendezvous (highest random weight) hashing of ``session`` over ``engines``.

    Removing an engine moves only the sessions it held (each to its next-highest engine);
    every other session keeps its engine, and adding one back restores them.
    """
    return max(engines, key=lambda e: (_weight(session, e.url), e.url))


def pick_by_prefix(
    engines: Sequence[EngineView],
    matched: Mapping[str, int],
    num_blocks: int,
    turn: int,
    guard: BalanceGuard,
) -> tuple[EngineView, str]:
    """The engine for a prompt of ``num_blocks`` blocks, of which engine ``url`` holds the
    first ``matched[url]``; and why (``prefix``, ``no_match``, ``small_match``, ``balance``).
    """
    fallback = pick_least_loaded(engines, turn)
    longest = max((matched.get(e.url, 0) for e in engines), default=0)
    if num_blocks == 0 or longest == 0:
        return fallback, "no_match"
    if matched.get(fallback.url, 0) == longest:
        return fallback, "prefix"
    if longest <= guard.cache_threshold * num_blocks:
        return fallback, "small_match"
    holders = [e for e in engines if matched.get(e.url, 0) == longest]
    best = pick_least_loaded(holders, turn)
    if guard.is_imbalanced(best.load, fallback.load):
        return fallback, "balance"
    return best, "prefix"


def _url_of(engine: EngineView) -> str:
    return engine.url


def _weight(session: str, url: str) -> int:
    digest = hashlib.blake2b(
        f"{session}\0{url}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big")
