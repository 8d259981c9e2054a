"""Training sets from production traffic: ``aiscale data export``.

:func:`export_dataset` takes the examples of one deployment in a period (see
:mod:`aiscale.data.examples`), drops duplicates, splits them into train and validation sets,
and writes both (Parquet or JSONL) with a datasheet (``datasheet.json`` and ``datasheet.md``:
counts, time span, versions, label distribution, features, quality results).

Duplicates: an example is kept once per (request id, item), and once per identical input
(canonical JSON); among examples with the same input the one with a label wins, then the most
recent, because a labelled, recent answer is the better training example. The split is a
function of the input alone (a keyed hash), so the same input always lands on the same side,
across exports and machines, and the validation set never leaks into training.

Files: ``train.<ext>`` and ``validation.<ext>`` with columns ``request_id, item, ts, version,
latency_ms, input, output`` (``label, score, comment, num_feedback`` with feedback) and the
flattened feature columns (``input_0``...). ``--format chat`` (an LLM deployment) writes JSON
lines of conversations instead, the feedback joined (``chat_dataset.py``). The output folder
is written whole or not at all for a file (temporary names, then renames). Blocking I/O: never
on the gateway's event loop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from aiscale.data.chat_dataset import chat_line, is_finished_completion
from aiscale.data.examples import CapturedExamples, feature_columns
from aiscale.data.quality import Expectations, QualityReport, check_quality
from aiscale.errors import InvalidInput

#: ``chat``: an LLM deployment's answered requests as conversations (``chat_dataset.py``).
FORMATS = ("parquet", "jsonl", "chat")
#: Keys the split hash, so the split is stable but unrelated to other hashes of the input.
SPLIT_KEY = b"aiscale-dataset-split"
_FEEDBACK_COLUMNS = ("label", "score", "comment", "num_feedback")


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How to build the dataset. ``validation_fraction`` is in [0, 1)."""

    format: str = "parquet"
    with_feedback: bool = False
    is_labeled_only: bool = False
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InvalidInput(
                f"format must be one of {', '.join(FORMATS)}, got {self.format!r}", field="format"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise InvalidInput(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}",
                field="validation_fraction",
            )
        # The chat format always joins the feedback (a conversation line carries its label).
        if self.is_labeled_only and not self.with_feedback and self.format != "chat":
            raise InvalidInput("labeled-only needs with-feedback", field="labeled_only")


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where the dataset went and its datasheet (the same dict as ``datasheet.json``)."""

    out_dir: Path
    train_path: Path
    validation_path: Path
    datasheet: dict[str, Any]


def export_dataset(
    examples: CapturedExamples,
    out_dir: Path | str,
    options: ExportOptions,
    *,
    created_at: dt.datetime,
    expectations: Expectations | None = None,
) -> ExportResult:
    """Deduplicate, split and write ``examples`` under ``out_dir`` (created if missing).

    Raises ``InvalidInput`` when nothing is left to export (e.g. no labelled example with
    ``is_labeled_only``)."""
    rows = list(examples.rows)
    if options.format == "chat":
        for row in rows[:1]:
            chat_line(row)  # a deployment that is not an LLM is refused before any write
        rows = [row for row in rows if is_finished_completion(row)]
    by_id = _unique_by_id(rows)
    kept = [r for r in by_id if not options.is_labeled_only or r["label"] is not None]
    if not kept:
        raise InvalidInput(
            f"no labelled examples for {examples.deployment!r} in {examples.period.describe()}; "
            "send feedback with a label, or export without --labeled-only",
            field="labeled_only",
        )
    unique = _unique_by_input(kept)
    train: list[dict[str, Any]] = []
    validation: list[dict[str, Any]] = []
    for row in unique:
        is_validation = split_fraction(row["input"]) < options.validation_fraction
        (validation if is_validation else train).append(row)
    quality = None
    if expectations is not None:
        quality = check_quality(quality_columns(unique), expectations)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if options.format == "parquet" else "jsonl"  # chat: JSON lines too
    paths = {"train": folder / f"train.{ext}", "validation": folder / f"validation.{ext}"}
    for name, part in (("train", train), ("validation", validation)):
        _write(part, paths[name], options)
    sheet = datasheet(
        examples,
        options,
        created_at=created_at,
        counts={
            "requests": examples.num_requests,
            "examples_read": len(rows),
            "duplicates_by_request_id": len(rows) - len(by_id),
            "unlabeled_dropped": len(by_id) - len(kept),
            "duplicates_by_input": len(kept) - len(unique),
            "examples": len(unique),
            "train": len(train),
            "validation": len(validation),
            "labeled": sum(1 for r in unique if r["label"] is not None),
        },
        train=train,
        validation=validation,
        quality=quality,
        files={k: p.name for k, p in paths.items()},
    )
    _write_text(folder / "datasheet.json", json.dumps(sheet, indent=2, allow_nan=False) + "\n")
    _write_text(folder / "datasheet.md", datasheet_markdown(sheet))
    return ExportResult(folder, paths["train"], paths["validation"], sheet)


def split_fraction(value: Any) -> float:
    """Where ``value`` falls in [0, 1) by a keyed hash of its canonical JSON (stable)."""
    digest = hashlib.blake2b(canonical(value), key=SPLIT_KEY, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def canonical(value: Any) -> bytes:
    """Canonical JSON of a value: equal inputs give equal bytes (keys sorted)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def quality_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """What quality expectations see: ``latency_ms``, ``version``, ``label``, ``score`` and
    the feature columns."""
    columns: dict[str, list[Any]] = {
        name: [r.get(name) for r in rows] for name in ("version", "latency_ms", "label", "score")
    }
    columns.update(feature_columns(rows))
    return columns


def _unique_by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, int]] = set()
    unique = []
    for row in rows:
        key = (row["request_id"], row["item"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _unique_by_input(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best: dict[bytes, dict[str, Any]] = {}
    for row in rows:  # oldest first: a later row of the same rank replaces an earlier one
        key = canonical(row["input"])
        current = best.get(key)
        if current is None or (row["label"] is not None) >= (current["label"] is not None):
            best[key] = row
    return sorted(best.values(), key=lambda r: (r["ts"], r["request_id"], r["item"]))


def _records(rows: list[dict[str, Any]], options: ExportOptions) -> list[dict[str, Any]]:
    features = feature_columns(rows)
    extra = [n for n in features if n not in ("input", "output")]
    dropped = () if options.with_feedback else _FEEDBACK_COLUMNS
    records = []
    for i, row in enumerate(rows):
        record = {k: v for k, v in row.items() if k not in dropped}
        record.update({name: features[name][i] for name in extra})
        records.append(record)
    return records


def _write(rows: list[dict[str, Any]], path: Path, options: ExportOptions) -> None:
    records = [chat_line(r) for r in rows] if options.format == "chat" else _records(rows, options)
    tmp = path.with_name(path.name + ".tmp")
    if options.format in ("jsonl", "chat"):
        with open(tmp, "wb") as f:
            for record in records:
                f.write(orjson.dumps(record, option=orjson.OPT_NAIVE_UTC) + b"\n")
            f.flush()
            os.fsync(f.fileno())
    else:
        with open(tmp, "wb") as f:
            pq.write_table(_arrow_table(records, options), f)
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _arrow_table(records: list[dict[str, Any]], options: ExportOptions) -> pa.Table:
    if not records:
        names = ["request_id", "item", "ts", "version", "latency_ms", "input", "output"]
        if options.with_feedback:
            names += list(_FEEDBACK_COLUMNS)
        return pa.table({n: pa.array([], pa.string()) for n in names})
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Values of mixed types (numbers and texts, ragged nests): JSON text keeps them all.
            columns[name] = pa.array(
                [None if v is None else orjson.dumps(v).decode() for v in values], pa.string()
            )
    return pa.table(columns)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def datasheet(
    examples: CapturedExamples,
    options: ExportOptions,
    *,
    created_at: dt.datetime,
    counts: dict[str, int],
    train: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    quality: QualityReport | None,
    files: dict[str, str],
) -> dict[str, Any]:
    """The dataset's datasheet as plain JSON-ready data."""
    rows = train + validation
    times = [r["ts"] for r in rows]
    return {
        "deployment": examples.deployment,
        "created_at": created_at.isoformat(),
        "period": {
            "start": examples.period.start.isoformat() if examples.period.start else None,
            "end": examples.period.end.isoformat() if examples.period.end else None,
        },
        "time_span": {
            "first": min(times).isoformat() if times else None,
            "last": max(times).isoformat() if times else None,
        },
        "format": options.format,
        "files": files,
        "with_feedback": options.with_feedback,
        "split": {
            "method": "keyed blake2b hash of the canonical input JSON",
            "validation_fraction": options.validation_fraction,
        },
        "counts": counts,
        "versions": dict(sorted(Counter(str(r["version"]) for r in rows).items())),
        "labels": {
            "train": _label_counts(train),
            "validation": _label_counts(validation),
        },
        "features": list(feature_columns(rows)) if rows else [],
        "quality": None if quality is None else quality.to_dict(),
    }


def _label_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter("(none)" if r["label"] is None else str(r["label"]) for r in rows)
    return dict(sorted(counts.items()))


def datasheet_markdown(sheet: Mapping[str, Any]) -> str:
    """The datasheet for people to read."""
    counts = sheet["counts"]
    lines = [
        f"# Dataset: {sheet['deployment']}",
        "",
        f"Exported {sheet['created_at']} from captured production traffic.",
        "",
        f"- Period asked for: {sheet['period']['start'] or 'the beginning'} .. "
        f"{sheet['period']['end'] or 'now'}",
        f"- Data spans: {sheet['time_span']['first']} .. {sheet['time_span']['last']}",
        f"- Format: {sheet['format']} ({sheet['files']['train']}, {sheet['files']['validation']})",
        f"- Split: {sheet['split']['method']}, validation fraction "
        f"{sheet['split']['validation_fraction']:g}",
        f"- Feedback joined: {'yes' if sheet['with_feedback'] else 'no'}",
        "",
        "## Counts",
        "",
        "| what | count |",
        "| --- | ---: |",
        *(f"| {name.replace('_', ' ')} | {value} |" for name, value in counts.items()),
        "",
        "## Model versions that answered",
        "",
        *(f"- {v}: {n}" for v, n in sheet["versions"].items()),
        "",
        "## Labels",
        "",
        "| label | train | validation |",
        "| --- | ---: | ---: |",
    ]
    labels = sorted(set(sheet["labels"]["train"]) | set(sheet["labels"]["validation"]))
    for label in labels:
        lines.append(
            f"| {label} | {sheet['labels']['train'].get(label, 0)} | "
            f"{sheet['labels']['validation'].get(label, 0)} |"
        )
    lines += ["", "## Features", "", ", ".join(sheet["features"]) or "(none)", "", "## Quality", ""]
    quality = sheet["quality"]
    if quality is None:
        lines.append("No expectations were given; nothing was checked.")
    else:
        verdict = "all checks passed" if quality["is_passed"] else "checks FAILED"
        lines += [f"{verdict} on {quality['num_rows']} rows.", ""]
        lines += ["| check | passed | observed |", "| --- | --- | ---: |"]
        for check in quality["checks"]:
            passed = "yes" if check["is_passed"] else "**no**"
            lines.append(f"| {check['name']} | {passed} | {check['observed']:.4g} |")
    return "\n".join(lines) + "\n"
