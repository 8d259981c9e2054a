"""Rate limits and the response cache in Redis: shared by gateways, fail open when it is down.

Runs against the local Redis (a key prefix per test, deleted afterwards); the outage test
starts a Redis server of its own on a unix socket and stops it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from aiscale.errors import ConfigError
from aiscale.serving.shared_state import RedisSettings, SharedState, check_reachable

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


def state(
    url: str, prefix: str, registry: CollectorRegistry | None = None, **options: float
) -> SharedState:
    # Gateways sharing the cache share the secret that seals its values.
    settings = RedisSettings(
        url, key_prefix=prefix, cache_secret=b"shared-test-secret", **options
    )
    return SharedState(settings, registry or CollectorRegistry())


def errors_of(registry: CollectorRegistry, use: str) -> float:
    return registry.get_sample_value("aiscale_redis_errors_total", {"use": use}) or 0.0


def test_one_bucket_is_shared_by_two_gateways(prefix: str) -> None:
    """Two gateways' limiters take from one bucket: with rate 20/s (burst 20), 40 calls spread
    over both within a moment admit 20 (give or take a refill), and the refused ones say
    how long to wait."""

    async def run() -> tuple[int, list[float]]:
        first, second = state(REDIS_URL, prefix), state(REDIS_URL, prefix)
        try:
            waits = [
                await (first if i % 2 else second).limits.try_take("key1", 20.0)
                for i in range(40)
            ]
        finally:
            await first.aclose()
            await second.aclose()
        return sum(1 for w in waits if w == 0.0), [w for w in waits if w > 0]

    admitted, refused = asyncio.run(run())
    assert 20 <= admitted <= 22, admitted
    assert refused and all(0 < w <= 0.06 for w in refused), refused


def test_cached_answers_are_shared_and_expire(prefix: str) -> None:
    """An answer put by one gateway is found by another in one lookup; entries carry the TTL."""

    async def run() -> tuple[list[bytes | None], int]:
        writer, reader = state(REDIS_URL, prefix, cache_ttl_s=30), state(REDIS_URL, prefix)
        try:
            writer.cache.put_many([(b"k1", b"v1"), (b"k2", b"v2"), (b"big", b"x" * 5000)], 1024)
            await writer.cache.stop()  # the background writes have landed
            found = await reader.cache.get_many([b"k1", b"k2", b"k3", b"big"])
            ttl_ms = int(await reader.client.pttl(f"{prefix}cache:{b'k1'.hex()}"))
        finally:
            await writer.aclose()
            await reader.aclose()
        return found, ttl_ms

    found, ttl_ms = asyncio.run(run())
    assert found == [b"v1", b"v2", None, None]  # "big" was over the size bound, never stored
    assert 0 < ttl_ms <= 30_000


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--save", "", "--appendonly",
         "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}"
    client = redis.Redis.from_url(url, socket_timeout=1)
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
    yield process, url
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_redis_down_falls_back_to_local_limits_and_cache_misses(
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    """When Redis goes away mid-run, no call fails or waits past the deadline: the limit is
    this gateway's own bucket (fail open, still limiting), lookups miss, errors are counted."""
    process, url = own_redis

    async def run() -> tuple[list[float], list[bytes | None], float, float, float]:
        metrics = CollectorRegistry()
        shared = state(url, "t:", metrics, timeout_s=0.2)
        try:
            assert await shared.limits.try_take("k", 5.0) == 0.0  # through Redis
            process.kill()
            process.wait(timeout=10)
            started = time.monotonic()
            waits = [await shared.limits.try_take("k", 5.0) for _ in range(8)]
            found = await shared.cache.get_many([b"a"])
            took_s = time.monotonic() - started
        finally:
            await shared.aclose()
        return waits, found, took_s, errors_of(metrics, "limits"), errors_of(metrics, "cache")

    waits, found, took_s, limit_errors, cache_errors = asyncio.run(run())
    assert sum(1 for w in waits if w == 0.0) == 5  # the local bucket: burst 5, then refusals
    assert found == [None]
    assert took_s < 1.0, took_s  # one failed call, then Redis is left alone for retry_s
    assert limit_errors == 1 and cache_errors == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
     ("redis://:notaport/0", "invalid Redis URL")],
)
def test_unusable_redis_is_a_config_error(url: str, message: str) -> None:
    """An unreachable or malformed URL is refused at start-up with a ConfigError naming it."""
    with pytest.raises(ConfigError, match=message) as caught:
        check_reachable(RedisSettings(url, timeout_s=0.2))
    assert caught.value.field == "redis_url"
