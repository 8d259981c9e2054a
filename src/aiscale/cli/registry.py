"""``aiscale models`` and ``aiscale keys``: the registry from the command line."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from aiscale.cli._common import (
    DataDirOption,
    RegistryUrlOption,
    _json_option,
    _stdout,
    _when,
    app,
    open_artifacts,
    open_registry,
    reported_errors,
    resolve_paths,
)
from aiscale.errors import InvalidInput
from aiscale.registry import register_with_artifact

models_app = typer.Typer(
    help="Register and inspect models, versions and aliases.", no_args_is_help=True
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")


# ------------------------------------------------------------------------ models


class RuntimeName(StrEnum):
    """How a version is loaded (see aiscale.runtimes)."""

    python = "python"
    sklearn = "sklearn"
    onnx = "onnx"
    sentence_transformers = "sentence-transformers"
    minilm = "minilm"


@models_app.command("register")
def models_register(
    name: Annotated[str, typer.Argument(help="Model name.")],
    runtime: Annotated[RuntimeName, typer.Option("--runtime", help="How the model is loaded.")],
    uri: Annotated[
        str | None,
        typer.Option(
            "--uri", help="pkg.module:Class, a model file or folder [minilm default: bundled]."
        ),
    ] = None,
    config: Annotated[str | None, typer.Option("--config", help="Runtime config, JSON.")] = None,
    metadata: Annotated[str | None, typer.Option("--metadata", help="Free metadata, JSON.")] = None,
    version: Annotated[str | None, typer.Option("--version", help="[default: next number]")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="Point this alias at it.")] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Register a new version; model files and folders are copied into the artifact store."""
    with reported_errors():
        if uri is None:
            if runtime is not RuntimeName.minilm:
                raise InvalidInput(
                    f"--uri is required for the {runtime.value} runtime", field="uri"
                )
            uri = "bundled"
        paths = resolve_paths(data_dir, registry_url)
        parsed_config = _json_option(config, "config")
        parsed_metadata = _json_option(metadata, "metadata")
        with open_registry(paths) as registry:
            record = register_with_artifact(
                registry,
                open_artifacts(paths),
                name,
                runtime=runtime.value,
                uri=uri,
                config=parsed_config,
                metadata=parsed_metadata,
                version=version,
                alias=alias,
            )
        out = _stdout()
        out.print(
            f"registered {record.model} version {record.version} ({record.runtime})",
            markup=False,
            highlight=False,
        )
        out.print(f"uri: {record.uri}", markup=False, highlight=False, soft_wrap=True)
        if record.artifact_digest:
            out.print(f"digest: sha256:{record.artifact_digest}", markup=False, soft_wrap=True)
        if alias:
            out.print(f"alias {alias} -> {record.version}", markup=False, highlight=False)


@models_app.command("list")
def models_list(data_dir: DataDirOption = None, registry_url: RegistryUrlOption = None) -> None:
    """List models with their latest version and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        table = Table("model", "versions", "latest", "aliases", "description")
        for model in registry.list_models():
            versions = registry.list_versions(model.name)
            aliases = registry.list_aliases(model.name)
            table.add_row(
                model.name,
                str(len(versions)),
                versions[-1].version if versions else "",
                ", ".join(f"{a}->{v}" for a, v in aliases.items()),
                model.description,
            )
        _stdout().print(table)


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Show a model's versions and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        versions = registry.list_versions(name)
        aliases = registry.list_aliases(name)
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        table = Table(
            "version", "runtime", "uri", "digest", "created (UTC)", "aliases", title=f"model {name}"
        )
        for record in versions:
            table.add_row(
                record.version,
                record.runtime,
                record.uri,
                (record.artifact_digest or "")[:12],
                _when(record.created_at),
                ", ".join(by_version.get(record.version, [])),
            )
        alias_table = Table("alias", "version", title="aliases")
        for alias, version in aliases.items():
            alias_table.add_row(alias, version)
        out = _stdout()
        out.print(table)
        out.print(alias_table)


@models_app.command("alias")
def models_alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias to set or move.")],
    version: Annotated[str, typer.Argument(help="Version it points at.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Point ALIAS of model NAME at VERSION (moving it if it exists)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        registry.set_alias(name, alias, version)
        _stdout().print(f"{name}: alias {alias} -> {version}", markup=False, highlight=False)


# -------------------------------------------------------------------------- keys


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what the key is for.")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="admin and/or inference; repeat the option.")
    ],
    rate_limit: Annotated[
        float | None, typer.Option("--rate-limit", help="Requests per second for this key.")
    ] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        plaintext, record = registry.create_key(name, frozenset(scope), rate_limit)
        out = _stdout()
        out.print(
            f"key id: {record.key_id}  scopes: {','.join(sorted(record.scopes))}",
            markup=False,
            highlight=False,
        )
        out.print("API key (shown once, store it now):", markup=False, highlight=False)
        out.print(plaintext, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None, registry_url: RegistryUrlOption = None) -> None:
    """List API keys (never their plaintext)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        table = Table("key id", "name", "scopes", "rate/s", "created (UTC)", "revoked (UTC)")
        for key in registry.list_keys():
            table.add_row(
                key.key_id,
                key.name,
                ",".join(sorted(key.scopes)),
                "" if key.rate_limit_per_s is None else f"{key.rate_limit_per_s:g}",
                _when(key.created_at),
                _when(key.revoked_at),
            )
        _stdout().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`.")],
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Revoke an API key; a running gateway refuses it once it reloads its keys."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        record = registry.revoke_key(key_id)
        _stdout().print(f"revoked {record.key_id} ({record.name})", markup=False, highlight=False)
