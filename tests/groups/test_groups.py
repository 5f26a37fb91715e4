"""Shared balances through the real server: the API, members' sessions on the pool, caps,
restriction, resets, policy counters and their webhook, reclaim and service priority."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.engine import EngineEvent, ServiceRequest, ServiceResult
from quotaflow.ledger import ChargingError, Ledger, Unit, UnknownSession
from quotaflow.server import Server
from quotaflow.store.journal import decode
from tests.records.harness import eventually, serve_asgi

MB = 1_000_000


@contextlib.asynccontextmanager
async def webhook(received: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A real HTTP receiver on a free port; every event body it gets lands in `received`."""

    async def hook(request: Request) -> Response:
        received.append(orjson.loads(await request.body()))
        return Response(status_code=204)

    async with serve_asgi(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        yield url


async def family(api: httpx.AsyncClient, policy: dict[str, Any] | None = None) -> None:
    for sid in ("mum", "kid", "dad"):
        assert (await api.post("/v1/subscribers", json={"id": sid})).status_code == 201
    r = await api.post(
        "/v1/groups",
        json={
            "id": "fam",
            "owner": "mum",
            "period": "monthly",
            "reset_day": 1,
            "restrict_below": {"octets": 20 * MB},
            "protected_priority": 0,
            "policy": policy or {"allocation": "predictive"},
        },
    )
    assert r.status_code == 201, r.text
    r = await api.post(
        "/v1/groups/fam/members",
        json={"subscriber_id": "kid", "priority": 1, "caps": {"octets": 15 * MB}},
    )
    assert r.status_code == 201, r.text
    r = await api.post("/v1/groups/fam/members", json={"subscriber_id": "dad", "priority": 0})
    assert r.status_code == 201, r.text
    r = await api.post(
        "/v1/groups/fam/buckets", json={"id": "shared", "unit": "octets", "amount": 100 * MB}
    )
    assert r.status_code == 201, r.text


async def test_members_draw_on_the_pool_within_caps(api: httpx.AsyncClient, server: Server) -> None:
    await family(api)
    engine = server.engine
    await api.post("/v1/subscribers/kid/topups", json={"unit": "octets", "amount": 2 * MB})
    kid = await engine.session_start("k1", "kid", 0, [ServiceRequest(10, requested_units=30 * MB)])
    # Own 2 MB first, then the pool, but never past the 15 MB cap.
    assert kid.services[0].granted_units == 17 * MB
    more = await engine.session_update(
        "k1", 1, [ServiceRequest(10, used_units=17 * MB, requested_units=30 * MB)]
    )
    assert more.services[0].result is ServiceResult.NO_CREDIT
    counters = (await api.get("/v1/policy-counters/kid")).json()["counters"]
    statuses = {c["id"]: c["status"] for c in counters}
    assert statuses["fam/member/kid/octets"] == "member-cap-reached"
    assert statuses["fam/pool/octets"] == "normal"
    dad = await engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=90 * MB)])
    assert dad.services[0].granted_units == 85 * MB  # what the kid left in the pool
    group = (await api.get("/v1/groups/fam")).json()
    assert group["pool_available"]["octets"] == 0
    kid_member = next(m for m in group["members"] if m["subscriber_id"] == "kid")
    assert kid_member["used"] == {"octets": 15 * MB}
    # A new period: the kid's cap counts from zero again (here through the API).
    assert (await api.post("/v1/groups/fam/reset")).status_code == 200
    server.store.ledger.check_invariants()


async def test_low_pool_restricts_unprotected_members(
    api: httpx.AsyncClient, server: Server
) -> None:
    await family(api)
    engine = server.engine
    dad = await engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=85 * MB)])
    assert dad.services[0].granted_units == 85 * MB
    # 15 MB left is below the 20 MB threshold: the kid (priority 1) is restricted,
    kid = await engine.session_start("k1", "kid", 0, [ServiceRequest(10)])
    assert kid.services[0].result is ServiceResult.NO_CREDIT
    counters = (await api.get("/v1/policy-counters/kid")).json()["counters"]
    assert {c["status"] for c in counters if c["id"].startswith("fam/pool")} == {"pool-low"}
    # ... mum (priority 0, protected) is not.
    mum = await engine.session_start("m1", "mum", 0, [ServiceRequest(10, requested_units=MB)])
    assert mum.services[0].granted_units == MB
    # A top-up of the pool lifts the restriction and asks the members' sessions to come back.
    events: list[EngineEvent] = []
    engine.subscribe(events.append)
    await api.post("/v1/groups/fam/topups", json={"unit": "octets", "amount": 50 * MB})
    assert {e.subscriber_id for e in events if e.kind == "credit_added"} == {"mum", "kid", "dad"}
    kid = await engine.session_update("k1", 1, [ServiceRequest(10)])
    assert kid.services[0].granted_units > 0


async def test_reclaim_asks_idle_sessions_to_report(api: httpx.AsyncClient, server: Server) -> None:
    await family(
        api,
        {"allocation": "reclaim", "retry_s": 3, "reclaim_min_age_s": 0, "reclaim_wait_ms": 100},
    )
    engine = server.engine
    events: list[EngineEvent] = []
    engine.subscribe(events.append)
    # Grants shrink with the pool (at most pool / (2 x 3 members) each): dad's devices take it
    # all in ever smaller grants, and use none of it.
    n = 0
    while server.store.pool_available("fam", "octets") >= 100_000:
        n += 1
        await engine.session_start(f"d{n}", "dad", 0, [ServiceRequest(10)])
    assert n > 10
    # The pool is all in dad's idle grants: the mum's request makes the engine ask dad's
    # sessions to report, and mum is told to come back in 3 s.
    mum = await engine.session_start("m1", "mum", 0, [ServiceRequest(10)])
    assert mum.services[0].result is ServiceResult.RETRY
    assert mum.services[0].validity_s == 3
    reauth = [e for e in events if e.kind == "reauthorize"]
    assert reauth and reauth[-1].subscriber_id == "dad" and "d1" in reauth[-1].sessions
    assert len(reauth[-1].sessions) == n
    # Dad reports (as a gateway does after the RAR); his next grant is sized to his use and
    # the surplus goes back to the pool, so mum's next request is served.
    await engine.session_update(
        "d1", 1, [ServiceRequest(10, used_units=MB, requested_units=5 * MB)]
    )
    mum = await engine.session_update("m1", 1, [ServiceRequest(10)])
    assert mum.services[0].granted_units > 0


async def test_a_spent_pool_keeps_its_crumbs_and_own_buckets_still_pay(
    api: httpx.AsyncClient, server: Server
) -> None:
    await family(api, {"allocation": "reclaim", "reclaim_min_age_s": 0})
    engine = server.engine
    # Leave 150 kB in the pool, then dad holds a 100 kB grant and uses 60 kB of it.
    await engine.direct_debit("drain", "fam", Unit.OCTETS, 100 * MB - 150_000, None)
    d = await engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=100_000)])
    assert d.services[0].granted_units == 100_000
    # 90 kB are left: less than a minimum grant. Dad is refused, and the crumbs stay in the
    # pool rather than sitting in a grant too small to matter while others are refused.
    d = await engine.session_update("d1", 1, [ServiceRequest(10, used_units=60_000)])
    assert d.services[0].result is ServiceResult.NO_CREDIT
    assert server.store.pool_available("fam", "octets") == 90_000
    # Mum's own bucket still pays for her (grants stay small while her group's pool is low).
    r = await api.post("/v1/subscribers/mum/buckets", json={"unit": "octets", "amount": MB})
    assert r.status_code == 201, r.text
    m = await engine.session_start("m1", "mum", 0, [ServiceRequest(10, requested_units=MB)])
    assert m.services[0].result is ServiceResult.GRANTED
    assert m.services[0].granted_units == 100_000
    assert server.store.pool_available("fam", "octets") == 90_000
    balance = (await api.get("/v1/subscribers/mum/balance")).json()
    assert balance["totals"]["octets"]["reserved"] == 100_000


async def test_designated_service_is_served_first(api: httpx.AsyncClient, server: Server) -> None:
    await family(api, {"allocation": "predictive", "service_priority": [30]})
    engine = server.engine
    await engine.session_start("d0", "dad", 0, [ServiceRequest(10, requested_units=95 * MB)])
    # 5 MB left; web (RG 10) is listed first but video calls (RG 30) are designated.
    both = await engine.session_start(
        "m1",
        "mum",
        0,
        [ServiceRequest(10, requested_units=5 * MB), ServiceRequest(30, requested_units=5 * MB)],
    )
    web, call = both.services
    assert (web.rating_group, call.rating_group) == (10, 30)
    assert call.granted_units == 5 * MB and web.result is ServiceResult.NO_CREDIT


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "g", "owner": "mum", "policy": {"allocation": "greedy"}}, "policy"),
        ({"id": "g", "owner": "mum", "period": "yearly"}, "period"),
        ({"id": "g", "owner": "mum", "period": "monthly", "reset_day": 31}, "reset_day"),
        ({"id": "g", "owner": "mum", "restrict_below": {"litres": 5}}, "restrict_below"),
        ({"id": "g", "owner": "mum", "colour": "red"}, "colour"),
    ],
)
async def test_bad_group_settings_are_refused(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    await api.post("/v1/subscribers", json={"id": "mum"})
    r = await api.post("/v1/groups", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["detail"].get("field") == field
    assert (await api.get("/v1/groups/g")).status_code == 404


async def test_policy_counter_changes_reach_a_webhook(
    api: httpx.AsyncClient, server: Server
) -> None:
    received: list[dict[str, Any]] = []
    async with webhook(received) as url:
        r = await api.post(
            "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["policy_counter"]}
        )
        assert r.status_code == 201, r.text
        await family(api)
        await server.engine.session_start(
            "d1", "dad", 0, [ServiceRequest(10, requested_units=85 * MB)]
        )
        await eventually(
            lambda: any(e.get("data", {}).get("status") == "pool-low" for e in received)
        )
    lows = [e for e in received if e["data"]["status"] == "pool-low"]
    assert {e["subscriber_id"] for e in lows} == {"mum", "kid", "dad"}
    assert all(e["type"] == "policy_counter" for e in received)


async def test_policy_counters_are_not_checked_for_nobody(
    api: httpx.AsyncClient, server: Server
) -> None:
    """Without a subscription for policy_counter events, the watcher does not listen to the
    engine, and a charge does not wake it; it listens from the first such subscription on,
    and stops when the last one goes."""
    watch = server._counters
    await family(api)
    heard = watch.heard
    await server.engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=MB)])
    assert not watch.listening and not watch._pending and watch.heard == heard
    received: list[dict[str, Any]] = []
    async with webhook(received) as url:
        r = await api.post(
            "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["low_balance"]}
        )
        assert r.status_code == 201, r.text  # another event type: still nobody for counters
        await server.engine.session_start("d2", "dad", 0, [ServiceRequest(10, requested_units=MB)])
        assert not watch.listening and not watch._pending and watch.heard == heard
        r = await api.post(
            "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["policy_counter"]}
        )
        assert r.status_code == 201, r.text
        assert watch.listening
        await server.engine.session_start("d3", "dad", 0, [ServiceRequest(10, requested_units=MB)])
        assert watch.heard > heard
        r = await api.delete(f"/v1/subscriptions/{r.json()['id']}")
        assert r.status_code in (200, 204), r.text
        assert not watch.listening


async def test_a_pool_threshold_fires_when_members_drain_it(
    api: httpx.AsyncClient, server: Server
) -> None:
    received: list[dict[str, Any]] = []
    async with webhook(received) as url:
        await family(api)
        r = await api.post(
            "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["low_balance"]}
        )
        assert r.status_code == 201, r.text
        r = await api.post(
            "/v1/thresholds",
            json={"scope": "group", "group_id": "fam", "unit": "octets", "below_percent": 50},
        )
        assert r.status_code == 201, r.text
        engine = server.engine
        await engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=60 * MB)])
        await engine.session_update(
            "d1", 1, [ServiceRequest(10, used_units=60 * MB, requested_units=MB)]
        )
        await eventually(lambda: bool(received))
    assert [e["subscriber_id"] for e in received] == ["fam"]
    assert received[0]["data"]["balance"] == 40 * MB


async def test_a_pool_is_not_a_subscriber(api: httpx.AsyncClient, server: Server) -> None:
    from quotaflow.ledger import InvalidRequest

    await family(api)
    with pytest.raises(InvalidRequest):
        await server.engine.session_start("x", "fam", 0, [ServiceRequest(10)])


async def test_reclaim_holds_the_answer_until_the_credit_comes_back(
    api: httpx.AsyncClient, server: Server
) -> None:
    await family(api, {"allocation": "reclaim", "reclaim_min_age_s": 0, "reclaim_wait_ms": 5000})
    engine = server.engine
    n = 0
    while server.store.pool_available("fam", "octets") >= 100_000:
        n += 1
        await engine.session_start(f"d{n}", "dad", 0, [ServiceRequest(10)])
    reports: list[asyncio.Task[object]] = []

    def gateway(event: EngineEvent) -> None:
        # What a PGW does with a RAR: report what was used (nothing) on each session.
        if event.kind == "reauthorize" and event.subscriber_id == "dad":
            for sid in event.sessions:
                reports.append(
                    asyncio.get_running_loop().create_task(
                        engine.session_update(sid, 1, [ServiceRequest(10)])
                    )
                )

    engine.subscribe(gateway)
    mum = await engine.session_start("m1", "mum", 0, [ServiceRequest(10)])
    await asyncio.gather(*reports)
    # Not refused, not told to retry: answered once the idle credit came back.
    assert mum.services[0].result is ServiceResult.GRANTED
    assert mum.services[0].granted_units >= 100_000
    server.store.ledger.check_invariants()


async def test_a_member_cap_threshold_fires_before_the_cap(
    api: httpx.AsyncClient, server: Server
) -> None:
    received: list[dict[str, Any]] = []
    async with webhook(received) as url:
        await family(api)
        r = await api.post(
            "/v1/subscriptions", json={"url": f"{url}/hook", "events": ["low_balance", "exhausted"]}
        )
        assert r.status_code == 201, r.text
        r = await api.post(
            "/v1/thresholds",
            json={
                "scope": "member_cap",
                "group_id": "fam",
                "subscriber_id": "kid",
                "unit": "octets",
                "below_percent": 20,
            },
        )
        assert r.status_code == 201, r.text
        engine = server.engine
        # 15 MB cap: after 13 MB drawn, 2 MB (13%) of the cap is left: below 20%.
        await engine.session_start("k1", "kid", 0, [ServiceRequest(10, requested_units=13 * MB)])
        await eventually(lambda: bool(received))
    assert [(e["type"], e["subscriber_id"]) for e in received] == [("low_balance", "kid")]
    assert received[0]["data"]["balance"] == 2 * MB


async def test_out_of_credit_then_reallocated_when_the_pool_resets(
    api: httpx.AsyncClient, server: Server
) -> None:
    received: list[dict[str, Any]] = []
    async with webhook(received) as url:
        await family(api)
        r = await api.post(
            "/v1/subscriptions",
            json={
                "url": f"{url}/hook",
                "events": ["out_of_credit", "credit_reallocated"],
                "subscriber_ids": ["kid"],
            },
        )
        assert r.status_code == 201, r.text
        engine = server.engine
        await engine.session_start("k1", "kid", 0, [ServiceRequest(10, requested_units=15 * MB)])
        refused = await engine.session_update("k1", 1, [ServiceRequest(10, used_units=15 * MB)])
        assert refused.services[0].result is ServiceResult.NO_CREDIT  # the cap is reached
        # A new period gives the kid's cap room back: the application hears credit is back.
        assert (await api.post("/v1/groups/fam/reset")).status_code == 200
        await eventually(lambda: len(received) >= 2)
    assert [e["type"] for e in received] == ["out_of_credit", "credit_reallocated"]
    assert received[1]["data"]["payable"] == 15 * MB


async def test_soft_mode_overspends_by_at_most_its_limit(
    api: httpx.AsyncClient, server: Server
) -> None:
    await family(api)
    r = await api.patch(
        "/v1/groups/fam", json={"mode": "soft", "soft_overspend_max": {"octets": 5 * MB}}
    )
    assert r.status_code == 200 and r.json()["mode"] == "soft", r.text
    engine = server.engine
    dad = await engine.session_start("d1", "dad", 0, [ServiceRequest(10, requested_units=200 * MB)])
    # 100 MB of pool and 5 MB of credit line: never more.
    assert dad.services[0].granted_units == 105 * MB
    await engine.session_terminate("d1", 1, [ServiceRequest(10, used_units=103 * MB)])
    group = (await api.get("/v1/groups/fam")).json()
    assert group["pool_available"]["octets"] == 2 * MB  # 2 MB of the line left
    # The line is in use: it cannot be changed until it is repaid.
    r = await api.patch("/v1/groups/fam", json={"mode": "strict"})
    assert r.status_code == 409
    # A top-up repays the 3 MB drawn on the line first, then fills the pool.
    r = await api.post("/v1/groups/fam/topups", json={"unit": "octets", "amount": 10 * MB})
    assert r.status_code == 201 and r.json()["repaid"] == 3 * MB
    balance = (await api.get("/v1/groups/fam/balance")).json()
    amounts = {b["id"]: b["amount"] for b in balance["buckets"]}
    assert amounts["overdraft-octets"] == 5 * MB and amounts["main-octets"] == 7 * MB
    assert (await api.patch("/v1/groups/fam", json={"mode": "strict"})).status_code == 200
    balance = (await api.get("/v1/groups/fam/balance")).json()
    assert "overdraft-octets" not in {b["id"] for b in balance["buckets"]}
    server.store.ledger.check_invariants()


@pytest.mark.parametrize("second_asks", [True, False])
async def test_a_grant_for_a_session_closed_meanwhile_is_refused(
    api: httpx.AsyncClient, server: Server, second_asks: bool
) -> None:
    """A member's update reports two rating groups, charged one after the other (a group's
    session waits for each commit); a termination that lands between them closes the session.
    The second grant must not be held for it: the pool would lose that credit until it lapsed.
    Whether or not the second asks for a grant, the update is for an unknown session, and the
    engine keeps no rate state of it."""
    await family(api)
    engine = server.engine
    ledger = server.store.ledger  # type: ignore[attr-defined]
    raced = 0
    for round_ in range(5):
        sid = f"k{round_}"
        asks = [ServiceRequest(10, requested_units=MB), ServiceRequest(20, requested_units=MB)]
        await engine.session_start(sid, "kid", 0, asks)
        update = asyncio.ensure_future(
            engine.session_update(
                sid,
                1,
                [
                    ServiceRequest(10, used_units=MB, requested_units=MB),
                    ServiceRequest(20, used_units=MB, requested_units=MB)
                    if second_asks
                    else ServiceRequest(20, used_units=MB, want_grant=False),
                ],
            )
        )
        # Until the first rating group's charge is applied (its commit still under way).
        while not update.done() and server.store.first_answer(f"{sid}#1#10") is None:
            await asyncio.sleep(0)
        assert not update.done()
        ended = await engine.session_terminate(sid, 1, [])
        assert ended.session_id == sid
        try:
            await update
        except UnknownSession:  # it ended under it: its usage is posted all the same
            raced += 1
        assert not ledger.subscribers["kid"].reservations, round_
        assert not [key for key in engine._rates if key[0] == sid]
        assert sid not in engine._session_rgs
    assert raced == 5  # each termination landed between the two rating groups
    # The choice is in the journal (the charge went without its reserve): a replay of it, by
    # this release or an older one, makes no grant either.
    await server.store.flush()
    replayed = Ledger()
    with sqlite3.connect(server.store.path) as db:  # type: ignore[attr-defined]
        rows = db.execute("SELECT first_seq, last_seq, records FROM journal").fetchall()
    for row in rows:
        for _, op, op_id, args, now_ms, _ in decode(*row):
            with contextlib.suppress(ChargingError):
                replayed.apply(op, op_id, args, now_ms)
    assert replayed.snapshot() == ledger.snapshot()


@pytest.mark.parametrize("groups", [[30], [30, 20]])
async def test_a_member_whose_session_ends_while_it_waits_for_reclaimed_credit_gets_5002(
    api: httpx.AsyncClient, server: Server, groups: list[int]
) -> None:
    """The pool is spent: a member's first rating group waits for the others to report, and its
    gateway ends the session meanwhile. The update is for an unknown session (Gy 5002), no grant
    is held for it, and the engine keeps no rate state of it."""
    await family(api, {"allocation": "reclaim", "reclaim_min_age_s": 0, "reclaim_wait_ms": 5000})
    engine = server.engine
    await engine.session_start("m1", "mum", 0, [ServiceRequest(10)])
    n = 0
    while server.store.pool_available("fam", "octets") >= 100_000:
        n += 1
        await engine.session_start(f"d{n}", "dad", 0, [ServiceRequest(10)])
    tasks: list[asyncio.Task[object]] = []

    def gateway(event: EngineEvent) -> None:  # asked to report: it ends m1, dad reports
        if event.kind == "reauthorize" and event.subscriber_id == "dad":
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(engine.session_terminate("m1", 2, [])))
            for sid in event.sessions:
                tasks.append(loop.create_task(engine.session_update(sid, 1, [ServiceRequest(10)])))

    engine.subscribe(gateway)
    with pytest.raises(UnknownSession):
        await engine.session_update("m1", 1, [ServiceRequest(rg) for rg in groups])
    await asyncio.gather(*tasks)
    assert "m1" not in server.store.ledger.sessions  # type: ignore[attr-defined]
    assert not server.store.ledger.subscribers["mum"].reservations  # type: ignore[attr-defined]
    assert not [key for key in engine._rates if key[0] == "m1"]
    assert "m1" not in engine._session_rgs
    assert not [key for key in engine._in_group.get("fam", ()) if key[0] == "m1"]
