"""tshark dissects a whole Gy exchange with the real server: CER, CCR-I/U/T with several rating
groups, a final unit indication, a RAR after a top-up, events, refusals, DPR. The bytes are
captured by a TCP proxy between the client and the server and written as a pcap."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, decode_message
from quotaflow.ledger import Unit
from tests.conftest import free_port

from .fd_relay import require
from .helpers import open5gs_like_ccr
from .pcap import write_pcap
from .test_gy_support import MB, ccr, gy_client_env, gy_server, mscc

pytestmark = pytest.mark.timeout(60)

INIT, UPD, TERM = CcRequestType.INITIAL, CcRequestType.UPDATE, CcRequestType.TERMINATION
EVENT = CcRequestType.EVENT
# Expert infos accepted, with the reason (matched as substrings of the expert message).
ALLOWED_EXPERT_MESSAGES = {
    "Data is empty": "an empty Requested-Service-Unit is how RFC 4006 asks for 'any quota'",
}
Wire = list[tuple[bool, bytes]]


@contextlib.asynccontextmanager
async def capturing_proxy(target_port: int) -> AsyncIterator[tuple[int, Wire]]:
    """A TCP proxy to 127.0.0.1:target_port recording each Diameter frame as (from client,
    bytes), in the order the proxy saw them complete."""
    wire: Wire = []
    pumps: set[asyncio.Task[None]] = set()

    async def pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool
    ) -> None:
        buffer = b""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= int.from_bytes(buffer[1:4], "big"):
                    size = int.from_bytes(buffer[1:4], "big")
                    wire.append((from_client, buffer[:size]))
                    buffer = buffer[size:]
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (pump(reader, up_writer, True), pump(up_reader, writer, False)):
            pumps.add(asyncio.create_task(task))

    port = free_port()
    proxy = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield port, wire
    finally:
        proxy.close()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _session(tmp_path: Path) -> Wire:
    async with (
        gy_server(tmp_path) as (server, api),
        capturing_proxy(server.cfg.diameter_port) as (port, wire),
    ):
        async with gy_client_env(server, api, port) as env:
            await env.subscriber(octets=15 * MB)
            await env.topup("alice", Unit.SECONDS, 1_000)
            await env.topup("alice", Unit.EVENTS, 3)
            client, sid = env.client, env.client.new_session_id()
            both = [mscc(10, requested={}), mscc(20, requested={"CC-Time": 0})]
            await client.request(ccr(client, sid, INIT, 0, *both))
            used = {"CC-Total-Octets": 9 * MB, "CC-Input-Octets": 4 * MB, "CC-Time": 30}
            await client.request(
                ccr(client, sid, UPD, 1, mscc(10, requested={}, used=used))
            )  # final units
            await env.topup("alice", Unit.OCTETS, 5 * MB)  # a RAR, answered by the client
            await asyncio.wait_for(env.received.get(), 5)
            await client.request(
                ccr(
                    client,
                    sid,
                    TERM,
                    2,
                    mscc(10, used={"CC-Total-Octets": MB}),
                    mscc(20, used={"CC-Time": 40}),
                    ("Termination-Cause", "DIAMETER_LOGOUT"),
                )
            )
            for action, units in [
                ("DIRECT_DEBITING", {"CC-Service-Specific-Units": 2}),
                ("PRICE_ENQUIRY", {"CC-Time": 60}),
                ("CHECK_BALANCE", {"CC-Total-Octets": MB}),
                ("DIRECT_DEBITING", {"CC-Total-Octets": 500 * MB}),  # 4012
            ]:
                await client.request(
                    ccr(
                        client,
                        client.new_session_id(),
                        EVENT,
                        0,
                        ("Requested-Action", action),
                        ("Requested-Service-Unit", units),
                    )
                )
            await client.request(ccr(client, client.new_session_id(), INIT, 0, subscription=[]))
            await client.request(open5gs_like_ccr(INIT, 0))  # 5030: nobody has that number
        await asyncio.sleep(0.1)  # the DPA on its way through the proxy
    return list(wire)


async def test_tshark_finds_nothing_wrong(tmp_path: Path) -> None:
    tshark = require("tshark", "tshark")
    wire = await _session(tmp_path)
    names = [decode_message(frame).name for _, frame in wire]
    for expected in ("CER", "CEA", "CCR", "CCA", "RAR", "RAA", "DPR", "DPA"):
        assert expected in names, names
    assert names.count("CCA") == 9
    pcap = tmp_path / "gy.pcap"
    write_pcap(pcap, wire)
    listing = _tshark(tshark, pcap, "diameter", "diameter.cmd.code")
    assert len([line for line in listing.splitlines() if line.strip()]) == len(wire)
    flagged = _tshark(
        tshark,
        pcap,
        "_ws.malformed || _ws.expert.severity >= warning",
        "frame.number",
        "_ws.expert.message",
    )
    problems = [
        line
        for line in flagged.splitlines()
        if line.strip() and not _only_allowed(line.split("\t", 1)[-1])
    ]
    assert not problems, flagged


def _tshark(tshark: str, pcap: Path, display_filter: str, *fields: str) -> str:
    command = [tshark, "-r", str(pcap), "-Y", display_filter, "-T", "fields"]
    for name in fields:
        command += ["-e", name]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def _only_allowed(messages: str) -> bool:
    return all(
        any(allowed in message for allowed in ALLOWED_EXPERT_MESSAGES)
        for message in messages.split(",")
        if message
    )
