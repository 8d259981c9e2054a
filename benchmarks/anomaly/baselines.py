"""Reference detectors for the NAB comparison, after NAB's own ``random`` and ``windowedGaussian``.

What it does: gives the baselines the same ``update(now_s, value) -> score`` contract as
``aiscale.monitor.anomaly`` detectors so one harness scores them all. Benchmark code only.
What it must never do: use global randomness (the random detector takes a seeded ``Random``).
"""

from __future__ import annotations

import math
import random


class RandomDetector:
    """A uniform random score per point (NAB's ``random`` detector)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def update(self, now_s: float, value: float) -> float:
        return self._rng.random()


class WindowedGaussianDetector:
    """NAB's ``windowedGaussian``: score = 1 - Q(|z|) against the mean/std of a past window.

    The window fills to ``window_size`` points, then slides forward ``step_size`` points at a time.
    """

    def __init__(self, window_size: int = 6400, step_size: int = 100) -> None:
        self._window_size = window_size
        self._step_size = step_size
        self._window: list[float] = []
        self._step: list[float] = []
        self._mean = 0.0
        self._std = 1.0
        self._sum = 0.0
        self._sum_sq = 0.0

    def update(self, now_s: float, value: float) -> float:
        score = 0.0
        if self._window:
            z = abs(value - self._mean) / self._std
            score = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
        if len(self._window) < self._window_size:
            self._window.append(value)
            self._sum += value
            self._sum_sq += value * value
            self._refit()
        else:
            self._step.append(value)
            if len(self._step) == self._step_size:
                self._window = self._window[self._step_size :] + self._step
                self._step = []
                self._sum = math.fsum(self._window)
                self._sum_sq = math.fsum(x * x for x in self._window)
                self._refit()
        return score

    def _refit(self) -> None:
        # running sums while the window fills (NAB recomputes numpy mean/std; same numbers)
        n = len(self._window)
        self._mean = self._sum / n
        var = max(self._sum_sq / n - self._mean * self._mean, 0.0)
        self._std = math.sqrt(var) if var > 1e-12 * max(1.0, self._mean**2) else 1e-6
