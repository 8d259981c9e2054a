"""How far the interleaved repeats of one ``aiscale profile`` run agreed, figure by figure.

On a shared virtual machine the model's speed moves within minutes (two profiles taken
minutes apart differed by 2x at batch 128), so one measurement of a figure can be a slow
minute's. ``aiscale profile`` therefore measures every figure ``--repeats`` times, the
repeats interleaved (model alone, then the server's pass; again; again), stores each figure's
median, and records here the median with the range of its repeats. ``simulate`` and ``plan``
refuse a profile whose *checked* figures spread more than ``STEADY_REPEAT_SPREAD``
(``RepeatRecord.unsteadiness``) unless told to accept it.

Checked figures are those the capacity follows from: the model-alone latency at each batch
size (of 1 ms or more: below that it is timer jitter, and the server sets the capacity) and
the throughput the server sustains at full batches. Latency figures (the mean
per-request overhead at each load level, the in-server slowdown at light load) are recorded
and shown, not checked: on this project's machines they spread by tens of percent between
the passes of even a quiet calibration (``benchmarks/simulator/RESULTS.md``), and a plan's
replica count does not follow from them.

Pure values and arithmetic: no I/O, no clock. ``profile.py`` stores the record;
``profiling.py`` and ``calibration.py`` make the figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiscale.errors import ConfigError

#: Largest (max - min) / median of a checked figure over the repeats for a steady profile.
#: On a quiet machine three repeats of the model-alone latency agree within a few percent;
#: 15% is about four standard deviations of such a range, and well under the 2x seen
#: between profiles taken minutes apart.
STEADY_REPEAT_SPREAD = 0.15
#: The fewest repeats a spread says anything about.
MIN_REPEATS = 2


@dataclass(frozen=True, slots=True)
class FigureSpread:
    """One figure over the repeats: the median that was stored, and the lowest and highest
    repeat. ``is_checked``: the steadiness check looks at it (module docstring)."""

    name: str
    median: float
    low: float
    high: float
    is_checked: bool

    def __post_init__(self) -> None:
        values = (self.median, self.low, self.high)
        if not all(math.isfinite(v) for v in values) or not self.low <= self.median <= self.high:
            raise ConfigError(
                f"figure {self.name!r} needs finite low <= median <= high", field="repeats.figures"
            )

    @property
    def relative_spread(self) -> float:
        """``(high - low) / |median|``; 0 for a median of 0."""
        return (self.high - self.low) / abs(self.median) if self.median else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "checked": self.is_checked,
        }


def figure_of(name: str, values: Sequence[float], *, is_checked: bool) -> FigureSpread:
    """The ``FigureSpread`` of one figure's repeated values (at least one)."""
    if not values:
        raise ValueError(f"figure {name!r} has no values")
    return FigureSpread(
        name=name,
        median=float(statistics.median(values)),
        low=float(min(values)),
        high=float(max(values)),
        is_checked=is_checked,
    )


@dataclass(frozen=True, slots=True)
class RepeatRecord:
    """The repeats of one profile run: how many, and each figure's spread."""

    count: int
    figures: tuple[FigureSpread, ...]

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError("repeats.count must be >= 1", field="repeats.count")

    @property
    def is_informative(self) -> bool:
        """Whether there were enough repeats for a spread to mean anything."""
        return self.count >= MIN_REPEATS

    def widest(self, *, is_checked: bool = True) -> FigureSpread | None:
        """The (checked) figure with the largest relative spread, if any."""
        found = [f for f in self.figures if f.is_checked or not is_checked]
        return max(found, key=lambda f: f.relative_spread, default=None)

    def unsteadiness(self, threshold: float = STEADY_REPEAT_SPREAD) -> str | None:
        """Why the repeats disagree, or None: every checked figure whose relative spread is
        over ``threshold``, widest first."""
        over = sorted(
            (f for f in self.figures if f.is_checked and f.relative_spread > threshold),
            key=lambda f: -f.relative_spread,
        )
        if not over:
            return None
        shown = ", ".join(
            f"{f.name} {f.low:.4g}-{f.high:.4g} ({f.relative_spread:.0%})" for f in over[:3]
        )
        more = f" and {len(over) - 3} more" if len(over) > 3 else ""
        return f"its {self.count} repeats spread more than {threshold:.0%}: {shown}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "figures": [f.to_dict() for f in self.figures]}

    @classmethod
    def from_dict(cls, data: Any) -> RepeatRecord:
        if not isinstance(data, Mapping) or set(data) != {"count", "figures"}:
            raise ConfigError(
                "repeats must be null or an object with 'count' and 'figures'", field="repeats"
            )
        try:
            figures = tuple(
                FigureSpread(
                    name=str(item["name"]),
                    median=float(item["median"]),
                    low=float(item["low"]),
                    high=float(item["high"]),
                    is_checked=bool(item["checked"]),
                )
                for item in data["figures"]
            )
            count = int(data["count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad profile value in repeats: {exc}", field="repeats") from exc
        return cls(count, figures)
