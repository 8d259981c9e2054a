"""The crash test of issue 5: ``kill -9`` of a capturing server under steady load.

After a restart, every request that had been answered with 200 has its record (checked by
request id), and none is duplicated after compaction.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from aiscale.data.capture import CaptureLayout
from aiscale.data.compaction import compact
from aiscale.data.query import run_query
from tests.test_cli_serve import TEXT, start_serve

pytestmark = pytest.mark.slow


def _load(url: str, acknowledged: list[str], stop: threading.Event, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, timeout=5.0) as client:
        while not stop.is_set():
            request_id = uuid.uuid4().hex
            try:
                response = client.post(
                    "/v2/models/echo/infer", json=TEXT, headers={"x-request-id": request_id}
                )
            except httpx.HTTPError:
                continue  # the server is gone: this request was never acknowledged
            if response.status_code == 200:
                assert response.headers["x-client-request-id"] == request_id
                with lock:  # the record is under the server's id
                    acknowledged.append(response.headers["x-request-id"])


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    process, url = start_serve("tests.models:Echo", "--name", "echo", data_dir=tmp_path)
    acknowledged: list[str] = []
    stop, lock = threading.Event(), threading.Lock()
    threads = [
        threading.Thread(target=_load, args=(url, acknowledged, stop, lock), daemon=True)
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # mid-load: appends are in flight right now
    process.communicate(timeout=30)
    stop.set()
    for thread in threads:
        thread.join(10)
    answered_before = list(acknowledged)
    assert len(answered_before) >= 100

    # A restart takes over the log (sealing the segment the killed server left open).
    process, url = start_serve("tests.models:Echo", "--name", "echo", data_dir=tmp_path)
    after = httpx.post(f"{url}/v2/models/echo/infer", json=TEXT)
    assert after.status_code == 200
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)

    layout = CaptureLayout.from_data_dir(tmp_path)
    compact(layout.log_dir, layout.parquet_url)
    compact(layout.log_dir, layout.parquet_url)  # a second run must change nothing
    rows = run_query(tmp_path, "SELECT request_id FROM requests").column(0).to_pylist()
    missing = set(answered_before) - set(rows)
    assert not missing, f"{len(missing)} acknowledged requests have no record"
    assert len(rows) == len(set(rows)), "duplicated records after compaction"
    assert after.headers["x-request-id"] in rows
    print(f"kill -9 crash test: {len(answered_before)} acknowledged, all captured, 0 duplicates")
