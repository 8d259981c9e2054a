"""Anomaly detection on operational metric series: the detector contract and its entry points.

What it does: defines ``StreamingDetector`` (one object per series; ``update(now_s, value)``
returns the point's anomaly score in [0, 1] from that point and the past only), builds
detectors by name (``make_detector``), scores a whole series (``score_series``) and scores a
``timestamp,value`` CSV file into a ``timestamp,value,anomaly_score`` file (``detect_csv``,
behind ``aiscale detect``). The live monitor runs the very same detector objects, one per
series, fed on its own clock. Every detector ``make_detector`` returns sits behind the input
layer (``anomaly_input.GuardedDetector``): missing values are skipped with a count, clock steps,
repeated timestamps and gaps are scored in arrival order and reported, in both places alike.
The default detector is ``ChannelSurpriseDetector`` (``anomaly_channels.py``).

What it must never do: read a clock or use global randomness (time arrives as ``now_s``), let a
score depend on later points, or hold memory that grows with the length of the stream.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiscale.errors import InvalidInput
from aiscale.monitor.anomaly_channels import ChannelSurpriseDetector
from aiscale.monitor.anomaly_detectors import RecordSurpriseDetector
from aiscale.monitor.anomaly_input import GuardedDetector, InputCounts

__all__ = [
    "StreamingDetector",
    "ChannelSurpriseDetector",
    "RecordSurpriseDetector",
    "GuardedDetector",
    "InputCounts",
    "DetectReport",
    "DETECTOR_NAMES",
    "make_detector",
    "score_series",
    "detect_csv",
    "parse_timestamp",
]


class StreamingDetector(Protocol):
    """One series' detector. Callers feed points in time order, each exactly once."""

    def update(self, now_s: float, value: float) -> float:
        """Score of this point in [0, 1], from this point and the earlier ones only."""
        ...


_FACTORIES: dict[str, Callable[..., StreamingDetector]] = {
    "default": ChannelSurpriseDetector,
    "channel_surprise": ChannelSurpriseDetector,
    # the detector before issue 13: tuned to the 24 local NAB files, O(history) numpy per point
    "record_surprise": RecordSurpriseDetector,
}
DETECTOR_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))


def make_detector(name: str = "default", **params: Any) -> GuardedDetector:
    """A fresh detector by name behind the input layer (``anomaly_input.GuardedDetector``);
    ``params`` go to its constructor. The live monitor and ``aiscale detect`` both call this.

    Raises ``InvalidInput`` (field ``detector``) for an unknown name or bad parameters.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise InvalidInput(
            f"unknown detector {name!r}; known: {', '.join(DETECTOR_NAMES)}", field="detector"
        )
    try:
        return GuardedDetector(factory(**params))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"bad parameters for detector {name!r}: {exc}", field="detector"
        ) from exc


def score_series(
    timestamps_s: Sequence[float],
    values: Sequence[float],
    detector: StreamingDetector | None = None,
) -> list[float]:
    """Feed a whole series, in order, to ``detector`` (default: a fresh default one).

    Returns one score per point. Raises ``InvalidInput`` when the lengths differ.
    """
    if len(timestamps_s) != len(values):
        raise InvalidInput(
            f"{len(timestamps_s)} timestamps but {len(values)} values", field="values"
        )
    det = detector if detector is not None else make_detector()
    return [det.update(float(t), float(v)) for t, v in zip(timestamps_s, values, strict=True)]


_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S",
                 "%Y-%m-%dT%H:%M:%S.%f")


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch for ``2014-04-01 00:00:00`` (UTC unless an offset is given),
    an ISO 8601 string, or a plain number of seconds. Raises ``ValueError`` otherwise."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise ValueError(f"timestamp {text!r} is not finite")
    for fmt in _TIME_FORMATS:
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=UTC).timestamp()
    parsed = datetime.fromisoformat(text)  # raises ValueError with its own message
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class DetectReport:
    """What ``detect_csv`` did: rows written, rows scored, and what the input layer saw."""

    num_rows: int
    num_scored: int
    counts: InputCounts

    def warnings(self) -> list[str]:
        return self.counts.warnings()


def detect_csv(
    in_path: str | Path, out_path: str | Path, detector: StreamingDetector | None = None
) -> DetectReport:
    """Score a ``timestamp,value`` CSV (with header) into ``timestamp,value,anomaly_score``.

    One output row per input data row, in input order, timestamps and values copied as written
    (blank lines are not rows). Imperfect input follows ``aiscale.monitor.anomaly_input``: a
    missing, empty, non-numeric or non-finite value is skipped (its ``anomaly_score`` cell is
    empty, and the report counts and names it); timestamps that step back or repeat, and gaps,
    are scored in arrival order and reported. A header-only file gives a header-only output.
    Raises ``InvalidInput`` naming the line of a row whose timestamp cannot be read or that has
    too few fields, or the missing column, or an empty file; nothing is written then.
    """
    guard = detector if isinstance(detector, GuardedDetector) else GuardedDetector(
        detector if detector is not None else make_detector())
    rows: list[tuple[str, str, float | None]] = []
    with open(in_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise InvalidInput(f"{in_path}: empty file, expected a 'timestamp,value' header",
                               field="header")
        names = [h.strip().lower() for h in header]
        for column in ("timestamp", "value"):
            if column not in names:
                raise InvalidInput(f"{in_path}: line 1: missing column {column!r}", field=column)
        t_col, v_col = names.index("timestamp"), names.index("value")
        parsed: list[tuple[int, str, str, float, float | None]] = []
        for row in reader:
            line_no = reader.line_num
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(t_col, v_col):
                raise InvalidInput(f"{in_path}: line {line_no}: expected {len(names)} fields, "
                                   f"got {len(row)}", field="row")
            try:
                t_s = parse_timestamp(row[t_col])
            except ValueError:
                raise InvalidInput(f"{in_path}: line {line_no}: bad timestamp {row[t_col]!r}",
                                   field="timestamp") from None
            parsed.append((line_no, row[t_col].strip(), row[v_col].strip(), t_s,
                           _parse_value(row[v_col])))
    # score only once the whole file has been read: a bad row leaves nothing half-written
    for line_no, t_text, v_text, t_s, value in parsed:
        rows.append((t_text, v_text, guard.observe(t_s, value, row=line_no)))
    with open(out_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "value", "anomaly_score"])
        for t_text, v_text, score in rows:
            writer.writerow([t_text, v_text, "" if score is None else f"{score:.6f}"])
    counts = guard.counts()
    return DetectReport(len(rows), counts.num_scored, counts)


def _parse_value(text: str) -> float | None:
    """The cell as a float, or ``None`` when it is empty or not a number (NaN stays NaN: the
    input layer skips it like a missing one)."""
    try:
        return float(text)
    except ValueError:
        return None
