"""Write Diameter messages to a pcap as one TCP connection (fake Ethernet/IPv4/TCP headers), so
that tshark can dissect exactly the bytes the codec produced."""

from __future__ import annotations

import struct
from pathlib import Path

_CLIENT = (bytes([10, 0, 0, 1]), 40000)
_SERVER = (bytes([10, 0, 0, 2]), 3868)
_SYN, _ACK, _PSH = 0x02, 0x10, 0x08


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(from_client: bool, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    (src_ip, src_port), (dst_ip, dst_port) = (
        (_CLIENT, _SERVER) if from_client else (_SERVER, _CLIENT)
    )
    tcp = struct.pack(">HHIIBBHHH", src_port, dst_port, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = src_ip + dst_ip + struct.pack(">BBH", 0, 6, len(tcp) + len(payload))
    tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp + payload)) + tcp[18:]
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
    ethernet = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return ethernet + ip + tcp + payload


def write_pcap(path: Path, messages: list[tuple[bool, bytes]]) -> None:
    """`messages`: (sent by the client?, Diameter frame) in order; one TCP segment each."""
    seq = {True: 1000, False: 5000}
    packets = [
        _packet(True, seq[True] - 1, 0, _SYN, b""),
        _packet(False, seq[False] - 1, seq[True], _SYN | _ACK, b""),
        _packet(True, seq[True], seq[False], _ACK, b""),
    ]
    for from_client, frame in messages:
        packets.append(
            _packet(from_client, seq[from_client], seq[not from_client], _ACK | _PSH, frame)
        )
        seq[from_client] += len(frame)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, 1))
        for index, packet in enumerate(packets):
            out.write(struct.pack("<IIII", 1_800_000_000, index * 1000, len(packet), len(packet)))
            out.write(packet)
