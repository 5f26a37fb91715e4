"""ChargingNotify to the consumer's notifyUri, received by a real HTTP/2 server in the test."""

from __future__ import annotations

import asyncio

from openapi_core import OpenAPI

from tests.nchf.conftest import (
    MB,
    LiveChf,
    NotifySink,
    SpecClient,
    charging_request,
    imsi,
    schema_errors,
    subscriber,
    usage,
)


async def test_reauthorization_after_topup(
    chf: LiveChf, client: SpecClient, notify_sink: NotifySink, spec: OpenAPI
) -> None:
    sub = await subscriber(chf.engine, 30, 3 * MB)
    starved = await client.post(
        "/chargingdata",
        charging_request(
            0,
            imsi(30),
            [usage(5), usage(6, used=0, offline=True)],
            notify_uri=notify_sink.url + "/starved",
        ),
    )
    assert starved.status_code == 201
    online, _ = starved.json()["multipleUnitInformation"]
    assert "finalUnitIndication" in online  # the last 3 MB: this group will want more
    await subscriber(chf.engine, 31, 100 * MB)
    # Another subscriber's session: a top-up of sub-30 is none of its business.
    other = await client.post(
        "/chargingdata",
        charging_request(
            0,
            imsi(31),
            [usage(5)],
            notify_uri=notify_sink.url + "/other",
        ),
    )
    assert other.status_code == 201

    await chf.engine.admin("topup", "t30", {"subscriber_id": sub, "unit": "octets", "amount": MB})
    await notify_sink.wait_for(1)
    ctx, http_version, body = notify_sink.received[0]
    assert (ctx, http_version) == ("starved", "2")
    assert schema_errors(spec, "ChargingNotifyRequest", body) == []
    assert body == {
        "notificationType": "REAUTHORIZATION",
        # Only the online group that ran dry; free5GC re-requests exactly the listed groups.
        "reauthorizationDetails": [
            {"ratingGroup": 5, "quotaManagementIndicator": "ONLINE_CHARGING"}
        ],
    }
    await asyncio.sleep(0.2)
    assert len(notify_sink.received) == 1


async def test_no_reauthorization_while_quota_lasts(
    chf: LiveChf, client: SpecClient, notify_sink: NotifySink
) -> None:
    sub = await subscriber(chf.engine, 32, 100 * MB)
    created = await client.post(
        "/chargingdata",
        charging_request(
            0,
            imsi(32),
            [usage(5)],
            notify_uri=notify_sink.url + "/fine",
        ),
    )
    assert created.status_code == 201
    await chf.engine.admin("topup", "t32", {"subscriber_id": sub, "unit": "octets", "amount": MB})
    await asyncio.sleep(0.3)
    assert notify_sink.received == []


async def test_abort_charging_when_barred(
    chf: LiveChf, client: SpecClient, notify_sink: NotifySink, spec: OpenAPI
) -> None:
    sub = await subscriber(chf.engine, 33, 100 * MB)
    for name in ("a", "b"):
        r = await client.post(
            "/chargingdata",
            charging_request(
                0,
                imsi(33),
                [usage(1)],
                notify_uri=f"{notify_sink.url}/{name}",
            ),
        )
        assert r.status_code == 201
    await chf.engine.admin("update_subscriber", None, {"id": sub, "status": "barred"})
    await notify_sink.wait_for(2)
    assert sorted(ctx for ctx, _, _ in notify_sink.received) == ["a", "b"]
    for _, http_version, body in notify_sink.received:
        assert http_version == "2"
        assert body == {"notificationType": "ABORT_CHARGING"}
        assert schema_errors(spec, "ChargingNotifyRequest", body) == []


async def test_abort_of_chosen_sessions(
    chf: LiveChf, client: SpecClient, notify_sink: NotifySink
) -> None:
    sub = await subscriber(chf.engine, 35, 100 * MB)
    refs = {}
    for name in ("keep", "end"):
        r = await client.post(
            "/chargingdata",
            charging_request(
                0,
                imsi(35),
                [usage(1)],
                notify_uri=f"{notify_sink.url}/{name}",
            ),
        )
        refs[name] = r.headers["location"].rsplit("/", 1)[1]
    await chf.engine.abort_sessions(sub, [f"nchf-{refs['end']}"])
    await notify_sink.wait_for(1)
    await asyncio.sleep(0.2)
    assert notify_sink.received == [("end", "2", {"notificationType": "ABORT_CHARGING"})]


async def test_unreachable_consumer_does_not_disturb_charging(
    chf: LiveChf, client: SpecClient
) -> None:
    sub = await subscriber(chf.engine, 34, 100 * MB)
    r = await client.post(
        "/chargingdata",
        charging_request(
            0,
            imsi(34),
            [usage(1)],
            notify_uri="http://127.0.0.1:9/nowhere",
        ),
    )
    assert r.status_code == 201
    await chf.engine.admin("update_subscriber", None, {"id": sub, "status": "barred"})
    notifier = chf.app.state.nchf_notifier
    await notifier.drain()
    assert notifier.failed == 1 and notifier.sent == 0
