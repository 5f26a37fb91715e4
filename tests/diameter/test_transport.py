"""The asyncio server and client over real TCP on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from quotaflow.diameter import (
    AllowedPeer,
    CcRequestType,
    DiameterClient,
    DiameterServer,
    LinkClosedError,
    Message,
    PeerInfo,
    PeerNotConnectedError,
    build_rar,
    decode_message,
    make_answer,
    serve_diameter,
)

from .helpers import CLIENT_HOST, CLIENT_REALM, cer, open5gs_like_ccr

pytestmark = pytest.mark.timeout(30)


async def echo_handler(peer: PeerInfo, request: Message) -> Message:
    """Grants 1 MB per MSCC; fails on CC-Request-Number 9999 to test the error path."""
    if request.get("CC-Request-Number") == 9999:
        raise RuntimeError("handler bug")
    answer = make_answer(request, 2001, "ignored.by.normalisation", "quotaflow.local")
    for _ in request.find_all("Multiple-Services-Credit-Control"):
        answer.add(
            "Multiple-Services-Credit-Control",
            {
                "Granted-Service-Unit": {"CC-Total-Octets": 1_000_000},
                "Result-Code": 2001,
                "Validity-Time": 300,
            },
        )
    return answer


@pytest.fixture
async def server() -> AsyncIterator[DiameterServer]:
    server = await serve_diameter(
        echo_handler, "127.0.0.1", 0, allowed_peers=[AllowedPeer(CLIENT_HOST)]
    )
    yield server
    await server.close(grace_s=0.2)


async def _client(server: DiameterServer, host: str = CLIENT_HOST) -> DiameterClient:
    return await DiameterClient.connect(
        "127.0.0.1", server.port, origin_host=host, origin_realm=CLIENT_REALM
    )


async def test_full_session_over_tcp(server: DiameterServer) -> None:
    client = await _client(server)
    assert client.server.origin_host == "ocs.quotaflow.local"
    assert [p.origin_host for p in server.connected_peers()] == [CLIENT_HOST]
    for request_type, number in [
        (CcRequestType.INITIAL, 0),
        (CcRequestType.UPDATE, 1),
        (CcRequestType.TERMINATION, 2),
    ]:
        ccr = open5gs_like_ccr(request_type, number, used_octets=500 * number)
        cca = await client.request(ccr)
        assert cca.avps[0].name == "Session-Id" and cca.session_id == ccr.session_id
        assert (cca.hop_by_hop, cca.end_to_end) == (ccr.hop_by_hop, ccr.end_to_end)
        assert cca.get("Result-Code") == 2001
        assert cca.get("Origin-Host") == "ignored.by.normalisation"
        assert cca.get("CC-Request-Number") == number
        if request_type != CcRequestType.TERMINATION:
            granted = "Multiple-Services-Credit-Control/Granted-Service-Unit/CC-Total-Octets"
            assert cca.get(granted) == 1_000_000
    await client.close()


async def test_pipelined_requests(server: DiameterServer) -> None:
    client = await _client(server)
    futures = [client.send(open5gs_like_ccr(CcRequestType.UPDATE, n)) for n in range(200)]
    answers = await asyncio.gather(*futures)
    assert [a.get("CC-Request-Number") for a in answers] == list(range(200))
    await client.close()


async def test_handler_failure_answers_5012(server: DiameterServer) -> None:
    client = await _client(server)
    cca = await client.request(open5gs_like_ccr(CcRequestType.UPDATE, 9999))
    assert cca.get("Result-Code") == 5012
    assert cca.get("CC-Request-Number") == 9999  # still a well-formed CCA
    await client.close()


async def test_server_sends_rar_and_gets_raa(server: DiameterServer) -> None:
    received: list[Message] = []

    async def on_request(peer: PeerInfo, request: Message) -> Message:
        received.append(request)
        return make_answer(request, 2001, CLIENT_HOST, CLIENT_REALM)

    client = await DiameterClient.connect(
        "127.0.0.1",
        server.port,
        origin_host=CLIENT_HOST,
        origin_realm=CLIENT_REALM,
        request_handler=on_request,
    )
    rar = build_rar(
        session_id="s;1;2",
        origin_host="ocs.quotaflow.local",
        origin_realm="quotaflow.local",
        destination_host=CLIENT_HOST,
        destination_realm=CLIENT_REALM,
    )
    raa = await server.send_request(CLIENT_HOST.upper(), rar)
    assert raa.get("Result-Code") == 2001 and raa.session_id == "s;1;2"
    assert received[0].name == "RAR"
    with pytest.raises(PeerNotConnectedError):
        await server.send_request("nobody.example", rar)
    await client.close()


async def test_unknown_peer_is_refused(server: DiameterServer) -> None:
    with pytest.raises(LinkClosedError):
        await _client(server, host="stranger.example")
    assert server.connected_peers() == []


async def test_duplicate_connection_replaces_the_old_one(server: DiameterServer) -> None:
    first = await _client(server)
    second = await _client(server)
    await asyncio.sleep(0.05)
    assert not first.is_open and second.is_open
    assert len(server.connected_peers()) == 1
    cca = await second.request(open5gs_like_ccr())
    assert cca.get("Result-Code") == 2001
    await second.close()


async def test_garbage_connection_does_not_hurt_the_server(server: DiameterServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed on us
    writer.close()
    client = await _client(server)
    assert (await client.request(open5gs_like_ccr())).get("Result-Code") == 2001
    await client.close()


async def test_server_close_sends_dpr(server: DiameterServer) -> None:
    client = await _client(server)
    await server.close(grace_s=1.0)
    await asyncio.sleep(0.05)
    assert not client.is_open


async def test_dev_mode_accepts_any_loopback_peer() -> None:
    server = await serve_diameter(echo_handler, "127.0.0.1", 0, accept_any_loopback=True)
    try:
        client = await _client(server, host="whoever.example")
        assert (await client.request(open5gs_like_ccr())).get("Result-Code") == 2001
        await client.close()
    finally:
        await server.close(grace_s=0.2)


async def test_peer_opened_observers_given_to_serve_diameter_are_in_place_before_it_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Observers given to serve_diameter are registered before the server listens, see the
    first peer's CER, and one that fails does not keep the peer out or the others from being
    told."""
    seen: list[tuple[str, int]] = []
    observers_at_listen: list[int] = []
    listen = DiameterServer.start

    async def start(self: DiameterServer, host: str | None, port: int) -> None:
        observers_at_listen.append(len(self.peer_opened))
        await listen(self, host, port)

    monkeypatch.setattr(DiameterServer, "start", start)

    def broken(peer: PeerInfo) -> None:
        raise RuntimeError("observer bug")

    server = await serve_diameter(
        echo_handler,
        "127.0.0.1",
        0,
        accept_any_loopback=True,
        peer_opened=(broken, lambda peer: seen.append((peer.origin_host, peer.origin_state_id))),
    )
    assert observers_at_listen == [2]
    try:
        client = await DiameterClient.connect(
            "127.0.0.1",
            server.port,
            origin_host="first.example",
            origin_realm=CLIENT_REALM,
            origin_state_id=7,
        )
        assert seen == [("first.example", 7)]
        assert (await client.request(open5gs_like_ccr())).get("Result-Code") == 2001
        await client.close()
    finally:
        await server.close(grace_s=0.2)


def test_session_under_uvloop() -> None:
    """uvloop transports are not asyncio.Transport subclasses: the shell must not care."""
    import uvloop

    async def main() -> None:
        server = await serve_diameter(
            echo_handler, "127.0.0.1", 0, allowed_peers=[AllowedPeer(CLIENT_HOST)]
        )
        client = await _client(server)
        answers = await asyncio.gather(*[client.send(open5gs_like_ccr(2, n)) for n in range(50)])
        assert all(a.get("Result-Code") == 2001 for a in answers)
        await client.close()
        await server.close(grace_s=0.2)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


class _RecordingTransport:
    """Stands in for the socket of one server-side connection; keeps each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 3868 if name == "sockname" else 40000)

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _frames(data: bytes) -> list[Message]:
    found = []
    while data:
        length = int.from_bytes(data[1:4], "big")
        found.append(decode_message(data[:length]))
        data = data[length:]
    return found


async def test_answers_ready_together_leave_in_one_write(server: DiameterServer) -> None:
    """Answers completed in the same loop iteration are written with one transport.write,
    and none is held back: all 20 arrive, each answering its own request."""
    transport = _RecordingTransport()
    link = server._new_link()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.data_received(cer().encode())
    await asyncio.sleep(0)
    assert [m.name for m in _frames(b"".join(transport.writes))] == ["CEA"]
    transport.writes.clear()
    requests = [open5gs_like_ccr(CcRequestType.UPDATE, n) for n in range(20)]
    for hop, request in enumerate(requests, start=100):
        request.hop_by_hop = request.end_to_end = hop
    link.data_received(b"".join(r.encode() for r in requests))
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(transport.writes) == 1
    answers = _frames(transport.writes[0])
    assert [a.hop_by_hop for a in answers] == list(range(100, 120))
    assert [a.get("CC-Request-Number") for a in answers] == list(range(20))
    link.abort("test over")


async def test_an_answer_in_the_tick_of_the_deadline_is_not_lost() -> None:
    """The answer is set, and the deadline passes, in the same loop iteration: it counts."""
    from quotaflow.diameter._link import answer_within

    loop = asyncio.get_running_loop()
    future: asyncio.Future[Message] = loop.create_future()
    answer = Message(272, 4)
    loop.call_soon(future.set_result, answer)  # before the timeout's own call_soon below
    assert await answer_within(future, 0) is answer
    late: asyncio.Future[Message] = loop.create_future()
    with pytest.raises(TimeoutError):
        await answer_within(late, 0.01)
    assert not late.cancelled()  # the wait ended, not the request
