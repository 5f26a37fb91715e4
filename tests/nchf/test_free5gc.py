"""What free5GC's SMF really sends (read from its source), and what it needs back.

Its requests stray from the schema: `nFName` is "SMF", not a UUID; usedUnitContainer has no
`localSequenceNumber`; invocationSequenceNumber is always 0; create carries no usage; offline
usage comes with an empty requestedUnit. The client allows exactly these violations.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.nchf.conftest import (
    MB,
    UPF_ID,
    LiveChf,
    SpecClient,
    consumed_octets,
    imsi,
    subscriber,
)

QUIRKS = ("is not a 'uuid'", "'localSequenceNumber' is a required property")
INT32_MAX = 2**31 - 1
_TZ = timezone(timedelta(hours=8))


def go_time() -> str:
    """time.Time as Go marshals it: RFC 3339 with nanoseconds and the local offset."""
    ns = time.time_ns()
    stamp = datetime.fromtimestamp(ns // 10**9, _TZ).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 10**9:09d}+08:00"


def free5gc_request(n: int, usages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "chargingId": 7,
        "subscriberIdentifier": imsi(n),
        "nfConsumerIdentification": {
            "nodeFunctionality": "SMF",
            "nFName": "SMF",
            "nFIPv4Address": "127.0.0.2",
        },
        "invocationTimeStamp": go_time(),
        "invocationSequenceNumber": 0,
        "pDUSessionChargingInformation": {
            "chargingId": 7,
            "userInformation": {"servedGPSI": f"msisdn-4670{n:07d}"},
            "pduSessionInformation": {
                "pduSessionID": 1,
                "dnnId": "internet",
                "pduType": "IPV4",
                "networkSlicingInfo": {"sNSSAI": {"sst": 1, "sd": "010203"}},
            },
        },
        "notifyUri": "http://127.0.0.2:8000/nsmf-callback/notify_urn:uuid:1",
    }
    if usages:
        body["multipleUnitUsage"] = usages
        containers = [c for u in usages for c in u["usedUnitContainer"]]
        body["triggers"] = [t for c in containers for t in c["triggers"]]
    return body


def free5gc_usage(rating_group: int, used: int, *, online: bool, requested: int) -> dict[str, Any]:
    volume = {"totalVolume": used, "uplinkVolume": used // 2, "downlinkVolume": used - used // 2}
    container = {
        "quotaManagementIndicator": "ONLINE_CHARGING" if online else "OFFLINE_CHARGING",
        "triggers": [{"triggerType": "QUOTA_THRESHOLD", "triggerCategory": "IMMEDIATE_REPORT"}],
        "triggerTimestamp": go_time(),
        **volume,
    }
    asked = (
        {"totalVolume": requested, "uplinkVolume": requested, "downlinkVolume": requested}
        if online
        else {}
    )
    return {
        "ratingGroup": rating_group,
        "uPFID": UPF_ID,
        "usedUnitContainer": [container],
        "requestedUnit": asked,
    }


def _ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ints(v)]
    return []


async def test_a_free5gc_session(chf: LiveChf, client: SpecClient) -> None:
    sub = await subscriber(chf.engine, 20, 100 * MB)
    created = await client.post("/chargingdata", free5gc_request(20), quirks=QUIRKS)
    assert created.status_code == 201
    # free5GC takes the last "/" segment of Location as the ref.
    ref = created.headers["location"].split("/")[-1]
    assert ref and "multipleUnitInformation" not in created.json()

    report = free5gc_request(
        20,
        [
            free5gc_usage(1, 0, online=True, requested=5 * MB),
            free5gc_usage(2, 2 * MB, online=False, requested=0),
        ],
    )
    first = await client.post(f"/chargingdata/{ref}/update", report, quirks=QUIRKS)
    assert first.status_code == 200
    online, offline = first.json()["multipleUnitInformation"]
    assert online["uPFID"] == offline["uPFID"] == UPF_ID
    assert "QUOTA_EXHAUSTED" in {t["triggerType"] for t in online["triggers"]}
    assert online["grantedUnit"]["totalVolume"] == 5 * MB
    assert online["validityTime"] > 0
    assert "QUOTA_THRESHOLD" in {t["triggerType"] for t in offline["triggers"]}
    assert offline["volumeQuotaThreshold"] > 0
    assert "grantedUnit" not in offline
    assert all(0 <= i <= INT32_MAX for i in _ints(first.json()))

    # The same bytes again (an HTTP retry): answered as before, charged once.
    again = await client.post(f"/chargingdata/{ref}/update", report, quirks=QUIRKS)
    assert again.json()["multipleUnitInformation"] == first.json()["multipleUnitInformation"]
    assert await consumed_octets(chf.engine, sub) == 2 * MB

    # A new report, still numbered 0: a new invocationTimeStamp makes it a new request.
    later = free5gc_request(
        20,
        [
            free5gc_usage(1, 3 * MB, online=True, requested=5 * MB),
            free5gc_usage(2, 1 * MB, online=False, requested=0),
        ],
    )
    response = await client.post(f"/chargingdata/{ref}/update", later, quirks=QUIRKS)
    assert response.status_code == 200
    assert await consumed_octets(chf.engine, sub) == 6 * MB

    final = free5gc_request(
        20,
        [
            free5gc_usage(1, 1 * MB, online=True, requested=5 * MB),
            free5gc_usage(2, 1 * MB, online=False, requested=0),
        ],
    )
    released = await client.post(f"/chargingdata/{ref}/release", final, quirks=QUIRKS)
    assert released.status_code == 204
    assert await consumed_octets(chf.engine, sub) == 8 * MB
    assert not chf.store.ledger.sessions_by_subscriber.get(sub)
