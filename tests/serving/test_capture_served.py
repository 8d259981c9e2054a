"""Capture wired into a live gateway: every answered request has its record, feedback joins it,
and the NATS JetStream path lands the same records for several gateways."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from aiscale.data.capture import CaptureLayout, CaptureSink, read_records
from aiscale.data.capture_nats import NatsCaptureConsumer, NatsCaptureSink
from aiscale.data.capture_record import CaptureConfig, CaptureRecord
from aiscale.data.compaction import compact
from aiscale.data.query import run_query
from tests.serving.conftest import ServerFactory, python_spec

NATS_URL = "nats://127.0.0.1:4222"


def local_capture(data_dir: Path, **config: Any) -> Any:
    def make(registry: CollectorRegistry) -> CaptureSink:
        return CaptureSink(
            CaptureLayout.from_data_dir(data_dir), CaptureConfig(salt=b"s", **config), registry
        )

    return make


def text_body(text: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def test_every_answer_has_its_record_with_the_request_id(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """OIP v2 and OpenAI answers carry x-request-id; each id has one record with its values."""
    server = serve(
        python_spec("echo", "Echo"),
        python_spec("embed", "HashEmbed"),
        capture=local_capture(tmp_path),
    )
    ids: dict[str, str] = {}
    with httpx.Client(base_url=server.url) as client:
        for i in range(5):
            response = client.post(
                "/v2/models/echo/infer", json=text_body(f"hello {i}"), headers={"x-user-id": "ann"}
            )
            assert response.status_code == 200, response.text
            ids[response.headers["x-request-id"]] = f"hello {i}"
        response = client.post("/v1/embeddings", json={"model": "embed", "input": ["a b", "c"]})
        assert response.status_code == 200, response.text
        embedding_id = response.headers["x-request-id"]
        mine = client.post(
            "/v2/models/echo/infer", json=text_body("own id"), headers={"x-request-id": "my-id-1"}
        )
        # The client's id travels along; the request's id is the server's own.
        assert mine.headers["x-client-request-id"] == "my-id-1"
        own_id = mine.headers["x-request-id"]
        assert own_id != "my-id-1"
        missing = client.post("/v2/models/nope/infer", json=text_body("x"))
        assert missing.status_code == 404 and "x-request-id" in missing.headers
    server.stop()
    records = {
        r.request_id: r
        for r in read_records(CaptureLayout.from_data_dir(tmp_path).requests_log, CaptureRecord)
    }
    assert set(records) == {*ids, embedding_id, own_id}
    assert records[own_id].client_request_id == "my-id-1"
    for request_id, text in ids.items():
        record = records[request_id]
        assert (record.deployment, record.version, record.status) == ("echo", "1", 200)
        assert text in str(record.inputs)
        assert text in str(record.outputs)
        assert record.latency_ms > 0 and record.user_hash is not None
        assert "ann" not in record.user_hash
    embedded = records[embedding_id]
    assert embedded.deployment == "embed" and embedded.inputs == ["a b", "c"]
    assert len(embedded.outputs) == 2 and len(embedded.outputs[0]) == 8


def test_failed_requests_are_captured_with_their_status(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(python_spec("fail", "Fail"), capture=local_capture(tmp_path))
    response = httpx.post(f"{server.url}/v2/models/fail/infer", json=text_body("x"))
    assert response.status_code == 500
    server.stop()
    records = list(read_records(CaptureLayout.from_data_dir(tmp_path).requests_log, CaptureRecord))
    assert [(r.request_id, r.status, r.outputs) for r in records] == [
        (response.headers["x-request-id"], 500, None)
    ]


def test_feedback_joins_its_request_in_the_query_views(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(python_spec("echo", "Echo"), capture=local_capture(tmp_path))
    with httpx.Client(base_url=server.url) as client:
        answered = client.post("/v2/models/echo/infer", json=text_body("rate me"))
        request_id = answered.headers["x-request-id"]
        given = client.post(
            "/v1/feedback", json={"request_id": request_id, "label": "good", "score": 0.9}
        )
        assert given.status_code == 200, given.text
        assert given.json()["request_id"] == request_id and given.json()["recorded"] is True
        for body, field in [
            ({"label": "good"}, "request_id"),
            ({"request_id": request_id}, "body"),
            ({"request_id": request_id, "score": "high"}, "score"),
            ({"request_id": request_id, "label": 3}, "label"),
            ({"request_id": request_id, "label": "x", "colour": "red"}, "colour"),
            ([1, 2], "body"),
        ]:
            bad = client.post("/v1/feedback", json=body)
            assert bad.status_code == 400, (body, bad.text)
            assert bad.json()["error"]["param"] == field, bad.text
        assert client.post("/v1/feedback", content=b"{not json").status_code == 400
        assert client.get("/v1/feedback").status_code == 405
    server.stop()
    table = run_query(
        tmp_path,
        "SELECT r.request_id, r.status, f.label, f.score FROM requests r "
        "JOIN feedback f USING (request_id)",
    )
    assert table.to_pylist() == [
        {"request_id": request_id, "status": 200, "label": "good", "score": 0.9}
    ]


def test_feedback_without_capture_is_refused_clearly(serve: ServerFactory) -> None:
    server = serve(python_spec("echo", "Echo"))
    response = httpx.post(f"{server.url}/v1/feedback", json={"request_id": "r", "label": "x"})
    assert response.status_code == 409 and response.json()["error"]["param"] == "capture"


def test_sampling_and_redaction_apply_to_served_records(
    serve: ServerFactory, tmp_path: Path
) -> None:
    server = serve(
        python_spec("echo", "Echo"),
        capture=local_capture(
            tmp_path, sample_rate=0.5, redact_patterns=(r"[\w.]+@[\w.]+",)
        ),
    )
    sent = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(40):
            response = client.post("/v2/models/echo/infer", json=text_body(f"mail x{i}@ex.com"))
            assert response.status_code == 200
            sent.append(response.headers["x-request-id"])
    server.stop()
    records = list(read_records(CaptureLayout.from_data_dir(tmp_path).requests_log, CaptureRecord))
    assert 5 <= len(records) <= 35 and {r.request_id for r in records} <= set(sent)
    assert all("@ex.com" not in str(r.inputs) + str(r.outputs) for r in records)
    assert all("[REDACTED]" in str(r.inputs) for r in records)


def test_nats_path_lands_records_of_two_gateways_in_one_dataset(
    serve: ServerFactory, tmp_path: Path
) -> None:
    """Two gateways publish to one JetStream stream; the consumer lands every record once."""
    stream = f"T{uuid.uuid4().hex[:12]}"

    def nats_capture(registry: CollectorRegistry) -> NatsCaptureSink:
        return NatsCaptureSink(NATS_URL, stream, CaptureConfig(salt=b"s"), registry)

    servers = [serve(python_spec("echo", "Echo"), capture=nats_capture) for _ in range(2)]
    acknowledged = []
    for i in range(30):
        url = servers[i % 2].url
        response = httpx.post(f"{url}/v2/models/echo/infer", json=text_body(f"t{i}"))
        assert response.status_code == 200, response.text
        acknowledged.append(response.headers["x-request-id"])
    feedback = httpx.post(
        f"{servers[1].url}/v1/feedback", json={"request_id": acknowledged[0], "score": 1}
    )
    assert feedback.status_code == 200
    for server in servers:
        server.stop()
    layout = CaptureLayout.from_data_dir(tmp_path)
    consumer = NatsCaptureConsumer(NATS_URL, stream, layout)
    report = asyncio.run(consumer.run(idle_s=1.0, max_s=30))
    assert (report.requests, report.feedback) == (30, 1)
    # A second consumer run finds nothing new: landed messages were acknowledged.
    assert asyncio.run(consumer.run(idle_s=0.5, max_s=10)).requests == 0
    compact(layout.log_dir, layout.parquet_url)
    rows = run_query(tmp_path, "SELECT request_id FROM requests").column(0).to_pylist()
    assert sorted(rows) == sorted(acknowledged)
    joined = run_query(tmp_path, "SELECT count(*) FROM feedback JOIN requests USING (request_id)")
    assert joined.column(0).to_pylist() == [1]
    _delete_stream(stream)


def _delete_stream(stream: str) -> None:
    import nats

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())

