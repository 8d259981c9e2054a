"""Compaction: sealed capture-log segments become Parquet, then the segments are removed.

``compact(log_dir, parquet_dir)`` reads the sealed segments of ``log_dir/requests`` and
``log_dir/feedback``, and writes new files under ``parquet_dir/requests/deployment=X/
date=YYYY-MM-DD/hour=HH/`` and ``parquet_dir/feedback/date=YYYY-MM-DD/hour=HH/``
(``parquet_dir`` may be an fsspec URL). Rows are deduplicated by request id (feedback: by
feedback id) against the log itself and against the files already in their partition, so a
record appended twice lands once and a second run changes nothing. A segment is removed only
after every one of its rows is in a Parquet file that is durable (fsync'ed on a local disk;
written whole on object storage). Segments still open for writing are never touched; ones
left open by a crashed writer are sealed first if no writer holds the log.

This module must never run on the gateway's event loop (it is blocking, batch work), and never
removes a segment before its rows are safely in Parquet. One compaction runs at a time per
log folder (a lock; a second gets ``Conflict``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from aiscale.data.capture_segment import (
    fsync_dir,
    list_segments,
    scan_segment,
    seal_orphans,
    try_lock,
    unlock,
)
from aiscale.data.capture_table import KINDS, TableKind, decode_unique
from aiscale.errors import Conflict

logger = logging.getLogger(__name__)

_COMPACTION_LOCK = ".compaction.lock"
#: Segments are compacted in chunks of about this many bytes, bounding memory.
DEFAULT_CHUNK_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CompactionReport:
    """What one run did, summed over requests and feedback."""

    num_segments: int  # sealed segments turned into Parquet and removed
    num_records_read: int
    num_records_written: int
    num_duplicates: int  # rows dropped: repeated in the log or already in Parquet
    num_files_written: int
    num_orphans_sealed: int  # segments a crashed writer had left open
    torn_bytes: int  # bytes of torn tails skipped


def compact(
    log_dir: Path | str,
    parquet_dir: Path | str,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> CompactionReport:
    """Move every sealed segment under ``log_dir`` into Parquet under ``parquet_dir``.

    Raises ``Conflict`` if another compaction of ``log_dir`` is running. Safe to interrupt at
    any point: a rerun finishes the job without duplicating rows."""
    log_path = Path(log_dir)
    log_path.mkdir(parents=True, exist_ok=True)
    lock = try_lock(log_path, _COMPACTION_LOCK)
    if lock is None:
        raise Conflict(f"a compaction of {log_path} is already running")
    try:
        fs, root = fsspec.core.url_to_fs(str(parquet_dir))
        totals = [0] * 7
        for kind in KINDS:
            directory = log_path / kind.name
            counts = _compact_kind(kind, directory, fs, f"{root}/{kind.name}", chunk_bytes)
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    finally:
        unlock(lock)
    report = CompactionReport(*totals)
    logger.info("compaction of %s: %s", log_path, report)
    return report


def _compact_kind(
    kind: TableKind, directory: Path, fs: Any, root: str, chunk_bytes: int
) -> tuple[int, int, int, int, int, int, int]:
    num_orphans = 0
    if directory.is_dir() and (writer_lock := try_lock(directory)) is not None:
        try:
            num_orphans = seal_orphans(directory)
        finally:
            unlock(writer_lock)
    segments = list_segments(directory, is_sealed_only=True)
    num_read = num_written = num_files = torn = 0
    seen: set[str] = set()
    for chunk in _chunks(segments, chunk_bytes):
        scans = [scan_segment(path) for path in chunk]
        payloads = [p for scan in scans for p in scan.payloads]
        torn += sum(scan.torn_bytes for scan in scans)
        num_read += len(payloads)
        rows = decode_unique(payloads, kind.key, seen)
        if rows:
            written, files = _write_partitions(kind, kind.build(rows), fs, root)
            num_written += written
            num_files += files
        # Only now, with every row durable in Parquet, may the segments go.
        for path in chunk:
            path.unlink()
        fsync_dir(directory)
    return (
        len(segments),
        num_read,
        num_written,
        num_read - num_written,
        num_files,
        num_orphans,
        torn,
    )


def _chunks(segments: list[Path], chunk_bytes: int) -> list[list[Path]]:
    chunks: list[list[Path]] = []
    current: list[Path] = []
    size = 0
    for path in segments:
        current.append(path)
        size += path.stat().st_size
        if size >= chunk_bytes:
            chunks.append(current)
            current, size = [], 0
    if current:
        chunks.append(current)
    return chunks


def _partition_value(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, int):
        return f"{value:02d}"
    return quote(str(value), safe="")


def _write_partitions(kind: TableKind, table: pa.Table, fs: Any, root: str) -> tuple[int, int]:
    keys = list(zip(*(table.column(c).to_pylist() for c in kind.partition_by), strict=True))
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    num_written = num_files = 0
    for key, indices in sorted(groups.items()):
        directory = root + "".join(
            f"/{col}={_partition_value(v)}" for col, v in zip(kind.partition_by, key, strict=True)
        )
        part = table.take(pa.array(indices, pa.int64()))
        existing = _existing_keys(fs, directory, kind.key)
        if existing:
            is_new = pc.invert(pc.is_in(part.column(kind.key), value_set=pa.array(existing)))
            part = part.filter(is_new)
        if part.num_rows == 0:
            continue
        part = part.sort_by("ts").select(kind.file_schema.names).cast(kind.file_schema)
        _write_file(fs, directory, part)
        num_written += part.num_rows
        num_files += 1
    return num_written, num_files


def _existing_keys(fs: Any, directory: str, key: str) -> list[str]:
    if not fs.exists(directory):
        return []
    values: list[str] = []
    for path in sorted(fs.glob(f"{directory}/*.parquet")):
        with fs.open(path, "rb") as f:
            values.extend(pq.read_table(f, columns=[key]).column(key).to_pylist())
    return values


def _write_file(fs: Any, directory: str, table: pa.Table) -> None:
    name = f"part-{uuid.uuid4().hex}.parquet"
    if not isinstance(fs, LocalFileSystem):
        # Object stores make a whole object visible at once: no temporary name needed.
        fs.makedirs(directory, exist_ok=True)
        with fs.open(f"{directory}/{name}", "wb") as f:
            pq.write_table(table, f)
        return
    folder = Path(directory)
    _makedirs_durably(folder)
    tmp = folder / f"{name}.tmp"  # never matched by readers' *.parquet
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    fsync_dir(folder)


def _makedirs_durably(folder: Path) -> None:
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)
