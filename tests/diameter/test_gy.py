"""Gy sessions against a real quotaflow Server over TCP: grants, usage, final units, refusals,
retransmissions and what Open5GS sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, Message
from quotaflow.diameter.constants import FLAG_RETRANSMIT
from quotaflow.diameter.gy import GyApplication, GyService
from quotaflow.diameter.gy_retransmit import AnswerCache
from quotaflow.ledger import Unit

from .helpers import open5gs_like_ccr
from .test_gy_support import MB, GyEnv, ccr, e164, gy_env, mscc, msccs

pytestmark = pytest.mark.timeout(30)

INIT, UPD, TERM = CcRequestType.INITIAL, CcRequestType.UPDATE, CcRequestType.TERMINATION
GSU_OCTETS = "Granted-Service-Unit/CC-Total-Octets"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GyEnv]:
    async with gy_env(tmp_path) as env:
        yield env


async def test_full_session_charges_what_was_used(env: GyEnv) -> None:
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()

    cca = await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    assert cca.avps[0].name == "Session-Id" and cca.session_id == sid
    assert cca.get("Result-Code") == 2001
    assert (cca.get("CC-Request-Type"), cca.get("CC-Request-Number")) == (INIT, 0)
    assert cca.get("Auth-Application-Id") == 4
    [service] = msccs(cca)
    assert service["Rating-Group"] == 10 and service["Result-Code"] == 2001
    assert service[GSU_OCTETS] == 10 * MB  # the engine's default grant: no usage seen yet
    assert service["Validity-Time"] == 600
    assert service["Volume-Quota-Threshold"] == 2 * MB  # 20 % left
    assert "Final-Unit-Indication" not in service
    assert env.amount("alice") == 100 * MB and env.reserved("alice") == 10 * MB
    assert env.server.store.ledger.sessions[sid]["meta"]["interface"] == "gy"

    cca = await client.request(
        ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": 4 * MB}))
    )
    assert cca.get("Result-Code") == 2001 and msccs(cca)[0][GSU_OCTETS] > 0
    assert env.amount("alice") == 96 * MB

    cca = await client.request(
        ccr(client, sid, TERM, 2, mscc(10, used={"CC-Total-Octets": 3 * MB}))
    )
    assert cca.get("Result-Code") == 2001 and cca.get("CC-Request-Type") == TERM
    assert not msccs(cca)
    assert env.amount("alice") == 93 * MB
    assert env.reserved("alice") == 0  # CCR-T released everything
    assert sid not in env.server.store.ledger.sessions


async def test_rating_groups_each_in_their_own_unit(env: GyEnv) -> None:
    await env.subscriber(octets=50 * MB)
    await env.topup("alice", Unit.SECONDS, 1_000)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        ccr(
            client,
            sid,
            INIT,
            0,
            mscc(10, requested={"CC-Total-Octets": 2 * MB}),
            mscc(20, requested={"CC-Time": 0}),
            ("Multiple-Services-Credit-Control", {"Requested-Service-Unit": {}}),
        )
    )
    assert cca.get("Result-Code") == 2001
    by_group = {m.get("Rating-Group"): m for m in msccs(cca)}
    assert set(by_group) == {10, 20, None}  # no Rating-Group: still answered in an MSCC
    assert by_group[10][GSU_OCTETS] == 2 * MB
    assert by_group[20]["Granted-Service-Unit/CC-Time"] == 300
    assert "Granted-Service-Unit/CC-Total-Octets" not in by_group[20]
    assert by_group[20]["Time-Quota-Threshold"] == 60
    assert by_group[None][GSU_OCTETS] == 10 * MB
    cca = await client.request(
        ccr(
            client,
            sid,
            UPD,
            1,
            # No CC-Total-Octets: input plus output count.
            mscc(
                10,
                requested={},
                used={"CC-Input-Octets": MB, "CC-Output-Octets": 2 * MB, "CC-Time": 99},
            ),
            mscc(20, requested={"CC-Time": 0}, used={"CC-Time": 100}),
        )
    )
    assert [m["Result-Code"] for m in msccs(cca)] == [2001, 2001]
    assert env.amount("alice") == 47 * MB
    assert env.amount("alice", Unit.SECONDS) == 900


async def test_single_service_request_is_answered_at_top_level(env: GyEnv) -> None:
    await env.subscriber(octets=50 * MB)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        ccr(client, sid, INIT, 0, ("Requested-Service-Unit", {"CC-Total-Octets": 3 * MB}))
    )
    assert cca.get("Result-Code") == 2001 and not msccs(cca)
    assert cca.get("Granted-Service-Unit/CC-Total-Octets") == 3 * MB
    assert cca.get("Validity-Time") == 600
    cca = await client.request(
        ccr(client, sid, TERM, 1, ("Used-Service-Unit", {"CC-Total-Octets": MB}))
    )
    assert cca.get("Result-Code") == 2001 and env.amount("alice") == 49 * MB


async def test_final_units_then_credit_limit_reached(env: GyEnv) -> None:
    await env.subscriber(octets=5 * MB)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": 8 * MB}))
    )
    [service] = msccs(cca)
    assert cca.get("Result-Code") == 2001 and service["Result-Code"] == 2001
    assert service[GSU_OCTETS] == 5 * MB
    assert service["Final-Unit-Indication/Final-Unit-Action"] == 0  # TERMINATE
    assert "Volume-Quota-Threshold" not in service
    cca = await client.request(
        ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": 5 * MB}))
    )
    [service] = msccs(cca)
    assert service["Result-Code"] == 4012 and GSU_OCTETS not in service
    assert cca.get("Result-Code") == 4012
    assert env.amount("alice") == 0


async def test_no_credit_at_start_is_refused_and_released(env: GyEnv) -> None:
    await env.subscriber()
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    assert cca.get("Result-Code") == 4012
    assert [m["Result-Code"] for m in msccs(cca)] == [4012]
    assert sid not in env.server.store.ledger.sessions


async def test_a_termination_after_a_refused_start_is_for_an_unknown_session(
    env: GyEnv,
) -> None:
    """The refused CCR-I released the session: a CCR-T that follows anyway (with usage) gets
    5002, as an update does, and charges nothing; a copy of the CCR-T that really ended a
    session, once the retransmission cache no longer has it, still gets 2001 from its first
    charge (and charges nothing again)."""
    await env.subscriber()
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    assert cca.get("Result-Code") == 4012
    used = mscc(10, used={"CC-Total-Octets": MB})
    cca = await client.request(ccr(client, sid, TERM, 1, used))
    assert cca.get("Result-Code") == 5002
    assert env.server.store.read_records(0, 100) == []
    await env.topup("alice", Unit.OCTETS, 100 * MB)
    sid = client.new_session_id()
    await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    termination = ccr(client, sid, TERM, 1, used)
    assert (await client.request(termination)).get("Result-Code") == 2001
    assert env.amount("alice") == 99 * MB
    app = _gy(env)
    app.answers = AnswerCache(8, 60.0, app._seal)  # it forgets the first answer
    again = await client.request(_retransmission(termination))
    assert again.get("Result-Code") == 2001 and env.amount("alice") == 99 * MB
    later = await client.request(ccr(client, sid, TERM, 2, used))
    assert later.get("Result-Code") == 5002 and env.amount("alice") == 99 * MB


async def test_unknown_user_and_identity_kinds(env: GyEnv) -> None:
    await env.subscriber(octets=100 * MB, msisdn=None, nai="alice@example.net")
    client = env.client
    cca = await client.request(
        ccr(client, client.new_session_id(), INIT, 0, mscc(10, requested={}))
    )
    assert cca.get("Result-Code") == 5030 and not msccs(cca)
    assert cca.get("CC-Request-Number") == 0 and cca.get("Auth-Application-Id") == 4
    # The first Subscription-Id naming a known subscriber wins: here the second (IMSI).
    imsi = (
        "Subscription-Id",
        {"Subscription-Id-Type": 1, "Subscription-Id-Data": "001010000000001"},
    )
    cca = await client.request(
        ccr(client, client.new_session_id(), INIT, 0, mscc(10), subscription=[e164(), imsi])
    )
    assert cca.get("Result-Code") == 2001
    nai = (
        "Subscription-Id",
        {"Subscription-Id-Type": 3, "Subscription-Id-Data": "alice@example.net"},
    )
    cca = await client.request(
        ccr(client, client.new_session_id(), INIT, 0, mscc(10), subscription=[nai])
    )
    assert cca.get("Result-Code") == 2001
    cca = await client.request(ccr(client, client.new_session_id(), INIT, 0, subscription=[]))
    assert cca.get("Result-Code") == 5030


async def test_barred_subscriber_is_denied(env: GyEnv) -> None:
    await env.subscriber(octets=10 * MB, status="barred")
    client = env.client
    cca = await client.request(
        ccr(client, client.new_session_id(), INIT, 0, mscc(10, requested={}))
    )
    assert cca.get("Result-Code") == 4010
    assert [m["Result-Code"] for m in msccs(cca)] == [4010]


def _retransmission(first: Message) -> Message:
    """The same request again with the T flag and the same End-to-End id (RFC 6733 3)."""
    return Message(
        first.command_code,
        first.application_id,
        flags=first.flags | FLAG_RETRANSMIT,
        end_to_end=first.end_to_end,
        avps=list(first.avps),
    )


async def test_retransmission_is_answered_identically_and_charged_once(env: GyEnv) -> None:
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    update = ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": 2 * MB}))
    first = await client.request(update)
    again = await client.request(_retransmission(update))
    assert again.encode()[20:] == first.encode()[20:]
    assert again.end_to_end == first.end_to_end
    assert env.amount("alice") == 98 * MB

    # A retransmission while the first is still being charged waits for the first answer.
    update = ccr(client, sid, UPD, 2, mscc(10, requested={}, used={"CC-Total-Octets": 3 * MB}))
    first_future = client.send(update)
    again_future = client.send(_retransmission(update))
    first, again = await asyncio.wait_for(asyncio.gather(first_future, again_future), 10)
    assert again.encode()[20:] == first.encode()[20:]
    assert env.amount("alice") == 95 * MB

    termination = ccr(client, sid, TERM, 3, mscc(10, used={"CC-Total-Octets": MB}))
    first = await client.request(termination)
    again = await client.request(_retransmission(termination))
    assert again.encode()[20:] == first.encode()[20:] and again.get("Result-Code") == 2001
    assert env.amount("alice") == 94 * MB and env.reserved("alice") == 0


def _via(request: Message, *states: bytes) -> Message:
    """`request` as proxies send it on: one Proxy-Info each (RFC 6733 6.7.4)."""
    for state in states:
        request.add("Proxy-Info", {"Proxy-Host": "proxy.test", "Proxy-State": state})
    return request


def _proxy_states(answer: Message) -> list[object]:
    return [info.get("Proxy-State") for info in answer.find_all("Proxy-Info")]


async def test_every_answer_carries_its_request_s_proxy_info_in_order(env: GyEnv) -> None:
    """RFC 6733 6.2: each proxy on the way back finds its own state. CCR-I (the async path),
    CCR-U (answered at once), a refusal, CCR-T, and retransmissions of an update: a copy
    answered from the first answer carries the copy's Proxy-Info, not the first's."""
    app = _gy(env)
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(
        _via(ccr(client, sid, INIT, 0, mscc(10, requested={})), b"i1", b"i2")
    )
    assert cca.get("Result-Code") == 2001 and _proxy_states(cca) == [b"i1", b"i2"]

    used = {"CC-Total-Octets": MB}
    update = ccr(client, sid, UPD, 1, mscc(10, requested={}, used=used))
    first = await client.request(_via(update, b"u1", b"u2"))
    assert first.get("Result-Code") == 2001 and app.answered_now == 1
    assert _proxy_states(first) == [b"u1", b"u2"]

    def rest(answer: Message) -> list[object]:
        return [avp for avp in answer.avps if avp.name != "Proxy-Info"]

    other_path = _retransmission(update)
    other_path.avps = [avp for avp in other_path.avps if avp.name != "Proxy-Info"]
    again = await client.request(_via(other_path, b"r1"))
    assert _proxy_states(again) == [b"r1"] and rest(again) == rest(first)
    names, first_names = [a.name for a in again.avps], [a.name for a in first.avps]
    assert names.index("Proxy-Info") == first_names.index("Proxy-Info")  # in the first's place
    assert names[-1] == first_names[-1] == "Multiple-Services-Credit-Control"
    direct = _retransmission(update)
    direct.avps = [avp for avp in direct.avps if avp.name != "Proxy-Info"]
    again = await client.request(direct)
    assert _proxy_states(again) == [] and rest(again) == rest(first)
    assert env.amount("alice") == 99 * MB  # charged once

    # A copy that comes while the first is still being charged waits for it, and gets all of
    # it (the MSCC too: a sealed answer's `avps` may be only its head) with its own states.
    update = ccr(client, sid, UPD, 2, mscc(10, requested={}, used=used))
    copy = _retransmission(update)
    first_future = client.send(_via(update, b"w1"))
    again_future = client.send(_via(copy, b"w2", b"w3"))
    first, again = await asyncio.wait_for(asyncio.gather(first_future, again_future), 10)
    assert _proxy_states(first) == [b"w1"] and _proxy_states(again) == [b"w2", b"w3"]
    assert msccs(again) == msccs(first) and msccs(first)[0][GSU_OCTETS] > 0
    assert rest(again) == rest(first)
    assert env.amount("alice") == 98 * MB
    await env.subscriber("bob", msisdn="4670002", imsi=None, octets=50 * MB)
    other = client.new_session_id()
    initial = ccr(client, other, INIT, 0, mscc(10, requested={}), subscription=[e164("4670002")])
    copy = _retransmission(initial)
    first_future = client.send(_via(initial, b"a"))
    again_future = client.send(copy)
    first, again = await asyncio.wait_for(asyncio.gather(first_future, again_future), 10)
    assert _proxy_states(first) == [b"a"] and _proxy_states(again) == []
    assert msccs(again) == msccs(first) and msccs(first)[0][GSU_OCTETS] > 0

    # An event's answer has them where a session's has: after the echoed AVPs.
    event = ccr(
        client,
        client.new_session_id(),
        CcRequestType.EVENT,
        0,
        ("Requested-Action", "CHECK_BALANCE"),
        mscc(10, requested={"CC-Total-Octets": MB}),
    )
    cca = await client.request(_via(event, b"e"))
    names = [avp.name for avp in cca.avps]
    assert cca.get("Result-Code") == 2001 and _proxy_states(cca) == [b"e"]
    assert names[names.index("CC-Request-Number") + 1] == "Proxy-Info"

    stranger = client.new_session_id()
    unknown = [e164("4699999")]
    cca = await client.request(
        _via(ccr(client, stranger, INIT, 0, mscc(10), subscription=unknown), b"x")
    )
    assert cca.get("Result-Code") == 5030 and _proxy_states(cca) == [b"x"]

    cca = await client.request(_via(ccr(client, sid, TERM, 3, mscc(10, used=used)), b"t"))
    assert cca.get("Result-Code") == 2001 and _proxy_states(cca) == [b"t"]


async def test_a_malformed_proxy_info_is_5005_and_charges_nothing(env: GyEnv) -> None:
    """A Proxy-Info without its Proxy-State (RFC 6733 6.7.4 requires both): the grammar check
    answers 5005 naming the missing AVP, with the well-formed Proxy-Info only (the broken one
    would make the answer fail the same check: our client would drop it), nothing is charged,
    and the connection serves the next request."""
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    cca = await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    assert cca.get("Result-Code") == 2001
    reserved = env.reserved("alice")
    used = {"CC-Total-Octets": MB}
    update = _via(ccr(client, sid, UPD, 1, mscc(10, requested={}, used=used)), b"good")
    update.add("Proxy-Info", {"Proxy-Host": "proxy.test"})
    refused = await client.request(update)
    assert refused.get("Result-Code") == 5005
    [failed] = refused.find_all("Failed-AVP")
    [where] = failed.value  # type: ignore[misc]  # RFC 6733 7.5: the missing AVP in its group
    assert where.name == "Proxy-Info" and [a.name for a in where.value] == ["Proxy-State"]
    infos = refused.find_all("Proxy-Info")
    assert [info.get("Proxy-State") for info in infos] == [b"good"]
    assert env.amount("alice") == 100 * MB and env.reserved("alice") == reserved
    again = await client.request(ccr(client, sid, UPD, 1, mscc(10, requested={}, used=used)))
    assert again.get("Result-Code") == 2001 and env.amount("alice") == 99 * MB


async def test_open5gs_shaped_session(env: GyEnv) -> None:
    """M bits everywhere, no Rating-Group, Destination-Realm of the client's own realm,
    Requested-Action in session requests, Service-Information with PS-Information."""
    await env.subscriber(octets=100 * MB, msisdn="33612345678", imsi=None)
    client = env.client
    cca = await client.request(open5gs_like_ccr(INIT, 0))
    assert cca.get("Result-Code") == 2001
    [service] = msccs(cca)
    assert "Rating-Group" not in service and service["Result-Code"] == 2001
    assert service[GSU_OCTETS] == 10 * MB and service["Validity-Time"] == 600
    cca = await client.request(open5gs_like_ccr(UPD, 1, used_octets=6 * MB))
    assert cca.get("Result-Code") == 2001 and msccs(cca)[0][GSU_OCTETS] > 0
    cca = await client.request(open5gs_like_ccr(TERM, 2, used_octets=MB))
    assert cca.get("Result-Code") == 2001
    assert env.amount("alice") == 93 * MB and env.reserved("alice") == 0


def _gy(env: GyEnv) -> GyApplication:
    (service,) = [s for s in env.server._stoppers if isinstance(s, GyService)]
    return service.app


async def test_updates_are_answered_at_once_unless_they_may_wait(env: GyEnv) -> None:
    """A CCR-U of a subscriber outside groups takes handle_now (no task); a group member's,
    whose pool may need a reclaim first, and a session step that is not an update, do not."""
    app = _gy(env)
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    assert app.answered_now == 0
    used = {"CC-Total-Octets": MB}
    cca = await client.request(ccr(client, sid, UPD, 1, mscc(10, requested={}, used=used)))
    assert cca.get("Result-Code") == 2001 and app.answered_now == 1
    assert env.amount("alice") == 99 * MB

    await env.subscriber("mum", msisdn="4670001", imsi=None, octets=10 * MB)
    r = await env.api.post("/v1/groups", json={"id": "fam", "owner": "mum"})
    assert r.status_code == 201, r.text
    other = client.new_session_id()
    family = [e164("4670001")]
    await client.request(ccr(client, other, INIT, 0, mscc(10), subscription=family))
    cca = await client.request(ccr(client, other, UPD, 1, mscc(10, used=used)))
    assert cca.get("Result-Code") == 2001 and app.answered_now == 1
    assert env.amount("mum") == 9 * MB


async def test_a_failed_commit_is_3004_for_the_update_and_its_copy(env: GyEnv) -> None:
    """The store stops when a journal write fails: the CCR-U answered at once waits for its
    commit, so it gets 3004 (retry elsewhere), not 2001; so does a retransmission that came
    while it waited; nothing is kept for later copies, and the server goes on answering."""
    import sqlite3

    from quotaflow.metrics import REGISTRY

    def updates(result: str) -> float:
        labels = {"interface": "gy", "step": "update", "result": result}
        return REGISTRY.get_sample_value("quotaflow_session_steps_total", labels) or 0.0

    app = _gy(env)
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    ok0, busy0 = updates("2001"), updates("3004")
    with sqlite3.connect(env.server.store.path) as other:  # the commit's records go nowhere
        other.execute("DROP TABLE cdr")
    update = ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": MB}))
    first_future = client.send(_via(update, b"p"))
    again_future = client.send(_retransmission(update))
    first, again = await asyncio.wait_for(asyncio.gather(first_future, again_future), 10)
    assert app.answered_now == 1
    assert first.get("Result-Code") == 3004 and again.get("Result-Code") == 3004
    # Answered from what was held of the request (its answer basis): its session, ids and
    # Proxy-Info.
    assert first.session_id == sid and first.end_to_end == update.end_to_end
    assert _proxy_states(first) == [b"p"] == _proxy_states(again)
    assert len(app.answers) == 1  # the CCR-I's; the failed update's is not kept
    later = await client.request(_retransmission(update))
    assert later.get("Result-Code") == 3004
    # Counted as answered: the first and the later one (a copy served from the first is not a
    # step of its own), none as 2001.
    assert (updates("2001"), updates("3004")) == (ok0, busy0 + 2)


async def test_update_of_unknown_session_is_5002(env: GyEnv) -> None:
    await env.subscriber(octets=MB)
    client = env.client
    cca = await client.request(ccr(client, "pgw.gy.test;9;9", UPD, 1, mscc(10, requested={})))
    assert cca.get("Result-Code") == 5002
    cca = await client.request(ccr(client, "pgw.gy.test;9;9", TERM, 2, mscc(10, used={})))
    assert cca.get("Result-Code") == 5002


async def test_many_sessions_pipelined(env: GyEnv) -> None:
    """Requests of many sessions in flight at once on one connection all get their answer."""
    await env.subscriber(octets=10_000 * MB)
    client = env.client
    sessions = [client.new_session_id() for _ in range(50)]
    for request_type, number, used in [(INIT, 0, None), (UPD, 1, MB), (TERM, 2, MB)]:
        futures = [
            client.send(
                ccr(
                    client,
                    sid,
                    request_type,
                    number,
                    mscc(
                        10,
                        requested=None if request_type == TERM else {},
                        used=None if used is None else {"CC-Total-Octets": used},
                    ),
                )
            )
            for sid in sessions
        ]
        answers = await asyncio.wait_for(asyncio.gather(*futures), 20)
        assert {a.get("Result-Code") for a in answers} == {2001}
        assert [a.session_id for a in answers] == sessions
    assert env.amount("alice") == 9_900 * MB and env.reserved("alice") == 0


async def test_a_shared_pool_reclaiming_answers_zero_units_for_a_while(tmp_path: Path) -> None:
    """A member of a reclaim group whose pool is spent gets 2001, no units and a short
    Validity-Time (not 4012, which ends the service on Open5GS)."""
    async with gy_env(tmp_path) as env:
        await env.subscriber("mum", msisdn="4670001", imsi=None)
        r = await env.api.post(
            "/v1/groups",
            json={
                "id": "fam",
                "owner": "mum",
                "policy": {"allocation": "reclaim", "exhausted_retry_s": 30},
            },
        )
        assert r.status_code == 201, r.text
        client = env.client
        sid = client.new_session_id()
        answer = await client.request(
            ccr(client, sid, CcRequestType.INITIAL, 0, mscc(10), subscription=[e164("4670001")])
        )
        assert answer.get("Result-Code") == 2001
        (service,) = msccs(answer)
        assert service["Result-Code"] == 2001
        assert service["Granted-Service-Unit/CC-Total-Octets"] == 0
        assert service["Validity-Time"] == 30


async def test_steps_and_latencies_reach_the_metrics(env: GyEnv) -> None:
    """Counted in plain integers on the hot path (tally.py), exported at scrape."""
    from quotaflow.metrics import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    initial = {"interface": "gy", "step": "initial", "result": "2001"}
    steps0 = sample("quotaflow_session_steps_total", **initial)
    count0 = sample("quotaflow_request_seconds_count", interface="gy")
    slow0 = sample("quotaflow_request_seconds_bucket", interface="gy", le="+Inf")
    await env.subscriber(octets=100 * MB)
    client, sid = env.client, env.client.new_session_id()
    update = {"interface": "gy", "step": "update", "result": "2001"}
    updates0 = sample("quotaflow_session_steps_total", **update)
    await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={})))
    await client.request(ccr(client, sid, UPD, 1, mscc(10, used={"CC-Total-Octets": MB})))
    await client.request(ccr(client, sid, TERM, 2, mscc(10, used={"CC-Total-Octets": MB})))
    assert sample("quotaflow_session_steps_total", **initial) == steps0 + 1
    assert sample("quotaflow_session_steps_total", **update) == updates0 + 1  # at once
    assert sample("quotaflow_request_seconds_count", interface="gy") == count0 + 3
    assert sample("quotaflow_request_seconds_bucket", interface="gy", le="+Inf") == slow0 + 3
    assert sample("quotaflow_request_seconds_sum", interface="gy") > 0
