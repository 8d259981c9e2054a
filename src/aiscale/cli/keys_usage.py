"""``aiscale keys limits`` and ``aiscale keys usage``: a key's LLM limits, and token spend.

Spend lives in the token ledger (``aiscale.llm.ledger``): in Redis when the gateways share
one, else inside the running server. ``keys usage`` reads Redis directly when a Redis URL is
known (``--redis-url``, ``AISCALE_REDIS_URL`` or ``server.redis_url`` of ``--config``), and
otherwise asks the server's admin API (``--url``, a key with the admin scope).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from aiscale.cli._common import (
    CliPaths,
    DataDirOption,
    KeyOption,
    RegistryUrlOption,
    _admin_call,
    _stdout,
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
from aiscale.cli.registry import keys_app
from aiscale.config import load_config
from aiscale.errors import InvalidInput
from aiscale.llm.ledger import make_ledger
from aiscale.llm.ledger_config import LedgerConfig
from aiscale.llm.ledger_usage import USAGE_COLUMNS, key_usage, team_usage, usage_rows
from aiscale.registry import validate_name

#: Seconds each Redis call of ``keys usage`` may take (a person waits, not a request).
_REDIS_TIMEOUT_S = 5.0


@keys_app.command("limits")
def keys_limits(
    key_id: Annotated[str, typer.Argument(help="The key id shown by `keys list`.")],
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
    """Replace a key's team and LLM limits: a limit not given is unlimited afterwards.
    Running gateways apply the change at their next key refresh (2 s by default)."""
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
        record = registry.set_key_llm_limits(key_id, team=team, llm_limits=limits)
        _stdout().print(
            f"{record.key_id} ({record.name}): team {record.team or '-'}, llm limits "
            f"{limits_summary(record.llm_limits) or 'none'}",
            markup=False,
            highlight=False,
        )


@keys_app.command("usage")
def keys_usage(
    key_id: Annotated[
        str | None, typer.Argument(help="The key id shown by `keys list` (or give --team).")
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team's spend instead.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="AISCALE_URL",
            help="Ask this running server's admin API [default: http://127.0.0.1:8000, "
            "unless a Redis URL is known].",
        ),
    ] = None,
    key: KeyOption = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Read the ledger in this Redis directly [default: AISCALE_REDIS_URL, or "
            "server.redis_url of --config].",
        ),
    ] = None,
    redis_key_prefix: Annotated[
        str | None,
        typer.Option(
            "--redis-key-prefix",
            help="The gateways' server.redis_key_prefix [default: from --config, else aiscale:].",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The servers' aiscale.yaml: Redis, and the teams' limits."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    registry_url: RegistryUrlOption = None,
) -> None:
    """Token spend of a key (and its team) or of a team: the last minute, requests in
    flight, this UTC day and month, per model, in tokens and US dollars."""
    with reported_errors():
        if (key_id is None) == (team is None):
            raise InvalidInput("give either a KEY id or --team TEAM", field="key_id")
        if team is not None:
            validate_name(team, "team")
        server = load_config(
            config,
            server_overrides={"redis_url": redis_url, "redis_key_prefix": redis_key_prefix},
        ).server
        if url is None and server.redis_url is not None:
            paths = resolve_paths(data_dir, registry_url)
            report = asyncio.run(
                _read_redis(server.redis_url, server.redis_key_prefix, server.ledger, paths,
                            key_id, team)
            )
        else:
            path = f"/admin/keys/{key_id}/usage" if team is None else f"/admin/teams/{team}/usage"
            report = _admin_call("GET", url or "http://127.0.0.1:8000", path, key)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(*USAGE_COLUMNS, title="LLM token usage (UTC periods)")
    for row in usage_rows(report):
        table.add_row(*row)
    _stdout().print(table)


async def _read_redis(
    redis_url: str,
    key_prefix: str,
    ledger_config: LedgerConfig,
    paths: CliPaths,
    key_id: str | None,
    team: str | None,
) -> dict[str, Any]:
    """The report from the ledger in Redis; a key's team and limits from the registry (a
    revoked key's too)."""
    ledger = make_ledger(
        ledger_config, redis_url=redis_url, key_prefix=key_prefix, timeout_s=_REDIS_TIMEOUT_S
    )
    try:
        if key_id is None:
            assert team is not None
            return await team_usage(ledger, team)
        with open_registry(paths) as registry:
            record = registry.get_key(key_id)
        report = await key_usage(
            ledger, key_id, team=record.team, limits=record.llm_limits
        )
        report["key"]["revoked"] = record.revoked_at is not None
        return report
    finally:
        await ledger.close()
