"""Request ids are the server's, and feedback comes only from the key that made the request
(or an admin): a client can neither merge, hide nor relabel other requests' records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aiscale.data.capture import CaptureLayout, read_records
from aiscale.data.capture_record import CaptureRecord, FeedbackRecord
from aiscale.data.examples import load_examples
from aiscale.data.periods import Period
from aiscale.registry import FsspecArtifactStore, SqlRegistry
from aiscale.registry.front import RegistryControl
from aiscale.serving import GatewaySettings
from aiscale.serving.request_ids import RequestIds
from aiscale.serving.server import ThreadedServer
from tests.serving.conftest import ServerFactory, python_spec, start_gateway
from tests.serving.test_capture_served import local_capture, text_body


@dataclass
class Keys:
    """Plaintext keys and their ids: two inference clients and an admin."""

    app: str
    app_id: str
    other: str
    other_id: str
    admin: str
    admin_id: str


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[ThreadedServer, Keys, Path]]:
    registry = SqlRegistry.open(f"sqlite:///{tmp_path / 'registry.db'}")
    app, app_record = registry.create_key("app", frozenset({"inference"}))
    other, other_record = registry.create_key("other", frozenset({"inference"}))
    admin, admin_record = registry.create_key("ops", frozenset({"admin"}))
    keys = Keys(app, app_record.key_id, other, other_record.key_id, admin, admin_record.key_id)
    data_dir = tmp_path / "data"
    server = start_gateway(
        python_spec("echo", "Echo"),
        settings=GatewaySettings(drain_timeout_s=5.0),
        control=RegistryControl(registry, FsspecArtifactStore(tmp_path / "artifacts")),
        capture=local_capture(data_dir),
    )
    yield server, keys, data_dir
    server.stop()
    registry.close()


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **extra}


def test_a_client_id_never_merges_records(keyed: tuple[ThreadedServer, Keys, Path]) -> None:
    """Three answered requests sending one x-request-id are three records, each with the
    server's own id; the client's id is kept beside it and echoed back."""
    server, keys, data_dir = keyed
    ids = []
    with httpx.Client(base_url=server.url) as client:
        for i in range(3):
            response = client.post(
                "/v2/models/echo/infer",
                json=text_body(f"same id {i}"),
                headers=bearer(keys.app, **{"x-request-id": "dup"}),
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-client-request-id"] == "dup"
            ids.append(response.headers["x-request-id"])
    server.stop()
    assert len(set(ids)) == 3 and "dup" not in ids
    records = list(read_records(CaptureLayout.from_data_dir(data_dir).requests_log, CaptureRecord))
    assert sorted(r.request_id for r in records) == sorted(ids)
    assert {(r.client_request_id, r.key_id) for r in records} == {("dup", keys.app_id)}


def test_sampling_follows_the_server_id(serve: ServerFactory, tmp_path: Path) -> None:
    """At a 50% sample, requests that all send one client id are sampled one by one (the old
    rule, by the client's id, captured all of them or none)."""
    server = serve(python_spec("echo", "Echo"), capture=local_capture(tmp_path, sample_rate=0.5))
    with httpx.Client(base_url=server.url) as client:
        for i in range(40):
            response = client.post(
                "/v2/models/echo/infer", json=text_body(str(i)), headers={"x-request-id": "same"}
            )
            assert response.status_code == 200
    server.stop()
    records = list(read_records(CaptureLayout.from_data_dir(tmp_path).requests_log, CaptureRecord))
    assert 0 < len(records) < 40  # all-or-none has odds 2**-39 with per-request sampling


def test_feedback_only_from_the_owner_or_an_admin(
    keyed: tuple[ThreadedServer, Keys, Path],
) -> None:
    """Another key's feedback is refused with 403 and a JSON error; the owner's and an
    admin's are recorded with the key that gave them."""
    server, keys, data_dir = keyed
    with httpx.Client(base_url=server.url) as client:
        answered = client.post(
            "/v2/models/echo/infer", json=text_body("label me"), headers=bearer(keys.app)
        )
        request_id = answered.headers["x-request-id"]
        stolen = client.post(
            "/v1/feedback",
            json={"request_id": request_id, "label": "bad"},
            headers=bearer(keys.other),
        )
        assert stolen.status_code == 403, stolen.text
        assert stolen.json()["error"]["param"] == "request_id"
        assert "key that made the request" in stolen.json()["error"]["message"]
        made_up = client.post(
            "/v1/feedback", json={"request_id": "dup", "label": "bad"}, headers=bearer(keys.app)
        )
        assert made_up.status_code == 403
        own = client.post(
            "/v1/feedback", json={"request_id": request_id, "label": "good"},
            headers=bearer(keys.app),
        )  # fmt: skip
        assert own.status_code == 200, own.text
        by_admin = client.post(
            "/v1/feedback", json={"request_id": request_id, "label": "fine"},
            headers=bearer(keys.admin),
        )  # fmt: skip
        assert by_admin.status_code == 200, by_admin.text
    server.stop()
    layout = CaptureLayout.from_data_dir(data_dir)
    feedback = list(read_records(layout.feedback_log, FeedbackRecord))
    assert sorted((f.label, f.key_id, f.is_admin) for f in feedback) == [
        ("fine", keys.admin_id, True),
        ("good", keys.app_id, False),
    ]


def test_retraining_learns_only_labels_from_chosen_sources(
    keyed: tuple[ThreadedServer, Keys, Path],
) -> None:
    """With ``label_sources`` the dataset's labels come only from those keys (``admin``: any
    admin key); without, the latest label wins whoever gave it."""
    server, keys, data_dir = keyed
    with httpx.Client(base_url=server.url) as client:
        request_id = client.post(
            "/v2/models/echo/infer", json=text_body("x"), headers=bearer(keys.app)
        ).headers["x-request-id"]
        for key, label in ((keys.admin, "from-admin"), (keys.app, "from-app")):
            given = client.post(
                "/v1/feedback", json={"request_id": request_id, "label": label},
                headers=bearer(key),
            )  # fmt: skip
            assert given.status_code == 200, given.text
    server.stop()
    everything = Period(None, None)

    def label(*sources: str) -> str | None:
        rows = load_examples(data_dir, "echo", everything, label_sources=sources).rows
        assert [r["request_id"] for r in rows] == [request_id]
        value: str | None = rows[0]["label"]
        return value

    assert label() == "from-app"
    assert label("admin") == "from-admin"
    assert label(keys.app_id) == "from-app"
    assert label(keys.other_id) is None
    assert label(keys.other_id, "admin") == "from-admin"


def test_owned_ids_verify_only_for_their_key_and_secret() -> None:
    """An id checks out for the key it was issued to, under the same secret only."""
    ids = RequestIds(b"k" * 32)
    issued = ids.issue("key-a")
    assert ids.is_owned_by(issued, "key-a")
    assert not ids.is_owned_by(issued, "key-b")
    assert not RequestIds(b"j" * 32).is_owned_by(issued, "key-a")
    assert not ids.is_owned_by(issued[:-1] + ("0" if issued[-1] != "0" else "1"), "key-a")
    assert not ids.is_owned_by("not-an-id", "key-a")


def test_a_forged_id_is_refused_not_an_error() -> None:
    """Ids of the right length that are not ours, non-ASCII ones included, are simply not
    owned (a 403 at the edge), never an exception (a 500)."""
    ids = RequestIds(b"k" * 32)
    issued = ids.issue("key-a")
    assert ids.is_owned_by(issued, "key-a")
    assert not ids.is_owned_by(issued, "key-b")
    assert not ids.is_owned_by(RequestIds(b"j" * 32).issue("key-a"), "key-a")
    assert not ids.is_owned_by(issued[:24] + "é" * 16, "key-a")
    assert not ids.is_owned_by("é" * len(issued), "key-a")
