"""Diameter Gy: CCR-U throughput and latency through the real server, durable.

A server process runs quotaflow's Server (embedded store: every answer waits for its group
commit; Gy on the real engine). In the same run, a second server process runs a bare Diameter
answerer on the same transport and codec (serve_diameter with a handler that returns a fixed
CCA shape at once): the ceiling. The same client, the project's DiameterClient, drives both
over TCP with several pipelined connections, so the figure is printed next to its ceiling as a
ratio. Each session does a CCR-I first (not timed), then CCR-Us (timed), then a CCR-T.

    .venv/bin/python bench/bench_diameter.py [--seconds 8] [--connections 4] [--windows 4,32]

With two or more CPUs the server is pinned to one and the client to another ("one server
core"). The client's own cost (encode each CCR, decode and validate each CCA) bounds both
runs alike; the ratio is what the engine and durability cost on top of the bare answerer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quotaflow.diameter import (
    APPLICATION_CREDIT_CONTROL,
    CcRequestType,
    CommandCode,
    DiameterClient,
    Message,
    PeerInfo,
    make_answer,
    serve_diameter,
)

MB = 1_000_000
CLIENT_HOST = "bench.pgw.test"
CLIENT_REALM = "bench.test"
SERVER_REALM = "quotaflow.local"


def _run(main: Any) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


def _pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        if len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {cpu})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------- the server processes


def serve_quotaflow(port: int, data_dir: str, subscribers: int, ready: Any, stop: Any) -> None:
    _pin(0)
    _run(_serve_quotaflow(port, Path(data_dir), subscribers, ready, stop))


async def _serve_quotaflow(
    port: int, data_dir: Path, subscribers: int, ready: Any, stop: Any
) -> None:
    import logging

    from quotaflow.config import Config
    from quotaflow.server import Server

    logging.disable(logging.WARNING)
    cfg = Config()
    cfg.data_dir = data_dir
    cfg.http_port = _free_port()
    cfg.diameter_port = port
    cfg.nchf_enabled = False
    cfg.snapshot_every_ops = 10**12
    server = Server(cfg)
    await server.start()
    store = server.store
    for i in range(subscribers):
        store.submit("create_subscriber", f"c{i}", {"id": f"s{i}", "msisdn": _msisdn(i)})
        store.submit(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**15}
        )
    await store.flush()
    ready.set()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    await server.stop()


def serve_bare(port: int, ready: Any, stop: Any) -> None:
    _pin(0)
    _run(_serve_bare(port, ready, stop))


_CCA_MSCC = {
    "Granted-Service-Unit": {"CC-Total-Octets": 10 * MB},
    "Rating-Group": 10,
    "Validity-Time": 600,
    "Result-Code": 2001,
    "Volume-Quota-Threshold": 2 * MB,
}


async def _serve_bare(port: int, ready: Any, stop: Any) -> None:
    async def answer(peer: PeerInfo, request: Message) -> Message:
        cca = make_answer(request, 2001, "ocs.quotaflow.local", SERVER_REALM)
        for _ in request.find_all("Multiple-Services-Credit-Control"):
            cca.add("Multiple-Services-Credit-Control", _CCA_MSCC)
        return cca

    server = await serve_diameter(answer, "127.0.0.1", port, accept_any_loopback=True)
    ready.set()
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    await server.close()


def _frames() -> tuple[bytes, bytes]:
    """A real CCR-U and the CCA quotaflow answers it with, as encoded by the codec."""
    ccr = Message.request(CommandCode.CREDIT_CONTROL, APPLICATION_CREDIT_CONTROL)
    ccr.extend(
        [
            ("Session-Id", f"{CLIENT_HOST}.0;1;1"),
            ("Origin-Host", f"{CLIENT_HOST}.0"),
            ("Origin-Realm", CLIENT_REALM),
            ("Destination-Realm", SERVER_REALM),
            ("Auth-Application-Id", APPLICATION_CREDIT_CONTROL),
            ("Service-Context-Id", "32251@3gpp.org"),
            ("CC-Request-Type", CcRequestType.UPDATE),
            ("CC-Request-Number", 1),
            ("Subscription-Id", {"Subscription-Id-Type": 0, "Subscription-Id-Data": _msisdn(0)}),
            ("Multiple-Services-Credit-Control", _MSCC[CcRequestType.UPDATE]),
        ]
    )
    ccr.hop_by_hop = ccr.end_to_end = 1
    cca = make_answer(ccr, 2001, "ocs.quotaflow.local", SERVER_REALM)
    cca.add("Multiple-Services-Credit-Control", _CCA_MSCC)
    return ccr.encode(), cca.encode()


class _RawAnswerer(asyncio.Protocol):
    """Answers every frame with the same CCA, its ids copied from the request: the loopback
    request/response ceiling, no codec."""

    def __init__(self, answer: bytes) -> None:
        self._head, self._tail = answer[:12], answer[20:]
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        out = []
        while len(buffer) >= 20 and len(buffer) >= (size := int.from_bytes(buffer[1:4], "big")):
            out.append(self._head + buffer[12:20] + self._tail)
            buffer = buffer[size:]
        self._buffer = buffer
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


def serve_raw(port: int, ready: Any, stop: Any) -> None:
    _pin(0)
    _run(_serve_raw(port, ready, stop))


async def _serve_raw(port: int, ready: Any, stop: Any) -> None:
    answer = _frames()[1]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RawAnswerer(answer), "127.0.0.1", port)
    ready.set()
    await loop.run_in_executor(None, stop.wait)
    server.close()


def _msisdn(i: int) -> str:
    return f"4670{i:08d}"


# ---------------------------------------------------------------------- the client


class Session:
    """One session's AVPs, made once: only CC-Request-Number changes from request to request."""

    __slots__ = ("head", "number", "services", "session_id")

    def __init__(self, client: DiameterClient, session_id: str, msisdn: str) -> None:
        template = client.ccr(
            session_id,
            CcRequestType.UPDATE,
            0,
            destination_realm=SERVER_REALM,
            extra=[
                ("Subscription-Id", {"Subscription-Id-Type": 0, "Subscription-Id-Data": msisdn}),
            ],
        )
        self.session_id = session_id
        self.head = [a for a in template.avps if a.name not in _PER_REQUEST]
        self.services = {
            request_type: template.build("Multiple-Services-Credit-Control", mscc)
            for request_type, mscc in _MSCC.items()
        }
        self.number = 0


_PER_REQUEST = ("CC-Request-Type", "CC-Request-Number")
_MSCC: dict[int, dict[str, Any]] = {
    CcRequestType.INITIAL: {"Requested-Service-Unit": {}, "Rating-Group": 10},
    CcRequestType.UPDATE: {
        "Requested-Service-Unit": {},
        "Used-Service-Unit": {"CC-Total-Octets": 700_000},
        "Rating-Group": 10,
    },
    CcRequestType.TERMINATION: {
        "Used-Service-Unit": {"CC-Total-Octets": 700_000},
        "Rating-Group": 10,
    },
}


def _ccr(session: Session, request_type: int) -> Message:
    """A CCR of the session from its prepared AVPs (AVPs are never changed once made)."""
    request = Message.request(CommandCode.CREDIT_CONTROL, APPLICATION_CREDIT_CONTROL)
    request.avps = [
        *session.head,
        request.build("CC-Request-Type", request_type),
        request.build("CC-Request-Number", session.number),
        session.services[request_type],
    ]
    session.number += 1
    return request


async def _worker(
    client: DiameterClient,
    sessions: list[Session],
    deadline: float,
    warmup_until: float,
    latencies: list[float],
    failures: list[int],
) -> int:
    """CCR-U after CCR-U on its own sessions, one in flight at a time; returns how many were
    timed (answered after the warm-up)."""
    done = 0
    index = 0
    while True:
        now = time.perf_counter()
        if now >= deadline:
            return done
        session = sessions[index % len(sessions)]
        index += 1
        request = _ccr(session, CcRequestType.UPDATE)
        started = time.perf_counter()
        answer = await client.send(request)
        finished = time.perf_counter()
        code = answer.get("Result-Code")
        if code != 2001:
            failures.append(code if isinstance(code, int) else 0)
        if started >= warmup_until:
            latencies.append(finished - started)
            done += 1


async def drive(
    port: int, connections: int, window: int, seconds: float, warmup_s: float, subscribers: int
) -> dict[str, float]:
    clients = [
        await DiameterClient.connect(
            "127.0.0.1", port, origin_host=f"{CLIENT_HOST}.{c}", origin_realm=CLIENT_REALM
        )
        for c in range(connections)
    ]
    sessions_per_worker = 2
    groups: list[list[Session]] = []
    for c, client in enumerate(clients):
        for w in range(window):
            n = (c * window + w) * sessions_per_worker
            groups.append(
                [
                    Session(client, client.new_session_id(), _msisdn((n + k) % subscribers))
                    for k in range(sessions_per_worker)
                ]
            )
    owners = [clients[i // window] for i in range(len(groups))]
    # Open every session (not timed).
    opened = await asyncio.gather(
        *(
            owner.send(_ccr(s, CcRequestType.INITIAL))
            for owner, group in zip(owners, groups, strict=True)
            for s in group
        )
    )
    refused = [a.get("Result-Code") for a in opened if a.get("Result-Code") != 2001]
    assert not refused, f"CCR-I refused: {refused[:5]}"
    latencies: list[float] = []
    failures: list[int] = []
    begin = time.perf_counter()
    warmup_until = begin + warmup_s
    deadline = warmup_until + seconds
    counts = await asyncio.gather(
        *(
            _worker(owner, group, deadline, warmup_until, latencies, failures)
            for owner, group in zip(owners, groups, strict=True)
        )
    )
    timed = sum(counts)
    await asyncio.gather(
        *(
            owner.send(_ccr(s, CcRequestType.TERMINATION))
            for owner, group in zip(owners, groups, strict=True)
            for s in group
        )
    )
    for client in clients:
        await client.close()
    assert not failures, f"{len(failures)} CCR-U failed, e.g. {failures[:5]}"
    return _summary(timed, seconds, latencies)


class _RawClient(asyncio.Protocol):
    """Sends the same CCR frame with a new hop-by-hop id each time; matches answers by it."""

    def __init__(self, frame: bytes) -> None:
        self._frame = frame
        self._next_id = 1
        self._waiters: dict[bytes, asyncio.Future[None]] = {}
        self._buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> asyncio.Future[None]:
        assert self.transport is not None
        hop = self._next_id.to_bytes(4, "big")
        self._next_id += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[hop] = future
        self.transport.write(self._frame[:12] + hop + self._frame[16:])
        return future

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        while len(buffer) >= 20 and len(buffer) >= (size := int.from_bytes(buffer[1:4], "big")):
            waiter = self._waiters.pop(buffer[12:16], None)
            if waiter is not None:
                waiter.set_result(None)
            buffer = buffer[size:]
        self._buffer = buffer


async def drive_raw(
    port: int, connections: int, window: int, seconds: float, warmup_s: float
) -> dict[str, float]:
    frame = _frames()[0]
    loop = asyncio.get_running_loop()
    clients = [
        (await loop.create_connection(lambda: _RawClient(frame), "127.0.0.1", port))[1]
        for _ in range(connections)
    ]
    latencies: list[float] = []
    begin = time.perf_counter()
    warmup_until, deadline = begin + warmup_s, begin + warmup_s + seconds

    async def worker(client: _RawClient) -> int:
        done = 0
        while (started := time.perf_counter()) < deadline:
            await client.send()
            if started >= warmup_until:
                latencies.append(time.perf_counter() - started)
                done += 1
        return done

    counts = await asyncio.gather(*(worker(c) for c in clients for _ in range(window)))
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    return _summary(sum(counts), seconds, latencies)


def _summary(timed: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "rate": timed / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "count": timed,
    }


def client_run(
    raw: bool,
    port: int,
    connections: int,
    window: int,
    seconds: float,
    warmup_s: float,
    subscribers: int,
) -> dict[str, float]:
    _pin(1)
    result: dict[str, float] = {}

    async def main() -> None:
        if raw:
            result.update(await drive_raw(port, connections, window, seconds, warmup_s))
        else:
            result.update(await drive(port, connections, window, seconds, warmup_s, subscribers))

    _run(main())
    return result


# ---------------------------------------------------------------------- orchestration


def measure(kind: str, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    port = _free_port()
    if kind == "quotaflow":
        target: Any = serve_quotaflow
        server_args: tuple[Any, ...] = (port, str(data_dir), args.subscribers, ready, stop)
    else:
        target, server_args = (serve_bare if kind == "bare" else serve_raw), (port, ready, stop)
    process = ctx.Process(target=target, args=server_args, daemon=True)
    process.start()
    try:
        if not ready.wait(120):
            raise RuntimeError(f"{kind} server did not start")
        with ctx.Pool(1) as pool:
            return pool.apply(
                client_run,
                (
                    kind == "raw",
                    port,
                    args.connections,
                    args.window,
                    args.seconds,
                    args.warmup,
                    args.subscribers,
                ),
            )
    finally:
        stop.set()
        process.join(30)
        if process.is_alive():
            process.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=8.0, help="timed CCR-U phase per run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument(
        "--windows",
        default="4,32",
        help="requests in flight per connection; one row each (comma-separated)",
    )
    p.add_argument("--subscribers", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=1, help="runs per row (the median is shown)")
    args = p.parse_args()
    rows = []
    for window in (int(w) for w in args.windows.split(",")):
        args.window = window
        runs: dict[str, list[dict[str, float]]] = {"quotaflow": [], "bare": [], "raw": []}
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
                for kind, found in runs.items():
                    found.append(measure(kind, args, Path(tmp)))
            print(
                f"run ({args.connections}x{window}): "
                + "; ".join(f"{kind} {_show(found[-1])}" for kind, found in runs.items()),
                file=sys.stderr,
            )
        rows.append((window, {kind: _median(found) for kind, found in runs.items()}))
    print("| benchmark | figure | ceiling (same run) | ratio |")
    print("|---|---|---|---|")
    for window, medians in rows:
        figure, bare, raw = medians["quotaflow"], medians["bare"], medians["raw"]
        name = f"Gy CCR-U, durable, {args.connections} connections x {window} in flight"
        print(
            f"| {name} | {_show(figure)} | {_show(bare)}: bare Diameter answerer, same client, "
            f"codec and transport | {figure['rate'] / bare['rate']:.2f} |"
        )
        print(
            f"| (same) | {_show(figure)} | {_show(raw)}: bare asyncio request/response loop "
            f"on the same frames (no codec) | {figure['rate'] / raw['rate']:.2f} |"
        )
    return 0


def _median(found: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(f[key] for f in found) for key in found[0]}


def _show(result: dict[str, float]) -> str:
    return f"{result['rate']:,.0f}/s (p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms)"


if __name__ == "__main__":
    raise SystemExit(main())
