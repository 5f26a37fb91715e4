"""Sessions and events charged by a real tariff, through the engine and the durable store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from quotaflow.engine import Engine, GrantPolicy, ServiceRequest, ServiceResult
from quotaflow.engine.engine import _Step
from quotaflow.ledger import InvalidAmount, Unit
from quotaflow.rating import Rater, load_text
from quotaflow.server import Server
from quotaflow.store import EmbeddedStore
from tests.conftest import server_config
from tests.rating.test_tariff import MONDAY_NOON, TARIFF

MB = 1_000_000


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    now = [MONDAY_NOON]
    store = EmbeddedStore(tmp_path, clock=lambda: now[0], sweep_interval_s=3600)
    await store.open()
    eng = Engine(store, GrantPolicy(validity_s=600), Rater(load_text(TARIFF)))
    for sid in ("alice", "acme"):
        await eng.admin("create_subscriber", f"c-{sid}", {"id": sid, "plan": "basic"})
    try:
        yield eng
    finally:
        await store.close()


async def money_left(engine: Engine, sid: str) -> int:
    sub = await engine.store.get_subscriber(sid)
    return sum(b.amount for b in sub.buckets.values() if b.unit is Unit.MONEY)


async def test_voice_call_gets_the_exact_remaining_time(engine: Engine) -> None:
    await engine.admin(
        "topup", "m", {"subscriber_id": "alice", "unit": "money", "amount": 1_000_000}
    )
    # 0.12/min, 30/6, 0.05 connect: 0.95 left after the fee buys 30 + 74 x 6 = 474 s.
    call = await engine.session_start("call", "alice", 0, [ServiceRequest(100, Unit.SECONDS)])
    answer = call.services[0]
    assert answer.result is ServiceResult.GRANTED and answer.granted_units == 300  # default
    call = await engine.session_update(
        "call", 1, [ServiceRequest(100, Unit.SECONDS, used_units=100, requested_units=3600)]
    )
    answer = call.services[0]
    assert answer.result is ServiceResult.FINAL and answer.granted_units == 474 - 100
    end = await engine.session_terminate(
        "call", 2, [ServiceRequest(100, Unit.SECONDS, used_units=374)]
    )
    assert end.services[0].posted_units == 374
    assert await money_left(engine, "alice") == 1_000_000 - 50_000 - 474 * 2_000


async def test_allowance_then_money_in_one_interval(engine: Engine) -> None:
    await engine.admin("topup", "m", {"subscriber_id": "alice", "unit": "money", "amount": 100_000})
    await engine.admin(
        "add_bucket",
        "free",
        {"subscriber_id": "alice", "bucket_id": "free-mb", "unit": "octets", "amount": 3 * MB},
    )
    start = await engine.session_start(
        "s", "alice", 0, [ServiceRequest(10, requested_units=8 * MB)]
    )
    # 3 MB free plus 5 MB at 0.01/MB: the interval is not shrunk to what the bucket holds.
    assert start.services[0].granted_units == 8 * MB
    assert start.services[0].result is ServiceResult.GRANTED
    await engine.session_terminate("s", 1, [ServiceRequest(10, used_units=4 * MB + 1)])
    sub = await engine.store.get_subscriber("alice")
    assert sub.buckets["free-mb"].amount == 0
    assert await money_left(engine, "alice") == 100_000 - 2 * 10_000  # 1 MB + 1 octet: 2 MB


async def test_zero_rated_and_sponsored(engine: Engine) -> None:
    await engine.admin("topup", "m", {"subscriber_id": "alice", "unit": "octets", "amount": MB})
    await engine.admin(
        "topup", "s", {"subscriber_id": "acme", "unit": "money", "amount": 1_000_000}
    )
    video = await engine.session_start("v", "alice", 0, [ServiceRequest(20)])
    assert video.services[0].granted_units > 0
    await engine.session_terminate("v", 1, [ServiceRequest(20, used_units=500 * MB)])
    alice = await engine.store.get_subscriber("alice")
    assert alice.buckets["main-octets"].amount == MB  # zero-rated took nothing
    sms = await engine.direct_debit("sms-1", "alice", Unit.EVENTS, 3, 200)
    assert sms.cost_micros == 300_000
    assert await money_left(engine, "acme") == 700_000  # the sponsor paid
    assert await money_left(engine, "alice") == 0


async def test_balance_check_and_price_enquiry_use_the_rater(engine: Engine) -> None:
    await engine.admin(
        "topup", "m", {"subscriber_id": "alice", "unit": "money", "amount": 1_000_000}
    )
    assert await engine.balance_check("alice", Unit.SECONDS, 100) == 474
    assert engine.price_enquiry(Unit.SECONDS, 31, plan="basic", rating_group=100) == 50_000 + 72_000
    assert (
        engine.price_enquiry(Unit.OCTETS, MB, plan="basic", rating_group=10, zone="eu-roaming")
        == 50_000
    )


async def test_tariff_api(tmp_path: Path) -> None:
    server = Server(server_config(tmp_path / "data"))
    await server.start()
    base = f"http://127.0.0.1:{server.cfg.http_port}"
    try:
        async with httpx.AsyncClient(base_url=base) as api:
            current = (await api.get("/v1/tariffs")).json()
            assert current["default_plan"] == "default"
            doc = {
                "plan": [
                    {
                        "id": "cheap",
                        "service": [{"unit": "octets", "price": "0.001", "unit_size": 1_000_000}],
                    }
                ]
            }
            r = await api.put("/v1/tariffs", json=doc)
            assert r.status_code == 200 and r.json()["plans"] == ["cheap"]
            bad = await api.put(
                "/v1/tariffs",
                json={"plan": [{"id": "x", "service": [{"unit": "octets", "price": "-1"}]}]},
            )
            assert bad.status_code == 422 and "negative" in bad.json()["error"]["message"]
            price = (await api.get("/v1/tariffs/price", params={"units": 2_500_000})).json()
            assert price["cost_micros"] == 3_000
    finally:
        await server.stop()
    # The tariff set through the API is durable: a restart keeps it.
    again = Server(server.cfg)
    await again.start()
    try:
        async with httpx.AsyncClient(base_url=base) as api:
            assert (await api.get("/v1/tariffs")).json()["plans"] == ["cheap"]
    finally:
        await again.stop()


def _keys_sorted(value: object) -> bool:
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(_keys_sorted(v) for v in value.values())
    return True


@pytest.mark.parametrize("closing", [False, True])
@pytest.mark.parametrize(
    "service",
    [
        ServiceRequest(10, used_units=700_000),  # priced octets
        ServiceRequest(20, used_units=5),  # zero-rated
        ServiceRequest(100, Unit.SECONDS, used_units=30),  # a 30/6 tariff with a connect fee
        ServiceRequest(200, Unit.EVENTS, used_units=1),  # sponsored: a payer
        ServiceRequest(10),  # nothing used: no record
        ServiceRequest(10, used_units=1, want_grant=False),  # no reserve
    ],
)
async def test_a_charge_s_arguments_come_with_their_keys_sorted(
    engine: Engine, service: ServiceRequest, closing: bool
) -> None:
    # The immediate path hands them to the ledger to encode as they are (sorted_keys): the
    # journal's bytes and a repeat's fingerprint must be what sorting them would give.
    alice = await engine.store.get_subscriber("alice")
    step = _Step("s-1", "alice", 3, closing, {"interface": "gy"}, alice)
    args = engine._charge_args(step, service, None, MONDAY_NOON)
    assert _keys_sorted(args), list(args)
    assert ("payer" in args) == (service.rating_group == 200)
    assert ("zero_rated" in args) == (service.rating_group == 20)
    assert ("reserve" in args) == (service.want_grant and not closing)
    args.pop("record", None)  # the store takes it out before the ledger encodes
    assert orjson.dumps(args) == orjson.dumps(args, option=orjson.OPT_SORT_KEYS)


async def test_a_tariff_number_past_the_ledger_s_range_refuses_the_charge_and_the_store_reopens(
    tmp_path: Path,
) -> None:
    # The tariff loader checks lower bounds only; the ledger's range (AMOUNT_MAX) is checked
    # when the engine makes its price document, so the charge is refused and nothing is
    # journaled that replay would refuse.
    huge = TARIFF.replace("unit_size = 1000000", f"unit_size = {2**62 + 1}", 1)
    store = EmbeddedStore(tmp_path, clock=lambda: MONDAY_NOON, sweep_interval_s=3600)
    await store.open()
    eng = Engine(store, GrantPolicy(validity_s=600), Rater(load_text(huge)))
    await eng.admin("create_subscriber", "c", {"id": "alice", "plan": "basic"})
    await eng.admin("topup", "m", {"subscriber_id": "alice", "unit": "money", "amount": 10**6})
    await eng.session_start("s", "alice", 0, [ServiceRequest(100, Unit.SECONDS)])
    with pytest.raises(InvalidAmount):
        await eng.session_update("s", 1, [ServiceRequest(10, used_units=1_000)])
    assert store.ledger.first_answer("s#1#10") is None
    await store.close()
    again = EmbeddedStore(tmp_path, clock=lambda: MONDAY_NOON, sweep_interval_s=3600)
    await again.open()  # replays what was journaled
    await again.close()
