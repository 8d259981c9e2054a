"""Configuration of the token ledger: the teams' LLM limits and budgets, and token prices.

Part of the one frozen config tree (``aiscale.config`` holds it as ``server.ledger``); it has
its own frozen base because ``aiscale.config`` imports this module, never the other way.
An unknown key, a limit below 1, a price below 0, a duplicate team or model rejects the whole
file, naming the dotted path of the field (``server.ledger.teams.0.tokens_per_minute``).

Keys' own limits are not here: they are stored with each key in the registry
(``aiscale keys create --tpm ...``), so that they change without a restart.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiscale.registry.records import LlmLimits
from aiscale.registry.store import MAX_BUDGET_USD, MAX_LIMIT_COUNT

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"

Count = Annotated[int, Field(ge=1, le=MAX_LIMIT_COUNT)]
Usd = Annotated[Decimal, Field(gt=0, le=MAX_BUDGET_USD, decimal_places=6)]
#: A price in US dollars per million tokens; a fraction of a nano-dollar per token is kept
#: exactly (costs are computed in ``Decimal`` and rounded up once per request).
PricePerMillion = Annotated[Decimal, Field(ge=0, le=1_000_000, decimal_places=9)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TeamLimits(_Frozen):
    """One team's limits: every request of a key with ``team: <name>`` counts against them,
    besides the key's own. An omitted measure is unlimited."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    max_concurrent: Count | None = None
    budget_tokens_per_day: Count | None = None
    budget_tokens_per_month: Count | None = None
    budget_usd_per_day: Usd | None = None
    budget_usd_per_month: Usd | None = None

    def to_limits(self) -> LlmLimits:
        return LlmLimits(**self.model_dump(exclude={"name"}))


class ModelPrice(_Frozen):
    """What a model's tokens cost, in US dollars per million tokens of each kind.

    ``model`` is a deployment's name (what clients send as ``model``, unless its engine sets
    ``served_model_name``), or ``*`` for every deployment without a price of its own.
    ``cached_prompt_usd_per_1m`` defaults to the prompt price.
    """

    model: Annotated[str, Field(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,62})$")]
    prompt_usd_per_1m: PricePerMillion
    cached_prompt_usd_per_1m: PricePerMillion | None = None
    completion_usd_per_1m: PricePerMillion


class LedgerConfig(_Frozen):
    """The token ledger's settings (``server.ledger``)."""

    teams: tuple[TeamLimits, ...] = ()
    prices: tuple[ModelPrice, ...] = ()
    #: A reservation never settled (its gateway crashed) stops holding a concurrent slot
    #: and budget after this long; keep it above the longest generation you allow.
    reservation_ttl_s: Annotated[float, Field(ge=1, le=86_400)] = 600.0

    @field_validator("teams")
    @classmethod
    def _unique_teams(cls, teams: tuple[TeamLimits, ...]) -> tuple[TeamLimits, ...]:
        names = [team.name for team in teams]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"team names must be unique; repeated: {repeated}")
        return teams

    @field_validator("prices")
    @classmethod
    def _unique_models(cls, prices: tuple[ModelPrice, ...]) -> tuple[ModelPrice, ...]:
        models = [price.model for price in prices]
        repeated = sorted({m for m in models if models.count(m) > 1})
        if repeated:
            raise ValueError(f"one price per model; repeated: {repeated}")
        return prices
