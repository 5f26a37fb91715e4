"""The asyncio Diameter server: a thin shell around PeerConnection.

    server = await serve_diameter(handler, "0.0.0.0", 3868, allowed_peers=[...])
    answer = await server.send_request("pgw.example.net", rar)   # RAR / ASR
    await server.close()

`handler(peer, request) -> answer` is awaited for every application request (CCR); the answer
it returns is normalised (ids, Session-Id first, Origin-Host/Realm) before it is sent. The
event loop is the caller's: run it under uvloop to get uvloop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable

from quotaflow.diameter._link import IN_FLIGHT_MAX, ImmediateHandler, PeerLink, RequestHandler
from quotaflow.diameter.constants import (
    DEFAULT_IDENTITY,
    DEFAULT_PORT,
    DEFAULT_REALM,
    DisconnectCause,
)
from quotaflow.diameter.errors import LinkClosedError
from quotaflow.diameter.events import PeerInfo
from quotaflow.diameter.message import IPAddress, Message
from quotaflow.diameter.peer import AllowedPeer, PeerConfig, PeerConnection, PeerState, Role
from quotaflow.diameter.registry import PeerRegistry

log = logging.getLogger("quotaflow.diameter")

WATCHDOG_INTERVAL_S = 30.0  # Tw of RFC 3539
CER_TIMEOUT_S = 10.0  # a connection that has not sent CER by then is closed
REQUEST_TIMEOUT_S = 10.0  # how long send_request waits for an RAA/ASA
PEERS_MAX = 1_024


class PeerNotConnectedError(LookupError):
    """No open connection to the Origin-Host a request was addressed to."""


class DiameterServer:
    """Accepts Diameter peers and routes their application requests to `handler`."""

    def __init__(
        self,
        handler: RequestHandler,
        config: PeerConfig,
        *,
        advertise_local_address: bool = True,
        watchdog_interval_s: float = WATCHDOG_INTERVAL_S,
        cer_timeout_s: float = CER_TIMEOUT_S,
        in_flight_max: int = IN_FLIGHT_MAX,
        peers_max: int = PEERS_MAX,
        immediate: ImmediateHandler | None = None,
    ) -> None:
        self.config = config
        self._handler = handler
        self._immediate = immediate
        self._advertise_local_address = advertise_local_address
        self._watchdog_interval_s = watchdog_interval_s
        self._cer_timeout_s = cer_timeout_s
        self._in_flight_max = in_flight_max
        self._registry: PeerRegistry[PeerLink] = PeerRegistry(peers_max)
        self._links: set[PeerLink] = set()
        self._server: asyncio.Server | None = None
        # Called with each peer once its capabilities exchange is done (the CER's PeerInfo).
        self.peer_opened: list[Callable[[PeerInfo], None]] = []

    async def start(self, host: str | None, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_link, host, port)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def connected_peers(self) -> list[PeerInfo]:
        return [link.peer for link in self._registry.links() if link.peer is not None]

    async def send_request(
        self, origin_host: str, request: Message, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> Message:
        """Send a server-initiated request (RAR, ASR) to a connected peer; await its answer.

        Raises PeerNotConnectedError, LinkClosedError or TimeoutError.
        """
        link = self._registry.get(origin_host)
        if link is None or link.connection is None or link.connection.state is not PeerState.OPEN:
            raise PeerNotConnectedError(origin_host)
        return await link.request(request, timeout_s)

    async def close(self, cause: int = DisconnectCause.REBOOTING, grace_s: float = 1.0) -> None:
        """Stop listening, send DPR to every open peer, close all connections."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            connection = link.connection
            if connection is not None and connection.state is PeerState.OPEN:
                link.write(connection.disconnect(cause))
        waits = [link.closed for link in self._links]
        if waits:
            await asyncio.wait(waits, timeout=grace_s)
        for link in list(self._links):
            link.abort("server shutting down")
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> DiameterServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------------

    def _new_link(self) -> PeerLink:
        link = PeerLink(
            self._make_connection,
            self._handler,
            watchdog_interval_s=self._watchdog_interval_s,
            open_timeout_s=self._cer_timeout_s,
            in_flight_max=self._in_flight_max,
            on_open=self._on_open,
            on_closed=self._on_closed,
            immediate=self._immediate,
        )
        self._links.add(link)
        return link

    def _make_connection(self, local: IPAddress | None, remote: IPAddress | None) -> PeerConnection:
        config = self.config
        if self._advertise_local_address and local is not None and not local.is_unspecified:
            config = dataclasses.replace(config, host_ip_addresses=(local,))
        return PeerConnection(config, Role.SERVER, remote_address=remote)

    def _on_open(self, link: PeerLink) -> None:
        assert link.peer is not None
        try:
            replaced = self._registry.claim(link.peer.origin_host, link)
        except OverflowError as exc:
            link.abort(str(exc))
            return
        if replaced is not None:
            # RFC 6733 5.6.4: one connection per peer. The new one wins: the old is most
            # likely half-open after a peer restart we have not noticed yet.
            replaced.abort("duplicate connection replaced by a newer one")
        log.info("Diameter peer %s connected", link.peer.origin_host)
        for observe in self.peer_opened:
            try:
                observe(link.peer)
            except Exception:  # an observer's fault must not cost the connection
                log.exception("peer_opened observer failed for %s", link.peer.origin_host)

    def _on_closed(self, link: PeerLink) -> None:
        self._links.discard(link)
        if link.peer is not None:
            self._registry.release(link.peer.origin_host, link)


async def serve_diameter(
    handler: RequestHandler,
    host: str | None = "0.0.0.0",
    port: int = DEFAULT_PORT,
    identity: str = DEFAULT_IDENTITY,
    realm: str = DEFAULT_REALM,
    allowed_peers: Iterable[AllowedPeer] = (),
    *,
    accept_any_loopback: bool = False,
    watchdog_interval_s: float = WATCHDOG_INTERVAL_S,
    cer_timeout_s: float = CER_TIMEOUT_S,
    in_flight_max: int = IN_FLIGHT_MAX,
    config: PeerConfig | None = None,
    immediate: ImmediateHandler | None = None,
    peer_opened: Iterable[Callable[[PeerInfo], None]] = (),
) -> DiameterServer:
    """Start a Diameter server. `accept_any_loopback` is the dev mode of `quotaflow serve`:
    any Origin-Host connecting from loopback is accepted. `immediate` is asked first for each
    application request (see _link.ImmediateHandler); `handler` gets those it declines.
    `peer_opened`: observers of DiameterServer.peer_opened, in place before it listens."""
    if config is None:
        config = PeerConfig(
            origin_host=identity,
            origin_realm=realm,
            allowed_peers=tuple(allowed_peers),
            accept_any_loopback=accept_any_loopback,
        )
    server = DiameterServer(
        handler,
        config,
        watchdog_interval_s=watchdog_interval_s,
        cer_timeout_s=cer_timeout_s,
        in_flight_max=in_flight_max,
        immediate=immediate,
    )
    server.peer_opened.extend(peer_opened)
    await server.start(host, port)
    return server


__all__ = [
    "DiameterServer",
    "LinkClosedError",
    "PeerNotConnectedError",
    "serve_diameter",
]
