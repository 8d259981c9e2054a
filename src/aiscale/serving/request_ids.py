"""Request ids the server makes, and the proof inside each of which key it was made for.

A client's ``x-request-id`` is never the request's id: it only travels along (captured as
``client_request_id``, echoed as ``x-client-request-id``). The server's id decides capture
sampling and dedup and is what ``/v1/feedback`` names, so a client can neither choose
whether it is captured nor overwrite another request's record.

An id issued after authentication is ``<24 hex random><16 hex tag>``, the tag a keyed
blake2b of the random part and the owner (the caller's key id) under the gateway's secret.
``/v1/feedback`` checks the tag against the caller's key id: no lookup of the captured
request, so it works before the record is compacted, after a restart (the secret is kept
in the data dir) and on any gateway sharing that secret. Ids of requests refused before
authentication are plain random (``uuid4().hex``) and belong to nobody.

Pure apart from ``secrets``: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["RequestIds"]

_RANDOM_HEX = 24
_TAG_BYTES = 8
_PERSON = b"aiscale-reqid"


class RequestIds:
    """Issues owned request ids and checks them; ``key`` is the gateway's secret (random per
    process when empty: ids then verify only on the process that issued them)."""

    def __init__(self, key: bytes = b"") -> None:
        if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
            raise ValueError("the request-id key must be at most 64 bytes")
        # The keyed state is made once; each tag copies it (setting a key hashes a block).
        self._keyed = hashlib.blake2b(
            key=key or secrets.token_bytes(32), digest_size=_TAG_BYTES, person=_PERSON
        )

    def issue(self, owner: str) -> str:
        """A fresh id owned by ``owner`` (a key id)."""
        random_part = secrets.token_hex(_RANDOM_HEX // 2)
        return random_part + self._tag(random_part, owner)

    def is_owned_by(self, request_id: str, owner: str) -> bool:
        """Whether ``request_id`` was issued by this secret for ``owner`` (constant time)."""
        if len(request_id) != _RANDOM_HEX + 2 * _TAG_BYTES or not request_id.isascii():
            return False  # compare_digest refuses non-ASCII str: that must be a 403, not a 500
        random_part, tag = request_id[:_RANDOM_HEX], request_id[_RANDOM_HEX:]
        return hmac.compare_digest(tag, self._tag(random_part, owner))

    def _tag(self, random_part: str, owner: str) -> str:
        digest = self._keyed.copy()
        digest.update(f"{random_part}\0{owner}".encode())
        return digest.hexdigest()
