"""One request cannot stall the gateway: items per request are capped before decoding, a
request goes to the batcher as one unit and leaves no work behind once answered, and rate
limits count items."""

from __future__ import annotations

import asyncio
import statistics
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry

from aiscale.config import load_config
from aiscale.errors import ConfigError
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import BatchingSettings, GatewaySettings
from aiscale.serving.limits import TokenBucket
from aiscale.serving.shared_state import RedisSettings, SharedState
from tests.serving.conftest import ServerFactory, python_spec, start_gateway

T = TypeVar("T")

#: Health checks answer within this while a huge request is refused (on a quiet machine).
HEALTH_FLOOR_S = 0.050


def message_of(response: httpx.Response) -> str:
    """The error message in either shape: OIP v2's ``{"error": "..."}`` or ``{"error": {...}}``."""
    error = response.json()["error"]
    return error if isinstance(error, str) else str(error["message"])


def oip_body(name: str, datatype: str, shape: list[int], data: list[Any]) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}
    )


def text_body(texts: list[str]) -> bytes:
    return oip_body("text", "BYTES", [len(texts)], texts)


def health_while(url: str, action: Callable[[], T]) -> tuple[list[float], T]:
    """Latencies of ``/v2/health/live`` polled from another client while ``action()`` runs."""
    is_done = threading.Event()
    is_polling = threading.Event()
    latencies: list[float] = []

    def poll() -> None:
        with httpx.Client(timeout=30) as client:
            client.get(f"{url}/v2/health/live")
            is_polling.set()
            while not is_done.is_set():
                started = time.perf_counter()
                assert client.get(f"{url}/v2/health/live").status_code == 200
                latencies.append(time.perf_counter() - started)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        assert is_polling.wait(10)
        result = action()
    finally:
        is_done.set()
        thread.join(30)
    return latencies, result


def post_timed(url: str, body: bytes, times: int) -> list[tuple[httpx.Response, float]]:
    answers = []
    with httpx.Client(timeout=60) as client:
        for _ in range(times):
            started = time.perf_counter()
            response = client.post(url, content=body, headers={"content-type": "application/json"})
            answers.append((response, time.perf_counter() - started))
    return answers


def parse_s(body: bytes) -> float:
    """How long one JSON parse of ``body`` holds this interpreter now (median of 3)."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        orjson.loads(body)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def assert_refused_at_once_while_health_answers(url: str, path: str, body: bytes) -> None:
    """Five oversized requests in a row: each 413 at once, naming the limit, while another
    client's health checks keep answering.

    The bound on health latency is 50 ms, unless the machine is slower than that just now:
    the idle second before (median x 5, worst x 2) or four JSON parses of the body. The
    gateway parses a big body in a worker thread, but a C parser holds the interpreter lock
    for the whole parse (about 10 ms on a quiet machine), and these tests share two cores
    with other work, so one parse can take several times that. Before the item cap, the
    gateway held its loop for whole seconds on such a body.
    """
    idle, _ = health_while(url, lambda: time.sleep(1.0))
    one_parse_s = parse_s(body)
    latencies, answers = health_while(url, lambda: post_timed(f"{url}{path}", body, 5))
    for response, elapsed_s in answers:
        assert response.status_code == 413, response.text[:300]
        message = message_of(response)
        assert "300000 items" in message and "1024" in message, message
        assert "max_items_per_request" in message
        assert elapsed_s < 2.0, elapsed_s
    assert latencies, "the health client got no answer while the big requests ran"
    bound_s = max(HEALTH_FLOOR_S, 5 * statistics.median(idle), 2 * max(idle), 4 * one_parse_s)
    assert max(latencies) <= bound_s, (max(latencies), bound_s, one_parse_s, len(latencies))


def test_huge_oip_request_is_refused_at_once_and_health_keeps_answering(
    serve: ServerFactory,
) -> None:
    """A 300,000-item OIP v2 request (1.8 MB, under the 4 MiB body limit) is refused with 413
    from its declared shape, naming the limit, without holding the event loop: health
    checks from another client meanwhile stay within max(50 ms, 5x the idle median)."""
    url = serve(python_spec("sum", "Sum")).url
    body = oip_body("input", "FP64", [300_000, 1], [0.125] * 300_000)
    assert 1_700_000 < len(body) < 4 * 1024 * 1024
    assert_refused_at_once_while_health_answers(url, "/v2/models/sum/infer", body)
    ok = httpx.post(
        f"{url}/v2/models/sum/infer", content=oip_body("input", "FP64", [2, 2], [1, 2, 3, 4])
    )
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [3.0, 7.0]


def test_huge_embeddings_request_is_refused_at_once_and_health_keeps_answering(
    serve: ServerFactory,
) -> None:
    """The same for ``/v1/embeddings`` with 300,000 inputs: 413 from the list's length."""
    url = serve(python_spec("embed", "HashEmbed")).url
    body = orjson.dumps({"model": "embed", "input": ["ab"] * 300_000})
    assert_refused_at_once_while_health_answers(url, "/v1/embeddings", body)
    response = httpx.post(f"{url}/v1/embeddings", json={"model": "embed", "input": ["a", "b"]})
    assert response.status_code == 200 and len(response.json()["data"]) == 2


def binary_sum_body(num_items: int) -> tuple[bytes, str]:
    """A binary-tensor OIP v2 body of ``num_items`` rows of two FP64 values, and its header
    length."""
    raw = struct.pack(f"<{2 * num_items}d", *([1.0] * (2 * num_items)))
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [num_items, 2],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return header + raw, str(len(header))


def test_request_at_the_cap_works_and_one_over_is_refused(serve: ServerFactory) -> None:
    """With ``max_items_per_request`` 8: 8 items are served on every protocol (JSON and binary
    tensors, embeddings); 9 are refused with 413 naming the limit. A deployment whose queue
    holds fewer (``max_queue`` 4) refuses 5 the same way, never a 503 that no retry can fix."""
    url = serve(
        python_spec("sum", "Sum"),
        python_spec("embed", "HashEmbed"),
        python_spec("small", "Echo", batching=BatchingSettings(max_queue=4)),
        settings=GatewaySettings(drain_timeout_s=5.0, max_items_per_request=8),
    ).url
    with httpx.Client(timeout=30) as client:

        def infer_json(num_items: int) -> httpx.Response:
            body = oip_body("input", "FP64", [num_items, 1], [1.0] * num_items)
            return client.post(f"{url}/v2/models/sum/infer", content=body)

        def infer_binary(num_items: int) -> httpx.Response:
            body, header_length = binary_sum_body(num_items)
            return client.post(
                f"{url}/v2/models/sum/infer",
                content=body,
                headers={
                    "inference-header-content-length": header_length,
                    "content-type": "application/octet-stream",
                },
            )

        def embed(num_items: int) -> httpx.Response:
            return client.post(
                f"{url}/v1/embeddings", json={"model": "embed", "input": ["x"] * num_items}
            )

        for send in (infer_json, infer_binary, embed):
            at_cap = send(8)
            assert at_cap.status_code == 200, (send.__name__, at_cap.text)
            over = send(9)
            assert over.status_code == 413, (send.__name__, over.text)
            assert "9 items" in message_of(over) and "limit is 8" in message_of(over)
        assert infer_json(8).json()["outputs"][0]["data"] == [1.0] * 8
        assert len(embed(8).json()["data"]) == 8
        small = client.post(f"{url}/v2/models/small/infer", content=text_body(["a"] * 4))
        assert small.status_code == 200 and small.json()["outputs"][0]["data"] == ["a"] * 4
        refused = client.post(f"{url}/v2/models/small/infer", content=text_body(["a"] * 5))
        assert refused.status_code == 413 and "limit is 4" in message_of(refused)


def test_tensors_cannot_be_repeated_to_multiply_work(serve: ServerFactory) -> None:
    """The item cap holds per tensor, so a body could repeat one input tensor (or ask for
    outputs) many times over instead: an input given twice, or more outputs than the model
    has, is a 400 naming the field."""
    url = serve(python_spec("sum", "Sum")).url
    tensor = {"name": "input", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}
    twice = httpx.post(f"{url}/v2/models/sum/infer", json={"inputs": [tensor] * 1000})
    assert twice.status_code == 400 and "given twice" in message_of(twice)
    many = httpx.post(
        f"{url}/v2/models/sum/infer",
        json={"inputs": [tensor], "outputs": [{"name": "sum"}] * 1000},
    )
    assert many.status_code == 400 and "1000 outputs requested" in message_of(many)


def test_the_cap_is_configured_in_the_server_section() -> None:
    """``server.max_items_per_request`` (flag ``--max-items-per-request``): 1024 by default,
    at least 1."""
    assert load_config(environ={}).server.max_items_per_request == 1024
    config = load_config(environ={}, server_overrides={"max_items_per_request": 4})
    assert config.server.max_items_per_request == 4
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, server_overrides={"max_items_per_request": 0})
    assert info.value.field == "server.max_items_per_request"


def batch_items(url: str, deployment: str) -> float:
    """Items sent to replicas so far (the sum of the batch-size histogram)."""
    text = httpx.get(f"{url}/metrics").text
    prefix = f'aiscale_batcher_batch_size_sum{{deployment="{deployment}",version="1"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def queue_depth(url: str, deployment: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    prefix = f'aiscale_batcher_queue_depth{{deployment="{deployment}",version="1"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.removeprefix(prefix))
    return 0.0


def test_requests_answered_503_or_504_leave_no_work_behind(serve: ServerFactory) -> None:
    """Queue full: a request that does not fit is refused whole (503) and none of its items
    is computed, where before the items queued ahead of the refusal still were. Deadline:
    once a request is answered 504, only the batches already on the replica finish. A
    last one-item request, answered after everything queued before it, closes each count."""
    one_at_a_time = BatchingSettings(max_batch_size=1, max_batch_delay_s=0.0, max_queue=10)
    url = serve(
        python_spec("slow", "Slow", model_config={"delay_ms": 100}, batching=one_at_a_time),
        python_spec(
            "late", "Slow", model_config={"delay_ms": 100}, batching=one_at_a_time, timeout_s=0.35
        ),
    ).url
    with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=30) as client:
        first = pool.submit(
            client.post, f"{url}/v2/models/slow/infer", content=text_body(["a"] * 8)
        )
        until(lambda: queue_depth(url, "slow") == 7, 10.0, "7 items queued")
        refused = client.post(f"{url}/v2/models/slow/infer", content=text_body(["b"] * 5))
        assert refused.status_code == 503 and "queue full" in message_of(refused)
        assert refused.headers["retry-after"] == "1"
        assert first.result().status_code == 200
        assert first.result().json()["outputs"][0]["data"] == ["a"] * 8
        last = client.post(f"{url}/v2/models/slow/infer", content=text_body(["c"]))
        assert last.status_code == 200
        assert batch_items(url, "slow") == 8 + 1

        late = client.post(f"{url}/v2/models/late/infer", content=text_body(["d"] * 10))
        assert late.status_code == 504
        last = client.post(f"{url}/v2/models/late/infer", content=text_body(["e"]))
        assert last.status_code == 200
        # 0.35 s of 0.1 s batches: at most 4 had started; the 6 left never ran.
        assert 1 + 1 <= batch_items(url, "late") <= 4 + 1


def test_a_failed_batch_drops_the_rest_of_its_request(serve: ServerFactory) -> None:
    """A 10-item request whose first batch (2 items) fails is answered 500 at once, and its
    8 other items are never sent to the replica (before, all 5 batches ran and failed)."""
    url = serve(
        python_spec(
            "fail", "Fail", batching=BatchingSettings(max_batch_size=2, max_batch_delay_s=0.0)
        )
    ).url
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/v2/models/fail/infer", content=text_body(["x"] * 10))
        assert response.status_code == 500
        assert "failed on purpose" in message_of(response)
        last = client.post(f"{url}/v2/models/fail/infer", content=text_body(["y"]))
        assert last.status_code == 500
    assert batch_items(url, "fail") == 2 + 1


# ----- rate limits in items ---------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, SqlRegistry]]:
    folder: Path = tmp_path_factory.mktemp("limits")
    registry = SqlRegistry.open(f"sqlite:///{folder / 'registry.db'}")
    registry.create_key("ops", frozenset({"admin"}))
    control = RegistryControl(registry, FsspecArtifactStore(folder / "artifacts"))
    server = start_gateway(
        python_spec("echo", "Echo"),
        python_spec("embed", "HashEmbed"),
        settings=GatewaySettings(drain_timeout_s=5.0, key_refresh_s=0.2),
        control=control,
    )
    yield server.url, registry
    server.stop()
    registry.close()


def new_key(url: str, registry: SqlRegistry, rate_per_s: float) -> dict[str, str]:
    """A fresh key limited to ``rate_per_s`` items/s, once the gateway has picked it up."""
    plaintext, _ = registry.create_key(
        f"k{uuid.uuid4().hex[:8]}", frozenset({"inference"}), rate_limit_per_s=rate_per_s
    )
    headers = {"authorization": f"Bearer {plaintext}"}
    until(
        lambda: httpx.get(f"{url}/v2/models/echo", headers=headers).status_code == 200,
        10.0,
        "the new key",
    )
    return headers


def test_rate_limit_counts_items(limited: tuple[str, SqlRegistry]) -> None:
    """A key limited to 5 items/s pays 10 for a 10-item request: it passes on the full bucket
    (5) and leaves a debt of 5, so the next request is refused (429) for about 1.2 s, where
    counting requests would have let it through; on /v1/embeddings likewise. 20 items leave
    a debt of 15: about 3.2 s to wait, said in Retry-After."""
    url, registry = limited
    infer = f"{url}/v2/models/echo/infer"
    with httpx.Client(timeout=30) as client:
        headers = new_key(url, registry, 5)
        assert client.post(infer, content=text_body(["a"] * 10), headers=headers).status_code == 200
        refused = client.post(infer, content=text_body(["a"]), headers=headers)
        assert refused.status_code == 429, refused.text
        assert "items/s" in message_of(refused) and int(refused.headers["retry-after"]) >= 1

        headers = new_key(url, registry, 5)
        embed = {"model": "embed", "input": ["a"] * 10}
        assert client.post(f"{url}/v1/embeddings", json=embed, headers=headers).status_code == 200
        refused = client.post(
            f"{url}/v1/embeddings", json={"model": "embed", "input": "a"}, headers=headers
        )
        assert refused.status_code == 429, refused.text

        headers = new_key(url, registry, 5)
        big = client.post(infer, content=text_body(["a"] * 20), headers=headers)
        assert big.status_code == 200
        refused = client.post(infer, content=text_body(["a"]), headers=headers)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 3


@pytest.mark.parametrize(("rate", "cost"), [(5.0, 20), (5.0, 6), (2.0, 3), (0.5, 4)])
def test_token_bucket_lets_a_take_over_the_burst_through_into_debt(rate: float, cost: int) -> None:
    """A take costing more than the bucket can ever hold passes on a full bucket (it would
    otherwise never pass) and leaves a debt: the next take of 1 waits until the bucket is
    back at 1, and one that waits that long passes."""
    bucket = TokenBucket.full(rate, 0.0)
    burst = max(1.0, rate)
    assert bucket.try_take(0.0, cost) == 0.0
    wait_s = bucket.try_take(0.0, 1)
    assert wait_s == pytest.approx((cost - burst + 1) / rate)
    assert bucket.try_take(wait_s * 0.99, 1) > 0
    assert bucket.try_take(wait_s * 1.001, 1) == 0.0


def test_redis_limiter_takes_the_cost(tmp_path: Path) -> None:
    """The shared (Redis) bucket spends a request's items too: 5 items empty a 5/s bucket;
    20 pass on a full one and leave a debt of 15, so one more waits (1 + 15) / 5 s."""
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no local Redis at 127.0.0.1:6379")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"

    async def run() -> list[float]:
        shared = SharedState(
            RedisSettings("redis://127.0.0.1:6379/0", key_prefix=prefix), CollectorRegistry()
        )
        try:
            return [
                await shared.limits.try_take("small", 5.0, 5),
                await shared.limits.try_take("small", 5.0, 1),
                await shared.limits.try_take("big", 5.0, 20),
                await shared.limits.try_take("big", 5.0, 1),
            ]
        finally:
            await shared.aclose()

    try:
        waits = asyncio.run(run())
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert waits[0] == 0.0 and 0 < waits[1] <= 0.2 + 0.01
    assert waits[2] == 0.0 and waits[3] == pytest.approx(16 / 5, abs=0.05)
