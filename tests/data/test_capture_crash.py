"""Capture durability against a killed process and a failing disk, with real child processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from aiscale.data.capture import (
    CaptureConfig,
    CaptureLog,
    CaptureMetrics,
    CaptureRecord,
    read_records,
)
from aiscale.data.capture_segment import list_segments

# Appends forever from 16 concurrent tasks; prints each request id only after its append
# returned (that is, after the gateway would have answered 200).
APPENDER = """
import asyncio, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from aiscale.data.capture import CaptureConfig, CaptureLog, CaptureMetrics, CaptureRecord

async def main() -> None:
    config = CaptureConfig(segment_bytes=20_000)
    log = CaptureLog(Path(sys.argv[1]), config, CaptureMetrics(CollectorRegistry()), name="r")
    await log.start()

    async def worker(w: int) -> None:
        i = 0
        while True:
            rid = f"w{w}-{i}"
            record = CaptureRecord(rid, time.time(), "d", "1", {"i": i}, [0.5] * 16, 1.0, 200)
            await log.append(record)
            sys.stdout.write(rid + "\\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(worker(w) for w in range(16)))

asyncio.run(main())
"""

# Appends one record at a time to a log whose files may not grow past 1000 bytes.
FULL_DISK = """
import asyncio, resource, signal, sys, time
from pathlib import Path
from prometheus_client import CollectorRegistry
from aiscale.data.capture import CaptureConfig, CaptureLog, CaptureMetrics, CaptureRecord
from aiscale.errors import Overloaded

async def main() -> None:
    log = CaptureLog(Path(sys.argv[1]), CaptureConfig(), CaptureMetrics(CollectorRegistry()),
                     name="r")
    await log.start()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
    for i in range(12):
        rid = f"r{i}"
        try:
            await log.append(CaptureRecord(rid, 1.0, "d", "1", {"i": i}, [0.5] * 8, 1.0, 200))
            print("ok", rid, flush=True)
        except Overloaded:
            print("fail", rid, flush=True)
    await log.stop()

asyncio.run(main())
"""


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    """A child appends from 16 tasks and prints each id after its append returned; after
    kill -9 mid-stream every printed id is in the log, and a new writer starts cleanly."""
    child = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 3000:
            line = child.stdout.readline()
            assert line, child.stderr.read().decode() if child.stderr else "child exited"
            acked.append(line.decode().strip())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    # Lines the child printed before it died are acknowledged too; a cut last line is not.
    acked.extend(line.decode() for line in rest.split(b"\n")[:-1])
    assert child.returncode == -signal.SIGKILL

    stored = {r.request_id for r in read_records(tmp_path, CaptureRecord)}
    missing = [rid for rid in acked if rid not in stored]
    assert missing == []
    assert any(p.suffix == ".open" for p in list_segments(tmp_path))  # it died mid-segment

    log = CaptureLog(tmp_path, CaptureConfig(), CaptureMetrics(CollectorRegistry()), name="r")

    async def restart() -> None:
        await log.start()
        await log.append(CaptureRecord("after", 1.0, "d", "1", None, None, 1.0, 200))
        await log.stop()

    asyncio.run(restart())
    after = [r.request_id for r in read_records(tmp_path, CaptureRecord)]
    assert set(acked) <= set(after) and after[-1] == "after"
    assert all(p.suffix == ".log" for p in list_segments(tmp_path))


def test_a_failed_write_fails_its_append_and_the_log_carries_on(tmp_path: Path) -> None:
    """When the disk refuses a write (file size limit), that append raises Overloaded rather
    than being acknowledged, its torn frame is skipped on read, and the following appends
    succeed in a new segment: every acknowledged record and only those are read back."""
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcomes = [line.split() for line in result.stdout.splitlines()]
    acked = [rid for status, rid in outcomes if status == "ok"]
    failed = [rid for status, rid in outcomes if status == "fail"]
    assert failed and len(acked) + len(failed) == 12
    first_failure = outcomes.index(["fail", failed[0]])
    assert ["ok"] in [o[:1] for o in outcomes[first_failure:]]  # the log recovered
    assert [r.request_id for r in read_records(tmp_path, CaptureRecord)] == acked
