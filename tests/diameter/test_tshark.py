"""tshark dissects a whole session produced by our codec: no malformed packet, no warning."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

from quotaflow.diameter import (
    CcRequestType,
    Message,
    PeerConnection,
    RequestReceived,
    Role,
    decode_message,
)

from .helpers import CLIENT_HOST, CLIENT_REALM, open5gs_like_ccr, server_config
from .pcap import write_pcap

TSHARK = shutil.which("tshark")
# Expert infos we accept, with the reason. Matched as substrings of the expert message.
ALLOWED_EXPERT_MESSAGES = {
    "Data is empty": "an empty Requested-Service-Unit is how RFC 4006 asks for 'any quota'",
}


def _cca(request: Message, server: PeerConnection) -> Message:
    answer = server.answer(request, 2001)
    if request.get("CC-Request-Type") != CcRequestType.TERMINATION:
        answer.add(
            "Multiple-Services-Credit-Control",
            {
                "Granted-Service-Unit": {"CC-Total-Octets": 1_000_000, "CC-Time": 3600},
                "Rating-Group": 10,
                "Validity-Time": 300,
                "Result-Code": 2001,
                "Volume-Quota-Threshold": 100_000,
                "Final-Unit-Indication": {
                    "Final-Unit-Action": "REDIRECT",
                    "Redirect-Server": {
                        "Redirect-Address-Type": "URL",
                        "Redirect-Server-Address": "http://topup.example/",
                    },
                },
            },
        )
    return answer


def _session() -> list[tuple[bool, bytes]]:
    """A full exchange between a client and a server PeerConnection, as (from client, bytes)."""
    client = PeerConnection(
        server_config(origin_host=CLIENT_HOST, origin_realm=CLIENT_REALM), Role.CLIENT
    )
    server = PeerConnection(server_config(), Role.SERVER)
    wire: list[tuple[bool, bytes]] = []

    def exchange(data: bytes) -> None:
        wire.append((True, data))
        reply = b""
        for event in server.receive_data(data):
            if isinstance(event, RequestReceived):
                reply += server.send(_cca(event.request, server))
        reply += server.data_to_send()
        wire.append((False, reply))
        client.receive_data(reply)

    exchange(client.initiate())
    for request_type, number, used in [
        (CcRequestType.INITIAL, 0, 0),
        (CcRequestType.UPDATE, 1, 700_000),
        (CcRequestType.TERMINATION, 2, 123_456),
    ]:
        exchange(client.send(open5gs_like_ccr(request_type, number, used_octets=used)))
    client.on_watchdog_timer()
    client.on_watchdog_timer()
    exchange(client.data_to_send())  # DWR / DWA
    exchange(client.disconnect())  # DPR / DPA
    return wire


def test_session_shape() -> None:
    names = [decode_message(data).name for _, data in _session()]
    assert names == ["CER", "CEA"] + ["CCR", "CCA"] * 3 + ["DWR", "DWA", "DPR", "DPA"]


def test_tshark_finds_nothing_wrong(tmp_path: Path) -> None:
    assert TSHARK is not None, "tshark is missing: apt-get install tshark"
    pcap = tmp_path / "session.pcap"
    write_pcap(pcap, _session())
    listing = subprocess.run(
        [
            TSHARK,
            "-r",
            str(pcap),
            "-Y",
            "diameter",
            "-T",
            "fields",
            "-e",
            "diameter.cmd.code",
            "-e",
            "diameter.flags.request",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\n")
    assert len([line for line in listing if line.strip()]) == 12, listing
    flagged = subprocess.run(
        [
            TSHARK,
            "-r",
            str(pcap),
            "-Y",
            "_ws.malformed || _ws.expert.severity >= warning",
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.expert.message",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    problems = [
        line
        for line in flagged.splitlines()
        if line.strip() and not _only_allowed(line.split("\t", 1)[-1])
    ]
    assert not problems, flagged


def _only_allowed(messages: str) -> bool:
    return all(
        any(allowed in message for allowed in ALLOWED_EXPERT_MESSAGES)
        for message in messages.split(",")
        if message
    )


def test_tshark_check_catches_a_broken_avp(tmp_path: Path) -> None:
    """Negative control: the same check flags a CC-Request-Number with a wrong length."""
    assert TSHARK is not None, "tshark is missing: apt-get install tshark"
    wire = _session()
    frame = bytearray(wire[2][1])
    offset = 20
    while struct.unpack_from(">I", frame, offset)[0] != 415:
        offset += (struct.unpack_from(">I", frame, offset + 4)[0] & 0xFFFFFF) + 3 & ~3
    word = struct.unpack_from(">I", frame, offset + 4)[0]
    struct.pack_into(">I", frame, offset + 4, (word & 0xFF000000) | 13)
    wire[2] = (True, bytes(frame))
    pcap = tmp_path / "broken.pcap"
    write_pcap(pcap, wire)
    flagged = subprocess.run(
        [
            TSHARK,
            "-r",
            str(pcap),
            "-Y",
            "_ws.malformed || _ws.expert.severity >= warning",
            "-T",
            "fields",
            "-e",
            "_ws.expert.message",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "Bad Unsigned32 Length" in flagged
