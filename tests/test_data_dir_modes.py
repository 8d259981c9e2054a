"""The data dir of a real ``aiscale serve`` holds requests, keys and models: only its owner
may read it (0700 folders, 0600 files), whatever the umask it started with."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx

from tests.test_cli_serve import TEXT, start_serve


def test_data_dir_is_private_after_serving_and_capturing(tmp_path: Path) -> None:
    """After requests and feedback were captured, every folder under the data dir is 0700
    and every file 0600 (registry, capture segments, secrets, artifacts)."""
    data_dir = tmp_path / "data"
    old_umask = os.umask(0o022)  # the usual default: files 0644, folders 0755
    try:
        process, url = start_serve("tests.models:Echo", data_dir=data_dir)
    finally:
        os.umask(old_umask)
    try:
        with httpx.Client(base_url=url) as client:
            answered = client.post("/v2/models/echo/infer", json=TEXT)
            assert answered.status_code == 200, answered.text
            given = client.post(
                "/v1/feedback",
                json={"request_id": answered.headers["x-request-id"], "label": "ok"},
            )
            assert given.status_code == 200, given.text
    finally:
        process.terminate()
        process.communicate(timeout=60)
    found = {p.relative_to(data_dir).as_posix(): p.stat().st_mode for p in data_dir.rglob("*")}
    assert "registry.db" in found
    assert any(name.startswith("capture/log/requests/seg-") for name in found)
    assert any(name.startswith("capture/log/feedback/seg-") for name in found)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    wrong = {
        name: oct(stat.S_IMODE(mode))
        for name, mode in found.items()
        if stat.S_IMODE(mode) & 0o077 or (stat.S_ISDIR(mode) and stat.S_IMODE(mode) != 0o700)
    }
    assert wrong == {}
