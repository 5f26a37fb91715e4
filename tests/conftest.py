"""Fixtures shared by every suite: free ports and a real quotaflow server in this process."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from quotaflow.config import Config
from quotaflow.server import Server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def server_config(data_dir: Path, *, diameter: bool = False) -> Config:
    cfg = Config()
    cfg.data_dir = data_dir
    cfg.http_port = free_port()
    cfg.diameter_enabled = diameter
    cfg.diameter_port = free_port()
    return cfg


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(server_config(tmp_path / "data"))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    base = f"http://{server.cfg.http_host}:{server.cfg.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client
