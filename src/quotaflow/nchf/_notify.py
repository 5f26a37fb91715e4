"""ChargingNotify: re-authorise after credit was added; abort charging when the user is barred
or the engine is asked to end a session.

The engine calls `on_event` synchronously inside a ledger answer, so nothing here may block:
each notification is a task, their number in flight is bounded, and a failure is only logged
(validity times bring the consumer back anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import httpx
import orjson

from quotaflow.engine import EngineEvent
from quotaflow.nchf._config import NchfConfig

log = logging.getLogger("quotaflow.nchf")

INTERFACE = "nchf"


class Notifier:
    def __init__(self, config: NchfConfig) -> None:
        self._config = config
        self._client: httpx.AsyncClient | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        # session id -> online rating groups refused or given their final units. A session not
        # here (forgotten, or the process restarted) is re-authorised as a whole.
        # Least recently answered first; an OrderedDict, because dropping the front of a plain
        # dict rescans every slot deleted since its last resize.
        self._starved: OrderedDict[str, frozenset[int]] = OrderedDict()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    # ------------------------------------------------------------------ session state

    def track(self, session_id: str, answered: set[int], starved: set[int]) -> None:
        """Record a request's answer: `answered` online groups, of which `starved` got none
        or their final units. Groups the request did not mention keep their state."""
        table = self._starved
        before = table.get(session_id, frozenset())
        table[session_id] = frozenset((before - answered) | starved)
        table.move_to_end(session_id)
        if len(table) > self._config.tracked_sessions_max:
            table.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._starved.pop(session_id, None)

    # ------------------------------------------------------------------ events

    def on_event(self, event: EngineEvent) -> None:
        for session_id, record in event.sessions.items():
            meta: dict[str, Any] = record.get("meta") or {}
            uri = meta.get("notify_uri")
            if meta.get("interface") != INTERFACE or not isinstance(uri, str):
                continue
            body = self._body(event.kind, session_id)
            if body is not None:
                self._schedule(uri, body)

    def _body(self, kind: str, session_id: str) -> dict[str, Any] | None:
        if kind in ("barred", "abort"):  # abort: the engine was asked to end these sessions
            return {"notificationType": "ABORT_CHARGING"}
        if kind == "reauthorize":  # a shared pool wants this session's unused quota back now
            return {"notificationType": "REAUTHORIZATION"}
        if kind != "credit_added":
            return None
        starved = self._starved.get(session_id)
        if starved is None:
            return {"notificationType": "REAUTHORIZATION"}
        if not starved:
            return None  # every online group still has quota: nothing to re-authorise
        # free5GC re-requests quota only for the rating groups listed here.
        details = [
            {"ratingGroup": rg, "quotaManagementIndicator": "ONLINE_CHARGING"}
            for rg in sorted(starved)
        ]
        return {"notificationType": "REAUTHORIZATION", "reauthorizationDetails": details}

    def _schedule(self, uri: str, body: dict[str, Any]) -> None:
        if len(self._in_flight) >= self._config.notify_in_flight_max:
            self.dropped += 1
            log.warning("notification dropped: too many in flight", extra={"uri": uri})
            return
        task = asyncio.get_running_loop().create_task(self._post(uri, body))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _post(self, uri: str, body: dict[str, Any]) -> None:
        if self._client is None:
            http2 = self._config.notify_http2
            # http1=False on a cleartext URI means HTTP/2 with prior knowledge, as on the SBI.
            self._client = httpx.AsyncClient(
                http2=http2, http1=not http2, timeout=self._config.notify_timeout_s
            )
        try:
            response = await self._client.post(
                uri, content=orjson.dumps(body), headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("notification failed", extra={"uri": uri, "error": repr(exc)})
            return
        if response.status_code in (200, 204):
            self.sent += 1
        else:
            self.failed += 1
            log.warning("notification refused", extra={"uri": uri, "status": response.status_code})

    async def drain(self) -> None:
        """Wait for the notifications in flight (tests, orderly shutdown)."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
