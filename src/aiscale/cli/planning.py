"""``profile``, ``simulate`` and ``plan``: capacity and cost before the traffic comes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aiscale.cli._common import (
    _stderr,
    _stdout,
    app,
    reported_errors,
)
from aiscale.errors import ConfigError

# --------------------------------------------------------------- capacity planning


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="'minilm' or an import path pkg.module:Class.")],
    out: Annotated[Path, typer.Option("--out", help="Profile JSON to write.")],
    hardware: Annotated[
        str | None, typer.Option(help="Catalog hardware to derive an estimate for.")
    ] = None,
    seconds_per_size: Annotated[float, typer.Option(help="Seconds measured per batch size.")] = 1.0,
    server: Annotated[
        bool,
        typer.Option(
            "--server/--no-server",
            help="Also measure the server terms through a real aiscale serve (minilm).",
        ),
    ] = True,
    server_seconds: Annotated[
        float, typer.Option(help="Seconds of load per server calibration level.")
    ] = 5.0,
    num_threads: Annotated[
        int | None,
        typer.Option(help="Torch threads per replica, as aiscale serve --num-threads [all cores]."),
    ] = None,
    repeats: Annotated[
        int,
        typer.Option(
            help="Interleaved repeats of every measurement; the profile keeps each figure's "
            "median and records their spread."
        ),
    ] = 3,
    server_data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the calibration server's data (its capture log: the disk probed), "
            "e.g. a tmpfs [default: the system's temporary folder]."
        ),
    ] = None,
    context_window: Annotated[
        int,
        typer.Option(
            min=64, help="An LLM: the engine's tokens per request, as the deployment's engine."
        ),
    ] = 2048,
    parallel: Annotated[
        int, typer.Option(min=1, help="An LLM: the engine's slots, as the deployment's engine.")
    ] = 4,
) -> None:
    """Measure latency and throughput against batch size, memory per replica, and what a real
    server adds (per-request overhead, in-server slowdown under load, throughput at full
    batches), here; every figure repeated, interleaved, and its spread recorded. An LLM
    ('smollm2' or a .gguf file): prefill and decode step times of a real llama.cpp engine,
    its KV cache and start-up, as an LLM profile for ``plan --llm --llm-profile``."""
    from aiscale.engines.models import is_llm_model_arg
    from aiscale.plan.commands import profile_command, profile_steadiness

    if is_llm_model_arg(model):
        _profile_llm(model, out, num_threads, repeats, context_window, parallel)
        return

    with reported_errors():
        result = profile_command(
            model,
            out,
            hardware=hardware,
            seconds_per_size=seconds_per_size,
            is_server_measured=server,
            server_seconds_per_level=server_seconds,
            num_threads=num_threads,
            repeats=repeats,
            server_data_dir=server_data_dir,
        )
    table = Table("batch size", "latency ms", "items/s")
    for size, latency_ms, rate in zip(
        result.batch_sizes, result.latency_ms, result.throughput_per_s, strict=True
    ):
        table.add_row(str(size), f"{latency_ms:.1f}", f"{rate:.1f}")
    _stdout().print(table)
    if result.measured_on is not None:
        _stdout().print(f"measured on: {result.measured_on}", highlight=False)
    if result.server is not None:
        terms = result.server
        growth = (
            ", ".join(
                f"{m:.1f} at {r:.0f}/s"
                for r, m in zip(terms.overhead_rates_per_s, terms.overhead_mean_ms, strict=True)
            )
            if terms.overhead_rates_per_s
            else f"+{terms.overhead_growth_per_rps * 100:.2f}%/(req/s)"
        )
        _stdout().print(
            f"server ({terms.label}): overhead p50 {float(terms.overhead_at(0.5)) * 1000:.1f} ms, "
            f"p99 {float(terms.overhead_at(0.99)) * 1000:.1f} ms, mean ms by rate: {growth}; "
            f"model slowdown {terms.model_slowdown:.2f} + "
            f"{terms.model_slowdown_per_rps:.4f}/(req/s)",
            highlight=False,
        )
        if terms.disk is not None:
            disk = terms.disk
            stalls = (
                f"{disk.stall_rate_per_s * 60:.1f} stalls/min of {min(disk.stall_ms):.0f}-"
                f"{max(disk.stall_ms):.0f} ms"
                if disk.stall_ms
                else "no stalls"
            )
            _stdout().print(
                f"capture commit (write + fdatasync): p50 {float(disk.sync_at(0.5)) * 1000:.2f} "
                f"ms, p99 {float(disk.sync_at(0.99)) * 1000:.2f} ms, {stalls}; captured "
                "responses wait for it",
                highlight=False,
            )
        if terms.slowdown_rates_per_s:
            _stdout().print(
                "in-server slowdown by rate: "
                + ", ".join(
                    f"{v:.2f} at {r:.0f}/s"
                    for r, v in zip(terms.slowdown_rates_per_s, terms.slowdown_values, strict=True)
                ),
                highlight=False,
            )
    if result.repeats is not None:
        widest = result.repeats.widest()
        if widest is not None:
            _stdout().print(
                f"repeats: {result.repeats.count}; widest checked figure: {widest.name} "
                f"{widest.low:.4g}-{widest.high:.4g} ({widest.relative_spread:.0%} of its "
                "median)",
                highlight=False,
            )
    unsteady, _ = profile_steadiness(result)
    if unsteady is not None:
        _stderr().print(
            f"warning: the machine was not steady while profiling ({unsteady}); simulate and "
            "plan refuse this profile without --accept-unsteady: profile again when it is "
            "quieter",
            highlight=False,
        )
    if result.spread is not None:
        ratios = result.spread.ratio_at([0.1, 0.5, 0.9, 0.99])
        _stdout().print(
            "batch time spread (p10 / p50 / p90 / p99 over the median): "
            + " / ".join(f"{r:.2f}" for r in ratios),
            highlight=False,
        )
    _stdout().print(f"written: {out}", highlight=False)


@app.command()
def simulate(
    profile_path: Annotated[
        Path, typer.Option("--profile", help="Model profile JSON (aiscale profile).")
    ],
    policy: Annotated[
        str,
        typer.Option(
            help="static, reactive, kpa, predictive, oracle (searched: the fewest "
            "replica-hours meeting 99% of requests within the SLO) or oracle-70 (the old "
            "fixed-70%-capacity bound)."
        ),
    ] = "predictive",
    slo_p99_ms: Annotated[float, typer.Option(help="Latency SLO: p99 under this many ms.")] = 500.0,
    trace: Annotated[Path | None, typer.Option(help="CSV trace with a TIMESTAMP column.")] = None,
    users: Annotated[int | None, typer.Option(help="Synthetic traffic: number of users.")] = None,
    requests_per_user: Annotated[
        float | None, typer.Option(help="Requests per user per day.")
    ] = None,
    shape: Annotated[str, typer.Option(help="flat, daily, weekly or bursty.")] = "daily",
    rate_scale: Annotated[float, typer.Option(help="Multiply the trace's arrival rate.")] = 1.0,
    time_scale: Annotated[float, typer.Option(help="Stretch the trace's time axis.")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Seconds to simulate.")] = None,
    mode: Annotated[str, typer.Option(help="exact, aggregated or auto.")] = "auto",
    replicas: Annotated[int | None, typer.Option(help="Replicas for the static policy.")] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Largest batch [default: the largest fitting the SLO].")
    ] = None,
    hardware: Annotated[str | None, typer.Option(help="Catalog hardware.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    scale_by: Annotated[
        str,
        typer.Option(
            help="How --rate-scale changes a trace: 'poisson' (a Poisson process over its "
            "per-minute rate, as many independent users) or 'copy' (each request copied)."
        ),
    ] = "poisson",
    accept_unsteady: Annotated[
        bool,
        typer.Option(
            "--accept-unsteady",
            help="Use a profile measured on an unsteady machine (with a warning).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Replay arrivals through queues, batching, replicas and a scaling policy in simulated time."""
    from aiscale.plan.commands import simulate_command

    with reported_errors():
        result = simulate_command(
            profile=profile_path,
            policy=policy,
            slo_p99_ms=slo_p99_ms,
            trace=trace,
            users=users,
            requests_per_user=requests_per_user,
            shape=shape,
            rate_scale=rate_scale,
            time_scale=time_scale,
            duration_s=duration,
            mode=mode,
            replicas=replicas,
            hardware=hardware,
            seed=seed,
            max_batch_size=max_batch_size,
            scale_by=scale_by,
            is_unsteady_accepted=accept_unsteady,
        )
    for warning in result["warnings"]:
        _stderr().print(f"warning: {warning}", highlight=False)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("field", "value")
    for name in (
        "requests",
        "p50_ms",
        "p99_ms",
        "slo_attainment",
        "replica_hours",
        "cost_usd",
        "mode",
    ):
        value = result.get(name)
        table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    _stdout().print(table)


@app.command()
def plan(
    users: Annotated[
        str, typer.Option(help="Phases as user counts, e.g. 10000,100000,500000,1000000.")
    ],
    requests_per_user: Annotated[
        float | None,
        typer.Option(help="Requests per user per day (required; with --llm default 20)."),
    ] = None,
    profile_path: Annotated[
        Path | None,
        typer.Option("--profile", help="Model profile JSON (aiscale profile; not with --llm)."),
    ] = None,
    slo_p99_ms: Annotated[float, typer.Option(help="Latency SLO: p99 under this many ms.")] = 500.0,
    report: Annotated[
        Path | None, typer.Option(help="Folder for the HTML/Markdown report and plots.")
    ] = None,
    shape: Annotated[str, typer.Option(help="flat, daily, weekly or bursty.")] = "daily",
    redundancy_from_users: Annotated[
        int | None,
        typer.Option(help="From this many users on, keep at least 2 replicas [default: 10000]."),
    ] = None,
    accept_unsteady: Annotated[
        bool,
        typer.Option(
            "--accept-unsteady",
            "--allow-unsteady-profile",
            help="Plan from a profile measured on an unsteady machine (with a warning).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    llm: Annotated[
        bool, typer.Option("--llm", help="Plan an LLM deployment (tokens, TTFT, ITL).")
    ] = False,
    llm_model: Annotated[
        str, typer.Option("--model", help="--llm: smollm2, llama-3-8b or llama-3-70b.")
    ] = "llama-3-8b",
    ttft_ms: Annotated[float, typer.Option(help="--llm: time-to-first-token target.")] = 1000.0,
    itl_ms: Annotated[float, typer.Option(help="--llm: inter-token latency target.")] = 100.0,
    slo_target: Annotated[
        float, typer.Option(help="--llm: share of requests that must meet both.")
    ] = 0.99,
    trace: Annotated[
        Path | None,
        typer.Option(help="--llm: CSV with TIMESTAMP, ContextTokens, GeneratedTokens."),
    ] = None,
    hardware: Annotated[
        str | None, typer.Option(help="--llm: catalog hardware to consider, e.g. L4,H100.")
    ] = None,
    step_s: Annotated[float, typer.Option(help="--llm: simulator time step (s).")] = 2.0,
    llm_profile: Annotated[
        Path | None, typer.Option(help="--llm: a measured LLM profile JSON for its hardware.")
    ] = None,
) -> None:
    """Per phase: replicas, hardware, monthly cost and SLO attainment of each scaling strategy,
    and what to buy (``--llm``: of an LLM deployment, per architecture and tensor parallel)."""
    from rich.progress import Progress

    from aiscale.plan.commands import plan_command
    from aiscale.plan.report import estimate_mark, recommendation

    if llm:
        _plan_llm(
            users=users,
            requests_per_user=requests_per_user,
            model=llm_model,
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            slo_target=slo_target,
            trace=trace,
            hardware=hardware,
            step_s=step_s,
            llm_profile=llm_profile,
            report=report,
            as_json=as_json,
        )
        return
    if requests_per_user is None or profile_path is None:
        with reported_errors():
            raise ConfigError(
                "--requests-per-user and --profile are required (or plan an LLM with --llm)",
                field="profile" if profile_path is None else "requests_per_user",
            )
        return
    with reported_errors(), Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("simulating", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        result = plan_command(
            users=users,
            requests_per_user=requests_per_user,
            slo_p99_ms=slo_p99_ms,
            profile=profile_path,
            report=report,
            shape=shape,
            on_progress=on_progress,
            is_unsteady_profile_allowed=accept_unsteady,
            redundancy_from_users=redundancy_from_users,
        )
    for warning in result.warnings:
        _stderr().print(f"warning: {warning}", highlight=False)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    out = _stdout()
    out.print(recommendation(result), highlight=False, markup=False)
    table = Table(
        "users",
        "strategy",
        "hardware",
        "bought",
        "replicas",
        "USD/mo",
        "in SLO",
        "estimated",
        title=f"{result.model}: {result.slo_target:.0%} within {result.slo_p99_ms:g} ms",
    )
    for phase in result.phases:
        # The other hardware's static rows are in the report and in --json.
        rows = [o for o in phase.outcomes if o.hardware == phase.hardware]
        for outcome in rows:
            table.add_row(
                f"{phase.num_users:,}" if outcome is rows[0] else "",
                outcome.strategy,
                outcome.hardware,
                outcome.pricing,
                f"{outcome.min_replicas}-{outcome.max_replicas}"
                if outcome.min_replicas != outcome.max_replicas
                else str(outcome.max_replicas),
                f"${outcome.monthly_cost_usd:,.0f}",
                f"{outcome.slo_attainment:.2%}" + ("" if outcome.meets_slo else " (miss)"),
                estimate_mark(outcome),
                end_section=outcome is rows[-1],
            )
    out.print(table)
    out.print(
        f"At least 2 replicas from {result.redundancy_from_users:,} users on (scale to zero "
        "excepted); est. = a speed or price the catalog marks as an estimate.",
        highlight=False,
    )
    if result.files:
        out.print(f"report: {', '.join(result.files)}", highlight=False, soft_wrap=True)


def _plan_llm(
    *,
    users: str,
    requests_per_user: float | None,
    model: str,
    ttft_ms: float,
    itl_ms: float,
    slo_target: float,
    trace: Path | None,
    hardware: str | None,
    step_s: float,
    llm_profile: Path | None,
    report: Path | None,
    as_json: bool,
) -> None:
    """``aiscale plan --llm``: per phase, each architecture's fleet, cost and SLO, and the
    cost ratio between the costliest and the cheapest meeting the SLO."""
    from rich.progress import Progress

    from aiscale.plan.llm.command import plan_llm_command
    from aiscale.plan.llm.report import llm_summary

    with reported_errors(), Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("simulating", total=None)

        def on_progress(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=label)

        result = plan_llm_command(
            users=users,
            requests_per_user=requests_per_user,
            model=model,
            ttft_ms=ttft_ms,
            itl_ms=itl_ms,
            slo_target=slo_target,
            trace=trace,
            hardware=hardware,
            step_s=step_s,
            llm_profile=llm_profile,
            report=report,
            on_progress=on_progress,
        )
    for warning in result.warnings:
        _stderr().print(f"warning: {warning}", highlight=False)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    out = _stdout()
    out.print(llm_summary(result), highlight=False, markup=False)
    table = Table(
        "users",
        "hardware",
        "TP",
        "strategy",
        "replicas",
        "USD/mo",
        "in SLO",
        "est.",
        title=f"{result.model}: {result.slo_target:.0%} with TTFT <= "
        f"{result.ttft_slo_s * 1000:g} ms and ITL <= {result.itl_slo_s * 1000:g} ms",
    )
    for phase in result.phases:
        for outcome in phase.outcomes:
            table.add_row(
                f"{phase.num_users:,}" if outcome is phase.outcomes[0] else "",
                outcome.hardware,
                str(outcome.tensor_parallel),
                outcome.strategy,
                f"{outcome.min_replicas}-{outcome.max_replicas}"
                if outcome.min_replicas != outcome.max_replicas
                else str(outcome.max_replicas),
                f"${outcome.monthly_cost_usd:,.0f}",
                f"{outcome.slo_attainment:.2%}" + ("" if outcome.meets_slo else " (miss)"),
                "est." if outcome.is_estimate else "",
                end_section=outcome is phase.outcomes[-1],
            )
    out.print(table)
    if result.files:
        out.print(f"report: {', '.join(result.files)}", highlight=False, soft_wrap=True)


def _profile_llm(
    model: str,
    out: Path,
    num_threads: int | None,
    repeats: int,
    context_window: int,
    parallel: int,
) -> None:
    """``aiscale profile smollm2``: measure one llama.cpp engine (``parallel`` slots of
    ``context_window`` tokens) and write its LLM profile; each point repeated ``repeats``
    times (the median is kept)."""
    import asyncio

    from aiscale.engines.models import served_name_of
    from aiscale.errors import InvalidInput
    from aiscale.plan.llm.profile import save_llm_profile
    from aiscale.plan.llm.profiling import profile_llamacpp
    from aiscale.plan.profiling import cpu_model

    with reported_errors():
        if repeats < 1:
            raise InvalidInput(f"--repeats must be >= 1, got {repeats}", field="repeats")
        result = asyncio.run(
            profile_llamacpp(
                model,
                threads=num_threads,
                parallel=parallel,
                context_window=context_window,
                repeats=repeats,
                measured_on=cpu_model(),
            )
        )
        result = replace(result, model=served_name_of(model))
        save_llm_profile(result, out)
    table = Table("figure", "value")
    for name, value, unit in (
        ("decode step, base", result.step_base_s * 1000, "ms"),
        ("decode step, per sequence", result.decode_per_seq_s * 1000, "ms"),
        ("decode step, per 1k context tokens", result.decode_per_context_token_s * 1e6, "ms"),
        ("prefill, per prompt token", result.prefill_per_token_s * 1000, "ms"),
        ("KV cache", float(result.kv_capacity_tokens), "tokens"),
        ("weight load", result.weight_load_s, "s"),
        ("warm-up", result.warmup_s, "s"),
        ("gateway adds (per request)", result.gateway_overhead_s * 1000, "ms"),
    ):
        table.add_row(name, f"{value:.4g} {unit}")
    _stdout().print(table)
    _stdout().print(f"written: {out}", highlight=False)
