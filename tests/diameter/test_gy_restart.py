"""A Gy client that comes back with a new Origin-State-Id lost its sessions: the server ends
them and frees their grants (diameter/gy_restart.py). Over a real server and real connections."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from quotaflow.config import ConfigError, load
from quotaflow.diameter import CcRequestType
from quotaflow.diameter.client import DiameterClient
from quotaflow.diameter.events import PeerInfo
from quotaflow.diameter.gy import GyApplication, GyService
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_restart import RELEASED, PeerRestarts, direct_state
from quotaflow.diameter.transport import DiameterServer
from quotaflow.engine import Engine, ServiceRequest
from quotaflow.server import Server
from quotaflow.store import StoreUnavailable

from .test_gy_support import MB, GyEnv, ccr, connect, gy_client_env, gy_server, mscc

pytestmark = pytest.mark.timeout(30)

INIT, TERM = CcRequestType.INITIAL, CcRequestType.TERMINATION
PGW = "pgw.restart.test"


def _gy(server: Server) -> GyApplication:
    [service] = [s for s in server._stoppers if isinstance(s, GyService)]
    return service.app


async def _open(client: DiameterClient, count: int, origin_host: str | None = None) -> list[str]:
    """`count` sessions with a 10 MB grant each; `origin_host` names another client in the
    CCRs (as a relay passes them on)."""
    ids = []
    for _ in range(count):
        sid = client.new_session_id()
        request = ccr(client, sid, INIT, 0, mscc(10, requested={}))
        if origin_host is not None:
            found = request.find("Origin-Host")
            assert found is not None
            found.value = origin_host
        cca = await client.request(request)
        assert cca.get("Result-Code") == 2001
        ids.append(sid)
    return ids


async def _settled(server: Server) -> None:
    """Until no release task is running and every change is durable."""
    gy = _gy(server)
    for _ in range(500):
        if not gy.restarts._tasks:
            break
        await asyncio.sleep(0.01)
    assert not gy.restarts._tasks
    await server.store.flush()


async def test_a_restarted_client_s_sessions_are_ended_and_their_grants_freed(
    tmp_path: Path,
) -> None:
    async with gy_server(tmp_path) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        other = await connect(server.cfg.diameter_port, origin_host="pgw.other.test")
        before = RELEASED._value.get()
        first = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=100)
        lost = await _open(first, 3)
        ended = await _open(first, 1)
        cca = await first.request(ccr(first, ended[0], TERM, 1, mscc(10, used={})))
        assert cca.get("Result-Code") == 2001
        kept = await _open(other, 1)
        env = GyEnv(server, api, first)
        assert env.reserved("alice") == 40 * MB
        await first.close(timeout_s=0.5)  # no CCR-T: the gateway goes down with its sessions

        # It comes back as the same peer, in upper case, with a new state: a restart.
        again = await connect(
            server.cfg.diameter_port, origin_host=PGW.upper(), origin_state_id=101
        )
        fresh = await _open(again, 1)
        await _settled(server)
        sessions = server.store.ledger.sessions
        assert not any(sid in sessions for sid in lost)
        assert all(sid in sessions for sid in kept + fresh)
        assert env.reserved("alice") == 20 * MB  # the other client's grant and the new one
        gy = _gy(server)
        assert gy.restarts.released == 3 and gy.restarts.failures == 0
        assert RELEASED._value.get() - before == 3
        # The lost sessions' grants came back whole: nothing was charged for them.
        assert env.amount("alice") == 100 * MB
        # Their next step, had the gateway kept one, is for an unknown session.
        cca = await again.request(ccr(again, lost[0], TERM, 1, mscc(10, used={})))
        assert cca.get("Result-Code") == 5002
        # Once more with the same state: a reconnection, not a restart.
        await again.close(timeout_s=0.5)
        back = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=101)
        await _settled(server)
        assert fresh[0] in sessions and gy.restarts.released == 3
        for client in (back, other):
            await client.close(timeout_s=0.5)


@pytest.mark.parametrize("case", ["relayed", "no_inference", "switched_off"])
async def test_no_session_is_ended_without_the_peer_s_own_word(tmp_path: Path, case: str) -> None:
    """Sessions of clients behind a relay (the relay's restart says nothing about them), a
    CER whose Origin-State-Id is 0 (RFC 6733 8.16: no inference), and the switch set off."""
    gy = GyConfig(release_on_peer_restart=case != "switched_off")
    async with gy_server(tmp_path, gy) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        state = 0 if case == "no_inference" else 5
        relay = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=state)
        behind = "pgw.behind.test" if case == "relayed" else None
        ids = await _open(relay, 2, origin_host=behind)
        await relay.close(timeout_s=0.5)
        back = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=state + 1)
        await _settled(server)
        assert all(sid in server.store.ledger.sessions for sid in ids)
        assert GyEnv(server, api, back).reserved("alice") == 20 * MB
        assert _gy(server).restarts.released == 0 and len(_gy(server).restarts) == 0
        await back.close(timeout_s=0.5)


async def test_the_index_is_bounded_and_forgets_what_ended(tmp_path: Path) -> None:
    async with gy_server(tmp_path) as (server, _):
        restarts = PeerRestarts(server.engine, sessions_max=3)
        peer = PeerInfo(PGW, "test", (), 0, "pgw", frozenset({4}), origin_state_id=9)
        for i in range(5):
            restarts.opened(f"s{i}", peer.origin_host, direct_state(peer, PGW))
        assert len(restarts) == 3 and list(restarts._tied) == ["s2", "s3", "s4"]
        restarts.forget("s3")
        restarts.forget("unknown")
        assert list(restarts._tied) == ["s2", "s4"]
        assert restarts._by_peer == {PGW: {9: {"s2", "s4"}}}
        restarts.forget("s2")
        restarts.forget("s4")
        assert restarts._by_peer == {} and len(restarts) == 0
        with pytest.raises(ValueError, match="sessions_max"):
            PeerRestarts(server.engine, sessions_max=0)


async def test_the_restart_tracker_observes_cers_from_before_gy_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_gy hands the tracker to serve_diameter, which registers it before listening: no
    CER can be answered unobserved, however the loop schedules the first connection."""
    observers: list[list[Any]] = []
    listen = DiameterServer.start

    async def start(self: DiameterServer, host: str | None, port: int) -> None:
        observers.append(list(self.peer_opened))
        await listen(self, host, port)

    monkeypatch.setattr(DiameterServer, "start", start)
    async with gy_server(tmp_path) as (server, _):
        [seen] = observers
        assert seen == [_gy(server).restarts.peer_opened]


def test_the_switch_is_read_from_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "quotaflow.toml"
    path.write_text("[diameter.gy]\nrelease_on_peer_restart = false\n")
    assert load(path).diameter_gy.release_on_peer_restart is False
    path.write_text('[diameter.gy]\nrelease_on_peer_restart = "no"\n')
    with pytest.raises(ConfigError, match="release_on_peer_restart"):
        load(path)


def _peer(state: int) -> PeerInfo:
    return PeerInfo(PGW, "test", (), 0, "pgw", frozenset({4}), origin_state_id=state)


async def _start(server: Server, restarts: PeerRestarts, sid: str, state: int) -> None:
    await server.engine.session_start(sid, "alice", 0, [ServiceRequest(10)], {"interface": "gy"})
    restarts.opened(sid, PGW, direct_state(_peer(state), PGW))


async def _idle(restarts: PeerRestarts) -> None:
    for _ in range(500):
        if not restarts._tasks:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("a release task is still running")


async def test_a_ccr_i_answered_on_the_old_connection_after_the_cer_is_released(
    tmp_path: Path,
) -> None:
    """It was in flight when the gateway went down: answered after the new CER, its session
    belongs to the lost state, and nothing else would end it."""
    async with gy_server(tmp_path) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        restarts = PeerRestarts(server.engine)
        await _start(server, restarts, "a1", 100)
        restarts.peer_opened(_peer(100))  # the first CER seen: nothing to end
        assert not restarts._tasks
        restarts.peer_opened(_peer(200))
        await _idle(restarts)
        await _start(server, restarts, "late", 100)
        await _start(server, restarts, "b1", 200)
        await _idle(restarts)
        assert "a1" not in server.store.ledger.sessions
        assert "late" not in server.store.ledger.sessions
        assert "b1" in server.store.ledger.sessions and list(restarts._tied) == ["b1"]
        assert restarts.released == 2


async def test_a_restart_during_a_release_is_released_after_it(tmp_path: Path) -> None:
    """The gateway goes down again while its sessions of the first restart are being ended:
    the task looks again with the newest state once it is done."""
    async with gy_server(tmp_path) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        restarts = PeerRestarts(server.engine)
        ids = [f"a{i}" for i in range(200)]  # several batches: the task is still running
        for sid in ids:
            await _start(server, restarts, sid, 100)
        restarts.peer_opened(_peer(100))
        restarts.peer_opened(_peer(200))
        [task] = restarts._tasks.values()
        await _start(server, restarts, "b1", 200)
        assert not task.done()
        restarts.peer_opened(_peer(300))
        assert list(restarts._tasks.values()) == [task]  # the same task looks again
        await _idle(restarts)
        assert not {*ids, "b1"} & set(server.store.ledger.sessions)
        assert restarts.released == 201 and len(restarts) == 0 and restarts._by_peer == {}
        restarts.peer_opened(_peer(300))  # the same state again: a reconnection
        assert not restarts._tasks


class _FailsOnce:
    """The real engine, whose close of the named sessions fails once (a failed commit)."""

    def __init__(self, engine: Engine, failing: set[str]) -> None:
        self.store = engine.store
        self._engine = engine
        self._failing = failing

    async def session_terminate(self, session_id: str, *args: Any, **kwargs: Any) -> Any:
        if session_id in self._failing:
            self._failing.discard(session_id)
            raise StoreUnavailable("journal write failed")
        return await self._engine.session_terminate(session_id, *args, **kwargs)


async def test_a_release_that_fails_is_tried_again_at_the_next_cer(tmp_path: Path) -> None:
    """One close fails: the others of the batch are still ended, and the failed one stays in
    the index for the peer's next CER to retry, a reconnection with the same state too."""
    async with gy_server(tmp_path) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        restarts = PeerRestarts(_FailsOnce(server.engine, {"a2"}))  # type: ignore[arg-type]
        for sid in ("a1", "a2", "a3"):
            await _start(server, restarts, sid, 100)
        restarts.peer_opened(_peer(100))
        restarts.peer_opened(_peer(200))
        await _idle(restarts)
        sessions = server.store.ledger.sessions
        assert "a1" not in sessions and "a3" not in sessions and "a2" in sessions
        assert restarts.failures == 1 and restarts._by_peer == {PGW: {100: {"a2"}}}
        restarts.peer_opened(_peer(200))  # the same state: a reconnection
        await _idle(restarts)
        assert "a2" not in sessions and restarts.released == 3 and len(restarts) == 0


@pytest.mark.parametrize("restarted", [True, False])
async def test_sessions_from_before_the_server_s_own_restart_are_told_apart_too(
    tmp_path: Path, restarted: bool
) -> None:
    """The server and the gateway go down together (a site's power, say). The server starts
    from its files, ties the open sessions to the state their CCR-I recorded, and the gateway's
    first CER tells: a new state ends them, the same state keeps them."""
    async with gy_server(tmp_path) as (server, api):
        async with gy_client_env(server, api, server.cfg.diameter_port) as env:
            await env.subscriber(octets=100 * MB)
        first = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=100)
        ids = await _open(first, 2)
        relayed = await _open(first, 1, origin_host="pgw.behind.test")
        meta = server.store.ledger.sessions[ids[0]]["meta"]
        assert (
            meta["peer_state"] == 100
            and "peer_state" not in (server.store.ledger.sessions[relayed[0]]["meta"])
        )
        await first.close(timeout_s=0.5)
    async with gy_server(tmp_path) as (server, api):
        gy = _gy(server)
        assert len(gy.restarts) == 2  # the relayed session is not tied
        state = 101 if restarted else 100
        back = await connect(server.cfg.diameter_port, origin_host=PGW, origin_state_id=state)
        await _settled(server)
        sessions = server.store.ledger.sessions
        assert relayed[0] in sessions
        if restarted:
            assert not set(ids) & set(sessions) and gy.restarts.released == 2
            assert GyEnv(server, api, back).reserved("alice") == 10 * MB  # the relayed one's
        else:
            assert set(ids) <= set(sessions) and gy.restarts.released == 0
            assert GyEnv(server, api, back).reserved("alice") == 30 * MB
        await back.close(timeout_s=0.5)
