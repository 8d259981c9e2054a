"""API keys at the gateway: who is calling, may they, and how fast.

Keys live hashed in the registry; the gateway keeps an in-memory copy that a background
task refreshes, so the hot path is one hash and one dict lookup, never a database call.

Open mode (no key needed, every caller has every scope) is decided once, at start-up: it is
allowed only when the server was told so (``--insecure``) or is bound to loopback with no
key ever created (``serving/launch.py`` decides). Even then it lasts only until the first
key appears; from then on keys are required for the life of the process, so revoking the
last key locks the server rather than opening it. This module never opens a closed ring.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from aiscale.errors import AuthError, Forbidden
from aiscale.registry import SCOPES, hash_key
from aiscale.registry.records import LlmLimits

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one request (``anonymous`` in open mode).

    ``team`` and ``llm_limits`` are the key's, as stored in the registry: the LLM path
    passes them to the token ledger (``aiscale.llm.ledger``), which also applies the team's
    limits from the config."""

    key_id: str
    scopes: frozenset[str]
    rate_limit_per_s: float | None
    #: The key's team, whose LLM limits and budgets its requests also count against.
    team: str | None = None
    #: The key's own LLM limits and budgets (``None``: none), for the token ledger.
    llm_limits: LlmLimits | None = None


ANONYMOUS = Caller("anonymous", SCOPES, None)
#: One active key as the ring takes it: ``(key_id, key_hash, scopes, rate_limit_per_s,
#: team, llm_limits)``.
KeyEntry = tuple[str, str, frozenset[str], float | None, str | None, LlmLimits | None]


class KeyRing:
    """The active keys by hash, and whether this server is (still) open.

    ``is_open_allowed``: the start-up decision that the server may run without keys while
    none exists. ``False`` requires a key from the first request, even with none configured
    (every call is then refused until one is created).
    """

    def __init__(self, *, is_open_allowed: bool = True) -> None:
        self._by_hash: dict[str, Caller] = {}
        self._is_open = is_open_allowed

    @property
    def is_open(self) -> bool:
        """True while no key is required: open mode allowed at start and no key seen yet."""
        return self._is_open

    @property
    def is_enabled(self) -> bool:
        """True when calls need a key (the opposite of ``is_open``)."""
        return not self._is_open

    def replace(self, keys: Iterable[KeyEntry]) -> None:
        """Swap in a fresh set of ``(key_id, key_hash, scopes, rate_limit_per_s, team,
        llm_limits)`` at once.

        The first non-empty set ends open mode for good; an empty set later (every key
        revoked) leaves the ring closed, so every call is refused until a key exists."""
        by_hash = {
            key_hash: Caller(key_id, scopes, rate, team, limits)
            for key_id, key_hash, scopes, rate, team, limits in keys
        }
        if by_hash and self._is_open:
            self._is_open = False
            logger.warning("an API key exists: API keys are required from now on")
        elif not by_hash and self._by_hash and not self._is_open:
            logger.warning(
                "every API key is revoked: all calls are refused until a key is created"
            )
        self._by_hash = by_hash

    def authenticate(self, authorization: str | None, scope: str) -> Caller:
        """The caller for an ``Authorization: Bearer <key>`` header, checked for ``scope``."""
        if self._is_open:
            return ANONYMOUS
        if not authorization:
            raise AuthError(
                "an API key is required (Authorization: Bearer <key>)", field="authorization"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("use 'Authorization: Bearer <key>'", field="authorization")
        caller = self._by_hash.get(hash_key(token.strip()))
        if caller is None:
            raise AuthError("unknown or revoked API key", field="authorization")
        if scope not in caller.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope", field="authorization")
        return caller

    def caller_of(self, key_id: str) -> Caller | None:
        """The active key with id ``key_id`` (``ANONYMOUS`` for ``anonymous`` while the ring
        is open), or ``None``; for the admin API's usage reports, not the hot path."""
        if key_id == ANONYMOUS.key_id and self._is_open:
            return ANONYMOUS
        return next((c for c in self._by_hash.values() if c.key_id == key_id), None)
