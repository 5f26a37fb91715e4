"""A live CHF for the Nchf tests: EmbeddedStore + Engine + the Nchf app under the server's HTTP
server (granian; QUOTAFLOW_HTTP_SERVER=hypercorn runs them on hypercorn).

Every request a test sends and every response it gets go through `SpecClient`, which checks
both against the 3GPP OpenAPI (TS 32.291 Rel-17) with openapi-core over real HTTP/2 (h2c with
prior knowledge, as the 5G SBI does).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from jsonschema_path import SchemaPath
from jsonschema_path.handlers import default_handlers
from jsonschema_path.handlers.urllib import UrllibHandler
from jsonschema_path.readers import FilePathReader
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.validation.schemas import oas30_write_schema_validators_factory
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from werkzeug.datastructures import Headers

from quotaflow.engine import Engine
from quotaflow.http_server import HTTP_SERVERS, HttpServerKind, serve_http
from quotaflow.ledger import Unit
from quotaflow.nchf import BASE_PATH, NchfApp, NchfConfig, create_app, problem_exception_handlers
from quotaflow.store import EmbeddedStore

SPEC_DIR = Path(
    os.environ.get(
        "QUOTAFLOW_NCHF_SPEC_DIR",
        Path(__file__).resolve().parents[3] / "shared" / "specs" / "nchf-rel17",
    )
)
SPEC_PATH = SPEC_DIR / "TS32291_Nchf_ConvergedCharging.yaml"
NF_INSTANCE = "6f1c1b4e-2a7d-4f57-9d3c-1b2a3c4d5e6f"
UPF_ID = "0b7e2f7a-7d55-4c39-8f0e-5a1d2c3b4a59"
MB = 1_000_000

_charging_ids = itertools.count(1)


# ---------------------------------------------------------------------- serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_server_kind() -> HttpServerKind:
    kind = os.environ.get("QUOTAFLOW_HTTP_SERVER", "granian")
    assert kind in HTTP_SERVERS, kind
    return kind  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def serve_app(app: Any, port: int | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app as the server does (h2c prior knowledge and HTTP/1.1) on loopback."""
    port = port or free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_http(app, "127.0.0.1", port, stop, http_server_kind(), grace_s=1.0)
    )
    for _ in range(400):
        if task.done():
            task.result()  # a bind failure surfaces here
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        break
    else:
        raise RuntimeError(f"the HTTP server did not come up on port {port}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await task


@dataclass
class LiveChf:
    origin: str  # http://127.0.0.1:PORT
    engine: Engine
    store: EmbeddedStore
    app: NchfApp

    @property
    def api(self) -> str:
        return self.origin + BASE_PATH


@contextlib.asynccontextmanager
async def serve_for_tests(
    data_dir: Path, config: NchfConfig | None = None
) -> AsyncIterator[LiveChf]:
    """A store, an engine and the Nchf app mounted at BASE_PATH as the server mounts it."""
    store = EmbeddedStore(data_dir)
    await store.open()
    engine = Engine(store)
    nchf = create_app(engine, config=config)
    # As the server should mount it: Starlette's own 404s (paths it cannot route into the
    # mount, e.g. with a newline) answered as ProblemDetails too.
    root = Starlette(
        routes=[Mount(BASE_PATH, app=nchf)], exception_handlers=problem_exception_handlers()
    )
    try:
        # As the server serves it: Nchf paths straight to the Nchf app, the rest to Starlette.
        async with serve_app(nchf.in_front_of(root)) as origin:
            yield LiveChf(origin, engine, store, nchf)
    finally:
        await nchf.state.nchf_close()
        store.ledger.check_invariants()
        await store.close()


@pytest.fixture
async def chf(tmp_path: Path) -> AsyncIterator[LiveChf]:
    async with serve_for_tests(tmp_path) as live:
        yield live


# ---------------------------------------------------------------------- the spec


class _CachedFiles:
    """Referenced spec files, parsed once: jsonschema-path would re-read the YAML (some of it
    ~170 kB) each time a validator resolves a $ref into another file."""

    def __init__(self) -> None:
        self._read = UrllibHandler("file")
        self._parsed: dict[str, Any] = {}

    def __call__(self, uri: str) -> Any:
        if uri not in self._parsed:
            self._parsed[uri] = self._read(uri)
        return self._parsed[uri]


@pytest.fixture(scope="session")
def spec() -> OpenAPI:
    """The Rel-17 API, built once: it pulls in ~70 referenced files."""
    if not SPEC_PATH.exists():  # a failure, never a silent skip
        pytest.fail(f"3GPP spec not found at {SPEC_PATH} (set QUOTAFLOW_NCHF_SPEC_DIR)")
    data, base_uri = FilePathReader(str(SPEC_PATH)).read()
    handlers = {**default_handlers, "file": _CachedFiles()}
    schema = SchemaPath.from_dict(data, base_uri=base_uri, handlers=handlers)
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    return OpenAPI(schema, config=config)


def schema_errors(spec: OpenAPI, schema_name: str, value: Any) -> list[str]:
    """Errors of `value` against components/schemas/<schema_name> (used for callbacks)."""
    schema = spec.spec / "components" / "schemas" / schema_name
    validator = oas30_write_schema_validators_factory.create(spec.spec, schema)
    return [e.message for e in validator.validator.iter_errors(value)]


class _OpenApiRequest:
    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body: bytes | None = request.content
        self.content_type = request.headers.get("content-type", "")
        self.parameters = RequestParameters(header=Headers(dict(request.headers)))


class _OpenApiResponse:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.data: bytes | None = response.content
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(dict(response.headers))


def _messages(exc: BaseException) -> list[str]:
    """The individual schema violations behind an openapi-core error, else the error itself."""
    found: list[str] = []
    cause: BaseException | None = exc
    while cause is not None:
        found.extend(getattr(e, "message", str(e)) for e in getattr(cause, "schema_errors", ()))
        cause = cause.__cause__
    return found or [f"{type(exc).__name__}: {exc}"]


class SpecClient:
    """An HTTP/2-only client that validates every exchange against the 3GPP spec."""

    def __init__(self, spec: OpenAPI, live: LiveChf) -> None:
        self.spec = spec
        self.live = live
        self.http = httpx.AsyncClient(http2=True, http1=False, timeout=10.0)
        self.exchanges = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def post(
        self,
        path: str,
        body: dict[str, Any] | bytes,
        *,
        quirks: Iterable[str] = (),
        invalid: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST to `path` under the API root (or to an absolute URL).

        `quirks`: substrings of the only spec violations the request is allowed (free5GC's);
        `invalid`: the request is knowingly malformed and must fail validation.
        """
        url = path if path.startswith("http") else self.live.api + path
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        request = self.http.build_request(
            "POST",
            url,
            content=content,
            headers={"content-type": "application/json", **(headers or {})},
        )
        self._check_request(request, tuple(quirks), invalid)
        response = await self.http.send(request)
        assert response.http_version == "HTTP/2"
        try:
            self.spec.validate_response(_OpenApiRequest(request), _OpenApiResponse(response))
        except Exception as exc:
            raise AssertionError(
                f"response not conformant: {_messages(exc)}\n{response.status_code} "
                f"{response.headers}\n{response.text}"
            ) from exc
        self.exchanges += 1
        return response

    def _check_request(
        self, request: httpx.Request, quirks: tuple[str, ...], invalid: bool
    ) -> None:
        try:
            self.spec.validate_request(_OpenApiRequest(request))
        except Exception as exc:
            if invalid:
                return
            problems = [m for m in _messages(exc) if not any(q in m for q in quirks)]
            assert quirks and not problems, f"request not conformant: {_messages(exc)}"
            return
        assert not invalid, "a knowingly malformed request passed validation"


@pytest.fixture
async def client(spec: OpenAPI, chf: LiveChf) -> AsyncIterator[SpecClient]:
    c = SpecClient(spec, chf)
    yield c
    await c.aclose()


# ---------------------------------------------------------------------- bodies and data


def now_stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def usage(
    rating_group: int,
    *,
    requested: int | dict[str, int] | None = None,
    used: int | None = None,
    offline: bool = False,
    upf: str | None = None,
    ask: bool = True,
) -> dict[str, Any]:
    """A multipleUnitUsage entry. `requested` None with `ask` is an empty requestedUnit."""
    entry: dict[str, Any] = {"ratingGroup": rating_group}
    if ask:
        if isinstance(requested, dict):
            entry["requestedUnit"] = requested
        else:
            entry["requestedUnit"] = {} if requested is None else {"totalVolume": requested}
    if used is not None:
        entry["usedUnitContainer"] = [
            {
                "localSequenceNumber": 1,
                "quotaManagementIndicator": "OFFLINE_CHARGING" if offline else "ONLINE_CHARGING",
                "totalVolume": used,
                "uplinkVolume": used // 2,
                "downlinkVolume": used - used // 2,
                "triggerTimestamp": now_stamp(),
            }
        ]
    if upf is not None:
        entry["uPFID"] = upf
    return entry


def charging_request(
    seq: int = 0,
    supi: str | None = "imsi-001010000000001",
    usages: list[dict[str, Any]] | None = None,
    notify_uri: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": NF_INSTANCE},
        "invocationTimeStamp": now_stamp(),
        "invocationSequenceNumber": seq,
        # Distinct creates must differ: the ChargingDataRef is a digest of the request.
        "chargingId": next(_charging_ids),
    }
    if supi is not None:
        body["subscriberIdentifier"] = supi
    if usages is not None:
        body["multipleUnitUsage"] = usages
    if notify_uri is not None:
        body["notifyUri"] = notify_uri
    body.update(extra)
    return body


async def subscriber(engine: Engine, n: int, octets: int = 0, *, status: str | None = None) -> str:
    sid = f"sub-{n}"
    identities = {"imsi": f"00101{n:010d}", "msisdn": f"4670{n:07d}", "nai": f"user{n}@example.org"}
    await engine.admin("create_subscriber", f"create-{sid}", {"id": sid, **identities})
    if octets:
        await engine.admin(
            "topup", f"topup-{sid}-0", {"subscriber_id": sid, "unit": "octets", "amount": octets}
        )
    if status is not None:
        await engine.admin("update_subscriber", None, {"id": sid, "status": status})
    return sid


def imsi(n: int) -> str:
    return f"imsi-00101{n:010d}"


async def consumed_octets(engine: Engine, subscriber_id: str) -> int:
    sub = await engine.store.get_subscriber(subscriber_id)
    return sub.counter(Unit.OCTETS)["consumed"]


async def available_octets(engine: Engine, subscriber_id: str) -> int:
    sub = await engine.store.get_subscriber(subscriber_id)
    return sum(b.available for b in sub.buckets.values() if b.unit is Unit.OCTETS)


# ---------------------------------------------------------------------- a consumer's notify server


@dataclass
class NotifySink:
    """A tiny SMF callback endpoint: records each ChargingNotify and its HTTP version."""

    url: str = ""
    received: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def notify_sink() -> AsyncIterator[NotifySink]:
    sink = NotifySink()

    async def notify(request: Request) -> Response:
        body = orjson.loads(await request.body())
        sink.received.append((request.path_params["ctx"], request.scope["http_version"], body))
        sink.arrived.set()
        return Response(status_code=204)

    app = Starlette(routes=[Route("/nsmf-callback/{ctx}", notify, methods=["POST"])])
    async with serve_app(app) as origin:
        sink.url = origin + "/nsmf-callback"
        yield sink
