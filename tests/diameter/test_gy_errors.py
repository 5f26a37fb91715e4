"""Requests the Gy server must refuse, each with the right Result-Code, and a server that stays
up through malformed frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.diameter import (
    Avp,
    CcRequestType,
    Message,
    PeerConfig,
    PeerConnection,
    Role,
    decode_header,
)
from quotaflow.diameter.codec import salvage_avps
from quotaflow.diameter.constants import AVP_FLAG_MANDATORY
from quotaflow.ledger import Unit

from .test_gy_support import (
    CLIENT_HOST,
    CLIENT_REALM,
    MB,
    GyEnv,
    ccr,
    connect,
    gy_env,
    mscc,
    msccs,
)

pytestmark = pytest.mark.timeout(30)

INIT = CcRequestType.INITIAL


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GyEnv]:
    async with gy_env(tmp_path) as env:
        await env.subscriber(octets=100 * MB)
        yield env


async def test_missing_avp_is_5005_with_the_required_avps_echoed(env: GyEnv) -> None:
    client = env.client
    request = ccr(client, client.new_session_id(), INIT, 0, mscc(10, requested={}))
    request.avps = [a for a in request.avps if a.name != "Service-Context-Id"]
    cca = await client.request(request)
    assert cca.get("Result-Code") == 5005
    assert cca.find("Failed-AVP/Service-Context-Id") is not None
    assert cca.avps[0].name == "Session-Id"
    assert (cca.get("CC-Request-Type"), cca.get("CC-Request-Number")) == (INIT, 0)


async def test_unknown_mandatory_avp_is_5001(env: GyEnv) -> None:
    client = env.client
    request = ccr(client, client.new_session_id(), INIT, 0, mscc(10, requested={}))
    request.avps.append(Avp(65_000, b"?", 0, AVP_FLAG_MANDATORY))
    cca = await client.request(request)
    assert cca.get("Result-Code") == 5001
    assert cca.find("Failed-AVP") is not None


async def test_invalid_values_are_5004(env: GyEnv) -> None:
    client = env.client
    same_group_twice = ccr(
        client, client.new_session_id(), INIT, 0, mscc(10, requested={}), mscc(10, requested={})
    )
    assert (await client.request(same_group_twice)).get("Result-Code") == 5004
    bad_type = ccr(client, client.new_session_id(), INIT, 0)
    bad_type.set("CC-Request-Type", 9)
    # Our client would refuse the answer (it echoes the 9 freeDiameter needs): read it raw.
    [answer] = await raw_exchange(env.port, [bad_type])
    assert answer.get("Result-Code") == 5004 and answer.get("CC-Request-Type") == 9
    negative_money = ccr(
        client,
        client.new_session_id(),
        INIT,
        0,
        mscc(10, requested={"CC-Money": {"Unit-Value": {"Value-Digits": -5}}}),
    )
    answer = await client.request(negative_money)
    assert answer.get("Result-Code") == 5004
    assert answer.find("Failed-AVP/CC-Money") is not None
    assert env.reserved("alice") == 0


async def test_foreign_currency_is_rating_failed_for_that_service(env: GyEnv) -> None:
    await env.topup("alice", Unit.MONEY, 10_000_000)
    client = env.client
    dollars = {"CC-Money": {"Unit-Value": {"Value-Digits": 5}, "Currency-Code": 840}}
    euros = {"CC-Money": {"Unit-Value": {"Value-Digits": 25, "Exponent": -1}, "Currency-Code": 978}}
    cca = await client.request(
        ccr(
            client,
            client.new_session_id(),
            INIT,
            0,
            mscc(1, requested=dollars),
            mscc(2, requested=euros),
        )
    )
    assert cca.get("Result-Code") == 2001
    first, second = msccs(cca)
    assert first["Result-Code"] == 5031 and "Granted-Service-Unit" not in first
    assert second["Result-Code"] == 2001
    assert second["Granted-Service-Unit/CC-Money/Unit-Value/Value-Digits"] == 25
    assert second["Granted-Service-Unit/CC-Money/Unit-Value/Exponent"] == -1
    assert second["Granted-Service-Unit/CC-Money/Currency-Code"] == 978
    assert env.reserved("alice") == 2_500_000


async def test_too_many_services_is_5006(env: GyEnv) -> None:
    client = env.client
    services = [mscc(group, requested={}) for group in range(65)]
    cca = await client.request(ccr(client, client.new_session_id(), INIT, 0, *services))
    assert cca.get("Result-Code") == 5006 and env.reserved("alice") == 0


async def raw_exchange(port: int, requests: list[Message | bytes]) -> list[Message]:
    """Over a raw connection (CER/CEA by a sans-I/O PeerConnection), send each request or
    frame and read one answer, decoded without validation."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    peer = PeerConnection(
        PeerConfig(origin_host="raw.gy.test", origin_realm=CLIENT_REALM), Role.CLIENT
    )
    answers: list[Message] = []
    try:
        writer.write(peer.initiate())
        peer.receive_data(await _frame(reader))
        for request in requests:
            writer.write(peer.send(request) if isinstance(request, Message) else request)
            answers.append(_lenient(await _frame(reader)))
    finally:
        writer.close()
    return answers


def _lenient(frame: bytes) -> Message:
    """Decoded without any check: an answer may echo a value the dictionary refuses."""
    header = decode_header(frame)
    return Message(
        header.command_code,
        header.application_id,
        flags=header.flags,
        hop_by_hop=header.hop_by_hop,
        end_to_end=header.end_to_end,
        avps=salvage_avps(frame),
    )


async def _frame(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(4), 5)
    rest = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[1:4], "big") - 4), 5)
    return head + rest


async def test_malformed_frames_never_take_the_server_down(env: GyEnv) -> None:
    """A CCR whose first AVP claims more octets than the frame has, then a wrong version."""
    request = ccr(env.client, "raw.gy.test;1;1", INIT, 0, mscc(10, requested={}))
    request.hop_by_hop, request.end_to_end = 7, 7
    frame = bytearray(request.encode())
    frame[20 + 5 : 20 + 8] = (4096).to_bytes(3, "big")  # Session-Id "is" 4 KB long
    [answer] = await raw_exchange(env.port, [bytes(frame)])
    assert answer.get("Result-Code") == 5014 and answer.hop_by_hop == 7
    # A wrong version: answered from the header alone, then the connection is closed.
    [answer] = await raw_exchange(env.port, [b"\x07" + b"\xff" * 40])
    assert answer.get("Result-Code") == 5011

    # The server still serves everyone else, old and new connections.
    client = env.client
    cca = await client.request(
        ccr(client, client.new_session_id(), INIT, 0, mscc(10, requested={}))
    )
    assert cca.get("Result-Code") == 2001
    fresh = await connect(env.port)
    cca = await fresh.request(ccr(fresh, fresh.new_session_id(), INIT, 0, mscc(10, requested={})))
    assert cca.get("Result-Code") == 2001
    await fresh.close()


async def test_a_relay_in_another_realm_is_served(env: GyEnv) -> None:
    """Destination-Realm is never checked: Open5GS sends its own."""
    client = env.client
    request = client.ccr(
        client.new_session_id(),
        INIT,
        0,
        destination_realm="elsewhere.example",
        extra=[
            ("Destination-Host", "some.other.host"),
            ("Subscription-Id", {"Subscription-Id-Type": 0, "Subscription-Id-Data": "46700000001"}),
            mscc(10, requested={}),
        ],
    )
    cca = await client.request(request)
    assert cca.get("Result-Code") == 2001
    assert cca.get("Origin-Host") == "ocs.quotaflow.local"
    assert CLIENT_HOST  # the session is the client's, whatever realm it named
