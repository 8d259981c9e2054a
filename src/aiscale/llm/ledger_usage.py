"""Spend reports of the token ledger, as the admin API and ``aiscale keys usage`` show them.

Adds what the ledger does not know to its counters (a key's own limits and team come from
the registry) and flattens a report into table rows. Pure data in, data out: no I/O beyond
the ledger call, no printing.
"""

from __future__ import annotations

from typing import Any

from aiscale.llm.ledger import TokenLedger
from aiscale.registry.records import LlmLimits

#: Columns of a usage table, one row per scope and period.
USAGE_COLUMNS: tuple[str, ...] = (
    "scope", "period", "requests", "tokens", "prompt", "cached", "completion", "usd",
    "token limit", "usd limit",
)


async def key_usage(
    ledger: TokenLedger, key_id: str, *, team: str | None, limits: LlmLimits | None
) -> dict[str, Any]:
    """``{"key": ..., "team": ...}``: the key's spend with its team and limits, and its
    team's spend (``None`` for a key without a team)."""
    found = await ledger.usage(key_id=key_id, team=team)
    key = {**found["key"], "team": team, "limits": (limits or LlmLimits()).as_dict()}
    return {"key": key, "team": found["team"]}


async def team_usage(ledger: TokenLedger, team: str) -> dict[str, Any]:
    """``{"key": None, "team": ...}``: one team's spend and its limits from the config."""
    found = await ledger.usage(team=team)
    return {"key": None, "team": found["team"]}


def usage_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows of ``USAGE_COLUMNS``: per scope the last minute, in flight, day and month."""
    rows: list[tuple[str, ...]] = []
    for kind in ("key", "team"):
        scope = report.get(kind)
        if not scope:
            continue
        name = f"{kind} {scope.get('id') or scope.get('name')}"
        limits = scope.get("limits") or {}
        minute = scope["last_minute"]
        flight = scope["in_flight"]
        rows.append((
            name, "last minute", str(minute["requests"]), str(minute["tokens"]), "", "", "",
            "", _limit(limits, "tokens_per_minute"), "",
        ))
        rows.append((
            name, "in flight", str(flight["requests"]), str(flight["reserved_tokens"]), "",
            "", "", flight["reserved_usd"], "", "",
        ))
        for period, suffix in (("day", "per_day"), ("month", "per_month")):
            used = scope[period]
            rows.append((
                name, used["period"], str(used["requests"]), str(used["tokens"]),
                str(used["prompt_tokens"]), str(used["cached_tokens"]),
                str(used["completion_tokens"]), used["usd"],
                _limit(limits, f"budget_tokens_{suffix}"), _limit(limits, f"budget_usd_{suffix}"),
            ))
    return rows


def _limit(limits: dict[str, Any], name: str) -> str:
    value = limits.get(name)
    return "" if value is None else str(value)
