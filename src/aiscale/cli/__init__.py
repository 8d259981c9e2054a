"""The ``aiscale`` command: one Typer app whose subcommands are thin calls into the parts.

Commands live in one module per area (serving, registry, releases, planning); importing them
registers them on the shared app. Only this package prints or exits the process.
"""

from __future__ import annotations

# isort: off
# Importing a command module registers its commands; this order is the order of `aiscale --help`.
from aiscale.cli import serving, registry, releases, data, planning, gpus  # noqa: F401
from aiscale.cli import apply, get  # noqa: F401
from aiscale.cli import keys_usage  # noqa: F401
from aiscale.cli._common import app

# isort: on


def main() -> None:
    """Entry point of the ``aiscale`` script."""
    app()


__all__ = ["app", "main"]
