"""Quality and drift checks of one deployment's captured data, as the CLI and the retraining
loop run them: loading expectations, choosing the reference, lining up the columns.

The statistics are :func:`aiscale.data.quality.check_quality` and
:func:`aiscale.data.drift.detect_drift`; this module only feeds them captured examples (see
:mod:`aiscale.data.examples`) and reference files. Blocking I/O: never on the event loop.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from aiscale.data.drift import DriftReport, detect_drift
from aiscale.data.examples import (
    META_COLUMNS,
    CapturedExamples,
    feature_columns,
    flatten,
    is_output_feature,
    load_examples,
)
from aiscale.data.export import quality_columns
from aiscale.data.periods import parse_period
from aiscale.data.quality import Expectations, QualityReport, check_quality
from aiscale.errors import ConfigError, InvalidInput

#: File types a drift reference may be read from.
REFERENCE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def load_expectations(path: Path | str) -> Expectations:
    """Expectations from a YAML or JSON file (see ``Expectations.from_dict``).

    Raises ``ConfigError`` naming the file, or the dotted path of the bad key."""
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"expectations file {file} does not exist", field="expectations"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}", field="expectations") from None
    if data is None:
        raise ConfigError(f"expectations file {file} is empty", field="expectations")
    return Expectations.from_dict(data)


def check_examples(examples: CapturedExamples, expectations: Expectations) -> QualityReport:
    """Check the examples' quality columns (see ``export.quality_columns``)."""
    return check_quality(quality_columns(examples.rows), expectations)


@dataclass(frozen=True, slots=True)
class Reference:
    """The reference side of a drift test: feature columns and where they came from."""

    columns: dict[str, list[Any]]
    source: str


def load_reference(
    spec: str, data_dir: Path | str, deployment: str, now: dt.datetime
) -> Reference:
    """The reference named by ``spec``: a file (Parquet, JSONL or CSV, e.g. the training data
    or an exported ``train.parquet``) if one exists at that path, else a period of the
    deployment's own captured traffic (``START..END`` or an age)."""
    path = Path(spec).expanduser()
    if path.suffix.lower() in REFERENCE_SUFFIXES or path.exists():
        if not path.is_file():
            raise InvalidInput(f"reference file {path} does not exist", field="reference")
        return Reference(_columns_from_rows(read_rows(path)), str(path))
    period = parse_period(spec, now, field="reference")
    examples = load_examples(data_dir, deployment, period)
    return Reference(examples.features(), f"captured traffic {period.describe()}")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Parquet, JSON Lines or CSV file; ``InvalidInput`` if it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_table(path).to_pylist())
        if suffix == ".csv":
            import pyarrow.csv as pacsv

            return list(pacsv.read_csv(path).to_pylist())
        rows = []
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    row = orjson.loads(line)
                    if not isinstance(row, dict):
                        raise InvalidInput(
                            f"{path} line {number} is not a JSON object", field="reference"
                        )
                    rows.append(row)
        return rows
    except (orjson.JSONDecodeError, ValueError, OSError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field="reference") from None


def _columns_from_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    if not rows:
        raise InvalidInput("the reference file has no rows", field="reference")
    if any("input" in row for row in rows):
        return feature_columns(rows)
    # A plain table (training data): its columns are the features, except the example
    # metadata; an ``output`` column (the training labels) is the model's output, flattened
    # like a captured output so that output drift is tested against it too.
    names = [n for n in dict.fromkeys(k for row in rows for k in row) if n not in META_COLUMNS]
    columns = {name: [row.get(name) for row in rows] for name in names}
    if any("output" in row for row in rows):
        flat = [flatten(row.get("output"), "output") for row in rows]
        for name in dict.fromkeys(k for f in flat for k in f):
            columns[name] = [f.get(name) for f in flat]
    return columns


def compare(
    reference: Reference,
    current: CapturedExamples,
    *,
    alpha: float = 0.05,
    correction: str = "bh",
    kinds: Mapping[str, str] | None = None,
    seed: int = 0,
) -> tuple[DriftReport, dict[str, list[Any]], dict[str, list[Any]]]:
    """Test the features that the reference and the current window share.

    Returns the report and the two column tables that were compared (for plots). Raises
    ``InvalidInput`` when they share no feature, naming both sides' features."""
    import numpy as np

    current_columns = current.features()
    shared = [name for name in current_columns if name in reference.columns]
    if not shared:
        raise InvalidInput(
            f"the reference ({sorted(reference.columns)}) and the current window "
            f"({sorted(current_columns)}) share no feature",
            field="reference",
        )
    ref = {name: reference.columns[name] for name in shared}
    cur = {name: current_columns[name] for name in shared}
    report = detect_drift(
        ref,
        cur,
        kinds={k: v for k, v in (kinds or {}).items() if k in ref},
        alpha=alpha,
        correction=correction,
        rng=np.random.default_rng(seed),
        output_columns=[name for name in shared if is_output_feature(name)],
    )
    return report, ref, cur


def summary(report: DriftReport | QualityReport) -> str:
    """One line for logs and the CLI."""
    if isinstance(report, DriftReport):
        if report.is_drift:
            return f"drift in {', '.join(report.drifted)}"
        return f"no drift in {len(report.features)} features"
    if report.is_passed:
        return f"{len(report.checks)} quality checks passed"
    return f"{len(report.failed)} quality checks failed: {', '.join(c.name for c in report.failed)}"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, allow_nan=False)
