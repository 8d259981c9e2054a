"""The LLM limit options of ``aiscale keys create`` and ``keys limits``, and their parsing.

Counts must be whole numbers from 1; money is a decimal string of US dollars with at most 6
decimal places (never a float). A bad value is one line naming the flag, exit status 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

import typer

from aiscale.errors import InvalidInput
from aiscale.registry import LlmLimits, parse_usd
from aiscale.registry.store import MAX_LIMIT_COUNT

TeamOption = Annotated[
    str | None,
    typer.Option(
        "--team",
        help="Team of the key: its LLM requests also count against the team's limits "
        "(server.ledger.teams in the config).",
    ),
]
RpmOption = Annotated[int | None, typer.Option("--rpm", help="LLM requests per minute.")]
TpmOption = Annotated[
    int | None, typer.Option("--tpm", help="LLM tokens (prompt + completion) per minute.")
]
MaxConcurrentOption = Annotated[
    int | None, typer.Option("--max-concurrent", help="LLM requests in flight at once.")
]
BudgetTokensDayOption = Annotated[
    int | None, typer.Option("--budget-tokens-day", help="LLM tokens per UTC day.")
]
BudgetTokensMonthOption = Annotated[
    int | None, typer.Option("--budget-tokens-month", help="LLM tokens per UTC month.")
]
BudgetUsdDayOption = Annotated[
    str | None,
    typer.Option(
        "--budget-usd-day", help="US dollars per UTC day at the configured token prices."
    ),
]
BudgetUsdMonthOption = Annotated[
    str | None,
    typer.Option(
        "--budget-usd-month", help="US dollars per UTC month at the configured token prices."
    ),
]

#: Each measure's flag, to name it in errors and summaries.
FLAGS: dict[str, str] = {
    "requests_per_minute": "--rpm",
    "tokens_per_minute": "--tpm",
    "max_concurrent": "--max-concurrent",
    "budget_tokens_per_day": "--budget-tokens-day",
    "budget_tokens_per_month": "--budget-tokens-month",
    "budget_usd_per_day": "--budget-usd-day",
    "budget_usd_per_month": "--budget-usd-month",
}
_SHORT = {
    "requests_per_minute": "rpm",
    "tokens_per_minute": "tpm",
    "max_concurrent": "concurrent",
    "budget_tokens_per_day": "tokens/day",
    "budget_tokens_per_month": "tokens/month",
    "budget_usd_per_day": "usd/day",
    "budget_usd_per_month": "usd/month",
}


def llm_limits_of(
    *,
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
    budget_tokens_day: int | None,
    budget_tokens_month: int | None,
    budget_usd_day: str | None,
    budget_usd_month: str | None,
) -> LlmLimits:
    """The limits the flags ask for; ``InvalidInput`` naming the flag for a bad value."""
    counts = {
        "requests_per_minute": rpm,
        "tokens_per_minute": tpm,
        "max_concurrent": max_concurrent,
        "budget_tokens_per_day": budget_tokens_day,
        "budget_tokens_per_month": budget_tokens_month,
    }
    for name, count in counts.items():
        if count is not None and not 1 <= count <= MAX_LIMIT_COUNT:
            raise InvalidInput(
                f"{FLAGS[name]} must be a whole number from 1 to {MAX_LIMIT_COUNT}, got {count}",
                field=name,
            )
    def usd(text: str | None, name: str) -> Decimal | None:
        return None if text is None else parse_usd(text, FLAGS[name])

    return LlmLimits(
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        max_concurrent=max_concurrent,
        budget_tokens_per_day=budget_tokens_day,
        budget_tokens_per_month=budget_tokens_month,
        budget_usd_per_day=usd(budget_usd_day, "budget_usd_per_day"),
        budget_usd_per_month=usd(budget_usd_month, "budget_usd_per_month"),
    )


def limits_summary(limits: LlmLimits | Mapping[str, Any]) -> str:
    """``tpm=1000 usd/month=50`` for the measures that are set; ``""`` when none is."""
    values = limits.as_dict() if isinstance(limits, LlmLimits) else dict(limits)
    return " ".join(
        f"{_SHORT[name]}={value}" for name, value in values.items()
        if value is not None and name in _SHORT
    )
