"""Arrival times for load: real traces read from CSV, and Poisson arrivals.

``load_arrivals`` reads a CSV with a ``TIMESTAMP`` column (datetime strings such as
``2023-11-16 18:15:46.6805900``, or plain numbers of seconds) and returns arrival offsets in
seconds from the first arrival, sorted, optionally scaled in rate and in time and cut to a
duration. The load generator replays them; the simulator uses the same function.

This module never reads the clock and never uses global randomness: ``poisson_arrivals`` takes
an injected ``random.Random``.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from aiscale.errors import InvalidInput

__all__ = ["load_arrivals", "parse_timestamp", "poisson_arrivals"]

_COLUMN = "TIMESTAMP"


def load_arrivals(
    path: str | Path,
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    duration_s: float | None = None,
) -> list[float]:
    """Return the arrival offsets (seconds from the first arrival, ascending) of a CSV trace.

    Each gap is multiplied by ``time_scale / rate_scale``: ``rate_scale=2`` doubles the arrival
    rate (halves every gap), ``time_scale=2`` stretches the time axis (doubles every gap). After
    scaling, arrivals at or after ``duration_s`` are dropped.

    Raises ``InvalidInput`` (field ``trace``) for a missing or unreadable file, a file without a
    ``TIMESTAMP`` column, an empty trace, or a row whose timestamp cannot be parsed (the message
    names the line number, counting the header as line 1).
    """
    _require_positive("rate_scale", rate_scale)
    _require_positive("time_scale", time_scale)
    if duration_s is not None:
        _require_positive("duration_s", duration_s)
    raw = _read_timestamps(Path(path))
    if not raw:
        raise InvalidInput(f"trace {path} has no rows", field="trace")
    raw.sort()
    first = raw[0]
    factor = time_scale / rate_scale
    arrivals = [(t - first) * factor for t in raw]
    if duration_s is not None:
        arrivals = [t for t in arrivals if t < duration_s]
    return arrivals


def poisson_arrivals(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Return Poisson arrival times (s, ascending) at ``rate`` per second in ``[0, duration_s)``.

    Gaps are exponential with mean ``1 / rate``, drawn from the injected ``rng``, so the same
    seed gives the same arrivals. Raises ``InvalidInput`` if ``rate`` or ``duration_s`` is not
    positive.
    """
    _require_positive("rate", rate)
    _require_positive("duration_s", duration_s)
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return arrivals


def _require_positive(name: str, value: float) -> None:
    if not value > 0:  # also rejects NaN
        raise InvalidInput(f"{name} must be > 0, got {value}", field=name)


def _read_timestamps(path: Path) -> list[float]:
    """Read the TIMESTAMP column as seconds relative to the first row's date (keeps precision)."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read trace {path}: {exc.strerror}", field="trace") from exc
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise InvalidInput(f"trace {path} is empty", field="trace")
        names = [name.strip().upper() for name in header]
        if _COLUMN not in names:
            raise InvalidInput(
                f"trace {path} has no {_COLUMN} column (columns: {', '.join(header)})",
                field="trace",
            )
        column = names.index(_COLUMN)
        base_day: int | None = None
        out: list[float] = []
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            if column >= len(row):
                raise InvalidInput(
                    f"trace {path} line {line}: missing {_COLUMN} value", field="trace"
                )
            text = row[column].strip()
            try:
                day, seconds = parse_timestamp(text)
            except ValueError:
                raise InvalidInput(
                    f"trace {path} line {line}: cannot parse {_COLUMN} {text!r}", field="trace"
                ) from None
            if base_day is None:
                base_day = day
            out.append((day - base_day) * 86400.0 + seconds)
    return out


def parse_timestamp(text: str) -> tuple[int, float]:
    """Split a timestamp into (day ordinal, seconds within that day).

    Accepts ``YYYY-MM-DD HH:MM:SS[.fraction]`` (``T`` separator allowed, any number of fraction
    digits: Azure traces carry 7) and plain numbers of seconds (day ordinal 0). Raises
    ``ValueError`` for anything else. Days and seconds are kept apart so that sub-microsecond
    fractions survive the float arithmetic.
    """
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            raise ValueError(text)
        return 0, seconds
    date_part, sep, time_part = text.replace("T", " ", 1).partition(" ")
    if not sep:
        raise ValueError(text)
    day = dt.date.fromisoformat(date_part).toordinal()
    hours, minutes, secs = time_part.strip().split(":")
    h, m, s = int(hours), int(minutes), float(secs)
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
        raise ValueError(text)
    return day, h * 3600.0 + m * 60.0 + s
