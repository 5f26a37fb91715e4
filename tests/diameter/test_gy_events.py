"""EVENT_REQUEST credit control against a real server: direct debiting, refund, balance check
and price enquiry (RFC 4006 6.3, 6.4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from quotaflow.diameter import CcRequestType, Message
from quotaflow.diameter.constants import FLAG_RETRANSMIT
from quotaflow.ledger import Unit

from .test_gy_support import MB, GyEnv, ccr, gy_env, mscc, msccs

pytestmark = pytest.mark.timeout(30)

EVENT = CcRequestType.EVENT


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GyEnv]:
    async with gy_env(tmp_path) as env:
        yield env


def event(env: GyEnv, action: str, *avps: tuple[str, Any]) -> Message:
    client = env.client
    return ccr(client, client.new_session_id(), EVENT, 0, ("Requested-Action", action), *avps)


def units(**amounts: int) -> tuple[str, dict[str, int]]:
    return ("Requested-Service-Unit", {name.replace("_", "-"): v for name, v in amounts.items()})


def cost_micros(answer: Message) -> int:
    digits = answer.get("Cost-Information/Unit-Value/Value-Digits")
    exponent = answer.get("Cost-Information/Unit-Value/Exponent", 0)
    assert isinstance(digits, int) and isinstance(exponent, int)
    assert answer.get("Cost-Information/Currency-Code") == 978
    return digits * 10 ** (exponent + 6)


async def test_direct_debiting_from_units_then_money(env: GyEnv) -> None:
    await env.subscriber()
    await env.topup("alice", Unit.EVENTS, 4)
    await env.topup("alice", Unit.MONEY, 1_000_000)
    request = event(env, "DIRECT_DEBITING", units(CC_Service_Specific_Units=3))
    cca = await env.client.request(request)
    assert cca.get("Result-Code") == 2001
    assert cca.get("Granted-Service-Unit/CC-Service-Specific-Units") == 3
    assert cost_micros(cca) == 0  # paid by the events bucket
    assert env.amount("alice", Unit.EVENTS) == 1

    # A retransmission is answered the same and not debited again.
    again = Message(
        request.command_code,
        request.application_id,
        flags=request.flags | FLAG_RETRANSMIT,
        end_to_end=request.end_to_end,
        avps=list(request.avps),
    )
    assert (await env.client.request(again)).encode()[20:] == cca.encode()[20:]
    assert env.amount("alice", Unit.EVENTS) == 1

    # One event left in units, two paid with money at 0.05 each.
    cca = await env.client.request(
        event(env, "DIRECT_DEBITING", mscc(7, requested={"CC-Service-Specific-Units": 3}))
    )
    assert cca.get("Result-Code") == 2001
    [service] = msccs(cca)
    assert service["Rating-Group"] == 7 and service["Result-Code"] == 2001
    assert service["Granted-Service-Unit/CC-Service-Specific-Units"] == 3
    assert cost_micros(cca) == 100_000
    assert env.amount("alice", Unit.MONEY) == 900_000


async def test_direct_debiting_without_credit_is_4012(env: GyEnv) -> None:
    await env.subscriber(octets=MB)
    cca = await env.client.request(event(env, "DIRECT_DEBITING", units(CC_Total_Octets=2 * MB)))
    assert cca.get("Result-Code") == 4012
    assert cca.find("Granted-Service-Unit") is None and cca.find("Cost-Information") is None
    assert env.amount("alice") == MB


async def test_event_without_requested_action_debits(env: GyEnv) -> None:
    await env.subscriber()
    await env.topup("alice", Unit.EVENTS, 5)
    client = env.client
    cca = await client.request(
        ccr(client, client.new_session_id(), EVENT, 0, units(CC_Service_Specific_Units=1))
    )
    assert cca.get("Result-Code") == 2001 and env.amount("alice", Unit.EVENTS) == 4


async def test_refund_account(env: GyEnv) -> None:
    await env.subscriber(octets=MB)
    cca = await env.client.request(event(env, "REFUND_ACCOUNT", units(CC_Total_Octets=2 * MB)))
    assert cca.get("Result-Code") == 2001
    assert env.amount("alice") == 3 * MB
    cca = await env.client.request(event(env, "REFUND_ACCOUNT", units()))
    assert cca.get("Result-Code") == 5005
    assert env.amount("alice") == 3 * MB


async def test_check_balance(env: GyEnv) -> None:
    await env.subscriber(octets=10 * MB)
    cca = await env.client.request(event(env, "CHECK_BALANCE", units(CC_Total_Octets=5 * MB)))
    assert cca.get("Result-Code") == 2001 and cca.get("Check-Balance-Result") == 0
    # 50 MB are more than the 10 MB of units (and no money to pay the rest).
    cca = await env.client.request(event(env, "CHECK_BALANCE", units(CC_Total_Octets=50 * MB)))
    assert cca.get("Result-Code") == 2001 and cca.get("Check-Balance-Result") == 1
    assert env.amount("alice") == 10 * MB and env.reserved("alice") == 0


async def test_price_enquiry(env: GyEnv) -> None:
    await env.subscriber()
    cca = await env.client.request(event(env, "PRICE_ENQUIRY", units(CC_Time=60)))
    assert cca.get("Result-Code") == 2001
    assert cost_micros(cca) == 120_000  # 0.002 per second
    assert cca.get("Cost-Information/Unit-Value/Value-Digits") == 12
    assert cca.get("Cost-Information/Unit-Value/Exponent") == -2
    cca = await env.client.request(
        event(
            env,
            "PRICE_ENQUIRY",
            ("Requested-Service-Unit", {"CC-Money": {"Unit-Value": {"Value-Digits": 1}}}),
        )
    )
    assert cca.get("Result-Code") == 5031


async def test_event_for_unknown_or_barred_user(env: GyEnv) -> None:
    cca = await env.client.request(event(env, "DIRECT_DEBITING", units(CC_Time=1)))
    assert cca.get("Result-Code") == 5030
    await env.subscriber(status="barred")
    await env.topup("alice", Unit.SECONDS, 100)
    cca = await env.client.request(event(env, "DIRECT_DEBITING", units(CC_Time=1)))
    assert cca.get("Result-Code") == 4010
    assert env.amount("alice", Unit.SECONDS) == 100
