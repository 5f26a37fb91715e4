"""Which engine events the notification service queues, decided in compiled code.

Every charge emits a balance event, and with no threshold watching its subscriber (the usual
case) the service has nothing to do with it. The service made that check in its own,
interpreted code: about 5,000 instructions per charge in callgrind of bench/profile_gy.py. The
gate holds the service's own tables (it never copies them: the service changes them in place)
and its queue.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from quotaflow.engine.types import EngineEvent

BALANCE_EVENTS: Final = frozenset({"balance_changed", "credit_added"})


class EventGate:
    """The listener the engine calls, synchronously, from a charging path: it only looks the
    subscriber up and appends to a bounded queue, never blocks."""

    def __init__(
        self,
        watching: dict[str | None, dict[str, Any]],
        out: dict[str, Any],
        refusing: dict[str, int],
        choices: dict[str, Any],
        events: asyncio.Queue[EngineEvent],
    ) -> None:
        self.watching = watching  # thresholds by the subscriber they watch (None: everyone)
        self.out = out  # subscribers refused for no credit, until it is back
        self.refusing = refusing  # refusals queued, not processed yet, by subscriber
        self.choices = choices
        self.events = events
        self.skipped = 0  # events nothing watched (built or not): not queued
        self.dropped = 0  # the queue was full

    def on_event(self, event: EngineEvent) -> None:
        if not self.wants(event.kind, event.subscriber_id):
            return
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if event.kind == "no_credit":
            sid = event.subscriber_id
            self.refusing[sid] = self.refusing.get(sid, 0) + 1

    def wants(self, kind: str, sid: str) -> bool:
        """Whether the service's batch handler would do anything with such an event; a no is
        counted in `skipped`. The engine asks before it builds a charge's event (and then
        hands it only to takers that said yes), so each event is counted once. A subscriber
        still in `refusing` has refusals queued that may yet put it in `out`: its credit
        events must queue behind them."""
        if kind in BALANCE_EVENTS:
            watching = self.watching
            wanted = (
                bool(watching.get(None))
                or bool(watching.get(sid))
                or sid in self.out
                or sid in self.refusing
            )
        elif kind == "abort":
            wanted = sid in self.choices
        else:
            wanted = kind == "no_credit"
        if not wanted:
            self.skipped += 1
        return wanted
