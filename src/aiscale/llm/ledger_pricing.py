"""Token prices and money: what a request may cost and what it did, in nano-dollars.

Prices come from ``server.ledger.prices`` in US dollars per million tokens and stay exact
(``Decimal``); a request's cost is rounded up to a whole nano-dollar once. Limits become the
whole numbers a store compares (money in nano-dollars, ``-1`` for none).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from aiscale.llm.ledger_config import LedgerConfig
from aiscale.llm.ledger_store import TokenUsage
from aiscale.registry.records import LLM_LIMIT_NAMES, LlmLimits

#: Money inside the ledger: whole nano-dollars (exact in a Lua double up to ~9 million USD).
NANOS_PER_USD = 10**9


def usd_of(nanos: int) -> str:
    """Nano-dollars as a plain decimal string of US dollars (``"0.000125"``)."""
    text = format(Decimal(nanos).scaleb(-9).normalize(), "f")
    return text



@dataclass(frozen=True, slots=True)
class _Price:
    """US dollars per token of each kind, exact."""

    prompt: Decimal
    cached: Decimal
    completion: Decimal


class TokenPrices:
    """Prices per model and token kind from ``server.ledger.prices`` (``*``: the default)."""

    def __init__(self, config: LedgerConfig) -> None:
        per_token = Decimal(1_000_000)
        self._by_model: dict[str, _Price] = {}
        for price in config.prices:
            cached = price.cached_prompt_usd_per_1m
            self._by_model[price.model] = _Price(
                prompt=price.prompt_usd_per_1m / per_token,
                cached=(price.prompt_usd_per_1m if cached is None else cached) / per_token,
                completion=price.completion_usd_per_1m / per_token,
            )

    def has_price(self, model: str) -> bool:
        return model in self._by_model or "*" in self._by_model

    def _price(self, model: str) -> _Price | None:
        return self._by_model.get(model) or self._by_model.get("*")

    def reservation_nanos(self, model: str, prompt_tokens_max: int, max_tokens: int) -> int:
        """The most a request may cost: every prompt token at the dearer prompt price."""
        price = self._price(model)
        if price is None:
            return 0
        usd = prompt_tokens_max * max(price.prompt, price.cached) + max_tokens * price.completion
        return _nanos(usd)

    def cost_nanos(self, model: str, usage: TokenUsage) -> int:
        """What ``usage`` costs, rounded up to a whole nano-dollar once per request."""
        price = self._price(model)
        if price is None:
            return 0
        cached = usage.cached_tokens
        usd = (
            (usage.prompt_tokens - cached) * price.prompt
            + cached * price.cached
            + usage.completion_tokens * price.completion
        )
        return _nanos(usd)


def _nanos(usd: Decimal) -> int:
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def limit_values(limits: LlmLimits) -> tuple[int, ...]:
    """``limits`` as a store checks them: whole numbers, money in nano-dollars, -1 for none."""
    values = []
    for name in LLM_LIMIT_NAMES:
        value = getattr(limits, name)
        if value is None:
            values.append(-1)
        elif isinstance(value, Decimal):
            values.append(_nanos(value))
        else:
            values.append(int(value))
    return tuple(values)

