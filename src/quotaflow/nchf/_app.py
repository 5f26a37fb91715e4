"""The Nchf_ConvergedCharging v3 resource: create, update and release a charging data session.

A ChargingDataRef is a keyed digest of the create request, and each engine step is numbered
from the request, so everything needed to recognise a retransmission is in the ledger's own
idempotency records: a repeated request, even after a restart, finds its first answer and is
never charged twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.engine import Engine, ServiceRequest, ServiceResult
from quotaflow.ledger import ChargingError, UnknownSession, UnknownSubscriber
from quotaflow.nchf import _problems as problems
from quotaflow.nchf._config import NchfConfig
from quotaflow.nchf._mapping import Charged, charged, charging_data_response, service_requests
from quotaflow.nchf._notify import INTERFACE, Notifier
from quotaflow.nchf._wire import (
    CHARGING_FAILED,
    ChargingRequest,
    WireError,
    decode_body,
    parse_request,
    resolvable,
)

log = logging.getLogger("quotaflow.nchf")

_REF = re.compile(r"^[0-9a-f]{32}$")
# Engine request numbers: the create is 0; an update is its invocationSequenceNumber when the
# consumer counts (1..2^32-1), else a digest of its body in [2^32, 2^62); the release is 2^62.
# The ranges never overlap, so no request can be mistaken for another kind.
_DIGEST_BASE = 2**32
_DIGEST_SPAN = 2**62 - 2**32
RELEASE_REQUEST_NUMBER = 2**62
_DRAIN_FACTOR = 16
_STRAY_BODY_BYTES_MAX = 64 * 1024

Handler = Callable[[Request], Awaitable[Response]]


class _Refused(Exception):
    """Answer at once with this response (a protocol-level refusal, before any charging)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _guarded(handler: Handler) -> Handler:
    """Every failure becomes a ProblemDetails; the endpoint never lets an exception out."""

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except _Refused as exc:
            return exc.response
        except WireError as exc:
            return problems.from_wire_error(exc)
        except ChargingError as exc:
            return problems.from_charging_error(exc)
        except Exception:
            log.exception("nchf request failed", extra={"path": request.url.path})
            return problems.problem(500, problems.UNSPECIFIED_NF_FAILURE, "internal error")

    return endpoint


async def _drain(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it exceeds `limit` (the rest is still read, up to a bound).

    Answering an HTTP/2 request before its body was fully received makes hypercorn 0.18 drop
    the whole connection with every stream on it (KeyError on DATA for a closed stream,
    pgjones/hypercorn#329), so every answer here waits for the end of the request body.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_FACTOR * limit:
            break  # an abusive body: give up on the connection rather than read on
    return b"".join(chunks) if size <= limit else None


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, answered as ProblemDetails and only after the request body.

    Also right as the exception handler of an app that mounts this one: a path Starlette
    cannot route at all (a ref with a newline) never reaches the mount.
    """
    await _drain(request, _STRAY_BODY_BYTES_MAX)
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return Response(status_code=405, headers=exc.headers)  # TS 29.500: no body
    return problems.problem(404, problems.RESOURCE_URI_STRUCTURE_NOT_FOUND, "no such resource")


def problem_exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Exception handlers for the app that mounts the API (the SBI answers with ProblemDetails)."""
    return {404: _no_route, 405: _no_route}


def _digest(doc: dict[str, Any], key: bytes) -> bytes:
    # A retransmission may set retransmissionIndicator; it is otherwise the same request.
    content = {k: v for k, v in doc.items() if k != "retransmissionIndicator"}
    return hashlib.blake2b(
        orjson.dumps(content, option=orjson.OPT_SORT_KEYS), key=key, digest_size=16
    ).digest()


def _session_id(ref: str) -> str:
    return f"{INTERFACE}-{ref}"


class _ChargingData:
    def __init__(self, engine: Engine, config: NchfConfig) -> None:
        self.engine = engine
        self.config = config
        self.notifier = Notifier(config)
        engine.subscribe(self.notifier.on_event)

    def routes(self) -> list[Route]:
        return [
            Route("/chargingdata", _guarded(self.create), methods=["POST"]),
            Route("/chargingdata/{ref}/update", _guarded(self.update), methods=["POST"]),
            Route("/chargingdata/{ref}/release", _guarded(self.release), methods=["POST"]),
        ]

    # ------------------------------------------------------------------ operations

    async def create(self, request: Request) -> Response:
        doc = await self._body(request)
        req = parse_request(doc, units_max=self.config.units_per_request_max)
        ref = _digest(doc, self.config.ref_key).hex()
        session_id = _session_id(ref)
        subscriber_id = await self._subscriber(req)
        meta: dict[str, Any] = {"interface": INTERFACE, "consumer": req.consumer}
        if req.notify_uri is not None:
            meta["notify_uri"] = req.notify_uri
        answer = await self.engine.session_start(
            session_id, subscriber_id, 0, service_requests(req, self.config), meta
        )
        groups = charged(req, answer.services, self.config)
        if groups and all(g.answer.result is ServiceResult.NO_CREDIT for g in groups):
            # Nothing to charge and nothing granted: no session is left open behind a refusal.
            await self._terminate(session_id, [])
            return problems.problem(
                403, problems.QUOTA_LIMIT_REACHED, "the balance cannot pay for any rating group"
            )
        self._track(session_id, groups)
        body = charging_data_response(req.sequence_number, groups, self.config)
        return self._json(201, body, {"location": self._location(request, ref)})

    async def update(self, request: Request) -> Response:
        doc = await self._body(request)
        session_id = self._session_of(request)
        req = parse_request(doc, units_max=self.config.units_per_request_max)
        number = self._request_number(req, doc)
        answer = await self.engine.session_update(
            session_id, number, service_requests(req, self.config)
        )
        groups = charged(req, answer.services, self.config)
        if any(g.answer.result is ServiceResult.BARRED for g in groups):
            # Barring is about the user, not a rating group: the usage is posted, the rest denied.
            return problems.problem(
                403, problems.END_USER_REQUEST_DENIED, "the subscriber is barred"
            )
        self._track(session_id, groups)
        body = charging_data_response(req.sequence_number, groups, self.config)
        return self._json(200, body)

    async def release(self, request: Request) -> Response:
        doc = await self._body(request)
        session_id = self._session_of(request)
        req = parse_request(doc, units_max=self.config.units_per_request_max)
        await self._terminate(session_id, service_requests(req, self.config, final=True))
        return Response(status_code=204)

    # ------------------------------------------------------------------ helpers

    async def _terminate(self, session_id: str, services: list[ServiceRequest]) -> None:
        await self.engine.session_terminate(session_id, RELEASE_REQUEST_NUMBER, services)
        self.notifier.forget(session_id)

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await _drain(request, self.config.body_bytes_max)
        content_type = request.headers.get("content-type", "")
        if content_type and "json" not in content_type.lower():
            raise _Refused(
                problems.problem(
                    415, problems.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json"
                )
            )
        if raw is None:
            raise _Refused(
                problems.problem(
                    413,
                    problems.PAYLOAD_TOO_LARGE,
                    f"the body must be at most {self.config.body_bytes_max} bytes",
                )
            )
        return decode_body(raw)

    def _session_of(self, request: Request) -> str:
        ref: str = request.path_params["ref"]
        if _REF.match(ref) is None:  # not one of ours: do not even ask the engine
            raise UnknownSession("unknown ChargingDataRef")
        return _session_id(ref)

    async def _subscriber(self, req: ChargingRequest) -> str:
        """The subscriber of the SUPI, else of the GPSI (pDUSessionChargingInformation)."""
        identities = [i for i in (req.supi, req.gpsi) if i is not None]
        if not identities:
            raise WireError(CHARGING_FAILED, "/subscriberIdentifier", "is needed for charging")
        for identity in identities:
            if resolvable(identity):
                try:
                    return await self.engine.resolve_any(identity)
                except UnknownSubscriber:
                    continue
        raise UnknownSubscriber(f"no subscriber with identity {identities[0]!r}")

    def _request_number(self, req: ChargingRequest, doc: dict[str, Any]) -> int:
        if req.sequence_number > 0:
            return req.sequence_number
        # free5GC numbers every request 0. A retransmission repeats the body (and its
        # nanosecond invocationTimeStamp); a new request does not.
        value = int.from_bytes(_digest(doc, self.config.ref_key)[:8], "big")
        return _DIGEST_BASE + value % _DIGEST_SPAN

    def _track(self, session_id: str, groups: list[Charged]) -> None:
        online = [g for g in groups if not g.offline]
        starved = {
            g.usage.rating_group
            for g in online
            if g.answer.result in (ServiceResult.NO_CREDIT, ServiceResult.FINAL)
        }
        self.notifier.track(session_id, {g.usage.rating_group for g in online}, starved)

    def _location(self, request: Request, ref: str) -> str:
        # The mount point (root_path) is the API's base path, /nchf-convergedcharging/v3.
        root = self.config.api_root or f"{request.url.scheme}://{request.url.netloc}"
        return f"{root.rstrip('/')}{request.scope.get('root_path', '')}/chargingdata/{ref}"

    @staticmethod
    def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        return Response(
            orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
        )


def create_app(engine: Engine, *, config: NchfConfig | None = None) -> Starlette:
    """The Nchf_ConvergedCharging v3 API, to be mounted at BASE_PATH.

    Its routes are relative to the mount (`/chargingdata`, ...). Mounted apps get no lifespan,
    so whoever mounts it should `await app.state.nchf_close()` on shutdown; run on its own,
    the app closes its notification client itself.
    """
    service = _ChargingData(engine, config or NchfConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await service.notifier.aclose()

    app = Starlette(
        routes=service.routes(), lifespan=lifespan, exception_handlers=problem_exception_handlers()
    )
    app.state.nchf_close = service.notifier.aclose
    app.state.nchf_notifier = service.notifier
    return app
