"""``aiscale gpus``: the GPU pool of a running server — devices and their holders, use per
team against its quota, requests waiting for capacity, and time from request to serving."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from aiscale.cli._common import KeyOption, UrlOption, _admin_call, _stdout, app, reported_errors


def _limit(value: Any, unit: str) -> str:
    return "no limit" if value is None else f"{value:g}{unit}"


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}s"


def render_pool(pool: dict[str, Any]) -> list[Table | str]:
    """The tables ``aiscale gpus`` prints, from the ``GET /admin/gpus`` answer."""
    devices = Table("device", "kind", "memory MB", "used MB", "free MB", "held by", title="devices")
    for device in pool["devices"]:
        holders = ", ".join(
            f"{h['holder']} ({h['team'] or '-'}, "
            + ("whole" if h["is_exclusive"] else f"{h['memory_mb']} MB")
            + ("" if h["is_serving"] else ", starting")
            + ")"
            for h in device["holders"]
        )
        devices.add_row(
            device["id"],
            device["kind"],
            str(device["memory_mb"]),
            str(device["used_mb"]),
            str(device["free_mb"]),
            holders or "-",
        )
    teams = Table("team", "GPUs used", "GPU quota", "memory MB used", "memory quota", title="teams")
    for team in pool["teams"]:
        teams.add_row(
            team["team"],
            f"{team['used']['gpus']:g}",
            _limit(team["quota"]["max_gpus"], ""),
            str(team["used"]["memory_mb"]),
            _limit(team["quota"]["max_gpu_memory_mb"], " MB"),
        )
    waiting = Table(
        "request", "holder", "team", "GPUs each", "replicas", "priority", "waited", "may wait",
        title="waiting",
    )
    for request in pool["waiting"]:
        waiting.add_row(
            str(request["request_id"]),
            request["holder"],
            request["team"] or "-",
            f"{request['num_gpus']:g}"
            + ("" if request["memory_mb"] is None else f" ({request['memory_mb']} MB)"),
            str(request["num_replicas"]),
            str(request["priority"]),
            _seconds(request["waited_s"]),
            _seconds(request["wait_s"]),
        )
    serving = pool["request_to_serving_s"]
    summary = (
        f"request to serving replica: {serving['count']} measured, last "
        f"{_seconds(serving['last'])}, median {_seconds(serving['p50'])}, "
        f"max {_seconds(serving['max'])}"
    )
    parts: list[Table | str] = [devices, teams]
    parts.append(waiting if pool["waiting"] else "waiting: none")
    parts.append(summary)
    return parts


@app.command()
def gpus(
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Show the GPU pool: devices and who holds them, use per team, waiting requests."""
    with reported_errors():
        pool = _admin_call("GET", url, "/admin/gpus", key)
    if as_json:
        print(json.dumps(pool))
        return
    console = _stdout()
    if not pool["devices"]:
        console.print("no GPUs: NVML found none and none are declared (server.gpus.devices)")
    for part in render_pool(pool):
        console.print(part, highlight=False)
