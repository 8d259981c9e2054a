"""Data-quality expectations for a deployment's captured data, and the check against them.

An :class:`Expectations` is a frozen, declarative description of what good data looks like:
per column its type, whether it must be present, the largest tolerated null rate, and value
rules (numeric range, allowed values, text length, embedding dimension and L2 norm); per
table whether unlisted columns are allowed and the largest tolerated duplicate-row rate. It
is built from plain data (the ``quality:`` block of a deployment's config) by
:meth:`Expectations.from_dict`, which rejects unknown keys and bad values with ``ConfigError``
naming the dotted path.

:func:`check_quality` checks rows or columns against it and returns a :class:`QualityReport`
with one pass/fail entry per expectation, the observed value, and a bounded number of
offending examples.

This module must never do I/O, read a clock or use randomness.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Real
from typing import Any

import numpy as np

from aiscale.errors import ConfigError, InvalidInput

#: Declarable column types.
COLUMN_TYPES = ("number", "integer", "string", "boolean", "embedding")

#: Longest rendering of an offending value in a report.
MAX_EXAMPLE_CHARS = 80

_RULES_BY_TYPE = {
    "min_value": ("number", "integer"),
    "max_value": ("number", "integer"),
    "min_length": ("string",),
    "max_length": ("string",),
    "dim": ("embedding",),
    "min_norm": ("embedding",),
    "max_norm": ("embedding",),
    "allowed_values": ("number", "integer", "string", "boolean"),
}


@dataclass(frozen=True, slots=True)
class ColumnExpectation:
    """What one column's values must satisfy; ``None`` means "not checked"."""

    type: str | None = None
    is_required: bool = True
    max_null_rate: float | None = None
    min_value: float | None = None
    max_value: float | None = None
    allowed_values: tuple[str | int | float | bool, ...] | None = None
    min_length: int | None = None
    max_length: int | None = None
    dim: int | None = None
    min_norm: float | None = None
    max_norm: float | None = None


@dataclass(frozen=True, slots=True)
class Expectations:
    """A deployment's data-quality expectations (immutable once built)."""

    columns: tuple[tuple[str, ColumnExpectation], ...] = ()
    extra_columns: str = "allow"
    """``"allow"`` or ``"forbid"`` columns that ``columns`` does not list."""
    max_duplicate_rate: float | None = None
    duplicate_columns: tuple[str, ...] | None = None
    """Columns that make two rows duplicates; ``None`` means all columns of the data."""
    max_examples: int = 5

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> Expectations:
        """Build from plain data, e.g. ``{"columns": {"age": {"type": "integer"}}}``.

        Raises ``ConfigError`` whose ``field`` is the dotted path (under ``path``) of an
        unknown key or a bad value.
        """
        _expect_mapping(data, path or "<root>")
        known = {f.name for f in fields(cls)}
        _reject_unknown(data, known, path)
        columns_raw = data.get("columns", {})
        _expect_mapping(columns_raw, _join(path, "columns"))
        columns = tuple(
            (str(name), _column_from_dict(spec, _join(path, f"columns.{name}")))
            for name, spec in columns_raw.items()
        )
        extra = data.get("extra_columns", "allow")
        if extra not in ("allow", "forbid"):
            raise ConfigError(
                f"must be 'allow' or 'forbid', got {extra!r}", field=_join(path, "extra_columns")
            )
        dup_cols = data.get("duplicate_columns")
        if dup_cols is not None:
            if not isinstance(dup_cols, list | tuple) or not all(
                isinstance(c, str) for c in dup_cols
            ):
                raise ConfigError(
                    "must be a list of column names", field=_join(path, "duplicate_columns")
                )
            dup_cols = tuple(dup_cols)
        max_examples = data.get("max_examples", 5)
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
            raise ConfigError("must be a non-negative integer", field=_join(path, "max_examples"))
        return cls(
            columns=columns,
            extra_columns=extra,
            max_duplicate_rate=_rate(data, "max_duplicate_rate", path),
            duplicate_columns=dup_cols,
            max_examples=max_examples,
        )


@dataclass(frozen=True, slots=True)
class Example:
    """One offending row: its index in the checked data and its value, as short text."""

    row: int
    value: str


@dataclass(frozen=True, slots=True)
class QualityCheck:
    """The outcome of one expectation."""

    name: str
    """``"<column>.<rule>"``, or ``"table.<rule>"`` for table-wide rules."""
    expectation: str
    is_passed: bool
    observed: float
    """The observed rate (null, duplicate or violation rate) in [0, 1]."""
    num_failing: int
    num_checked: int
    detail: str = ""
    examples: tuple[Example, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "name": self.name,
            "expectation": self.expectation,
            "is_passed": self.is_passed,
            "observed": self.observed,
            "num_failing": self.num_failing,
            "num_checked": self.num_checked,
            "detail": self.detail,
            "examples": [{"row": e.row, "value": e.value} for e in self.examples],
        }


@dataclass(frozen=True, slots=True)
class QualityReport:
    """All checks of one batch of data against one :class:`Expectations`."""

    checks: tuple[QualityCheck, ...]
    num_rows: int

    @property
    def is_passed(self) -> bool:
        """True when every check passed."""
        return all(c.is_passed for c in self.checks)

    @property
    def failed(self) -> tuple[QualityCheck, ...]:
        """The checks that failed, in report order."""
        return tuple(c for c in self.checks if not c.is_passed)

    def check(self, name: str) -> QualityCheck:
        """The check called ``name``; raises ``KeyError`` for an unknown one."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "is_passed": self.is_passed,
            "num_rows": self.num_rows,
            "failed": [c.name for c in self.failed],
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        """The report as a strict JSON document."""
        return json.dumps(self.to_dict(), allow_nan=False)


def check_quality(
    data: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
    expectations: Expectations,
) -> QualityReport:
    """Check ``data`` (a list of row dicts, or a dict of equal-length columns).

    A key missing from a row counts as a null. Raises ``InvalidInput`` for data of
    another shape, columns of unequal length, or no rows at all.
    """
    columns, num_rows = _as_columns(data)
    if num_rows == 0:
        raise InvalidInput("no rows to check; at least 1 is needed", field="data")
    limit = expectations.max_examples
    checks: list[QualityCheck] = []
    listed = {name for name, _ in expectations.columns}
    if expectations.extra_columns == "forbid":
        extra = [c for c in columns if c not in listed]
        checks.append(
            QualityCheck(
                name="table.extra_columns",
                expectation="no columns beyond those listed",
                is_passed=not extra,
                observed=len(extra) / max(1, len(columns)),
                num_failing=len(extra),
                num_checked=len(columns),
                detail=f"unexpected columns: {extra[:limit]}" if extra else "",
            )
        )
    for name, spec in expectations.columns:
        if name not in columns:
            if spec.is_required:
                checks.append(
                    QualityCheck(
                        f"{name}.present", "column is present", False, 1.0, 1, 1, "missing"
                    )
                )
            continue
        if spec.is_required:
            checks.append(QualityCheck(f"{name}.present", "column is present", True, 0.0, 0, 1))
        checks.extend(_column_checks(name, columns[name], spec, limit))
    if expectations.max_duplicate_rate is not None:
        checks.append(_duplicates(columns, num_rows, expectations, limit))
    return QualityReport(checks=tuple(checks), num_rows=num_rows)


def _column_checks(
    name: str, values: Sequence[Any], spec: ColumnExpectation, limit: int
) -> list[QualityCheck]:
    """Every configured rule of one present column."""
    present = [(i, v) for i, v in enumerate(values) if not _is_null(v)]
    checks: list[QualityCheck] = []
    if spec.max_null_rate is not None:
        nulls = len(values) - len(present)
        rate = nulls / len(values)
        checks.append(
            QualityCheck(
                f"{name}.null_rate",
                f"null rate ≤ {spec.max_null_rate:g}",
                rate <= spec.max_null_rate,
                rate,
                nulls,
                len(values),
                examples=tuple(Example(i, "null") for i, v in enumerate(values) if _is_null(v))[
                    :limit
                ],
            )
        )
    typed = present
    if spec.type is not None:
        kind, dim = spec.type, spec.dim
        typed = [(i, v) for i, v in present if _has_type(v, kind, dim)]
        wanted = kind if dim is None else f"embedding of {dim} dimensions"
        checks.append(
            _rule(name, "type", f"values are {wanted}", present,
                  lambda v: _has_type(v, kind, dim), limit)
        )  # fmt: skip
    if spec.min_value is not None or spec.max_value is not None:
        numbers = [(i, v) for i, v in typed if _is_number(v)]
        low = -math.inf if spec.min_value is None else spec.min_value
        high = math.inf if spec.max_value is None else spec.max_value
        detail = ""
        if numbers:
            detail = (
                f"observed min {min(float(v) for _, v in numbers):g}, "
                f"max {max(float(v) for _, v in numbers):g}"
            )
        checks.append(
            _rule(
                name, "range", f"value in [{low:g}, {high:g}]", numbers,
                lambda v: low <= float(v) <= high, limit, detail=detail,
            )
        )  # fmt: skip
    if spec.allowed_values is not None:
        allowed = {_tagged(a) for a in spec.allowed_values}
        scalars = [(i, v) for i, v in typed if not _is_vector(v)]
        checks.append(
            _rule(
                name, "allowed_values", f"value in {list(spec.allowed_values)}", scalars,
                lambda v: _is_scalar(v) and _tagged(v) in allowed, limit,
            )
        )  # fmt: skip
    if spec.min_length is not None or spec.max_length is not None:
        lo_len = spec.min_length or 0
        hi_len = spec.max_length
        texts = [(i, v) for i, v in typed if isinstance(v, str)]
        shown = "∞" if hi_len is None else str(hi_len)
        checks.append(
            _rule(
                name, "length", f"text length in [{lo_len}, {shown}] characters", texts,
                lambda v: lo_len <= len(v) and (hi_len is None or len(v) <= hi_len), limit,
            )
        )  # fmt: skip
    if spec.min_norm is not None or spec.max_norm is not None:
        lo_norm = -math.inf if spec.min_norm is None else spec.min_norm
        hi_norm = math.inf if spec.max_norm is None else spec.max_norm
        norms = [
            (i, float(np.linalg.norm(np.asarray(v, dtype=np.float64))))
            for i, v in typed
            if _is_vector(v)
        ]
        checks.append(
            _rule(
                name, "norm", f"L2 norm in [{lo_norm:g}, {hi_norm:g}]", norms,
                lambda v: lo_norm <= v <= hi_norm, limit,
            )
        )  # fmt: skip
    return checks


def _rule(
    column: str,
    rule: str,
    expectation: str,
    items: Sequence[tuple[int, Any]],
    is_ok: Callable[[Any], bool],
    limit: int,
    *,
    detail: str = "",
) -> QualityCheck:
    """A strict rule: every checked value must pass ``is_ok``."""
    failing = [(i, v) for i, v in items if not is_ok(v)]
    return QualityCheck(
        name=f"{column}.{rule}",
        expectation=expectation,
        is_passed=not failing,
        observed=len(failing) / len(items) if items else 0.0,
        num_failing=len(failing),
        num_checked=len(items),
        detail=detail,
        examples=tuple(Example(i, _short(v)) for i, v in failing[:limit]),
    )


def _duplicates(
    columns: Mapping[str, Sequence[Any]], num_rows: int, exp: Expectations, limit: int
) -> QualityCheck:
    """Rows equal, on the duplicate columns, to an earlier row."""
    names = list(exp.duplicate_columns) if exp.duplicate_columns is not None else list(columns)
    absent = [n for n in names if n not in columns]
    first_seen: dict[tuple[Any, ...], int] = {}
    examples: list[Example] = []
    num_dup = 0
    for row in range(num_rows):
        key = tuple(_hashable(columns[n][row]) if n in columns else None for n in names)
        earlier = first_seen.setdefault(key, row)
        if earlier != row:
            num_dup += 1
            if len(examples) < limit:
                examples.append(Example(row, f"same as row {earlier}"))
    rate = num_dup / num_rows
    threshold = exp.max_duplicate_rate if exp.max_duplicate_rate is not None else 1.0
    return QualityCheck(
        name="table.duplicate_rate",
        expectation=f"duplicate-row rate ≤ {threshold:g} on {names}",
        is_passed=rate <= threshold,
        observed=rate,
        num_failing=num_dup,
        num_checked=num_rows,
        detail=f"columns absent from the data: {absent}" if absent else "",
        examples=tuple(examples),
    )


def _as_columns(
    data: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]],
) -> tuple[dict[str, Sequence[Any]], int]:
    if isinstance(data, Mapping):
        lengths = {name: len(values) for name, values in data.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidInput(f"columns differ in length: {lengths}", field="data")
        return dict(data), next(iter(lengths.values()), 0)
    if isinstance(data, str | bytes) or not isinstance(data, Sequence):
        raise InvalidInput(
            "data must be a list of row mappings or a mapping of columns", field="data"
        )
    names: dict[str, None] = {}
    for i, row in enumerate(data):
        if not isinstance(row, Mapping):
            raise InvalidInput(
                f"row {i} is a {type(row).__name__}, not a mapping", field=f"data[{i}]"
            )
        names.update(dict.fromkeys(row))
    columns: dict[str, Sequence[Any]] = {name: [row.get(name) for row in data] for name in names}
    return columns, len(data)


def _column_from_dict(spec: Any, path: str) -> ColumnExpectation:
    _expect_mapping(spec, path)
    _reject_unknown(spec, {f.name for f in fields(ColumnExpectation)}, path)
    kind = spec.get("type")
    if kind is not None and kind not in COLUMN_TYPES:
        raise ConfigError(
            f"must be one of {', '.join(COLUMN_TYPES)}, got {kind!r}", field=f"{path}.type"
        )
    if kind is not None:
        for key, types in _RULES_BY_TYPE.items():
            if key in spec and spec[key] is not None and kind not in types:
                raise ConfigError(f"{key} does not apply to a {kind} column", field=f"{path}.{key}")
    required = spec.get("is_required", True)
    if not isinstance(required, bool):
        raise ConfigError("must be true or false", field=f"{path}.is_required")
    allowed = spec.get("allowed_values")
    if allowed is not None:
        if not isinstance(allowed, list | tuple) or not all(
            isinstance(v, str | int | float | bool) for v in allowed
        ):
            raise ConfigError(
                "must be a list of strings, numbers or booleans", field=f"{path}.allowed_values"
            )
        allowed = tuple(allowed)
    result = ColumnExpectation(
        type=kind,
        is_required=required,
        max_null_rate=_rate(spec, "max_null_rate", path),
        min_value=_number(spec, "min_value", path),
        max_value=_number(spec, "max_value", path),
        allowed_values=allowed,
        min_length=_count(spec, "min_length", path),
        max_length=_count(spec, "max_length", path),
        dim=_count(spec, "dim", path),
        min_norm=_number(spec, "min_norm", path),
        max_norm=_number(spec, "max_norm", path),
    )
    for low, high in (("min_value", "max_value"), ("min_length", "max_length"),
                      ("min_norm", "max_norm")):  # fmt: skip
        lo, hi = getattr(result, low), getattr(result, high)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{low} {lo} is above {high} {hi}", field=f"{path}.{low}")
    return result


def _reject_unknown(data: Mapping[str, Any], known: set[str], path: str) -> None:
    for key in data:
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r}; expected one of {', '.join(sorted(known))}",
                field=_join(path, str(key)),
            )


def _expect_mapping(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"must be a mapping, got {type(value).__name__}", field=path)


def _rate(data: Mapping[str, Any], key: str, path: str) -> float | None:
    value = _number(data, key, path)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigError(f"must be in [0, 1], got {value}", field=_join(path, key))
    return value


def _number(data: Mapping[str, Any], key: str, path: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"must be a finite number, got {value!r}", field=_join(path, key))
    return float(value)


def _count(data: Mapping[str, Any], key: str, path: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"must be a non-negative integer, got {value!r}", field=_join(path, key))
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _has_type(value: Any, kind: str, dim: int | None) -> bool:
    if kind == "number":
        return _is_number(value)
    if kind == "integer":
        return isinstance(value, int | np.integer) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool | np.bool_)
    return _is_vector(value) and (dim is None or len(value) == dim)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | np.generic)


def _tagged(value: Any) -> tuple[bool, Any]:
    """A set key that keeps booleans apart from numbers (in Python ``True == 1``)."""
    if isinstance(value, np.generic):
        value = value.item()
    return (isinstance(value, bool), value)


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, Real | np.number) and not isinstance(value, bool | np.bool_)


def _is_vector(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iuf"
    return isinstance(value, list | tuple) and all(_is_number(x) for x in value)


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return ("<array>", *value.tolist())
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if _is_null(value):
        return None
    return value


def _short(value: Any) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= MAX_EXAMPLE_CHARS else text[: MAX_EXAMPLE_CHARS - 1] + "…"
