"""``aiscale apply -f aiscale.yaml``: change a running server to what the file describes.

The file is validated here first (the same config model as the server's: an error names the
dotted path and nothing is sent), then sent to ``POST /admin/apply``, which plans the whole
change, applies all of it or none of it, and answers the diff (``serving/apply.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from aiscale.cli._common import KeyOption, UrlOption, _stdout, app, reported_errors

_MARKS = {"add": "+", "change": "~", "remove": "-", "none": "=", "unmanaged": "?"}


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def diff_lines(result: dict[str, Any]) -> list[str]:
    """The server's answer as the lines ``apply`` prints: one block per deployment."""
    lines = []
    counts = {"add": 0, "change": 0, "remove": 0}
    for entry in result["deployments"]:
        action = entry["action"]
        if action in counts:
            counts[action] += 1
        if action == "none":
            lines.append(f"= {entry['name']}: no changes")
            continue
        if action == "unmanaged":
            lines.append(f"? {entry['name']}: running but not in the file (--prune removes it)")
            continue
        lines.append(f"{_MARKS[action]} {entry['name']} ({action})")
        for change in entry["changes"]:
            if action == "add":
                lines.append(f"    {change['field']}: {_value(change['new'])}")
            elif action == "remove":
                lines.append(f"    {change['field']}: {_value(change['old'])}")
            else:
                lines.append(
                    f"    {change['field']}: {_value(change['old'])} -> {_value(change['new'])}"
                )
    for warning in result.get("warnings", []):
        lines.append(f"warning: {warning}")
    if not result["has_changes"]:
        lines.append("no changes")
    else:
        summary = f"{counts['add']} added, {counts['change']} changed, {counts['remove']} removed"
        is_dry = result["dry_run"]
        lines.append(f"dry run: {summary}; nothing changed" if is_dry else f"applied: {summary}")
    return lines


@app.command()
def apply(
    file: Annotated[
        Path, typer.Option("--file", "-f", help="aiscale.yaml with the deployments wanted.")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the changes; change nothing.")
    ] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Remove running deployments the file does not name.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the server's answer as JSON.")
    ] = False,
    url: UrlOption = "http://127.0.0.1:8000",
    key: KeyOption = None,
) -> None:
    """Bring a running server to FILE: show the diff, then apply all of it or none of it.

    Deployments, versions, replicas, splits, batching, autoscaling and quality checks are
    applied; a second apply of the same file reports no changes.
    """
    from aiscale.client import Client, config_mapping
    from aiscale.config import parse_config

    with reported_errors():
        data = config_mapping(file)
        parse_config(data)  # the whole file, before anything is sent
        with Client(url, key) as client:
            result = client.apply(data, dry_run=dry_run, prune=prune)
    if as_json:
        print(json.dumps(result))
        return
    out = _stdout()
    for line in diff_lines(result):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
