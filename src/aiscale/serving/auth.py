"""API keys at the gateway: who is calling, may they, and how fast.

Keys live hashed in the registry; the gateway keeps an in-memory copy that a background
task refreshes, so the hot path is one hash and one dict lookup, never a database call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiscale.errors import AuthError, Forbidden
from aiscale.registry import SCOPES, hash_key


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated caller of one request (``anonymous`` when no keys are configured)."""

    key_id: str
    scopes: frozenset[str]
    rate_limit_per_s: float | None


ANONYMOUS = Caller("anonymous", SCOPES, None)


class KeyRing:
    """The active keys by hash. With no keys at all, every caller is anonymous and allowed."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Caller] = {}

    @property
    def is_enabled(self) -> bool:
        return bool(self._by_hash)

    def replace(self, keys: Iterable[tuple[str, str, frozenset[str], float | None]]) -> None:
        """Swap in a fresh set of ``(key_id, key_hash, scopes, rate_limit_per_s)`` at once."""
        self._by_hash = {
            key_hash: Caller(key_id, scopes, rate) for key_id, key_hash, scopes, rate in keys
        }

    def authenticate(self, authorization: str | None, scope: str) -> Caller:
        """The caller for an ``Authorization: Bearer <key>`` header, checked for ``scope``."""
        if not self._by_hash:
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
