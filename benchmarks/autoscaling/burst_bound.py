"""Why no causal policy meets 99% on some bursty days: the burst's first start-up is lost.

A policy that does not know the future decides the replicas ready during a burst's first
start-up (60 s by default) before the burst begins. Whatever standing headroom ``h`` it keeps
over the pre-burst rate, the requests of that first start-up above ``h`` times the pre-burst
rate cannot be served in time by replicas started for the burst. This script counts them on
the harness's own synthetic days (``aiscale.plan.synthetic.BurstyDay``, the same seeds and
bursts as ``run.py``) as a share of the day's requests, for several ``h``. Where that share
alone exceeds the 1% the SLO allows, no causal policy holding that headroom can meet 99%;
holding more costs about ``h`` times the replicas all day, against an oracle that starts
them one start-up ahead of each burst.

It is a lower bound on the misses: the backlog left by that first start-up and the misses of
ordinary traffic come on top. Expected rates, no Poisson draw: seconds to run, no timing.

    .venv/bin/python benchmarks/autoscaling/burst_bound.py [--out benchmarks/autoscaling/BURST_BOUND.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from aiscale.plan.synthetic import BurstyDay  # noqa: E402

HEADROOMS = (1.25, 1.5, 2.0, 3.0)
DAYS = {"2 bursts (5x, 10x)": (5.0, 10.0), "6 bursts (5x, 10x, x3)": (5.0, 10.0) * 3}


def lost_share(day: BurstyDay, headroom: float, startup_s: float) -> float:
    """Share of the day's expected requests arriving in each burst's first ``startup_s``
    above ``headroom`` times the rate of the second before the burst."""
    rate = day.rate_per_s(1.0)
    lost = 0.0
    for burst in day.bursts():
        start = int(burst.start_s)
        end = min(int(burst.start_s + startup_s), int(burst.end_s))
        before = rate[start - 1] if start > 0 else rate[start]
        lost += float(np.clip(rate[start:end] - headroom * before, 0.0, None).sum())
    return lost / float(rate.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4")
    parser.add_argument("--startup-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    lines = [
        "# Bursty days: requests no causal policy can serve in time",
        "",
        f"Command: `{' '.join(['python', *sys.argv])}`. Start-up {args.startup_s:.0f} s "
        "(the harness's default). Cells: share of the day's requests arriving in the first "
        "start-up of its bursts above h x the pre-burst rate (a lower bound on the misses "
        "of any policy that keeps h times the capacity the pre-burst rate needs).",
        "",
        "| day | seed | bursts (start h, length s, x) | "
        + " | ".join(f"h = {h:g}" for h in HEADROOMS) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in HEADROOMS) + " |",
    ]
    for label, multipliers in DAYS.items():
        for seed in seeds:
            day = BurstyDay(1.0, multipliers=multipliers, seed=seed)
            bursts = ", ".join(
                f"{b.start_s / 3600:.1f}/{b.duration_s:.0f}/{b.multiplier:g}"
                for b in day.bursts()
            )
            cells = []
            for h in HEADROOMS:
                share = lost_share(day, h, args.startup_s)
                cells.append(f"**{share:.2%}**" if share > 0.01 else f"{share:.2%}")
            lines.append(f"| {label} | {seed} | {bursts} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: above the 1% the SLO allows, before any other miss is counted."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
