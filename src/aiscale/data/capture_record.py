"""What the capture log stores: its configuration, its two record kinds, and how a record
becomes bytes (sampling, redaction of personal data, hashed user keys, JSON encoding).

A :class:`CaptureRecord` is one served request (inputs, outputs, latency, status); a
:class:`FeedbackRecord` is one piece of user feedback about a request. Both are encoded with
orjson (numpy arrays included) after :class:`Redactor` has replaced personal data by
:data:`REDACTED`.

This module is pure: no I/O, no clock, no randomness. Sampling is a deterministic function of
the request id, so a request is captured or not no matter which gateway served it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import orjson

from aiscale.errors import ConfigError, InvalidInput

#: What a redacted field or matched text is replaced by.
REDACTED = "[REDACTED]"

_KIB = 1024
_MIB = 1024 * _KIB


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """How requests are captured.

    ``sample_rate`` is the fraction of requests captured (0..1; feedback is never sampled).
    ``redact_fields`` names dict keys (at any depth of inputs and outputs) whose values are
    replaced by :data:`REDACTED`; ``redact_patterns`` are regular expressions whose matches in
    any string of inputs, outputs or feedback comments are replaced by it. ``max_queue`` and
    ``max_queue_bytes`` bound the records accepted but not yet durable; ``max_batch_records``
    bounds one group commit; a segment is sealed once it reaches ``segment_bytes``. ``salt``
    keys the hash of user keys (per installation, at most 64 bytes).
    """

    sample_rate: float = 1.0
    redact_fields: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = ()
    max_queue: int = 10_000
    max_queue_bytes: int = 64 * _MIB
    max_batch_records: int = 4096
    segment_bytes: int = 64 * _MIB
    salt: bytes = b""

    def __post_init__(self) -> None:
        if not (isinstance(self.sample_rate, int | float) and 0.0 <= self.sample_rate <= 1.0):
            raise ConfigError("sample_rate must be within [0, 1]", field="capture.sample_rate")
        for name in ("max_queue", "max_queue_bytes", "max_batch_records", "segment_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer", field=f"capture.{name}")
        if len(self.salt) > hashlib.blake2b.MAX_KEY_SIZE:
            raise ConfigError("salt must be at most 64 bytes", field="capture.salt")
        for i, pattern in enumerate(self.redact_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"invalid regular expression {pattern!r}: {exc}",
                    field=f"capture.redact_patterns.{i}",
                ) from exc


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One served request. ``request_id`` is the server's own id (never the client's);
    ``ts_s`` is the UTC wall clock in seconds since the epoch; ``inputs`` and ``outputs`` are
    JSON-able values (numpy arrays allowed); ``status`` is the HTTP status; ``user_hash`` is
    :func:`hash_user_key` of the caller's key, or None; ``client_request_id`` is the
    client's ``x-request-id`` as sent (not unique: clients choose it); ``key_id`` is the id
    of the API key that made the request (``anonymous`` without keys)."""

    request_id: str
    ts_s: float
    deployment: str
    version: str
    inputs: Any
    outputs: Any
    latency_ms: float
    status: int
    user_hash: str | None = None
    client_request_id: str | None = None
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """One piece of feedback about ``request_id``: a label, a score and/or a comment.
    ``feedback_id`` is unique per submission (it is the key compaction deduplicates by).
    ``key_id`` is the key that gave it and ``is_admin`` whether that key had the admin scope
    (the owner of the request gave it otherwise), so a retraining can pick its label sources."""

    feedback_id: str
    request_id: str
    ts_s: float
    label: str | None = None
    score: float | None = None
    comment: str | None = None
    user_hash: str | None = None
    key_id: str | None = None
    is_admin: bool = False


#: The record kinds a log holds, and the field each is deduplicated by.
Record = CaptureRecord | FeedbackRecord
KEY_FIELD: dict[type[Any], str] = {CaptureRecord: "request_id", FeedbackRecord: "feedback_id"}


def is_sampled(request_id: str, sample_rate: float) -> bool:
    """Whether ``request_id`` falls inside the sampled fraction ``sample_rate``.

    Deterministic: the first 8 bytes of the blake2b hash of the id, as a fraction of 2**64,
    are compared against the rate, so every gateway makes the same choice for one id."""
    if sample_rate >= 1.0:
        return True
    if sample_rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < math.floor(sample_rate * 2**64)


def hash_user_key(raw_key: str, salt: bytes) -> str:
    """The keyed blake2b hash (hex, 32 characters) of a user's raw key; the raw key is never
    stored, and without the installation's ``salt`` the hash cannot be checked against
    guessed keys."""
    return hashlib.blake2b(raw_key.encode(), key=salt, digest_size=16).hexdigest()


class Redactor:
    """Replaces personal data in a record before it is written.

    Keys named in ``redact_fields`` (at any depth of nested dicts) lose their value; every
    match of ``redact_patterns`` inside any string loses its text. Numpy arrays and numbers
    pass through untouched. With nothing configured, records pass through without a copy."""

    def __init__(self, fields_: tuple[str, ...], patterns: tuple[str, ...]) -> None:
        self._fields = frozenset(fields_)
        self._pattern = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.is_active = bool(self._fields) or self._pattern is not None

    def redact(self, record: Record) -> Record:
        """The record with personal data replaced (the same object when nothing is configured)."""
        if not self.is_active:
            return record
        if isinstance(record, CaptureRecord):
            return replace(
                record, inputs=self._walk(record.inputs), outputs=self._walk(record.outputs)
            )
        if record.comment is not None and self._pattern is not None:
            return replace(record, comment=self._pattern.sub(REDACTED, record.comment))
        return record

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._pattern.sub(REDACTED, value) if self._pattern is not None else value
        if isinstance(value, dict):
            return {k: REDACTED if k in self._fields else self._walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value


def _encode_fallback(value: Any) -> Any:
    # numpy arrays orjson cannot take directly (non-contiguous, float16, object) and numpy
    # scalars of such dtypes: their Python equivalent.
    tolist: Callable[[], Any] | None = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode_record(record: Record) -> bytes:
    """The record as compact JSON bytes. Raises ``InvalidInput`` if a value cannot be encoded."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY, default=_encode_fallback)
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"capture record is not JSON-serializable: {exc}") from exc


def decode_record(payload: bytes, record_type: type[Record]) -> Record:
    """The record of ``record_type`` that :func:`encode_record` wrote (arrays come back as lists).
    Unknown keys are ignored so that newer writers stay readable."""
    data = orjson.loads(payload)
    names = _FIELD_NAMES[record_type]
    return record_type(**{k: v for k, v in data.items() if k in names})


_FIELD_NAMES: dict[type[Any], frozenset[str]] = {
    kind: frozenset(f.name for f in fields(kind)) for kind in (CaptureRecord, FeedbackRecord)
}
