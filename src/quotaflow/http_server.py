"""The HTTP listeners' server: granian embedded on our own event loop, or hypercorn.

Both speak HTTP/1.1 and cleartext HTTP/2 with prior knowledge (h2c) on one port, and both run
the app on the calling event loop, so the ledger stays in this one process. granian does
the HTTP/2 framing in Rust on its own thread (outside the GIL); hypercorn does it in Python
on the loop, which caps it at a few thousand requests/s on this hardware (PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

log = logging.getLogger("quotaflow.http")

HttpServerKind = Literal["granian", "hypercorn"]
HTTP_SERVERS: tuple[HttpServerKind, ...] = ("granian", "hypercorn")

KEEP_ALIVE_S = 75  # hypercorn: idle connections are closed after this (granian keeps them)
# On shutdown, open connections get this long to finish what they are doing. granian 2.8 on its
# own waits for every client to hang up (emmett-framework/granian#568), which an SBI peer
# holding its HTTP/2 connection never does.
GRACE_S = 5.0
MAX_CONCURRENT_STREAMS = 256
# Requests handed to the app at once per listener; more wait in the server. Generous, since
# the store's group commit gets cheaper per request the more requests share it.
IN_FLIGHT_MAX = 4096

# granian configures logging when its server is built: keep its loggers on ours (JSON lines
# on stderr via the root logger) instead of its own stdout handlers.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"level": "WARNING", "propagate": True},
        "granian.access": {"level": "WARNING", "propagate": True},
    },
}


_draining: set[asyncio.Future[None]] = set()


async def serve_http(
    app: Any,
    host: str,
    port: int,
    shutdown: asyncio.Event,
    kind: HttpServerKind = "granian",
    *,
    grace_s: float = GRACE_S,
) -> None:
    """Serve `app` on host:port until `shutdown` is set, then up to `grace_s` more.

    `app` is ASGI; granian serves it with RSGI instead when it has `__rsgi__` (NchfFront).
    """
    if kind == "granian":
        await _serve_granian(app, host, port, shutdown, grace_s)
    elif kind == "hypercorn":
        await _serve_hypercorn(app, host, port, shutdown, grace_s)
    else:
        raise ValueError(f"unknown HTTP server {kind!r}")


async def _serve_granian(
    app: Any, host: str, port: int, shutdown: asyncio.Event, grace_s: float
) -> None:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings, HTTP2Settings
    from granian.log import LogLevels
    from granian.server.embed import Server as GranianServer

    # An app that also speaks granian's RSGI (one call for the body, one for the answer) is
    # served with it: ~12 us less on the event loop per request than ASGI's messages.
    # ASGINL: no lifespan protocol; whoever builds the app starts and stops its parts.
    rsgi = hasattr(app, "__rsgi__")
    server = GranianServer(
        app,
        address=host,
        port=port,
        interface=Interfaces.RSGI if rsgi else Interfaces.ASGINL,
        http=HTTPModes.auto,  # HTTP/1.1 and h2c prior knowledge on the same port
        runtime_threads=1,  # one Rust I/O thread; the other core runs this loop
        backpressure=IN_FLIGHT_MAX,
        backlog=1024,
        websockets=False,
        http1_settings=HTTP1Settings(keep_alive=True),
        http2_settings=HTTP2Settings(max_concurrent_streams=MAX_CONCURRENT_STREAMS),
        log_enabled=True,
        log_level=LogLevels.warning,
        log_dictconfig=_GRANIAN_LOGGING,
    )
    serving = asyncio.ensure_future(server.serve())
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # a bind failure surfaces here
            return
        server.stop()  # type: ignore[no-untyped-call]  # stops accepting at once
        done, _ = await asyncio.wait({serving}, timeout=grace_s)
        if done:
            serving.result()
        else:
            # Connections still open are left to granian: it finishes when their clients hang
            # up, or with the process. Not cancelled: granian 2.8.7 then fails setting a
            # result on its cancelled future when the last connection goes.
            log.info("HTTP connections still open after the grace period", extra={"port": port})
            _draining.add(serving)
            serving.add_done_callback(_draining.discard)
    finally:
        stopping.cancel()


async def _serve_hypercorn(
    app: Any, host: str, port: int, shutdown: asyncio.Event, grace_s: float
) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config as HypercornConfig

    hc = HypercornConfig()
    hc.bind = [f"{host}:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("quotaflow.http")
    hc.keep_alive_timeout = KEEP_ALIVE_S
    hc.h2_max_concurrent_streams = MAX_CONCURRENT_STREAMS
    hc.graceful_timeout = grace_s
    hc.keep_alive_max_requests = 2**62  # hypercorn's default sends GOAWAY every 1,000 requests
    await hypercorn_serve(app, hc, shutdown_trigger=shutdown.wait)


# ---------------------------------------------------------------------- ASGI apps over RSGI


async def asgi_over_rsgi(app: Any, scope: Any, proto: Any) -> None:
    """Serve one RSGI request with an ASGI app (the management API under an RSGI front).

    The request body is read whole and the answer sent whole: nothing served this way streams.
    """
    # granian hands header values over as text; UTF-8 never fails where latin-1 could.
    headers = [(k.encode("latin-1"), v.encode()) for k, v in scope.headers.items()]
    if scope.authority is not None and scope.headers.get("host") is None:
        headers.append((b"host", scope.authority.encode()))  # HTTP/2's :authority
    path: str = scope.path
    asgi_scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "client": _address(scope.client),
        "server": _address(scope.server),
        "state": {},
    }
    body_read = False

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            try:
                body = await proto()
            except RuntimeError:  # granian's ProtocolClosed: the client went away
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": body, "more_body": False}
        await proto.client_disconnect()
        return {"type": "http.disconnect"}

    status = 0
    answer_headers: list[tuple[str, str]] = []
    chunks: list[bytes] = []
    complete = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, complete
        if message["type"] == "http.response.start":
            status = message["status"]
            for key, value in message.get("headers", ()):
                name = key.decode("latin-1").lower()
                if name != "content-length":  # granian sets it from the body
                    answer_headers.append((name, value.decode("latin-1")))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            complete = not message.get("more_body", False)

    try:
        await app(asgi_scope, receive, send)
    except Exception:
        log.exception("HTTP request failed", extra={"path": path})
        if not complete:
            status, answer_headers, chunks = 500, [("content-type", "text/plain")], [b"error"]
    if status == 0:
        return  # the app never answered (a client that went away)
    with contextlib.suppress(RuntimeError):  # granian's ProtocolClosed
        proto.response_bytes(status, answer_headers, b"".join(chunks))


def _address(value: str | None) -> tuple[str, int] | None:
    # "127.0.0.1:8080" or "[::1]:8080"
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0
