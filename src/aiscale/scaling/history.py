"""The arrival history a live autoscaler keeps: counts in evenly spaced bins, a week at most.

The predictive policy forecasts from ``(bin_start_s, count)`` pairs (``ScalingObservation.
arrival_history``). The simulator bins its arrivals up front (``plan._simcore.CountsHistory``);
a live loop only sees cumulative arrival counts at its ticks, so it adds each tick's arrivals
here, spread over the bins the tick's interval covers (in proportion to the overlap: the
arrivals' times inside one interval are unknown). Only complete bins are shown, so a decision
never sees a half-filled bin as a drop in load.

Bounded: a ring of at most ``max_bins`` counts (8 bytes each); with the default of 2**17 a
5 s bin keeps 7.6 days, a 0.5 s bin about 18 hours. Bins are aligned to multiples of
``bin_s`` on the loop's monotonic clock; a gap (no tick for a while) is filled with zeros.

Pure bookkeeping: no clock, no I/O; the caller passes every time in. Standard library only.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

__all__ = ["DEFAULT_MAX_BINS", "WEEK_S", "ArrivalHistory"]

WEEK_S = 7 * 86_400.0
#: 1 MiB of counts per history.
DEFAULT_MAX_BINS = 2**17


class ArrivalHistory(Sequence[tuple[float, float]]):
    """``(bin_start_s, count)`` of the complete bins, oldest first (a read-only sequence).

    ``add(t0_s, t1_s, count)`` records ``count`` arrivals seen over ``[t0_s, t1_s)``; the
    sequence then holds every bin that ends at or before ``t1_s``, a week (or ``max_bins``)
    at most.
    """

    def __init__(
        self, bin_s: float, *, max_age_s: float = WEEK_S, max_bins: int = DEFAULT_MAX_BINS
    ) -> None:
        if bin_s <= 0 or max_age_s <= 0 or max_bins < 2:
            raise ValueError("bin_s and max_age_s must be > 0, max_bins >= 2")
        self.bin_s = bin_s
        #: Bins kept: a week of them, or ``max_bins`` when a week has more.
        self.capacity = max(2, min(max_bins, math.ceil(max_age_s / bin_s)))
        self._counts = array("d", bytes(8 * self.capacity))
        #: Index (in bins since time 0) of the oldest kept bin, and of the open (last) bin.
        self._first = 0
        self._open: int | None = None
        #: Time up to which arrivals are recorded: bins ending by then are complete.
        self._complete_until = -math.inf

    # ----- recording ---------------------------------------------------------------------
    def add(self, t0_s: float, t1_s: float, count: float) -> None:
        """Record ``count`` arrivals over ``[t0_s, t1_s)``, spread in proportion to overlap.

        Calls must come in time order (``t0_s`` at or after the previous ``t1_s`` — a gap
        is idle time); a span that starts before the last recorded one is clipped to it.
        """
        if t1_s < t0_s:
            raise ValueError("t1_s must not be before t0_s")
        first = math.floor(t0_s / self.bin_s)
        last = max(first, math.ceil(t1_s / self.bin_s) - 1)
        self._open_up_to(first)  # the first call starts the history at ``t0_s``
        self._open_up_to(last)
        self._complete_until = max(self._complete_until, t1_s)
        if count == 0:
            return
        span_s = t1_s - t0_s
        if span_s <= 0:
            self._bump(max(first, self._first), count)
            return
        for index in range(max(first, self._first), last + 1):
            start = index * self.bin_s
            overlap = min(t1_s, start + self.bin_s) - max(t0_s, start)
            if overlap > 0:
                self._bump(index, count * overlap / span_s)

    def restore(self, points: Iterable[tuple[float, float]]) -> None:
        """Seed an empty history from stored ``(t_s, rate_per_s)`` points (oldest first), on
        this history's clock, each standing for the span up to the next point."""
        previous: tuple[float, float] | None = None
        for point in points:
            if previous is not None:
                self.add(previous[0], point[0], previous[1] * (point[0] - previous[0]))
            previous = point

    def _open_up_to(self, index: int) -> None:
        """Make ``index`` the open bin, zeroing the bins it passes and dropping the oldest."""
        if self._open is None:
            self._first = self._open = index
            self._counts[index % self.capacity] = 0.0
            return
        if index <= self._open:
            return
        if index - self._open >= self.capacity:
            self._counts = array("d", bytes(8 * self.capacity))
        else:
            for i in range(self._open + 1, index + 1):
                self._counts[i % self.capacity] = 0.0
        self._open = index
        self._first = max(self._first, index - self.capacity + 1)

    def _bump(self, index: int, count: float) -> None:
        self._counts[index % self.capacity] += count

    # ----- reading (the policy's view) ---------------------------------------------------
    def __len__(self) -> int:
        if self._open is None:
            return 0
        # The open bin counts once time has reached its end.
        end = math.floor(self._complete_until / self.bin_s + 1e-9)
        return max(0, min(end, self._open + 1) - self._first)

    @overload
    def __getitem__(self, index: int) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[float, float]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[float, float] | Sequence[tuple[float, float]]:
        length = len(self)
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(length))]
        if index < 0:
            index += length
        if not 0 <= index < length:
            raise IndexError(index)
        absolute = self._first + index
        return (absolute * self.bin_s, self._counts[absolute % self.capacity])

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return (self[i] for i in range(len(self)))
