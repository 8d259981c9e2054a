"""Response cache, token buckets and deadlines."""

from __future__ import annotations

import httpx
import pytest

from aiscale.serving.cache import ResponseCache, cache_key
from aiscale.serving.limits import TokenBucket
from tests.serving.conftest import ServerFactory, python_spec

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["same"]}]}


def test_cache_is_bounded_in_bytes_and_evicts_least_recent() -> None:
    """The cache never holds more than max_bytes; the least recently used entry leaves first."""
    cache = ResponseCache(max_bytes=100)
    keys = [cache_key("d", "1", str(i).encode()) for i in range(10)]
    for key in keys[:3]:
        cache.put(key, b"x" * 14)  # 16-byte key + 14 bytes = 30 per entry
    assert cache.get(keys[0]) == b"x" * 14  # keys[0] is now the most recent
    cache.put(keys[3], b"y" * 14)
    assert cache.size_bytes <= 100 and len(cache) == 3
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    cache.put(keys[4], b"z" * 1000)  # larger than the whole cache: not stored
    assert cache.get(keys[4]) is None and cache.size_bytes <= 100


@pytest.mark.parametrize(
    ("rate", "times", "allowed"),
    [
        (5.0, [0.0] * 8, 5),
        (5.0, [i * 0.2 for i in range(8)], 8),
        (1.0, [0.0, 0.5, 1.0, 1.5, 2.0], 3),
    ],
)
def test_token_bucket(rate: float, times: list[float], allowed: int) -> None:
    """A bucket allows a burst of `rate`, then `rate` per second; a refusal says the wait."""
    bucket = TokenBucket.full(rate, 0.0)
    results = [bucket.try_take(t) for t in times]
    assert sum(1 for wait in results if wait == 0.0) == allowed
    assert all(wait >= 0 for wait in results)
    assert all(0 < wait <= 1 / rate for wait in results if wait)


def test_cache_serves_repeats_from_memory(serve: ServerFactory) -> None:
    """A repeated input is answered from the cache: same answer, counted as a hit."""
    url = serve(python_spec("echo", "Echo", cache_max_bytes=1 << 20)).url
    first = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT).json()
    second = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT).json()
    assert first["outputs"] == second["outputs"]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'aiscale_cache_lookups_total{deployment="echo",result="hit"} 1.0' in metrics
    assert 'aiscale_cache_lookups_total{deployment="echo",result="miss"} 1.0' in metrics
    assert 'aiscale_batcher_batch_size_count{deployment="echo",version="1"} 1.0' in metrics


def test_deadline_answers_504(serve: ServerFactory) -> None:
    """A request not answered within the deployment's timeout gets 504, not a hang."""
    url = serve(python_spec("slow", "Slow", model_config={"delay_ms": 1000}, timeout_s=0.2)).url
    response = httpx.post(f"{url}/v2/models/slow/infer", json=TEXT, timeout=10)
    assert response.status_code == 504
    assert response.headers["x-aiscale-error-type"] == "DeadlineExceeded"
