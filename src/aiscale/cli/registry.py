"""``aiscale models`` and ``aiscale keys``: the registry from the command line."""

from __future__ import annotations

import getpass
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aiscale.cli._common import (
    DataDirOption,
    RegistryUrlOption,
    _json_option,
    _stderr,
    _stdout,
    _when,
    app,
    open_artifacts,
    open_registry,
    reported_errors,
    resolve_paths,
)
from aiscale.cli.keys_limits import (
    BudgetTokensDayOption,
    BudgetTokensMonthOption,
    BudgetUsdDayOption,
    BudgetUsdMonthOption,
    MaxConcurrentOption,
    RpmOption,
    TeamOption,
    TpmOption,
    limits_summary,
    llm_limits_of,
)
from aiscale.errors import InvalidInput
from aiscale.registry import PICKLE_RUNTIMES, SqlRegistry, register_with_artifact

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

models_app = typer.Typer(
    help="Register and inspect models, versions and aliases.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys; set their LLM limits; show their token spend.",
    no_args_is_help=True,
)
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
    allow_any_path: Annotated[
        bool,
        typer.Option(
            "--allow-any-path",
            help="Copy a model file or folder from anywhere [default: only from the current "
            "directory or the data dir].",
        ),
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Register a pickle (sklearn/joblib): loading one RUNS ANY CODE inside it, so "
            "only for files you trust.",
        ),
    ] = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Register a new version; model files and folders are copied into the artifact store.

    Warning: sklearn artifacts are joblib pickles, and loading a pickle runs the code inside
    it; they need --allow-pickle. Each stored artifact's sha256 and who registered it are
    recorded with the version."""
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
        if runtime.value in PICKLE_RUNTIMES and allow_pickle:
            _stderr().print(
                f"warning: {runtime.value} artifacts are pickles: loading one runs any code "
                "inside it; register only files you trust"
            )
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
                allowed_roots=None if allow_any_path else (Path.cwd(), paths.data_dir),
                is_pickle_allowed=allow_pickle,
                registered_by=f"cli:{getpass.getuser()}",
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


def models_data(registry: SqlRegistry) -> list[dict[str, Any]]:
    """Every model with its versions, latest version and aliases (``--json``, ``get``)."""
    found = []
    for model in registry.list_models():
        versions = [v.version for v in registry.list_versions(model.name)]
        found.append(
            {
                "name": model.name,
                "description": model.description,
                "versions": versions,
                "latest": versions[-1] if versions else None,
                "aliases": registry.list_aliases(model.name),
                "created_at": _when(model.created_at),
            }
        )
    return found


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table("model", "versions", "latest", "aliases", "description")
    for model in models:
        table.add_row(
            model["name"],
            str(len(model["versions"])),
            model["latest"] or "",
            ", ".join(f"{a}->{v}" for a, v in model["aliases"].items()),
            model["description"],
        )
    return table


@models_app.command("list")
def models_list(
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """List models with their latest version and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        models = models_data(registry)
    if as_json:
        print(json.dumps(models))
    else:
        _stdout().print(models_table(models))


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="Model name.")],
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Show a model's versions and aliases."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        versions = registry.list_versions(name)
        aliases = registry.list_aliases(name)
        if as_json:
            record_json = [
                {
                    "version": r.version,
                    "runtime": r.runtime,
                    "uri": r.uri,
                    "artifact_digest": r.artifact_digest,
                    "config": r.config,
                    "metadata": r.metadata,
                    "created_at": _when(r.created_at),
                }
                for r in versions
            ]
            print(json.dumps({"name": name, "versions": record_json, "aliases": aliases}))
            return
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
        list[str], typer.Option(
            "--scope", help="admin, inference and/or metrics; repeat the option."
        )
    ],
    rate_limit: Annotated[
        float | None,
        typer.Option(
            "--rate-limit", help="Items (OIP v2 rows, embeddings inputs) per second for this key."
        ),
    ] = None,
    team: TeamOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_concurrent: MaxConcurrentOption = None,
    budget_tokens_day: BudgetTokensDayOption = None,
    budget_tokens_month: BudgetTokensMonthOption = None,
    budget_usd_day: BudgetUsdDayOption = None,
    budget_usd_month: BudgetUsdMonthOption = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Create an API key and print it once; only its hash is stored.

    LLM limits (--rpm, --tpm, --max-concurrent, budgets per UTC day or month in tokens or US
    dollars) apply to this key's chat and completion requests; --team makes them count
    against the team's limits in the server config (server.ledger.teams) too."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        limits = llm_limits_of(
            rpm=rpm,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget_tokens_day=budget_tokens_day,
            budget_tokens_month=budget_tokens_month,
            budget_usd_day=budget_usd_day,
            budget_usd_month=budget_usd_month,
        )
        plaintext, record = registry.create_key(
            name, frozenset(scope), rate_limit, team=team, llm_limits=limits
        )
        out = _stdout()
        out.print(
            f"key id: {record.key_id}  scopes: {','.join(sorted(record.scopes))}",
            markup=False,
            highlight=False,
        )
        if team is not None or not limits.is_empty:
            out.print(
                f"team: {team or '-'}  llm limits: {limits_summary(limits) or 'none'}",
                markup=False,
                highlight=False,
            )
        out.print("API key (shown once, store it now):", markup=False, highlight=False)
        out.print(plaintext, markup=False, highlight=False, soft_wrap=True)


def keys_data(registry: SqlRegistry) -> list[dict[str, Any]]:
    """Every API key's id, name, scopes, limit and times; never a hash or plaintext."""
    return [
        {
            "key_id": key.key_id,
            "name": key.name,
            "scopes": sorted(key.scopes),
            "rate_limit_per_s": key.rate_limit_per_s,
            "created_at": _when(key.created_at),
            "revoked_at": _when(key.revoked_at) or None,
            "team": key.team,
            "llm_limits": key.llm_limits.as_dict(),
        }
        for key in registry.list_keys()
    ]


def keys_table(keys: list[dict[str, Any]]) -> Table:
    table = Table(
        "key id", "name", "scopes", "rate/s", "team", "llm limits", "created (UTC)",
        "revoked (UTC)",
    )
    for key in keys:
        rate = key["rate_limit_per_s"]
        table.add_row(
            key["key_id"],
            key["name"],
            ",".join(key["scopes"]),
            "" if rate is None else f"{rate:g}",
            key.get("team") or "",
            limits_summary(key.get("llm_limits") or {}),
            key["created_at"],
            key["revoked_at"] or "",
        )
    return table


@keys_app.command("list")
def keys_list(
    as_json: JsonOption = False,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """List API keys (never their plaintext)."""
    with reported_errors(), open_registry(resolve_paths(data_dir, registry_url)) as registry:
        keys = keys_data(registry)
    if as_json:
        print(json.dumps(keys))
    else:
        _stdout().print(keys_table(keys))


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
