"""Request-body checks for the management API: every refusal names the field and the reason."""

from __future__ import annotations

from collections.abc import Set
from datetime import datetime
from typing import Any

import orjson

from quotaflow.ledger import InvalidRequest

BODY_BYTES_MAX = 64 * 1024


class BadRequest(InvalidRequest):
    """Malformed request (not JSON, not an object, too large): answered with 400."""

    code = "bad_request"


def parse_body(raw: bytes) -> dict[str, Any]:
    if len(raw) > BODY_BYTES_MAX:
        raise BadRequest(f"body larger than {BODY_BYTES_MAX} bytes", limit=BODY_BYTES_MAX)
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def check_fields(
    body: dict[str, Any],
    allowed: set[str],
    required: Set[str] = frozenset(),
    nullable: Set[str] = frozenset(),
) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    for name in sorted(body):
        if body[name] is None and name not in nullable:
            raise InvalidRequest(f"field {name!r} must not be null", field=name)
    for name in sorted(required):
        if body.get(name) is None:
            raise InvalidRequest(f"field {name!r} is required", field=name)


def want_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"field {name!r} must be a string", field=name)
    return value


def want_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidRequest(f"field {name!r} must be an integer", field=name)
    return value


def time_ms(body: dict[str, Any], name: str) -> int | None:
    """An instant as RFC 3339 text (with a time zone) or integer epoch milliseconds."""
    value = body.get(name)
    if value is None:
        return None
    if type(value) is int:
        if not 0 <= value <= 2**62:
            raise InvalidRequest(f"field {name!r} out of range", field=name)
        return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(f"field {name!r} is not an RFC 3339 time", field=name) from None
        if parsed.tzinfo is None:
            raise InvalidRequest(f"field {name!r} needs a time zone", field=name)
        return int(parsed.timestamp() * 1000)
    raise InvalidRequest(f"field {name!r} must be RFC 3339 text or epoch ms", field=name)
