"""The Redis response cache holds data, never code: values are sealed and decoded as data.

Whoever can write to the shared Redis can plant a value under a cache key. A planted pickle
must not run, the request must still be answered from the model, and the refusal must be
counted. Runs against the local Redis with a key prefix per test (deleted afterwards).
"""

from __future__ import annotations

import asyncio
import pickle
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from aiscale.errors import ConfigError
from aiscale.serving import Gateway, GatewayApp, GatewaySettings, start_in_thread
from aiscale.serving.cache import decode_output, encode_output
from aiscale.serving.shared_state import RedisSettings, SharedState, check_reachable
from tests.serving.conftest import python_spec

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = b"test-cache-secret-0123456789abcdef"
TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}


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


class Planted:
    """Unpickling this creates ``path``: the stand-in for arbitrary code an attacker runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def output_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    data = response.json()["outputs"][0]["data"]
    return str(data[0])


def rejected(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("aiscale_cache_rejected_total") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_keys(client: redis.Redis, pattern: str, deadline_s: float = 10.0) -> list[bytes]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        keys = list(client.scan_iter(match=pattern))
        if keys:
            return keys
        time.sleep(0.02)
    raise TimeoutError(f"no key matching {pattern} appeared")


def test_planted_pickle_under_the_real_cache_key_never_runs(prefix: str, tmp_path: Path) -> None:
    """A pickle planted under the key the gateway computes is refused (a counted miss): the
    next request is answered by the model, correctly, and the payload's code never runs."""
    metrics = CollectorRegistry()
    shared = SharedState(
        RedisSettings(REDIS_URL, key_prefix=prefix, cache_secret=SECRET), metrics
    )
    gateway = Gateway(
        GatewaySettings(drain_timeout_s=5.0),
        [python_spec("echo", "Echo", cache_max_bytes=1 << 20)],
        metrics_registry=metrics,
        shared=shared,
    )
    server = start_in_thread(GatewayApp(gateway))
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    marker = tmp_path / "pwned"
    try:
        url = f"{server.url}/v2/models/echo/infer"
        assert output_text(httpx.post(url, json=TEXT)) == "hello"  # a miss, written back
        (name,) = wait_for_keys(client, f"{prefix}cache:*")
        assert output_text(httpx.post(url, json=TEXT)) == "hello"  # a hit, sealed by us
        assert rejected(server.url, "seal") == 0.0

        client.set(name, pickle.dumps(Planted(str(marker))))
        assert output_text(httpx.post(url, json=TEXT)) == "hello"
        assert not marker.exists()
        assert rejected(server.url, "seal") == 1.0

        # Bytes of a genuine entry flipped: refused as well, not decoded.
        client.delete(name)
        httpx.post(url, json=TEXT)
        wait_for_keys(client, f"{prefix}cache:*")
        sealed = client.get(name)
        assert isinstance(sealed, bytes)
        client.set(name, sealed[:-1] + bytes([sealed[-1] ^ 1]))
        assert output_text(httpx.post(url, json=TEXT)) == "hello"
        assert rejected(server.url, "seal") == 2.0
    finally:
        client.close()
        server.stop()


def test_entries_are_shared_only_under_the_same_secret(prefix: str) -> None:
    """A second gateway with the same secret reads the first's entry (numpy arrays intact);
    one with another secret, or an entry copied under another key, gets a counted miss."""
    value = encode_output({"vector": np.arange(4, dtype=np.float32), "label": "x"})
    assert value is not None

    async def run() -> tuple[list[bytes | None], list[bytes | None], list[bytes | None], float]:
        stranger_metrics = CollectorRegistry()
        writer = SharedState(
            RedisSettings(REDIS_URL, key_prefix=prefix, cache_secret=SECRET), CollectorRegistry()
        )
        friend = SharedState(
            RedisSettings(REDIS_URL, key_prefix=prefix, cache_secret=SECRET), CollectorRegistry()
        )
        stranger = SharedState(
            RedisSettings(REDIS_URL, key_prefix=prefix, cache_secret=b"another-secret-0123456"),
            stranger_metrics,
        )
        try:
            writer.cache.put_many([(b"k1", value)], 1 << 20)
            await writer.cache.stop()
            raw = await writer.client.get(f"{prefix}cache:{b'k1'.hex()}")
            assert isinstance(raw, bytes)
            await writer.client.set(f"{prefix}cache:{b'k2'.hex()}", raw)  # moved to another key
            by_friend = await friend.cache.get_many([b"k1"])
            by_stranger = await stranger.cache.get_many([b"k1"])
            moved = await friend.cache.get_many([b"k2"])
        finally:
            for state in (writer, friend, stranger):
                await state.aclose()
        count = stranger_metrics.get_sample_value(
            "aiscale_cache_rejected_total", {"reason": "seal"}
        )
        return by_friend, by_stranger, moved, count or 0.0

    by_friend, by_stranger, moved, count = asyncio.run(run())
    assert by_friend[0] is not None
    decoded = decode_output(by_friend[0])
    assert decoded["label"] == "x"
    assert decoded["vector"].dtype == np.float32 and decoded["vector"].tolist() == [0, 1, 2, 3]
    assert by_stranger == [None] and count == 1.0
    assert moved == [None]


def test_decoding_never_unpickles() -> None:
    """``decode_output`` refuses a pickle (and object arrays) with ValueError; outputs that
    are not plain data are not encoded at all."""
    with pytest.raises(ValueError):
        decode_output(pickle.dumps(Planted("/nonexistent/never")))
    assert encode_output(object()) is None
    assert encode_output(np.array([object()])) is None


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[str]:
    """A Redis of our own on a unix socket that requires a password; its socket path."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    socket_path = tmp_path / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--save", "",
         "--appendonly", "no", "--requirepass", "s3cret-pw"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(f"unix://:s3cret-pw@{socket_path}", socket_timeout=1)
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
    yield str(socket_path)
    process.kill()
    process.wait(timeout=10)


def test_password_urls_work_and_errors_never_show_the_password(
    redis_with_password: str,
) -> None:
    """A URL with a password reaches a Redis that needs one; a wrong password or an
    unreachable host is a ConfigError that masks the password."""
    check_reachable(RedisSettings(f"unix://:s3cret-pw@{redis_with_password}", timeout_s=1.0))
    for url in (
        f"unix://:wrong-pw@{redis_with_password}",
        "redis://ops:wrong-pw@127.0.0.1:1/0",
        "rediss://ops:wrong-pw@127.0.0.1:1/0",
        "redis://127.0.0.1:1/0?password=wrong-pw",
    ):
        with pytest.raises(ConfigError) as caught:
            check_reachable(RedisSettings(url, timeout_s=0.2))
        assert "wrong-pw" not in str(caught.value), str(caught.value)
        assert caught.value.field == "redis_url"
