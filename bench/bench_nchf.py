"""Nchf_ConvergedCharging over HTTP/2 (h2c prior knowledge): update throughput and latency.

A server process runs the real stack (EmbeddedStore + Engine + the Nchf app mounted as the
server mounts it, under hypercorn) with one extra route, a bare endpoint that reads the body and
answers a fixed 200 JSON. In the same run the same client drives both, so the update figure is
printed beside the ceiling of the HTTP stack itself, as a ratio. Every update is a new request
(its own invocationSequenceNumber): it posts usage and reserves the next grant, durably.

    .venv/bin/python bench/bench_nchf.py [--seconds 8] [--connections 4] [--streams 16]

The client is a small asyncio + h2 client in a second process; h2load (nghttp2), when
installed, adds an independent C-client figure for the bare endpoint (it can only repeat one
body, which for an update would be a retransmission, so it is not used on updates).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import orjson

BASE = "/nchf-convergedcharging/v3"
NF_INSTANCE = "6f1c1b4e-2a7d-4f57-9d3c-1b2a3c4d5e6f"


def _use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# ---------------------------------------------------------------------- the server process


def serve(port: int, data_dir: str, subscribers: int, ready: Any, server: str) -> None:
    _use_uvloop()
    asyncio.run(_serve(port, Path(data_dir), subscribers, ready, server))


async def _serve(port: int, data_dir: Path, subscribers: int, ready: Any, server: str) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    from quotaflow.engine import Engine
    from quotaflow.nchf import BASE_PATH, create_app, problem_exception_handlers
    from quotaflow.store import EmbeddedStore

    store = EmbeddedStore(data_dir, snapshot_every_ops=10**12)
    await store.open()
    engine = Engine(store)
    for i in range(subscribers):
        await engine.admin("create_subscriber", f"c{i}", {"id": f"s{i}", "imsi": _imsi(i)[5:]})
        await engine.admin(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**15}
        )
    fixed = orjson.dumps({"invocationTimeStamp": _now(), "invocationSequenceNumber": 1})

    async def bare(request: Request) -> Response:
        await request.body()
        return Response(fixed, media_type="application/json")

    app = Starlette(
        routes=[Route("/bare", bare, methods=["POST"]), Mount(BASE_PATH, app=create_app(engine))],
        exception_handlers=problem_exception_handlers(),
    )
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellations)
    ready.set()  # the parent waits for the port to accept; it ends this process with SIGTERM
    if server == "granian":
        from granian.constants import HTTPModes, Interfaces
        from granian.server.embed import Server

        # Rust HTTP/1.1 + HTTP/2 (h2c prior knowledge in "auto"), the app on this event loop.
        embedded = Server(
            app,
            "127.0.0.1",
            port,
            interface=Interfaces.ASGI,
            http=HTTPModes.auto,
            log_enabled=False,
        )
        await embedded.serve()
        return
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.h2_max_concurrent_streams = 256
    # hypercorn's default sends GOAWAY after 1,000 requests on a connection; an SBI peer keeps
    # its HTTP/2 connections for hours (the server should set this too).
    config.keep_alive_max_requests = 2**62
    await hypercorn_serve(app, config)  # type: ignore[arg-type]


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # hypercorn logs each connection task cancelled as its client hangs up: noise here.
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


# ---------------------------------------------------------------------- a small h2c client


class H2Client:
    """One HTTP/2 connection with prior knowledge; many concurrent streams."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.pending: dict[
            int,
            tuple[
                asyncio.Future[tuple[int, bytes, dict[str, str]]], list[int | bytes], dict[str, str]
            ],
        ] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**30)
        self.writer.write(self.conn.data_to_send())
        self.reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(262_144):
            for event in self.conn.receive_data(data):
                self._event(event)
            out = self.conn.data_to_send()
            if out and self.writer is not None:
                self.writer.write(out)
        for fut, _, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            entry = self.pending.get(event.stream_id)
            if entry is not None:
                for name, value in event.headers:
                    entry[2][str(name)] = str(value)
        elif isinstance(event, h2.events.DataReceived):
            entry = self.pending.get(event.stream_id)
            if entry is not None:
                entry[1].append(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
            entry = self.pending.pop(event.stream_id, None)
            if entry is not None and not entry[0].done():
                fut, chunks, headers = entry
                body = b"".join(c for c in chunks if isinstance(c, bytes))
                fut.set_result((int(headers.get(":status", "0")), body, headers))

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        assert self.writer is not None
        stream_id = self.conn.get_next_available_stream_id()
        fut: asyncio.Future[tuple[int, bytes, dict[str, str]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.pending[stream_id] = (fut, [], {})
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", f"{self.host}:{self.port}"),
                (":path", path),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        self.conn.send_data(stream_id, body, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        return await fut

    async def close(self) -> None:
        if self.writer is not None:
            self.conn.close_connection()
            self.writer.write(self.conn.data_to_send())
            self.writer.close()
        if self.reader_task is not None:
            self.reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await self.reader_task


def _imsi(i: int) -> str:
    return f"imsi-00101{i:010d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _request(seq: int, subscriber: int, used: int, charging_id: int = 0) -> bytes:
    usage: dict[str, Any] = {"ratingGroup": 10, "requestedUnit": {}}
    if used:
        usage["usedUnitContainer"] = [
            {
                "localSequenceNumber": seq,
                "totalVolume": used,
                "quotaManagementIndicator": "ONLINE_CHARGING",
            }
        ]
    return orjson.dumps(
        {
            "subscriberIdentifier": _imsi(subscriber),
            "nfConsumerIdentification": {"nodeFunctionality": "SMF", "nFName": NF_INSTANCE},
            "invocationTimeStamp": _now(),
            "invocationSequenceNumber": seq,
            "chargingId": charging_id,  # distinct creates must differ: the ref is their digest
            "multipleUnitUsage": [usage],
        }
    )


# ---------------------------------------------------------------------- the client process


def client(port: int, args: dict[str, Any], out: Any) -> None:
    _use_uvloop()
    out.put(asyncio.run(_client(port, args)))


async def _client(port: int, args: dict[str, Any]) -> dict[str, Any]:
    conns = [H2Client("127.0.0.1", port) for _ in range(args["connections"])]
    for c in conns:
        await c.connect()
    refs: list[str] = []
    for i in range(args["sessions"]):
        status, _, headers = await conns[i % len(conns)].post(
            f"{BASE}/chargingdata", _request(0, i % args["subscribers"], 0, charging_id=i)
        )
        assert status == 201, status
        refs.append(headers["location"].rsplit("/", 1)[1])
    results = {}
    update_body = _request(1, 0, 1000)
    for name in ("bare", "update"):
        results[name] = await _load(conns, refs, args, bare=(name == "bare"), body=update_body)
    for c in conns:
        await c.close()
    return results


async def _load(
    conns: list[H2Client], refs: list[str], args: dict[str, Any], *, bare: bool, body: bytes
) -> dict[str, Any]:
    users = args["connections"] * args["streams"]
    assert len(refs) >= users, "every virtual user needs sessions of its own"
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + args["seconds"]
    warmup_until = time.perf_counter() + 1.0
    seqs = dict.fromkeys(range(len(refs)), 0)

    async def user(u: int) -> None:
        nonlocal errors
        conn = conns[u % len(conns)]
        mine = list(range(u, len(refs), users))  # disjoint sessions: sequence numbers stay ours
        k = 0
        while (now := time.perf_counter()) < deadline:
            s = mine[k % len(mine)]
            k += 1
            if bare:
                path, payload = "/bare", body
            else:
                seqs[s] += 1
                path = f"{BASE}/chargingdata/{refs[s]}/update"
                payload = _request(seqs[s], s % args["subscribers"], 100_000)
            status, _, _ = await conn.post(path, payload)
            if status != 200:
                errors += 1
            if now >= warmup_until:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(user(u) for u in range(users)))
    measured_s = time.perf_counter() - warmup_until  # requests started after the warm-up
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "per_s": n / measured_s,
        "p50_ms": 1000 * latencies[n // 2] if n else 0.0,
        "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
        "mean_ms": 1000 * statistics.fmean(latencies) if n else 0.0,
        "errors": errors,
    }


def _h2load(port: int, seconds: int, connections: int, streams: int) -> float | None:
    if shutil.which("h2load") is None:
        return None
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(_request(1, 0, 1000))
        data = f.name
    try:
        proc = subprocess.run(
            [
                "h2load",
                "-D",
                str(seconds),
                "--warm-up-time",
                "1",
                "-c",
                str(connections),
                "-m",
                str(streams),
                "-d",
                data,
                "-H",
                "content-type: application/json",
                f"http://127.0.0.1:{port}/bare",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    finally:
        os.unlink(data)
    found = re.search(r"finished in [^,]+, ([\d.]+) req/s", proc.stdout)
    return float(found.group(1)) if found else None


def _result(out: Any, worker: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            result: dict[str, Any] = out.get(timeout=1)
            return result
        if not worker.is_alive():
            raise RuntimeError(f"client process failed (exit code {worker.exitcode})")
    raise TimeoutError("client did not finish")


def _wait_port(port: int) -> None:
    for _ in range(500):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=8, help="seconds per figure (+1 s warm-up)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16, help="concurrent requests per connection")
    p.add_argument("--subscribers", type=int, default=1_000)
    p.add_argument("--sessions", type=int, default=2_000)
    p.add_argument(
        "--server",
        choices=["hypercorn", "granian"],
        default="hypercorn",
        help="HTTP server for both figures (granian: optional, pip install granian)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = vars(p.parse_args())
    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        ready = ctx.Event()
        server = ctx.Process(
            target=serve, args=(port, data_dir, args["subscribers"], ready, args["server"])
        )
        server.start()
        try:
            if not ready.wait(300):
                raise RuntimeError("server did not start")
            _wait_port(port)
            out = ctx.Queue()
            worker = ctx.Process(target=client, args=(port, args, out))
            worker.start()
            results = _result(out, worker, timeout_s=args["seconds"] * 3 + 300)
            worker.join()
            h2load_bare = _h2load(port, args["seconds"], args["connections"], args["streams"])
        finally:
            server.terminate()
            server.join(10)
    bare, update = results["bare"], results["update"]
    print(
        f"Nchf over HTTP/2 (h2c) on {args['server']}, {os.cpu_count()} cores, "
        f"{args['connections']} connections x "
        f"{args['streams']} streams, {args['seconds']} s each"
    )
    print("| figure | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for name, r in (("bare endpoint (ceiling)", bare), ("update (charge + grant)", update)):
        print(
            f"| {name} | {r['per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} |"
        )
    ratio = update["per_s"] / bare["per_s"] if bare["per_s"] else 0.0
    print(f"ratio update / bare endpoint, same client and stack: {ratio:.2f}")
    if h2load_bare is not None:
        print(
            f"h2load (C client) on the bare endpoint: {h2load_bare:,.0f} req/s; "
            f"update / h2load bare: {update['per_s'] / h2load_bare:.2f}"
        )
    print(
        f"goal: >= 10,000 updates/s with p99 < 20 ms -> "
        f"{'met' if update['per_s'] >= 10_000 and update['p99_ms'] < 20 else 'not met'}"
    )
    if args["json"]:
        print(json.dumps({"bare": bare, "update": update, "h2load_bare": h2load_bare}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
