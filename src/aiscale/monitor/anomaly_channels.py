"""The default streaming anomaly detector: six cheap surprise channels, each scored against its
own record.

What it does: turns a stream of ``(now_s, value)`` points into an anomaly score in [0, 1] per
point, from that point and the ones before it. Work per point is O(log history + shape_len *
days kept) in pure Python (no numpy on the hot path); memory is O(history).

What it must never do: read a clock, do I/O, use global randomness, look ahead, or learn from a
value that is not a finite number. It is deterministic: the same stream gives the same scores.

Design (see benchmarks/anomaly/RESULTS.md for what each part is worth, cross-validated):

Operational metrics fail in a handful of ways, and each channel measures one of them as a
non-negative "surprise" in units the series itself sets (its median, inter-quartile range and
typical step over the last ``history`` points, kept exactly in sorted windows):

* ``point``: distance of the value from the median (spikes, dips, a value outside the range);
* ``level``: distance of the mean of the last ``shape_len`` values from the median (a small
  lasting shift, the end of a slow drift, that no single point shows);
* ``sustained``: when all of the last ``shape_len`` values lie on the same side of the median,
  the smallest of their distances from it (0 otherwise): a shift that every recent point
  agrees on, which one spike in the stretch cannot fake (the level channel's mean can be moved
  by one spike; this is the noise-robust half of it: a level shift under heavy-tailed noise);
* ``jump``: the step from the previous value, against the typical step (a level shift inside
  the normal range, the first point of an incident: the earliest signal there is);
* ``spread``: the log of the ratio of the recent typical step to the long-run one, both ways
  (the noise grows; the sensor gets stuck or the series goes flat);
* ``daily``: distance of the last ``shape_len`` values to the same stretch 1 to 7 days before
  (a missing daily peak, a changed daily shape), when the history holds whole days.

Calibration is the one idea that makes a single alert threshold serve every series (what HTM's
anomaly likelihood does for its predictor's error): each surprise is divided by the largest
surprise of its channel in the recent past (a record that fades with half-life
``record_half_life`` points), so a ratio of 1 means "ties the record" whatever the series' scale
and noise. The score is ``r / (1 + r)`` of the largest ratio, so 0.5 means "ties the record".
A refractory period (``_Refractory``, shared with ``RecordSurpriseDetector``) then turns one
incident into one alert unless it escalates.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque

from aiscale.monitor.anomaly_detectors import RecordScale, Refractory

_TINY = 1e-12
_DAY_S = 86_400.0
#: Whole days back that the daily channel compares with (a weekly pattern needs 7).
_MAX_LAG_DAYS = 7
#: Intervals kept to estimate the sampling interval (their median).
_NUM_INTERVALS = 31


class _SortedWindow:
    """The last ``capacity`` floats, kept both in arrival order and sorted (exact quantiles)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.order: deque[float] = deque()
        self.sorted: list[float] = []
        self.total = 0.0

    def push(self, value: float) -> None:
        if len(self.order) == self.capacity:
            old = self.order.popleft()
            del self.sorted[bisect_left(self.sorted, old)]
            self.total -= old
        self.order.append(value)
        insort(self.sorted, value)
        self.total += value

    def quantile(self, q: float) -> float:
        """Lower quantile (no interpolation); the window must not be empty."""
        s = self.sorted
        return s[min(len(s) - 1, int(q * len(s)))]

    def __len__(self) -> int:
        return len(self.order)


class ChannelSurpriseDetector:
    """Point, level, sustained, jump, spread and daily-shape surprise, each against its own
    record.

    Parameters (counts are in points; the detector reasons on the order of the points and uses
    ``now_s`` only to find the same time on earlier days):

    * ``history``: points kept for the median, the spreads, the daily stretches and the records.
    * ``shape_len``: points in the recent stretch (level, spread and daily channels).
    * ``warmup``: points scored 0 while the history fills (they are still learnt).
    * ``record_half_life``: an old record fades with this half-life, so one early outlier does
      not blind the detector for the whole history (0: records only leave the window).
      ``half_life`` is accepted as its old name (the pre-issue-13 default detector,
      ``RecordSurpriseDetector``, called it that), so a live monitor config written for that
      detector keeps validating; giving both with different values is an error.
    * ``refractory``: points shaped after one that fired (0: no shaping); ``refractory_damping``,
      ``escalation`` and ``fire_ratio`` (a point fires when its ratio is at least this) as in
      ``Refractory``.

    Raises ``ValueError`` for parameters outside their ranges (``make_detector`` turns that into
    ``InvalidInput``). A non-finite ``value`` is not learnt and scores 0: the input layer
    (``aiscale.monitor.anomaly_input``) counts and reports such points before they get here.
    """

    def __init__(
        self,
        history: int = 2000,
        shape_len: int = 8,
        warmup: int = 100,
        record_half_life: float = 0.0,
        refractory: int = 25,
        refractory_damping: float = 0.5,
        escalation: float = 1.5,
        fire_ratio: float = 1.2,
        half_life: float | None = None,
    ) -> None:
        if half_life is not None:
            if record_half_life not in (0.0, half_life):
                raise ValueError("half_life is the old name of record_half_life: give one")
            record_half_life = half_life
        if shape_len < 2 or history < 4 * shape_len or warmup < 0 or record_half_life < 0:
            raise ValueError("need shape_len >= 2, history >= 4 * shape_len, warmup >= 0, "
                             "record_half_life >= 0")
        if (refractory < 0 or not 0 < refractory_damping <= 1 or escalation < 1
                or fire_ratio < 1):
            raise ValueError("need refractory >= 0, 0 < refractory_damping <= 1, escalation >= 1,"
                             " fire_ratio >= 1")
        self._m = shape_len
        self._warmup = warmup
        self._values = _SortedWindow(history)
        self._steps = _SortedWindow(history)  # |x_t - x_{t-1}|
        self._times: deque[float] = deque(maxlen=history)
        self._intervals = _SortedWindow(_NUM_INTERVALS)
        self._records = tuple(RecordScale(history, record_half_life) for _ in range(6))
        self._refractory = Refractory(refractory, refractory_damping, escalation, fire_ratio)
        self._num_seen = 0

    def update(self, now_s: float, value: float) -> float:
        """Score in [0, 1] of this point; 0.5 means "ties the largest recent surprise"."""
        value = float(value)
        if not math.isfinite(value):
            return 0.0
        surprises = self._surprises(value)
        ratio = 0.0
        for record, surprise in zip(self._records, surprises, strict=True):
            ratio = max(ratio, record.ratio(surprise))
            record.push(surprise)
        self._learn(float(now_s), value)
        if self._num_seen <= self._warmup:
            return 0.0
        ratio = self._refractory.shape(ratio)
        # monotone map of [0, inf] onto [0, 1]; only the order of scores matters to a threshold
        return ratio / (1.0 + ratio) if math.isfinite(ratio) else 1.0

    def _learn(self, now_s: float, value: float) -> None:
        values = self._values
        if values.order:
            self._steps.push(abs(value - values.order[-1]))
            gap = now_s - self._times[-1]
            if gap > 0:
                self._intervals.push(gap)
        values.push(value)
        self._times.append(now_s)
        self._num_seen += 1

    def _surprises(self, value: float) -> tuple[float, ...]:
        """(point, level, sustained, jump, spread, daily) surprise of ``value``, all >= 0."""
        m = self._m
        values = self._values
        n = len(values)
        if n < 4 * m:
            return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        median = values.quantile(0.5)
        spread = values.quantile(0.75) - values.quantile(0.25)
        if spread <= _TINY:  # a mostly constant series: fall back to the mean deviation
            spread = abs(values.total / n - median) + values.quantile(0.95) - values.quantile(0.05)
        spread = max(spread, _TINY * max(1.0, abs(median)))
        past = values.order
        recent = [past[n - m + 1 + i] for i in range(m - 1)]
        recent.append(value)
        point = abs(value - median) / spread
        level = abs(sum(recent) / m - median) / spread
        low, high = min(recent), max(recent)
        if low > median:
            sustained = (low - median) / spread
        elif high < median:
            sustained = (median - high) / spread
        else:
            sustained = 0.0
        steps = self._steps
        typical_step = steps.quantile(0.5)
        floor = max(steps.total / len(steps), 1e-3 * spread)  # mean step: never 0 unless flat
        eps = 0.01 * floor
        step = abs(value - past[-1])
        jump = step / max(typical_step, floor)
        recent_step = (sum(abs(recent[i + 1] - recent[i]) for i in range(m - 1)) / (m - 1))
        spread_change = abs(math.log((recent_step + eps) / (typical_step + eps)))
        daily = self._daily(recent, spread)
        return point, level, sustained, jump, spread_change, daily

    def _daily(self, recent: list[float], spread: float) -> float:
        """RMS distance (in spreads) of ``recent`` to the nearest same-time stretch 1-7 days
        back; 0 while the history holds less than a day."""
        intervals = self._intervals
        if len(intervals) < 3:
            return 0.0
        interval_s = intervals.quantile(0.5)
        if interval_s <= 0 or interval_s > _DAY_S / 12:  # fewer than 12 points a day: no shape
            return 0.0
        m = self._m
        past = self._values.order
        n = len(past)
        best = math.inf
        for days in range(1, _MAX_LAG_DAYS + 1):
            lag = int(round(days * _DAY_S / interval_s))
            if lag + m > n + 1:
                break
            # the stretch that ended one lag before ``now``, allowing one point of slack
            for end in (n - lag - 1, n - lag, n - lag + 1):  # index of its last point
                start = end - m + 1
                if start < 0 or end >= n:
                    continue
                dist = 0.0
                for i in range(m):
                    d = recent[i] - past[start + i]
                    dist += d * d
                best = min(best, dist)
        return math.sqrt(best / m) / spread if math.isfinite(best) else 0.0
