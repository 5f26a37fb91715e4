"""One subscriber charged over Diameter Gy and over 5G Nchf at once, by one real server:
the same buckets, the same rules, one ledger."""

from __future__ import annotations

from pathlib import Path

import httpx

from quotaflow.diameter import CcRequestType
from quotaflow.ledger import Unit
from quotaflow.nchf import BASE_PATH
from tests.nchf.conftest import charging_request, usage

from .test_gy_support import IMSI, MB, ccr, gy_env, mscc, msccs


async def test_gy_and_nchf_draw_on_the_same_buckets(tmp_path: Path) -> None:
    async with gy_env(tmp_path) as env:
        sid = await env.subscriber(octets=30 * MB)
        base = f"http://127.0.0.1:{env.server.cfg.http_port}{BASE_PATH}"
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as sbi:
            # A 4G session over Gy takes 20 MB ...
            gy_sid = env.client.new_session_id()
            cca = await env.client.request(
                ccr(
                    env.client,
                    gy_sid,
                    CcRequestType.INITIAL,
                    0,
                    mscc(10, requested={"CC-Total-Octets": 20 * MB}),
                )
            )
            assert msccs(cca)[0]["Granted-Service-Unit/CC-Total-Octets"] == 20 * MB
            # ... so a 5G session of the same subscriber over Nchf gets only the 10 MB left,
            # as its last units.
            created = await sbi.post(
                f"{base}/chargingdata",
                json=charging_request(0, f"imsi-{IMSI}", [usage(10, requested=25 * MB)]),
            )
            assert created.status_code == 201, created.text
            (info,) = created.json()["multipleUnitInformation"]
            assert info["grantedUnit"]["totalVolume"] == 10 * MB
            assert "finalUnitIndication" in info
            assert env.reserved(sid) == 30 * MB
            # Usage reported on each side is posted to the one bucket.
            ref = created.headers["location"].rsplit("/", 1)[1]
            released = await sbi.post(
                f"{base}/chargingdata/{ref}/release",
                json=charging_request(1, f"imsi-{IMSI}", [usage(10, used=4 * MB, ask=False)]),
            )
            assert released.status_code == 204, released.text
        await env.client.request(
            ccr(
                env.client,
                gy_sid,
                CcRequestType.TERMINATION,
                1,
                mscc(10, used={"CC-Total-Octets": 15 * MB}),
            )
        )
        assert env.reserved(sid) == 0
        assert env.amount(sid, Unit.OCTETS) == 30 * MB - 4 * MB - 15 * MB
        records = env.server.store.read_records(0, 100)
        assert sorted(r["interface"] for r in records) == ["gy", "nchf"]
        env.server.store.ledger.check_invariants()
