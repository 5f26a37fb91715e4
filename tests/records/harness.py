"""Shared by the records and notify suites: a real store and engine, and apps served over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from quotaflow.engine import Engine
from quotaflow.ledger import Unit
from quotaflow.store import EmbeddedStore
from tests.conftest import free_port

MB = 1_000_000


@contextlib.asynccontextmanager
async def running_engine(data_dir: Path) -> AsyncIterator[Engine]:
    """EmbeddedStore + Engine on `data_dir`; reopening the same folder is a restart."""
    store = EmbeddedStore(data_dir, sweep_interval_s=0.2, tune_gc=False)
    await store.open()
    try:
        yield Engine(store)
    finally:
        await store.close()


async def provision(engine: Engine, sid: str, octets: int = 100 * MB, money: int = 0) -> None:
    await engine.admin(
        "create_subscriber", f"c-{sid}", {"id": sid, "msisdn": f"4670{sid}", "imsi": f"00101{sid}"}
    )
    if octets:
        await engine.admin(
            "topup", f"t-{sid}", {"subscriber_id": sid, "unit": "octets", "amount": octets}
        )
    if money:
        await engine.admin(
            "topup", f"m-{sid}", {"subscriber_id": sid, "unit": "money", "amount": money}
        )


def stored(engine: Engine) -> list[dict[str, Any]]:
    """Every charging record the store holds, oldest first."""
    store = engine.store
    assert isinstance(store, EmbeddedStore)
    return store.read_records(0, 100_000)


async def debits(engine: Engine, sid: str, count: int, tag: str, octets: int = 1000) -> None:
    """`count` one-shot debits: one charging record each."""
    for i in range(count):
        await engine.direct_debit(f"{tag}-{i}", sid, Unit.OCTETS, octets, None)


@contextlib.asynccontextmanager
async def serve_routes(routes: Sequence[BaseRoute]) -> AsyncIterator[str]:
    """A Starlette app with these routes under hypercorn on a free port; yields the base URL."""
    async with serve_asgi(Starlette(routes=list(routes))) as url:
        yield url


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, port: int | None = None) -> AsyncIterator[str]:
    port = port or free_port()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("tests.hypercorn")
    config.graceful_timeout = 1.0
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            writer.close()
            break
        else:
            raise RuntimeError("test server did not come up")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def stops_when_woken(wake: Callable[[], None], stop: Callable[[], Awaitable[None]]) -> None:
    """Wake a background loop and stop it in the same tick (nothing runs in between); fail if the
    stop hangs. Python 3.11's wait_for returned the wake-up and dropped the cancel, so the loop
    ran on and its stop never returned."""
    async with asyncio.timeout(5) as guard:
        wake()
        await stop()
    assert not guard.expired(), "stop hung: the wake-up swallowed its cancel"


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 5.0, what: str = ""
) -> None:
    """Poll `check` until it holds; fail the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}")
        await asyncio.sleep(0.02)
