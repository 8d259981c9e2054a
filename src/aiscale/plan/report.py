"""Write a capacity plan as a report: Markdown and HTML pages with PNG plots.

Plots (matplotlib, headless ``Agg`` backend): for each phase, a day of traffic against the
capacity each strategy had ready (``traffic_<users>.png``); and the monthly cost per phase per
strategy (``cost.png``). The pages hold the same tables. This module writes only inside the
folder it is given, and never simulates anything: it formats a ``PlanResult``.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

from aiscale.plan.planner import PhasePlan, PlanResult
from aiscale.plan.strategies import STRATEGIES, StrategyOutcome


def _money(value: float) -> str:
    return f"${value:,.0f}"


def _replicas(outcome: StrategyOutcome) -> str:
    low, high = outcome.min_replicas, outcome.max_replicas
    return str(high) if low == high else f"{low}-{high}"


def estimate_mark(outcome: StrategyOutcome) -> str:
    """``"est.: speed, spot price"`` for a row with estimated figures, else ``""``."""
    return f"est.: {', '.join(outcome.estimates)}" if outcome.estimates else ""


def best_outcome(phase: PhasePlan) -> StrategyOutcome | None:
    """The cheapest architecture meeting the SLO that kept the availability floor."""
    fitting = [o for o in phase.outcomes if o.meets_slo and o.has_floor]
    return min(fitting, key=lambda o: (o.monthly_cost_usd, o.max_replicas), default=None)


def _buy(phase: PhasePlan, outcome: StrategyOutcome) -> str:
    instance = next((o.instance for o in phase.options if o.hardware == outcome.hardware), "")
    instance = instance.split(" (")[0].split(",")[0]  # "c6i.xlarge (4 vCPU, 8 GiB)": the name
    what = f"{_replicas(outcome)} x {outcome.hardware}" + (f" ({instance})" if instance else "")
    return (
        f"{what}, {outcome.strategy} ({outcome.pricing}), {_money(outcome.monthly_cost_usd)}/month"
    )


def recommendation(result: PlanResult) -> str:
    """One paragraph: what to buy for the largest phase and why, then the earlier phases."""
    if not result.phases:
        return "No phase was planned."
    last = max(result.phases, key=lambda p: p.num_users)
    slo = f"{result.slo_target:.0%} of requests within {result.slo_p99_ms:g} ms"
    best = best_outcome(last)
    if best is None:
        closest = max(last.outcomes, key=lambda o: o.slo_attainment)
        text = (
            f"For {last.num_users:,} users nothing in the catalog met the SLO ({slo}) while "
            f"keeping {last.floor_replicas} replica(s): the closest was {closest.strategy} on "
            f"{closest.hardware} at {closest.slo_attainment:.2%}. Loosen the SLO or profile "
            "faster hardware before buying."
        )
    else:
        same_hw = [o for o in last.outcomes if o.hardware == best.hardware]
        static = next((o for o in same_hw if o.strategy == "static at peak"), None)
        others = sorted(
            (o for o in same_hw if o is not best and o.meets_slo and o.has_floor),
            key=lambda o: o.monthly_cost_usd,
        )
        why = [
            f"it is the cheapest of {len([o for o in last.outcomes if o.meets_slo])} "
            f"architectures that met the SLO ({slo}) in a simulated "
            f"{result.duration_s / 3600:.0f} h of `{result.shape}` traffic"
        ]
        if last.floor_replicas > 1:
            why.append(
                f"keeps at least {last.floor_replicas} replicas, so losing one does not take "
                f"the service down (required from {result.redundancy_from_users:,} users on)"
            )
        if static is not None and static is not best and best.monthly_cost_usd > 0:
            why.append(
                f"static at peak on demand would cost {_money(static.monthly_cost_usd)} "
                f"({static.monthly_cost_usd / best.monthly_cost_usd:.2f}x)"
            )
        if others and others[0].strategy != "static at peak":
            why.append(
                f"the runner-up is {others[0].strategy} at {_money(others[0].monthly_cost_usd)}"
            )
        text = (
            f"For {last.num_users:,} users buy {_buy(last, best)}, because " + "; ".join(why) + "."
        )
        if best.note:
            text += f" Note: {best.note}."
        if best.estimates:
            text += (
                f" Estimated, not measured: {', '.join(best.estimates)} of {best.hardware} "
                "(the catalog says so): check the price pages and profile on that hardware "
                "before buying."
            )
    earlier = []
    for phase in sorted(result.phases, key=lambda p: p.num_users):
        if phase is last:
            continue
        pick = best_outcome(phase)
        earlier.append(
            f"{phase.num_users:,} users: "
            + (_buy(phase, pick) if pick is not None else "nothing met the SLO")
        )
    if earlier:
        text += " On the way: " + "; ".join(earlier) + "."
    return text


def _plot_traffic(phase: PhasePlan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    hours = [i / 60.0 for i in range(len(phase.rate_per_minute))]
    ax.plot(hours, phase.rate_per_minute, color="black", linewidth=1.0, label="arrivals (req/s)")
    capacity = phase.capacity_per_replica_per_s
    # Strategies often give the same fleet: a distinct style and width each (widest first,
    # drawn underneath) keeps every one of them visible where the lines coincide.
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    shown = [o for o in phase.outcomes if o.hardware == phase.hardware and o.timeline]
    for k, outcome in enumerate(shown):
        times = [t / 3600.0 for t, _, _ in outcome.timeline]
        ready = [r * capacity for _, _, r in outcome.timeline]
        ax.step(
            times,
            ready,
            where="post",
            linewidth=max(3.5 - 0.6 * k, 1.0),
            linestyle=styles[k % len(styles)],
            alpha=0.85,
            label=f"{outcome.strategy} capacity",
        )
    # A strategy that overshoots (a reactive rule after a backlog) must not flatten the rest:
    # the axis stops a little above the busier of the traffic and static capacity.
    static = [
        o for o in phase.outcomes if o.strategy == "static at peak" and o.hardware == phase.hardware
    ]
    top = max(
        max(phase.rate_per_minute, default=0.0),
        max((o.max_replicas for o in static), default=0) * capacity,
    )
    if top > 0:
        ax.set_ylim(0, top * 1.3)
        overshoot = max((o.max_replicas for o in shown), default=0) * capacity
        if overshoot > top * 1.3:
            ax.text(
                0.99,
                0.97,
                f"axis cut at {top * 1.3:,.0f} req/s; the highest fleet reached "
                f"{overshoot:,.0f} req/s of capacity",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
    ax.set_xlabel("hour")
    ax.set_ylabel("requests/s")
    ax.set_title(
        f"{phase.num_users:,} users on {phase.hardware}: traffic against ready capacity "
        f"({capacity:.0f} req/s per replica)"
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_costs(result: PlanResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(STRATEGIES)
    for k, strategy in enumerate(STRATEGIES):
        costs = []
        for phase in result.phases:
            match = [
                o.monthly_cost_usd
                for o in phase.outcomes
                if o.strategy == strategy and o.hardware == phase.hardware
            ]
            costs.append(match[0] if match else 0.0)
        xs = [i + (k - (len(STRATEGIES) - 1) / 2) * width for i in range(len(result.phases))]
        bars = ax.bar(xs, costs, width=width, label=strategy)
        # The amount on each bar: a log axis's few ticks cannot be read to the dollar.
        ax.bar_label(bars, labels=[_money(c) for c in costs], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(range(len(result.phases)))
    ax.set_xticklabels([f"{p.num_users:,} users\n({p.hardware})" for p in result.phases])
    ax.set_ylabel("USD per month")
    if any(p.num_users for p in result.phases) and len(result.phases) > 1:
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda _v, _p: ""))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: _money(v)))
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 2.5)  # room for the labels above the tallest bars
    ax.set_title("Monthly cost per phase and strategy")
    ax.legend(fontsize=8, loc="upper right")  # "best" warns when slow (an error in tests)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _markdown(result: PlanResult, images: dict[str, str]) -> str:
    lines = [
        f"# Capacity plan: {result.model}",
        "",
        f"SLO: {result.slo_target:.0%} of requests within {result.slo_p99_ms:g} ms. Traffic: "
        f"{result.requests_per_user:g} requests per user per day, shape `{result.shape}`, "
        f"{result.duration_s / 3600:.1f} h simulated per phase; monthly = 730 h. Profile "
        f"measured on {result.measured_hardware}; other hardware is estimated from the catalog. "
        f"From {result.redundancy_from_users:,} users on, every strategy but scale to zero "
        "keeps at least 2 replicas for availability. Rows marked `est.` use an estimated "
        "speed or price (the catalog marks them).",
        "",
    ]
    for warning in result.warnings:
        lines += [f"**Warning:** {warning}", ""]
    lines[1:1] = ["", "## Recommendation", "", recommendation(result)]
    for phase in result.phases:
        lines += [
            f"## {phase.num_users:,} users",
            "",
            f"{phase.requests_per_day:,.0f} requests/day, mean {phase.mean_rate_per_s:.1f}/s, "
            f"busiest minute {phase.peak_rate_per_s:.1f}/s. Right-sized: **{phase.replicas_at_peak}"
            f" x {phase.hardware}** at peak ({phase.capacity_per_replica_per_s:.0f} req/s each); "
            f"kept for availability: {phase.floor_replicas}.",
            "",
            "| strategy | hardware | bought | replicas | replica-h/day | USD/month | p50 ms "
            "| p99 ms | SLO attainment | meets SLO | estimated | note |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
        ]
        for o in phase.outcomes:
            lines.append(
                f"| {o.strategy} | {o.hardware} | {o.pricing} | {_replicas(o)} | "
                f"{o.replica_hours_per_day:.1f} | {_money(o.monthly_cost_usd)} | {o.p50_ms:.1f} | "
                f"{o.p99_ms:.0f} | {o.slo_attainment:.4f} | {'yes' if o.meets_slo else 'no'} | "
                f"{estimate_mark(o)} | {o.note} |"
            )
        if phase.cost_ratio is not None:
            lines += [
                "",
                f"Costliest architecture meeting the SLO ({phase.costliest}) / cheapest "
                f"({phase.cheapest}): **{phase.cost_ratio:.1f}x**.",
            ]
        else:
            lines += ["", "No architecture met the SLO in this phase."]
        lines += ["", f"![traffic and capacity]({images[f'traffic_{phase.num_users}']})", ""]
    lines += [f"![cost per phase]({images['cost']})", ""]
    return "\n".join(lines)


def _html(markdown: str, result: PlanResult) -> str:
    """A plain page from the Markdown above (tables, headings, images, paragraphs)."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if not table:
            return
        head, *rows = table
        body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
        for row in rows:
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
        body.append("</table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        flush_table()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}">')
        elif line.strip():
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Capacity plan: "
        f"{html.escape(result.model)}</title><style>{style}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(result: PlanResult, folder: str | Path) -> PlanResult:
    """Write ``report.md``, ``report.html``, ``plan.json`` and the PNGs into ``folder``
    (created if missing); returns ``result`` with ``files`` set to the paths written."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    written: list[Path] = []
    for phase in result.phases:
        name = f"traffic_{phase.num_users}.png"
        _plot_traffic(phase, out / name)
        images[f"traffic_{phase.num_users}"] = name
        written.append(out / name)
    _plot_costs(result, out / "cost.png")
    images["cost"] = "cost.png"
    written.append(out / "cost.png")
    markdown = _markdown(result, images)
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(_html(markdown, result))
    written += [out / "report.md", out / "report.html", out / "plan.json"]
    final = replace(result, files=tuple(str(p) for p in written))
    (out / "plan.json").write_text(json.dumps(final.to_dict(), indent=1) + "\n")
    return final
