"""Create, update and release over HTTP/2, each exchange validated against TS 32.291."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from openapi_core import OpenAPI

from quotaflow.ledger import Unit
from quotaflow.nchf import BASE_PATH, NchfConfig
from tests.nchf.conftest import (
    MB,
    UPF_ID,
    LiveChf,
    SpecClient,
    available_octets,
    charging_request,
    consumed_octets,
    imsi,
    serve_for_tests,
    subscriber,
    usage,
)

DEFAULT_GRANT = 10 * MB  # the engine's default octet grant


def _ref(response: httpx.Response) -> str:
    location = response.headers["location"]
    assert not location.endswith("/")
    return location.rsplit("/", 1)[1]


def _only_unit(body: dict[str, Any]) -> dict[str, Any]:
    (info,) = body["multipleUnitInformation"]
    return info


def _trigger_types(info: dict[str, Any]) -> set[str]:
    return {t["triggerType"] for t in info.get("triggers", [])}


async def _create(client: SpecClient, n: int, usages: list[dict[str, Any]]) -> str:
    response = await client.post("/chargingdata", charging_request(0, imsi(n), usages))
    assert response.status_code == 201, response.text
    return _ref(response)


async def test_online_session_create_update_release(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 1, 100 * MB)
    created = await client.post(
        "/chargingdata", charging_request(0, imsi(1), [usage(10, upf=UPF_ID)])
    )
    assert created.status_code == 201
    location = created.headers["location"]
    assert location.startswith(chf.api + "/chargingdata/")
    ref = _ref(created)
    body = created.json()
    assert body["invocationSequenceNumber"] == 0
    assert body["invocationTimeStamp"].endswith("Z")
    info = _only_unit(body)
    assert info["ratingGroup"] == 10 and info["uPFID"] == UPF_ID
    assert info["resultCode"] == "SUCCESS"
    assert info["grantedUnit"] == {"totalVolume": DEFAULT_GRANT}
    assert info["validityTime"] > 0 and info["quotaHoldingTime"] == 300
    assert {"QUOTA_EXHAUSTED", "VALIDITY_TIME", "QUOTA_THRESHOLD"} <= _trigger_types(info)
    assert info["volumeQuotaThreshold"] == DEFAULT_GRANT // 5
    assert "finalUnitIndication" not in info
    assert await available_octets(chf.engine, sub) == 100 * MB - DEFAULT_GRANT

    updated = await client.post(
        f"/chargingdata/{ref}/update",
        charging_request(1, imsi(1), [usage(10, requested=5 * MB, used=4 * MB, upf=UPF_ID)]),
    )
    assert updated.status_code == 200
    assert updated.json()["invocationSequenceNumber"] == 1
    info = _only_unit(updated.json())
    assert info["grantedUnit"]["totalVolume"] > 0
    assert await consumed_octets(chf.engine, sub) == 4 * MB

    released = await client.post(
        f"/chargingdata/{ref}/release",
        charging_request(2, imsi(1), [usage(10, used=3 * MB, ask=False)]),
    )
    assert released.status_code == 204 and released.content == b""
    assert await consumed_octets(chf.engine, sub) == 7 * MB
    assert await available_octets(chf.engine, sub) == 93 * MB  # nothing left reserved

    gone = await client.post(f"/chargingdata/{ref}/update", charging_request(3, imsi(1)))
    assert gone.status_code == 404 and gone.json()["cause"] == "CONTEXT_NOT_FOUND"
    assert await consumed_octets(chf.engine, sub) == 7 * MB


async def test_retransmitted_release_is_204(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 12, 100 * MB)
    ref = await _create(client, 12, [usage(1)])
    release = charging_request(1, imsi(12), [usage(1, used=MB, ask=False)])
    assert (await client.post(f"/chargingdata/{ref}/release", release)).status_code == 204
    again = await client.post(f"/chargingdata/{ref}/release", release)
    assert await consumed_octets(chf.engine, sub) == MB
    assert again.status_code == 204


async def test_retransmitted_update_is_not_charged_twice(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 2, 100 * MB)
    ref = await _create(client, 2, [usage(7)])
    update = charging_request(1, imsi(2), [usage(7, used=2 * MB)])
    first = await client.post(f"/chargingdata/{ref}/update", update)
    second = await client.post(f"/chargingdata/{ref}/update", update)
    marked = await client.post(
        f"/chargingdata/{ref}/update", {**update, "retransmissionIndicator": True}
    )
    # Even a body that differs is the same request when its sequence number repeats.
    differs = await client.post(
        f"/chargingdata/{ref}/update", charging_request(1, imsi(2), [usage(7, used=9 * MB)])
    )
    answers = [r.json()["multipleUnitInformation"] for r in (first, second, marked, differs)]
    assert all(r.status_code == 200 for r in (first, second, marked, differs))
    assert answers[1:] == answers[:1] * 3
    assert await consumed_octets(chf.engine, sub) == 2 * MB

    nxt = await client.post(
        f"/chargingdata/{ref}/update", charging_request(2, imsi(2), [usage(7, used=1 * MB)])
    )
    assert nxt.status_code == 200
    assert await consumed_octets(chf.engine, sub) == 3 * MB


async def test_retransmitted_create_gets_the_same_ref(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 3, 100 * MB)
    create = charging_request(0, imsi(3), [usage(1)])
    first = await client.post("/chargingdata", create)
    second = await client.post("/chargingdata", {**create, "retransmissionIndicator": True})
    assert first.status_code == second.status_code == 201
    assert _ref(first) == _ref(second)
    assert first.json()["multipleUnitInformation"] == second.json()["multipleUnitInformation"]
    assert await available_octets(chf.engine, sub) == 100 * MB - DEFAULT_GRANT  # held once


async def test_identities_supi_gpsi_nai(chf: LiveChf, client: SpecClient) -> None:
    await subscriber(chf.engine, 4, 100 * MB)
    by_nai = await client.post("/chargingdata", charging_request(0, "nai-user4@example.org"))
    assert by_nai.status_code == 201
    gpsi_only = charging_request(
        0,
        None,
        pDUSessionChargingInformation={
            "userInformation": {"servedGPSI": "msisdn-46700000004"},
        },
    )
    assert (await client.post("/chargingdata", gpsi_only)).status_code == 201
    # An unknown SUPI with a known GPSI still finds the subscriber.
    both = charging_request(
        0,
        imsi(999),
        pDUSessionChargingInformation={
            "userInformation": {"servedGPSI": "msisdn-46700000004"},
        },
    )
    assert (await client.post("/chargingdata", both)).status_code == 201


async def test_unknown_subscriber_is_404_user_unknown(chf: LiveChf, client: SpecClient) -> None:
    response = await client.post("/chargingdata", charging_request(0, imsi(404), [usage(1)]))
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["cause"] == "USER_UNKNOWN" and problem["status"] == 404
    for odd in ("gci-abc", "id:sub-1"):  # only SUPI/GPSI forms resolve, never internal ids
        r = await client.post("/chargingdata", charging_request(0, odd))
        assert r.status_code == 404 and r.json()["cause"] == "USER_UNKNOWN"


async def test_barred_subscriber(chf: LiveChf, client: SpecClient) -> None:
    await subscriber(chf.engine, 5, 100 * MB, status="barred")
    response = await client.post("/chargingdata", charging_request(0, imsi(5), [usage(1)]))
    assert response.status_code == 403
    assert response.json()["cause"] == "END_USER_REQUEST_DENIED"

    sub = await subscriber(chf.engine, 6, 100 * MB)
    ref = await _create(client, 6, [usage(1)])
    await chf.engine.admin("update_subscriber", None, {"id": sub, "status": "barred"})
    update = await client.post(
        f"/chargingdata/{ref}/update", charging_request(1, imsi(6), [usage(1, used=MB)])
    )
    assert update.status_code == 403
    assert update.json()["cause"] == "END_USER_REQUEST_DENIED"
    assert await consumed_octets(chf.engine, sub) == MB  # what was used is still charged
    released = await client.post(f"/chargingdata/{ref}/release", charging_request(2, imsi(6)))
    assert released.status_code == 204


async def test_no_credit(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 7)
    create = charging_request(0, imsi(7), [usage(1)])
    for _ in range(2):  # a retransmission is refused alike
        refused = await client.post("/chargingdata", create)
        assert refused.status_code == 403
        assert refused.json()["cause"] == "QUOTA_LIMIT_REACHED"
    assert not chf.store.ledger.sessions_by_subscriber.get(sub)  # nothing left open

    # With credit for one group only, the other is refused inside a 200/201.
    await chf.engine.admin(
        "topup",
        "t7",
        {
            "subscriber_id": sub,
            "unit": "octets",
            "amount": 50 * MB,
            "rating_groups": [1],
            "topup_id": "rg1",
        },
    )
    created = await client.post("/chargingdata", charging_request(0, imsi(7), [usage(1), usage(2)]))
    assert created.status_code == 201
    one, two = created.json()["multipleUnitInformation"]
    assert one["resultCode"] == "SUCCESS" and one["grantedUnit"]["totalVolume"] == DEFAULT_GRANT
    assert two["resultCode"] == "QUOTA_LIMIT_REACHED" and "grantedUnit" not in two
    assert "QUOTA_EXHAUSTED" in _trigger_types(two)


async def test_final_units(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 8, 3 * MB)
    created = await client.post("/chargingdata", charging_request(0, imsi(8), [usage(1)]))
    assert created.status_code == 201
    info = _only_unit(created.json())
    assert info["grantedUnit"] == {"totalVolume": 3 * MB}
    assert info["finalUnitIndication"] == {"finalUnitAction": "TERMINATE"}
    assert "QUOTA_THRESHOLD" not in _trigger_types(info)
    ref = _ref(created)
    update = await client.post(
        f"/chargingdata/{ref}/update", charging_request(1, imsi(8), [usage(1, used=3 * MB)])
    )
    assert update.status_code == 200
    info = _only_unit(update.json())
    assert info["resultCode"] == "QUOTA_LIMIT_REACHED" and "grantedUnit" not in info
    assert await consumed_octets(chf.engine, sub) == 3 * MB


async def test_offline_usage_is_recorded_never_refused(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 9, 5 * MB)
    created = await client.post(
        "/chargingdata", charging_request(0, imsi(9), [usage(3, used=0, offline=True)])
    )
    assert created.status_code == 201
    info = _only_unit(created.json())
    assert info["resultCode"] == "SUCCESS" and "grantedUnit" not in info
    assert _trigger_types(info) == {"QUOTA_THRESHOLD"}
    assert info["volumeQuotaThreshold"] == 10 * MB
    ref = _ref(created)
    for seq in (1, 2, 3):  # 12 MB used on a 5 MB balance: recorded, drawn as far as it goes
        r = await client.post(
            f"/chargingdata/{ref}/update",
            charging_request(seq, imsi(9), [usage(3, used=4 * MB, offline=True)]),
        )
        assert r.status_code == 200 and _only_unit(r.json())["resultCode"] == "SUCCESS"
    assert await consumed_octets(chf.engine, sub) == 5 * MB
    assert await available_octets(chf.engine, sub) == 0


async def test_many_updates_multiplexed_on_one_connection(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 10, 1000 * MB)
    refs = [await _create(client, 10, [usage(rg)]) for rg in range(1, 9)]

    async def report(ref: str, seq: int) -> int:
        r = await client.post(
            f"/chargingdata/{ref}/update",
            charging_request(seq, imsi(10), [usage(refs.index(ref) + 1, used=MB)]),
        )
        return r.status_code

    codes = await asyncio.gather(*(report(ref, seq) for ref in refs for seq in (1, 2, 3)))
    assert set(codes) == {200}
    assert await consumed_octets(chf.engine, sub) == 24 * MB


async def test_location_is_on_the_base_path(chf: LiveChf, client: SpecClient) -> None:
    await subscriber(chf.engine, 11, MB)
    created = await client.post("/chargingdata", charging_request(0, imsi(11)))
    assert created.headers["location"].startswith(f"{chf.origin}{BASE_PATH}/chargingdata/")


async def test_retransmission_after_a_restart_is_not_charged_twice(
    tmp_path: Path, spec: OpenAPI
) -> None:
    """Refs and request numbers come from the requests, so the ledger's own durable records
    recognise a retransmission even when the process restarted in between."""
    update = charging_request(1, imsi(13), [usage(1, used=2 * MB)])
    async with serve_for_tests(tmp_path) as live:
        client = SpecClient(spec, live)
        sub = await subscriber(live.engine, 13, 100 * MB)
        create = charging_request(0, imsi(13), [usage(1)])
        ref = _ref(await client.post("/chargingdata", create))
        first = await client.post(f"/chargingdata/{ref}/update", update)
        await client.aclose()
    async with serve_for_tests(tmp_path) as live:
        client = SpecClient(spec, live)
        again = await client.post(f"/chargingdata/{ref}/update", update)
        recreated = await client.post("/chargingdata", {**create, "retransmissionIndicator": True})
        assert again.status_code == 200 and recreated.status_code == 201
        assert again.json()["multipleUnitInformation"] == first.json()["multipleUnitInformation"]
        assert _ref(recreated) == ref
        assert await consumed_octets(live.engine, sub) == 2 * MB
        await client.aclose()


async def test_configured_units_and_offline_groups(tmp_path: Path, spec: OpenAPI) -> None:
    config = NchfConfig(
        rating_group_units={5: Unit.SECONDS, 6: Unit.EVENTS}, offline_rating_groups=frozenset({7})
    )
    async with serve_for_tests(tmp_path, config) as live:
        client = SpecClient(spec, live)
        sub = await subscriber(live.engine, 14)
        for unit, amount in (("seconds", 3_600), ("events", 50), ("octets", 100 * MB)):
            await live.engine.admin(
                "topup", f"t14-{unit}", {"subscriber_id": sub, "unit": unit, "amount": amount}
            )
        created = await client.post(
            "/chargingdata",
            charging_request(
                0,
                imsi(14),
                [usage(5), usage(6), usage(7, requested=MB)],
            ),
        )
        assert created.status_code == 201
        seconds, events, offline = created.json()["multipleUnitInformation"]
        assert seconds["grantedUnit"] == {"time": 300} and seconds["timeQuotaThreshold"] == 60
        assert events["grantedUnit"] == {"serviceSpecificUnits": 1}
        # A configured offline group gets no quota even when it asks, only its threshold.
        assert "grantedUnit" not in offline and offline["volumeQuotaThreshold"] == 10 * MB
        ref = _ref(created)
        used = {"localSequenceNumber": 1, "time": 100}
        r = await client.post(
            f"/chargingdata/{ref}/update",
            charging_request(
                1,
                imsi(14),
                [
                    {"ratingGroup": 5, "usedUnitContainer": [used]},
                ],
            ),
        )
        assert r.status_code == 200
        sub_now = await live.store.get_subscriber(sub)
        assert sub_now.counter(Unit.SECONDS)["consumed"] == 100
        await client.aclose()


def test_timestamps_are_rfc3339_with_milliseconds() -> None:
    from datetime import UTC, datetime

    from quotaflow.nchf._mapping import timestamp_now

    for ms in (0, 999, 1_000, 1_795_390_000_001, 1_795_390_000_999, 1_795_390_001_000):
        expected = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
        assert timestamp_now(ms) == expected.replace("+00:00", "Z")
    assert timestamp_now().endswith("Z")
