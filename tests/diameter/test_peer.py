"""The sans-I/O peer state machine, driven with bytes only."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from quotaflow.diameter import (
    AllowedPeer,
    AnswerReceived,
    CapabilitiesExchanged,
    CcRequestType,
    ConnectionClosed,
    Message,
    MessageRejected,
    PeerConnection,
    PeerError,
    PeerState,
    RequestReceived,
    Role,
    UnmatchedAnswer,
    build_rar,
    decode_message,
    make_answer,
)
from quotaflow.diameter.messages import build_dwr

from .helpers import CLIENT_HOST, CLIENT_REALM, SESSION_ID, cer, open5gs_like_ccr, server_config

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
REMOTE = ipaddress.IPv4Address("192.0.2.10")


def _answers(data: bytes) -> list[Message]:
    messages = []
    while data:
        length = int.from_bytes(data[1:4], "big")
        messages.append(decode_message(data[:length]))
        data = data[length:]
    return messages


def _open_server(**overrides: object) -> PeerConnection:
    conn = PeerConnection(server_config(**overrides), Role.SERVER, remote_address=REMOTE)
    events = conn.receive_data(cer().encode())
    assert isinstance(events[0], CapabilitiesExchanged)
    conn.data_to_send()
    return conn


def test_cer_accepted() -> None:
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    [event] = conn.receive_data(cer().encode())
    assert isinstance(event, CapabilitiesExchanged)
    assert event.peer.origin_host == CLIENT_HOST and event.peer.application_ids == {4}
    assert conn.state is PeerState.OPEN
    [cea] = _answers(conn.data_to_send())
    assert cea.name == "CEA" and not cea.is_request and not cea.is_error
    assert cea.get("Result-Code") == 2001
    assert cea.avps[0].name == "Result-Code"
    assert cea.get("Origin-Host") == "ocs.quotaflow.local"
    assert cea.get("Origin-Realm") == "quotaflow.local"
    assert cea.get("Auth-Application-Id") == 4
    assert cea.get("Product-Name") == "quotaflow"
    assert cea.find("Host-IP-Address") is not None and cea.find("Vendor-Id") is not None


def test_cer_with_vendor_specific_application_id_is_mirrored() -> None:
    request = cer(applications=())
    request.add("Vendor-Specific-Application-Id", {"Vendor-Id": 10415, "Auth-Application-Id": 4})
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    [event] = conn.receive_data(request.encode())
    assert isinstance(event, CapabilitiesExchanged)
    [cea] = _answers(conn.data_to_send())
    assert cea.get("Vendor-Specific-Application-Id/Vendor-Id") == 10415
    assert cea.get("Vendor-Specific-Application-Id/Auth-Application-Id") == 4


def test_unknown_peer_gets_3010_and_close() -> None:
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    [event] = conn.receive_data(cer("stranger.example").encode())
    assert isinstance(event, ConnectionClosed)
    [cea] = _answers(conn.data_to_send())
    assert cea.get("Result-Code") == 3010 and cea.is_error
    assert conn.state is PeerState.CLOSED


def test_allowed_host_from_wrong_address_is_unknown() -> None:
    config = server_config(allowed_peers=(AllowedPeer(CLIENT_HOST, frozenset({LOOPBACK})),))
    conn = PeerConnection(config, Role.SERVER, remote_address=REMOTE)
    conn.receive_data(cer().encode())
    [cea] = _answers(conn.data_to_send())
    assert cea.get("Result-Code") == 3010


def test_dev_mode_accepts_any_host_from_loopback_only() -> None:
    config = server_config(allowed_peers=(), accept_any_loopback=True)
    local = PeerConnection(config, Role.SERVER, remote_address=LOOPBACK)
    assert isinstance(local.receive_data(cer("anyone").encode())[0], CapabilitiesExchanged)
    remote = PeerConnection(config, Role.SERVER, remote_address=REMOTE)
    assert isinstance(remote.receive_data(cer("anyone").encode())[0], ConnectionClosed)


def test_no_common_application_is_5010() -> None:
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    [event] = conn.receive_data(cer(applications=(16777238,)).encode())
    assert isinstance(event, ConnectionClosed)
    [cea] = _answers(conn.data_to_send())
    assert cea.get("Result-Code") == 5010 and not cea.is_error


def test_relay_application_matches_everything() -> None:
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    [event] = conn.receive_data(cer(applications=(0xFFFFFFFF,)).encode())
    assert isinstance(event, CapabilitiesExchanged)


def test_request_before_cer_is_refused_and_closed() -> None:
    conn = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    events = conn.receive_data(open5gs_like_ccr().encode())
    assert isinstance(events[-1], ConnectionClosed)
    [answer] = _answers(conn.data_to_send())
    assert answer.get("Result-Code") == 3010 and answer.session_id == SESSION_ID


def test_dwr_is_answered() -> None:
    conn = _open_server()
    dwr = build_dwr(CLIENT_HOST, CLIENT_REALM, 7)
    dwr.hop_by_hop, dwr.end_to_end = 11, 22
    assert conn.receive_data(dwr.encode()) == []
    [dwa] = _answers(conn.data_to_send())
    assert dwa.name == "DWA" and dwa.get("Result-Code") == 2001
    assert (dwa.hop_by_hop, dwa.end_to_end) == (11, 22)


def test_dpr_is_answered_then_closed() -> None:
    conn = _open_server()
    dpr = Message.request(
        282,
        0,
        [
            ("Origin-Host", CLIENT_HOST),
            ("Origin-Realm", CLIENT_REALM),
            ("Disconnect-Cause", "REBOOTING"),
        ],
    )
    [event] = conn.receive_data(dpr.encode())
    assert isinstance(event, ConnectionClosed)
    [dpa] = _answers(conn.data_to_send())
    assert dpa.name == "DPA" and dpa.get("Result-Code") == 2001


def test_ccr_is_delivered_and_answer_normalised() -> None:
    conn = _open_server()
    ccr = open5gs_like_ccr()
    ccr.hop_by_hop, ccr.end_to_end = 5, 6
    [event] = conn.receive_data(ccr.encode())
    assert isinstance(event, RequestReceived)
    assert event.request.get("CC-Request-Type") == CcRequestType.INITIAL
    answer = Message(272, 4)
    answer.add("Result-Code", 2001)
    answer.add("Session-Id", SESSION_ID)  # in the wrong place on purpose
    [cca] = _answers(conn.send_answer(event.request, answer))
    assert cca.avps[0].name == "Session-Id"
    assert (cca.hop_by_hop, cca.end_to_end) == (5, 6)
    assert cca.is_proxiable and not cca.is_request
    assert cca.get("Origin-Host") == "ocs.quotaflow.local"


def test_an_answer_encoded_already_goes_out_as_it_is_and_not_after_close() -> None:
    """The Gy path encodes each answer once (kept for retransmissions); the connection sends
    those bytes, after anything it queued itself, and refuses once closed."""
    conn = _open_server()
    ccr = open5gs_like_ccr()
    ccr.hop_by_hop, ccr.end_to_end = 5, 6
    [event] = conn.receive_data(ccr.encode() + build_dwr(CLIENT_HOST, CLIENT_REALM, 7).encode())
    answer = make_answer(event.request, 2001, "ocs.quotaflow.local", "quotaflow.local")
    frame = answer.encode()
    out = conn.send_encoded(frame)
    dwa, cca = _answers(out)
    assert dwa.name == "DWA" and out.endswith(frame)
    assert (cca.hop_by_hop, cca.end_to_end, cca.get("Result-Code")) == (5, 6, 2001)
    conn.connection_lost()
    with pytest.raises(PeerError):
        conn.send_encoded(frame)


def test_partial_frames_one_byte_at_a_time() -> None:
    conn = _open_server()
    data = open5gs_like_ccr().encode() + build_dwr(CLIENT_HOST, CLIENT_REALM, 7).encode()
    events = []
    for index in range(len(data)):
        events += conn.receive_data(data[index : index + 1])
    assert [type(e) for e in events] == [RequestReceived]
    assert [m.name for m in _answers(conn.data_to_send())] == ["DWA"]


def test_several_frames_in_one_read() -> None:
    conn = _open_server()
    events = conn.receive_data(open5gs_like_ccr().encode() * 3)
    assert [type(e) for e in events] == [RequestReceived] * 3


def test_oversized_frame_is_refused_and_closed() -> None:
    conn = _open_server(message_octets_max=1024)
    big = open5gs_like_ccr()
    big.add(
        "Service-Parameter-Info",
        {"Service-Parameter-Type": 1, "Service-Parameter-Value": b"x" * 2000},
    )
    events = conn.receive_data(big.encode()[:100])  # the header is enough to refuse it
    assert isinstance(events[0], MessageRejected) and isinstance(events[-1], ConnectionClosed)
    [answer] = _answers(conn.data_to_send())
    assert answer.get("Result-Code") == 5012
    assert conn.receive_data(b"more") == []


def test_invalid_ccr_gets_error_answer_and_connection_stays_open() -> None:
    conn = _open_server()
    ccr = open5gs_like_ccr()
    unknown = ccr.build("Rating-Group", 1)
    unknown.code, unknown.definition, unknown.value = 4242, None, b"\0\0\0\1"
    ccr.avps.append(unknown)
    [event] = conn.receive_data(ccr.encode())
    assert isinstance(event, MessageRejected) and event.answered
    [cca] = _answers(conn.data_to_send())
    assert cca.avps[0].name == "Session-Id" and cca.session_id == SESSION_ID
    assert cca.get("Result-Code") == 5001 and not cca.is_error
    assert cca.get("Failed-AVP/AVP-0-4242") == b"\0\0\0\1"
    # freeDiameter drops a CCA without these, even an error one.
    assert cca.get("CC-Request-Type") == 1 and cca.get("CC-Request-Number") == 0
    assert cca.get("Auth-Application-Id") == 4
    assert conn.state is PeerState.OPEN


def test_protocol_error_answer_has_e_bit() -> None:
    conn = _open_server()
    data = bytearray(open5gs_like_ccr().encode())
    data[5:8] = (999).to_bytes(3, "big")
    [event] = conn.receive_data(bytes(data))
    assert isinstance(event, MessageRejected)
    [answer] = _answers(conn.data_to_send())
    assert answer.is_error and answer.get("Result-Code") == 3001
    assert answer.command_code == 999


@pytest.mark.parametrize("seed", range(20))
def test_garbage_never_raises(seed: int) -> None:
    rng = random.Random(seed)
    conn = _open_server()
    for _ in range(50):
        conn.receive_data(rng.randbytes(rng.randint(1, 64)))
    conn.data_to_send()
    assert conn.state in (PeerState.OPEN, PeerState.CLOSED)


def test_watchdog_sends_dwr_then_declares_peer_down() -> None:
    conn = _open_server(watchdog_missed_max=2)
    assert conn.on_watchdog_timer() == []  # traffic (the CER) was seen in this period
    assert conn.on_watchdog_timer() == []
    [dwr] = _answers(conn.data_to_send())
    assert dwr.name == "DWR" and dwr.is_request
    assert conn.on_watchdog_timer() == []  # one period missed
    [event] = conn.on_watchdog_timer()
    assert isinstance(event, ConnectionClosed) and "watchdog" in event.reason


def test_watchdog_answer_resets() -> None:
    conn = _open_server()
    conn.on_watchdog_timer()
    conn.on_watchdog_timer()
    [dwr] = _answers(conn.data_to_send())
    dwa = make_answer(dwr, 2001, CLIENT_HOST, CLIENT_REALM)
    assert conn.receive_data(dwa.encode()) == []
    for _ in range(5):
        conn.receive_data(build_dwr(CLIENT_HOST, CLIENT_REALM, 7).encode())
        assert conn.on_watchdog_timer() == []
    assert conn.state is PeerState.OPEN


def test_server_initiated_rar_is_matched_with_its_answer() -> None:
    conn = _open_server()
    rar = build_rar(
        session_id=SESSION_ID,
        origin_host="ocs.quotaflow.local",
        origin_realm="quotaflow.local",
        destination_host=CLIENT_HOST,
        destination_realm=CLIENT_REALM,
    )
    [sent] = _answers(conn.send(rar))
    assert sent.hop_by_hop == rar.hop_by_hop != 0 and sent.name == "RAR"
    stray = make_answer(sent, 2001, CLIENT_HOST, CLIENT_REALM)
    stray.hop_by_hop ^= 0xFFFF
    assert isinstance(conn.receive_data(stray.encode())[0], UnmatchedAnswer)
    raa = make_answer(sent, 2001, CLIENT_HOST, CLIENT_REALM)
    [event] = conn.receive_data(raa.encode())
    assert isinstance(event, AnswerReceived)
    assert event.request is rar and event.answer.get("Result-Code") == 2001
    assert conn.pending_requests == 0


def test_pending_request_limit() -> None:
    conn = _open_server(pending_requests_max=2)
    for _ in range(2):
        conn.send(
            build_rar(
                session_id=SESSION_ID,
                origin_host="o",
                origin_realm="r",
                destination_host=CLIENT_HOST,
                destination_realm=CLIENT_REALM,
            )
        )
    with pytest.raises(PeerError):
        conn.send(
            build_rar(
                session_id=SESSION_ID,
                origin_host="o",
                origin_realm="r",
                destination_host=CLIENT_HOST,
                destination_realm=CLIENT_REALM,
            )
        )


def test_client_and_server_talk_through_memory() -> None:
    client = PeerConnection(
        server_config(origin_host=CLIENT_HOST, origin_realm=CLIENT_REALM), Role.CLIENT
    )
    server = PeerConnection(server_config(), Role.SERVER, remote_address=LOOPBACK)
    server_events = server.receive_data(client.initiate())
    assert isinstance(server_events[0], CapabilitiesExchanged)
    [opened] = client.receive_data(server.data_to_send())
    assert (
        isinstance(opened, CapabilitiesExchanged)
        and opened.peer.origin_host == "ocs.quotaflow.local"
    )
    ccr = open5gs_like_ccr()
    [request] = server.receive_data(client.send(ccr))
    assert isinstance(request, RequestReceived)
    answer = make_answer(request.request, 2001, "ocs.quotaflow.local", "quotaflow.local")
    [got] = client.receive_data(server.send_answer(request.request, answer))
    assert isinstance(got, AnswerReceived) and got.request is ccr
    [closed] = server.receive_data(client.disconnect())
    assert isinstance(closed, ConnectionClosed)
    [done] = client.receive_data(server.data_to_send())
    assert isinstance(done, ConnectionClosed) and client.state is PeerState.CLOSED


def test_client_refused_by_cea() -> None:
    client = PeerConnection(server_config(origin_host="stranger", origin_realm="x"), Role.CLIENT)
    server = PeerConnection(server_config(), Role.SERVER, remote_address=REMOTE)
    server.receive_data(client.initiate())
    [event] = client.receive_data(server.data_to_send())
    assert isinstance(event, ConnectionClosed) and "3010" in event.reason


def test_wrong_version_closes_stream() -> None:
    conn = _open_server()
    data = bytearray(open5gs_like_ccr().encode())
    data[0] = 2
    events = conn.receive_data(bytes(data))
    assert isinstance(events[-1], ConnectionClosed)
    [answer] = _answers(conn.data_to_send())
    assert answer.get("Result-Code") == 5011


def test_too_short_length_closes_stream() -> None:
    conn = _open_server()
    events = conn.receive_data(struct.pack(">I", (1 << 24) | 8) + b"\0" * 16)
    assert isinstance(events[-1], ConnectionClosed)


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_frames_split_across_reads(chunk: int) -> None:
    """Frames cut anywhere by TCP come out whole and in order; a partial frame waits."""
    conn = _open_server()
    frames = [open5gs_like_ccr(CcRequestType.UPDATE, n).encode() for n in range(3)]
    stream = b"".join(frames)
    events = []
    for start in range(0, len(stream), chunk):
        events += conn.receive_data(stream[start : start + chunk])
    numbers = [e.request.get("CC-Request-Number") for e in events if isinstance(e, RequestReceived)]
    assert numbers == [0, 1, 2] and len(events) == 3
    # Half a frame: nothing yet; the rest completes it.
    half = len(frames[0]) // 2
    assert conn.receive_data(frames[0][:half]) == []
    [event] = conn.receive_data(frames[0][half:])
    assert isinstance(event, RequestReceived)
