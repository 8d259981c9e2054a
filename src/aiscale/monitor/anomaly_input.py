"""The input layer of the anomaly detectors: real metric streams as they come.

What it does: ``GuardedDetector`` wraps any detector with the same ``update(now_s, value)``
contract and gives every kind of imperfect input one defined behaviour, the same for
``aiscale detect`` (``detect_csv``) and for the live monitor (``make_detector`` returns guarded
detectors, so the monitor gets it through the calls it already makes):

==========================================  ==============================================
input                                       behaviour
==========================================  ==============================================
value missing, empty, NaN, +-inf, or not a  skipped with a count: not learnt, scores 0.0
number (CSV)                                (``aiscale detect`` leaves its score cell empty)
timestamp earlier than the previous one     scored in arrival order, counted, warned once
(clock stepped back, unsorted file)
timestamp equal to the previous one         scored in arrival order, counted, warned once
gap over ``GAP_FACTOR`` typical intervals   scored in arrival order (a restart that moves
(outage, restart)                           the level is an anomaly to report), counted
==========================================  ==============================================

Errors that name the row (bad timestamps, short rows, missing columns, empty files) belong to
the CSV reader in ``anomaly.py``: a live sample always has a time.

What it must never do: drop or reorder a point (one score per point, in arrival order), let a
skipped point shift the scores of the others, or raise on a value it can classify. Warnings are
logged once per kind and counted in ``InputCounts`` (controllers log changes, not ticks).
"""

from __future__ import annotations

import logging
import math
from bisect import insort
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)

#: An interval over this many times the typical one (median of the recent ones) is a gap.
GAP_FACTOR = 10.0
_NUM_INTERVALS = 31
#: Rows named in a report of one kind; the count has them all.
MAX_ROWS_NAMED = 5


class PointDetector(Protocol):
    """What ``GuardedDetector`` wraps (``StreamingDetector`` in ``anomaly.py``)."""

    def update(self, now_s: float, value: float) -> float: ...


@dataclass(frozen=True, slots=True)
class InputCounts:
    """What the input layer saw; row numbers are the caller's (``row`` argument), in order."""

    num_points: int
    num_scored: int
    num_skipped: int
    num_steps_back: int
    num_repeated_times: int
    num_gaps: int
    largest_step_back_s: float
    skipped_rows: tuple[int, ...]
    step_back_rows: tuple[int, ...]
    repeated_time_rows: tuple[int, ...]
    gap_rows: tuple[int, ...]

    def warnings(self) -> list[str]:
        """One human sentence per kind of imperfect input seen (empty when none)."""
        out = []

        def rows(named: tuple[int, ...], count: int) -> str:
            listed = ", ".join(str(r) for r in named)
            return listed + (", ..." if count > len(named) else "")

        if self.num_skipped:
            out.append(f"skipped {self.num_skipped} row(s) with a missing or non-numeric value "
                       "(not learnt, no score): row(s) "
                       f"{rows(self.skipped_rows, self.num_skipped)}")
        if self.num_steps_back:
            out.append(f"{self.num_steps_back} row(s) earlier than the previous row (clock step "
                       f"or unsorted input; largest step back {self.largest_step_back_s:g} s), "
                       f"scored in arrival order: row(s) "
                       f"{rows(self.step_back_rows, self.num_steps_back)}")
        if self.num_repeated_times:
            out.append(f"{self.num_repeated_times} row(s) repeat the previous timestamp, scored "
                       f"in arrival order: row(s) "
                       f"{rows(self.repeated_time_rows, self.num_repeated_times)}")
        if self.num_gaps:
            out.append(f"{self.num_gaps} gap(s) over {GAP_FACTOR:g}x the typical interval, "
                       f"scored in arrival order: row(s) {rows(self.gap_rows, self.num_gaps)}")
        return out


class GuardedDetector:
    """A detector behind the input rules of the module docstring; same ``update`` contract.

    ``update`` returns the wrapped detector's score, or 0.0 for a skipped point. ``observe``
    returns ``None`` instead of 0.0 for a skipped point, for callers that can show "no score".
    """

    def __init__(self, detector: PointDetector) -> None:
        self.detector = detector
        self._num_points = 0
        self._num_scored = 0
        self._last_t: float | None = None
        self._intervals: list[float] = []  # sorted, the last _NUM_INTERVALS positive ones
        self._recent: list[float] = []  # the same, in arrival order
        self._largest_back_s = 0.0
        self._counts: dict[str, int] = {"skipped": 0, "back": 0, "repeat": 0, "gap": 0}
        self._rows: dict[str, list[int]] = {k: [] for k in self._counts}

    def update(self, now_s: float, value: float) -> float:
        """Score of this point in [0, 1]; 0.0 when the value is skipped (not finite)."""
        score = self.observe(now_s, value)
        return 0.0 if score is None else score

    def observe(self, now_s: float, value: float | None, row: int | None = None) -> float | None:
        """Score of this point, or ``None`` when the value is missing or not finite (skipped).

        ``row`` names the point in warnings (default: its 1-based position in the stream).
        """
        self._num_points += 1
        row_no = self._num_points if row is None else row
        now_s = float(now_s)
        if value is None or not math.isfinite(value):
            self._note("skipped", row_no, "skipping a missing or non-finite value at row %d")
            return None
        self._check_time(now_s, row_no)
        self._num_scored += 1
        return self.detector.update(now_s, float(value))

    def counts(self) -> InputCounts:
        c, r = self._counts, self._rows
        return InputCounts(
            num_points=self._num_points, num_scored=self._num_scored,
            num_skipped=c["skipped"], num_steps_back=c["back"], num_repeated_times=c["repeat"],
            num_gaps=c["gap"], largest_step_back_s=self._largest_back_s,
            skipped_rows=tuple(r["skipped"]), step_back_rows=tuple(r["back"]),
            repeated_time_rows=tuple(r["repeat"]), gap_rows=tuple(r["gap"]))

    def _check_time(self, now_s: float, row_no: int) -> None:
        last = self._last_t
        self._last_t = now_s
        if last is None:
            return
        gap = now_s - last
        if gap < 0:
            self._largest_back_s = max(self._largest_back_s, -gap)
            self._note("back", row_no, "row %d is earlier than the previous one; scoring in "
                       "arrival order")
        elif gap == 0:
            self._note("repeat", row_no, "row %d repeats the previous timestamp; scoring in "
                       "arrival order")
        else:
            if len(self._intervals) >= 3:
                typical = self._intervals[len(self._intervals) // 2]
                if gap > GAP_FACTOR * typical:
                    self._note("gap", row_no, "gap before row %d; scoring in arrival order")
            self._recent.append(gap)
            insort(self._intervals, gap)
            if len(self._recent) > _NUM_INTERVALS:
                self._intervals.remove(self._recent.pop(0))

    def _note(self, kind: str, row_no: int, message: str) -> None:
        self._counts[kind] += 1
        if len(self._rows[kind]) < MAX_ROWS_NAMED:
            self._rows[kind].append(row_no)
        if self._counts[kind] == 1:  # once per kind and stream: the counts say the rest
            logger.warning(message, row_no)
