"""Releasing the sessions of a Gy client that restarted (RFC 6733 8.16, Origin-State-Id).

A gateway that restarts with loss of state never sends CCR-T for the sessions it had: without
this, their grants stay reserved until their validity lapses (a shared pool's credit too), and
the sessions until the ledger's idle sweep. A peer that restarted says so in the CER it opens
its next connection with: its Origin-State-Id has changed.

Only what the peer connection itself vouches for is acted on: a session is tied to a state when
the client that opened it (the CCR's Origin-Host) is the peer it came through, compared without
case as the peer registry does, and that peer's CER carried a non-zero Origin-State-Id (0 allows
no inference). Sessions that came through a relay (a DRA, freeDiameter) are never released this
way, since the relay's restart says nothing about the clients behind it, and a CCR's own
Origin-State-Id is not trusted: any client behind a relay could name another's Origin-Host.

The index of tied sessions is kept in memory, by peer and by state, so that a CER touches only
the sessions of the states it ends (a reconnection with the same state touches none). It is
filled by the CCR-Is this server answers, and at the server's start from the open sessions'
meta, where each CCR-I records its peer's state (`peer_state`): a gateway that went down with
the server is told apart by its first CER as well. It is bounded
(`GyConfig.tracked_sessions_max`, oldest forgotten first), at about 230 bytes a session besides
its id. Each release re-checks the session against the index (a CCR-I with the new state under
the same Session-Id keeps it), ends it as a CCR-T with no usage would
(`Engine.session_terminate`: its grants are voided, what it had not reported is lost with the
gateway's state) and counts only the sessions it closed. One task per peer works through them,
RELEASE_CONCURRENCY at a time, yielding between batches; a newer state arriving meanwhile makes
it look again once it is done. A CCR-I answered on the old connection after the new CER (it was
in flight) is ended the same way.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import Counter

from quotaflow.diameter.events import PeerInfo
from quotaflow.engine import Engine
from quotaflow.ledger import UnknownSession
from quotaflow.metrics import REGISTRY

log = logging.getLogger("quotaflow.gy")

RELEASE_CAUSE: Final = "peer_restarted"
# Sessions ended at once: each waits for its commit, so one at a time would close about a
# thousand a second; this many share each commit.
RELEASE_CONCURRENCY: Final = 64
# Peers whose last Origin-State-Id is remembered; past it, those with no session here are
# forgotten (any number of them can connect from loopback in the development mode).
LATEST_MAX: Final = 10_000

RELEASED = Counter(
    "quotaflow_gy_sessions_released",
    "Gy sessions ended because the peer that opened them restarted (a new Origin-State-Id)",
    registry=REGISTRY,
)


def direct_state(peer: PeerInfo, origin_host: str) -> int | None:
    """The state a session opened by `origin_host` through `peer` is tied to: the peer's CER
    Origin-State-Id when the client is the peer itself and the value allows inference."""
    return _tied_state(peer.origin_state_id, peer.origin_host, origin_host)


def _tied_state(state: object, peer_host: object, client_host: object) -> int | None:
    """`state` if it ties a session: a non-zero integer, and the client the peer itself (the
    peer registry's comparison, lowercase). The one rule for a live CCR-I and a loaded meta."""
    if (
        type(state) is not int
        or not state
        or not isinstance(peer_host, str)
        or not isinstance(client_host, str)
        or client_host.lower() != peer_host.lower()
    ):
        return None
    return state


class PeerRestarts:
    """Which open Gy sessions each directly connected client opened under which state, and the
    release of those a new state leaves behind."""

    def __init__(
        self,
        engine: Engine,
        *,
        enabled: bool = True,
        sessions_max: int = 1_000_000,
        on_ended: Callable[[str], None] | None = None,
    ):
        if sessions_max < 1:
            raise ValueError("sessions_max must be positive")
        self.engine = engine
        self.enabled = enabled
        self.sessions_max = sessions_max
        self._on_ended = on_ended  # told of each session released (the notifier forgets it)
        # session id -> (peer, its state at the CCR-I), oldest first; per peer and state the ids.
        self._tied: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._by_peer: dict[str, dict[int, set[str]]] = {}
        self._latest: dict[str, int] = {}  # peer -> the state its last CER carried
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._closed = False
        self._logged_failure = False
        self.released = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._tied)

    # ------------------------------------------------------------------ the index

    def opened(self, session_id: str, peer_host: str, state: int | None) -> None:
        """A session the server accepted (its CCR-I answered with success) from the peer named
        `peer_host`, tied to `state`: what `direct_state` gave for its CCR-I (None: not tied)."""
        if not self.enabled or state is None:
            return
        key = peer_host.lower()
        self._tie(session_id, key, state)
        latest = self._latest.get(key)
        if latest is not None and latest != state:
            # Answered on the old connection after the new one's CER (it was in flight): the
            # client that asked for it is gone.
            self._schedule(key)

    def load(self, sessions: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Tie the open sessions a previous run of the server recorded (their meta's
        `peer_state`, written at their CCR-I), oldest first; returns how many were tied. Called
        at the start, before any peer connects: the first CER of each peer then tells."""
        if not self.enabled:
            return 0
        tied = 0
        for session_id, record in sessions:
            meta = record.get("meta") or {}
            if meta.get("interface") != "gy":
                continue
            peer = meta.get("peer")
            state = _tied_state(meta.get("peer_state"), peer, meta.get("origin_host"))
            if state is None:
                continue
            assert isinstance(peer, str)  # _tied_state checked it
            self._tie(session_id, peer.lower(), state)
            tied += 1
        return tied

    def forget(self, session_id: str) -> None:
        """A session that ended (its CCR-T, a refusal, or its release)."""
        tied = self._tied.pop(session_id, None)
        if tied is not None:
            self._unlink(session_id, *tied)

    def _tie(self, session_id: str, key: str, state: int) -> None:
        self.forget(session_id)
        if len(self._tied) >= self.sessions_max:
            oldest, (oldest_key, oldest_state) = self._tied.popitem(last=False)
            self._unlink(oldest, oldest_key, oldest_state)
        self._tied[session_id] = (key, state)
        self._link(session_id, key, state)

    def _link(self, session_id: str, key: str, state: int) -> None:
        self._by_peer.setdefault(key, {}).setdefault(state, set()).add(session_id)

    def _unlink(self, session_id: str, key: str, state: int) -> None:
        states = self._by_peer.get(key)
        if states is None:
            return
        ids = states.get(state)
        if ids is not None:
            ids.discard(session_id)
            if not ids:
                del states[state]
                if not states:
                    del self._by_peer[key]

    # ------------------------------------------------------------------ restarts

    def peer_opened(self, peer: PeerInfo) -> None:
        """A peer completed its capabilities exchange (CER/CEA)."""
        state = peer.origin_state_id
        if not self.enabled or self._closed or not state:
            return
        key = peer.origin_host.lower()
        if len(self._latest) >= LATEST_MAX and key not in self._latest:
            # Peers that keep nothing here are forgotten first.
            kept = self._by_peer.keys() | self._tasks.keys()
            for idle in [k for k in self._latest if k not in kept]:
                del self._latest[idle]
        self._latest[key] = state
        # A reconnection with the same state finds nothing to end, but for closes that failed
        # at an earlier restart: tried again now (one entry per state, not per session).
        states = self._by_peer.get(key)
        if states is not None and any(s != state for s in states):
            self._schedule(key)

    def _schedule(self, key: str) -> None:
        if self._closed:
            return
        running = self._tasks.get(key)
        if running is not None and not running.done():
            self._again.add(key)  # it reads the latest state when it looks again
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(self._release(key))

    async def _release(self, key: str) -> None:
        try:
            while True:
                self._again.discard(key)
                self._logged_failure = False
                state = self._latest.get(key)
                if state is None:
                    return
                # The sets of the states this one ends, taken out of the index whole: nothing
                # scans the peer's sessions, and nothing else changes a set once it is taken
                # (`forget` finds no set for its state).
                states = self._by_peer.get(key, {})
                stale = [states.pop(s) for s in [s for s in states if s != state]]
                if not states:
                    self._by_peer.pop(key, None)
                closed = 0
                for ids in stale:
                    each = iter(ids)
                    while chunk := list(itertools.islice(each, RELEASE_CONCURRENCY)):
                        ends = await asyncio.gather(*(self._end(sid, key, state) for sid in chunk))
                        closed += sum(ends)
                        await asyncio.sleep(0)  # between batches, whatever the store did
                if stale:
                    log.info(
                        "Diameter peer %s restarted (Origin-State-Id %d): %d of its sessions ended",
                        key,
                        state,
                        closed,
                    )
                if key not in self._again:
                    return
        finally:
            if self._tasks.get(key) is asyncio.current_task():
                del self._tasks[key]

    async def _end(self, session_id: str, key: str, state: int) -> bool:
        """End one session if it is still tied to an older state of this peer."""
        tied = self._tied.get(session_id)
        if tied is None or tied[0] != key or tied[1] == state:
            return False  # ended meanwhile, or opened again under the new state
        try:
            # Ended some other way (the idle sweep, the API)? Then it is only forgotten:
            # session_terminate answers a closed session's copy without an error.
            if await self.engine.store.get_session(session_id) is None:
                raise UnknownSession(session_id)
            await self.engine.session_terminate(session_id, 0, [], cause=RELEASE_CAUSE)
        except UnknownSession:
            if self._tied.get(session_id) == tied:
                self.forget(session_id)
            return False
        except Exception:
            self.failures += 1
            # One traceback per peer's release, not one per session when the store is down.
            first = not self._logged_failure
            self._logged_failure = True
            log.error(
                "session %r of restarted peer %s not released (tried again at its next CER)",
                session_id,
                key,
                exc_info=first,
            )
            if self._tied.get(session_id) == tied:  # back in the index: the next CER retries
                self._link(session_id, key, tied[1])
            return False
        if self._tied.get(session_id) == tied:
            self.forget(session_id)
        if self._on_ended is not None:
            self._on_ended(session_id)
        self.released += 1
        RELEASED.inc()
        return True

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
