"""The Nchf_ConvergedCharging v3 resource: create, update and release a charging data session.

A ChargingDataRef is a keyed digest of the create request, and each engine step is numbered
from the request, so everything needed to recognise a retransmission is in the ledger's own
idempotency records: a repeated request, even after a restart, finds its first answer and is
never charged twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from quotaflow.engine import SESSION_EVENTS, Engine, ServiceRequest, ServiceResult
from quotaflow.http_server import asgi_over_rsgi
from quotaflow.ledger import ChargingError, UnknownSession, UnknownSubscriber
from quotaflow.nchf import _problems as problems
from quotaflow.nchf._config import BASE_PATH, NchfConfig
from quotaflow.nchf._errors import Disconnected, Refused, WireError
from quotaflow.nchf._mapping import Charged, charged, charging_data_response, service_requests
from quotaflow.nchf._notify import INTERFACE, Notifier
from quotaflow.nchf._wire import (
    CHARGING_FAILED,
    ChargingRequest,
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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[str, str]]
# A success answer, sent without building a Response object: status, extra headers, JSON body
# (None: no body).
Answer = tuple[int, Headers, bytes | None]
Handler = Callable[["_Call"], Awaitable[Answer]]
Endpoint = Callable[["_Call"], Awaitable[Answer | Response]]

_NO_HEADERS: Headers = []
_JSON_HEADERS: Headers = [("content-type", "application/json")]


class _Call:
    """One request as the handlers see it, from an ASGI or an RSGI scope."""

    __slots__ = ("body", "content_type", "origin_of", "path", "ref", "root_path", "scope")

    def __init__(
        self,
        ref: str | None,
        body: bytes | None,
        content_type: str | None,
        scope: Any,
        path: str,
        root_path: str,
        origin_of: Callable[[Any], str],
    ) -> None:
        self.ref = ref
        self.body = body  # None: larger than the configured limit
        self.content_type = content_type
        self.scope = scope
        self.path = path
        self.root_path = root_path
        self.origin_of = origin_of  # scheme://host[:port] the client addressed, from the scope


def _asgi_header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _drain(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it exceeds `limit` (the rest is still read, up to a bound).

    Answering an HTTP/2 request before its body was fully received makes hypercorn 0.18 drop
    the whole connection with every stream on it (KeyError on DATA for a closed stream,
    pgjones/hypercorn#329), so every answer here waits for the end of the request body.
    """
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")  # the usual case: the body in one message
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_FACTOR * limit:
            break  # an abusive body: give up on the connection rather than read on
        if not message.get("more_body", False):
            break
        message = await receive()
    return b"".join(chunks) if size <= limit else None


async def _send_response(send: Send, response: Response) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


async def _no_route(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, answered as ProblemDetails and only after the request body.

    For the app that mounts this one: a path Starlette cannot route at all (a ref with a
    newline) never reaches the mount.
    """
    with contextlib.suppress(Disconnected):
        await _drain(request.receive, _STRAY_BODY_BYTES_MAX)
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return Response(status_code=405, headers=exc.headers)  # TS 29.500: no body
    return _not_found()


def _not_found() -> Response:
    return problems.problem(404, problems.RESOURCE_URI_STRUCTURE_NOT_FOUND, "no such resource")


def _not_allowed() -> Response:
    return Response(status_code=405, headers={"allow": "POST"})  # TS 29.500: no body


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


class NchfApp:
    """The Nchf_ConvergedCharging v3 API as a plain ASGI app.

    It routes its three operations itself: a framework's routing, middleware and Request and
    Response objects cost more per update than the mapping does. It serves paths relative
    to its mount point (`root_path`, as Starlette's Mount passes them), or full paths under
    BASE_PATH when called directly (`in_front_of`).
    """

    def __init__(self, engine: Engine, config: NchfConfig) -> None:
        self.engine = engine
        self.config = config
        self.notifier = Notifier(config)
        engine.subscribe(self.notifier.on_event, SESSION_EVENTS)
        self.state = State()
        self.state.nchf_close = self.notifier.aclose
        self.state.nchf_notifier = self.notifier
        self._create = self._guarded(self.create)
        self._update = self._guarded(self.update)
        self._release = self._guarded(self.release)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, _relative_path(scope), receive, send)
        elif scope["type"] == "lifespan":  # run on its own: close the notifier on shutdown
            await self._lifespan(receive, send)

    def in_front_of(self, app: Any) -> NchfFront:
        """An app that serves BASE_PATH/... here and everything else with the ASGI `app`."""
        return NchfFront(self, app)

    async def _http(self, scope: Scope, path: str, receive: Receive, send: Send) -> None:
        handler, ref = self._route(path)
        try:
            limit = self.config.body_bytes_max if handler is not None else _STRAY_BODY_BYTES_MAX
            body = await _drain(receive, limit)
        except Disconnected:
            return
        if handler is None:
            await _send_response(send, _not_found())
        elif scope["method"] != "POST":
            await _send_response(send, _not_allowed())
        else:
            content_type = _asgi_header(scope, b"content-type")
            root = scope.get("root_path", "")
            call = _Call(ref, body, content_type, scope, scope["path"], root, _origin)
            answer = await handler(call)
            if isinstance(answer, Response):
                await _send_response(send, answer)
                return
            status, headers, content = answer
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            if content is not None:
                raw.append((b"content-length", str(len(content)).encode()))
                raw.append((b"content-type", b"application/json"))
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": content or b""})

    async def _rsgi(self, scope: Any, proto: Any, path: str) -> None:
        """The same as `_http`, for granian's RSGI: no message dicts, one call to answer."""
        handler, ref = self._route(path)
        limit = self.config.body_bytes_max if handler is not None else _STRAY_BODY_BYTES_MAX
        try:
            body = await _rsgi_body(scope, proto, limit)
        except RuntimeError:  # granian's ProtocolClosed: the client went away
            return
        if handler is None:
            answer: Answer | Response = _not_found()
        elif scope.method != "POST":
            answer = _not_allowed()
        else:
            content_type = scope.headers.get("content-type")
            call = _Call(ref, body, content_type, scope, scope.path, BASE_PATH, _rsgi_origin)
            answer = await handler(call)
        with contextlib.suppress(RuntimeError):  # the client went away meanwhile
            if isinstance(answer, Response):
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in answer.raw_headers
                    if k != b"content-length"  # granian sets it from the body
                ]
                proto.response_bytes(answer.status_code, headers, answer.body)
                return
            status, extra, content = answer
            if content is None:
                proto.response_empty(status, extra)
            else:
                proto.response_bytes(status, [*extra, *_JSON_HEADERS], content)

    def _route(self, path: str) -> tuple[Endpoint | None, str | None]:
        # The paths of TS 32.291: /chargingdata and /chargingdata/{ref}/(update|release).
        if path == "/chargingdata":
            return self._create, None
        if path.startswith("/chargingdata/"):
            ref, slash, operation = path[14:].partition("/")
            if ref and slash:
                if operation == "update":
                    return self._update, ref
                if operation == "release":
                    return self._release, ref
        return None, None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.notifier.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _guarded(handler: Handler) -> Endpoint:
        """Every failure becomes a ProblemDetails; the endpoint never lets an exception out."""

        async def endpoint(call: _Call) -> Answer | Response:
            try:
                return await handler(call)
            except Refused as exc:
                return exc.response
            except WireError as exc:
                return problems.from_wire_error(exc)
            except ChargingError as exc:
                return problems.from_charging_error(exc)
            except Exception:
                log.exception("nchf request failed", extra={"path": call.path})
                return problems.problem(500, problems.UNSPECIFIED_NF_FAILURE, "internal error")

        return endpoint

    # ------------------------------------------------------------------ operations

    async def create(self, call: _Call) -> Answer:
        doc = self._body(call)
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
            raise Refused(
                problems.problem(
                    403, problems.QUOTA_LIMIT_REACHED, "the balance cannot pay for any rating group"
                )
            )
        self._track(session_id, groups)
        body = charging_data_response(req.sequence_number, groups, self.config)
        return 201, [("location", self._location(call, ref))], orjson.dumps(body)

    async def update(self, call: _Call) -> Answer:
        doc = self._body(call)
        session_id = self._session_of(call)
        req = parse_request(doc, units_max=self.config.units_per_request_max)
        number = self._request_number(req, doc)
        answer = await self.engine.session_update(
            session_id, number, service_requests(req, self.config)
        )
        groups = charged(req, answer.services, self.config)
        if any(g.answer.result is ServiceResult.BARRED for g in groups):
            # Barring is about the user, not a rating group: the usage is posted, the rest denied.
            raise Refused(
                problems.problem(403, problems.END_USER_REQUEST_DENIED, "the subscriber is barred")
            )
        self._track(session_id, groups)
        body = charging_data_response(req.sequence_number, groups, self.config)
        return 200, _NO_HEADERS, orjson.dumps(body)

    async def release(self, call: _Call) -> Answer:
        doc = self._body(call)
        session_id = self._session_of(call)
        req = parse_request(doc, units_max=self.config.units_per_request_max)
        await self._terminate(session_id, service_requests(req, self.config, final=True))
        return 204, _NO_HEADERS, None

    # ------------------------------------------------------------------ helpers

    async def _terminate(self, session_id: str, services: list[ServiceRequest]) -> None:
        await self.engine.session_terminate(session_id, RELEASE_REQUEST_NUMBER, services)
        self.notifier.forget(session_id)

    def _body(self, call: _Call) -> dict[str, Any]:
        content_type = call.content_type
        if content_type and "json" not in content_type.lower():
            raise Refused(
                problems.problem(
                    415, problems.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json"
                )
            )
        if call.body is None:
            raise Refused(
                problems.problem(
                    413,
                    problems.PAYLOAD_TOO_LARGE,
                    f"the body must be at most {self.config.body_bytes_max} bytes",
                )
            )
        return decode_body(call.body)

    def _session_of(self, call: _Call) -> str:
        ref = call.ref
        if ref is None or _REF.match(ref) is None:  # not one of ours: do not even ask the engine
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

    def _location(self, call: _Call, ref: str) -> str:
        # The mount point (root_path) is the API's base path, /nchf-convergedcharging/v3.
        root = self.config.api_root or call.origin_of(call.scope)
        return f"{root.rstrip('/')}{call.root_path}/chargingdata/{ref}"


def _relative_path(scope: Scope) -> str:
    """The path below the mount point (Starlette's Mount keeps the full path in `path`)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def _origin(scope: Scope) -> str:
    """scheme://host[:port] as the client addressed us (Host or :authority), as Starlette's URL."""
    scheme = scope.get("scheme", "http")
    for key, value in scope["headers"]:
        if key == b"host":
            return f"{scheme}://{value.decode('latin-1')}"
    server = scope.get("server")
    if server is None:
        return ""
    host, port = server
    default_port = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port == default_port else f"{scheme}://{host}:{port}"


def _rsgi_origin(scope: Any) -> str:
    host = scope.authority or scope.headers.get("host") or scope.server
    return f"{scope.scheme}://{host}"


async def _rsgi_body(scope: Any, proto: Any, limit: int) -> bytes | None:
    """As `_drain`, from granian's RSGI protocol."""
    declared = scope.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) <= limit:
        body: bytes = await proto()  # the usual case: in one call
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > _DRAIN_FACTOR * limit:
            break  # an abusive body: give up on the connection rather than read on
    return b"".join(chunks) if size <= limit else None


class NchfFront:
    """The HTTP listener's app: Nchf paths straight to the Nchf app, the rest to `app`.

    ASGI for any server; granian serves it with RSGI (`__rsgi__`), and `app` (the management
    API, ASGI) then runs through `asgi_over_rsgi`.
    """

    _PREFIX = BASE_PATH + "/"
    _CUT = len(BASE_PATH)

    def __init__(self, nchf: NchfApp, app: Any) -> None:
        self.nchf = nchf
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path: str = scope["path"]
            if path.startswith(self._PREFIX):
                scope["root_path"] = BASE_PATH  # as a mount point: the Location header uses it
                await self.nchf._http(scope, path[self._CUT :], receive, send)
                return
        await self.app(scope, receive, send)  # lifespan included

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        path: str = scope.path
        if path.startswith(self._PREFIX):
            await self.nchf._rsgi(scope, proto, path[self._CUT :])
        else:
            await asgi_over_rsgi(self.app, scope, proto)


def create_app(engine: Engine, *, config: NchfConfig | None = None) -> NchfApp:
    """The Nchf_ConvergedCharging v3 API, to be mounted at BASE_PATH (or put `in_front_of`).

    Its routes are relative to the mount (`/chargingdata`, ...). Mounted apps get no lifespan,
    so whoever mounts it should `await app.state.nchf_close()` on shutdown; run on its own,
    the app closes its notification client itself.
    """
    return NchfApp(engine, config or NchfConfig())
