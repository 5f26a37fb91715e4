"""Mutated frames thrown at a live server: it answers or closes, never falls over or miscounts."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, decode_header

from .helpers import cer, open5gs_like_ccr
from .test_gy_support import e164, gy_env, msccs

pytestmark = pytest.mark.timeout(120)
FRAMES = 400


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    kind = rng.randrange(5)
    if kind == 0:  # flip bytes anywhere, the header included
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # flip bytes in the AVPs only, so the frame still parses as a frame
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(20, len(data))] = rng.randrange(256)
    elif kind == 2:  # cut the frame short but keep the header's length: the stream must cope
        data = data[: rng.randrange(1, len(data))]
    elif kind == 3:  # an AVP length that lies
        pos = rng.randrange(20, len(data) - 8)
        data[pos + 5 : pos + 8] = rng.randrange(1 << 24).to_bytes(3, "big")
    else:  # garbage of a plausible size
        data = bytearray(rng.randbytes(rng.randint(1, 200)))
    return bytes(data)


async def _drain(reader: asyncio.StreamReader) -> int:
    """Read answers until the server is quiet or closes; returns how many frames came back."""
    frames = 0
    with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        while True:
            header = await asyncio.wait_for(reader.readexactly(20), 0.2)
            length = decode_header(header).length
            await asyncio.wait_for(reader.readexactly(length - 20), 0.2)
            frames += 1
    return frames


async def test_mutated_frames_never_take_the_server_down(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    async with gy_env(tmp_path) as env:
        sid = await env.subscriber(octets=100_000_000)
        before = env.amount(sid)
        ccr = open5gs_like_ccr(CcRequestType.INITIAL, 0)
        ccr.add(*e164())
        frame = ccr.encode()
        hello = cer("fuzz.test.example").encode()
        sent = answered = connections = 0
        while sent < FRAMES:
            reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
            connections += 1
            writer.write(hello)
            await writer.drain()
            for _ in range(20):
                writer.write(_mutate(rng, frame))
                sent += 1
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            answered += await _drain(reader)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert connections >= FRAMES // 20 and answered > 0
        # Still serving: a clean session on the original connection works end to end.
        clean = open5gs_like_ccr(CcRequestType.INITIAL, 0)
        clean.set("Session-Id", "after-the-fuzz;1")
        clean.add(*e164())
        answer = await env.client.request(clean)
        assert answer.get("Result-Code") == 2001
        assert msccs(answer)[0]["Result-Code"] == 2001
        # Nothing was charged by the garbage, and the ledger is consistent.
        env.server.store.ledger.check_invariants()
        assert env.amount(sid) == before
