"""Helpers for the Gy tests (no tests here): a real quotaflow Server with Diameter on free
ports, provisioning through /v1, and CCR builders for the project's own client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quotaflow.diameter import (
    DiameterClient,
    Message,
    PeerInfo,
    make_answer,
)
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.ledger import Unit
from quotaflow.server import Server
from tests.conftest import server_config

MB = 1_000_000
CLIENT_HOST = "pgw.gy.test"
CLIENT_REALM = "gy.test"
MSISDN = "46700000001"
IMSI = "001010000000001"


@dataclass
class GyEnv:
    server: Server
    api: httpx.AsyncClient
    client: DiameterClient
    # Server-initiated requests (RAR, ASR) the client received, answered with `peer_answer`.
    received: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    peer_answer: dict[str, int] = field(default_factory=lambda: {"Result-Code": 2001})

    @property
    def port(self) -> int:
        return self.server.cfg.diameter_port

    async def subscriber(
        self,
        sid: str = "alice",
        *,
        msisdn: str | None = MSISDN,
        imsi: str | None = IMSI,
        octets: int = 0,
        **more: Any,
    ) -> str:
        body: dict[str, Any] = {"id": sid, **more}
        if msisdn:
            body["msisdn"] = msisdn
        if imsi:
            body["imsi"] = imsi
        response = await self.api.post("/v1/subscribers", json=body)
        assert response.status_code == 201, response.text
        if octets:
            await self.topup(sid, Unit.OCTETS, octets)
        return sid

    async def topup(self, sid: str, unit: Unit, amount: int) -> None:
        response = await self.api.post(
            f"/v1/subscribers/{sid}/topups", json={"unit": unit.value, "amount": amount}
        )
        assert response.status_code == 201, response.text

    def amount(self, sid: str, unit: Unit = Unit.OCTETS) -> int:
        """What the subscriber's buckets of `unit` hold (reserved units included)."""
        sub = self.server.store.ledger.subscribers[sid]
        return sum(b.amount for b in sub.buckets.values() if b.unit is unit)

    def reserved(self, sid: str) -> int:
        sub = self.server.store.ledger.subscribers[sid]
        return sum(b.reserved for b in sub.buckets.values())


@contextlib.asynccontextmanager
async def gy_server(
    tmp_path: Path, gy: GyConfig | None = None
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """A real Server (durable store, HTTP API, Diameter on free ports) and an API client."""
    cfg = server_config(tmp_path / "data", diameter=True)
    if gy is not None:
        cfg.diameter_gy = gy
    server = Server(cfg)
    await server.start()
    try:
        base = f"http://{server.cfg.http_host}:{server.cfg.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
            yield server, api
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def gy_client_env(
    server: Server, api: httpx.AsyncClient, port: int, origin_host: str = CLIENT_HOST
) -> AsyncIterator[GyEnv]:
    """A Gy client connected to `port` (the server's, or a relay's) that queues and answers
    the requests it receives."""
    holder: list[GyEnv] = []

    async def on_request(peer: PeerInfo, request: Message) -> Message:
        env = holder[0]
        env.received.put_nowait(request)
        return make_answer(request, env.peer_answer["Result-Code"], origin_host, CLIENT_REALM)

    client = await connect(port, origin_host=origin_host, request_handler=on_request)
    holder.append(GyEnv(server, api, client))
    try:
        yield holder[0]
    finally:
        await client.close(timeout_s=0.5)


@contextlib.asynccontextmanager
async def gy_env(tmp_path: Path, gy: GyConfig | None = None) -> AsyncIterator[GyEnv]:
    """A real Server and one Gy client connected straight to it."""
    async with (
        gy_server(tmp_path, gy) as (server, api),
        gy_client_env(server, api, server.cfg.diameter_port) as env,
    ):
        yield env


async def connect(port: int, origin_host: str = CLIENT_HOST, **kwargs: Any) -> DiameterClient:
    return await DiameterClient.connect(
        "127.0.0.1", port, origin_host=origin_host, origin_realm=CLIENT_REALM, **kwargs
    )


def e164(msisdn: str = MSISDN) -> tuple[str, dict[str, str]]:
    return (
        "Subscription-Id",
        {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": msisdn},
    )


def mscc(
    rating_group: int | None = 10,
    *,
    requested: dict[str, Any] | None = None,
    used: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """An MSCC; `requested` None leaves out the Requested-Service-Unit, {} sends it empty."""
    value: dict[str, Any] = {}
    if requested is not None:
        value["Requested-Service-Unit"] = requested
    if used is not None:
        value["Used-Service-Unit"] = used
    if rating_group is not None:
        value["Rating-Group"] = rating_group
    return ("Multiple-Services-Credit-Control", value)


def ccr(
    client: DiameterClient,
    session_id: str,
    request_type: int,
    number: int,
    *avps: tuple[str, Any],
    subscription: Sequence[tuple[str, Any]] | None = None,
) -> Message:
    """A CCR for the server's realm with the default subscriber's E.164 number, then `avps`."""
    extra = [e164()] if subscription is None else list(subscription)
    return client.ccr(
        session_id,
        request_type,
        number,
        destination_realm="quotaflow.local",
        extra=[*extra, *avps],
    )


def msccs(answer: Message) -> list[dict[str, Any]]:
    """Each MSCC of an answer as a flat dict: "Granted-Service-Unit/CC-Total-Octets" etc."""
    flat: list[dict[str, Any]] = []
    for group in answer.find_all("Multiple-Services-Credit-Control"):
        entry: dict[str, Any] = {}
        _flatten(group.children, "", entry)
        flat.append(entry)
    return flat


def _flatten(avps: list[Any], prefix: str, into: dict[str, Any]) -> None:
    for avp in avps:
        name = prefix + avp.name
        if isinstance(avp.value, list):
            into[name] = True
            _flatten(avp.value, name + "/", into)
        else:
            into[name] = avp.value
