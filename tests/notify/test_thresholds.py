"""Thresholds, out-of-credit and credit-back events, refused-request counting, the choice."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quotaflow.engine import ServiceRequest, ServiceResult
from quotaflow.ledger import NoCredit, Unit
from tests.notify.conftest import Live
from tests.records.harness import MB, provision

DAY_MS = 86_400_000


async def spend(live: Live, sid: str, tag: str, octets: int) -> None:
    await live.engine.direct_debit(tag, sid, Unit.OCTETS, octets, None)


async def test_crossing_fires_once_then_exhausted_then_restored(live: Live) -> None:
    await provision(live.engine, "alice", octets=100 * MB)
    await live.subscribe()
    await live.threshold(subscriber_id="alice", unit="octets", below_units=50 * MB)
    for i in range(5):  # 80, 60, 40 (low), 20, 0 (exhausted)
        await spend(live, "alice", f"d{i}", 20 * MB)
        await live.settled()  # each debit seen on its own, not folded into one batch
    await live.engine.admin(
        "topup", "t2", {"subscriber_id": "alice", "unit": "octets", "amount": 10 * MB}
    )
    await live.settled()
    assert live.receiver.types() == ["low_balance", "exhausted"]  # still below 50 MB: no news
    await live.engine.admin(
        "topup", "t3", {"subscriber_id": "alice", "unit": "octets", "amount": 60 * MB}
    )
    await live.settled()
    assert live.receiver.types() == ["low_balance", "exhausted", "credit_restored"]
    low = live.receiver.delivered[0]["data"]
    assert low["balance"] == 40 * MB and low["level"] == 50 * MB and low["unit"] == "octets"
    await spend(live, "alice", "d9", MB)
    await live.settled()
    assert len(live.receiver.delivered) == 3


async def test_percentage_of_a_bucket_and_expiry(live: Live) -> None:
    await provision(live.engine, "bob", octets=MB)
    now = live.engine.store.clock()
    await live.engine.admin(
        "add_bucket",
        "promo",
        {
            "subscriber_id": "bob",
            "bucket_id": "video",
            "unit": "octets",
            "amount": 10 * MB,
            "rating_groups": [20],
            "expires_at_ms": now + DAY_MS,
        },
    )
    await live.subscribe(subscriber_ids=["bob"])
    await live.threshold(scope="bucket", bucket_id="video", below_percent=30)
    await live.threshold(scope="bucket", unit="octets", expiring_within_s=2 * 86_400)
    for i in range(4):  # 10 -> 2 MB in the video bucket: below 3 MB once
        await live.engine.direct_debit(f"v{i}", "bob", Unit.OCTETS, 2 * MB, 20)
    await live.settled()
    types = live.receiver.types("bob")
    assert types.count("expiring") == 1 and types.count("low_balance") == 1
    low = next(e["data"] for e in live.receiver.delivered if e["type"] == "low_balance")
    assert low["bucket_id"] == "video" and low["level"] == 3 * MB and low["balance"] == 2 * MB
    expiring = next(e["data"] for e in live.receiver.delivered if e["type"] == "expiring")
    assert expiring["bucket_id"] == "video" and expiring["expires_at_ms"] == now + DAY_MS


async def test_thresholds_for_every_subscriber_keep_durable_state(live: Live) -> None:
    await provision(live.engine, "alice", octets=10 * MB)
    await provision(live.engine, "bob", octets=10 * MB)
    await live.subscribe(events=["low_balance"])
    await live.threshold(unit="octets", below_units=5 * MB)  # no subscriber_id: everyone
    await spend(live, "alice", "a1", 6 * MB)
    await spend(live, "bob", "b1", 6 * MB)
    await live.settled()
    assert sorted(e["subscriber_id"] for e in live.receiver.delivered) == ["alice", "bob"]
    states = await live.service.db.states()
    assert set(states.values()) == {"low"} and len(states) == 2


async def test_refusals_counted_and_applications_told_of_credit_back(live: Live) -> None:
    await provision(live.engine, "alice", octets=0)
    await provision(live.engine, "bob", octets=0)
    af = await live.subscribe(
        events=["out_of_credit", "credit_reallocated"], subscriber_ids=["alice"]
    )
    ops = await live.subscribe(events=["refused_requests"])
    for i in range(7):  # refused_requests_max is 3 in these tests
        for sid in ("alice", "bob"):
            with pytest.raises(NoCredit):
                await spend(live, sid, f"{sid}-{i}", MB)
    answer = await live.engine.session_start("s1", "alice", 0, [ServiceRequest(10)])
    assert answer.services[0].result is ServiceResult.NO_CREDIT  # the 8th refusal
    await live.settled()
    by_sub = {
        (e["subscription_id"], e["subscriber_id"], e["type"]) for e in live.receiver.delivered
    }
    assert (af["id"], "bob", "out_of_credit") not in by_sub
    counts = [
        e["data"]["count"]
        for e in live.receiver.delivered
        if e["type"] == "refused_requests" and e["subscriber_id"] == "alice"
    ]
    assert counts == [3, 3]  # at 3 and at 6; the counter restarts each time
    assert [e["subscription_id"] for e in live.receiver.delivered].count(ops["id"]) == 4
    assert live.receiver.types("alice").count("out_of_credit") == 1
    await live.engine.admin(
        "topup", "gift", {"subscriber_id": "alice", "unit": "octets", "amount": 5 * MB}
    )
    await live.settled()
    back = [e for e in live.receiver.delivered if e["type"] == "credit_reallocated"]
    assert [e["subscriber_id"] for e in back] == ["alice"]
    assert back[0]["data"]["payable"] == 5 * MB and back[0]["subscription_id"] == af["id"]
    with pytest.raises(NoCredit):
        await spend(live, "alice", "big", 50 * MB)
    await live.settled()
    assert live.receiver.types("alice").count("out_of_credit") == 2  # out again: told again


async def test_choice_ends_the_other_sessions(live: Live) -> None:
    await provision(live.engine, "alice", octets=20 * MB)
    await live.subscribe(events=["choice_offered", "choice_made", "low_balance"])
    await live.threshold(subscriber_id="alice", unit="octets", below_units=10 * MB)
    assert (await live.api.get("/v1/subscribers/alice/choice")).status_code == 404
    for sid, rg in (("video", 20), ("web", 10), ("voip", 30)):
        await live.engine.session_start(
            sid, "alice", 0, [ServiceRequest(rg, requested_units=MB)], {"interface": "gy"}
        )
    await live.engine.session_update("video", 1, [ServiceRequest(20, used_units=11 * MB)])
    await live.settled()
    assert live.receiver.types() == ["low_balance", "choice_offered"]
    offer = live.receiver.delivered[1]["data"]
    assert [(s["session_id"], s["rating_groups"]) for s in offer["sessions"]] == [
        ("video", [20]),
        ("voip", [30]),
        ("web", [10]),
    ]
    shown = (await live.api.get("/v1/subscribers/alice/choice")).json()
    assert shown["choice_id"] == offer["choice_id"]
    bad = await live.api.post("/v1/subscribers/alice/choice", json={"session_id": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["detail"] == {"field": "session_id"}
    stale = await live.api.post(
        "/v1/subscribers/alice/choice", json={"session_id": "web", "choice_id": "old"}
    )
    assert stale.status_code == 409
    r = await live.api.post(
        "/v1/subscribers/alice/choice",
        json={"session_id": "web", "choice_id": offer["choice_id"]},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"choice_id": offer["choice_id"], "kept": "web", "ended": ["video", "voip"]}
    abort = [e for e in live.engine_events if e.kind == "abort"]
    assert len(abort) == 1 and sorted(abort[0].sessions) == ["video", "voip"]
    await live.settled()
    assert live.receiver.types()[-1] == "choice_made"
    assert (await live.api.get("/v1/subscribers/alice/choice")).status_code == 404
    # The network ends them (CCR-T after the ASR): their reservations go back to the balance.
    for sid, rg in (("video", 20), ("voip", 30)):
        await live.engine.session_terminate(sid, 2, [ServiceRequest(rg)], "aborted")
    answer = await live.engine.session_update(
        "web", 1, [ServiceRequest(10, requested_units=8 * MB)]
    )
    assert answer.services[0].granted_units == 8 * MB


async def test_one_session_gets_no_choice(live: Live) -> None:
    await provision(live.engine, "alice", octets=20 * MB)
    await live.subscribe()
    await live.threshold(subscriber_id="alice", unit="octets", below_units=10 * MB)
    await live.engine.session_start("only", "alice", 0, [ServiceRequest(10, requested_units=MB)])
    await live.engine.session_update("only", 1, [ServiceRequest(10, used_units=11 * MB)])
    await live.settled()
    assert live.receiver.types() == ["low_balance"]


async def test_balance_events_nothing_watches_are_not_queued(live: Live) -> None:
    """Every charge emits a balance event; queueing it for nobody cost ~5% of a loaded loop."""
    await provision(live.engine, "alice", octets=100 * MB)
    await provision(live.engine, "bob", octets=100 * MB)
    await spend(live, "alice", "a1", MB)
    await live.settled()
    skipped = live.service.skipped_events
    assert skipped >= 1
    await live.subscribe()
    await live.threshold(subscriber_id="alice", unit="octets", below_units=50 * MB)
    await spend(live, "bob", "b1", MB)  # nobody watches bob
    await live.settled()
    assert live.service.skipped_events == skipped + 1
    await spend(live, "alice", "a2", 60 * MB)  # watched: queued, evaluated, fired
    await live.settled()
    assert live.service.skipped_events == skipped + 1
    assert live.receiver.types() == ["low_balance"]
    status = (await live.api.get("/v1/notifications/status")).json()
    assert status["skipped_engine_events"] == skipped + 1


async def test_a_top_up_right_after_a_refusal_still_brings_credit_back(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is still queued (the service is behind) when the top-up's credit event comes:
    that event must be queued too, although the subscriber is not yet known to be out."""
    await provision(live.engine, "alice", octets=0)
    await live.subscribe(events=["out_of_credit", "credit_reallocated"])
    handle = live.service._handle_batch

    async def behind(batch: list[Any]) -> None:
        await asyncio.sleep(0.2)
        await handle(batch)

    monkeypatch.setattr(live.service, "_handle_batch", behind)
    with pytest.raises(NoCredit):
        await spend(live, "alice", "a1", MB)
    await live.engine.admin(
        "topup", "gift", {"subscriber_id": "alice", "unit": "octets", "amount": 5 * MB}
    )
    await live.settled()
    assert live.receiver.types("alice") == ["out_of_credit", "credit_reallocated"]
    assert not live.service._refusing
