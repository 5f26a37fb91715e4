"""ProblemDetails answers (application/problem+json) with the causes of TS 32.291 and TS 29.500."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response

from quotaflow.ledger import (
    ChargingError,
    Conflict,
    InvalidAmount,
    InvalidRequest,
    LimitReached,
    NoCredit,
    NotFound,
    SubscriberBarred,
    UnknownSession,
    UnknownSubscriber,
)
from quotaflow.nchf._errors import WireError
from quotaflow.nchf._wire import CHARGING_FAILED

PROBLEM_JSON = "application/problem+json"

# TS 32.291 table 6.1.7.3-1.
USER_UNKNOWN = "USER_UNKNOWN"  # 404
END_USER_REQUEST_DENIED = "END_USER_REQUEST_DENIED"  # 403
QUOTA_LIMIT_REACHED = "QUOTA_LIMIT_REACHED"  # 403
CHARGING_NOT_APPLICABLE = "CHARGING_NOT_APPLICABLE"  # 403
# TS 29.500 table 5.2.7.2-1.
CONTEXT_NOT_FOUND = "CONTEXT_NOT_FOUND"  # 404: no such ChargingDataRef
RESOURCE_URI_STRUCTURE_NOT_FOUND = "RESOURCE_URI_STRUCTURE_NOT_FOUND"  # 404: no such path
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # 413
UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"  # 415
NF_CONGESTION = "NF_CONGESTION"  # 503
SYSTEM_FAILURE = "SYSTEM_FAILURE"  # 500
UNSPECIFIED_NF_FAILURE = "UNSPECIFIED_NF_FAILURE"  # 500

# Most specific class first; an unlisted ChargingError (e.g. the store failing) is a 500.
_BY_ERROR: tuple[tuple[type[ChargingError], int, str], ...] = (
    (UnknownSubscriber, 404, USER_UNKNOWN),
    (SubscriberBarred, 403, END_USER_REQUEST_DENIED),
    (NoCredit, 403, QUOTA_LIMIT_REACHED),
    (UnknownSession, 404, CONTEXT_NOT_FOUND),
    (NotFound, 404, CONTEXT_NOT_FOUND),
    # Reached limits are load (journal backlog, session table): the consumer may go elsewhere.
    (LimitReached, 503, NF_CONGESTION),
    (InvalidAmount, 400, CHARGING_FAILED),
    (InvalidRequest, 400, CHARGING_FAILED),
    (Conflict, 400, CHARGING_FAILED),
)


def problem(
    status: int, cause: str, detail: str, invalid_params: list[dict[str, str]] | None = None
) -> Response:
    body: dict[str, Any] = {
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "cause": cause,
    }
    if invalid_params:
        body["invalidParams"] = invalid_params
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON)


def from_wire_error(exc: WireError) -> Response:
    return problem(400, exc.cause, str(exc), [{"param": exc.param, "reason": exc.reason}])


def from_charging_error(exc: ChargingError) -> Response:
    for cls, status, cause in _BY_ERROR:
        if isinstance(exc, cls):
            # No invalidParams: the ledger's field names are not pointers into the request.
            return problem(status, cause, exc.message)
    return problem(500, SYSTEM_FAILURE, exc.message)
