"""Diameter Gy: CCR-U throughput and latency through the real server, durable.

A server process runs quotaflow's Server (embedded store: every answer waits for its group
commit; Gy on the real engine). In the same run, two ceilings on the same machine: a bare
Diameter answerer on the same transport and codec (serve_diameter with a handler that returns a
fixed CCA shape at once), and a bare asyncio request/response loop answering the same frames
with a fixed CCA (no codec). The same client drives all three over TCP with several pipelined
connections, so the figure is printed next to each ceiling as a ratio. Each session does a
CCR-I first (not timed), then CCR-Us (timed), then a CCR-T.

    .venv/bin/python bench/bench_diameter.py [--seconds 8] [--connections 4] [--windows 4,32]

With two or more CPUs the server is pinned to one and the client to another ("one server
core"). The client is lean so that it is not the limit: CCRs are encoded once per session by
the project's codec and only the ids and CC-Request-Number are patched in; of each answer it
reads the header and the Result-Code. Each server also reports the CPU time its process (all
threads) used per CCR it answered, CCR-I and CCR-T included: on a shared machine that moves
less than a rate does, and its inverse is what one fully busy core would sustain. The records
exporter's own process (started by the server, pinned with it) is moved to the client's core,
and its CPU per CCR is printed on a row of its own: it is not in the server's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quotaflow.diameter import (
    APPLICATION_COMMON,
    APPLICATION_CREDIT_CONTROL,
    CcRequestType,
    CommandCode,
    Message,
    PeerInfo,
    ResultCode,
    build_ccr,
    decode_message,
    make_answer,
    new_session_id,
    serve_diameter,
)
from quotaflow.diameter.constants import (
    AVP_CC_REQUEST_NUMBER,
    AVP_RESULT_CODE,
    FLAG_REQUEST,
    HEADER_OCTETS,
)
from quotaflow.diameter.messages import build_capabilities

MB = 1_000_000
CLIENT_HOST = "bench.pgw.test"
CLIENT_REALM = "bench.test"
SERVER_REALM = "quotaflow.local"
NO_SNAPSHOTS = 10**12  # snapshot_every_ops that never comes in a run
_S_AVP = struct.Struct(">II")


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


def serve_quotaflow(
    port: int,
    data_dir: str,
    subscribers: int,
    snapshot_every_ops: int,
    ready: Any,
    stop: Any,
    cpu: Any,
    cpu_export: Any,
) -> None:
    _pin(0)
    _run(
        _serve_quotaflow(
            port, Path(data_dir), subscribers, snapshot_every_ops, ready, stop, cpu, cpu_export
        )
    )


def _cpu_s_of(pid: int | None) -> float:
    """CPU seconds (user and system, all threads) that process `pid` used so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ready_until_stopped(
    ready: Any, stop: Any, cpu: Any, cpu_export: Any = None, exporter_pid: int | None = None
) -> None:
    """Serve until told to stop; `cpu` gets the CPU seconds the whole server process (all its
    threads: the journal writer too) used meanwhile, a figure that other load on the machine
    does not inflate as much as a rate; `cpu_export` those of the records exporter's process."""
    ready.set()
    started, export_started = time.process_time(), _cpu_s_of(exporter_pid)
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    cpu.value = time.process_time() - started
    if cpu_export is not None:
        cpu_export.value = _cpu_s_of(exporter_pid) - export_started


async def _serve_quotaflow(
    port: int,
    data_dir: Path,
    subscribers: int,
    snapshot_every_ops: int,
    ready: Any,
    stop: Any,
    cpu: Any,
    cpu_export: Any,
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
    cfg.snapshot_every_ops = snapshot_every_ops
    server = Server(cfg)
    await server.start()
    store = server.store
    for i in range(subscribers):
        store.submit("create_subscriber", f"c{i}", {"id": f"s{i}", "msisdn": _msisdn(i)})
        store.submit(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**15}
        )
    await store.flush()
    commits, rows = store.commits, store.committed_rows
    await _ready_until_stopped(ready, stop, cpu, cpu_export, await _exporter_pid(server))
    # How the closed loop batches: near the whole window per commit means the loop idles
    # through each commit's fsync (PERFORMANCE.md, session 13).
    commits, rows = store.commits - commits, store.committed_rows - rows
    stats = store.stats()
    snapshots = (
        f"; {stats['snapshots_stored']} snapshots stored of {stats['snapshots_forked']} forked,"
        f" the last fork {1e3 * stats['last_snapshot_fork_s']:.1f} ms"
        if stats.get("snapshots_forked")
        else ""
    )
    print(
        f"server: {commits:,} commits, {rows / max(1, commits):.0f} operations per commit"
        + snapshots,
        file=sys.stderr,
    )
    await server.stop()


async def _exporter_pid(server: Any) -> int | None:
    """The records exporter's process, moved off the server's core (it inherits the pin) to the
    client's: "one server core" is the charging process's; the exporter's CPU is shown apart."""
    exporter = server._records.exporter
    pid = getattr(exporter, "pid", None)
    for _ in range(200):
        if pid is not None or exporter is None or not hasattr(exporter, "pid"):
            break
        await asyncio.sleep(0.05)
        pid = exporter.pid
    if pid is not None:
        with contextlib.suppress(AttributeError, OSError):
            if len(os.sched_getaffinity(0)) < len(os.sched_getaffinity(os.getppid())):
                # Pinned as _pin does: only with a core to spare. Every thread of it: an
                # affinity is a thread's, and its file writer thread was started before this
                # (moving only the process's first thread left that one on the server's core,
                # 5% of that core's samples in perf). Threads it starts later inherit the pin.
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError):  # a thread that ended meanwhile
                        os.sched_setaffinity(int(tid), {1})
    return pid


def serve_bare(port: int, ready: Any, stop: Any, cpu: Any) -> None:
    _pin(0)
    _run(_serve_bare(port, ready, stop, cpu))


_CCA_MSCC = {
    "Granted-Service-Unit": {"CC-Total-Octets": 10 * MB},
    "Rating-Group": 10,
    "Validity-Time": 600,
    "Result-Code": 2001,
    "Volume-Quota-Threshold": 2 * MB,
}


async def _serve_bare(port: int, ready: Any, stop: Any, cpu: Any) -> None:
    async def answer(peer: PeerInfo, request: Message) -> Message:
        cca = make_answer(request, 2001, "ocs.quotaflow.local", SERVER_REALM)
        for _ in request.find_all("Multiple-Services-Credit-Control"):
            cca.add("Multiple-Services-Credit-Control", _CCA_MSCC)
        return cca

    server = await serve_diameter(answer, "127.0.0.1", port, accept_any_loopback=True)
    await _ready_until_stopped(ready, stop, cpu)
    await server.close()


def _raw_answers() -> tuple[bytes, bytes]:
    """The CCA quotaflow answers a CCR-U with, and a CEA, as encoded by the codec."""
    ccr = Message.request(CommandCode.CREDIT_CONTROL, APPLICATION_CREDIT_CONTROL)
    ccr.extend(
        [
            ("Session-Id", f"{CLIENT_HOST}.0;1;1"),
            ("Auth-Application-Id", APPLICATION_CREDIT_CONTROL),
            ("CC-Request-Type", CcRequestType.UPDATE),
            ("CC-Request-Number", 1),
        ]
    )
    cca = make_answer(ccr, 2001, "ocs.quotaflow.local", SERVER_REALM)
    cca.add("Multiple-Services-Credit-Control", _CCA_MSCC)
    cer = Message.request(CommandCode.CAPABILITIES_EXCHANGE, APPLICATION_COMMON)
    cea = build_capabilities(
        request=cer,
        result_code=ResultCode.SUCCESS,
        origin_host="ocs.quotaflow.local",
        origin_realm=SERVER_REALM,
        host_ip_addresses=[ipaddress.IPv4Address("127.0.0.1")],
        vendor_id=0,
        product_name="raw",
        origin_state_id=1,
        auth_application_ids=[APPLICATION_CREDIT_CONTROL],
    )
    return cca.encode(), cea.encode()


class _RawAnswerer(asyncio.Protocol):
    """Answers every frame with the same CCA (a CER with a CEA), its ids copied from the
    request: the loopback request/response ceiling, no codec."""

    def __init__(self, answer: bytes, cea: bytes) -> None:
        self._head, self._tail = answer[:12], answer[20:]
        self._cea_head, self._cea_tail = cea[:12], cea[20:]
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        out = []
        while len(buffer) >= 20 and len(buffer) >= (size := int.from_bytes(buffer[1:4], "big")):
            if buffer[5:8] == _CER_CODE:
                out.append(self._cea_head + buffer[12:20] + self._cea_tail)
            else:
                out.append(self._head + buffer[12:20] + self._tail)
            buffer = buffer[size:]
        self._buffer = buffer
        if out and self._transport is not None:
            self._transport.write(b"".join(out))


_CER_CODE = CommandCode.CAPABILITIES_EXCHANGE.to_bytes(3, "big")


def serve_raw(port: int, ready: Any, stop: Any, cpu: Any) -> None:
    _pin(0)
    _run(_serve_raw(port, ready, stop, cpu))


async def _serve_raw(port: int, ready: Any, stop: Any, cpu: Any) -> None:
    answer, cea = _raw_answers()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _RawAnswerer(answer, cea), "127.0.0.1", port)
    await _ready_until_stopped(ready, stop, cpu)
    server.close()


def _msisdn(i: int) -> str:
    return f"4670{i:08d}"


# ---------------------------------------------------------------------- the client


def _encode_ccr(origin_host: str, session_id: str, msisdn: str, request_type: int) -> bytes:
    """A CCR as the project's codec encodes it (CC-Request-Number 0, ids 0)."""
    ccr = build_ccr(
        session_id=session_id,
        origin_host=origin_host,
        origin_realm=CLIENT_REALM,
        destination_realm=SERVER_REALM,
        request_type=request_type,
        request_number=0,
        extra=[
            ("Subscription-Id", {"Subscription-Id-Type": 0, "Subscription-Id-Data": msisdn}),
            ("Multiple-Services-Credit-Control", _MSCC[request_type]),
        ],
    )
    return ccr.encode()


def _avp_offset(frame: bytes, code: int) -> int:
    """Offset of the data of the first top-level vendor-less AVP `code` in `frame`, or -1."""
    pos, end = HEADER_OCTETS, len(frame)
    while pos + 8 <= end:
        avp_code, word = _S_AVP.unpack_from(frame, pos)
        length = word & 0xFFFFFF
        if length < 8:
            return -1
        if avp_code == code and not word >> 31:
            return pos + 8
        pos += (length + 3) & ~3
    return -1


def _result_code(frame: bytes) -> int:
    """The Result-Code of an answer (0 when it has none): the only AVP the client reads."""
    offset = _avp_offset(frame, AVP_RESULT_CODE)
    return int.from_bytes(frame[offset : offset + 4], "big") if offset > 0 else 0


class Template:
    """One session's CCR of one type, pre-encoded: the ids and CC-Request-Number are patched in
    for each request, nothing else changes."""

    __slots__ = ("head", "middle", "tail")

    def __init__(self, frame: bytes) -> None:
        at = _avp_offset(frame, AVP_CC_REQUEST_NUMBER)
        assert at > 0, "a CCR has a CC-Request-Number"
        self.head, self.middle, self.tail = frame[:12], frame[20:at], frame[at + 4 :]

    def frame(self, hop_by_hop: int, number: int) -> bytes:
        ids = hop_by_hop.to_bytes(4, "big")
        return b"".join((self.head, ids, ids, self.middle, number.to_bytes(4, "big"), self.tail))


class Session:
    __slots__ = ("number", "templates")

    def __init__(self, origin_host: str, session_id: str, msisdn: str) -> None:
        self.templates = {
            kind: Template(_encode_ccr(origin_host, session_id, msisdn, kind)) for kind in _MSCC
        }
        self.number = 0

    def frame(self, hop_by_hop: int, request_type: int) -> bytes:
        frame = self.templates[request_type].frame(hop_by_hop, self.number)
        self.number += 1
        return frame


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


class _Slot:
    """One request in flight at a time, round-robin over its own sessions."""

    __slots__ = ("index", "sessions", "started")

    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = sessions
        self.index = 0
        self.started = 0.0


class LeanClient(asyncio.Protocol):
    """The load generator's Diameter peer: CER/CEA and DWA through the codec, CCRs from
    pre-encoded templates, answers matched by hop-by-hop id with only their Result-Code read.
    In the timed phase each slot sends its next CCR-U from the callback that got its answer,
    and all frames made while reading one chunk go out in one write."""

    def __init__(self, origin_host: str) -> None:
        self.origin_host = origin_host
        self.transport: asyncio.Transport | None = None
        self._buffer = b""
        self._next_id = 1
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._slots: dict[int, _Slot] = {}
        self._out: list[bytes] = []
        self._reading = False
        self._deadline = self._warmup_until = 0.0
        self._running = 0
        self._done: asyncio.Future[None] | None = None
        self.latencies: list[float] = []
        self.failures: list[int] = []
        self.sent = 0  # CCRs, all types

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection lost"))
        if self._done is not None and not self._done.done():
            self._done.set_exception(ConnectionError("connection lost"))

    # -- setup and teardown: one future per request

    def _hop(self) -> int:
        hop = self._next_id
        self._next_id = hop + 1
        return hop

    def request(self, make: Any) -> asyncio.Future[int]:
        """Send the frame make(hop_by_hop) returns; the future gets the answer's Result-Code."""
        hop = self._hop()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[hop] = future
        self._write(make(hop))
        return future

    async def open(self) -> None:
        cer = build_capabilities(
            request=None,
            result_code=None,
            origin_host=self.origin_host,
            origin_realm=CLIENT_REALM,
            host_ip_addresses=[ipaddress.IPv4Address("127.0.0.1")],
            vendor_id=0,
            product_name="bench",
            origin_state_id=1,
            auth_application_ids=[APPLICATION_CREDIT_CONTROL],
        )

        def frame(hop: int) -> bytes:
            cer.hop_by_hop = cer.end_to_end = hop
            return cer.encode()

        code = await self.request(frame)
        assert code == ResultCode.SUCCESS, f"CEA {code}"

    # -- the timed phase: callbacks only

    def run(self, slots: list[_Slot], deadline: float, warmup_until: float) -> asyncio.Future[None]:
        self._deadline, self._warmup_until = deadline, warmup_until
        self._done = asyncio.get_running_loop().create_future()
        self._running = len(slots)
        for slot in slots:
            self._next(slot, time.perf_counter())
        return self._done

    def _next(self, slot: _Slot, now: float) -> None:
        if now >= self._deadline:
            self._running -= 1
            if not self._running and self._done is not None:
                self._done.set_result(None)
            return
        sessions = slot.sessions
        session = sessions[slot.index % len(sessions)]
        slot.index += 1
        hop = self._hop()
        self._slots[hop] = slot
        slot.started = now
        self.sent += 1
        self._write(session.frame(hop, CcRequestType.UPDATE))

    # -- reading

    def _write(self, frame: bytes) -> None:
        if self._reading:
            self._out.append(frame)
        elif self.transport is not None:
            self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        self._reading = True
        now = time.perf_counter()
        offset, end = 0, len(buffer)
        while end - offset >= HEADER_OCTETS:
            size = int.from_bytes(buffer[offset + 1 : offset + 4], "big")
            if end - offset < size:
                break
            frame = buffer[offset : offset + size]
            offset += size
            hop = int.from_bytes(frame[12:16], "big")
            if frame[4] & FLAG_REQUEST:
                self._answer_peer(frame)
                continue
            slot = self._slots.pop(hop, None)
            if slot is not None:
                code = _result_code(frame)
                if code != ResultCode.SUCCESS:
                    self.failures.append(code)
                if slot.started >= self._warmup_until:
                    self.latencies.append(now - slot.started)
                self._next(slot, now)
                continue
            waiter = self._waiters.pop(hop, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(_result_code(frame))
        self._buffer = buffer[offset:]
        self._reading = False
        if self._out and self.transport is not None:
            self.transport.write(b"".join(self._out))
            self._out.clear()

    def _answer_peer(self, frame: bytes) -> None:
        """A request from the server (a DWR when the link is idle): answered by the codec."""
        request = decode_message(frame)
        answer = make_answer(request, ResultCode.SUCCESS, self.origin_host, CLIENT_REALM)
        if request.command_code == CommandCode.DEVICE_WATCHDOG:
            answer.add("Origin-State-Id", 1)
        self._write(answer.encode())


async def drive(
    port: int, connections: int, window: int, seconds: float, warmup_s: float, subscribers: int
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    clients: list[LeanClient] = []
    for c in range(connections):
        host = f"{CLIENT_HOST}.{c}"
        _, client = await loop.create_connection(lambda h=host: LeanClient(h), "127.0.0.1", port)
        await client.open()
        clients.append(client)
    sessions_per_slot = 2
    slots: dict[LeanClient, list[_Slot]] = {}
    for c, client in enumerate(clients):
        slots[client] = []
        for w in range(window):
            n = (c * window + w) * sessions_per_slot
            slots[client].append(
                _Slot(
                    [
                        Session(
                            client.origin_host,
                            new_session_id(client.origin_host),
                            _msisdn((n + k) % subscribers),
                        )
                        for k in range(sessions_per_slot)
                    ]
                )
            )

    async def each(request_type: int) -> list[int]:
        for client, own in slots.items():
            client.sent += sum(len(slot.sessions) for slot in own)
        return await asyncio.gather(
            *(
                client.request(lambda hop, s=session: s.frame(hop, request_type))
                for client, own in slots.items()
                for slot in own
                for session in slot.sessions
            )
        )

    # Open every session (not timed).
    refused = [code for code in await each(CcRequestType.INITIAL) if code != ResultCode.SUCCESS]
    assert not refused, f"CCR-I refused: {refused[:5]}"
    begin = time.perf_counter()
    warmup_until = begin + warmup_s
    deadline = warmup_until + seconds
    await asyncio.gather(
        *(client.run(own, deadline, warmup_until) for client, own in slots.items())
    )
    await each(CcRequestType.TERMINATION)
    latencies = [latency for client in clients for latency in client.latencies]
    failures = [code for client in clients for code in client.failures]
    for client in clients:
        assert client.transport is not None
        client.transport.close()
    assert not failures, f"{len(failures)} CCR-U failed, e.g. {failures[:5]}"
    return {
        **_summary(len(latencies), seconds, latencies),
        "requests": sum(client.sent for client in clients),
    }


def _summary(timed: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    latencies.sort()
    return {
        "rate": timed / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "count": timed,
    }


def client_run(
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
        result.update(await drive(port, connections, window, seconds, warmup_s, subscribers))

    _run(main())
    return result


# ---------------------------------------------------------------------- orchestration


def measure(kind: str, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    ready, stop, cpu = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    cpu_export = ctx.Value("d", 0.0)
    port = _free_port()
    if kind == "quotaflow":
        target: Any = serve_quotaflow
        server_args: tuple[Any, ...] = (
            port,
            str(data_dir),
            args.subscribers,
            args.snapshot_every_ops,
            ready,
            stop,
            cpu,
            cpu_export,
        )
    else:
        target, server_args = (
            (serve_bare if kind == "bare" else serve_raw),
            (port, ready, stop, cpu),
        )
    process = ctx.Process(target=target, args=server_args, daemon=True)
    process.start()
    try:
        if not ready.wait(120):
            raise RuntimeError(f"{kind} server did not start")
        with ctx.Pool(1) as pool:
            result: dict[str, float] = pool.apply(
                client_run,
                (
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
    result["cpu_us"] = 1e6 * cpu.value / result["requests"]
    result["export_cpu_us"] = 1e6 * cpu_export.value / result["requests"]
    return result


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
    p.add_argument(
        "--snapshot-every-ops",
        type=int,
        default=NO_SNAPSHOTS,
        help="the server's snapshot_every_ops (default: none in a run, as in the table's rows"
        " before session 21; the server's own default is 500,000)",
    )
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
        print(
            f"| (same), server CPU per CCR | {figure['cpu_us']:.0f} us "
            f"({1e6 / figure['cpu_us']:,.0f} CCR/s per CPU-second) | {bare['cpu_us']:.0f} us "
            f"bare answerer, {raw['cpu_us']:.0f} us raw loop | "
            f"{bare['cpu_us'] / figure['cpu_us']:.2f}, {raw['cpu_us'] / figure['cpu_us']:.3f} |"
        )
        print(
            f"| (same), records exporter's process CPU per CCR (on the client's core) | "
            f"{figure['export_cpu_us']:.0f} us | | |"
        )
    return 0


def _median(found: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(f[key] for f in found) for key in found[0]}


def _show(result: dict[str, float]) -> str:
    return (
        f"{result['rate']:,.0f}/s (p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms;"
        f" server CPU {result['cpu_us']:.0f} us/CCR"
        + (f", exporter {result['export_cpu_us']:.0f} us" if result.get("export_cpu_us") else "")
        + ")"
    )


if __name__ == "__main__":
    raise SystemExit(main())
