"""The /v1 management API over real HTTP against a real server and a real SQLite journal."""

from __future__ import annotations

import httpx
import pytest

import quotaflow
from quotaflow.server import Server


async def create(api: httpx.AsyncClient, sid: str = "alice", **extra: str) -> httpx.Response:
    return await api.post("/v1/subscribers", json={"id": sid, "msisdn": f"4670{sid}", **extra})


async def test_subscriber_lifecycle(api: httpx.AsyncClient) -> None:
    r = await create(api, imsi="001010000000001")
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/v1/subscribers/alice"
    assert r.json()["imsi"] == "001010000000001"
    again = await create(api, imsi="001010000000001")
    assert again.status_code == 201 and again.json() == r.json()
    clash = await create(api, imsi="001010000000099")
    assert clash.status_code == 409 and clash.json()["error"]["code"] == "conflict"
    r = await api.patch("/v1/subscribers/alice", json={"status": "barred"})
    assert r.status_code == 200 and r.json()["status"] == "barred"
    assert (await api.get("/v1/subscribers/alice")).json()["status"] == "barred"
    listing = (await api.get("/v1/subscribers", params={"limit": 10})).json()
    assert [s["id"] for s in listing["subscribers"]] == ["alice"]
    assert (await api.delete("/v1/subscribers/alice")).status_code == 204
    assert (await api.get("/v1/subscribers/alice")).status_code == 404


async def test_a_topup_past_the_bucket_limit_is_refused_and_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    """Each amount is within 2**62, their sum is not: the second top-up is an invalid amount
    (422 with its reason, not a 429 that invites a retry), the balance stays as it was, and
    the server goes on answering."""
    await create(api)
    full = {"unit": "octets", "amount": 2**62}
    r = await api.post("/v1/subscribers/alice/topups", json={"id": "t-1", **full})
    assert r.status_code == 201, r.text
    before = (await api.get("/v1/subscribers/alice/balance")).json()
    r = await api.post("/v1/subscribers/alice/topups", json={"id": "t-2", **full})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_amount", r.text
    assert "would hold more than" in r.json()["error"]["message"]
    assert (await api.get("/v1/subscribers/alice/balance")).json() == before
    r = await api.post("/v1/subscribers/alice/topups", json={"id": "t-3", **full, "amount": 1})
    assert r.status_code == 422
    assert (await api.get("/v1/subscribers/alice/balance")).json() == before


async def test_buckets_balance_topups_adjustments(api: httpx.AsyncClient) -> None:
    await create(api)
    r = await api.post(
        "/v1/subscribers/alice/buckets",
        json={
            "id": "video",
            "unit": "octets",
            "amount": 5_000_000,
            "rating_groups": [20],
            "priority": 1,
            "expires_at": "2099-01-01T00:00:00Z",
            "origin": "promotion",
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["rating_groups"] == [20] and r.json()["expires_at_ms"] == 4070908800000
    r = await api.post(
        "/v1/subscribers/alice/topups", json={"id": "t-1", "unit": "octets", "amount": 1_000}
    )
    assert r.status_code == 201
    repeat = await api.post(
        "/v1/subscribers/alice/topups", json={"id": "t-1", "unit": "octets", "amount": 1_000}
    )
    assert repeat.json() == r.json()
    other = await api.post(
        "/v1/subscribers/alice/topups", json={"id": "t-1", "unit": "octets", "amount": 2_000}
    )
    assert other.status_code == 409
    r = await api.post("/v1/subscribers/alice/adjustments", json={"unit": "octets", "amount": -400})
    assert r.status_code == 201, r.text
    too_much = await api.post(
        "/v1/subscribers/alice/adjustments", json={"unit": "octets", "amount": -10_000}
    )
    assert too_much.status_code == 409 and too_much.json()["error"]["code"] == "no_credit"
    balance = (await api.get("/v1/subscribers/alice/balance")).json()
    assert balance["totals"]["octets"] == {
        "amount": 5_000_600,
        "reserved": 0,
        "available": 5_000_600,
    }
    assert {b["id"] for b in balance["buckets"]} == {"video", "main-octets"}
    reservations = (await api.get("/v1/subscribers/alice/reservations")).json()
    assert reservations["reservations"] == []


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/v1/subscribers", {"msisdn": "1"}, 422, "id"),
        ("/v1/subscribers", {"id": "x", "colour": "red"}, 422, "colour"),
        ("/v1/subscribers", {"id": 5}, 422, "id"),
        ("/v1/subscribers/alice/topups", {"unit": "octets", "amount": -5}, 422, "amount"),
        ("/v1/subscribers/alice/topups", {"unit": "octets", "amount": "5"}, 422, "amount"),
        ("/v1/subscribers/alice/topups", {"unit": "litres", "amount": 5}, 422, "unit"),
        (
            "/v1/subscribers/alice/topups",
            {"unit": "octets", "amount": 5, "bucket_id": 7},
            422,
            "bucket_id",
        ),
        (
            "/v1/subscribers/alice/buckets",
            {"unit": "octets", "amount": 5, "expires_at": "tomorrow"},
            422,
            "expires_at",
        ),
        (
            "/v1/subscribers/alice/buckets",
            {"unit": "octets", "amount": 5, "expires_at": "2030-01-01T00:00:00"},
            422,
            "expires_at",
        ),
        ("/v1/subscribers/alice/adjustments", {"unit": "octets", "amount": 0}, 422, "amount"),
    ],
)
async def test_bad_input_is_refused_with_a_reason(
    api: httpx.AsyncClient,
    server: Server,
    path: str,
    body: dict[str, object],
    status: int,
    field: str,
) -> None:
    await create(api)
    before = server.store.ledger.snapshot()["subscribers"]
    r = await api.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] in ("invalid_request", "invalid_amount")
    assert error["detail"].get("field") == field or field in error["message"]
    assert server.store.ledger.snapshot()["subscribers"] == before


async def test_malformed_bodies_get_400(api: httpx.AsyncClient) -> None:
    await create(api)
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b"x" * 70_000):
        r = await api.post(
            "/v1/subscribers/alice/topups",
            content=raw,
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, raw[:10]
        assert r.json()["error"]["code"] == "bad_request"
    assert (await api.get("/v1/health")).status_code == 200


async def test_unknown_subscriber_is_404(api: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/subscribers/ghost"),
        ("GET", "/v1/subscribers/ghost/balance"),
        ("PATCH", "/v1/subscribers/ghost"),
        ("DELETE", "/v1/subscribers/ghost"),
    ]:
        r = await api.request(method, path, json={"plan": "x"} if method == "PATCH" else None)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_subscriber"
    r = await api.post("/v1/subscribers/ghost/topups", json={"unit": "octets", "amount": 5})
    assert r.status_code == 404


async def test_metrics_and_openapi(api: httpx.AsyncClient) -> None:
    await create(api)
    metrics = (await api.get("/metrics")).text
    assert (
        'quotaflow_http_requests_total{method="POST",route="/v1/subscribers",status="201"}'
        in metrics
    )
    assert "quotaflow_store_subscribers 1.0" in metrics
    # the subscriber's creation was a group commit, timed
    commits = [line for line in metrics.splitlines() if "store_commit_seconds_count" in line]
    assert len(commits) == 1 and float(commits[0].split()[-1]) >= 1
    # and made durable by the store's WAL syncer
    syncs = [line for line in metrics.splitlines() if line.startswith("quotaflow_store_wal_syncs ")]
    assert len(syncs) == 1 and float(syncs[0].split()[-1]) >= 1
    # no snapshot yet: a restart would replay everything since seq 0
    assert "quotaflow_store_snapshot_seq 0.0" in metrics
    assert "quotaflow_store_snapshots_stored 0.0" in metrics
    assert "quotaflow_store_last_snapshot_fork_seconds 0.0" in metrics
    native = quotaflow.NATIVE_MODE.split(" ", 1)[0]  # "compiled" or "interpreted"
    assert (
        f'quotaflow_build_info{{native="{native}",version="{quotaflow.__version__}"}} 1.0'
        in metrics
    )
    doc = (await api.get("/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.") and "/v1/subscribers/{sid}/balance" in doc["paths"]


async def test_changes_survive_a_restart(tmp_path: object, server: Server) -> None:
    base = f"http://127.0.0.1:{server.cfg.http_port}"
    async with httpx.AsyncClient(base_url=base) as api:
        await create(api)
        await api.post("/v1/subscribers/alice/topups", json={"unit": "money", "amount": 7})
    await server.stop()
    again = Server(server.cfg)
    await again.start()
    try:
        async with httpx.AsyncClient(base_url=base) as api:
            balance = (await api.get("/v1/subscribers/alice/balance")).json()
            assert balance["totals"]["money"]["amount"] == 7
    finally:
        await again.stop()
        server.store = again.store  # the fixture stops it again: harmless on a closed store
