"""Streaming anomaly detectors: one object per series, fed one point at a time.

What it does: turns a stream of ``(now_s, value)`` points into an anomaly score in [0, 1] per
point, using only that point and the ones before it. Memory and work per point are bounded by
the history length (in samples: the detectors keep the last ``history`` points of the series).

What it must never do: read a clock, do I/O, use global randomness, or look ahead. A detector
is deterministic: the same stream gives the same scores.

The default detector (``RecordSurpriseDetector``) combines three robust "surprise" measures,
all in units of the history's inter-quartile range or of the values themselves:

* point surprise: distance of the value from the median of the history (spikes, dips, shifts);
* level surprise: distance of the mean of the last ``shape_len`` values from that median
  (a small lasting shift that no single point shows);
* shape surprise: Euclidean distance of the last ``shape_len`` values to their nearest
  neighbour among the earlier, non-overlapping stretches of the history (a normal-range value in
  an abnormal context: a flat stretch, a missing daily peak, a change in the noise). The history
  holds earlier days, so a daily (or any shorter) seasonality is matched without being modelled.

Each surprise is compared with its own recent past: the score is ``r / (1 + r)`` where ``r`` is
the largest of the three ratios "surprise / largest surprise of the same kind in the last
``history`` points", so 0.5 means "ties the record". Scoring against the series' own record
makes scores comparable across series of any scale and noise level (one alert threshold serves
all of them), and it quiets the run of repeat alerts after a level shift: once the first
shifted points set the record, the later ones, less surprising as the baseline adapts, do not
beat it.

A refractory period then shapes the score (``Refractory``): once a point fires (beats the
record by a few percent), the ratios of the next ``refractory`` points are halved unless they
escalate (exceed the episode's largest ratio by half again). One incident then raises one alert
instead of a burst of near-ties from the three measures taking turns, and a growing incident
still fires again. See benchmarks/anomaly/RESULTS.md for what it is worth on the NAB files.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

_TINY = 1e-12
#: A point "fires" (starts a refractory hold) when its ratio beats the record by 3 %: exact ties
#: with the record are common in quantised or repetitive series and are not news.
_FIRE_RATIO = 1.03


class _Ring:
    """The last ``capacity`` floats, readable as one contiguous array (oldest first).

    Each value is written twice, at ``i`` and ``i + capacity``, so the window is always the
    slice ``[head, head + size)`` without copying.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._buf = np.zeros(2 * capacity, dtype=np.float64)
        self._next = 0
        self.size = 0

    def push(self, value: float) -> None:
        self._buf[self._next] = value
        self._buf[self._next + self._capacity] = value
        self._next = (self._next + 1) % self._capacity
        self.size = min(self.size + 1, self._capacity)

    def view(self) -> npt.NDArray[np.float64]:
        start = (self._next - self.size) % self._capacity
        return self._buf[start : start + self.size]


class RecordScale:
    """Maps a non-negative surprise to a ratio against the fading record of the recent past.

    The record is ``max_j s_j * 2 ** (-(t - j) / half_life)`` over the last ``capacity``
    surprises: a big surprise long ago counts less than a recent one, so one early outlier does
    not blind the detector for the whole window. Decay keeps the order of two stored surprises,
    so a monotone deque on ``log s_j + j * rate`` keeps the maximum in O(1) amortised time.
    """

    def __init__(self, capacity: int, half_life: float) -> None:
        self._capacity = capacity
        self._rate = math.log(2.0) / half_life if half_life > 0 else 0.0
        self._count = 0
        self._maxq: deque[tuple[int, float]] = deque()  # (index, log s + index * rate)

    def ratio(self, x: float) -> float:
        if not self._maxq:
            return 0.0
        top = self._maxq[0][1] - self._count * self._rate  # log of the decayed record
        if top == -math.inf:
            return 0.0 if x <= _TINY else math.inf
        if x <= 0.0:
            return 0.0
        return math.exp(min(math.log(x) - top, 700.0))

    def push(self, x: float) -> None:
        key = (math.log(x) if x > 0.0 else -math.inf) + self._count * self._rate
        while self._maxq and self._maxq[-1][1] <= key:
            self._maxq.pop()
        self._maxq.append((self._count, key))
        self._count += 1
        while self._maxq[0][0] <= self._count - 1 - self._capacity:
            self._maxq.popleft()


class Refractory:
    """Damps the ratios of the ``hold`` points after one that fired, unless they escalate.

    A point fires when its (shaped) ratio is at least ``fire_ratio``. For the next ``hold``
    points a ratio is multiplied by ``damping`` unless it exceeds ``escalation`` times the
    largest ratio of the episode; a point that fires, damped or not, restarts the hold.
    """

    def __init__(self, hold: int, damping: float, escalation: float,
                 fire_ratio: float = _FIRE_RATIO) -> None:
        self._fire_ratio = fire_ratio
        self._hold = hold
        self._damping = damping
        self._escalation = escalation
        self._left = 0  # points of the hold still to come
        self._peak = 0.0  # largest raw ratio of the current episode

    def shape(self, ratio: float) -> float:
        if self._hold == 0:
            return ratio
        shaped = ratio
        in_hold = self._left > 0
        if in_hold:
            self._left -= 1
            if ratio <= self._escalation * self._peak:
                shaped = ratio * self._damping
            self._peak = max(self._peak, ratio)
        if shaped >= self._fire_ratio:
            self._peak = max(self._peak, ratio) if in_hold else ratio
            self._left = self._hold
        return shaped


class RecordSurpriseDetector:
    """Point, level and shape surprise, each scored against its own record (see module doc).

    Parameters, in samples (the detector keeps the last ``history`` points, so memory and work
    per point are O(history); it reasons on the order of points, not their spacing, so it needs
    no sampling interval):

    * ``history``: points kept for the baseline, the shape search and the records.
    * ``shape_len``: points in the recent stretch compared by the level and shape surprises.
    * ``warmup``: points scored 0 while the baseline fills.
    * ``half_life``: if > 0, old records fade with this half-life (0: they only leave the window).
    * ``refractory``: points shaped after one that fired (0: no shaping). Chosen by
      leave-one-category-out cross-validation on the NAB files (benchmarks/anomaly).
    * ``refractory_damping``: factor on the ratio of a damped point, in (0, 1].
    * ``escalation``: a point in the hold is not damped when its ratio exceeds this many times
      the episode's largest ratio (a growing incident fires again); >= 1.
    """

    def __init__(
        self,
        history: int = 2000,
        shape_len: int = 8,
        warmup: int = 100,
        half_life: float = 0.0,
        refractory: int = 25,
        refractory_damping: float = 0.5,
        escalation: float = 1.5,
    ) -> None:
        if shape_len < 2 or history < 4 * shape_len or warmup < 0 or half_life < 0:
            raise ValueError(
                "need shape_len >= 2, history >= 4 * shape_len, warmup >= 0, half_life >= 0"
            )
        if refractory < 0 or not 0 < refractory_damping <= 1 or escalation < 1:
            raise ValueError(
                "need refractory >= 0, 0 < refractory_damping <= 1, escalation >= 1"
            )
        self._refractory = Refractory(refractory, refractory_damping, escalation)
        self._m = shape_len
        self._warmup = warmup
        self._values = _Ring(history)
        self._records = tuple(RecordScale(history, half_life) for _ in range(3))
        self._num_seen = 0

    def update(self, now_s: float, value: float) -> float:
        """Score in [0, 1]; 0.5 means "ties the largest surprise of the recent past"."""
        del now_s  # see the class docstring: only the order of the points matters
        value = float(value)
        if not math.isfinite(value):
            # a missing or broken measurement is itself worth an alert; it is not learnt
            return 1.0 if self._num_seen >= self._warmup else 0.0
        past = self._values.view()
        surprises = self._surprises(past, value)
        ratio = 0.0
        for record, surprise in zip(self._records, surprises, strict=True):
            ratio = max(ratio, record.ratio(surprise))
            record.push(surprise)
        self._values.push(value)
        self._num_seen += 1
        if self._num_seen <= self._warmup:
            return 0.0
        ratio = self._refractory.shape(ratio)
        # monotone map of [0, inf] onto [0, 1]; only the order of scores matters to a threshold
        return ratio / (1.0 + ratio) if math.isfinite(ratio) else 1.0

    def _surprises(self, past: npt.NDArray[np.float64], value: float) -> tuple[float, float, float]:
        """(point, level, shape) surprise of ``value`` after ``past``, all >= 0."""
        m = self._m
        n = past.size
        if n < 4 * m:
            return 0.0, 0.0, 0.0
        q25, q50, q75 = (float(q) for q in np.quantile(past, (0.25, 0.5, 0.75)))
        spread = q75 - q25
        if spread <= _TINY:  # a mostly constant series: fall back to the mean deviation
            spread = float(np.mean(np.abs(past - q50)))
        spread = max(spread, _TINY)
        recent = np.empty(m)
        recent[:-1] = past[n - m + 1 :]
        recent[-1] = value
        point = abs(value - q50) / spread
        level = abs(float(np.mean(recent)) - q50) / spread
        # nearest neighbour of the recent stretch among past stretches that do not overlap it
        candidates = np.lib.stride_tricks.sliding_window_view(past[: n - m + 1], m)
        shape = math.sqrt(float(np.min(np.sum((candidates - recent) ** 2, axis=1))))
        return point, level, shape
