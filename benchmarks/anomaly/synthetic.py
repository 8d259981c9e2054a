"""Synthetic stress series for the anomaly detectors: an extra held-out check beside NAB.

What it does: builds weeks-long, five-minute series of the kinds operational metrics take (flat
noise, daily and weekly seasonality; Gaussian, heavy-tailed and count noise) with one injected
anomaly of a known kind at a known row (level shift, spike, variance change, stuck sensor, slow
drift that ends in a failure, change of the daily shape), plus series with none. Windows follow
NAB's rule (``int(0.10 * N / k)`` rows centred on the label), so ``nab_score`` scores them as it
scores NAB. Nothing here was used to choose the detector's parameters.

What it must never do: use global randomness (one seeded generator per series), or read files.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

STEP_S = 300.0
DAY = 288  # points per day at five-minute spacing
START_S = 1_420_070_400.0  # 2015-01-01 00:00:00 UTC

ANOMALY_KINDS = ("level_shift", "spike", "variance_up", "stuck", "drift_then_failure",
                 "daily_shape")
SEASONS = ("flat", "daily_weekly")
NOISES = ("gaussian", "heavy_tailed", "counts")


@dataclass(frozen=True, slots=True)
class StressSeries:
    name: str
    times_s: list[float]
    values: list[float]
    windows: list[tuple[int, int]]


def _base(season: str, noise: str, n: int, rng: random.Random) -> tuple[list[float], float]:
    """Values without anomaly and the noise scale (standard deviation, roughly)."""
    level = 50.0
    amp = 20.0 if season == "daily_weekly" else 0.0
    sigma = 2.0
    values = []
    ar = 0.0
    for i in range(n):
        day_phase = 2 * math.pi * (i % DAY) / DAY
        weekday = (i // DAY) % 7
        # a daily hump, lower at weekends; it is 0 at midnight, so the week has no seam
        hump = 1.0 + math.sin(day_phase - math.pi / 2)
        mean = level - amp + amp * hump * (0.6 if weekday >= 5 else 1.0)
        ar = 0.7 * ar + rng.gauss(0.0, 1.0)  # short-range correlation, as metrics have
        if noise == "gaussian":
            e = sigma * ar / math.sqrt(1 / (1 - 0.49))
        elif noise == "heavy_tailed":
            # Student t with 3 degrees of freedom: occasional large, harmless excursions
            t = rng.gauss(0.0, 1.0) / math.sqrt(sum(rng.gauss(0, 1) ** 2 for _ in range(3)) / 3)
            e = sigma * (0.6 * ar / math.sqrt(1 / (1 - 0.49)) + 0.5 * t)
        else:  # counts: Poisson-like around the mean (tweets, requests)
            e = math.sqrt(max(mean, 1.0)) * rng.gauss(0.0, 1.0)
        values.append(mean + e)
    scale = sigma if noise != "counts" else math.sqrt(level)
    return values, scale


def _inject(kind: str, values: list[float], scale: float, at: int, rng: random.Random) -> None:
    n = len(values)
    if kind == "level_shift":
        for i in range(at, n):
            values[i] += 4.0 * scale
    elif kind == "spike":
        values[at] += 8.0 * scale * rng.choice((-1.0, 1.0))
    elif kind == "variance_up":
        base = values[:]  # the noise grows threefold around a slow local mean, for two days
        for i in range(at, min(n, at + 2 * DAY)):
            local = sum(base[i - 12 : i + 1]) / 13
            values[i] = local + 3.0 * (base[i] - local)
    elif kind == "stuck":
        stuck = values[at - 1]
        for i in range(at, min(n, at + DAY)):
            values[i] = stuck
    elif kind == "drift_then_failure":
        ramp = DAY  # one day of slow rise, then a drop: the machine-temperature story
        for i in range(at - ramp, at):
            values[i] += 5.0 * scale * (i - (at - ramp)) / ramp
        for i in range(at, min(n, at + DAY // 4)):
            values[i] -= 10.0 * scale
    elif kind == "daily_shape":
        # the daily peak is missing for a day: values stay at the day's mean
        day_start = at
        for i in range(day_start, min(n, day_start + DAY)):
            values[i] = 50.0 + (values[i] - values[i - DAY]) * 0.5 if i >= DAY else values[i]
    else:
        raise ValueError(kind)


def _window(n: int, label: int) -> tuple[int, int]:
    width = int(0.10 * n)
    return max(0, label - width // 2), min(n - 1, label + width // 2)


def stress_corpus(num_days: int = 28) -> list[StressSeries]:
    """Every (season, noise, kind) combination with an anomaly, plus one clean series per
    (season, noise). ``daily_shape`` is built only on the seasonal series."""
    n = DAY * num_days
    times = [START_S + i * STEP_S for i in range(n)]
    corpus = []
    for season in SEASONS:
        for noise in NOISES:
            for kind in (*ANOMALY_KINDS, "none"):
                if kind == "daily_shape" and season == "flat":
                    continue
                name = f"{season}/{noise}/{kind}"
                rng = random.Random(f"stress:{name}")
                values, scale = _base(season, noise, n, rng)
                windows: list[tuple[int, int]] = []
                if kind != "none":
                    # somewhere in the last 60 %, after a full week, at a random time of day
                    label = rng.randrange(int(0.4 * n), int(0.9 * n))
                    _inject(kind, values, scale, label, rng)
                    windows.append(_window(n, label))
                corpus.append(StressSeries(name, times, values, windows))
    return corpus
