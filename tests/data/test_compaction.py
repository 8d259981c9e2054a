"""Compaction of capture-log segments into hive-partitioned Parquet."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from aiscale.data.capture import (
    CaptureConfig,
    CaptureLayout,
    CaptureRecord,
    CaptureSink,
    FeedbackRecord,
)
from aiscale.data.capture_record import encode_record
from aiscale.data.capture_segment import frame, list_segments
from aiscale.data.compaction import compact

# 2023-11-14 23:40:00 UTC: records every 10 minutes cross midnight into 2023-11-15.
T0_S = 1_700_005_200.0


def record(i: int, deployment: str = "minilm") -> CaptureRecord:
    return CaptureRecord(
        f"req-{i}", T0_S + 600 * i, deployment, "2", {"text": f"s{i}"}, [i, i], 3.0, 200
    )


def capture(
    data_dir: Path,
    records: Sequence[CaptureRecord],
    feedback: Sequence[FeedbackRecord] = (),
    segment_bytes: int = 64 * 1024 * 1024,
) -> CaptureLayout:
    layout = CaptureLayout.from_data_dir(data_dir)
    config = CaptureConfig(segment_bytes=segment_bytes)
    sink = CaptureSink(layout, config, CollectorRegistry())

    async def scenario() -> None:
        await sink.start()
        for r in records:
            await sink.append(r)
        for f in feedback:
            await sink.append_feedback(f)
        await sink.stop()

    asyncio.run(scenario())
    return layout


def parquet_files(layout: CaptureLayout) -> list[str]:
    root = Path(layout.parquet_url)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))


def read_ids(layout: CaptureLayout, kind: str = "requests", key: str = "request_id") -> list[str]:
    root = Path(layout.parquet_url) / kind
    return sorted(
        v for p in root.rglob("*.parquet") for v in pq.read_table(p).column(key).to_pylist()
    )


def test_compaction_partitions_by_deployment_date_and_hour(tmp_path: Path) -> None:
    """Rows land under deployment=X/date=YYYY-MM-DD/hour=HH (UTC) with the partition columns
    in the path only, all values intact; the compacted segments are removed."""
    records = [record(i, "minilm" if i % 2 else "tiny") for i in range(6)]
    feedback = [FeedbackRecord("fb-1", "req-1", T0_S + 1, label="good", score=1.0)]
    layout = capture(tmp_path, records, feedback)

    report = compact(layout.log_dir, layout.parquet_url)

    assert (report.num_records_read, report.num_records_written) == (7, 7)
    assert report.num_segments == 2 and report.num_duplicates == 0
    dirs = sorted({f.rsplit("/", 1)[0] for f in parquet_files(layout)})
    assert dirs == [
        "feedback/date=2023-11-14/hour=23",
        "requests/deployment=minilm/date=2023-11-14/hour=23",
        "requests/deployment=minilm/date=2023-11-15/hour=00",
        "requests/deployment=tiny/date=2023-11-14/hour=23",
        "requests/deployment=tiny/date=2023-11-15/hour=00",
    ]
    part = pq.read_table(
        Path(layout.parquet_url) / "requests/deployment=tiny/date=2023-11-15/hour=00"
    )
    assert "deployment" not in part.column_names and "hour" not in part.column_names
    assert part.column("request_id").to_pylist() == ["req-2", "req-4"]
    assert part.column("inputs").to_pylist() == ['{"text":"s2"}', '{"text":"s4"}']
    assert part.column("outputs").to_pylist() == ["[2,2]", "[4,4]"]
    assert part.column("version").to_pylist() == ["2", "2"]
    assert list_segments(layout.requests_log) == [] and list_segments(layout.feedback_log) == []


def test_compaction_is_idempotent_and_deduplicates_by_request_id(tmp_path: Path) -> None:
    """A record appended twice (in the log, and again after it reached Parquet) ends up once;
    running compaction again changes nothing."""
    layout = capture(tmp_path, [record(0), record(1), record(0)])
    first = compact(layout.log_dir, layout.parquet_url)
    assert (first.num_records_read, first.num_records_written, first.num_duplicates) == (3, 2, 1)
    files = parquet_files(layout)

    again = compact(layout.log_dir, layout.parquet_url)
    assert (again.num_segments, again.num_records_written, again.num_files_written) == (0, 0, 0)
    assert parquet_files(layout) == files

    capture(tmp_path, [record(1), record(2)])  # a replay of req-1 after a crash, and a new one
    third = compact(layout.log_dir, layout.parquet_url)
    assert (third.num_records_written, third.num_duplicates) == (1, 1)
    assert read_ids(layout) == ["req-0", "req-1", "req-2"]


def test_rerun_after_an_interrupted_compaction_adds_no_duplicates(tmp_path: Path) -> None:
    """If a run wrote Parquet but died before removing the segments, the next run finds every
    row already present, writes nothing, and removes the segments."""
    layout = capture(tmp_path, [record(i) for i in range(4)])
    kept = {p.name: p.read_bytes() for p in list_segments(layout.requests_log)}
    compact(layout.log_dir, layout.parquet_url)
    for name, data in kept.items():  # as if the removal had never happened
        (layout.requests_log / name).write_bytes(data)

    report = compact(layout.log_dir, layout.parquet_url)

    assert (report.num_segments, report.num_records_written, report.num_duplicates) == (1, 0, 4)
    assert read_ids(layout) == [f"req-{i}" for i in range(4)]
    assert list_segments(layout.requests_log) == []


def test_segments_of_a_live_writer_stay_and_orphans_are_compacted(tmp_path: Path) -> None:
    """The open segment of a running writer is neither read nor removed; a segment left open
    by a dead writer (with a torn tail) is sealed and compacted, torn bytes counted."""
    layout = CaptureLayout.from_data_dir(tmp_path)
    layout.requests_log.mkdir(parents=True)
    orphan = layout.requests_log / "seg-00000000000000000001.open"
    orphan.write_bytes(frame(encode_record(record(0))) + frame(encode_record(record(1)))[:-3])
    report = compact(layout.log_dir, layout.parquet_url)
    assert (report.num_orphans_sealed, report.num_records_written) == (1, 1)
    assert report.torn_bytes > 0
    assert not orphan.exists()

    sink = CaptureSink(layout, CaptureConfig(), CollectorRegistry())

    async def scenario() -> None:
        await sink.start()
        await sink.append(record(5))
        live = compact(layout.log_dir, layout.parquet_url)
        assert (live.num_segments, live.num_orphans_sealed, live.num_records_read) == (0, 0, 0)
        assert [p.suffix for p in list_segments(layout.requests_log)] == [".open"]
        await sink.stop()

    asyncio.run(scenario())
    assert compact(layout.log_dir, layout.parquet_url).num_records_written == 1
    assert read_ids(layout) == ["req-0", "req-5"]


def test_compaction_bounds_each_round_and_writes_through_fsspec(tmp_path: Path) -> None:
    """With small chunks and many segments every record still arrives exactly once, and an
    fsspec URL (here the in-memory file system) works as the Parquet destination."""
    layout = capture(tmp_path, [record(i) for i in range(12)], segment_bytes=300)
    assert len(list_segments(layout.requests_log)) >= 4

    report = compact(layout.log_dir, "memory://capture-test/parquet", chunk_bytes=600)

    fs = fsspec.filesystem("memory")
    try:
        files = fs.glob("/capture-test/parquet/requests/*/*/*/*.parquet")
        ids: list[str] = []
        for path in files:
            with fs.open(path, "rb") as f:
                ids.extend(pq.read_table(f).column("request_id").to_pylist())
        assert sorted(ids) == sorted(f"req-{i}" for i in range(12))
        assert report.num_files_written == len(files) > 2
    finally:
        fs.rm("/capture-test", recursive=True)
