"""SQL over captured data: DuckDB views ``requests`` and ``feedback`` (``aiscale data query``).

Each view is the compacted Parquet plus the rows still in the log (segments not yet compacted,
including the one being written), one row per request id (feedback: per feedback id). Log
rows are read first and Parquet second, so a segment compacted meanwhile is still seen
through its Parquet file. Columns: see :mod:`aiscale.data.capture_table` (inputs and outputs
are JSON text; use DuckDB's ``->>`` / ``json_extract`` on them).

This module is read-only: it never writes to the log or to Parquet, and it must never run on
the gateway's event loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from aiscale.data.capture import CaptureLayout
from aiscale.data.capture_segment import iter_payloads
from aiscale.data.capture_table import HIVE_TYPES, KINDS, TableKind, decode_unique
from aiscale.errors import InvalidInput


def run_query(data_dir: Path | str, sql: str, *, parquet_url: str | None = None) -> pa.Table:
    """Run ``sql`` over the captured data of the server whose data dir is ``data_dir``.

    Raises ``InvalidInput`` (field ``sql``) with DuckDB's message if the SQL is bad. A
    statement that returns no rows (``SET ...``) gives an empty table."""
    layout = CaptureLayout.from_data_dir(data_dir, parquet_url)
    con = duckdb.connect()
    try:
        fs, root = fsspec.core.url_to_fs(layout.parquet_url)
        if not isinstance(fs, LocalFileSystem):
            con.register_filesystem(fs)
        for kind in KINDS:
            _create_view(con, kind, layout.log_dir / kind.name, fs, f"{root}/{kind.name}")
        try:
            relation = con.sql(sql)
            if relation is None:
                return pa.table({})
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise InvalidInput(str(exc), field="sql") from exc
    finally:
        con.close()


def _log_table(kind: TableKind, directory: Path) -> pa.Table:
    rows = decode_unique(iter_payloads(directory), kind.key, set())
    return kind.build(rows).select(kind.columns)


def _create_view(
    con: duckdb.DuckDBPyConnection, kind: TableKind, log_dir: Path, fs: Any, root: str
) -> None:
    log_name = f"_{kind.name}_log"
    con.register(log_name, _log_table(kind, log_dir))
    columns = ", ".join(f'"{c}"' for c in kind.columns)
    pattern = root + "/*" * len(kind.partition_by) + "/*.parquet"
    if not fs.glob(pattern):
        con.execute(f"CREATE VIEW {kind.name} AS SELECT {columns} FROM {log_name}")
        return
    url = pattern if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(pattern)
    types = {c: HIVE_TYPES[c] for c in kind.partition_by}
    # union_by_name: files compacted before a column existed read it as NULL.
    parquet = (
        f"read_parquet({_sql_str(url)}, hive_partitioning = true, union_by_name = true, "
        f"hive_types = {types!r})"
    )
    con.execute(
        f"CREATE VIEW {kind.name} AS "
        f"WITH p AS (SELECT {columns} FROM {parquet}) "
        f"SELECT * FROM p UNION ALL "
        f"SELECT {columns} FROM {log_name} AS l "
        f"WHERE NOT EXISTS (SELECT 1 FROM p WHERE p.{kind.key} = l.{kind.key})"
    )


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
