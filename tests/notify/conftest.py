"""A live notify service: real store and engine, its routes under hypercorn, a webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow import notify
from quotaflow.engine import Engine, EngineEvent
from quotaflow.notify import DeliveryOptions, NotifyOptions, NotifyService
from tests.records.harness import eventually, running_engine, serve_asgi, serve_routes

SECRET = "s3cret-for-tests-0123456789"


@dataclass
class Receiver:
    """A webhook endpoint: checks each signature, records each delivery, answers `status`."""

    secret: str = SECRET
    status: Callable[[dict[str, Any], int], int] = lambda event, attempt: 200
    delay_s: Callable[[dict[str, Any]], float] = lambda event: 0.0
    attempts: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    delivered: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    url: str = ""

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        if not notify.verify_signature(
            self.secret, request.headers.get(notify.SIGNATURE_HEADER, ""), body
        ):
            self.bad_signatures += 1
            return Response(status_code=401)
        event = orjson.loads(body)
        attempt = int(request.headers[notify.ATTEMPT_HEADER])
        assert request.headers[notify.EVENT_ID_HEADER] == event["id"]
        self.attempts.append((event, attempt))
        await asyncio.sleep(self.delay_s(event))
        status = self.status(event, attempt)
        if status < 300:
            self.delivered.append(event)
        return Response(status_code=status)

    def types(self, subscriber_id: str | None = None) -> list[str]:
        return [
            e["type"]
            for e in self.delivered
            if subscriber_id is None or e["subscriber_id"] == subscriber_id
        ]


@dataclass
class Live:
    engine: Engine
    service: NotifyService
    api: httpx.AsyncClient
    receiver: Receiver
    engine_events: list[EngineEvent]
    data_dir: Path

    async def subscribe(self, **body: Any) -> dict[str, Any]:
        r = await self.api.post(
            "/v1/subscriptions", json={"url": self.receiver.url, "secret": SECRET, **body}
        )
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def threshold(self, **body: Any) -> dict[str, Any]:
        r = await self.api.post("/v1/thresholds", json=body)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def settled(self) -> None:
        """Every engine event processed and every queued notification delivered or dead."""
        await asyncio.wait_for(self.service.drained(), 5)
        await eventually(lambda: self.service.dispatcher.queued == 0, 10, "deliveries")


def fast_options(**delivery: Any) -> NotifyOptions:
    opts = {"attempts_max": 3, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0}
    return NotifyOptions(delivery=DeliveryOptions(**{**opts, **delivery}), refused_requests_max=3)


@pytest.fixture
def options() -> NotifyOptions:
    return fast_options()


@pytest.fixture
async def live(tmp_path: Path, options: NotifyOptions) -> AsyncIterator[Live]:
    data = tmp_path / "data"
    receiver = Receiver()
    hook = Starlette(routes=[Route("/hook", receiver.handle, methods=["POST"])])
    async with serve_asgi(hook) as hook_url, running_engine(data) as engine:
        receiver.url = f"{hook_url}/hook"
        events: list[EngineEvent] = []
        engine.subscribe(events.append)
        service = await notify.start(engine, engine.store, data, options)
        try:
            async with (
                serve_routes(notify.routes(service)) as url,
                httpx.AsyncClient(base_url=url, timeout=5) as api,
            ):
                yield Live(engine, service, api, receiver, events, data)
        finally:
            await service()
