"""Webhook delivery: signed, ordered per subscriber, retried with backoff, then dead letters."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import pytest

from quotaflow import notify
from quotaflow.ledger import Unit
from quotaflow.notify import NotifyOptions
from quotaflow.notify._db import NotifyDb
from tests.notify.conftest import SECRET, Live, fast_options
from tests.records.harness import eventually, provision, running_engine, serve_routes

EVENTS_EACH = 15


async def test_signed_and_in_order_per_subscriber_despite_retries(live: Live) -> None:
    await live.subscribe(events=["refused_requests"])
    rng = random.Random(7)
    # Every third event fails its first attempt, and replies take varying time.
    live.receiver.status = lambda e, attempt: (
        500 if e["sequence"] % 3 == 0 and attempt == 1 else 200
    )
    live.receiver.delay_s = lambda e: rng.uniform(0, 0.01)
    for i in range(EVENTS_EACH):
        for sid in ("alice", "bob", "carol"):
            await live.service.notify("refused_requests", sid, {"i": i})
    await live.settled()
    assert live.receiver.bad_signatures == 0
    for sid in ("alice", "bob", "carol"):
        got = [e["sequence"] for e in live.receiver.delivered if e["subscriber_id"] == sid]
        assert got == list(range(1, EVENTS_EACH + 1)), sid
    retried = [e["sequence"] for e, attempt in live.receiver.attempts if attempt == 2]
    assert len(retried) == 3 * (EVENTS_EACH // 3)


def test_signature_helpers() -> None:
    body = b'{"a":1}'
    now = int(time.time() * 1000)
    header = notify.sign(SECRET, body, now)
    assert notify.verify_signature(SECRET, header, body)
    assert not notify.verify_signature(SECRET, header, body + b" ")
    assert not notify.verify_signature("another-secret-0123456", header, body)
    old = notify.sign(SECRET, body, now - 3_600_000)
    assert not notify.verify_signature(SECRET, old, body)  # a replay from an hour ago


async def test_retries_then_dead_letter_then_retry_from_the_api(live: Live) -> None:
    sub = await live.subscribe(events=["out_of_credit"])
    live.receiver.status = lambda e, attempt: 503
    started = time.perf_counter()
    await live.service.notify("out_of_credit", "alice", {"n": 1})
    await live.service.notify("out_of_credit", "alice", {"n": 2})
    await live.settled()
    assert [a for _, a in live.receiver.attempts] == [1, 2, 3, 1, 2, 3]
    assert time.perf_counter() - started >= 2 * (0.005 + 0.01)  # backed off between attempts
    r = await live.api.get("/v1/dead-letters", params={"subscription_id": sub["id"]})
    letters = r.json()["dead_letters"]
    assert [(d["event"]["data"]["n"], d["attempts"], d["error"]) for d in letters] == [
        (1, 3, "HTTP 503"),
        (2, 3, "HTTP 503"),
    ]
    live.receiver.status = lambda e, attempt: 200
    r = await live.api.post(f"/v1/dead-letters/{letters[0]['id']}/retry")
    assert r.status_code == 202
    await live.settled()
    assert [e["data"]["n"] for e in live.receiver.delivered] == [1]
    left = (await live.api.get("/v1/dead-letters")).json()["dead_letters"]
    assert [d["id"] for d in left] == [letters[1]["id"]]
    assert (await live.api.delete(f"/v1/dead-letters/{left[0]['id']}")).status_code == 204
    missing = await live.api.get(f"/v1/dead-letters/{left[0]['id']}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def test_a_client_error_is_not_retried(live: Live) -> None:
    await live.subscribe()
    live.receiver.status = lambda e, attempt: 410
    await live.service.notify("exhausted", "alice", {})
    await live.settled()
    assert len(live.receiver.attempts) == 1
    (letter,) = (await live.api.get("/v1/dead-letters")).json()["dead_letters"]
    assert letter["error"] == "HTTP 410 (not retried)"


async def test_unreachable_receiver_is_dead_lettered(live: Live) -> None:
    await live.api.post(
        "/v1/subscriptions", json={"url": "http://127.0.0.1:1/hook", "secret": SECRET}
    )
    await live.service.notify("exhausted", "alice", {})
    await live.settled()
    (letter,) = (await live.api.get("/v1/dead-letters")).json()["dead_letters"]
    assert letter["attempts"] == 3 and "ConnectError" in letter["error"]


async def test_a_hanging_receiver_never_slows_charging(live: Live) -> None:
    await provision(live.engine, "alice")
    await live.subscribe()
    await live.threshold(subscriber_id="alice", unit="octets", below_units=99_999_000)
    live.receiver.delay_s = lambda e: 1.5  # every delivery hangs
    started = time.perf_counter()
    for i in range(200):
        await live.engine.direct_debit(f"d-{i}", "alice", Unit.OCTETS, 1000, None)
    assert time.perf_counter() - started < 1.0
    await live.settled()
    assert live.receiver.types() == ["low_balance"]


async def test_subscriptions_api_and_durability(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        service = await notify.start(engine, engine.store, data, NotifyOptions())
        async with (
            serve_routes(notify.routes(service)) as url,
            httpx.AsyncClient(base_url=url, timeout=5) as api,
        ):
            r = await api.post(
                "/v1/subscriptions",
                json={
                    "url": "http://127.0.0.1:9/af",
                    "events": ["out_of_credit", "credit_reallocated"],
                    "subscriber_ids": ["alice"],
                },
            )
            assert r.status_code == 201 and len(r.json()["secret"]) >= 32
            sub = r.json()
            assert r.headers["location"] == f"/v1/subscriptions/{sub['id']}"
            shown = (await api.get(f"/v1/subscriptions/{sub['id']}")).json()
            assert "secret" not in shown and shown["events"] == [
                "credit_reallocated",
                "out_of_credit",
            ]
            for body, field in [
                ({"url": "ftp://x"}, "url"),
                ({"url": "http://x", "events": ["nope"]}, "events"),
                ({"url": "http://x", "secret": "short"}, "secret"),
                ({"url": "http://x", "colour": 1}, "colour"),
            ]:
                bad = await api.post("/v1/subscriptions", json=body)
                assert bad.status_code == 422, body
                assert bad.json()["error"]["detail"] == {"field": field}
            assert (await api.post("/v1/subscriptions", content=b"[")).status_code == 400
            assert (await api.put("/v1/subscriptions")).status_code == 405
            th = await api.post(
                "/v1/thresholds",
                json={"scope": "group", "unit": "octets", "group_id": "g", "below_units": 5},
            )
            assert th.status_code == 404  # no group "g"
            th = await api.post("/v1/thresholds", json={"unit": "octets", "below_percent": 20})
            assert th.status_code == 201
        await service()
    async with running_engine(data) as engine:  # a restart keeps the promises
        service = await notify.start(engine, engine.store, data, NotifyOptions())
        assert list(service.dispatcher.subscriptions) == [sub["id"]]
        assert service.dispatcher.subscriptions[sub["id"]].secret == sub["secret"]
        assert len(service.thresholds) == 1
        await service()


@pytest.mark.parametrize("options", [fast_options(queue_per_subscriber_max=2)])
async def test_full_queue_and_shutdown_become_dead_letters(
    live: Live, options: NotifyOptions
) -> None:
    await live.subscribe()
    live.receiver.delay_s = lambda e: 0.5
    for n in range(4):  # one in flight, one waiting, two over the limit of 2
        await live.service.notify("exhausted", "alice", {"n": n})
    await eventually(lambda: live.service.dispatcher.stats.dead == 2, what="overflow")
    letters = (await live.api.get("/v1/dead-letters")).json()["dead_letters"]
    assert [(d["event"]["data"]["n"], d["error"]) for d in letters] == [
        (2, "queue full"),
        (3, "queue full"),
    ]
    await live.service.stop()  # with two still queued: they must not vanish
    db = NotifyDb(live.data_dir / "notify.sqlite3")
    await db.open()
    letters = await db.dead_letters(None, 0, 100)
    await db.close()
    assert [(d["event"]["data"]["n"], d["error"]) for d in letters][2:] == [
        (0, "not delivered before shutdown"),
        (1, "not delivered before shutdown"),
    ]
