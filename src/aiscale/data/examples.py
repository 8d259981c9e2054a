"""Captured requests of one deployment as examples: one row per input item, with its output,
its latest feedback, and its values flattened into named feature columns.

A request may carry a batch; each item of it becomes one example (``item`` is its index).
Feature columns are named after where the value came from: ``input`` for a scalar, a text or
a long vector (an embedding, more than :data:`MAX_TABULAR_DIM` numbers), ``input_0`` ...
``input_{n-1}`` for a short numeric vector (a tabular row), ``input_<key>`` for each key of a
dict item; the same rules make ``output`` columns. Quality checks, drift tests and dataset
export all see these names.

Only successful requests (status 200) become examples: a failed one has no output to learn
from. Reading is blocking I/O through :func:`aiscale.data.query.run_query` (the compacted
Parquet and the log not yet compacted); it must never run on the gateway's event loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from aiscale.data.periods import Period
from aiscale.data.query import run_query
from aiscale.errors import InvalidInput, NotFound

#: A numeric vector of at most this many numbers is a tabular row (one column per number);
#: a longer one is an embedding (one column).
MAX_TABULAR_DIM = 32

#: Columns of every example besides the features.
META_COLUMNS = (
    "request_id", "item", "ts", "version", "latency_ms", "input", "output",
    "label", "score", "comment", "num_feedback",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class CapturedExamples:
    """The examples of one deployment in one period, oldest first."""

    deployment: str
    period: Period
    rows: tuple[dict[str, Any], ...]
    num_requests: int

    def features(self) -> dict[str, list[Any]]:
        """Feature columns (inputs first, then outputs), one value per example."""
        return feature_columns(self.rows)

    def output_names(self) -> list[str]:
        """The feature columns that come from the model's outputs."""
        return [name for name in self.features() if is_output_feature(name)]


def is_output_feature(name: str) -> bool:
    return name == "output" or name.startswith("output_")


def known_deployments(data_dir: Path | str) -> list[str]:
    """Every deployment that has captured requests, sorted."""
    table = run_query(data_dir, "SELECT DISTINCT deployment FROM requests ORDER BY 1")
    return [str(v) for v in table.column("deployment").to_pylist()] if table.num_rows else []


#: In ``label_sources``: the feedback given with an admin key (any key id).
ADMIN_SOURCE = "admin"


def load_examples(
    data_dir: Path | str,
    deployment: str,
    period: Period,
    *,
    label_sources: tuple[str, ...] = (),
) -> CapturedExamples:
    """The examples of ``deployment`` whose request time falls in ``period``.

    ``label_sources`` keeps only the feedback given by those key ids (``admin``: by any admin
    key); empty keeps all feedback. Feedback recorded before keys were kept has no source and
    is dropped by any filter.

    Raises ``NotFound`` (field ``deployment``) when nothing was ever captured for it, naming
    the deployments that have data, and ``InvalidInput`` (field ``period``) when it has data
    but none in the period."""
    known = known_deployments(data_dir)
    if deployment not in known:
        where = f"deployments with data: {', '.join(known)}" if known else "no data captured yet"
        raise NotFound(
            f"no captured requests for deployment {deployment!r} under {data_dir} ({where})",
            field="deployment",
        )
    conditions = [f"deployment = {sql_str(deployment)}", "status = 200"]
    if period.start is not None:
        conditions.append(f"ts >= {sql_time(period.start)}")
    if period.end is not None:
        conditions.append(f"ts < {sql_time(period.end)}")
    sql = f"""
        WITH r AS (
            SELECT request_id, ts, version, latency_ms, inputs, outputs FROM requests
            WHERE {" AND ".join(conditions)}
        ), f AS (
            SELECT request_id,
                arg_max(label, ts) FILTER (WHERE label IS NOT NULL) AS label,
                arg_max(score, ts) FILTER (WHERE score IS NOT NULL) AS score,
                arg_max(comment, ts) FILTER (WHERE comment IS NOT NULL) AS comment,
                count(*) AS num_feedback
            FROM feedback
            WHERE request_id IN (SELECT request_id FROM r){_source_filter(label_sources)}
            GROUP BY request_id
        )
        SELECT r.*, f.label, f.score, f.comment, coalesce(f.num_feedback, 0) AS num_feedback
        FROM r LEFT JOIN f USING (request_id) ORDER BY r.ts, r.request_id
    """
    requests = run_query(data_dir, sql).to_pylist()
    if not requests:
        raise InvalidInput(
            f"deployment {deployment!r} has no successful captured requests in "
            f"{period.describe()}",
            field="period",
        )
    rows: list[dict[str, Any]] = []
    for request in requests:
        rows.extend(_explode(request))
    return CapturedExamples(deployment, period, tuple(rows), len(requests))


def _source_filter(label_sources: tuple[str, ...]) -> str:
    """The SQL condition (with its leading ``AND``) keeping feedback from ``label_sources``."""
    if not label_sources:
        return ""
    keys = [s for s in label_sources if s != ADMIN_SOURCE]
    conditions = [f"key_id IN ({', '.join(sql_str(k) for k in keys)})"] if keys else []
    if ADMIN_SOURCE in label_sources:
        conditions.append("is_admin")
    return f" AND ({' OR '.join(conditions)})"


def _explode(request: Mapping[str, Any]) -> list[dict[str, Any]]:
    inputs = orjson.loads(request["inputs"]) if request["inputs"] else None
    outputs = orjson.loads(request["outputs"]) if request["outputs"] else None
    # The gateway captures a batch: a list of items and a list of as many outputs.
    if isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs):
        items, item_outputs = inputs, outputs
    elif isinstance(inputs, list) and inputs and not _is_numbers(inputs):
        items, item_outputs = inputs, [None] * len(inputs)
    else:
        items, item_outputs = [inputs], [outputs]
    ts = request["ts"]
    return [
        {
            "request_id": request["request_id"],
            "item": i,
            "ts": ts,
            "version": request["version"],
            "latency_ms": request["latency_ms"],
            "input": item,
            "output": output,
            "label": request["label"],
            "score": request["score"],
            "comment": request["comment"],
            "num_feedback": int(request["num_feedback"]),
        }
        for i, (item, output) in enumerate(zip(items, item_outputs, strict=True))
    ]


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Named feature values of one input or output value (see the module docstring)."""
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}_{key}"))
        return flat
    if isinstance(value, list):
        if _is_numbers(value) and 0 < len(value) <= MAX_TABULAR_DIM:
            return {f"{prefix}_{i}": v for i, v in enumerate(value)}
        if _is_numbers(value):
            return {prefix: value}
        return {prefix: orjson.dumps(value).decode()}
    return {prefix: value}


def feature_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Flattened input and output features of ``rows`` as columns (missing values are None)."""
    flat_rows = [
        {**flatten(row.get("input"), "input"), **flatten(row.get("output"), "output")}
        for row in rows
    ]
    names: dict[str, None] = {}
    for flat in flat_rows:
        names.update(dict.fromkeys(flat))
    ordered = sorted(names, key=lambda n: (is_output_feature(n), _natural(n)))
    return {name: [flat.get(name) for flat in flat_rows] for name in ordered}


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _is_numbers(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def sql_str(value: str) -> str:
    """``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def sql_time(value: dt.datetime) -> str:
    """``value`` as a DuckDB TIMESTAMPTZ literal."""
    return f"TIMESTAMPTZ {sql_str(value.astimezone(dt.UTC).isoformat())}"
