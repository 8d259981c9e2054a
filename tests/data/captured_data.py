"""Writes captured data the way a server does: through a real ``CaptureSink`` (log files,
group commit), optionally compacted to Parquet. Shared by the export, retrain and CLI tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from aiscale.data.capture import CaptureLayout, CaptureSink
from aiscale.data.capture_record import CaptureConfig, CaptureRecord, FeedbackRecord
from aiscale.data.compaction import compact


def request(
    request_id: str,
    ts_s: float,
    inputs: Any,
    outputs: Any,
    *,
    deployment: str = "m",
    version: str = "1",
    status: int = 200,
    latency_ms: float = 5.0,
) -> CaptureRecord:
    return CaptureRecord(request_id, ts_s, deployment, version, inputs, outputs, latency_ms, status)


def feedback(request_id: str, ts_s: float, label: str | None = None, **kw: Any) -> FeedbackRecord:
    return FeedbackRecord(f"fb-{request_id}-{ts_s}", request_id, ts_s, label=label, **kw)


def write_capture(
    data_dir: Path,
    requests: Sequence[CaptureRecord],
    feedbacks: Sequence[FeedbackRecord] = (),
    *,
    is_compacted: bool = False,
) -> None:
    """Append the records through a real sink (durably), then optionally compact them."""

    async def run() -> None:
        sink = CaptureSink(
            CaptureLayout.from_data_dir(data_dir), CaptureConfig(), CollectorRegistry()
        )
        await sink.start()
        try:
            await asyncio.gather(*(sink.append(r) for r in requests))
            await asyncio.gather(*(sink.append_feedback(f) for f in feedbacks))
        finally:
            await sink.stop()

    asyncio.run(run())
    if is_compacted:
        layout = CaptureLayout.from_data_dir(data_dir)
        compact(layout.log_dir, layout.parquet_url)
