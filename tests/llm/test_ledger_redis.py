"""The token ledger shared by several gateways: atomic under concurrency, crash-safe, and
distrustful of what Redis holds.

"Gateways" are separate ledger instances with their own Redis connections on one key prefix
(the local Redis); the in-process variant of the concurrency test has one ledger, as one
gateway has. The outage test runs a Redis server of its own on a unix socket.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from aiscale.llm.ledger import (
    LedgerUnavailable,
    LimitExceeded,
    Reservation,
    TokenLedger,
    TokenUsage,
    make_ledger,
)
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.registry import LlmLimits

REDIS_URL = "redis://127.0.0.1:6379/0"
NOW_S = datetime(2026, 6, 15, 12, 0, 0, tzinfo=UTC).timestamp()
BUCKET = int(NOW_S * 1000) // 1000


def clock() -> float:
    return NOW_S


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh key prefix on the local Redis; every key under it is deleted afterwards."""
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


def gateways(prefix: str, count: int, config: LedgerConfig | None = None) -> list[TokenLedger]:
    return [
        make_ledger(config or LedgerConfig(), redis_url=REDIS_URL, key_prefix=prefix,
                    timeout_s=5.0, clock=clock)
        for _ in range(count)
    ]


async def _request(
    ledger: TokenLedger, rng: random.Random, *, key: str, team: str | None,
    limits: LlmLimits, is_full_use: bool,
) -> int:
    """One streamed request: admitted or not; if so it 'generates' for a moment and settles
    its usage (all of its reservation, or a random part). Returns the tokens it booked."""
    try:
        reservation = await ledger.admit(
            key_id=key, team=team, model="m", prompt_tokens_max=120, max_tokens=80,
            key_limits=limits,
        )
    except LimitExceeded:
        return 0
    used = TokenUsage(120, 0, 80) if is_full_use else TokenUsage(
        rng.randint(1, 120), 0, rng.randint(0, 80)
    )
    try:
        await asyncio.sleep(rng.uniform(0, 0.02))
    finally:
        await ledger.settle(reservation, used)
    return used.total_tokens


@pytest.mark.parametrize("kind", ["redis", "local"])
@pytest.mark.parametrize("is_full_use", [True, False], ids=["full-use", "partial-use"])
def test_fifty_concurrent_requests_cannot_pass_one_limit(
    prefix: str, kind: str, is_full_use: bool
) -> None:
    """50 concurrent requests spread over 3 gateways against one 2000 tokens-per-minute
    limit: the tokens booked in the minute never pass the limit by more than one reservation
    (here: not at all, each reservation fitting under it), and with full use exactly
    2000 / 200 requests get in."""
    limit, reservation = 2000, 200

    async def scenario() -> tuple[int, int, int]:
        ledgers = gateways(prefix, 3) if kind == "redis" else [
            make_ledger(LedgerConfig(), redis_url=None, key_prefix="x:", clock=clock)
        ]
        rng = random.Random(7)
        limits = LlmLimits(tokens_per_minute=limit)
        booked = await asyncio.gather(*(
            _request(ledgers[i % len(ledgers)], rng, key="k", team=None, limits=limits,
                     is_full_use=is_full_use)
            for i in range(50)
        ))
        usage = await ledgers[0].usage(key_id="k")
        for ledger in ledgers:
            await ledger.close()
        return sum(booked), sum(1 for b in booked if b), usage["key"]["day"]["tokens"]

    total, admitted, recorded = asyncio.run(scenario())
    assert total == recorded
    assert total <= limit + reservation
    assert total <= limit  # stricter: no reservation here is above the limit on its own
    if is_full_use:
        assert admitted == limit // reservation
    else:
        assert admitted >= limit // reservation  # refunds let more requests in


def test_team_limit_holds_across_gateways_and_keys(prefix: str) -> None:
    """Five keys of one team on three gateways: the team's requests-per-minute limit holds
    exactly, and so does each key's own concurrency limit."""
    config = LedgerConfig.model_validate({"teams": [{"name": "t", "requests_per_minute": 12}]})

    async def scenario() -> list[int]:
        ledgers = gateways(prefix, 3, config)
        rng = random.Random(3)
        booked = await asyncio.gather(*(
            _request(ledgers[i % 3], rng, key=f"k{i % 5}", team="t",
                     limits=LlmLimits(max_concurrent=2), is_full_use=True)
            for i in range(50)
        ))
        for ledger in ledgers:
            await ledger.close()
        return booked

    booked = asyncio.run(scenario())
    assert 0 < sum(1 for b in booked if b) <= 12


def test_a_crashed_gateways_reservation_expires_for_the_others(prefix: str) -> None:
    """A gateway that dies holding a reservation blocks a max_concurrent=1 key only until
    the reservation's TTL passes; the other gateways then admit again."""
    now = [NOW_S]
    config = LedgerConfig(reservation_ttl_s=30)
    limits = LlmLimits(max_concurrent=1)

    def moving() -> float:
        return now[0]

    async def scenario() -> None:
        crashed, alive = (
            make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix, clock=moving)
            for _ in range(2)
        )
        await crashed.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                            max_tokens=1, key_limits=limits)
        await crashed.close()  # never settled
        now[0] += 29
        with pytest.raises(LimitExceeded, match="max_concurrent"):
            await alive.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                              max_tokens=1, key_limits=limits)
        now[0] += 1
        await alive.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                          max_tokens=1, key_limits=limits)
        await alive.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("ledger:key:k:w", f"t:{BUCKET}", b"1e5"),
        ("ledger:key:k:w", f"t:{BUCKET}", b"0x10"),
        ("ledger:key:k:w", f"r:{BUCKET}", b" 12"),
        ("ledger:key:k:w", "evil", b"1"),
        ("ledger:key:k:a", "t", b"nan"),
        ("ledger:key:k:d:2026-06-15", "tok", b"\x80\x04\x95cos\nsystem\n."),
        ("ledger:key:k:m:2026-06", "nanos", b"9" * 40),
    ],
)
def test_values_that_are_not_the_ledgers_own_fail_closed(
    prefix: str, key: str, field: str, value: bytes
) -> None:
    """Whatever else writes to Redis cannot make the ledger evaluate, unpickle or misread
    it: a value that is not a plain decimal integer (or an unknown field) refuses the
    admission with LedgerUnavailable naming the key, rather than count it as anything."""
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(prefix + key, field, value)
    client.close()

    async def scenario() -> None:
        (ledger,) = gateways(prefix, 1)
        with pytest.raises(LedgerUnavailable, match="ledger") as caught:
            await ledger.admit(
                key_id="k", team=None, model="m", prompt_tokens_max=1, max_tokens=1,
                key_limits=LlmLimits(budget_tokens_per_day=10, tokens_per_minute=10),
            )
        assert "is not an integer" in caught.value.message or "unknown field" in (
            caught.value.message
        )
        await ledger.close()

    asyncio.run(scenario())


def test_a_planted_period_field_fails_the_usage_report(prefix: str) -> None:
    """The usage report reads only the ledger's own field names and integers."""
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(prefix + "ledger:team:t:m:2026-06", "__reduce__", b"1")
    client.close()

    async def scenario() -> None:
        (ledger,) = gateways(prefix, 1)
        with pytest.raises(LedgerUnavailable, match="unknown field"):
            await ledger.usage(team="t")
        await ledger.close()

    asyncio.run(scenario())


def _start_redis(socket_path: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(f"unix://{socket_path}", socket_timeout=1)
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


def test_redis_outage_refuses_admissions_and_keeps_settlements(tmp_path: Path) -> None:
    """While Redis is down admissions fail closed (LedgerUnavailable, within the deadline,
    then at once for a second) and settlements wait in memory; once it is back the next call
    books them."""
    socket_path = tmp_path / "redis.sock"
    process = _start_redis(socket_path)
    metrics = CollectorRegistry()

    async def scenario() -> None:
        ledger = make_ledger(
            LedgerConfig(), redis_url=f"unix://{socket_path}", key_prefix="t:", timeout_s=0.5,
            metrics_registry=metrics, clock=clock,
        )
        held = await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=10,
                                  max_tokens=10)
        process.kill()
        process.wait(timeout=10)
        started = time.monotonic()
        with pytest.raises(LedgerUnavailable, match="ledger's Redis failed to admit"):
            await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                               max_tokens=1)
        assert time.monotonic() - started < 2
        await ledger.settle(held, TokenUsage(7, 0, 3))  # does not raise
        assert metrics.get_sample_value("aiscale_ledger_pending_settles") == 1
        with pytest.raises(LedgerUnavailable, match="failed recently"):  # no waiting
            await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                               max_tokens=1)
        restarted = _start_redis(socket_path)
        try:
            deadline = time.monotonic() + 5
            while True:  # Redis is left alone for a second after a failure
                try:
                    await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                                       max_tokens=1)
                    break
                except LedgerUnavailable:
                    assert time.monotonic() < deadline, "the ledger never came back"
                    await asyncio.sleep(0.05)
            usage = await ledger.usage(key_id="k")
            assert usage["key"]["day"]["tokens"] == 10
            assert metrics.get_sample_value("aiscale_ledger_pending_settles") == 0
            await ledger.close()
        finally:
            restarted.kill()
            restarted.wait(timeout=10)

    asyncio.run(scenario())


def test_spend_metrics_have_bounded_labels(prefix: str) -> None:
    """Spend is exported per key, team, model (and token kind), never per request."""
    config = LedgerConfig.model_validate(
        {"prices": [{"model": "m", "prompt_usd_per_1m": 3, "completion_usd_per_1m": 15}]}
    )
    metrics = CollectorRegistry()

    async def scenario() -> None:
        ledger = make_ledger(config, redis_url=REDIS_URL, key_prefix=prefix,
                             metrics_registry=metrics, clock=clock)
        for _ in range(5):
            reservation = await ledger.admit(key_id="k", team="t", model="m",
                                             prompt_tokens_max=100, max_tokens=100)
            await ledger.settle(reservation, TokenUsage(100_000, 0, 10_000))
        with pytest.raises(LimitExceeded):
            await ledger.admit(key_id="k", team="t", model="m", prompt_tokens_max=100,
                               max_tokens=100, key_limits=LlmLimits(requests_per_minute=5))
        await ledger.close()

    asyncio.run(scenario())
    labels = {"key_id": "k", "team": "t", "model": "m"}
    assert metrics.get_sample_value("aiscale_ledger_spend_usd_total", labels) == pytest.approx(
        5 * (0.3 + 0.15)
    )
    assert metrics.get_sample_value(
        "aiscale_ledger_tokens_total", {**labels, "kind": "prompt"}
    ) == 500_000
    assert metrics.get_sample_value(
        "aiscale_ledger_refusals_total", {"limit": "key:requests_per_minute"}
    ) == 1
    label_names = {
        name for family in metrics.collect() for sample in family.samples
        for name in sample.labels
    }
    assert label_names <= {"key_id", "team", "model", "kind", "limit"}


def test_settlements_kept_through_an_outage_are_booked_once_by_concurrent_requests(
    tmp_path: Path,
) -> None:
    """Settlements that waited out a Redis outage are booked exactly once when many
    requests arrive together after it: each admit tries to book the backlog, and two of them
    used to take the same oldest one and each remove one, dropping a settlement nobody had
    booked (or raising IndexError: a 500 in the gateway)."""
    socket_path = tmp_path / "redis.sock"
    process = _start_redis(socket_path)
    num_held, num_arriving = 12, 24

    async def scenario() -> None:
        ledger = make_ledger(
            LedgerConfig(), redis_url=f"unix://{socket_path}", key_prefix="t:", timeout_s=0.5,
            metrics_registry=CollectorRegistry(), clock=clock,
        )
        held = [await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=10,
                                   max_tokens=10) for _ in range(num_held)]  # fmt: skip
        process.kill()
        process.wait(timeout=10)
        with pytest.raises(LedgerUnavailable):
            await ledger.admit(key_id="k", team=None, model="m", prompt_tokens_max=1,
                               max_tokens=1)
        for index, reservation in enumerate(held):  # each kept in memory, in order
            await ledger.settle(reservation, TokenUsage(index + 1, 0, 1))
        restarted = _start_redis(socket_path)
        try:
            await asyncio.sleep(1.2)  # past the time Redis is left alone after a failure
            arriving = await asyncio.gather(
                *(ledger.admit(key_id="other", team=None, model="m", prompt_tokens_max=1,
                               max_tokens=1) for _ in range(num_arriving)),
                return_exceptions=True,
            )  # fmt: skip
            assert [a for a in arriving if isinstance(a, BaseException)] == []
            for reservation in arriving:
                assert isinstance(reservation, Reservation)
                await ledger.settle(reservation, TokenUsage(1, 0, 0))
            await ledger.close()  # books whatever the arrivals left
            check = make_ledger(
                LedgerConfig(), redis_url=f"unix://{socket_path}", key_prefix="t:",
                timeout_s=0.5, metrics_registry=CollectorRegistry(), clock=clock,
            )
            usage = await check.usage(key_id="k")
            day = usage["key"]["day"]
            assert day["requests"] == num_held
            assert day["tokens"] == sum(index + 2 for index in range(num_held))
            await check.close()
        finally:
            restarted.kill()
            restarted.wait(timeout=10)

    asyncio.run(scenario())
