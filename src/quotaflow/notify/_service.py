"""The notify service: engine events in, threshold crossings and credit events out.

The engine calls the service's EventGate (`_gate.py`, compiled) synchronously from a charging
path; it only appends to a bounded queue, so no charging answer ever waits for notification
work. One task drains that queue in order, so one subscriber's notifications are produced in
the order their causes happened;
a burst of balance changes for one subscriber is evaluated once (against the latest balance).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quotaflow.engine import Engine, EngineEvent
from quotaflow.ledger import ChargingError, Conflict, InvalidRequest, NotFound, Subscriber, Unit
from quotaflow.notify._db import NotifyDb
from quotaflow.notify._delivery import DeliveryOptions, Dispatcher
from quotaflow.notify._events import Notification
from quotaflow.notify._gate import BALANCE_EVENTS, EventGate
from quotaflow.notify._thresholds import (
    ANNOUNCED,
    OK,
    GroupResolver,
    Target,
    Threshold,
    expiring,
    next_state,
    targets,
)
from quotaflow.store.base import Store

log = logging.getLogger("quotaflow.notify")

EVENT_BATCH_MAX = 1000
BASES_MAX = 1_000_000  # remembered percentage bases (an LRU would be kinder; a clear is simple)
COUNTERS_MAX = 1_000_000
THRESHOLDS_MAX = 10_000


@dataclass(slots=True)
class NotifyOptions:
    thresholds: list[dict[str, Any]] = field(default_factory=list)  # installed at start
    refused_requests_max: int = 5  # notify when refusals reach this; 0 disables counting
    delivery: DeliveryOptions = field(default_factory=DeliveryOptions)
    events_queue_max: int = 100_000
    choice_ttl_s: int = 300
    expiry_scan_interval_s: float = 60.0
    expiry_scan_page: int = 2000
    groups: GroupResolver | None = None  # the hook for group / member-cap thresholds


class NotifyService:
    """Started with the server; awaiting the service itself stops it (a stop coroutine)."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        data_dir: str | Path,
        options: NotifyOptions | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.options = options or NotifyOptions()
        self.db = NotifyDb(Path(data_dir) / "notify.sqlite3")
        self.dispatcher = Dispatcher(self.db, self.options.delivery)
        self.thresholds: dict[str, Threshold] = {}
        # The same, by the subscriber they watch (None: every subscriber), so a balance change
        # looks only at its own and the global ones, never at all of them.
        self._watching: dict[str | None, dict[str, Threshold]] = {}
        self._gate: EventGate | None = None  # made at start, with the tables loaded
        # Refusals queued and not yet processed, by subscriber: until `_refused_request` has
        # put the subscriber in `_out`, its credit events must still be queued behind them.
        self._refusing: dict[str, int] = {}
        self._states: dict[tuple[str, str], str] = {}
        self._bases: dict[tuple[str, str], int] = {}
        self._refused: dict[str, int] = {}
        self._out: dict[str, dict[str, Any]] = {}
        self._choices: dict[str, dict[str, Any]] = {}
        self._sequence: dict[str, int] = {}
        self._events: asyncio.Queue[EngineEvent] = asyncio.Queue(self.options.events_queue_max)
        self._tasks: list[asyncio.Task[None]] = []
        self._scan_offset = 0
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> NotifyService:
        await self.db.open()
        for doc in (await self.db.all("thresholds")).values():
            self._keep(Threshold.from_json(doc))
        for doc in self.options.thresholds:
            await self.add_threshold(Threshold.from_json(doc))
        self._states = await self.db.states()
        self._out = await self.db.all("out_of_credit")
        self._choices = await self.db.all("choices")
        await self.dispatcher.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._process()), loop.create_task(self._scan_expiry())]
        self._gate = EventGate(
            self._watching, self._out, self._refusing, self._choices, self._events
        )
        self.engine.subscribe(self._gate.on_event, wants=self._gate.wants)
        return self

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.dispatcher.stop()
        await self.db.close()

    async def __call__(self) -> None:
        await self.stop()

    @property
    def skipped_events(self) -> int:
        """Events nothing watched: not queued (see EventGate.wanted)."""
        return 0 if self._gate is None else self._gate.skipped

    @property
    def dropped_events(self) -> int:
        return 0 if self._gate is None else self._gate.dropped

    def _refused_done(self, sid: str) -> None:
        left = self._refusing.get(sid, 0) - 1
        if left > 0:
            self._refusing[sid] = left
        else:
            self._refusing.pop(sid, None)

    async def drained(self) -> None:
        """Wait until every engine event so far was processed (tests, orderly shutdown)."""
        await self._events.join()

    # ------------------------------------------------------------------ processing

    async def _process(self) -> None:
        while True:
            batch = [await self._events.get()]
            while len(batch) < EVENT_BATCH_MAX and not self._events.empty():
                batch.append(self._events.get_nowait())
            try:
                await self._handle_batch(batch)
            except Exception:
                log.exception("notification processing failed")
            finally:
                for _ in batch:
                    self._events.task_done()

    async def _handle_batch(self, batch: list[EngineEvent]) -> None:
        # Evaluate a subscriber's balance once, at its last balance event in the batch.
        last_balance = {e.subscriber_id: i for i, e in enumerate(batch) if e.kind in BALANCE_EVENTS}
        credited = {e.subscriber_id for e in batch if _is_credit(e)}
        for i, e in enumerate(batch):
            if e.kind == "no_credit":
                try:
                    await self._refused_request(e)
                finally:
                    self._refused_done(e.subscriber_id)
            elif e.kind in BALANCE_EVENTS and last_balance.get(e.subscriber_id) == i:
                await self._balance(e.subscriber_id, e.subscriber_id in credited)
            elif e.kind == "abort":
                self._choices.pop(e.subscriber_id, None)

    async def _subscriber(self, sid: str) -> Subscriber | None:
        try:
            return await self.store.get_subscriber(sid)
        except ChargingError:  # deleted
            return None

    async def notify(self, kind: str, sid: str, data: dict[str, Any]) -> Notification:
        seq = self._sequence.get(sid, 0) + 1
        if len(self._sequence) >= COUNTERS_MAX and sid not in self._sequence:
            self._sequence.clear()
        self._sequence[sid] = seq
        n = Notification(uuid.uuid4().hex, kind, sid, self.store.clock(), seq, data)
        self.dispatcher.publish(n)
        return n

    # ------------------------------------------------------------------ thresholds

    async def add_threshold(self, th: Threshold) -> Threshold:
        if th.scope == "member_cap":
            assert th.group_id is not None
            group = await self.store.get_group(th.group_id)  # NotFound: 404
            if th.subscriber_id not in group.members:
                raise InvalidRequest("not a member of that group", field="subscriber_id")
        if th.scope == "group":
            # A group's shared pool is the account with the group's id: its threshold watches
            # that account.
            assert th.group_id is not None
            await self.store.get_group(th.group_id)  # NotFound: 404
            th = dataclasses.replace(th, scope="subscriber", subscriber_id=th.group_id)
        if th.id not in self.thresholds and len(self.thresholds) >= THRESHOLDS_MAX:
            raise InvalidRequest("too many thresholds", limit=THRESHOLDS_MAX)
        await self.db.put("thresholds", th.id, th.to_json())
        self._keep(th)
        return th

    def _keep(self, th: Threshold) -> None:
        self._forget(th.id)
        self.thresholds[th.id] = th
        self._watching.setdefault(th.subscriber_id, {})[th.id] = th

    def _forget(self, th_id: str) -> bool:
        old = self.thresholds.pop(th_id, None)
        if old is None:
            return False
        watched = self._watching[old.subscriber_id]
        del watched[th_id]
        if not watched:
            del self._watching[old.subscriber_id]
        return True

    async def remove_threshold(self, th_id: str) -> bool:
        found = self._forget(th_id)
        await self.db.delete("thresholds", th_id)
        await self.db.drop_states(th_id)
        for key in [k for k in self._states if k[0] == th_id]:
            del self._states[key]
        return found

    async def _balance(self, sid: str, credited: bool) -> None:
        mine = [*self._watching.get(None, {}).values(), *self._watching.get(sid, {}).values()]
        if not mine and sid not in self._out:
            return
        sub = await self._subscriber(sid)
        if sub is None:
            return
        now_ms = self.store.clock()
        for th in mine:
            if th.has_level:
                await self._levels(th, sub, now_ms, credited)
            await self._expiring(th, sub, now_ms)
        if sid in self._out:
            # Credit can come back in many ways (top-up, gift, refund, a pool's reset or
            # reclaim): whatever moved, check whether the refused service can be paid again.
            await self._credit_back(sub)

    async def _targets(self, th: Threshold, sub: Subscriber, now_ms: int) -> list[Target]:
        if th.scope != "member_cap":
            return targets(th, sub, now_ms)
        # What a member may still draw from its group's pool this period, against its cap.
        assert th.group_id is not None and th.unit is not None
        try:
            group = await self.store.get_group(th.group_id)
        except ChargingError:
            return []
        member = group.members.get(sub.id)
        cap = None if member is None else member.caps.get(th.unit.value)
        if member is None or cap is None:
            return []
        room = member.room(th.unit) or 0
        return [Target(f"{sub.id}/cap/{group.id}/{th.unit.value}", room, cap, th.unit)]

    async def _levels(self, th: Threshold, sub: Subscriber, now_ms: int, credited: bool) -> None:
        for t in await self._targets(th, sub, now_ms):
            key = (th.id, t.key)
            base = self._bases.get(key)
            if base is None or credited:  # the base: the balance after the latest credit
                if len(self._bases) >= BASES_MAX:
                    self._bases.clear()
                base = self._bases[key] = max(t.balance, t.initial)
            old = self._states.get(key, OK)
            new, kind = next_state(th, old, t.balance, base)
            if new != old:
                self._states[key] = new
                await self.db.set_state(th.id, t.key, None if new == OK else new)
            if kind is not None:
                data = {
                    "threshold_id": th.id,
                    "unit": t.unit.value,
                    "bucket_id": t.bucket_id,
                    "balance": t.balance,
                    "level": th.level(base),
                }
                await self.notify(kind, sub.id, data)
                if kind in ("low_balance", "exhausted") and th.offer_choice:
                    await self._offer_choice(sub, t.unit, t.balance)

    async def _expiring(self, th: Threshold, sub: Subscriber, now_ms: int) -> None:
        for b in expiring(th, sub, now_ms):
            key = (th.id, f"{sub.id}/expiry/{b.id}@{b.expires_at_ms}")
            if self._states.get(key) == ANNOUNCED:
                continue
            self._states[key] = ANNOUNCED
            await self.db.set_state(key[0], key[1], ANNOUNCED)
            await self.notify(
                "expiring",
                sub.id,
                {
                    "threshold_id": th.id,
                    "bucket_id": b.id,
                    "unit": b.unit.value,
                    "balance": b.amount,
                    "expires_at_ms": b.expires_at_ms,
                },
            )

    async def _scan_expiry(self) -> None:
        """Expiry is a matter of time, not of events: look at a page of subscribers per tick."""
        while True:
            await asyncio.sleep(self.options.expiry_scan_interval_s)
            watching = [t for t in self.thresholds.values() if t.expiring_within_s is not None]
            if not watching:
                continue
            try:
                await self._scan_page(watching)
            except Exception:
                log.exception("expiry scan failed")

    async def _scan_page(self, watching: list[Threshold]) -> None:
        named = {t.subscriber_id for t in watching if t.subscriber_id is not None}
        subs = [s for s in [await self._subscriber(sid) for sid in named] if s is not None]
        if any(t.subscriber_id is None for t in watching):
            page = await self.store.list_subscribers(
                self._scan_offset, self.options.expiry_scan_page
            )
            self._scan_offset = 0 if not page else self._scan_offset + len(page)
            subs.extend(page)
        now_ms = self.store.clock()
        for sub in subs:
            for th in watching:
                if th.applies_to(sub.id):
                    await self._expiring(th, sub, now_ms)

    # ------------------------------------------------------------------ out of credit

    async def _refused_request(self, e: EngineEvent) -> None:
        sid = e.subscriber_id
        limit = self.options.refused_requests_max
        if limit:
            count = self._refused[sid] = self._refused.get(sid, 0) + 1
            if len(self._refused) > COUNTERS_MAX:
                self._refused = {sid: count}
            if count >= limit:
                del self._refused[sid]
                await self.notify("refused_requests", sid, {"count": count, "last": e.detail})
        if sid not in self._out:
            self._out[sid] = detail = {**e.detail, "at_ms": self.store.clock()}
            await self.db.put("out_of_credit", sid, detail)
            await self.notify("out_of_credit", sid, dict(e.detail))

    async def _credit_back(self, sub: Subscriber) -> None:
        """Tell the application functions once the service that was refused can be paid again."""
        out = self._out[sub.id]
        unit = Unit(out.get("unit", "octets"))
        payable = await self.engine.balance_check(sub.id, unit, out.get("rating_group"))
        if payable <= 0:
            return
        del self._out[sub.id]
        await self.db.delete("out_of_credit", sub.id)
        await self.notify(
            "credit_reallocated", sub.id, {"refused": out, "unit": unit.value, "payable": payable}
        )

    # ------------------------------------------------------------------ the choice

    async def _offer_choice(self, sub: Subscriber, unit: Unit, balance: int) -> None:
        sessions = await self.store.sessions_of(sub.id)
        if len(sessions) < 2:
            return
        groups: dict[str, list[int | None]] = {sid: [] for sid in sessions}
        for r in sub.reservations.values():
            if r.session_id in groups:
                groups[r.session_id].append(r.rating_group)
        offer = {
            "choice_id": uuid.uuid4().hex,
            "unit": unit.value,
            "balance": balance,
            "expires_at_ms": self.store.clock() + self.options.choice_ttl_s * 1000,
            "sessions": [
                {
                    "session_id": sid,
                    "interface": (rec.get("meta") or {}).get("interface"),
                    "opened_ms": rec.get("opened_ms"),
                    "rating_groups": sorted(groups[sid], key=lambda g: -1 if g is None else g),
                }
                for sid, rec in sorted(sessions.items())
            ],
        }
        self._choices[sub.id] = offer
        await self.db.put("choices", sub.id, offer)
        await self.notify("choice_offered", sub.id, offer)

    def pending_choice(self, sid: str) -> dict[str, Any]:
        offer = self._choices.get(sid)
        if offer is None or offer["expires_at_ms"] <= self.store.clock():
            raise NotFound(f"no pending choice for subscriber {sid!r}")
        return offer

    async def choose(self, sid: str, session_id: str, choice_id: str | None) -> dict[str, Any]:
        """Keep `session_id`; ask the interfaces to end every other session of the subscriber.

        The ended sessions' reservations are released when the network closes them (CCR-T,
        Nchf release), so the remaining credit goes to the kept session's next grant.
        """
        offer = self.pending_choice(sid)
        if choice_id is not None and choice_id != offer["choice_id"]:
            raise Conflict(
                "that choice was replaced by a newer offer", choice_id=offer["choice_id"]
            )
        sessions = await self.store.sessions_of(sid)
        if session_id not in sessions:
            raise InvalidRequest(f"session {session_id!r} is not open", field="session_id")
        others = sorted(s for s in sessions if s != session_id)
        del self._choices[sid]
        await self.db.delete("choices", sid)
        await self.engine.abort_sessions(sid, others)
        result = {"choice_id": offer["choice_id"], "kept": session_id, "ended": others}
        await self.notify("choice_made", sid, result)
        return result

    def status(self) -> dict[str, Any]:
        return {
            "thresholds": len(self.thresholds),
            "pending_engine_events": self._events.qsize(),
            "dropped_engine_events": self.dropped_events,
            "skipped_engine_events": self.skipped_events,
            "out_of_credit": len(self._out),
            "pending_choices": len(self._choices),
            "delivery": self.dispatcher.status(),
        }


def _is_credit(e: EngineEvent) -> bool:
    # The engine emits it for top-ups, refunds, gifts (buckets added) and positive adjustments.
    return e.kind == "credit_added"


async def start(
    engine: Engine,
    store: Store,
    data_dir: str | Path,
    options: NotifyOptions | None = None,
) -> NotifyService:
    """Start notifying; the returned service is also its own stop coroutine function."""
    return await NotifyService(engine, store, data_dir, options).start()
