"""Column kinds for drift tests: inferring them, and checking and cleaning values per kind.

Every problem with the caller's data is raised here as ``InvalidInput`` whose ``field`` is
the column name, and whose message says what was wrong and, for short samples, how many
values are needed.

This module must never do I/O, read a clock or use randomness.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

from aiscale.errors import InvalidInput

#: One column of a table: a value per row (``None`` or NaN for null). A numpy array works
#: too: 1-D for numbers or booleans, 2-D (rows × dimensions) for embeddings.
Column = Sequence[Any] | NDArray[Any]

#: Column kinds, each with its own test (see ``drift.py``).
KINDS = ("numeric", "categorical", "boolean", "text", "embedding")

#: Non-null values needed on each side of a test by default.
MIN_SAMPLES = 10

#: A string column with at most this many distinct values (and few tokens) is categorical.
MAX_CATEGORIES = 50

#: A string column whose values average this many whitespace tokens or more is text.
MIN_TEXT_TOKENS = 3.0


def check_tables(
    reference: Mapping[str, Column],
    current: Mapping[str, Column],
    min_samples: int = MIN_SAMPLES,
) -> None:
    """Raise ``InvalidInput`` unless both tables have the same columns, each of one length."""
    if not reference:
        raise InvalidInput("the reference has no columns", field="reference")
    if not current:
        raise InvalidInput("the current window has no columns", field="current")
    missing = [c for c in reference if c not in current]
    extra = [c for c in current if c not in reference]
    if missing or extra:
        raise InvalidInput(
            "reference and current must have the same columns; "
            f"missing from current: {missing or 'none'}, not in reference: {extra or 'none'}",
            field=(missing or extra)[0],
        )
    for side, table in (("reference", reference), ("current", current)):
        lengths = {name: len(values) for name, values in table.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidInput(
                f"{side} columns differ in length (one value per row expected): {lengths}",
                field=side,
            )
        if not next(iter(lengths.values())):
            raise InvalidInput(
                f"the {side} sample is empty; at least {min_samples} rows are needed", field=side
            )


def infer_kind(name: str, values: Column) -> str:
    """The kind of a column from its non-null reference values.

    bool → boolean; int/float → numeric; a vector of numbers → embedding; strings →
    categorical when they are short (fewer than :data:`MIN_TEXT_TOKENS` tokens on average)
    and take few distinct values (at most :data:`MAX_CATEGORIES`, and at most half the
    rows), otherwise text. Pass ``kinds`` to :func:`detect_drift` when the guess is wrong.
    """
    if isinstance(values, np.ndarray):
        if values.ndim == 2 and values.dtype.kind in "iuf":
            return "embedding"
        if values.ndim == 1 and values.dtype.kind == "b":
            return "boolean"
        if values.ndim == 1 and values.dtype.kind in "iuf":
            return "numeric"
    present = [v for v in values if not _is_null(v)]
    if not present:
        raise InvalidInput(f"column {name!r} has only nulls; cannot infer its kind", field=name)
    if all(isinstance(v, bool | np.bool_) for v in present):
        return "boolean"
    if all(_is_number(v) for v in present):
        return "numeric"
    if all(isinstance(v, str) for v in present):
        distinct = len(set(present))
        mean_tokens = sum(len(v.split()) for v in present) / len(present)
        is_few = distinct <= MAX_CATEGORIES and distinct <= max(2, len(present) // 2)
        return "categorical" if is_few and mean_tokens < MIN_TEXT_TOKENS else "text"
    if all(_is_vector(v) for v in present):
        return "embedding"
    kinds = sorted({type(v).__name__ for v in present})
    raise InvalidInput(
        f"cannot infer the kind of column {name!r} from value types {kinds}; pass kinds",
        field=name,
    )


def numeric_values(name: str, side: str, values: Column, min_samples: int) -> NDArray[np.float64]:
    """Finite floats with nulls (``None``, NaN) dropped."""
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "iuf":
        array = values.astype(np.float64)
        array = array[~np.isnan(array)]
    else:
        kept: list[float] = []
        for i, v in enumerate(values):
            if _is_null(v):
                continue
            if not _is_number(v):
                raise InvalidInput(
                    f"column {name!r} is numeric but {side} row {i} holds {v!r}", field=name
                )
            kept.append(float(v))
        array = np.asarray(kept, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"column {name!r}: {side} holds an infinite value", field=name)
    _check_count(name, side, array.size, min_samples)
    return array


def categorical_values(
    name: str, side: str, values: Column, kind: str, min_samples: int
) -> list[Hashable]:
    """Hashable categories; nulls become ``None``, a category of their own."""
    kept: list[Hashable] = []
    for i, v in enumerate(values):
        if _is_null(v):
            kept.append(None)
            continue
        if kind == "boolean":
            if not isinstance(v, bool | np.bool_):
                raise InvalidInput(
                    f"column {name!r} is boolean but {side} row {i} holds {v!r}", field=name
                )
            kept.append(bool(v))
        elif isinstance(v, Hashable) and not isinstance(v, float | np.floating):
            kept.append(v.item() if isinstance(v, np.generic) else v)
        else:
            raise InvalidInput(
                f"column {name!r} is categorical but {side} row {i} holds {v!r} "
                "(categories are strings, integers or booleans)",
                field=name,
            )
    _check_count(name, side, len(kept), min_samples)
    return kept


def text_values(name: str, side: str, values: Column, min_samples: int) -> list[str]:
    """Strings with nulls dropped."""
    kept: list[str] = []
    for i, v in enumerate(values):
        if _is_null(v):
            continue
        if not isinstance(v, str):
            raise InvalidInput(
                f"column {name!r} is text but {side} row {i} holds {v!r}", field=name
            )
        kept.append(v)
    _check_count(name, side, len(kept), min_samples)
    return kept


def embedding_values(name: str, side: str, values: Column, min_samples: int) -> NDArray[np.float64]:
    """An ``(n, d)`` float array of the non-null vectors, all of one finite dimension."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        array = values.astype(np.float64)
    else:
        rows: list[NDArray[np.float64]] = []
        dim: int | None = None
        for i, v in enumerate(values):
            if v is None:
                continue
            if not _is_vector(v):
                raise InvalidInput(
                    f"column {name!r} is an embedding but {side} row {i} holds {type(v).__name__}",
                    field=name,
                )
            row = np.asarray(v, dtype=np.float64)
            if dim is None:
                dim = row.size
            elif row.size != dim:
                raise InvalidInput(
                    f"column {name!r}: {side} row {i} has {row.size} dimensions, "
                    f"earlier rows {dim}",
                    field=name,
                )
            rows.append(row)
        array = np.stack(rows) if rows else np.empty((0, 1))
    if array.shape[1] == 0 or not np.all(np.isfinite(array)):
        raise InvalidInput(
            f"column {name!r}: {side} embeddings must be non-empty finite vectors", field=name
        )
    _check_count(name, side, array.shape[0], min_samples)
    return array


def _check_count(name: str, side: str, count: int, min_samples: int) -> None:
    if count < min_samples:
        raise InvalidInput(
            f"column {name!r}: the {side} sample has {count} non-null values; "
            f"at least {min_samples} are needed",
            field=name,
        )


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _is_number(value: object) -> bool:
    return isinstance(value, Real | np.number) and not isinstance(value, bool | np.bool_)


def _is_vector(value: object) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1 and value.dtype.kind in "iuf"
    return isinstance(value, list | tuple) and bool(value) and all(_is_number(x) for x in value)
