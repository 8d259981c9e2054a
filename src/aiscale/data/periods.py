"""Time windows over captured data, written the way people type them on a command line.

A *time* is an ISO 8601 date or date-time (``2024-05-01``, ``2024-05-01T12:00``, with or
without a zone; no zone means UTC), ``now``, or an age: a number and a unit ``s``, ``m``,
``h``, ``d`` or ``w`` (``90m``, ``24h``, ``7d``), meaning that long before ``now``.
A *period* is ``START..END`` (either side may be empty: open), or one age alone (``24h`` is
the last 24 hours, up to now).

This module is pure: ``now`` is always passed in by the caller (the CLI reads the clock).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from aiscale.errors import InvalidInput

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open window ``[start, end)`` of UTC times; ``None`` leaves a side open."""

    start: dt.datetime | None
    end: dt.datetime | None

    def describe(self) -> str:
        """The window as text for reports and messages."""
        start = self.start.isoformat() if self.start else "the beginning"
        end = self.end.isoformat() if self.end else "now"
        return f"{start} .. {end}"


def parse_time(text: str, now: dt.datetime, *, field: str = "time") -> dt.datetime:
    """A UTC time from ``text`` (see the module docstring); ``InvalidInput`` names ``field``."""
    value = text.strip()
    if value.lower() == "now":
        return now
    age = _AGE.match(value)
    if age is not None:
        return now - dt.timedelta(seconds=float(age.group(1)) * _UNIT_S[age.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"{text!r} is not a time: use an ISO date or date-time (2024-05-01T12:00), "
            "'now', or an age such as 30m, 24h or 7d",
            field=field,
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def parse_period(text: str, now: dt.datetime, *, field: str = "period") -> Period:
    """A :class:`Period` from ``START..END`` or a lone age; ``InvalidInput`` names ``field``."""
    if ".." not in text:
        if _AGE.match(text) is None:
            raise InvalidInput(
                f"{text!r} is not a period: use START..END (ISO times or ages, either side "
                "may be empty) or an age such as 24h",
                field=field,
            )
        return Period(parse_time(text, now, field=field), None)
    start_text, _, end_text = text.partition("..")
    start = parse_time(start_text, now, field=field) if start_text.strip() else None
    end = parse_time(end_text, now, field=field) if end_text.strip() else None
    if start is not None and end is not None and start >= end:
        raise InvalidInput(
            f"the period {text!r} is empty: its start is not before its end", field=field
        )
    return Period(start, end)
