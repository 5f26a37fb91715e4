"""The engine over the real embedded store, on simulated time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quotaflow.engine import (
    SESSION_EVENTS,
    Engine,
    EngineEvent,
    GrantPolicy,
    ServiceRequest,
    ServiceResult,
    split_identity,
)
from quotaflow.ledger import Conflict, SubscriberBarred, Unit, UnknownSession, UnknownSubscriber
from quotaflow.store import EmbeddedStore

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def engine(tmp_path: Path, clock: Clock) -> AsyncIterator[Engine]:
    store = EmbeddedStore(tmp_path, clock=clock, sweep_interval_s=3600)
    await store.open()
    eng = Engine(store, GrantPolicy(validity_s=60, grace_s=10))
    await eng.admin("create_subscriber", "c", {"id": "a", "msisdn": "4670", "imsi": "00101"})
    await eng.admin("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 100 * MB})
    try:
        yield eng
    finally:
        await store.close()


def available(engine: Engine) -> int:
    store = engine.store
    assert isinstance(store, EmbeddedStore)
    return sum(b.available for b in store.ledger.subscribers["a"].buckets.values())


async def test_grants_follow_the_usage_rate(engine: Engine, clock: Clock) -> None:
    first = await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    assert first.services[0].granted_units == 10 * MB  # the default, no rate known yet
    clock.ms += 60_000
    slow = await engine.session_update("s", 1, [ServiceRequest(10, used_units=600_000)])
    # 10 kB/s over a 60 s validity: 600 kB, one update per validity period.
    assert slow.services[0].granted_units == 600_000
    clock.ms += 6_000
    fast = await engine.session_update("s", 2, [ServiceRequest(10, used_units=600_000)])
    # The rate rose to 100 kB/s; the moving average (weight 0.5) gives 55 kB/s -> 3.3 MB.
    assert fast.services[0].granted_units == 3_300_000


async def test_final_units_then_no_credit(engine: Engine, clock: Clock) -> None:
    await engine.admin(
        "adjust", "adj", {"subscriber_id": "a", "unit": "octets", "amount": -95 * MB}
    )
    a = await engine.session_start("s", "a", 0, [ServiceRequest(10, requested_units=8 * MB)])
    assert a.services[0].result is ServiceResult.FINAL
    assert a.services[0].granted_units == 5 * MB
    b = await engine.session_update("s", 1, [ServiceRequest(10, used_units=5 * MB)])
    assert b.services[0].result is ServiceResult.NO_CREDIT and b.services[0].posted_units == 5 * MB


async def test_retransmission_charges_once_even_after_restart(
    engine: Engine, clock: Clock, tmp_path: Path
) -> None:
    await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    clock.ms += 30_000
    first = await engine.session_update("s", 1, [ServiceRequest(10, used_units=2 * MB)])
    again = await engine.session_update("s", 1, [ServiceRequest(10, used_units=2 * MB)])
    assert again == first
    left = available(engine)
    await engine.store.close()
    store = EmbeddedStore(tmp_path, clock=clock, sweep_interval_s=3600)
    await store.open()
    fresh = Engine(store, engine.policy)  # no rate history: it would size the grant otherwise
    clock.ms += 5_000
    after = await fresh.session_update("s", 1, [ServiceRequest(10, used_units=2 * MB)])
    assert after == first
    assert available(fresh) == left
    engine.store = store  # so the fixture closes the open one


async def test_terminate_releases_and_lapsed_grants_return(engine: Engine, clock: Clock) -> None:
    await engine.session_start("s1", "a", 0, [ServiceRequest(10), ServiceRequest(20)])
    assert available(engine) == 80 * MB
    end = await engine.session_terminate("s1", 1, [ServiceRequest(10, used_units=MB)])
    assert end.services[0].result is ServiceResult.REPORTED
    assert available(engine) == 99 * MB
    with pytest.raises(UnknownSession):
        await engine.session_update("s1", 2, [ServiceRequest(10)])
    await engine.session_start("s2", "a", 0, [ServiceRequest(10)])
    assert available(engine) == 89 * MB
    clock.ms += 70_000  # validity + grace passed: the next touch voids the grant
    await engine.admin("topup", "t2", {"subscriber_id": "a", "unit": "octets", "amount": 1})
    assert available(engine) == 99 * MB + 1


async def test_listeners_hear_only_the_kinds_they_take(engine: Engine) -> None:
    every: list[EngineEvent] = []
    sessions: list[EngineEvent] = []
    engine.subscribe(every.append)
    engine.subscribe(sessions.append, SESSION_EVENTS)
    await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    await engine.session_update("s", 1, [ServiceRequest(10, used_units=MB)])
    await engine.admin("topup", "t3", {"subscriber_id": "a", "unit": "octets", "amount": MB})
    assert "balance_changed" in [e.kind for e in every]
    assert [e.kind for e in sessions] == ["credit_added"]
    engine.unsubscribe(every.append)
    engine.unsubscribe(sessions.append)
    heard = len(every)
    await engine.session_update("s", 2, [ServiceRequest(10, used_units=MB)])
    assert len(every) == heard and len(sessions) == 1


async def test_a_charge_event_reaches_only_the_listeners_that_want_it(engine: Engine) -> None:
    """A charge asks each taker's `wants` before it builds its event: nobody wants it, no event
    is built; the takers that want it get it, the others do not (a listener without `wants`
    takes every one). Other events are not asked about: every taker hears them."""
    asked: list[tuple[str, str]] = []
    watched: set[str] = set()

    def wants(kind: str, subscriber_id: str) -> bool:
        asked.append((kind, subscriber_id))
        return subscriber_id in watched

    picky: list[EngineEvent] = []
    every: list[EngineEvent] = []
    engine.subscribe(picky.append, frozenset({"balance_changed"}), wants=wants)
    await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    await engine.session_update("s", 1, [ServiceRequest(10, used_units=MB)])
    assert picky == [] and asked[-1] == ("balance_changed", "a")
    watched.add("a")
    await engine.session_update("s", 2, [ServiceRequest(10, used_units=MB)])
    assert [(e.kind, e.subscriber_id, e.detail["session_id"]) for e in picky] == [
        ("balance_changed", "a", "s")
    ]
    engine.subscribe(every.append, frozenset({"balance_changed"}))
    watched.clear()
    await engine.session_update("s", 3, [ServiceRequest(10, used_units=MB)])
    assert len(picky) == 1 and [e.kind for e in every] == ["balance_changed"]
    await engine.admin("topup", "t3", {"subscriber_id": "a", "unit": "octets", "amount": MB})
    assert len(picky) == 2 and len(every) == 2  # not a charge: not asked, heard by both


async def test_a_charge_asks_for_its_events_in_turn(engine: Engine) -> None:
    """A charge that posts usage and is refused offers no_credit, then balance_changed; a
    taker may want the second because it took the first (as the notify gate does with a
    subscriber it has refusals queued for)."""
    refused: set[str] = set()
    heard: list[str] = []

    def wants(kind: str, subscriber_id: str) -> bool:
        return kind == "no_credit" or subscriber_id in refused

    def listener(event: EngineEvent) -> None:
        heard.append(event.kind)
        if event.kind == "no_credit":
            refused.add(event.subscriber_id)

    await engine.admin("create_subscriber", "c2", {"id": "b", "msisdn": "4671"})
    await engine.admin("topup", "t2", {"subscriber_id": "b", "unit": "octets", "amount": MB})
    engine.subscribe(listener, wants=wants)
    await engine.session_start("sb", "b", 0, [ServiceRequest(10)])
    assert heard == []  # granted: balance_changed, not wanted yet
    done = await engine.session_update("sb", 1, [ServiceRequest(10, used_units=MB)])
    assert done.services[0].granted_units == 0
    assert heard == ["no_credit", "balance_changed"]


async def test_a_wants_that_fails_neither_fails_the_charge_nor_loses_the_event(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A taker's `wants` that raises is logged and taken as a yes, as a listener's failure
    is logged: the charge is answered, and the taker still gets its event."""
    heard: list[EngineEvent] = []

    def wants(kind: str, subscriber_id: str) -> bool:
        raise RuntimeError("broken")

    engine.subscribe(heard.append, frozenset({"balance_changed"}), wants=wants)
    await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    done = await engine.session_update("s", 1, [ServiceRequest(10, used_units=MB)])
    assert done.services[0].result is ServiceResult.GRANTED
    assert [e.kind for e in heard] == ["balance_changed", "balance_changed"]
    assert "wants failed" in caplog.text


async def test_barred_unknown_and_events(engine: Engine) -> None:
    events: list[EngineEvent] = []
    engine.subscribe(events.append)
    await engine.session_start("s", "a", 0, [ServiceRequest(10)])
    await engine.admin("topup", "t3", {"subscriber_id": "a", "unit": "octets", "amount": MB})
    kinds = [e.kind for e in events]
    added = next(e for e in events if e.kind == "credit_added")
    assert "s" in added.sessions and kinds[-1] == "balance_changed"
    await engine.admin("update_subscriber", "bar", {"id": "a", "status": "barred"})
    assert events[-1].kind == "barred" and "s" in events[-1].sessions
    await engine.abort_sessions("a", ["s", "nope"])
    assert events[-1].kind == "abort" and list(events[-1].sessions) == ["s"]
    with pytest.raises(SubscriberBarred):
        await engine.session_start("s2", "a", 0, [ServiceRequest(10)])
    blocked = await engine.session_update("s", 1, [ServiceRequest(10, used_units=10)])
    assert blocked.services[0].result is ServiceResult.BARRED
    with pytest.raises(UnknownSubscriber):
        await engine.resolve_any("msisdn-999")
    assert await engine.resolve_any("imsi-00101") == "a"
    assert await engine.resolve_any("msisdn-4670") == "a"


async def test_event_charging(engine: Engine) -> None:
    await engine.admin("topup", "m", {"subscriber_id": "a", "unit": "money", "amount": 120_000})
    debit = await engine.direct_debit("sms-1", "a", Unit.EVENTS, 2, None)
    assert debit.units == 2 and debit.cost_micros == 100_000
    again = await engine.direct_debit("sms-1", "a", Unit.EVENTS, 2, None)
    assert again == debit
    assert await engine.balance_check("a", Unit.EVENTS, None) == 0  # 20,000 left < 50,000
    assert engine.price_enquiry(Unit.OCTETS, 1_500_000) == 20_000
    await engine.refund("r-1", "a", Unit.MONEY, 30_000)
    assert await engine.balance_check("a", Unit.EVENTS, None) == 1


def test_split_identity() -> None:
    assert split_identity("imsi-001010000000001") == ("imsi", "001010000000001")
    assert split_identity("msisdn-4670") == ("msisdn", "4670")
    assert split_identity("nai-user@realm") == ("nai", "user@realm")
    assert split_identity("sip:bob@ims") == ("sip_uri", "sip:bob@ims")
    assert split_identity("plain") == ("id", "plain")


async def test_charging_records_written_with_the_debit(
    engine: Engine, clock: Clock, tmp_path: Path
) -> None:
    store = engine.store
    assert isinstance(store, EmbeddedStore)
    await engine.session_start("s", "a", 0, [ServiceRequest(10)], meta={"interface": "gy"})
    clock.ms += 10_000
    used = ServiceRequest(10, used_units=3 * MB, used_input_octets=MB, used_output_octets=2 * MB)
    await engine.session_update("s", 1, [used])
    await engine.session_update("s", 1, [used])  # retransmission: no second record
    await engine.session_terminate("s", 2, [ServiceRequest(10, used_units=MB)], cause="logout")
    await engine.admin("topup", "m", {"subscriber_id": "a", "unit": "money", "amount": 60_000})
    await engine.direct_debit("sms-9", "a", Unit.EVENTS, 1, None, interface="gy")
    records = store.read_records(0, 100)
    assert [
        (r["kind"], r["posted_units"] if "posted_units" in r else r["units"]) for r in records
    ] == [("session", 3 * MB), ("session", MB), ("event", 1)]
    first = records[0]
    assert first["interface"] == "gy" and first["session_id"] == "s"
    assert first["input_octets"] == MB and first["output_octets"] == 2 * MB
    assert first["interval_start_ms"] == clock.ms - 10_000 and first["drawn"] == {
        "main-octets": 3 * MB
    }
    assert records[1]["final"] and records[1]["cause"] == "logout"
    assert records[2]["cost_micros"] == 50_000
    # The records are in the same database as the journal, committed with it.
    await store.close()
    again = EmbeddedStore(tmp_path, clock=clock, sweep_interval_s=3600)
    await again.open()
    assert again.read_records(0, 100) == records
    engine.store = again


async def test_a_start_copied_with_other_meta_is_a_copy_of_the_same_subscriber(
    engine: Engine,
) -> None:
    """A CCR-I retransmitted after the server restarted into a release that records more in
    the session's meta (the peer's Origin-State-Id): answered as the first time, not refused
    as a reuse of the id. Another subscriber under the same id is still refused."""
    first = await engine.session_start("s", "a", 0, [ServiceRequest(10)], {"interface": "gy"})
    again = await engine.session_start(
        "s", "a", 0, [ServiceRequest(10)], {"interface": "gy", "peer_state": 7}
    )
    assert again == first
    await engine.admin("create_subscriber", "cb", {"id": "b", "msisdn": "4671"})
    with pytest.raises(Conflict):
        await engine.session_start("s", "b", 0, [ServiceRequest(10)], {"interface": "gy"})
