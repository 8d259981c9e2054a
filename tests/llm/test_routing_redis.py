"""The prefix index shared through Redis: gateways agree, it stays bounded, hostile contents
and outages never fail a request.

Runs against the local Redis with a key prefix per test (deleted afterwards); the outage test
runs a Redis server of its own on a unix socket, stops it and starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aiscale.llm.prefix_index import RedisPrefixIndex
from aiscale.llm.routing import EngineView, make_router, routing_text_of_chat
from aiscale.llm.routing_text import prefix_chain
from tests.llm.routing_fleet import dynamo_workload, random_text, spread

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    name = f"test:{uuid.uuid4().hex[:12]}:"
    yield name
    keys = list(client.scan_iter(match=f"{name}*"))
    if keys:
        client.delete(*keys)
    client.close()


def engines(count: int = 3, **loads: int) -> list[EngineView]:
    return [
        EngineView(f"http://10.0.0.{i}:8080", i, 0, loads.get(f"e{i}", 0))
        for i in range(1, count + 1)
    ]


def conversation_turns(rng: random.Random, num_turns: int) -> list[tuple[str, str]]:
    """(text of the turn's prompt, text the engine holds after answering) per turn."""
    messages = [{"role": "system", "content": "You answer questions about trains."}]
    turns = []
    for _ in range(num_turns):
        messages.append({"role": "user", "content": random_text(rng, 80, 300)})
        answer = random_text(rng, 100, 400)
        turns.append(
            (routing_text_of_chat(messages), routing_text_of_chat(messages, answer=answer))
        )
        messages.append({"role": "assistant", "content": answer})
    return turns


def test_two_gateways_sharing_redis_agree_on_where_a_conversation_lives(prefix: str) -> None:
    """Conversations whose turns alternate between two gateways always return to the engine
    that served their first turn: each gateway sees what the other recorded. Two gateways
    with indexes of their own, on the same traffic, do not agree (a second turn through the
    other gateway finds its home only by chance)."""

    async def run(redis_url: str | None) -> float:
        gateways = [
            make_router("prefix_aware", deployment="chat", redis_url=redis_url, key_prefix=prefix)
            for _ in range(2)
        ]
        rng = random.Random(1)
        fleet = engines(3)
        num_home = num_later = 0
        for conversation in range(12):
            home = None
            for turn, (text, held) in enumerate(conversation_turns(rng, 1 + conversation % 4)):
                # Equal loads: only the prefix can tell the engines apart.
                gateway = gateways[turn % 2]
                chosen = await gateway.choose(fleet, routing_text=text, session=None)
                await gateway.routed(chosen, routing_text=text)
                await gateway.routed(chosen, routing_text=held)
                if home is not None:
                    num_later += 1
                    num_home += chosen.url == home
                home = chosen.url
        for gateway in gateways:
            await gateway.close()
        return num_home / num_later

    assert asyncio.run(run(REDIS_URL)) == 1.0
    assert asyncio.run(run(None)) < 0.6


def test_a_shared_system_prompt_spreads_with_the_index_in_redis(prefix: str) -> None:
    """The Dynamo #7836 traffic (independent requests sharing a system prompt) spreads within
    20% over 4 engines with the index in Redis, as it does in process."""
    served, urls, reasons = dynamo_workload(4, 500, redis_url=REDIS_URL, key_prefix=prefix)
    assert spread(served, urls) <= 0.2, served
    assert "index_unavailable" not in reasons and reasons["prefix"] > 250, reasons


def test_the_shared_index_is_bounded_expires_and_evicts_a_prompts_tail_first(
    prefix: str,
) -> None:
    """Per engine the index keeps at most ``capacity_blocks`` hashes; past capacity the
    oldest prompt loses its last blocks first (its prefix still matches); entries older
    than the TTL no longer match and the key itself expires."""
    client = redis.Redis.from_url(REDIS_URL)
    url = "http://10.0.0.1:8080"

    async def run() -> tuple[list[int], int, int, str]:
        index = RedisPrefixIndex(
            REDIS_URL, deployment="chat", key_prefix=prefix, capacity_blocks=25, ttl_s=30
        )
        chains = [prefix_chain(f"{i}" * 64 * 10, seed="chat") for i in range(3)]
        for chain in chains:
            await index.record(chain, url)
        size = client.zcard(index.key_of(url))
        matched = []
        for chain in chains:
            found = await index.match(chain, [url, "http://10.0.0.2:8080"])
            assert found is not None
            assert found["http://10.0.0.2:8080"] == 0
            matched.append(found[url])
        ttl_ms = client.pttl(index.key_of(url))

        short = RedisPrefixIndex(
            REDIS_URL, deployment="short", key_prefix=prefix, capacity_blocks=25, ttl_s=0.2
        )
        await short.record(chains[0], url)
        fresh = await short.match(chains[0], [url])
        deadline = time.monotonic() + 10
        while (await short.match(chains[0], [url])) != {url: 0}:
            assert time.monotonic() < deadline, "entries did not expire"
            await asyncio.sleep(0.05)
        assert fresh == {url: 10}
        await index.close()
        await short.close()
        return matched, size, ttl_ms, short.key_of(url)

    matched, size, ttl_ms, short_key = asyncio.run(run())
    assert size == 25
    assert matched == [5, 10, 10]  # the oldest prompt lost its 5 last blocks, not its first
    assert 0 < ttl_ms <= 30_000
    assert short_key.startswith(f"{prefix}route:{{short}}:")
    deadline = time.monotonic() + 10
    while client.exists(short_key):
        assert time.monotonic() < deadline, "the key did not expire"
        time.sleep(0.05)
    client.close()


def test_hostile_redis_contents_never_fail_a_request(prefix: str) -> None:
    """A key of the wrong type where an engine's index should be counts as holding nothing
    and is replaced on the next write; planted members are never decoded, only compared;
    a forgotten engine's key is deleted."""
    client = redis.Redis.from_url(REDIS_URL)
    text = routing_text_of_chat([{"role": "user", "content": "q" * 500}])

    async def run() -> tuple[str, object, int]:
        router = make_router("prefix_aware", deployment="chat", redis_url=REDIS_URL,
                             key_prefix=prefix)
        index = RedisPrefixIndex(
            REDIS_URL, deployment="chat", key_prefix=prefix, capacity_blocks=10, ttl_s=30
        )
        fleet = engines(2)
        client.set(index.key_of(fleet[0].url), b"\x80\x04\x95 not a pickle, never unpickled")
        client.hset(index.key_of(fleet[1].url), "a", "b")
        first = await router.choose(fleet, routing_text=text, session=None)
        await router.routed(first, routing_text=text)
        kind = client.type(index.key_of(first.url))
        # A planted sorted set of junk members (and absurd scores) matches nothing real.
        client.zadd(index.key_of(fleet[1].url) + "x", {"junk": 1e300})
        again = await router.choose(fleet, routing_text=text, session=None)
        counts = dict(router.decision_counts)  # type: ignore[attr-defined]
        router.forget(first.url)
        await router.choose(fleet, routing_text="z" * 300, session=None)  # flushes the forget
        gone = client.exists(index.key_of(first.url))
        await router.close()
        await index.close()
        assert again == first and counts == {"no_match": 1, "prefix": 1}
        return first.url, kind, gone

    _, kind, gone = asyncio.run(run())
    assert kind == b"zset"
    assert gone == 0
    client.close()


def test_an_unreachable_redis_routes_by_load_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis unreachable every choice still succeeds, by load (spread evenly), quickly:
    one failed call, then Redis is left alone for the retry interval; one warning."""
    caplog.set_level(logging.INFO, logger="aiscale.llm.prefix_index")

    async def run() -> tuple[dict[str, int], float, dict[str, int]]:
        router = make_router(
            "prefix_aware",
            deployment="chat",
            redis_url="redis://127.0.0.1:1/0",
            redis_timeout_s=0.2,
            redis_retry_s=60,
        )
        fleet = engines(2)
        served: dict[str, int] = {}
        started = time.monotonic()
        for i in range(40):
            text = routing_text_of_chat([{"role": "user", "content": f"{i} " * 100}])
            chosen = await router.choose(fleet, routing_text=text, session=None)
            await router.routed(chosen, routing_text=text)
            served[chosen.url] = served.get(chosen.url, 0) + 1
        took_s = time.monotonic() - started
        counts = dict(router.decision_counts)  # type: ignore[attr-defined]
        await router.close()
        return served, took_s, counts

    served, took_s, counts = asyncio.run(run())
    assert sorted(served.values()) == [20, 20]
    assert counts == {"index_unavailable": 40}
    assert took_s < 2.0, took_s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "routing by load" in warnings[0].getMessage()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], Path]]:
    """A Redis server of this test's own on a unix socket; the test may stop and restart it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    processes: list[subprocess.Popen[bytes]] = []
    yield processes, socket_path
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def start_redis(socket_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    assert binary is not None
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise
            time.sleep(0.02)
    client.close()
    return process


def test_redis_going_away_mid_run_falls_back_and_recovers(
    own_redis: tuple[list[subprocess.Popen[bytes]], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Routing by prefix goes on through Redis; when Redis dies, choices fall back to load
    (no request fails, one warning); when it is back, prefix routing resumes (one info)."""
    processes, socket_path = own_redis
    caplog.set_level(logging.INFO, logger="aiscale.llm.prefix_index")
    text = routing_text_of_chat([{"role": "user", "content": "w" * 640}])

    async def run() -> list[dict[str, int]]:
        processes.append(start_redis(socket_path))
        router = make_router(
            "prefix_aware",
            deployment="chat",
            redis_url=f"unix://{socket_path}",
            redis_timeout_s=0.2,
            redis_retry_s=0,
        )
        fleet = engines(2)
        snapshots = []
        chosen = await router.choose(fleet, routing_text=text, session=None)
        await router.routed(chosen, routing_text=text)
        assert await router.choose(fleet, routing_text=text, session=None) == chosen
        snapshots.append(dict(router.decision_counts))  # type: ignore[attr-defined]
        processes[0].kill()
        processes[0].wait(timeout=10)
        for _ in range(3):
            found = await router.choose(fleet, routing_text=text, session=None)
            await router.routed(found, routing_text=text)
        snapshots.append(dict(router.decision_counts))  # type: ignore[attr-defined]
        processes.append(start_redis(socket_path))  # empty: the index starts over
        first = await router.choose(fleet, routing_text=text, session=None)
        await router.routed(first, routing_text=text)
        assert await router.choose(fleet, routing_text=text, session=None) == first
        snapshots.append(dict(router.decision_counts))  # type: ignore[attr-defined]
        await router.close()
        return snapshots

    through, down, back = asyncio.run(run())
    assert through == {"no_match": 1, "prefix": 1}
    assert down == {"no_match": 1, "prefix": 1, "index_unavailable": 3}
    assert back == {"no_match": 2, "prefix": 2, "index_unavailable": 3}
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == [logging.WARNING, logging.INFO], levels
