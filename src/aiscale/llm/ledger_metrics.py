"""Prometheus metrics of the token ledger, registered on an injected ``CollectorRegistry``.

Spend is counted by the gateway that settles each request, so summing a metric over every
gateway gives the fleet's spend. Labels are bounded: ``key_id`` (one per API key in the
registry), ``team`` (teams of those keys), ``model`` (deployment names) and ``kind`` (three
token kinds); an empty string stands for a request without a key or team. Never a request
id or a user.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class LedgerMetrics:
    """Every metric the ledger exports, created once per ledger on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        spend_labels = ("key_id", "team", "model")
        self.tokens = Counter(
            "aiscale_ledger_tokens_total",
            "Tokens booked by settled LLM requests, by key, team, model and kind "
            "(prompt: uncached prompt tokens, cached_prompt, completion).",
            (*spend_labels, "kind"),
            registry=registry,
        )
        self.spend = Counter(
            "aiscale_ledger_spend_usd_total",
            "Money booked by settled LLM requests at the configured token prices, in US "
            "dollars, by key, team and model.",
            spend_labels,
            registry=registry,
        )
        self.refusals = Counter(
            "aiscale_ledger_refusals_total",
            "LLM requests refused by a limit or budget, by limit (e.g. key:tokens_per_minute).",
            ("limit",),
            registry=registry,
        )
        self.in_flight = Gauge(
            "aiscale_ledger_reservations_in_flight",
            "Requests this gateway admitted and has not settled yet.",
            registry=registry,
        )
        self.pending_settles = Gauge(
            "aiscale_ledger_pending_settles",
            "Settlements waiting for the shared store (Redis) to come back.",
            registry=registry,
        )
        self.dropped_settles = Counter(
            "aiscale_ledger_dropped_settles_total",
            "Settlements dropped because too many were waiting for the store; their usage "
            "was not booked and their reservations expired.",
            registry=registry,
        )
