"""Dynamic batching: concurrent requests share batches; a lone client never waits for one."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiscale.policies.batching import batch_size_to_take
from aiscale.serving import BatchingSettings
from tests.serving.conftest import ServerFactory, python_spec

TEXT = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}


def batch_histogram(url: str, deployment: str) -> tuple[float, float]:
    """(number of batches, number of items) from /metrics."""
    count = total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == "aiscale_batcher_batch_size":
            for sample in family.samples:
                if sample.labels.get("deployment") != deployment:
                    continue
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
    return count, total


def test_batch_size_rule() -> None:
    """Dispatch at the target or the deadline; never more than the max batch size."""
    assert batch_size_to_take(0, 8, 64, 1.0, 0.01) == 0
    assert batch_size_to_take(1, 1, 64, 0.0, 0.01) == 1  # a lone client goes at once
    assert batch_size_to_take(3, 8, 64, 0.0, 0.01) == 0  # demand says more are coming
    assert batch_size_to_take(3, 8, 64, 0.02, 0.01) == 3  # ... but not past the delay
    assert batch_size_to_take(100, 200, 64, 0.0, 0.01) == 64


def test_lone_client_does_not_wait_for_the_batch_delay(serve: ServerFactory) -> None:
    """With a 1 s max batch delay, a single sequential client is still answered at once."""
    spec = python_spec(
        "echo", "Echo", batching=BatchingSettings(max_batch_size=64, max_batch_delay_s=1.0)
    )
    url = serve(spec).url
    with httpx.Client() as client:
        for _ in range(5):
            started = time.perf_counter()
            assert client.post(f"{url}/v2/models/echo/infer", json=TEXT).status_code == 200
            assert time.perf_counter() - started < 0.5
    assert batch_histogram(url, "echo") == (5.0, 5.0)


def test_concurrent_requests_share_batches(serve: ServerFactory) -> None:
    """32 concurrent requests to a busy replica are answered in far fewer than 32 batches."""
    spec = python_spec(
        "slow",
        "Slow",
        model_config={"delay_ms": 100},
        batching=BatchingSettings(max_batch_size=16, max_batch_delay_s=0.02),
    )
    url = serve(spec).url
    with httpx.Client(timeout=30) as client, concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(
            pool.map(
                lambda _: client.post(f"{url}/v2/models/slow/infer", json=TEXT).status_code,
                range(32),
            )
        )
    assert statuses == [200] * 32
    batches, items = batch_histogram(url, "slow")
    assert items == 32
    assert batches <= 8
