"""Nchf_ConvergedCharging over HTTP/2 (h2c prior knowledge): update throughput and latency.

A server process runs the real stack (EmbeddedStore + Engine + the Nchf front composed as
`quotaflow serve` composes it, served by the server's own `serve_http`, granian by default)
with one extra path, a bare endpoint that reads the body and answers a fixed 200 JSON through
the same interface. In the same run the same client drives both, so the update figure is
printed beside the ceiling of the HTTP stack itself, as a ratio. Every update is a new request
(its own invocationSequenceNumber): it posts usage and reserves the next grant, durably.

    .venv/bin/python bench/bench_nchf.py [--seconds 8] [--connections 4] [--streams 16]
                                         [--server granian|hypercorn]

The client (h2c_load.py) runs in a second process and prints its own CPU use; the server's CPU
per request (all threads, and its event loop's thread) is read from /proc. h2load (nghttp2),
when installed, adds an independent C-client figure for the bare endpoint (it can only repeat
one body, which for an update would be a retransmission, so it is not used on updates).
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
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2c_load  # bench/ is not a package: found through sys.path

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
    from starlette.routing import Mount

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
    fixed_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(fixed)).encode()),
    ]

    # As `quotaflow serve` composes it: Nchf paths go straight to the Nchf app, the rest to
    # the Starlette app that also mounts it. /bare is dispatched beside them, one test earlier,
    # and answers the least any endpoint on this server can: it reads the body and sends a
    # fixed JSON answer, through the same interface (RSGI on granian, ASGI on hypercorn).
    nchf = create_app(engine)
    served = nchf.in_front_of(
        Starlette(
            routes=[Mount(BASE_PATH, app=nchf)], exception_handlers=problem_exception_handlers()
        )
    )
    rsgi_headers = [("content-type", "application/json")]

    class App:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"] == "/bare":
                while (await receive()).get("more_body", False):
                    pass
                start = {"type": "http.response.start", "status": 200, "headers": fixed_headers}
                await send(start)
                await send({"type": "http.response.body", "body": fixed})
            else:
                await served(scope, receive, send)

        async def __rsgi__(self, scope: Any, proto: Any) -> None:
            if scope.path == "/bare":
                with contextlib.suppress(RuntimeError):  # the client hung up (end of a run)
                    await proto()
                    proto.response_bytes(200, rsgi_headers, fixed)
            else:
                await served.__rsgi__(scope, proto)

    app = App()

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellations)
    ready.set()  # the parent waits for the port to accept; it ends this process with SIGTERM
    from quotaflow.http_server import serve_http

    # The server's own HTTP server code, as `quotaflow serve` runs it.
    await serve_http(app, "127.0.0.1", port, asyncio.Event(), server)


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # hypercorn logs each connection task cancelled as its client hangs up: noise here.
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


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
    conns = [await h2c_load.connect("127.0.0.1", port) for _ in range(args["connections"])]
    users = args["connections"] * args["streams"]
    assert args["sessions"] >= users, "every virtual user needs sessions of its own"
    refs: list[str] = []
    for i in range(args["sessions"]):
        status, headers, _ = await conns[i % len(conns)].request(
            f"{BASE}/chargingdata", _request(0, i % args["subscribers"], 0, charging_id=i)
        )
        assert status == 201, status
        refs.append(headers["location"].rsplit("/", 1)[1])

    # Pre-built bodies: per session a template split at its sequence number, so a request
    # costs the client a bytes join. Every update is new (its own invocationSequenceNumber).
    marker = b"4294967295"
    templates = []
    for s, ref in enumerate(refs):
        head, tail = _request(2**32 - 1, s % args["subscribers"], 100_000).split(marker, 1)
        tail_a, tail_b = tail.split(marker, 1)  # localSequenceNumber repeats it
        path = f"{BASE}/chargingdata/{ref}/update".encode()
        templates.append((path, head, tail_a, tail_b))
    mine = [list(range(u, len(refs), users)) for u in range(users)]  # disjoint sessions
    turns = [0] * users
    seqs = [0] * len(refs)
    bare_body = _request(1, 0, 1000)

    def bare(_user: int) -> tuple[bytes, bytes]:
        return b"/bare", bare_body

    def update(user: int) -> tuple[bytes, bytes]:
        sessions = mine[user]
        s = sessions[turns[user] % len(sessions)]
        turns[user] += 1
        seqs[s] += 1
        path, head, tail_a, tail_b = templates[s]
        n = str(seqs[s]).encode()
        return path, head + n + tail_a + n + tail_b

    # Creates open new sessions (each its own chargingId); the releases then close them, each
    # once, until none is left: that phase may end before its time is up.
    next_id = [len(refs)]
    asked: list[int] = [0] * users  # the subscriber of each user's request in flight
    opened: list[tuple[str, int]] = []

    def create(user: int) -> tuple[bytes, bytes]:
        n = next_id[0]
        next_id[0] += 1
        asked[user] = n % args["subscribers"]
        return f"{BASE}/chargingdata".encode(), _request(0, asked[user], 0, charging_id=n)

    def created(user: int, status: int, headers: dict[str, str] | None) -> None:
        if status == 201 and headers is not None:
            opened.append((headers["location"].rsplit("/", 1)[1], asked[user]))

    def release(_user: int) -> tuple[bytes, bytes] | None:
        if not opened:
            return None
        ref, subscriber = opened.pop()
        path = f"{BASE}/chargingdata/{ref}/release".encode()
        return path, _request(1, subscriber, 100_000)

    phases: list[tuple[str, Any, int, Any]] = [
        ("bare", bare, 200, None),
        ("update", update, 200, None),
        ("create", create, 201, created),
        ("release", release, 204, None),
    ]
    results: dict[str, Any] = {}
    for name, make, ok, seen in phases:
        cpu0, t0 = time.process_time(), time.perf_counter()
        server0, loop0 = _cpu_s(args["server_pid"]), _cpu_s(args["server_pid"], thread=True)
        r = await h2c_load.closed_loop(
            conns, users, args["seconds"], 1.0, make, ok_status=ok, on_answer=seen
        )
        wall = time.perf_counter() - t0
        r["client_cpu"] = (time.process_time() - cpu0) / wall
        # CPU the server spent per request, all its threads and its event loop's thread alone
        # (warm-up included on both sides of the division): steadier than req/s on a shared
        # machine.
        sent = max(r["requests"] * (wall / max(wall - 1.0, 1e-9)), 1.0)  # a phase with none
        r["server_us"] = 1e6 * (_cpu_s(args["server_pid"]) - server0) / sent
        r["loop_us"] = 1e6 * (_cpu_s(args["server_pid"], thread=True) - loop0) / sent
        results[name] = r
    for c in conns:
        c.close()
    return results


def _cpu_s(pid: int, *, thread: bool = False) -> float:
    """CPU seconds (user + system) of a process, or of its main thread only."""
    path = f"/proc/{pid}/task/{pid}/stat" if thread else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        choices=["granian", "hypercorn"],
        default="granian",
        help="HTTP server for both figures ([http] server in the configuration)",
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
            args["server_pid"] = server.pid
            worker = ctx.Process(target=client, args=(port, args, out))
            worker.start()
            results = _result(out, worker, timeout_s=args["seconds"] * 3 + 300)
            worker.join()
            h2load_bare = _h2load(port, args["seconds"], args["connections"], args["streams"])
        finally:
            server.terminate()
            server.join(10)
    bare, update = results["bare"], results["update"]
    rows = [
        ("bare endpoint (ceiling)", bare),
        ("update (charge + grant)", update),
        ("create (open + grant)", results["create"]),
        ("release (final charge)", results["release"]),
    ]
    print(
        f"Nchf over HTTP/2 (h2c) on {args['server']}, {os.cpu_count()} cores, "
        f"{args['connections']} connections x "
        f"{args['streams']} streams, {args['seconds']} s each"
    )
    print(
        "| figure | req/s | p50 ms | p99 ms | errors | client CPU "
        "| server CPU us/req (loop thread) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {100 * r['client_cpu']:.0f}% | "
            f"{r['server_us']:.0f} ({r['loop_us']:.0f}) |"
        )
        for problem in r["conn_errors"]:
            print(f"  connection error: {problem}")
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
        print(json.dumps({**results, "h2load_bare": h2load_bare}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
