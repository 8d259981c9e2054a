"""``POST /v1/feedback``: a label, a score or a comment about an earlier request.

The body names the request by the id its response carried in ``x-request-id``; the feedback
is joined to the captured request at query time (the ``feedback`` view), so it may arrive
before the request's record is compacted, or from another gateway. Only the key that made
the request (its id carries the proof, ``serving/request_ids.py``) or an admin key may give
it; each record keeps the key that gave it, so a retraining can choose its label sources.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from aiscale.data.capture_record import FeedbackRecord
from aiscale.errors import InvalidInput

MAX_ID_CHARS = 128
MAX_LABEL_CHARS = 256
MAX_COMMENT_CHARS = 10_000
_FIELDS = frozenset({"request_id", "label", "score", "comment"})


def parse_feedback(
    body: bytes,
    *,
    feedback_id: str,
    user_hash: str | None,
    key_id: str | None = None,
    is_admin: bool = False,
) -> FeedbackRecord:
    """The record for one feedback body; ``InvalidInput`` names the first field that is wrong."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object", field="body")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0])
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidInput("request_id must be a non-empty string", field="request_id")
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(f"request_id is longer than {MAX_ID_CHARS}", field="request_id")
    label = _optional_text(data, "label", MAX_LABEL_CHARS)
    comment = _optional_text(data, "comment", MAX_COMMENT_CHARS)
    score = data.get("score")
    if score is not None:
        is_number = isinstance(score, int | float) and not isinstance(score, bool)
        if not is_number or not math.isfinite(score):
            raise InvalidInput("score must be a finite number", field="score")
        score = float(score)
    if label is None and score is None and comment is None:
        raise InvalidInput("give at least one of label, score or comment", field="body")
    return FeedbackRecord(
        feedback_id=feedback_id,
        request_id=request_id,
        ts_s=time.time(),
        label=label,
        score=score,
        comment=comment,
        user_hash=user_hash,
        key_id=key_id,
        is_admin=is_admin,
    )


def _optional_text(data: dict[str, Any], name: str, max_chars: int) -> str | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string", field=name)
    if len(value) > max_chars:
        raise InvalidInput(f"{name} is longer than {max_chars} characters", field=name)
    return value
