"""Tell policy functions when a member's counters change status (pool low, cap reached...).

Delivered through the notification service's webhooks as `policy_counter` events, so a PCF can
throttle a member instead of cutting it off. Statuses are recomputed after balance changes of
the member or of its pool; only changes are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from quotaflow.engine import Engine, EngineEvent
from quotaflow.ledger import ChargingError
from quotaflow.notify import NotifyService

log = logging.getLogger("quotaflow.groups")
WATCH_EVENTS = frozenset({"balance_changed", "credit_added", "reauthorize", "no_credit"})
PENDING_MAX = 10_000


class CounterWatch:
    def __init__(self, engine: Engine, notify: NotifyService) -> None:
        self.engine = engine
        self.notify = notify
        self._last: dict[str, str] = {}  # counter id -> status last told
        self._pending: set[str] = set()
        self.listening = False  # to the engine's events: while policy_counter is subscribed to
        self.heard = 0  # engine events taken
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> CounterWatch:
        self.notify.dispatcher.on_change.append(self._follow)
        self._follow()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __call__(self) -> None:
        with contextlib.suppress(ValueError):
            self.notify.dispatcher.on_change.remove(self._follow)
        if self.listening:
            self.engine.unsubscribe(self._on_event)
            self.listening = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _follow(self) -> None:
        """Statuses go out only as policy_counter webhooks: without a subscription for them,
        the engine's events are not asked for at all (each charge made one, about 1,800
        instructions to drop). A subscription made later hears the next change after it."""
        wanted = self.notify.dispatcher.takes("policy_counter")
        if wanted and not self.listening:
            self.engine.subscribe(self._on_event, WATCH_EVENTS)
        elif not wanted and self.listening:
            self.engine.unsubscribe(self._on_event)
        self.listening = wanted

    def _on_event(self, event: EngineEvent) -> None:
        self.heard += 1
        if event.kind in WATCH_EVENTS and len(self._pending) < PENDING_MAX:
            self._pending.add(event.subscriber_id)
            self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, set()
            for account in pending:
                try:
                    await self._check(account)
                except ChargingError:
                    continue  # deleted meanwhile
                except Exception:
                    log.exception("policy counter check failed", extra={"account": account})

    async def _check(self, account: str) -> None:
        store = self.engine.store
        sub = await store.get_subscriber(account)
        gid = sub.id if sub.kind == "group" else sub.group
        if gid is None:
            return
        group = await store.get_group(gid)
        for member in group.members:
            for counter in store.policy_counters(member):
                key = f"{member}|{counter['id']}"
                if self._last.get(key, "normal") != counter["status"]:
                    self._last[key] = counter["status"]
                    data: dict[str, Any] = {"group_id": gid, **counter}
                    await self.notify.notify("policy_counter", member, data)
