"""Routing across engine replicas: each policy, the prefix index in process, the balance guard.

The loads the routers see come from ``SimulatedFleet``: a request counts on its engine from
its choice until a seeded random completion step, so the spread measured here is the spread
the policies produce under honest load feedback. The shared (Redis) index is tested in
``test_routing_redis.py``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from aiscale.errors import ConfigError, ReplicaUnavailable
from aiscale.llm.routing import EngineView, Router, make_router, routing_text_of_chat
from tests.llm.routing_fleet import SYSTEM, SimulatedFleet, dynamo_workload, random_text, spread


def engine(port: int, waiting: int = 0, running: int = 0, **flags: bool) -> EngineView:
    return EngineView(f"http://127.0.0.1:{port}", port, waiting, running, **flags)


def choose(router: Router, engines: list[EngineView], text: str = "", session: str | None = None
           ) -> EngineView:
    return asyncio.run(router.choose(engines, routing_text=text, session=session))


@pytest.mark.parametrize("policy", ["least_loaded", "prefix_aware", "session", "round_robin"])
def test_draining_and_not_ready_engines_are_never_chosen(policy: str) -> None:
    """Whatever the policy, load or session, only the ready, non-draining engine is chosen;
    with none of those left the router raises ReplicaUnavailable."""
    router = make_router(policy, deployment="chat")
    engines = [
        engine(1, is_draining=True),
        engine(2),
        engine(3, is_ready=False),
        engine(4, waiting=0, running=0, is_ready=False, is_draining=True),
    ]

    async def run() -> tuple[list[str], str]:
        chosen = []
        for i in range(40):
            text = SYSTEM + f"question {i}"
            found = await router.choose(engines, routing_text=text, session=f"user-{i}")
            await router.routed(found, routing_text=text)
            chosen.append(found.url)
        with pytest.raises(ReplicaUnavailable, match="no engine replica that is ready"):
            await router.choose(
                [engine(1, is_draining=True), engine(3, is_ready=False)],
                routing_text="x",
                session=None,
            )
        with pytest.raises(ReplicaUnavailable):
            await router.choose([], routing_text="x", session="s")
        await router.close()
        return chosen, ""

    chosen, _ = asyncio.run(run())
    assert set(chosen) == {"http://127.0.0.1:2"}


def test_least_loaded_prefers_fewest_waiting_then_running_and_rotates_ties() -> None:
    """The engine with the fewest waiting requests wins, then the fewest running; among equal
    engines the choice rotates, so equal loads spread evenly."""
    router = make_router("least_loaded", deployment="chat")
    assert choose(router, [engine(1, 2, 0), engine(2, 0, 3), engine(3, 1, 0)]).url.endswith(
        ":2"
    )
    assert choose(router, [engine(1, 0, 3), engine(2, 0, 1), engine(3, 0, 2)]).url.endswith(
        ":2"
    )
    tied = [engine(1), engine(2), engine(3)]
    picks = Counter(choose(router, tied).url for _ in range(30))
    assert sorted(picks.values()) == [10, 10, 10]


def test_round_robin_takes_each_engine_in_turn_whatever_its_load() -> None:
    """Round robin ignores load: each routable engine gets every n-th request."""
    router = make_router("round_robin", deployment="chat")
    engines = [engine(1, waiting=50), engine(2), engine(3), engine(4, is_draining=True)]
    picks = [choose(router, engines).url[-1] for _ in range(9)]
    assert Counter(picks) == {"1": 3, "2": 3, "3": 3}
    assert picks[:3] != picks[1:4]  # an order, not one engine thrice


def test_session_is_sticky_and_a_draining_engine_moves_only_its_own_sessions() -> None:
    """The same session key always lands on the same engine, whatever the loads; when an
    engine drains, exactly its sessions move (spread over the others) and every other
    session keeps its engine; without a key the choice is by load."""
    router = make_router("session", deployment="chat")
    fleet = [engine(p) for p in range(1, 5)]
    sessions = [f"conversation-{i}" for i in range(400)]
    before = {s: choose(router, fleet, session=s).url for s in sessions}
    assert len(set(before.values())) == 4
    assert spread(Counter(before.values()), [e.url for e in fleet]) < 0.5
    loaded = [engine(p, waiting=10 * p) for p in range(1, 5)]
    assert all(choose(router, loaded, session=s).url == before[s] for s in sessions[:50])

    drained = [engine(1), engine(2, is_draining=True), engine(3), engine(4)]
    after = {s: choose(router, drained, session=s).url for s in sessions}
    moved = {s for s in sessions if after[s] != before[s]}
    assert moved == {s for s in sessions if before[s].endswith(":2")}
    assert {after[s] for s in moved} == {"http://127.0.0.1:1", "http://127.0.0.1:3",
                                        "http://127.0.0.1:4"}
    assert choose(router, [engine(1, 3), engine(2, 0), engine(3, 5)]).url.endswith(":2")


def test_prefix_aware_sends_each_turn_of_a_conversation_back_to_its_engine() -> None:
    """Turn N+1's text extends turn N's, so it matches the engine that served turn N and goes
    there, for 30 interleaved conversations over 3 engines under load, while no engine is
    ever chosen with more than 4 requests over the least loaded (the balance guard). Round
    robin, on the same traffic, does not go home."""

    async def run(policy: str, record_answers: bool) -> tuple[float, Counter[str], int]:
        fleet = SimulatedFleet(3, seed=7)
        router = make_router(policy, deployment="chat")
        rng = random.Random(11)
        histories: dict[int, list[dict[str, str]]] = {
            c: [{"role": "system", "content": SYSTEM}] for c in range(30)
        }
        home: dict[int, str] = {}
        firsts: Counter[str] = Counter()
        num_home = num_later = 0
        order = [c for c in range(30) for _ in range(6)]
        rng.shuffle(order)
        for conversation in order:
            messages = histories[conversation]
            messages.append({"role": "user", "content": random_text(rng, 20, 300)})
            answer = random_text(rng, 100, 700)
            text = routing_text_of_chat(messages)
            chosen = await fleet.send(
                router,
                text,
                answer_text=routing_text_of_chat(messages, answer=answer)
                if record_answers
                else None,
            )
            if conversation in home:
                num_later += 1
                num_home += chosen.url == home[conversation]
            else:
                firsts[chosen.url] += 1
            home[conversation] = chosen.url
            messages.append({"role": "assistant", "content": answer})
            fleet.advance()
        await router.close()
        return num_home / num_later, firsts, fleet.max_excess

    went_home, firsts, max_excess = asyncio.run(run("prefix_aware", record_answers=True))
    assert went_home >= 0.95, went_home
    assert len(firsts) == 3, firsts  # every engine started conversations
    assert max_excess <= 4, max_excess
    # Even when only prompts are recorded (the answer is not known at routing time), the
    # previous prompt is enough to find the way home.
    went_home_prompts_only, _, _ = asyncio.run(run("prefix_aware", record_answers=False))
    assert went_home_prompts_only >= 0.95, went_home_prompts_only
    went_home_rr, _, _ = asyncio.run(run("round_robin", record_answers=True))
    assert went_home_rr < 0.5, went_home_rr


@pytest.mark.parametrize("num_engines", [2, 4])
@pytest.mark.parametrize("policy", ["prefix_aware", "least_loaded"])
def test_unique_prompts_spread_within_20_percent(policy: str, num_engines: int) -> None:
    """1000 unique single-turn prompts, each holding its engine for a seeded random number of
    steps: every engine serves within 20% of every other."""

    async def run() -> tuple[Counter[str], list[str]]:
        fleet = SimulatedFleet(num_engines, seed=num_engines)
        router = make_router(policy, deployment="chat")
        rng = random.Random(3)
        for _ in range(1000):
            text = routing_text_of_chat(
                [{"role": "user", "content": random_text(rng, 30, 2000)}]
            )
            await fleet.send(router, text)
            fleet.advance()
        await router.close()
        return fleet.served, fleet.urls

    served, urls = asyncio.run(run())
    assert sum(served.values()) == 1000
    assert spread(served, urls) <= 0.2, served


@pytest.mark.parametrize("num_engines", [2, 5])
def test_a_shared_system_prompt_does_not_pile_requests_on_one_engine(num_engines: int) -> None:
    """Independent requests sharing a system prompt spread within 20% over all engines: once
    every engine has served the system prompt it no longer favours any of them (Dynamo
    #7836: 3 of 5 workers got all the traffic). Without the balance guard the same traffic
    does pile up on the one engine that first held the prompt, so the guard is what holds."""
    served, urls, reasons = dynamo_workload(num_engines)
    assert spread(served, urls) <= 0.2, served
    assert reasons.get("balance", 0) >= num_engines - 1, reasons

    piled, urls, _ = dynamo_workload(num_engines, balance_abs_threshold=10**9)
    assert max(piled.values()) == 1000, piled


def test_the_balance_guard_sends_a_match_on_a_hot_engine_to_the_least_loaded() -> None:
    """An engine holding the prompt's prefix gets it while its load is within the guard
    (4 requests over the least loaded); beyond that (and 1.5x) the least loaded one does."""

    async def run() -> list[tuple[str, str]]:
        router = make_router("prefix_aware", deployment="chat")
        text = routing_text_of_chat([{"role": "user", "content": SYSTEM}])
        seen = await router.choose([engine(1), engine(2)], routing_text=text, session=None)
        await router.routed(seen, routing_text=text)
        home = int(seen.url.rsplit(":", 1)[1])
        other = 3 - home
        picks = []
        for load_home, load_other in [(4, 0), (6, 1), (7, 2), (12, 8), (20, 15)]:
            engines = [engine(home, running=load_home), engine(other, running=load_other)]
            before = dict(router.decision_counts)  # type: ignore[attr-defined]
            found = await router.choose(engines, routing_text=text, session=None)
            after = router.decision_counts  # type: ignore[attr-defined]
            reason = next(r for r in after if after[r] != before.get(r, 0))
            picks.append(("home" if found.url == seen.url else "other", reason))
        await router.close()
        return picks

    assert asyncio.run(run()) == [
        ("home", "prefix"),  # 4 - 0 is not more than 4
        ("other", "balance"),  # 6 - 1 > 4 and 6 > 1.5 * 1
        ("other", "balance"),  # 7 - 2 > 4 and 7 > 1.5 * 2
        ("home", "prefix"),  # 12 - 8 is not more than 4
        ("home", "prefix"),  # 20 - 15 > 4 but 20 < 1.5 * 15
    ]


def test_a_gone_engine_is_forgotten() -> None:
    """After ``forget``, a prefix served by the gone engine no longer attracts requests (a new
    engine may reuse its URL with an empty cache)."""

    async def run() -> dict[str, int]:
        router = make_router("prefix_aware", deployment="chat")
        text = routing_text_of_chat([{"role": "user", "content": SYSTEM}])
        engines = [engine(1), engine(2)]
        first = await router.choose(engines, routing_text=text, session=None)  # no match
        await router.routed(first, routing_text=text)
        assert await router.choose(engines, routing_text=text, session=None) == first
        router.forget(first.url)
        await router.choose(engines, routing_text=text, session=None)  # no match again
        counts = dict(router.decision_counts)  # type: ignore[attr-defined]
        await router.close()
        return counts

    assert asyncio.run(run()) == {"no_match": 2, "prefix": 1}


@pytest.mark.parametrize(
    ("policy", "knobs", "field"),
    [
        ("fastest", {}, "policy"),
        ("prefix_aware", {"block_size": 16}, "block_size"),
        ("prefix_aware", {"block_chars": 0}, "block_chars"),
        ("prefix_aware", {"max_blocks": 5000}, "max_blocks"),
        ("prefix_aware", {"balance_rel_threshold": 0.5}, "balance_rel_threshold"),
        ("prefix_aware", {"cache_threshold": 1.5}, "cache_threshold"),
        ("prefix_aware", {"ttl_s": float("nan")}, "ttl_s"),
        ("prefix_aware", {"balance_abs_threshold": True}, "balance_abs_threshold"),
    ],
)
def test_bad_policy_or_option_is_a_config_error_naming_it(
    policy: str, knobs: dict[str, Any], field: str
) -> None:
    """An unknown policy or option, or an option out of range, is refused at construction
    with a ConfigError whose field names it; nothing is silently ignored."""
    with pytest.raises(ConfigError) as caught:
        make_router(policy, deployment="chat", **knobs)
    assert caught.value.field == field
