"""Gy in one process, no sockets: for profilers (callgrind, perf) that need a repeatable run.

Starts the real `Server` (embedded store, records export on, Nchf off) in a temporary folder,
opens SESSIONS sessions with CCR-I, then sends UPDATES CCR-U frames, WINDOW at a time, each
through what the transport does with a frame: `parse_message` (decode and grammar check),
`GyApplication.handle_now` (engine, ledger; `handle` for what it declines), the durable commit
and `encode_message`. Prints the microseconds per CCR-U of the timed part, which wall-clock
noise makes rough; callgrind gives instructions: run it at two sizes and take the difference
per update, which cancels start-up.

    .venv/bin/python bench/profile_gy.py [--sessions 1000] [--updates 20000] [--window 128]
    valgrind --tool=callgrind --callgrind-out-file=cg.%p .venv/bin/python \
        bench/profile_gy.py --updates 2000
    (and again with --updates 6000; the difference of the totals / 4000 is per CCR-U)

`--engine-only` skips Diameter: it calls `Engine.session_update` directly, the same work less
the protocol (parse, mapping, answer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import tempfile
import time
from pathlib import Path

from bench_diameter import Template
from quotaflow import _native
from quotaflow.config import Config
from quotaflow.diameter import CcRequestType, Message, PeerInfo, build_ccr, encode_message
from quotaflow.diameter.gy import GyService
from quotaflow.diameter.validate import parse_message
from quotaflow.engine.types import ServiceRequest
from quotaflow.server import Server

CLIENT_HOST = "profile.pgw.test"
ORIGIN_STATE = 1


def _ccr(session_id: str, msisdn: str, request_type: int, number: int) -> bytes:
    mscc: dict[str, object] = {"Requested-Service-Unit": {}, "Rating-Group": 10}
    if request_type != CcRequestType.INITIAL:
        mscc["Used-Service-Unit"] = {"CC-Total-Octets": 700_000}
    return encode_message(
        build_ccr(
            session_id=session_id,
            origin_host=CLIENT_HOST,
            origin_realm="profile.test",
            destination_realm="quotaflow.local",
            request_type=request_type,
            request_number=number,
            extra=[
                ("Subscription-Id", {"Subscription-Id-Type": 0, "Subscription-Id-Data": msisdn}),
                ("Multiple-Services-Credit-Control", mscc),
            ],
        )
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run(sessions: int, updates: int, window: int, engine_only: bool) -> float:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config()
        cfg.data_dir = Path(tmp)
        cfg.http_port = _free_port()
        cfg.diameter_port = _free_port()
        cfg.nchf_enabled = False
        cfg.snapshot_every_ops = 10**12
        server = Server(cfg)
        await server.start()
        try:
            return await _drive(server, sessions, updates, window, engine_only)
        finally:
            await server.stop()


async def _drive(
    server: Server, sessions: int, updates: int, window: int, engine_only: bool
) -> float:
    store, engine = server.store, server.engine
    for i in range(sessions):
        store.submit("create_subscriber", f"c{i}", {"id": f"s{i}", "msisdn": f"4670{i:08d}"})
        store.submit(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**15}
        )
    await store.flush()
    services = [s for s in server._stoppers if isinstance(s, GyService)]
    app = services[0].app
    peer = PeerInfo(CLIENT_HOST, "profile.test", (), 0, "profile", frozenset({4}))
    dictionary = None
    ids = [f"{CLIENT_HOST};{ORIGIN_STATE};{i}" for i in range(sessions)]
    for i, sid in enumerate(ids):
        answer = await app.handle(peer, parse_message(_ccr(sid, f"4670{i:08d}", 1, 0), dictionary))
        encode_message(answer)
    # A CCR-U per session, encoded once; each request patches in its CC-Request-Number (as the
    # load generator does), so making frames costs little beside what is measured.
    templates = [Template(_ccr(sid, f"4670{i:08d}", 2, 0)) for i, sid in enumerate(ids)]

    async def window_of(frames: list[bytes]) -> None:
        # As the transport does: the immediate path first (answers held on their barrier),
        # the handler for what it declines.
        held: list[tuple[Message, bytes | None, Message]] = []
        later = []
        barrier = None
        for frame in frames:
            request = parse_message(frame, dictionary)
            done = app.handle_now(peer, request)
            if done is None:
                later.append(app.handle(peer, request))
            else:
                held.append((done[0], done[1], done[3]))
                barrier = done[2] or barrier
        if barrier is not None:
            await barrier
        for answer, encoded, _basis in held:  # the basis: held as the link holds it
            if encoded is None:  # the transport sends the frame handle_now encoded
                encode_message(answer)
        for answer in await asyncio.gather(*later):
            encode_message(answer)

    async def one_engine(k: int) -> None:
        await engine.session_update(
            ids[k % sessions], 1 + k // sessions, [ServiceRequest(10, used_units=700_000)]
        )

    started = time.perf_counter()
    for at in range(0, updates, window):
        end = min(updates, at + window)
        if engine_only:
            await asyncio.gather(*(one_engine(k) for k in range(at, end)))
        else:
            await window_of(
                [templates[k % sessions].frame(k, 1 + k // sessions) for k in range(at, end)]
            )
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sessions", type=int, default=1_000)
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--window", type=int, default=128, help="CCR-Us in flight at once")
    p.add_argument("--engine-only", action="store_true")
    args = p.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    took = runner(run(args.sessions, args.updates, args.window, args.engine_only))
    print(
        f"{args.updates} CCR-U in {took:.3f} s: {took / args.updates * 1e6:.1f} us each "
        f"({_native.MODE})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
