"""``rollout``, ``rollback`` and ``experiment``: releasing versions safely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aiscale.cli._common import (
    DataDirOption,
    KeyOption,
    RegistryUrlOption,
    UrlOption,
    _admin_call,
    _stdout,
    app,
    open_registry,
    reported_errors,
    resolve_paths,
)

# --------------------------------------------------------------- releases

rollout_app = typer.Typer(
    help="Progressive rollouts: canary steps judged by statistics.", no_args_is_help=True
)
app.add_typer(rollout_app, name="rollout")


def _print_rollout(info: dict[str, Any]) -> None:
    console = _stdout()
    console.print(
        f"{info['deployment']}: {info['baseline']} -> {info['canary']} {info['status']} at step "
        f"{info['step_index']} ({info['canary_percent']:g}% canary of {info['steps']})",
        highlight=False,
    )
    if info.get("reason"):
        console.print(f"  reason: {info['reason']}", highlight=False, soft_wrap=True)
    table = Table("version", "requests", "errors", "p50 ms", "p99 ms")
    for version, counts in info.get("versions", {}).items():
        latency = counts["latency_ms"]
        table.add_row(
            version,
            str(counts["num_requests"]),
            str(counts["num_errors"]),
            "-" if latency["p50"] is None else f"{latency['p50']:.1f}",
            "-" if latency["p99"] is None else f"{latency['p99']:.1f}",
        )
    console.print(table)
    decision = info.get("last_decision")
    if decision:
        tests = Table("test", "method", "baseline", "canary", "p-value", "worse")
        for test in decision["tests"]:
            tests.add_row(
                test["name"],
                test["method"],
                f"{test['baseline']:.4g}",
                f"{test['canary']:.4g}",
                f"{test['p_value']:.3g}",
                "yes" if test["is_worse"] else "no",
            )
        console.print(f"last decision: {decision['verdict']}", highlight=False)
        console.print(tests)


@rollout_app.command("start")
def rollout_start(
    deployment: Annotated[str, typer.Argument(help="Deployment to roll out.")],
    version: Annotated[str, typer.Argument(help="Canary version (or alias).")],
    steps: Annotated[str, typer.Option(help="Canary percents, ending at 100.")] = "1,5,25,50,100",
    interval_s: Annotated[float, typer.Option("--interval", help="Seconds between looks.")] = 5.0,
    min_step_s: Annotated[float, typer.Option("--min-step", help="Least seconds per step.")] = 30.0,
    min_requests: Annotated[
        int, typer.Option(help="Requests per version before any verdict.")
    ] = 500,
    alpha: Annotated[float, typer.Option(help="Bound on the false rollback rate.")] = 0.05,
    shadow: Annotated[
        float, typer.Option(help="Share of traffic also mirrored to the canary.")
    ] = 0.0,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Warm the canary's replicas, then move traffic to it step by step."""
    from aiscale.rollout.controller import steps_from_text

    with reported_errors():
        body = {
            "version": version,
            "steps": list(steps_from_text(steps)),
            "interval_s": interval_s,
            "min_step_duration_s": min_step_s,
            "min_requests": min_requests,
            "alpha": alpha,
            "shadow_fraction": shadow,
        }
        _print_rollout(
            _admin_call("POST", url, f"/admin/deployments/{deployment}/rollout", key, body)
        )


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@rollout_app.command("status")
def rollout_status(
    deployment: str,
    as_json: JsonOption = False,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Where the rollout is, the last decision with its numbers, and per-version counts."""
    with reported_errors():
        info = _admin_call("GET", url, f"/admin/deployments/{deployment}/rollout", key)
    if as_json:
        print(json.dumps(info))
    else:
        _print_rollout(info)


def _rollout_action(action: str, deployment: str, url: str, key: str | None) -> None:
    with reported_errors():
        _print_rollout(
            _admin_call("POST", url, f"/admin/deployments/{deployment}/rollout/{action}", key)
        )


@rollout_app.command("pause")
def rollout_pause(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Hold the current split; no step is taken until resume."""
    _rollout_action("pause", deployment, url, key)


@rollout_app.command("resume")
def rollout_resume(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Continue a paused rollout."""
    _rollout_action("resume", deployment, url, key)


@rollout_app.command("promote")
def rollout_promote(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Give the canary all traffic now and end the rollout."""
    _rollout_action("promote", deployment, url, key)


@rollout_app.command("abort")
def rollout_abort(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Send all traffic back to the baseline and end the rollout."""
    _rollout_action("abort", deployment, url, key)


@rollout_app.command("history")
def rollout_history(
    deployment: str,
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Rollouts, their decisions, and which version served which share when (from the registry)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        from aiscale.registry.front import rollout_history as history_of

        history = history_of(registry, deployment)
    if as_json:
        print(json.dumps(history, default=str))
        return
    console = _stdout()
    table = Table("at (UTC)", "split", "cause")
    for entry in history["traffic"]:
        table.add_row(entry["at"], json.dumps(entry["split"]["weights"]), entry["cause"])
    console.print(table)
    decisions = Table("rollout", "at (UTC)", "step", "verdict", "reason")
    for rollout in history["rollouts"]:
        for decision in rollout["decisions"]:
            decisions.add_row(
                str(rollout["rollout_id"]),
                decision["at"],
                str(decision["step_index"]),
                decision["verdict"],
                decision["reason"][:120],
            )
    console.print(decisions)


@app.command()
def rollback(
    deployment: str, url: UrlOption = "http://127.0.0.1:8000", key: KeyOption = None
) -> None:
    """Back to the previous version at once (aborts a rollout in progress)."""
    with reported_errors():
        info = _admin_call("POST", url, f"/admin/deployments/{deployment}/rollback", key)
    _stdout().print(f"{deployment} now serves version {info['version']}", highlight=False)


experiment_app = typer.Typer(
    help="A/B experiments between the versions a deployment serves.", no_args_is_help=True
)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("report")
def experiment_report(
    deployment: Annotated[str, typer.Argument(help="Deployment whose versions to compare.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.html/.md/.json and the plots.")
    ] = Path("experiment-report"),
    baseline: Annotated[
        str | None, typer.Option(help="Version to compare against [default: most traffic].")
    ] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Per-version traffic, error rate and latency with intervals and tests, plus plots."""
    from aiscale.rollout.report import build_report
    from aiscale.rollout.report_output import render_table, write_report

    with reported_errors():
        stats = _admin_call("GET", url, f"/admin/deployments/{deployment}/stats", key)
        report = build_report(stats, baseline=baseline)
        written = write_report(report, out)
    console = _stdout()
    console.print(render_table(report))
    console.print(f"written: {', '.join(str(p) for p in written)}", highlight=False, soft_wrap=True)
