"""Real interop: Debian's freeDiameterd relays between the test client and quotaflow.

freeDiameter decodes every message with its own dictionaries and silently drops an answer that
breaks them, so each flow working end to end, with nothing logged at level ERROR by
dbg_msg_dumps (no "Invalid length AVP", no parsing error, no drop), is the check.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, PeerConfig, PeerConnection, Role, build_ccr
from quotaflow.ledger import Unit

from .fd_relay import Relay, freediameter_relay
from .helpers import CLIENT_HOST as OPEN5GS_HOST
from .helpers import open5gs_like_ccr
from .test_gy_support import (
    CLIENT_HOST,
    CLIENT_REALM,
    MB,
    GyEnv,
    ccr,
    gy_client_env,
    gy_server,
    mscc,
    msccs,
)

pytestmark = pytest.mark.timeout(60)

INIT, UPD, TERM = CcRequestType.INITIAL, CcRequestType.UPDATE, CcRequestType.TERMINATION
EVENT = CcRequestType.EVENT
SERVER_HOST = "ocs.quotaflow.local"
WAIT_S = 10.0


@pytest.fixture
async def relayed(tmp_path: Path) -> AsyncIterator[tuple[GyEnv, Relay]]:
    """quotaflow, freeDiameterd connected to it, and a client connected to freeDiameterd."""
    async with (
        gy_server(tmp_path) as (server, api),
        freediameter_relay(
            tmp_path / "fd",
            server_port=server.cfg.diameter_port,
            clients=[CLIENT_HOST, OPEN5GS_HOST],
        ) as relay,
        gy_client_env(server, api, relay.port) as env,
    ):
        assert env.client.server.origin_host == "relay.fd.test"
        yield env, relay
        problems = relay.problems()
        assert not problems, "\n".join(problems)


async def test_session_through_freediameter(relayed: tuple[GyEnv, Relay]) -> None:
    env, relay = relayed
    await env.subscriber(octets=100 * MB)
    await env.topup("alice", Unit.SECONDS, 1_000)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={}), mscc(20, requested={"CC-Time": 0}))
    )
    assert cca.get("Result-Code") == 2001 and cca.get("Origin-Host") == SERVER_HOST
    ten, twenty = msccs(cca)
    assert ten["Granted-Service-Unit/CC-Total-Octets"] == 10 * MB
    assert twenty["Granted-Service-Unit/CC-Time"] == 300
    cca = await client.request(
        ccr(
            client,
            sid,
            UPD,
            1,
            mscc(10, requested={}, used={"CC-Total-Octets": 4 * MB}),
            mscc(20, requested={"CC-Time": 0}, used={"CC-Time": 100}),
        )
    )
    assert cca.get("Result-Code") == 2001
    cca = await client.request(
        ccr(
            client,
            sid,
            TERM,
            2,
            mscc(10, used={"CC-Total-Octets": MB}),
            mscc(20, used={"CC-Time": 50}),
        )
    )
    assert cca.get("Result-Code") == 2001
    assert env.amount("alice") == 95 * MB and env.amount("alice", Unit.SECONDS) == 850
    assert env.reserved("alice") == 0
    # freeDiameter decoded each answer with its own dictionary before relaying it.
    assert relay.received_from(SERVER_HOST, "Credit-Control-Answer") == 3


async def test_open5gs_shaped_session_through_freediameter(
    relayed: tuple[GyEnv, Relay], tmp_path: Path
) -> None:
    """M bits everywhere, no Rating-Group, the client's own realm as Destination-Realm and
    Destination-Host naming the OCS, as the Open5GS SMF sends them through freeDiameter."""
    env, relay = relayed
    await env.subscriber(octets=100 * MB, msisdn="33612345678", imsi=None)
    async with gy_client_env(env.server, env.api, relay.port, OPEN5GS_HOST) as smf:
        for request_type, number, used in [(INIT, 0, 0), (UPD, 1, 6 * MB), (TERM, 2, MB)]:
            cca = await smf.client.request(open5gs_like_ccr(request_type, number, used_octets=used))
            assert cca.get("Result-Code") == 2001, cca
            if request_type != TERM:
                [service] = msccs(cca)
                assert "Rating-Group" not in service and service["Result-Code"] == 2001
                assert service["Granted-Service-Unit/CC-Total-Octets"] > 0
    assert env.amount("alice") == 93 * MB and env.reserved("alice") == 0


async def test_refusals_and_events_through_freediameter(relayed: tuple[GyEnv, Relay]) -> None:
    """Error answers carry what freeDiameter's CCA rules require, so none is dropped."""
    env, relay = relayed
    client = env.client
    cca = await client.request(ccr(client, client.new_session_id(), INIT, 0, mscc(10)))
    assert cca.get("Result-Code") == 5030
    await env.subscriber()
    cca = await client.request(ccr(client, client.new_session_id(), INIT, 0, mscc(10)))
    assert cca.get("Result-Code") == 4012
    cca = await client.request(ccr(client, "nobody;1;1", UPD, 1, mscc(10, requested={})))
    assert cca.get("Result-Code") == 5002
    await env.topup("alice", Unit.EVENTS, 5)
    cca = await client.request(
        ccr(
            client,
            client.new_session_id(),
            EVENT,
            0,
            ("Requested-Action", "DIRECT_DEBITING"),
            ("Requested-Service-Unit", {"CC-Service-Specific-Units": 2}),
        )
    )
    assert cca.get("Result-Code") == 2001 and env.amount("alice", Unit.EVENTS) == 3
    cca = await client.request(
        ccr(
            client,
            client.new_session_id(),
            EVENT,
            0,
            ("Requested-Action", "PRICE_ENQUIRY"),
            ("Requested-Service-Unit", {"CC-Time": 60}),
        )
    )
    assert cca.get("Result-Code") == 2001 and cca.find("Cost-Information") is not None
    assert relay.received_from(SERVER_HOST, "Credit-Control-Answer") == 5


async def test_rar_and_asr_through_freediameter(relayed: tuple[GyEnv, Relay]) -> None:
    env, relay = relayed
    await env.subscriber(octets=5 * MB)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": 8 * MB}))
    )
    assert "Final-Unit-Indication" in msccs(cca)[0]
    await env.topup("alice", Unit.OCTETS, 10 * MB)
    rar = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert rar.name == "RAR" and rar.session_id == sid and rar.get("Origin-Host") == SERVER_HOST
    response = await env.api.patch("/v1/subscribers/alice", json={"status": "barred"})
    assert response.status_code == 200
    asr = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert asr.name == "ASR" and asr.session_id == sid
    await relay.wait_for("'Abort-Session-Answer'", WAIT_S)
    assert relay.received_from(CLIENT_HOST, "Re-Auth-Answer") == 1
    cca = await client.request(ccr(client, sid, TERM, 1, mscc(10, used={"CC-Total-Octets": 0})))
    assert cca.get("Result-Code") == 2001 and env.reserved("alice") == 0


async def test_the_log_check_catches_a_broken_avp(tmp_path: Path) -> None:
    """Negative control: a CC-Request-Number whose length says 13 octets makes freeDiameter log
    a parsing error, which is what the other tests look for (and do not find)."""
    async with (
        gy_server(tmp_path) as (server, _),
        freediameter_relay(
            tmp_path / "fd", server_port=server.cfg.diameter_port, clients=[CLIENT_HOST]
        ) as relay,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        peer = PeerConnection(
            PeerConfig(origin_host=CLIENT_HOST, origin_realm=CLIENT_REALM), Role.CLIENT
        )
        try:
            writer.write(peer.initiate())
            peer.receive_data(await asyncio.wait_for(reader.read(4096), WAIT_S))
            request = build_ccr(
                session_id=f"{CLIENT_HOST};1;1",
                origin_host=CLIENT_HOST,
                origin_realm=CLIENT_REALM,
                destination_realm="quotaflow.local",
                request_type=INIT,
                request_number=0,
            )
            frame = bytearray(peer.send(request))
            offset = 20
            while struct.unpack_from(">I", frame, offset)[0] != 415:  # CC-Request-Number
                offset += (struct.unpack_from(">I", frame, offset + 4)[0] & 0xFFFFFF) + 3 & ~3
            struct.pack_into(">B", frame, offset + 7, 13)
            writer.write(bytes(frame))
            await relay.wait_for("PARSING ERROR", WAIT_S)
        finally:
            writer.close()
        assert relay.problems()
