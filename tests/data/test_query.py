"""SQL over captured data: the ``requests`` and ``feedback`` views over Parquet and the log."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aiscale.data.capture import (
    CaptureConfig,
    CaptureLayout,
    CaptureRecord,
    CaptureSink,
    FeedbackRecord,
)
from aiscale.data.compaction import compact
from aiscale.data.query import run_query
from aiscale.errors import InvalidInput

T0_S = 1_700_005_200.0  # 2023-11-14 23:40:00 UTC


def record(i: int, status: int = 200) -> CaptureRecord:
    return CaptureRecord(
        f"req-{i}",
        T0_S + 600 * i,
        "minilm" if i % 2 else "7",
        "1",
        {"text": f"s{i}"},
        [0.25, i],
        float(i),
        status,
        user_hash="u1",
    )


def capture(
    data_dir: Path, records: Sequence[CaptureRecord], feedback: Sequence[FeedbackRecord] = ()
) -> CaptureLayout:
    layout = CaptureLayout.from_data_dir(data_dir)
    sink = CaptureSink(layout, CaptureConfig(), CollectorRegistry())

    async def scenario() -> None:
        await sink.start()
        for r in records:
            await sink.append(r)
        for f in feedback:
            await sink.append_feedback(f)
        await sink.stop()

    asyncio.run(scenario())
    return layout


def test_views_cover_parquet_and_uncompacted_log_once_each(tmp_path: Path) -> None:
    """Rows already in Parquet and rows still in the log are both visible, and a request that
    is in both (replayed after compaction) appears once."""
    layout = capture(tmp_path, [record(i) for i in range(4)])
    compact(layout.log_dir, layout.parquet_url)
    capture(tmp_path, [record(3), record(4), record(5, status=500)])  # req-3 replayed

    table = run_query(tmp_path, "SELECT request_id, status FROM requests ORDER BY request_id")

    assert table.column("request_id").to_pylist() == [f"req-{i}" for i in range(6)]
    assert table.column("status").to_pylist() == [200] * 5 + [500]


def test_requests_view_has_the_documented_columns_and_types(tmp_path: Path) -> None:
    """One row per request with ts as a UTC timestamp, the hive columns typed (a deployment
    named "7" stays text), and JSON text inputs/outputs that DuckDB's JSON operators read;
    log rows and Parquet rows have the same columns."""
    layout = capture(tmp_path, [record(0), record(2)])
    compact(layout.log_dir, layout.parquet_url)
    capture(tmp_path, [record(1)])
    sql = (
        "SELECT request_id, ts, deployment, version, status, latency_ms, user_hash, date, hour,"
        " inputs->>'text' AS text, outputs->>1 AS second FROM requests ORDER BY ts"
    )

    rows = run_query(tmp_path, sql).to_pylist()

    assert [r["request_id"] for r in rows] == ["req-0", "req-1", "req-2"]
    assert [r["deployment"] for r in rows] == ["7", "minilm", "7"]
    assert [r["date"] for r in rows] == [dt.date(2023, 11, 14)] * 2 + [dt.date(2023, 11, 15)]
    assert [r["hour"] for r in rows] == [23, 23, 0]
    assert rows[0]["ts"] == dt.datetime(2023, 11, 14, 23, 40, tzinfo=dt.UTC)
    assert [r["text"] for r in rows] == ["s0", "s1", "s2"]
    assert [r["second"] for r in rows] == ["0", "1", "2"]
    assert {(r["version"], r["status"], r["user_hash"]) for r in rows} == {("1", 200, "u1")}
    assert [r["latency_ms"] for r in rows] == [0.0, 1.0, 2.0]


def test_feedback_view_joins_with_requests(tmp_path: Path) -> None:
    """Feedback rows, compacted or not, are one per feedback id and join to their request."""
    feedback = [
        FeedbackRecord("fb-1", "req-1", T0_S + 5, label="good", score=0.9),
        FeedbackRecord("fb-2", "req-2", T0_S + 6, comment="wrong"),
    ]
    layout = capture(tmp_path, [record(1), record(2)], feedback[:1])
    compact(layout.log_dir, layout.parquet_url)
    capture(tmp_path, [], feedback)  # fb-1 replayed, fb-2 new

    rows = run_query(
        tmp_path,
        "SELECT f.feedback_id, f.label, f.score, f.comment, r.deployment FROM feedback f "
        "JOIN requests r USING (request_id) ORDER BY f.feedback_id",
    ).to_pylist()

    assert rows == [
        {
            "feedback_id": "fb-1",
            "label": "good",
            "score": 0.9,
            "comment": None,
            "deployment": "minilm",
        },
        {
            "feedback_id": "fb-2",
            "label": None,
            "score": None,
            "comment": "wrong",
            "deployment": "7",
        },
    ]


def test_empty_data_dir_gives_empty_views(tmp_path: Path) -> None:
    """With nothing captured yet both views exist and are empty."""
    table = run_query(
        tmp_path,
        "SELECT (SELECT count(*) FROM requests) AS r, (SELECT count(*) FROM feedback) AS f",
    )
    assert table.to_pylist() == [{"r": 0, "f": 0}]


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELEC 1", "syntax error"),
        ("SELECT * FROM no_such_table", "no_such_table"),
        ("SELECT no_such_column FROM requests", "no_such_column"),
    ],
)
def test_bad_sql_raises_invalid_input_with_duckdb_message(
    tmp_path: Path, sql: str, fragment: str
) -> None:
    """Bad SQL raises InvalidInput naming the sql field and carrying DuckDB's message."""
    with pytest.raises(InvalidInput) as error:
        run_query(tmp_path, sql)
    assert error.value.field == "sql"
    assert fragment in error.value.message.lower()
