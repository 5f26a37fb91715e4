"""`quotaflow serve`'s HTTP listener on each HTTP server: Nchf over h2c, /v1 over HTTP/1.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson
import pytest

from quotaflow.config import ConfigError, load
from quotaflow.http_server import HTTP_SERVERS, HttpServerKind
from quotaflow.ledger import Unit
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


async def test_nchf_settings_from_the_config_file_reach_the_listener(tmp_path: Path) -> None:
    path = tmp_path / "q.toml"
    path.write_text(
        "[nchf]\nquota_holding_time_s = 42\nonline_threshold_percent = 10\n"
        'offline_rating_groups = [7]\nref_key = "a-deployment-secret-key"\n'
        '[nchf.rating_group_units]\n9 = "seconds"\n'
    )
    cfg = load(path)
    assert cfg.nchf.ref_key == b"a-deployment-secret-key"
    assert cfg.nchf.unit_of(9) is Unit.SECONDS and cfg.nchf.offline_rating_groups == {7}
    test_cfg = server_config(tmp_path / "data")
    test_cfg.nchf = cfg.nchf
    server = Server(test_cfg)
    await server.start()
    origin = f"http://{test_cfg.http_host}:{test_cfg.http_port}"
    try:
        await subscriber(server.engine, 61, 100 * 1_000_000)
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as h2:
            created = await h2.post(
                f"{origin}{BASE_PATH}/chargingdata",
                content=orjson.dumps(charging_request(0, imsi(61), [usage(1)])),
                headers={"content-type": "application/json"},
            )
        assert created.status_code == 201, created.text
        (info,) = created.json()["multipleUnitInformation"]
        assert info["quotaHoldingTime"] == 42
        assert info["volumeQuotaThreshold"] == info["grantedUnit"]["totalVolume"] // 10
    finally:
        await asyncio.wait_for(server.stop(), 30)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[nchf]\nref_key = "short"\n', "ref_key"),
        ("[nchf]\nonline_threshold_percent = 100\n", "online_threshold_percent"),
        ('[nchf]\nfinal_unit_action = "REDIRECT"\n', "final_unit_action"),
        ('[nchf.rating_group_units]\n9 = "litres"\n', "nchf"),
        ("[nchf]\nquota_holding_time = 5\n", "unknown key"),
        ("[nchf]\nnotify_timeout_s = 0\n", "notify_timeout_s"),
    ],
)
def test_bad_nchf_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)
