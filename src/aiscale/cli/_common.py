"""Shared pieces of the ``aiscale`` command: the Typer app, settings, and error reporting.

Every command turns an ``AiscaleError`` (or an OS error) into one line on stderr and exit
status 1; usage errors exit 2. The ``cli`` package is the only code that prints or exits.

Settings: ``--data-dir`` (env ``AISCALE_DATA_DIR``, else ``~/.aiscale``) holds the SQLite
registry ``registry.db`` and the artifact store ``artifacts/``; ``--registry-url`` (env
``AISCALE_REGISTRY_URL``) points the registry at another database, e.g. PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from aiscale.data_dir import make_private_data_dir
from aiscale.errors import AiscaleError, InvalidInput
from aiscale.registry import FsspecArtifactStore, SqlRegistry

app = typer.Typer(
    name="aiscale",
    help="Serve AI models fast, release them safely, scale them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help: rich markup would eat "[default: ...]" from our help texts and tag every
    # option with its type ("<bool>").
    rich_markup_mode=None,
)


def _print_version(is_asked: bool) -> None:
    if is_asked:
        from aiscale import __version__

        print(f"aiscale {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Serve AI models fast, release them safely, scale them."""


# --------------------------------------------------------------- shared settings

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="AISCALE_DATA_DIR",
        help="Folder for the registry and artifacts [default: ~/.aiscale].",
    ),
]
RegistryUrlOption = Annotated[
    str | None,
    typer.Option(
        "--registry-url",
        envvar="AISCALE_REGISTRY_URL",
        help="SQLAlchemy URL of the registry [default: sqlite:///<data-dir>/registry.db].",
    ),
]


@dataclass(frozen=True, slots=True)
class CliPaths:
    """Where the CLI keeps its state, resolved from flags, environment and defaults."""

    data_dir: Path
    registry_url: str

    @property
    def artifacts_root(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


def resolve_paths(data_dir: Path | None, registry_url: str | None) -> CliPaths:
    """Apply the defaults: ``~/.aiscale`` and a SQLite file inside it."""
    folder = (data_dir or Path.home() / ".aiscale").expanduser().resolve()
    return CliPaths(data_dir=folder, registry_url=registry_url or f"sqlite:///{folder}/registry.db")


@contextmanager
def open_registry(paths: CliPaths) -> Iterator[SqlRegistry]:
    """The registry for one command, closed when the command ends."""
    make_private_data_dir(paths.data_dir)
    registry = SqlRegistry.open(paths.registry_url)
    try:
        yield registry
    finally:
        registry.close()


def open_artifacts(paths: CliPaths) -> FsspecArtifactStore:
    return FsspecArtifactStore(paths.artifacts_root, cache_dir=paths.cache_dir)


def _stdout() -> Console:
    return Console()


def _stderr() -> Console:
    # One line per error, however narrow the terminal: soft wrap, no markup or highlighting.
    return Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn expected failures into one clear line on stderr and exit status 1."""
    try:
        yield
    except AiscaleError as exc:
        where = f" [{exc.field}]" if exc.field else ""
        _stderr().print(f"error: {exc.message}{where}")
        raise typer.Exit(1) from None
    except OSError as exc:
        _stderr().print(f"error: {exc}")
        raise typer.Exit(1) from None


def _json_option(text: str | None, field: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--{field} is not valid JSON: {exc.msg}", field=field) from None
    if not isinstance(value, dict):
        raise InvalidInput(f"--{field} must be a JSON object", field=field)
    return value


def _when(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="AISCALE_URL", help="Base URL of a running aiscale server."),
]
KeyOption = Annotated[
    str | None,
    typer.Option("--key", envvar="AISCALE_API_KEY", help="API key with the admin scope."),
]


def _admin_call(method: str, url: str, path: str, key: str | None, body: Any = None) -> Any:
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, f"{url.rstrip('/')}{path}", json=body, headers=headers, timeout=300
        )
    except httpx.TransportError as exc:
        raise AiscaleError(f"cannot reach {url}: {exc}") from None
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message, field = error["message"], error.get("field")
        except (ValueError, KeyError, TypeError):
            message, field = response.text[:200], None
        raise AiscaleError(f"server answered {response.status_code}: {message}", field=field)
    return response.json()
