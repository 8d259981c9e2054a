"""Captured records as Arrow tables: the column layout shared by compaction and query.

``requests`` rows have ``request_id, ts, deployment, version, status, latency_ms, user_hash,
inputs, outputs, client_request_id, key_id`` (inputs/outputs as JSON text) and ``feedback``
rows ``feedback_id, request_id, ts, label, score, comment, user_hash, key_id, is_admin``;
both also get the partition columns ``date`` (UTC) and ``hour`` (0-23) derived from ``ts``.
In Parquet the partition columns (``deployment``, ``date``, ``hour`` for requests; ``date``,
``hour`` for feedback) live only in the hive-style path, as hive readers expect.

This module does no I/O: it turns payloads (bytes from the log) into tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

_TS = pa.timestamp("us", tz="UTC")

REQUEST_FILE_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", _TS),
        ("version", pa.string()),
        ("status", pa.int32()),
        ("latency_ms", pa.float64()),
        ("user_hash", pa.string()),
        ("inputs", pa.string()),
        ("outputs", pa.string()),
        ("client_request_id", pa.string()),
        ("key_id", pa.string()),
    ]
)
FEEDBACK_FILE_SCHEMA = pa.schema(
    [
        ("feedback_id", pa.string()),
        ("request_id", pa.string()),
        ("ts", _TS),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("comment", pa.string()),
        ("user_hash", pa.string()),
        ("key_id", pa.string()),
        ("is_admin", pa.bool_()),
    ]
)
#: DuckDB types of the hive partition columns (never inferred: a deployment named "7" stays text).
HIVE_TYPES = {"deployment": "VARCHAR", "date": "DATE", "hour": "INTEGER"}


@dataclass(frozen=True, slots=True)
class TableKind:
    """One captured table: its name (log folder, Parquet folder and view), the column rows are
    deduplicated by, its partition columns, and the columns stored inside Parquet files."""

    name: str
    key: str
    partition_by: tuple[str, ...]
    file_schema: pa.Schema
    build: Callable[[list[dict[str, Any]]], pa.Table]

    @property
    def columns(self) -> list[str]:
        """Every column of the view, in order."""
        names = list(self.file_schema.names)
        names[2:2] = [c for c in self.partition_by if c not in ("date", "hour")]
        return [*names, "date", "hour"]


def decode_unique(payloads: Iterable[bytes], key: str, seen: set[str]) -> list[dict[str, Any]]:
    """The decoded payloads whose ``key`` is not in ``seen`` (first occurrence wins; ``seen``
    is updated), so a record appended twice is kept once."""
    rows: list[dict[str, Any]] = []
    for payload in payloads:
        row = orjson.loads(payload)
        value = row[key]
        if value in seen:
            continue
        seen.add(value)
        rows.append(row)
    return rows


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _with_time_partitions(columns: dict[str, pa.Array], ts_s: list[float]) -> pa.Table:
    ts = pa.array([round(t * 1_000_000) for t in ts_s], pa.int64()).cast(_TS)
    columns["ts"] = ts
    table = pa.table(columns)
    return table.append_column("date", pc.cast(ts, pa.date32())).append_column(
        "hour", pc.cast(pc.hour(ts), pa.int32())
    )


def _build_requests(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([r["request_id"] for r in rows], pa.string()),
        "ts": pa.array([], pa.int64()),  # placeholder keeps the column order
        "deployment": pa.array([r["deployment"] for r in rows], pa.string()),
        "version": pa.array([r["version"] for r in rows], pa.string()),
        "status": pa.array([r["status"] for r in rows], pa.int32()),
        "latency_ms": pa.array([r["latency_ms"] for r in rows], pa.float64()),
        "user_hash": pa.array([r.get("user_hash") for r in rows], pa.string()),
        "inputs": pa.array([_json_text(r.get("inputs")) for r in rows], pa.string()),
        "outputs": pa.array([_json_text(r.get("outputs")) for r in rows], pa.string()),
        "client_request_id": pa.array([r.get("client_request_id") for r in rows], pa.string()),
        "key_id": pa.array([r.get("key_id") for r in rows], pa.string()),
    }
    return _with_time_partitions(columns, [r["ts_s"] for r in rows])


def _build_feedback(rows: list[dict[str, Any]]) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "feedback_id": pa.array([r["feedback_id"] for r in rows], pa.string()),
        "request_id": pa.array([r["request_id"] for r in rows], pa.string()),
        "ts": pa.array([], pa.int64()),
        "label": pa.array([r.get("label") for r in rows], pa.string()),
        "score": pa.array([r.get("score") for r in rows], pa.float64()),
        "comment": pa.array([r.get("comment") for r in rows], pa.string()),
        "user_hash": pa.array([r.get("user_hash") for r in rows], pa.string()),
        "key_id": pa.array([r.get("key_id") for r in rows], pa.string()),
        "is_admin": pa.array([bool(r.get("is_admin")) for r in rows], pa.bool_()),
    }
    return _with_time_partitions(columns, [r["ts_s"] for r in rows])


REQUESTS = TableKind(
    name="requests",
    key="request_id",
    partition_by=("deployment", "date", "hour"),
    file_schema=REQUEST_FILE_SCHEMA,
    build=_build_requests,
)
FEEDBACK = TableKind(
    name="feedback",
    key="feedback_id",
    partition_by=("date", "hour"),
    file_schema=FEEDBACK_FILE_SCHEMA,
    build=_build_feedback,
)
KINDS = (REQUESTS, FEEDBACK)
