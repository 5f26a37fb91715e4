"""Management REST API under /v1: subscribers, buckets, balances, top-ups, adjustments.

Every mutation goes through the engine (so interfaces hear of top-ups and barrings) and is
answered only once durable. A body's `id`, or an `Idempotency-Key` header, makes a call safe
to retry: the same id with the same content returns the first answer, other content is a 409.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api.openapi import openapi_document
from quotaflow.api.validation import (
    BadRequest,
    check_fields,
    parse_body,
    time_ms,
    want_int,
    want_str,
)
from quotaflow.engine import Engine
from quotaflow.ledger import (
    AMOUNT_MAX,
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
from quotaflow.metrics import ENGINE_ERRORS, HTTP_REQUESTS, REGISTRY
from quotaflow.store import StoreUnavailable

log = logging.getLogger("quotaflow.api")

STATUS_BY_ERROR: list[tuple[type[ChargingError], int]] = [
    (BadRequest, 400),
    (UnknownSubscriber, 404),
    (NotFound, 404),
    (UnknownSession, 404),
    (Conflict, 409),
    (NoCredit, 409),
    (SubscriberBarred, 403),
    (InvalidAmount, 422),
    (InvalidRequest, 422),
    (LimitReached, 429),
    (StoreUnavailable, 503),
]
SUBSCRIBER_FIELDS = {"id", "msisdn", "imsi", "nai", "sip_uri", "status", "plan"}
PAGE_MAX = 1000
IDEMPOTENCY_KEY_LEN_MAX = 120


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status, headers, media_type="application/json")


def error_response(exc: ChargingError) -> Response:
    status = next((code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls)), 500)
    ENGINE_ERRORS.labels(exc.code).inc()
    return json_response(
        {"error": {"code": exc.code, "message": exc.message, "detail": exc.detail}}, status
    )


Handler = Callable[[Request], Awaitable[Response]]


def guarded(handlers: Handler | dict[str, Handler]) -> Handler:
    """A route endpoint whose engine errors become JSON 4xx answers. Given handlers by method,
    it serves the request's (HEAD as GET), for one route per path and a 405 listing them all."""
    methods = handlers if isinstance(handlers, dict) else {"GET": handlers}
    # With one handler it serves every method the route allows.
    only = None if isinstance(handlers, dict) else handlers

    async def handle(request: Request) -> Response:
        fn = only or methods.get(request.method) or methods["GET"]
        try:
            return await fn(request)
        except ChargingError as exc:
            return error_response(exc)

    return handle


class ManagementApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store

    def routes(self) -> list[Route]:
        table: dict[str, dict[str, Handler]] = {
            "/v1/openapi.json": {"GET": self.openapi},
            "/v1/health": {"GET": self.health},
            "/metrics": {"GET": self.metrics},
            "/v1/subscribers": {"POST": self.create_subscriber, "GET": self.list_subscribers},
            "/v1/subscribers/{sid}": {
                "GET": self.get_subscriber,
                "PATCH": self.patch_subscriber,
                "DELETE": self.delete_subscriber,
            },
            "/v1/subscribers/{sid}/buckets": {"POST": self.add_bucket},
            "/v1/subscribers/{sid}/balance": {"GET": self.balance},
            "/v1/subscribers/{sid}/topups": {"POST": self.topup},
            "/v1/subscribers/{sid}/adjustments": {"POST": self.adjust},
            "/v1/subscribers/{sid}/reservations": {"GET": self.reservations},
            "/v1/subscribers/{sid}/sessions": {"GET": self.sessions},
        }
        # One route per path, so a wrong method gets a 405 listing every allowed one.
        return [
            Route(path, self._wrap(path, methods), methods=list(methods))
            for path, methods in table.items()
        ]

    def _wrap(self, path: str, methods: dict[str, Handler]) -> Handler:
        answer = guarded(methods)

        async def handle(request: Request) -> Response:
            started = time.perf_counter()
            response = await answer(request)
            HTTP_REQUESTS.labels(request.method, path, str(response.status_code)).inc()
            log.debug(
                "request",
                extra={
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "ms": round((time.perf_counter() - started) * 1000, 3),
                },
            )
            return response

        return handle

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        return parse_body(await request.body())

    @staticmethod
    def _op_id(request: Request, body_id: str | None, fallback: str) -> str:
        header = request.headers.get("idempotency-key")
        if header is not None and not 0 < len(header) <= IDEMPOTENCY_KEY_LEN_MAX:
            raise InvalidRequest(
                f"Idempotency-Key must be 1..{IDEMPOTENCY_KEY_LEN_MAX} characters",
                field="Idempotency-Key",
            )
        key = header or body_id
        return f"api:{key}" if key else fallback

    # ------------------------------------------------------------------ meta

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def health(self, request: Request) -> Response:
        stats = self.store.stats()
        return json_response(
            {"status": "failed" if stats.get("failed") else "ok", "store": stats},
            503 if stats.get("failed") else 200,
        )

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), headers={"content-type": CONTENT_TYPE_LATEST})

    # ------------------------------------------------------------------ subscribers

    async def create_subscriber(self, request: Request) -> Response:
        body = await self._body(request)
        check_fields(body, SUBSCRIBER_FIELDS, {"id"}, nullable=SUBSCRIBER_FIELDS - {"id"})
        for name in SUBSCRIBER_FIELDS:
            want_str(body, name)
        sid = body["id"]
        op_id = self._op_id(request, None, f"api:subscriber:{sid}:{uuid.uuid4().hex}")
        result = await self.engine.admin("create_subscriber", op_id, body)
        return json_response(result, 201, {"location": f"/v1/subscribers/{quote(sid, safe='')}"})

    async def list_subscribers(self, request: Request) -> Response:
        try:
            offset = int(request.query_params.get("offset", "0"))
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise InvalidRequest("offset and limit must be integers") from None
        if not 0 <= offset <= AMOUNT_MAX or not 0 < limit <= PAGE_MAX:
            raise InvalidRequest(f"need offset >= 0 and 0 < limit <= {PAGE_MAX}")
        subs = await self.store.list_subscribers(offset, limit)
        return json_response({"subscribers": [s.summary_json() for s in subs], "offset": offset})

    async def get_subscriber(self, request: Request) -> Response:
        sub = await self.store.get_subscriber(request.path_params["sid"])
        return json_response(sub.summary_json())

    async def patch_subscriber(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        body = await self._body(request)
        if not body:
            raise BadRequest("a JSON object with the fields to change is required")
        check_fields(body, SUBSCRIBER_FIELDS - {"id"}, nullable=SUBSCRIBER_FIELDS)
        for name in SUBSCRIBER_FIELDS:
            want_str(body, name)
        await self.store.get_subscriber(sid)
        op_id = self._op_id(request, None, f"api:patch:{sid}:{uuid.uuid4()}")
        result = await self.engine.admin("update_subscriber", op_id, {**body, "id": sid})
        return json_response(result)

    async def delete_subscriber(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        await self.store.get_subscriber(sid)
        op_id = self._op_id(request, None, f"api:delete:{sid}:{uuid.uuid4()}")
        await self.engine.admin("delete_subscriber", op_id, {"id": sid})
        return Response(status_code=204)

    # ------------------------------------------------------------------ buckets and balance

    async def add_bucket(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        body = await self._body(request)
        check_fields(
            body,
            {
                "id",
                "unit",
                "amount",
                "rating_groups",
                "priority",
                "expires_at",
                "valid_from",
                "origin",
            },
            {"unit", "amount"},
        )
        bucket_id = want_str(body, "id") or f"b-{uuid.uuid4().hex[:16]}"
        want_int(body, "amount")
        want_int(body, "priority")
        args = {
            "subscriber_id": sid,
            "bucket_id": bucket_id,
            "unit": body["unit"],
            "amount": body["amount"],
            "rating_groups": body.get("rating_groups") or [],
            "priority": body.get("priority", 0),
            "expires_at_ms": time_ms(body, "expires_at"),
            "valid_from_ms": time_ms(body, "valid_from"),
            "origin": body.get("origin", "purchase"),
        }
        op_id = self._op_id(request, None, f"api:bucket:{sid}:{bucket_id}")
        result = await self.engine.admin("add_bucket", op_id, args)
        return json_response(result, 201)

    async def balance(self, request: Request) -> Response:
        sub = await self.store.get_subscriber(request.path_params["sid"])
        now_ms = self.store.clock()
        buckets = [b.to_json(now_ms) for b in sub.buckets.values()]
        totals: dict[str, dict[str, int]] = {}
        for b in buckets:
            t = totals.setdefault(b["unit"], {"amount": 0, "reserved": 0, "available": 0})
            t["amount"] += b["amount"]
            t["reserved"] += b["reserved"]
            t["available"] += b["available"]
        return json_response({"subscriber_id": sub.id, "buckets": buckets, "totals": totals})

    async def topup(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        body = await self._body(request)
        check_fields(
            body,
            {"id", "unit", "amount", "rating_groups", "expires_at", "bucket_id"},
            {"unit", "amount"},
        )
        topup_id = want_str(body, "id") or f"t-{uuid.uuid4().hex}"
        want_int(body, "amount")
        args: dict[str, Any] = {
            "subscriber_id": sid,
            "unit": body["unit"],
            "amount": body["amount"],
            "topup_id": topup_id,
        }
        if body.get("rating_groups") is not None:
            args["rating_groups"] = body["rating_groups"]
        bucket_id = want_str(body, "bucket_id")
        if bucket_id is not None:
            args["bucket_id"] = bucket_id
        expires = time_ms(body, "expires_at")
        if expires is not None:
            args["expires_at_ms"] = expires
        result = await self.engine.admin("topup", self._op_id(request, topup_id, ""), args)
        return json_response({"id": topup_id, **result}, 201)

    async def adjust(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        body = await self._body(request)
        check_fields(body, {"id", "unit", "amount", "reason"}, {"unit", "amount"})
        adj_id = want_str(body, "id") or f"a-{uuid.uuid4().hex}"
        want_int(body, "amount")
        want_str(body, "reason")
        args = {
            "subscriber_id": sid,
            "unit": body["unit"],
            "amount": body["amount"],
            "topup_id": adj_id,
            "reason": body.get("reason"),
        }
        result = await self.engine.admin("adjust", self._op_id(request, adj_id, ""), args)
        return json_response({"id": adj_id, **result}, 201)

    async def reservations(self, request: Request) -> Response:
        sub = await self.store.get_subscriber(request.path_params["sid"])
        return json_response(
            {
                "subscriber_id": sub.id,
                "reservations": [r.to_json() for r in sub.reservations.values()],
            }
        )

    async def sessions(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        await self.store.get_subscriber(sid)
        sessions = await self.store.sessions_of(sid)
        return json_response(
            {
                "subscriber_id": sid,
                "sessions": [{"id": k, **v} for k, v in sorted(sessions.items())],
            }
        )
