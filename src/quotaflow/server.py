"""The server process: one store, one engine, every network interface on one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from quotaflow import NATIVE_MODE, notify, records
from quotaflow.api import ManagementApi
from quotaflow.config import Config
from quotaflow.diameter.gy import start_gy
from quotaflow.engine import Engine
from quotaflow.groups import CounterWatch, GroupApi
from quotaflow.http_server import serve_http
from quotaflow.interop import InteropApi, InteropService
from quotaflow.metrics import watch_records, watch_store
from quotaflow.nchf import (
    BASE_PATH,
    NchfApp,
    NchfConfig,
    create_app,
    problem_exception_handlers,
)
from quotaflow.rating import Rater
from quotaflow.rating.api import TariffApi, persisted_tariffs
from quotaflow.store import EmbeddedStore
from quotaflow.transfers import TransferApi

log = logging.getLogger("quotaflow.server")


def build_app(engine: Engine, cfg: Config, nchf: NchfApp | None) -> Starlette:
    """The HTTP listener: /v1, /metrics and, unless it has its own listener, Nchf."""
    routes: list[BaseRoute] = list(ManagementApi(engine).routes())
    routes += TariffApi(engine, cfg.data_dir, cfg.tariff_file).routes()
    routes += GroupApi(engine).routes()
    routes += TransferApi(engine).routes()
    if nchf is not None:
        routes.append(Mount(BASE_PATH, app=nchf))
    # Problem details for what no route matches, as the SBI requires (plain text otherwise).
    return Starlette(routes=routes, exception_handlers=problem_exception_handlers())


class Server:
    """Start and stop everything; used by `quotaflow serve` and by the tests."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store = EmbeddedStore(
            cfg.data_dir, limits=cfg.limits, snapshot_every_ops=cfg.snapshot_every_ops
        )
        tariffs = cfg.tariffs
        if tariffs is None and cfg.tariff_file is None:
            tariffs = persisted_tariffs(cfg.data_dir)
        self.engine = Engine(self.store, cfg.grants, Rater(tariffs))
        self._stop_http = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stoppers: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        cfg = self.cfg
        await self.store.open()
        # commit_seconds: a store that times its group commits (the embedded one)
        watch_store(self.store.stats, getattr(self.store, "commit_seconds", None))
        self._records = await records.start(self.engine, self.store, cfg.data_dir, cfg.records)
        watch_records(self._records.status)
        self._notify = await notify.start(self.engine, self.store, cfg.data_dir)
        self._counters = CounterWatch(self.engine, self._notify).start()
        self._interop = InteropService(self.engine, cfg.operators).start()
        self._stoppers += [self._records, self._notify, self._counters, self._interop]
        separate_sbi = cfg.sbi_port is not None
        nchf = create_app(self.engine, config=cfg.nchf) if cfg.nchf_enabled else None
        if nchf is not None:
            self._stoppers.append(nchf.state.nchf_close)
            if cfg.nchf.ref_key == NchfConfig().ref_key:
                log.warning("[nchf] ref_key is the public default: ChargingDataRefs are guessable")
        app = build_app(self.engine, cfg, None if separate_sbi else nchf)
        app.router.routes.extend([*records.routes(self._records), *notify.routes(self._notify)])
        app.router.routes.extend(InteropApi(self.engine, self._interop).routes())
        # Nchf requests go straight to the Nchf app; the Starlette app (and its Mount of the
        # same Nchf app) sees only the rest, which keeps its routing off the hot path.
        front = app if nchf is None or separate_sbi else nchf.in_front_of(app)
        self._tasks.append(asyncio.create_task(self._serve(front, cfg.http_host, cfg.http_port)))
        if separate_sbi and nchf is not None:
            sbi = Starlette(
                routes=[Mount(BASE_PATH, app=nchf)], exception_handlers=problem_exception_handlers()
            )
            sbi_host = cfg.sbi_host or cfg.http_host
            self._tasks.append(
                asyncio.create_task(self._serve(nchf.in_front_of(sbi), sbi_host, cfg.sbi_port or 0))
            )
        if cfg.diameter_enabled:
            self._stoppers.append(await start_gy(self.engine, cfg, cfg.diameter_gy))
        await self._wait_listening(cfg.http_host, cfg.http_port)
        log.info(
            "quotaflow serving",
            extra={
                "http": f"{cfg.http_host}:{cfg.http_port}",
                "data_dir": str(cfg.data_dir),
                "diameter": f"{cfg.diameter_host}:{cfg.diameter_port}"
                if cfg.diameter_enabled
                else "off",
                "native": NATIVE_MODE,  # "compiled", or why the hot path runs interpreted
            },
        )

    async def _serve(self, app: Any, host: str, port: int) -> None:
        await serve_http(app, host, port, self._stop_http, self.cfg.http_server)

    async def _wait_listening(self, host: str, port: int) -> None:
        for _ in range(200):
            for task in self._tasks:
                if task.done():
                    task.result()  # a bind failure surfaces here
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise RuntimeError(f"HTTP listener {host}:{port} did not come up")

    async def stop(self) -> None:
        for stop in reversed(self._stoppers):
            await stop()
        self._stop_http.set()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await task
        await self.store.close()


async def run(cfg: Config) -> None:
    server = Server(cfg)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(server.start())

    def stop_requested() -> None:
        done.set()
        starting.cancel()  # a start still under way (a long replay) stops at its next await

    # Before the start: the HTTP listener answers while start() still waits for it, so a
    # SIGTERM sent once /v1/health answered would otherwise kill the process uncleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_requested)
    try:
        await starting
    except asyncio.CancelledError:
        if not done.is_set():
            raise
        log.info("stopping during start")
    await done.wait()
    log.info("stopping")
    await server.stop()
