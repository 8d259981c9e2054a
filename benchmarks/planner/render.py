"""Render ``benchmarks/planner/RESULTS.md`` tables from the ``plan.json`` that ``aiscale plan
--report DIR`` writes. Usage (from the project root):

    .venv/bin/python benchmarks/planner/render.py benchmarks/planner/report/plan.json

Prints Markdown: per phase, the chosen hardware and replicas at peak, then each strategy's
monthly cost, replica-hours per day, p99 and SLO attainment, and the cost ratio between the
costliest and the cheapest architecture meeting the SLO. Never runs a simulation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def render(plan: dict[str, Any]) -> str:
    lines = [
        f"Model `{plan['model']}` measured on {plan['measured_hardware']}; SLO p99 "
        f"{plan['slo_p99_ms']:g} ms for {plan['slo_target']:.0%} of requests; "
        f"{plan['requests_per_user']:g} requests/user/day, shape `{plan['shape']}`, "
        f"{plan['duration_s'] / 3600:g} h simulated per phase; monthly = 730 h.",
        "",
        "| users | req/day | mean / peak req/s | hardware (cheapest at peak) | replicas at peak "
        "| cheapest meeting SLO | costliest meeting SLO | costliest / cheapest |",
        "| ---: | ---: | ---: | --- | ---: | --- | --- | ---: |",
    ]
    for phase in plan["phases"]:
        ratio = phase["cost_ratio"]
        lines.append(
            f"| {phase['users']:,} | {phase['requests_per_day']:,.0f} | "
            f"{phase['mean_rate_per_s']:.1f} / {phase['peak_rate_per_s']:.1f} | "
            f"{phase['hardware']} | {phase['replicas_at_peak']} | {phase['cheapest']} | "
            f"{phase['costliest']} | {'n/a' if ratio is None else f'{ratio:.1f}x'} |"
        )
    strategies = [s["strategy"] for s in plan["phases"][0]["strategies"]][:5]
    lines += [
        "",
        "Monthly cost (SLO attainment) per strategy, on the phase's hardware:",
        "",
        "| users | hardware | " + " | ".join(strategies) + " |",
        "| ---: | --- | " + " | ".join("---:" for _ in strategies) + " |",
    ]
    for phase in plan["phases"]:
        cells = []
        for name in strategies:
            found = [
                s
                for s in phase["strategies"]
                if s["strategy"] == name and s["hardware"] == phase["hardware"]
            ]
            cells.append(
                f"${found[0]['monthly_cost_usd']:,.0f} ({found[0]['slo_attainment']:.4f})"
                if found
                else "n/a"
            )
        lines.append(f"| {phase['users']:,} | {phase['hardware']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| users | strategy | hardware | mode | max replicas | replica-h/day | $/month | p50 ms "
        "| p99 ms | SLO attainment | meets |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for phase in plan["phases"]:
        for s in phase["strategies"]:
            lines.append(
                f"| {phase['users']:,} | {s['strategy']} | {s['hardware']} | {s['mode']} | "
                f"{s['max_replicas']} | {s['replica_hours_per_day']:.1f} | "
                f"{s['monthly_cost_usd']:,.0f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                f"{s['slo_attainment']:.4f} | {'yes' if s['meets_slo'] else 'no'} |"
            )
    lines += ["", "Files: " + ", ".join(f"`{f}`" for f in plan["files"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(Path(sys.argv[1]).read_text())))
