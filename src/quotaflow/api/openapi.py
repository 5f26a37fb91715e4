"""The OpenAPI 3.0 description of /v1, served at /v1/openapi.json and tested against the server."""

from __future__ import annotations

from functools import cache
from typing import Any

UNITS = ["octets", "seconds", "events", "money"]
AMOUNT_MAX = 2**62  # the ledger's bound on any single amount


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed request (not JSON, not an object, too large)",
        403: "Subscriber barred",
        404: "Unknown subscriber",
        409: "Operation id reused with other content, or not enough free balance",
        422: "Invalid field; `error.detail.field` names it",
        429: "A stated limit was reached",
        503: "The journal cannot make changes durable",
    }
    return {str(c): _json(_ref("Error"), reasons[c]) for c in codes}


SID = {"name": "sid", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 120},
}
TIME = {
    "oneOf": [
        {"type": "string", "format": "date-time"},
        {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX},
    ]
}
ID = {"type": "string", "minLength": 1, "maxLength": 128}
NULLABLE_ID = {**ID, "nullable": True}
SUBSCRIBER_PROPS = {
    "msisdn": NULLABLE_ID,
    "imsi": NULLABLE_ID,
    "nai": NULLABLE_ID,
    "sip_uri": NULLABLE_ID,
    "status": {"type": "string", "enum": ["active", "barred", None], "nullable": True},
    "plan": {"type": "string", "nullable": True},
}
RATING_GROUPS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}}


@cache
def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "detail": {"type": "object"},
                    },
                }
            },
        },
        "SubscriberIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {"id": ID, **SUBSCRIBER_PROPS},
        },
        "SubscriberPatch": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": SUBSCRIBER_PROPS,
        },
        "Subscriber": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": {"type": "string"},
                "msisdn": {"type": "string", "nullable": True},
                "imsi": {"type": "string", "nullable": True},
                "nai": {"type": "string", "nullable": True},
                "sip_uri": {"type": "string", "nullable": True},
                "status": {"type": "string", "enum": ["active", "barred"]},
                "plan": {"type": "string", "nullable": True},
                "created_ms": {"type": "integer"},
            },
        },
        "BucketIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["unit", "amount"],
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 128},
                "unit": {"type": "string", "enum": UNITS},
                "amount": {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX},
                "rating_groups": RATING_GROUPS,
                "priority": {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
                "expires_at": TIME,
                "valid_from": TIME,
                "origin": {"type": "string", "enum": ["purchase", "gift", "voucher", "promotion"]},
            },
        },
        "Bucket": {
            "type": "object",
            "required": ["id", "unit", "amount", "reserved", "available"],
            "properties": {
                "id": {"type": "string"},
                "unit": {"type": "string", "enum": UNITS},
                "amount": {"type": "integer"},
                "reserved": {"type": "integer"},
                "available": {"type": "integer"},
                "initial": {"type": "integer"},
                "rating_groups": {"type": "array", "items": {"type": "integer"}},
                "priority": {"type": "integer"},
                "valid_from_ms": {"type": "integer"},
                "expires_at_ms": {"type": "integer", "nullable": True},
                "origin": {"type": "string"},
                "usable": {"type": "boolean"},
            },
        },
        "Balance": {
            "type": "object",
            "required": ["buckets", "totals"],
            "properties": {
                "subscriber_id": {"type": "string"},
                "buckets": {"type": "array", "items": _ref("Bucket")},
                "totals": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "amount": {"type": "integer"},
                            "reserved": {"type": "integer"},
                            "available": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "TopupIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["unit", "amount"],
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 120},
                "unit": {"type": "string", "enum": UNITS},
                "amount": {"type": "integer", "minimum": 1, "maximum": AMOUNT_MAX},
                "rating_groups": RATING_GROUPS,
                "expires_at": TIME,
                "bucket_id": {"type": "string", "minLength": 1, "maxLength": 128},
            },
        },
        "AdjustmentIn": {
            "type": "object",
            "additionalProperties": False,
            "required": ["unit", "amount"],
            "properties": {
                "id": {"type": "string", "minLength": 1, "maxLength": 120},
                "unit": {"type": "string", "enum": UNITS},
                "amount": {
                    "type": "integer",
                    "minimum": -AMOUNT_MAX,
                    "maximum": AMOUNT_MAX,
                    "not": {"enum": [0]},
                    "description": "signed; never zero",
                },
                "reason": {"type": "string"},
            },
        },
        "Reservation": {
            "type": "object",
            "required": ["id", "unit", "units", "expires_at_ms"],
            "properties": {
                "id": {"type": "string"},
                "unit": {"type": "string"},
                "rating_group": {"type": "integer", "nullable": True},
                "units": {"type": "integer"},
                "legs": {"type": "array"},
                "created_ms": {"type": "integer"},
                "expires_at_ms": {"type": "integer"},
                "session_id": {"type": "string", "nullable": True},
            },
        },
    }
    sub_errors = _errors(404, 422)
    paths: dict[str, Any] = {
        "/v1/subscribers": {
            "post": {
                "summary": "Create a subscriber (a repeat with the same content is safe)",
                "operationId": "createSubscriber",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubscriberIn")}},
                },
                "responses": {
                    "201": _json(_ref("Subscriber"), "Created"),
                    **_errors(400, 409, 422, 429),
                },
            },
            "get": {
                "summary": "List subscribers",
                "operationId": "listSubscribers",
                "parameters": [
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": AMOUNT_MAX},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "subscribers": {"type": "array", "items": _ref("Subscriber")}
                            },
                        },
                        "A page",
                    ),
                    **_errors(422),
                },
            },
        },
        "/v1/subscribers/{sid}": {
            "parameters": [SID],
            "get": {
                "operationId": "getSubscriber",
                "responses": {"200": _json(_ref("Subscriber"), "The subscriber"), **_errors(404)},
            },
            "patch": {
                "operationId": "updateSubscriber",
                "summary": "Change identities, status (barring ends live sessions) or plan",
                "parameters": [IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SubscriberPatch")}},
                },
                "responses": {
                    "200": _json(_ref("Subscriber"), "Updated"),
                    **_errors(400, 404, 409, 422),
                },
            },
            "delete": {
                "operationId": "deleteSubscriber",
                "responses": {"204": {"description": "Deleted"}, **_errors(404, 409)},
            },
        },
        "/v1/subscribers/{sid}/buckets": {
            "parameters": [SID],
            "post": {
                "operationId": "addBucket",
                "parameters": [IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("BucketIn")}},
                },
                "responses": {
                    "201": _json(_ref("Bucket"), "Created"),
                    **_errors(400, 409, 429),
                    **sub_errors,
                },
            },
        },
        "/v1/subscribers/{sid}/balance": {
            "parameters": [SID],
            "get": {
                "operationId": "getBalance",
                "responses": {
                    "200": _json(_ref("Balance"), "Buckets and totals per unit"),
                    **_errors(404),
                },
            },
        },
        "/v1/subscribers/{sid}/topups": {
            "parameters": [SID],
            "post": {
                "operationId": "topup",
                "parameters": [IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("TopupIn")}},
                },
                "responses": {
                    "201": _json({"type": "object"}, "Credited"),
                    **_errors(400, 409, 429),
                    **sub_errors,
                },
            },
        },
        "/v1/subscribers/{sid}/adjustments": {
            "parameters": [SID],
            "post": {
                "operationId": "adjust",
                "parameters": [IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("AdjustmentIn")}},
                },
                "responses": {
                    "201": _json({"type": "object"}, "Adjusted"),
                    **_errors(400, 409, 429),
                    **sub_errors,
                },
            },
        },
        "/v1/subscribers/{sid}/reservations": {
            "parameters": [SID],
            "get": {
                "operationId": "listReservations",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "reservations": {"type": "array", "items": _ref("Reservation")}
                            },
                        },
                        "Open reservations",
                    ),
                    **_errors(404),
                },
            },
        },
        "/v1/subscribers/{sid}/sessions": {
            "parameters": [SID],
            "get": {
                "operationId": "listSessions",
                "responses": {
                    "200": _json({"type": "object"}, "Open charging sessions"),
                    **_errors(404),
                },
            },
        },
        "/v1/health": {
            "get": {
                "operationId": "health",
                "responses": {
                    "200": _json({"type": "object"}, "Healthy"),
                    "503": _json({"type": "object"}, "Journal failed"),
                },
            },
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "quotaflow management API",
            "version": "1",
            "description": (
                "Provisioning and balances. Amounts are integers in the bucket's unit; "
                "money is in micro-units."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
