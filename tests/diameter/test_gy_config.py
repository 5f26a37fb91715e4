"""Gy settings through a real server: Final-Unit-Action REDIRECT / RESTRICT_ACCESS, rating groups
that are free (4011) or not rated (5031), and units per rating group."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.ledger import Unit
from quotaflow.rating import load_text

from .test_gy_support import MB, GyEnv, ccr, gy_env, mscc, msccs

pytestmark = pytest.mark.timeout(30)

INIT, UPD = CcRequestType.INITIAL, CcRequestType.UPDATE
Starter = Callable[[GyConfig], AbstractAsyncContextManager[GyEnv]]


@pytest.fixture
def configured(tmp_path: Path) -> Starter:
    def start(config: GyConfig) -> AbstractAsyncContextManager[GyEnv]:
        return gy_env(tmp_path, config)

    return start


async def _final_then_empty(env: GyEnv) -> tuple[dict[str, object], dict[str, object], int]:
    await env.subscriber(octets=5 * MB)
    client, sid = env.client, env.client.new_session_id()
    first = await client.request(
        ccr(client, sid, INIT, 0, mscc(10, requested={"CC-Total-Octets": 8 * MB}))
    )
    empty = await client.request(
        ccr(client, sid, UPD, 1, mscc(10, requested={}, used={"CC-Total-Octets": 5 * MB}))
    )
    code = empty.get("Result-Code")
    assert isinstance(code, int)
    return msccs(first)[0], msccs(empty)[0], code


async def test_redirect_keeps_the_user_on_the_top_up_portal(configured: Starter) -> None:
    config = GyConfig(
        final_unit_action="REDIRECT",
        redirect_server_address="http://top-up.example/",
        restricted_validity_s=120,
    )
    async with configured(config) as env:
        final, empty, code = await _final_then_empty(env)
    assert final["Result-Code"] == 2001 and final["Granted-Service-Unit/CC-Total-Octets"] == 5 * MB
    assert final["Final-Unit-Indication/Final-Unit-Action"] == 1  # REDIRECT
    assert final["Final-Unit-Indication/Redirect-Server/Redirect-Address-Type"] == 2  # URL
    assert (
        final["Final-Unit-Indication/Redirect-Server/Redirect-Server-Address"]
        == "http://top-up.example/"
    )
    # No credit left: the service is refused but the session stays, redirected, for 120 s.
    assert empty["Result-Code"] == 4012 and "Granted-Service-Unit" not in empty
    assert empty["Final-Unit-Indication/Final-Unit-Action"] == 1
    assert empty["Validity-Time"] == 120
    assert code == 2001


async def test_restrict_access_sends_its_filters(configured: Starter) -> None:
    config = GyConfig(
        final_unit_action="RESTRICT_ACCESS",
        restriction_filter_rules=("permit out ip from any to 10.0.0.1",),
        filter_ids=("top-up-only",),
    )
    async with configured(config) as env:
        final, empty, code = await _final_then_empty(env)
    assert final["Final-Unit-Indication/Final-Unit-Action"] == 2
    assert (
        final["Final-Unit-Indication/Restriction-Filter-Rule"]
        == b"permit out ip from any to 10.0.0.1"  # IPFilterRule is an OctetString
    )
    assert final["Final-Unit-Indication/Filter-Id"] == "top-up-only"
    assert empty["Result-Code"] == 4012 and code == 2001


async def test_free_and_unrated_rating_groups(configured: Starter) -> None:
    config = GyConfig(free_rating_groups=frozenset({1}), rated_rating_groups=frozenset({1, 10}))
    async with configured(config) as env:
        await env.subscriber(octets=50 * MB)
        client = env.client
        cca = await client.request(
            ccr(
                client,
                client.new_session_id(),
                INIT,
                0,
                mscc(1, requested={}),
                mscc(10, requested={}),
                mscc(99, requested={}),
            )
        )
        assert cca.get("Result-Code") == 2001
        assert [(m["Rating-Group"], m["Result-Code"]) for m in msccs(cca)] == [
            (1, 4011),
            (10, 2001),
            (99, 5031),
        ]
        assert env.reserved("alice") == 10 * MB
        # Only free services: no credit control needed at all.
        cca = await client.request(
            ccr(client, client.new_session_id(), INIT, 0, mscc(1, requested={}))
        )
        assert cca.get("Result-Code") == 4011


async def test_units_per_rating_group(configured: Starter) -> None:
    config = GyConfig(rating_group_units={30: Unit.SECONDS})
    async with configured(config) as env:
        await env.subscriber(octets=50 * MB)
        await env.topup("alice", Unit.SECONDS, 600)
        client = env.client
        # An empty Requested-Service-Unit: the group's own unit. Open5GS reports time and
        # volume in one Used-Service-Unit: each group takes its own.
        sid = client.new_session_id()
        cca = await client.request(
            ccr(client, sid, INIT, 0, mscc(30, requested={}), mscc(10, requested={}))
        )
        first, second = msccs(cca)
        assert first["Granted-Service-Unit/CC-Time"] == 300
        assert second["Granted-Service-Unit/CC-Total-Octets"] == 10 * MB
        both = {"CC-Time": 60, "CC-Total-Octets": 2 * MB}
        await client.request(
            ccr(
                client,
                sid,
                UPD,
                1,
                mscc(30, requested={}, used=both),
                mscc(10, requested={}, used=both),
            )
        )
        assert env.amount("alice", Unit.SECONDS) == 540
        assert env.amount("alice") == 48 * MB


TARIFF = """
currency = "SEK"

[[rating_group]]
id = 40
name = "voice"
unit = "seconds"

[[plan]]
id = "basic"
default = true

  [[plan.service]]
  unit = "seconds"
  price = "0.60"
  unit_size = 60

  [[plan.service]]
  unit = "octets"
  price = "0.10"
  unit_size = 1000000
"""


async def test_units_and_currency_from_the_tariff(tmp_path: Path) -> None:
    async with gy_env(tmp_path) as env:
        env.server.engine.rater.replace(load_text(TARIFF, "test tariff"))
        await env.subscriber(octets=50 * MB)
        await env.topup("alice", Unit.SECONDS, 600)
        client = env.client
        cca = await client.request(
            ccr(client, client.new_session_id(), INIT, 0, mscc(40, requested={}))
        )
        assert msccs(cca)[0]["Granted-Service-Unit/CC-Time"] == 300  # the tariff says seconds
        cca = await client.request(
            ccr(
                client,
                client.new_session_id(),
                CcRequestType.EVENT,
                0,
                ("Requested-Action", "PRICE_ENQUIRY"),
                ("Requested-Service-Unit", {"CC-Time": 120}),
            )
        )
        assert cca.get("Cost-Information/Currency-Code") == 752  # SEK
        assert cca.get("Cost-Information/Unit-Value/Value-Digits") == 12
        assert cca.get("Cost-Information/Unit-Value/Exponent") == -1
