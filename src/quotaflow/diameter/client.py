"""An asyncio Diameter client on the same sans-I/O core: for tests, tools and the benchmark.

client = await DiameterClient.connect("127.0.0.1", 3868, origin_host="pgw.test")
cca = await client.request(client.ccr(session_id, CcRequestType.INITIAL, 0, extra=...))
await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Mapping, Sequence

from quotaflow.diameter._link import PeerLink, RequestHandler
from quotaflow.diameter.constants import APPLICATION_CREDIT_CONTROL, DEFAULT_REALM, ResultCode
from quotaflow.diameter.events import PeerInfo
from quotaflow.diameter.message import BuildValue, IPAddress, Message
from quotaflow.diameter.messages import build_ccr, make_answer, new_session_id
from quotaflow.diameter.peer import PeerConfig, PeerConnection, PeerState, Role

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 10.0
# The Origin-State-Id of this process's connections (RFC 6733 8.16): one value while it runs,
# so a reconnection is not taken for a restart that lost the sessions (diameter/gy_restart.py).
PROCESS_STATE_ID = int(time.time()) & 0xFFFFFFFF or 1


class DiameterClient:
    """One client connection, opened with CER/CEA; requests may be pipelined."""

    def __init__(self, link: PeerLink, config: PeerConfig) -> None:
        self._link = link
        self.config = config

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        origin_host: str = "client.quotaflow.local",
        origin_realm: str = DEFAULT_REALM,
        application_ids: frozenset[int] = frozenset({APPLICATION_CREDIT_CONTROL}),
        request_handler: RequestHandler | None = None,
        watchdog_interval_s: float = 30.0,
        timeout_s: float = CONNECT_TIMEOUT_S,
        origin_state_id: int = PROCESS_STATE_ID,
    ) -> DiameterClient:
        """Connect and exchange capabilities; LinkClosedError if the server refuses us.

        `request_handler` answers server-initiated requests (RAR, ASR); by default 2001.
        `origin_state_id` goes in the CER (a new value tells the server this client restarted).
        """
        config = PeerConfig(
            origin_host=origin_host,
            origin_realm=origin_realm,
            auth_application_ids=application_ids,
            origin_state_id=origin_state_id,
        )

        def make_connection(local: IPAddress | None, remote: IPAddress | None) -> PeerConnection:
            addresses = (local,) if local is not None else (ipaddress.IPv4Address("127.0.0.1"),)
            own = PeerConfig(
                origin_host=origin_host,
                origin_realm=origin_realm,
                host_ip_addresses=addresses,
                auth_application_ids=application_ids,
                origin_state_id=origin_state_id,
            )
            return PeerConnection(own, Role.CLIENT, remote_address=remote)

        loop = asyncio.get_running_loop()
        handler = request_handler or _default_handler(origin_host, origin_realm)
        async with asyncio.timeout(timeout_s):
            _, link = await loop.create_connection(
                lambda: PeerLink(
                    make_connection,
                    handler,
                    watchdog_interval_s=watchdog_interval_s,
                    open_timeout_s=timeout_s,
                ),
                host,
                port,
            )
        assert link.connection is not None
        link.write(link.connection.initiate())
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(link.opened)
        return cls(link, config)

    @property
    def server(self) -> PeerInfo:
        """What the server announced in its CEA."""
        peer = self._link.peer
        assert peer is not None
        return peer

    @property
    def is_open(self) -> bool:
        connection = self._link.connection
        return connection is not None and connection.state is PeerState.OPEN

    def send(self, request: Message) -> asyncio.Future[Message]:
        """Send without waiting: the future resolves to the answer (pipelining)."""
        return self._link.send_request(request)

    async def request(self, request: Message, timeout_s: float = REQUEST_TIMEOUT_S) -> Message:
        return await self._link.request(request, timeout_s)

    def new_session_id(self) -> str:
        return new_session_id(self.config.origin_host)

    def ccr(
        self,
        session_id: str,
        request_type: int,
        request_number: int,
        *,
        destination_realm: str | None = None,
        extra: Mapping[str, BuildValue] | Sequence[tuple[str, BuildValue]] = (),
    ) -> Message:
        """A CCR from this client (Destination-Realm defaults to the server's realm)."""
        return build_ccr(
            session_id=session_id,
            origin_host=self.config.origin_host,
            origin_realm=self.config.origin_realm,
            destination_realm=destination_realm or self.server.origin_realm,
            request_type=request_type,
            request_number=request_number,
            extra=extra,
        )

    async def close(self, timeout_s: float = 2.0) -> None:
        """DPR, wait for the DPA (or the timeout), close."""
        connection = self._link.connection
        if connection is not None and connection.state is PeerState.OPEN:
            self._link.write(connection.disconnect())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._link.closed)
        self._link.abort("client closed")

    async def __aenter__(self) -> DiameterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _default_handler(origin_host: str, origin_realm: str) -> RequestHandler:
    async def answer_success(peer: PeerInfo, request: Message) -> Message:
        return make_answer(request, ResultCode.SUCCESS, origin_host, origin_realm)

    return answer_success
