"""A client that restarts loses its sessions: a higher Origin-State-Id than its sessions
recorded (RFC 6733 8.16) makes the server end them and return what they hold at once, rather
than when their grants lapse. Against a real Server over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from quotaflow.diameter import CcRequestType, PeerInfo, build_ccr, encode_message
from quotaflow.diameter.gy import Ccr, GyApplication, GyService, _origin_state_id
from quotaflow.diameter.validate import parse_message
from quotaflow.metrics import REGISTRY

from .test_gy_support import MB, GyEnv, ccr, connect, gy_env, mscc

pytestmark = pytest.mark.timeout(30)

INIT, UPD = CcRequestType.INITIAL, CcRequestType.UPDATE
GRANT = 10 * MB  # the engine's first grant for a session with no usage seen


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[GyEnv]:
    async with gy_env(tmp_path) as env:
        yield env


def _gy(env: GyEnv) -> GyApplication:
    (service,) = [s for s in env.server._stoppers if isinstance(s, GyService)]
    return service.app


async def _until(done: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not done():
            await asyncio.sleep(0.01)


def _state(value: int) -> tuple[str, int]:
    return ("Origin-State-Id", value)


async def test_a_higher_origin_state_id_releases_the_client_s_older_sessions(env: GyEnv) -> None:
    app, sessions = _gy(env), env.server.store.ledger.sessions
    labels = {"interface": "gy", "reason": "client_restarted"}
    released = REGISTRY.get_sample_value("quotaflow_sessions_released_total", labels) or 0.0
    await env.subscriber(octets=100 * MB)
    client = env.client
    opened: dict[str, int] = {}  # session -> the Origin-State-Id of its CCR-I
    for state in (7, 7, 6):  # the same state again, and a lower one, release nothing
        sid = client.new_session_id()
        cca = await client.request(ccr(client, sid, INIT, 0, mscc(10, requested={}), _state(state)))
        assert cca.get("Result-Code") == 2001
        opened[sid] = state
    # Another client's session, and one of this client's that said no state: not its to end.
    other = await connect(env.server.cfg.diameter_port, origin_host="other.pgw.test")
    try:
        elsewhere = other.new_session_id()
        cca = await other.request(ccr(other, elsewhere, INIT, 0, mscc(10, requested={}), _state(1)))
        assert cca.get("Result-Code") == 2001
    finally:
        await other.close(timeout_s=0.5)
    await asyncio.sleep(0.1)  # any release the first states started is done
    assert all(sid in sessions for sid in opened) and elsewhere in sessions
    assert env.reserved("alice") == 4 * GRANT and app.released_on_restart == 0

    restarted = client.new_session_id()
    cca = await client.request(ccr(client, restarted, INIT, 0, mscc(10, requested={}), _state(8)))
    assert cca.get("Result-Code") == 2001
    await _until(lambda: not any(sid in sessions for sid in opened))
    assert restarted in sessions and elsewhere in sessions
    assert app.released_on_restart == 3
    assert env.reserved("alice") == 2 * GRANT  # the new session's and the other client's
    labels = {"interface": "gy", "reason": "client_restarted"}
    assert REGISTRY.get_sample_value("quotaflow_sessions_released_total", labels) == released + 3
    assert env.amount("alice") == 100 * MB  # released, nothing charged

    # A released session is over for the client too.
    lost = next(iter(opened))
    cca = await client.request(ccr(client, lost, UPD, 1, mscc(10, used={"CC-Total-Octets": MB})))
    assert cca.get("Result-Code") == 5002

    # The same state again (another new session of the restarted client) releases nothing.
    again = client.new_session_id()
    await client.request(ccr(client, again, INIT, 0, mscc(10, requested={}), _state(8)))
    await asyncio.sleep(0.1)
    assert restarted in sessions and again in sessions and app.released_on_restart == 3


async def test_a_client_s_cer_state_counts_when_its_ccrs_carry_none(env: GyEnv) -> None:
    """A client connected directly: its CER's Origin-State-Id is its state. A new connection
    with a higher one (it restarted) and a CCR-I release what the old one opened."""
    await env.subscriber(octets=100 * MB)
    port, host = env.server.cfg.diameter_port, "restarting.pgw.test"
    sessions = env.server.store.ledger.sessions
    before = await connect(port, origin_host=host, origin_state_id=100)
    try:
        old = before.new_session_id()
        cca = await before.request(ccr(before, old, INIT, 0, mscc(10, requested={})))
        assert cca.get("Result-Code") == 2001
    finally:
        await before.close(timeout_s=0.5)
    assert sessions[old]["meta"]["origin_state_id"] == 100
    after = await connect(port, origin_host=host, origin_state_id=101)
    try:
        new = after.new_session_id()
        cca = await after.request(ccr(after, new, INIT, 0, mscc(10, requested={})))
        assert cca.get("Result-Code") == 2001
        await _until(lambda: old not in sessions)
        assert new in sessions and env.reserved("alice") == GRANT
    finally:
        await after.close(timeout_s=0.5)


def test_through_a_relay_only_the_ccr_s_own_state_counts() -> None:
    """The relay's CER speaks of the relay: its Origin-State-Id is not the client's."""

    def ccr_from(host: str, *extra: tuple[str, object]) -> Ccr:
        request = build_ccr(
            session_id=f"{host};1;1",
            origin_host=host,
            origin_realm="pgw.test",
            destination_realm="quotaflow.local",
            request_type=INIT,
            request_number=0,
            extra=list(extra),
        )
        return Ccr.read(parse_message(encode_message(request), None))

    def peer(host: str, state: int) -> PeerInfo:
        return PeerInfo(host, "pgw.test", (), 0, "test", frozenset({4}), state)

    assert _origin_state_id(ccr_from("pgw.test"), peer("relay.test", 5)) is None
    assert _origin_state_id(ccr_from("pgw.test", _state(9)), peer("relay.test", 5)) == 9
    assert _origin_state_id(ccr_from("pgw.test"), peer("pgw.test", 5)) == 5
    assert _origin_state_id(ccr_from("pgw.test", _state(9)), peer("pgw.test", 5)) == 9
