"""Write an LLM capacity plan as Markdown and HTML pages with PNG plots.

Plots (matplotlib, headless ``Agg``): the monthly cost of the cheapest strategy meeting the
SLO per architecture and phase (``llm_cost.png``, log scale), and for the largest phase a
day of traffic against the replicas each strategy paid for on the cheapest architecture
(``llm_fleet.png``). The pages hold the same tables. Writes only inside the folder given;
formats an ``LlmPlanResult``, never simulates.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

from aiscale.plan.llm.planner import LlmOutcome, LlmPhasePlan, LlmPlanResult

__all__ = ["llm_summary", "write_llm_report"]


def _money(value: float) -> str:
    return f"${value:,.0f}"


def _replicas(outcome: LlmOutcome) -> str:
    low, high = outcome.min_replicas, outcome.max_replicas
    return str(high) if low == high else f"{low}-{high}"


def _ratio_line(phase: LlmPhasePlan) -> str:
    low, high, ratio = phase.cheapest, phase.costliest, phase.cost_ratio
    if low is None or high is None or ratio is None:
        return "No architecture met the SLO in this phase."
    return (
        f"Costliest architecture meeting the SLO ({high.architecture}, "
        f"{_money(high.monthly_cost_usd)}/month) over the cheapest ({low.architecture}, "
        f"{_money(low.monthly_cost_usd)}/month): **{ratio:.1f}x**."
    )


def llm_summary(result: LlmPlanResult) -> str:
    """One paragraph per phase: what to buy and the cost ratio."""
    lines = []
    for phase in result.phases:
        best = phase.cheapest
        if best is None:
            lines.append(f"{phase.num_users:,} users: nothing in the catalog met the SLO.")
            continue
        ratio = phase.cost_ratio
        lines.append(
            f"{phase.num_users:,} users: {_replicas(best)} x {best.hardware}"
            + (f" (TP {best.tensor_parallel})" if best.tensor_parallel > 1 else "")
            + f", {best.strategy}, {_money(best.monthly_cost_usd)}/month"
            + (" (estimate)" if best.is_estimate else "")
            + (f"; costliest/cheapest meeting the SLO {ratio:.1f}x" if ratio is not None else "")
        )
    return "\n".join(lines)


def _plot_costs(result: LlmPlanResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = sorted(
        {(o.hardware, o.tensor_parallel) for p in result.phases for o in p.outcomes},
        key=lambda hw: (hw[0], hw[1]),
    )
    width = 0.8 / max(len(labels), 1)
    for k, (hardware, tp) in enumerate(labels):
        costs = []
        for phase in result.phases:
            fitting = [
                o.monthly_cost_usd
                for o in phase.outcomes
                if o.hardware == hardware and o.tensor_parallel == tp and o.meets_slo
            ]
            costs.append(min(fitting) if fitting else 0.0)
        xs = [i + (k - (len(labels) - 1) / 2) * width for i in range(len(result.phases))]
        name = hardware if tp == 1 else f"{hardware} x{tp}"
        ax.bar(xs, costs, width=width, label=name)
    ax.set_xticks(range(len(result.phases)))
    ax.set_xticklabels([f"{p.num_users:,} users" for p in result.phases])
    ax.set_ylabel("USD per month (cheapest strategy meeting the SLO)")
    if any(o.meets_slo for p in result.phases for o in p.outcomes):
        ax.set_yscale("log")
    ax.set_title(f"{result.model}: monthly cost by architecture (missing bar: SLO not met)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_fleet(phase: LlmPhasePlan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = phase.cheapest or min(phase.outcomes, key=lambda o: -o.slo_attainment)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    hours = [i / 60.0 for i in range(len(phase.rate_per_minute))]
    ax.plot(hours, phase.rate_per_minute, color="black", linewidth=1.0, label="requests/s")
    ax2 = ax.twinx()
    for outcome in phase.outcomes:
        if (outcome.hardware, outcome.tensor_parallel) != (best.hardware, best.tensor_parallel):
            continue
        times = [t / 3600.0 for t, _, _ in outcome.timeline]
        paid = [p for _, p, _ in outcome.timeline]
        ax2.step(times, paid, where="post", linewidth=1.2, label=f"{outcome.strategy} replicas")
    ax.set_xlabel("hour")
    ax.set_ylabel("requests/s")
    ax2.set_ylabel("replicas paid for")
    label = best.hardware + ("" if best.tensor_parallel == 1 else f" x{best.tensor_parallel}")
    ax.set_title(f"{phase.num_users:,} users on {label}: traffic and fleet per strategy")
    ax2.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _markdown(result: LlmPlanResult, images: dict[str, str]) -> str:
    lines = [
        f"# LLM capacity plan: {result.model}",
        "",
        f"SLO: {result.slo_target:.0%} of requests with the first token within "
        f"{result.ttft_slo_s * 1000:g} ms and tokens every {result.itl_slo_s * 1000:g} ms or "
        f"faster (mean per request). Traffic: {result.requests_per_user:g} chat requests per "
        f"user per day, {result.traffic}; mean prompt {result.mean_prompt_tokens:.0f} and "
        f"output {result.mean_output_tokens:.0f} tokens. A day per phase in the aggregated "
        "simulator; monthly = 730 h. Profiles of GPUs are roofline estimates from the catalog "
        "(`aiscale.plan.llm.catalog`); `est.` marks an estimated profile or an uncertain "
        "price. A replica is one engine on its tensor-parallel devices; its price is their "
        "share of the instance.",
        "",
    ]
    for warning in result.warnings:
        lines += [f"**Warning:** {warning}", ""]
    lines += ["## Summary", "", *[f"- {line}" for line in llm_summary(result).splitlines()], ""]
    for phase in result.phases:
        lines += [
            f"## {phase.num_users:,} users",
            "",
            f"{phase.requests_per_day:,.0f} requests/day, busiest minute "
            f"{phase.peak_rate_per_s:.1f}/s.",
            "",
            "| hardware | TP | instance | strategy | replicas | replica-h/day | USD/month "
            "| TTFT p99 s | TPOT p99 ms | SLO attainment | meets SLO | est. |",
            "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for o in phase.outcomes:
            lines.append(
                f"| {o.hardware} | {o.tensor_parallel} | {o.instance} | {o.strategy} | "
                f"{_replicas(o)} | {o.replica_hours_per_day:.1f} | "
                f"{_money(o.monthly_cost_usd)} | {o.ttft_p99_s:.2f} | "
                f"{o.tpot_p99_s * 1000:.0f} | {o.slo_attainment:.4f} | "
                f"{'yes' if o.meets_slo else 'no'} | {'est.' if o.is_estimate else ''} |"
            )
        lines += ["", _ratio_line(phase), ""]
    lines += [f"![cost per architecture]({images['cost']})", ""]
    lines += [f"![fleet of the largest phase]({images['fleet']})", ""]
    return "\n".join(lines)


def _html(markdown: str, title: str) -> str:
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *rows = table
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            body.extend("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
            body.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_llm_report(result: LlmPlanResult, folder: str | Path) -> LlmPlanResult:
    """Write ``llm_report.md``, ``llm_report.html``, ``llm_plan.json`` and the PNGs into
    ``folder`` (created if missing); returns ``result`` with ``files`` set."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images = {"cost": "llm_cost.png", "fleet": "llm_fleet.png"}
    _plot_costs(result, out / images["cost"])
    _plot_fleet(max(result.phases, key=lambda p: p.num_users), out / images["fleet"])
    markdown = _markdown(result, images)
    (out / "llm_report.md").write_text(markdown)
    (out / "llm_report.html").write_text(_html(markdown, f"LLM capacity plan: {result.model}"))
    written = [out / images["cost"], out / images["fleet"]]
    written += [out / "llm_report.md", out / "llm_report.html", out / "llm_plan.json"]
    final = replace(result, files=tuple(str(p) for p in written))
    (out / "llm_plan.json").write_text(json.dumps(final.to_dict(), indent=1) + "\n")
    return final
