"""`quotaflow serve`'s HTTP listener on each HTTP server: Nchf over h2c, /v1 over HTTP/1.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from quotaflow.http_server import HTTP_SERVERS, HttpServerKind
from quotaflow.nchf import BASE_PATH
from quotaflow.server import Server
from tests.conftest import server_config
from tests.nchf.conftest import charging_request, imsi, subscriber, usage


@pytest.mark.parametrize("kind", HTTP_SERVERS)
async def test_one_listener_serves_nchf_and_v1(tmp_path: Path, kind: HttpServerKind) -> None:
    cfg = server_config(tmp_path / "data")
    cfg.http_server = kind
    server = Server(cfg)
    await server.start()
    origin = f"http://{cfg.http_host}:{cfg.http_port}"
    h2 = httpx.AsyncClient(http1=False, http2=True, timeout=10)  # prior knowledge, as the SBI
    try:
        await subscriber(server.engine, 60, 100 * 1_000_000)
        created = await h2.post(
            f"{origin}{BASE_PATH}/chargingdata",
            content=orjson.dumps(charging_request(0, imsi(60), [usage(1)])),
            headers={"content-type": "application/json"},
        )
        assert created.http_version == "HTTP/2"
        assert created.status_code == 201, created.text
        assert created.headers["location"].startswith(f"{origin}{BASE_PATH}/chargingdata/")
        missing = await h2.post(f"{origin}{BASE_PATH}/nothing", content=b"{}")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        async with httpx.AsyncClient(timeout=10) as h1:
            metrics = await h1.get(f"{origin}/metrics")
            assert metrics.http_version == "HTTP/1.1" and metrics.status_code == 200
            stray = await h1.get(f"{origin}/v1/no/such/thing")
            assert stray.status_code == 404
    finally:
        # The h2 connection stays open: stopping must not wait for the client to hang up.
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 30)
        assert time.monotonic() - started < 15
        await h2.aclose()
