"""Server-initiated Gy requests: RAR after credit was added or a group's allocation changed,
ASR when a subscriber is barred or the engine asks for its sessions to end.

The engine calls `on_event` synchronously, inside the answer to whatever changed the balance,
so nothing here may block: each request is a task, the number in flight is bounded, and a
failure is only logged and counted (Validity-Time brings the client back anyway; Open5GS, for
one, answers a RAR with 2001 and sends no CCR-U).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from quotaflow.diameter.constants import ResultCode
from quotaflow.diameter.errors import LinkClosedError
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.message import Message
from quotaflow.diameter.messages import build_asr, build_rar
from quotaflow.diameter.transport import DiameterServer, PeerNotConnectedError
from quotaflow.engine import Engine, EngineEvent
from quotaflow.ledger import ChargingError

log = logging.getLogger("quotaflow.diameter.gy")

INTERFACE = "gy"
AUTHORIZE_ONLY = 0  # Re-Auth-Request-Type


def session_meta(origin_host: str, origin_realm: str, peer: str) -> dict[str, str]:
    """What a Gy session records at its start so a RAR/ASR can find its way back: the client
    (Destination-Host/Realm of the request) and the peer connection it came through (the
    client itself, or a relay such as freeDiameter)."""
    return {
        "interface": INTERFACE,
        "origin_host": origin_host,
        "origin_realm": origin_realm,
        "peer": peer,
    }


class GyNotifier:
    def __init__(self, engine: Engine, config: GyConfig, identity: str, realm: str) -> None:
        self._engine = engine
        self._config = config
        self._identity = identity
        self._realm = realm
        self._server: DiameterServer | None = None
        self._closed = False
        self._in_flight: set[asyncio.Task[None]] = set()
        # session id -> starved, least recently answered first; an OrderedDict, because
        # dropping the front of a plain dict rescans every slot deleted since its last resize.
        self._starved: OrderedDict[str, bool] = OrderedDict()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def attach(self, server: DiameterServer) -> None:
        self._server = server

    # ------------------------------------------------------------------ session state

    def track(self, session_id: str, starved: bool) -> None:
        """Record whether a session's last answer left a service without quota."""
        table = self._starved
        table[session_id] = starved
        table.move_to_end(session_id)
        if len(table) > self._config.tracked_sessions_max:
            table.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._starved.pop(session_id, None)

    # ------------------------------------------------------------------ events

    def on_event(self, event: EngineEvent) -> None:
        if self._closed or self._server is None:
            return
        for session_id, record in event.sessions.items():
            meta: dict[str, Any] = record.get("meta") or {}
            if meta.get("interface") != INTERFACE:
                continue
            if event.kind == "credit_added":
                # A session known to hold quota in every service needs no re-authorisation;
                # an unknown one (forgotten, or the process restarted) gets one.
                if self._starved.get(session_id) is not False:
                    self._schedule(self._reauthorize(session_id, meta))
            elif event.kind == "reauthorize":
                # Group caps or allocation changed: quota held may have to move, so every
                # session named reports now.
                self._schedule(self._reauthorize(session_id, meta))
            elif event.kind in ("barred", "abort"):
                self._schedule(self._abort(session_id, meta))

    def _schedule(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._in_flight) >= self._config.notify_in_flight_max:
            work.close()
            self.dropped += 1
            log.warning("Gy notification dropped: too many in flight")
            return
        task = asyncio.get_running_loop().create_task(work)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _reauthorize(self, session_id: str, meta: dict[str, Any]) -> None:
        rar = build_rar(
            session_id=session_id,
            origin_host=self._identity,
            origin_realm=self._realm,
            destination_host=str(meta.get("origin_host", "")),
            destination_realm=str(meta.get("origin_realm", "")),
            re_auth_request_type=AUTHORIZE_ONLY,
        )
        await self._exchange(session_id, meta, rar)

    async def _abort(self, session_id: str, meta: dict[str, Any]) -> None:
        asr = build_asr(
            session_id=session_id,
            origin_host=self._identity,
            origin_realm=self._realm,
            destination_host=str(meta.get("origin_host", "")),
            destination_realm=str(meta.get("origin_realm", "")),
        )
        await self._exchange(session_id, meta, asr)

    async def _exchange(self, session_id: str, meta: dict[str, Any], request: Message) -> None:
        answer = await self._send(meta, request)
        if answer is None:
            self.failed += 1
            return
        code = answer.get("Result-Code")
        if code == ResultCode.SUCCESS:
            self.sent += 1
            return
        self.failed += 1
        log.info(
            "Gy %s refused",
            request.name,
            extra={"session_id": session_id, "result_code": code},
        )
        if code == ResultCode.UNKNOWN_SESSION_ID:
            # The client has no such session (RFC 4006 5.5): release what it still holds.
            await self._release(session_id)

    async def _send(self, meta: dict[str, Any], request: Message) -> Message | None:
        assert self._server is not None
        hosts = [str(meta.get("peer", "")), str(meta.get("origin_host", ""))]
        for host in dict.fromkeys(h for h in hosts if h):
            try:
                return await self._server.send_request(host, request, self._config.notify_timeout_s)
            except PeerNotConnectedError:
                continue
            except (LinkClosedError, TimeoutError) as exc:
                log.warning("Gy %s to %s failed: %r", request.name, host, exc)
                return None
        log.info("Gy %s not sent: no connection to %s", request.name, hosts)
        return None

    async def _release(self, session_id: str) -> None:
        try:
            await self._engine.session_terminate(session_id, 0, [])
        except ChargingError as exc:
            log.info("releasing Gy session %s: %s", session_id, exc.message)
        self.forget(session_id)

    async def drain(self) -> None:
        """Wait for the requests in flight (tests, orderly shutdown)."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*list(self._in_flight), return_exceptions=True)
