"""Server-initiated requests: RAR after a top-up through /v1, ASR after barring, their answers
handled, and never in the way of a charging answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, Message, PeerInfo, make_answer
from quotaflow.ledger import Unit

from .test_gy_support import (
    CLIENT_HOST,
    CLIENT_REALM,
    MB,
    GyEnv,
    ccr,
    connect,
    e164,
    gy_env,
    mscc,
    msccs,
)

pytestmark = pytest.mark.timeout(30)

INIT, UPD, TERM = CcRequestType.INITIAL, CcRequestType.UPDATE, CcRequestType.TERMINATION
WAIT_S = 5.0


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GyEnv]:
    async with gy_env(tmp_path) as env:
        yield env


async def start(env: GyEnv, requested_octets: int) -> str:
    client = env.client
    sid = client.new_session_id()
    cca = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": requested_octets}))
    )
    assert cca.get("Result-Code") == 2001
    return sid


async def test_rar_after_a_top_up_reaches_the_starved_session_only(env: GyEnv) -> None:
    await env.subscriber(octets=10 * MB)
    fed = await start(env, MB)  # holds quota: needs no re-authorisation
    starved = await start(env, 50 * MB)  # gets the last 9 MB with a final unit indication
    assert (
        "Final-Unit-Indication"
        in msccs(
            await env.client.request(
                ccr(env.client, starved, UPD, 1, mscc(10, requested={"CC-Total-Octets": 50 * MB}))
            )
        )[0]
    )

    await env.topup("alice", Unit.OCTETS, 100 * MB)
    rar = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert rar.name == "RAR" and rar.session_id == starved and rar.session_id != fed
    assert rar.get("Destination-Host") == CLIENT_HOST
    assert rar.get("Destination-Realm") == CLIENT_REALM
    assert rar.get("Origin-Host") == "ocs.quotaflow.local"
    assert (rar.get("Auth-Application-Id"), rar.get("Re-Auth-Request-Type")) == (4, 0)
    await asyncio.sleep(0.2)
    assert env.received.empty()

    # The client comes back with a CCR-U and gets quota again.
    cca = await env.client.request(
        ccr(
            env.client,
            starved,
            UPD,
            2,
            mscc(10, requested={"CC-Total-Octets": 5 * MB}, used={"CC-Total-Octets": MB}),
        )
    )
    [service] = msccs(cca)
    assert service["Result-Code"] == 2001 and "Final-Unit-Indication" not in service
    assert service["Granted-Service-Unit/CC-Total-Octets"] == 5 * MB


async def test_asr_after_barring_then_denied(env: GyEnv) -> None:
    await env.subscriber(octets=100 * MB)
    sid = await start(env, MB)
    response = await env.api.patch("/v1/subscribers/alice", json={"status": "barred"})
    assert response.status_code == 200
    asr = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert asr.name == "ASR" and asr.session_id == sid
    assert asr.get("Destination-Host") == CLIENT_HOST and asr.get("Auth-Application-Id") == 4

    client = env.client
    cca = await client.request(
        ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": MB // 2}))
    )
    assert cca.get("Result-Code") == 4010 and msccs(cca)[0]["Result-Code"] == 4010
    cca = await client.request(ccr(client, sid, TERM, 2, mscc(10, used={"CC-Total-Octets": 0})))
    assert cca.get("Result-Code") == 2001
    assert env.amount("alice") == 100 * MB - MB // 2 and env.reserved("alice") == 0


async def test_raa_unknown_session_releases_the_session(env: GyEnv) -> None:
    await env.subscriber(octets=5 * MB)
    sid = await start(env, 50 * MB)  # final units: starved
    assert env.reserved("alice") == 5 * MB
    env.peer_answer["Result-Code"] = 5002  # the client has forgotten the session
    await env.topup("alice", Unit.OCTETS, MB)
    await asyncio.wait_for(env.received.get(), WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while sid in env.server.store.ledger.sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sid not in env.server.store.ledger.sessions
    assert env.reserved("alice") == 0


async def test_a_silent_client_never_delays_charging(env: GyEnv) -> None:
    """The client answers no RAR: the top-up and every CCR are still answered at once."""
    await env.subscriber(octets=MB)
    hold = asyncio.Event()

    async def never_answers(peer: PeerInfo, request: Message) -> Message:
        await hold.wait()
        return make_answer(request, 2001, CLIENT_HOST, CLIENT_REALM)

    silent = await connect(env.port, request_handler=never_answers)
    try:
        sid = silent.new_session_id()
        await silent.request(
            ccr(silent, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": 2 * MB}))
        )
        started = time.monotonic()
        await env.topup("alice", Unit.OCTETS, 10 * MB)
        cca = await silent.request(
            ccr(silent, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": MB}))
        )
        assert cca.get("Result-Code") == 2001
        assert time.monotonic() - started < 1.0
    finally:
        hold.set()
        await silent.close(timeout_s=0.5)


async def test_rar_when_a_group_changes_and_asr_when_the_engine_aborts(env: GyEnv) -> None:
    """A group's allocation changed: every session of the member re-authorises, starved or
    not. The engine asks for a session to end (e.g. an operator's abort): ASR."""
    await env.subscriber(octets=100 * MB)
    await env.subscriber("bob", msisdn="46700000002", imsi=None, octets=100 * MB)
    client = env.client
    sid = client.new_session_id()
    bob = [e164("46700000002")]
    cca = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": MB}), subscription=bob)
    )
    assert cca.get("Result-Code") == 2001
    response = await env.api.post("/v1/groups", json={"id": "family", "owner": "alice"})
    assert response.status_code == 201, response.text
    response = await env.api.post("/v1/groups/family/members", json={"subscriber_id": "bob"})
    assert response.status_code == 201, response.text
    rar = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert rar.name == "RAR" and rar.session_id == sid

    await env.server.engine.abort_sessions("bob", [sid])
    asr = await asyncio.wait_for(env.received.get(), WAIT_S)
    assert asr.name == "ASR" and asr.session_id == sid
