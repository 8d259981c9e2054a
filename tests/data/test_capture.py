"""The capture log: group commit, bounded queue, torn tails, redaction, sampling, locking."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aiscale.data.capture import (
    CaptureConfig,
    CaptureLayout,
    CaptureLog,
    CaptureMetrics,
    CaptureRecord,
    CaptureSink,
    FeedbackRecord,
    hash_user_key,
    load_or_create_salt,
    read_records,
)
from aiscale.data.capture_record import REDACTED, is_sampled
from aiscale.data.capture_segment import frame, list_segments, scan_segment
from aiscale.errors import ConfigError, Conflict, Overloaded

TS_S = 1_700_000_000.0


def make_record(i: int, **changes: object) -> CaptureRecord:
    values: dict[str, object] = {
        "request_id": f"req-{i}",
        "ts_s": TS_S + i,
        "deployment": "minilm",
        "version": "1",
        "inputs": {"text": f"sentence {i}"},
        "outputs": np.full(4, i, dtype=np.float32),
        "latency_ms": 2.5,
        "status": 200,
    }
    values.update(changes)
    return CaptureRecord(**values)  # type: ignore[arg-type]


def new_log(
    directory: Path, config: CaptureConfig | None = None
) -> tuple[CaptureLog, CollectorRegistry]:
    registry = CollectorRegistry()
    log = CaptureLog(directory, config or CaptureConfig(), CaptureMetrics(registry), name="req")
    return log, registry


def metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name, {"log": "req"})
    assert value is not None
    return value


def test_concurrent_appends_share_few_fsyncs_and_are_all_durable(tmp_path: Path) -> None:
    """500 concurrent appends all return once durable, in far fewer fsyncs than records, and
    every one is read back from the log with its values."""
    log, registry = new_log(tmp_path)

    async def scenario() -> list[bool]:
        await log.start()
        results = await asyncio.gather(*(log.append(make_record(i)) for i in range(500)))
        await log.stop()
        return results

    assert asyncio.run(scenario()) == [True] * 500
    assert metric(registry, "aiscale_capture_records_total") == 500
    assert 1 <= metric(registry, "aiscale_capture_fsyncs_total") <= 25
    assert metric(registry, "aiscale_capture_queue_depth") == 0
    # Every append's wait and every commit's time are observed: what a response waits for.
    assert metric(registry, "aiscale_capture_append_seconds_count") == 500
    commits = metric(registry, "aiscale_capture_commit_seconds_count")
    assert commits == metric(registry, "aiscale_capture_fsyncs_total")
    assert metric(registry, "aiscale_capture_append_seconds_sum") > 0
    records = list(read_records(tmp_path, CaptureRecord))
    assert sorted(r.request_id for r in records) == sorted(f"req-{i}" for i in range(500))
    by_id = {r.request_id: r for r in records}
    assert by_id["req-7"].outputs == [7.0, 7.0, 7.0, 7.0]
    assert by_id["req-7"].inputs == {"text": "sentence 7"}
    assert by_id["req-7"].ts_s == TS_S + 7


def test_full_queue_raises_overloaded_and_counts_rejections(tmp_path: Path) -> None:
    """With max_queue=8, of 50 appends issued at once exactly 8 are accepted and written; the
    other 42 raise Overloaded (not silently dropped) and are counted as rejected."""
    log, registry = new_log(tmp_path, CaptureConfig(max_queue=8))

    async def scenario() -> list[object]:
        await log.start()
        results = await asyncio.gather(
            *(log.append(make_record(i)) for i in range(50)), return_exceptions=True
        )
        await log.stop()
        return results

    results = asyncio.run(scenario())
    assert results[:8] == [True] * 8
    assert all(isinstance(r, Overloaded) and r.retry_after_s > 0 for r in results[8:])
    assert metric(registry, "aiscale_capture_rejected_total") == 42
    assert [r.request_id for r in read_records(tmp_path, CaptureRecord)] == [
        f"req-{i}" for i in range(8)
    ]


def test_queue_is_also_bounded_in_bytes(tmp_path: Path) -> None:
    """max_queue_bytes refuses a record that would push the unacknowledged bytes over it."""
    log, _ = new_log(tmp_path, CaptureConfig(max_queue_bytes=1000))
    big = make_record(0, outputs=np.zeros(400, dtype=np.float32))  # about 1.6 kB of JSON

    async def scenario() -> None:
        await log.start()
        try:
            with pytest.raises(Overloaded):
                await log.append(big)
            assert await log.append(make_record(1)) is True
        finally:
            await log.stop()

    asyncio.run(scenario())


def test_append_outside_start_stop_is_refused(tmp_path: Path) -> None:
    """An append before start or after stop raises Overloaded instead of being lost."""
    log, _ = new_log(tmp_path)

    async def scenario() -> None:
        with pytest.raises(Overloaded):
            await log.append(make_record(0))
        await log.start()
        await log.append(make_record(1))
        await log.stop()
        with pytest.raises(Overloaded):
            await log.append(make_record(2))

    asyncio.run(scenario())
    assert [r.request_id for r in read_records(tmp_path, CaptureRecord)] == ["req-1"]


def test_segments_roll_over_by_size_and_are_sealed_on_stop(tmp_path: Path) -> None:
    """A small segment_bytes gives several segments; after stop none is left open, and the
    records read back in write order."""
    log, _ = new_log(tmp_path, CaptureConfig(segment_bytes=500))

    async def scenario() -> None:
        await log.start()
        for i in range(20):
            await log.append(make_record(i))
        await log.stop()

    asyncio.run(scenario())
    segments = list_segments(tmp_path)
    assert len(segments) >= 5
    assert all(p.suffix == ".log" for p in segments)
    assert [r.request_id for r in read_records(tmp_path, CaptureRecord)] == [
        f"req-{i}" for i in range(20)
    ]


def test_torn_tail_and_corrupt_frame_are_skipped_without_losing_other_records(
    tmp_path: Path,
) -> None:
    """A segment cut inside its last frame loses only that frame; a frame whose CRC fails loses
    only the rest of its own segment; records of other segments, and records a later writer
    appends, are all read."""

    async def write(ids: range) -> None:
        writer, _ = new_log(tmp_path, CaptureConfig(segment_bytes=400))
        await writer.start()
        for i in ids:
            await writer.append(make_record(i))
        await writer.stop()

    asyncio.run(write(range(10)))
    first, second, *rest = list_segments(tmp_path)
    assert rest
    per_segment = [len(scan_segment(p).payloads) for p in (first, second)]
    assert min(per_segment) >= 2
    with first.open("r+b") as f:  # torn: the last frame is cut short
        f.truncate(first.stat().st_size - 5)
    data = bytearray(second.read_bytes())
    data[10] ^= 0xFF  # corrupt: the first frame's payload no longer matches its CRC
    second.write_bytes(bytes(data))
    asyncio.run(write(range(10, 13)))

    scan = scan_segment(first)
    assert len(scan.payloads) == per_segment[0] - 1 and scan.torn_bytes > 0
    ids = [r.request_id for r in read_records(tmp_path, CaptureRecord)]
    lost = {f"req-{i}" for i in range(per_segment[0] - 1, sum(per_segment))}
    assert ids == [f"req-{i}" for i in range(13) if f"req-{i}" not in lost]


def test_redaction_replaces_named_fields_and_patterns_before_writing(tmp_path: Path) -> None:
    """Named fields at any depth and regex matches in any string of inputs, outputs and
    feedback comments are replaced by the marker; nothing else changes."""
    config = CaptureConfig(
        redact_fields=("email", "ssn"),
        redact_patterns=(r"\b\d{3}-\d{3}-\d{4}\b", r"[\w.]+@[\w.]+"),
    )
    sink = CaptureSink(CaptureLayout.from_data_dir(tmp_path), config, CollectorRegistry())
    record = make_record(
        0,
        inputs={"email": "a@b.c", "profile": {"ssn": "123", "note": "call 555-123-4567 now"}},
        outputs=["write to x.y@z.com", 3],
    )
    feedback = FeedbackRecord("fb-1", "req-0", TS_S, label="bad", comment="I am bo@x.org")

    async def scenario() -> None:
        await sink.start()
        await sink.append(record)
        await sink.append_feedback(feedback)
        await sink.stop()

    asyncio.run(scenario())
    (stored,) = read_records(sink.layout.requests_log, CaptureRecord)
    assert stored.inputs == {
        "email": REDACTED,
        "profile": {"ssn": REDACTED, "note": f"call {REDACTED} now"},
    }
    assert stored.outputs == [f"write to {REDACTED}", 3]
    (stored_fb,) = read_records(sink.layout.feedback_log, FeedbackRecord)
    assert stored_fb.comment == f"I am {REDACTED}"
    assert stored_fb.label == "bad"
    raw = b"".join(p.read_bytes() for p in list_segments(sink.layout.requests_log))
    assert b"555-123-4567" not in raw and b"a@b.c" not in raw


def test_sampling_is_deterministic_by_request_id_and_close_to_the_rate(tmp_path: Path) -> None:
    """At rate 0.3 about 30% of ids are captured, the same ids every time; append returns
    False for the others and writes nothing for them; feedback is never sampled out."""
    ids = [f"id-{i}" for i in range(4000)]
    chosen = [i for i in ids if is_sampled(i, 0.3)]
    assert 0.27 < len(chosen) / len(ids) < 0.33
    assert chosen == [i for i in ids if is_sampled(i, 0.3)]
    assert all(is_sampled(i, 1.0) for i in ids) and not any(is_sampled(i, 0.0) for i in ids)
    assert set(chosen) <= {i for i in ids if is_sampled(i, 0.5)}

    config = CaptureConfig(sample_rate=0.3)
    sink = CaptureSink(CaptureLayout.from_data_dir(tmp_path), config, CollectorRegistry())

    async def scenario() -> list[bool]:
        await sink.start()
        results = [await sink.append(make_record(i)) for i in range(200)]
        assert await sink.append_feedback(FeedbackRecord("fb", "req-0", TS_S, score=0.5))
        await sink.stop()
        return results

    results = asyncio.run(scenario())
    expected = [f"req-{i}" for i in range(200) if sink.should_capture(f"req-{i}")]
    assert [f"req-{i}" for i, r in enumerate(results) if r] == expected
    assert [r.request_id for r in read_records(sink.layout.requests_log, CaptureRecord)] == expected
    assert len(list(read_records(sink.layout.feedback_log, FeedbackRecord))) == 1


def test_user_keys_are_hashed_with_the_installation_salt(tmp_path: Path) -> None:
    """The hash is stable for one salt, differs across salts, and does not contain the key;
    the salt is created once and then reused."""
    salt = load_or_create_salt(tmp_path / "salt")
    assert len(salt) == 32 and load_or_create_salt(tmp_path / "salt") == salt
    assert (tmp_path / "salt").stat().st_mode & 0o777 == 0o600
    digest = hash_user_key("sk-secret-key", salt)
    assert digest == hash_user_key("sk-secret-key", salt)
    assert digest != hash_user_key("sk-secret-key", b"other salt")
    assert "secret" not in digest and len(digest) == 32


def test_invalid_config_names_the_field() -> None:
    """Bad settings raise ConfigError with the dotted field path."""
    with pytest.raises(ConfigError) as bad_rate:
        CaptureConfig(sample_rate=1.5)
    assert bad_rate.value.field == "capture.sample_rate"
    with pytest.raises(ConfigError) as bad_pattern:
        CaptureConfig(redact_patterns=("ok", "(unclosed"))
    assert bad_pattern.value.field == "capture.redact_patterns.1"
    with pytest.raises(ConfigError) as bad_queue:
        CaptureConfig(max_queue=0)
    assert bad_queue.value.field == "capture.max_queue"


def test_one_writer_per_folder_and_orphan_segments_are_sealed(tmp_path: Path) -> None:
    """A second live writer on the same folder gets Conflict; a segment left open by a dead
    writer is sealed when the next writer starts, and its records stay readable."""
    orphan = tmp_path / "seg-00000000000000000001.open"
    orphan.write_bytes(
        frame(
            b'{"request_id":"old","ts_s":1.0,"deployment":"d","version":"1",'
            b'"inputs":null,"outputs":null,"latency_ms":1.0,"status":200}'
        )
    )
    first, _ = new_log(tmp_path)
    second = CaptureLog(
        tmp_path, CaptureConfig(), CaptureMetrics(CollectorRegistry()), name="req", lock_wait_s=0.1
    )

    async def scenario() -> None:
        await first.start()
        try:
            with pytest.raises(Conflict):
                await second.start()
            await first.append(make_record(1))
        finally:
            await first.stop()

    asyncio.run(scenario())
    assert not orphan.exists()
    assert all(p.suffix == ".log" for p in list_segments(tmp_path))
    assert [r.request_id for r in read_records(tmp_path, CaptureRecord)] == ["old", "req-1"]


def test_open_segment_is_prefilled_and_sealed_segments_hold_exactly_their_frames(
    tmp_path: Path,
) -> None:
    """While writing, the open segment is zero-filled ahead of its records (so a group
    commit's fdatasync has no size change to journal); sealing cuts it to its frames, and an
    orphan left by a crash loses its prefilled zeros but keeps every record."""
    from aiscale.data.capture_segment import PREFILL_BYTES, seal_orphans

    log, _ = new_log(tmp_path)

    async def write_some() -> int:
        await log.start()
        await asyncio.gather(*(log.append(make_record(i)) for i in range(20)))
        (open_segment,) = list_segments(tmp_path)
        size = open_segment.stat().st_size
        await log.stop()
        return size

    open_size = asyncio.run(write_some())
    (sealed,) = list_segments(tmp_path)
    frames = b"".join(frame(scan) for scan in scan_segment(sealed).payloads)
    assert open_size == PREFILL_BYTES > len(frames)
    assert sealed.read_bytes() == frames and scan_segment(sealed).torn_bytes == 0

    orphan = tmp_path / "orphan"
    orphan.mkdir()
    path = orphan / "seg-00000000000000000001.open"
    path.write_bytes(frames + bytes(1000))
    assert seal_orphans(orphan) == 1
    (resealed,) = list_segments(orphan)
    assert resealed.read_bytes() == frames
    assert [r.request_id for r in read_records(orphan, CaptureRecord)] == [
        f"req-{i}" for i in range(20)
    ]
