"""Gifts and transfers through the real server: atomic, idempotent, limited, reversible."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from quotaflow.engine import EngineEvent, ServiceRequest
from quotaflow.ledger import Unit
from quotaflow.ledger.transfers import TransferLimits
from quotaflow.server import Server
from tests.conftest import server_config

MB = 1_000_000


async def people(api: httpx.AsyncClient) -> None:
    for sid in ("ann", "ben"):
        assert (await api.post("/v1/subscribers", json={"id": sid})).status_code == 201
    await api.post(
        "/v1/subscribers/ann/buckets",
        json={
            "id": "month",
            "unit": "octets",
            "amount": 30 * MB,
            "expires_at": "2099-01-01T00:00:00Z",
        },
    )


async def octets(api: httpx.AsyncClient, sid: str) -> dict[str, int]:
    balance = (await api.get(f"/v1/subscribers/{sid}/balance")).json()
    return balance["totals"]["octets"]


async def test_a_gift_moves_free_credit_once_with_its_expiry(
    api: httpx.AsyncClient, server: Server
) -> None:
    await people(api)
    events: list[EngineEvent] = []
    server.engine.subscribe(events.append)
    # 10 MB of ann's 30 MB are held by a live session: only 20 MB can be given.
    await server.engine.session_start("s", "ann", 0, [ServiceRequest(10, requested_units=10 * MB)])
    gift = {"id": "g1", "from": "ann", "to": "ben", "unit": "octets", "amount": 12 * MB}
    r = await api.post("/v1/transfers", json=gift)
    assert r.status_code == 201, r.text
    assert (await api.post("/v1/transfers", json=gift)).json() == r.json()  # a retry
    assert (await api.post("/v1/transfers", json={**gift, "amount": 1})).status_code == 409
    assert (await octets(api, "ann"))["amount"] == 18 * MB
    ben = (await api.get("/v1/subscribers/ben/balance")).json()
    (bucket,) = ben["buckets"]
    assert bucket["amount"] == 12 * MB and bucket["origin"] == "gift"
    assert bucket["expires_at_ms"] == 4070908800000  # carried from ann's bucket
    assert any(e.kind == "credit_added" and e.subscriber_id == "ben" for e in events)
    too_much = await api.post("/v1/transfers", json={**gift, "id": "g2", "amount": 9 * MB})
    assert too_much.status_code == 409 and "8000000" in too_much.json()["error"]["message"]
    assert (await octets(api, "ann"))["amount"] == 18 * MB  # a refusal moves nothing
    server.store.ledger.check_invariants()


async def test_a_reversal_gives_back_what_is_left(api: httpx.AsyncClient, server: Server) -> None:
    await people(api)
    r = await api.post(
        "/v1/transfers",
        json={"id": "g1", "from": "ann", "to": "ben", "unit": "octets", "amount": 10 * MB},
    )
    assert r.status_code == 201
    await server.engine.session_start("b", "ben", 0, [ServiceRequest(10, requested_units=4 * MB)])
    await server.engine.session_terminate("b", 1, [ServiceRequest(10, used_units=4 * MB)])
    back = await api.post("/v1/transfers/g1/reversal", json={"id": "r1"})
    assert back.status_code == 201, back.text
    assert back.json()["amount"] == 6 * MB and back.json()["reverses"] == "g1"
    assert (await octets(api, "ann"))["amount"] == 26 * MB
    assert (await octets(api, "ben"))["amount"] == 0
    again = await api.post("/v1/transfers/g1/reversal", json={"id": "r2"})
    assert again.status_code == 409
    assert (await api.get("/v1/transfers/g1")).json()["reversed_by"] == "r1"
    server.store.ledger.check_invariants()


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"to": "ann"}, 422, "same"),
        ({"to": "nobody"}, 404, "nobody"),
        ({"amount": 0}, 422, "amount"),
        ({"unit": "litres"}, 422, "unit"),
        ({"expiry": "sometimes"}, 422, "expiry"),
        ({"colour": "red"}, 422, "colour"),
    ],
)
async def test_refused_transfers_say_why(
    api: httpx.AsyncClient, body: dict[str, object], status: int, says: str
) -> None:
    await people(api)
    base = {"id": "x", "from": "ann", "to": "ben", "unit": "octets", "amount": MB}
    r = await api.post("/v1/transfers", json={**base, **body})
    assert r.status_code == status, r.text
    assert says in r.text


async def test_limits_per_transfer_per_day_and_what_must_be_kept(tmp_path: Path) -> None:
    cfg = server_config(tmp_path / "data")
    cfg.limits.transfers = TransferLimits(
        per_transfer={"octets": 8 * MB}, per_day={"octets": 12 * MB}, keep_min={"octets": 20 * MB}
    )
    server = Server(cfg)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http_port}") as api:
            await people(api)
            base = {"from": "ann", "to": "ben", "unit": "octets"}
            r = await api.post("/v1/transfers", json={**base, "id": "a", "amount": 9 * MB})
            assert r.status_code == 429 and "per transfer" in r.text
            assert (
                await api.post("/v1/transfers", json={**base, "id": "b", "amount": 8 * MB})
            ).status_code == 201
            r = await api.post("/v1/transfers", json={**base, "id": "c", "amount": 5 * MB})
            assert r.status_code == 429 and "a day" in r.text
            r = await api.post("/v1/transfers", json={**base, "id": "d", "amount": 4 * MB})
            assert r.status_code == 429 and "must keep" in r.text  # 22 - 4 < 20
    finally:
        await server.stop()


async def test_the_cli_gives_and_reverses(api: httpx.AsyncClient, server: Server) -> None:
    from tests.api.test_cli import cli

    await people(api)
    url = f"http://127.0.0.1:{server.cfg.http_port}"
    rc, _, err = await cli("transfer", "ann", "ben", "octets", "1000", "--id", "t9", "--url", url)
    assert rc == 0, err
    rc, out, _ = await cli("transfer", "t9", "--reverse", "--id", "t9-back", "--url", url)
    assert rc == 0 and '"reverses": "t9"' in out


async def test_vouchers_carve_hand_over_and_redeem_once(
    api: httpx.AsyncClient, server: Server
) -> None:
    await people(api)
    r = await api.post(
        "/v1/subscribers/ann/vouchers", json={"id": "v1", "unit": "octets", "amount": 10 * MB}
    )
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert len(token) >= 32 and "token_hash" not in r.json()
    assert (await octets(api, "ann"))["amount"] == 20 * MB  # the value left at creation
    too_big = await api.post(
        "/v1/subscribers/ann/vouchers", json={"id": "v2", "unit": "octets", "amount": 21 * MB}
    )
    assert too_big.status_code == 409  # never more than the account holds
    wrong = await api.post("/v1/vouchers/redeem", json={"token": "x" * 32, "subscriber_id": "ben"})
    used = await api.post("/v1/vouchers/redeem", json={"token": token, "subscriber_id": "ben"})
    assert used.status_code == 200 and used.json()["redeemed_by"] == "ben"
    again = await api.post("/v1/vouchers/redeem", json={"token": token, "subscriber_id": "ann"})
    # A used token and a wrong one get the very same answer.
    assert wrong.status_code == again.status_code == 404
    assert wrong.json() == again.json()
    assert (await octets(api, "ben"))["amount"] == 10 * MB
    assert (await api.get("/v1/vouchers/v1")).json()["state"] == "redeemed"
    server.store.ledger.check_invariants()


async def test_an_unredeemed_voucher_returns_to_its_parent(
    api: httpx.AsyncClient, server: Server
) -> None:
    import asyncio

    await people(api)
    soon = server.store.clock() + 1_000
    r = await api.post(
        "/v1/subscribers/ann/vouchers",
        json={"id": "v1", "unit": "octets", "amount": 5 * MB, "expires_at": soon},
    )
    assert r.status_code == 201, r.text
    assert (await octets(api, "ann"))["amount"] == 25 * MB
    for _ in range(60):  # the sweeper runs every second
        if (await octets(api, "ann"))["amount"] == 30 * MB:
            break
        await asyncio.sleep(0.1)
    assert (await octets(api, "ann"))["amount"] == 30 * MB
    assert (await api.get("/v1/vouchers/v1")).json()["state"] == "expired"
    late = await api.post(
        "/v1/vouchers/redeem", json={"token": r.json()["token"], "subscriber_id": "ben"}
    )
    assert late.status_code == 404


async def test_providers_keep_a_session_going(api: httpx.AsyncClient, server: Server) -> None:
    for sid in ("kid", "mum", "work"):
        assert (await api.post("/v1/subscribers", json={"id": sid})).status_code == 201
    await api.post("/v1/subscribers/kid/topups", json={"unit": "octets", "amount": 2 * MB})
    await api.post("/v1/subscribers/mum/topups", json={"unit": "octets", "amount": 100 * MB})
    await api.post("/v1/subscribers/work/topups", json={"unit": "octets", "amount": 100 * MB})
    r = await api.put(
        "/v1/subscribers/kid/providers",
        json=[
            {"id": "mum", "limit": {"octets": 5 * MB}},
            {"id": "work", "limit": {"octets": 50 * MB}},
        ],
    )
    assert r.status_code == 200, r.text
    bad = await api.put("/v1/subscribers/kid/providers", json=[{"id": "kid", "limit": {}}])
    assert bad.status_code == 422
    engine = server.engine
    # The kid asks for 10 MB with 2 MB left: mum gives her 5 MB a month, work the other 3.
    start = await engine.session_start("k", "kid", 0, [ServiceRequest(10, requested_units=10 * MB)])
    assert start.services[0].granted_units == 10 * MB
    assert start.services[0].result.value == "granted"  # not final: the session just goes on
    assert (await octets(api, "mum"))["amount"] == 95 * MB
    assert (await octets(api, "work"))["amount"] == 97 * MB
    # Next time mum's month is used up: work alone gives.
    more = await engine.session_update(
        "k", 1, [ServiceRequest(10, used_units=10 * MB, requested_units=20 * MB)]
    )
    assert more.services[0].granted_units == 20 * MB
    assert (await octets(api, "mum"))["amount"] == 95 * MB
    assert (await octets(api, "work"))["amount"] == 77 * MB
    server.store.ledger.check_invariants()


async def test_a_donation_rewards_the_donor_and_reports_use(tmp_path: Path) -> None:
    cfg = server_config(tmp_path / "data")
    cfg.limits.transfers = TransferLimits(
        rewards={"octets": {"per_units": 5 * MB, "reward_unit": "money", "amount": 100_000}}
    )
    server = Server(cfg)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http_port}") as api:
            await people(api)
            r = await api.post(
                "/v1/transfers",
                json={
                    "id": "d1",
                    "from": "ann",
                    "to": "ben",
                    "unit": "octets",
                    "amount": 12 * MB,
                    "donation": True,
                },
            )
            assert r.status_code == 201, r.text
            assert r.json()["reward"] == {"unit": "money", "amount": 200_000}  # 2 whole 5 MB
            ann = (await api.get("/v1/subscribers/ann/balance")).json()
            assert ann["totals"]["money"]["amount"] == 200_000
            await server.engine.session_start("b", "ben", 0, [ServiceRequest(10)])
            await server.engine.session_terminate("b", 1, [ServiceRequest(10, used_units=3 * MB)])
            report = (await api.get("/v1/transfers/d1")).json()
            assert (report["used"], report["left"]) == (3 * MB, 9 * MB)
            records = server.store.read_records(0, 10)
            assert any("gift-d1-0" in r.get("drawn", {}) for r in records)
    finally:
        await server.stop()


async def test_the_broker_serves_a_subscriber_from_its_own_networks_offers(
    api: httpx.AsyncClient, server: Server
) -> None:
    for sid, imsi in (("eve", "001010000000042"), ("max", "999990000000001")):
        r = await api.post("/v1/subscribers", json={"id": sid, "imsi": imsi})
        assert r.status_code == 201
        await api.post(f"/v1/subscribers/{sid}/topups", json={"unit": "money", "amount": 500_000})
    offers = [
        ("cheap", "00101", 10 * MB, 100_000, 2),
        ("dear", "00101", 10 * MB, 300_000, 5),
        ("elsewhere", "99999", 10 * MB, 1_000, 9),
    ]
    for oid, network, block, price, blocks in offers:
        r = await api.post(
            "/v1/offers",
            json={
                "id": oid,
                "network": network,
                "unit": "octets",
                "block_units": block,
                "blocks": blocks,
                "price_micros": price,
            },
        )
        assert r.status_code == 201, r.text
    # eve (IMSI 00101...) wants 25 MB: both cheap blocks, then one dear block.
    r = await api.post(
        "/v1/subscribers/eve/purchases", json={"id": "p1", "unit": "octets", "units": 25 * MB}
    )
    assert r.status_code == 201, r.text
    assert r.json()["units"] == 30 * MB and r.json()["cost_micros"] == 500_000
    assert (await octets(api, "eve"))["amount"] == 30 * MB
    # Nothing left to pay with: refused whole, nothing moves.
    r = await api.post(
        "/v1/subscribers/eve/purchases", json={"id": "p2", "unit": "octets", "units": MB}
    )
    assert r.status_code == 409
    listed = {o["id"]: o["blocks_left"] for o in (await api.get("/v1/offers")).json()["offers"]}
    assert listed == {"dear": 4, "elsewhere": 9}
    # max's network offers only its own blocks.
    r = await api.post(
        "/v1/subscribers/max/purchases", json={"id": "p3", "unit": "octets", "units": 15 * MB}
    )
    assert r.status_code == 201 and r.json()["offers"] == [{"offer": "elsewhere", "blocks": 2}]
    server.store.ledger.check_invariants()


async def test_postpaid_gives_allowance_and_is_credited_its_value(
    api: httpx.AsyncClient, server: Server
) -> None:
    for sid in ("corp", "pre"):
        assert (await api.post("/v1/subscribers", json={"id": sid})).status_code == 201
    await api.post(
        "/v1/subscribers/corp/buckets",
        json={"id": "allowance", "unit": "octets", "amount": 20_000 * MB},
    )
    r = await api.put("/v1/subscribers/corp/postpaid", json={"credit_limit_micros": 50_000_000})
    assert r.status_code == 200, r.text
    # The postpaid account runs up a bill: 30 SMS at 0.05 on credit.
    debit = await server.engine.direct_debit("sms", "corp", Unit.EVENTS, 30, None)
    assert debit.cost_micros == 1_500_000
    balance = (await api.get("/v1/subscribers/corp/balance")).json()
    line = next(b for b in balance["buckets"] if b["id"] == "overdraft-money")
    assert line["amount"] == 48_500_000  # 1.50 owed
    r = await api.post(
        "/v1/allowance-transfers",
        json={"id": "a1", "from": "corp", "to": "pre", "unit": "octets", "amount": 5_000 * MB},
    )
    assert r.status_code == 201, r.text
    # 5,000 MB at the built-in 0.01 per MB: 50.00, which first repays the 1.50 owed.
    assert r.json()["value_micros"] == 50_000_000 and r.json()["repaid_micros"] == 1_500_000
    assert (await octets(api, "pre"))["amount"] == 5_000 * MB
    assert (await octets(api, "corp"))["amount"] == 15_000 * MB
    corp = (await api.get("/v1/subscribers/corp/balance")).json()["totals"]["money"]
    assert corp["amount"] == 50_000_000 + 48_500_000  # the line whole again, 48.50 in credit
    refused = await api.post(
        "/v1/allowance-transfers",
        json={"id": "a2", "from": "pre", "to": "corp", "unit": "octets", "amount": MB},
    )
    assert refused.status_code == 422 and "postpaid" in refused.text
    server.store.ledger.check_invariants()
