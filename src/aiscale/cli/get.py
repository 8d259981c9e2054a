"""``aiscale get deployments|models|keys|rollouts [-o table|json|yaml]``: what is there.

Deployments and rollouts are asked of a running server (``--url``); models and keys are read
from the registry (``--data-dir`` / ``--registry-url``), like ``models list`` and ``keys list``.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from aiscale.cli._common import (
    DataDirOption,
    KeyOption,
    RegistryUrlOption,
    UrlOption,
    _stdout,
    app,
    open_registry,
    reported_errors,
    resolve_paths,
)
from aiscale.cli.registry import keys_data, keys_table, models_data, models_table
from aiscale.errors import NotFound


class Resource(StrEnum):
    deployments = "deployments"
    models = "models"
    keys = "keys"
    rollouts = "rollouts"


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


def _deployments_table(deployments: list[dict[str, Any]]) -> Table:
    table = Table("name", "model", "version", "ready", "wanted", "split", "queue")
    for info in deployments:
        weights = info["split"]["weights"]
        table.add_row(
            info["name"],
            info["model"],
            info["version"],
            str(info["replicas"]["ready"]),
            str(info["replicas"]["wanted"]),
            ", ".join(f"{v}:{w:g}%" for v, w in weights.items()),
            str(info["queue_depth"]),
        )
    return table


def _rollouts_table(rollouts: list[dict[str, Any]]) -> Table:
    table = Table("deployment", "baseline", "canary", "status", "step", "canary %")
    for info in rollouts:
        table.add_row(
            info["deployment"],
            str(info["baseline"]),
            str(info["canary"]),
            str(info["status"]),
            str(info["step_index"]),
            f"{info['canary_percent']:g}",
        )
    return table


def _rollouts(client: Any) -> list[dict[str, Any]]:
    """The newest rollout of each running deployment that has one."""
    found = []
    for info in client.deployments():
        try:
            found.append(client.rollout(info["name"]))
        except NotFound:
            continue
    return found


@app.command()
def get(
    resource: Annotated[Resource, typer.Argument(help="What to list.")],
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", help="table, json or yaml.")
    ] = OutputFormat.table,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """List running deployments or rollouts (from the server), or models or keys (registry)."""
    from aiscale.client import Client

    with reported_errors():
        items: list[dict[str, Any]]
        if resource in (Resource.deployments, Resource.rollouts):
            with Client(url, key) as client:
                if resource is Resource.deployments:
                    items = client.deployments()
                else:
                    items = _rollouts(client)
        else:
            with open_registry(resolve_paths(data_dir, registry_url)) as registry:
                items = (
                    models_data(registry) if resource is Resource.models else keys_data(registry)
                )
    if output is OutputFormat.json:
        print(json.dumps(items))
    elif output is OutputFormat.yaml:
        print(yaml.safe_dump(items, sort_keys=False), end="")
    else:
        tables = {
            Resource.deployments: _deployments_table,
            Resource.models: models_table,
            Resource.keys: keys_table,
            Resource.rollouts: _rollouts_table,
        }
        _stdout().print(tables[resource](items))
