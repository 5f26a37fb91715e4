"""Webhook delivery: signed POSTs, in order per subscriber, retried with backoff, then dead.

Each (subscription, subscriber) pair has its own FIFO and at most one delivery in flight, so a
receiver sees one subscriber's events in the order they happened while other subscribers'
events go on in parallel. A failed attempt (network error, timeout, 408, 429, 5xx) is retried
after `backoff_base_s * 2**(attempt-1)` seconds, capped at `backoff_max_s`, with up to half of
it as random jitter, for at most `attempts_max` attempts; any other 4xx is not retried. Then
the event becomes a dead letter (kept in SQLite, visible and retryable through the API) and
the next event of that subscriber goes out. With the defaults (8 attempts, 0.5 s doubling to
30 s at most) an event is given up after about 1 to 2 minutes.

Nothing here ever blocks the caller: `publish` only appends to memory. The queues are bounded;
an event that finds them full becomes a dead letter at once. Events still queued at shutdown
are dead-lettered too, so a restart loses none silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from quotaflow.ledger import InvalidRequest
from quotaflow.notify._db import NotifyDb
from quotaflow.notify._events import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPES,
    SIGNATURE_HEADER,
    Notification,
    sign,
)

log = logging.getLogger("quotaflow.notify")

SUBSCRIPTION_FIELDS = {"id", "url", "events", "subscriber_ids", "secret", "description"}
SUBSCRIBER_FILTER_MAX = 10_000
RETRIED_STATUSES = frozenset({408, 425, 429})


@dataclass(slots=True)
class DeliveryOptions:
    attempts_max: int = 8
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0
    queue_per_subscriber_max: int = 1000
    queued_total_max: int = 100_000
    subscriptions_max: int = 1000
    dead_letters_max: int = 100_000

    def __post_init__(self) -> None:
        assert 1 <= self.attempts_max <= 100
        assert 0 < self.backoff_base_s <= self.backoff_max_s
        assert self.queue_per_subscriber_max > 0 and self.queued_total_max > 0

    def backoff_s(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): doubling, capped, jittered."""
        delay: float = min(self.backoff_base_s * float(2 ** (attempt - 1)), self.backoff_max_s)
        return delay / 2 + random.uniform(0, delay / 2)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    url: str
    secret: str
    events: frozenset[str] | None = None  # None: every event type
    subscriber_ids: frozenset[str] | None = None  # None: every subscriber
    description: str | None = None
    created_ms: int = 0

    def matches(self, n: Notification) -> bool:
        return (self.events is None or n.type in self.events) and (
            self.subscriber_ids is None or n.subscriber_id in self.subscriber_ids
        )

    def to_json(self, *, with_secret: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "events": None if self.events is None else sorted(self.events),
            "subscriber_ids": None if self.subscriber_ids is None else sorted(self.subscriber_ids),
            "description": self.description,
            "created_ms": self.created_ms,
        }
        if with_secret:
            doc["secret"] = self.secret
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any], now_ms: int = 0) -> Subscription:
        """Validated; raises InvalidRequest naming the field. A missing secret is generated."""
        unknown = sorted(set(doc) - SUBSCRIPTION_FIELDS - {"created_ms"})
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
        url = doc.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("url must be an http or https URL", field="url")
        events = _str_set(doc, "events", 100)
        if events is not None and not events <= EVENT_TYPES:
            bad = sorted(events - EVENT_TYPES)[0]
            raise InvalidRequest(
                f"unknown event type {bad!r}; known: {sorted(EVENT_TYPES)}", field="events"
            )
        secret = doc.get("secret") or uuid.uuid4().hex + uuid.uuid4().hex
        if not isinstance(secret, str) or not 16 <= len(secret) <= 256:
            raise InvalidRequest("secret must be a string of 16..256 characters", field="secret")
        description = doc.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest("description must be a string", field="description")
        return cls(
            id=str(doc.get("id") or f"sub-{uuid.uuid4().hex[:16]}"),
            url=str(url),
            secret=secret,
            events=events,
            subscriber_ids=_str_set(doc, "subscriber_ids", SUBSCRIBER_FILTER_MAX),
            description=description,
            created_ms=int(doc.get("created_ms") or now_ms),
        )


def _str_set(doc: dict[str, Any], name: str, size_max: int) -> frozenset[str] | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{name} must be a list of strings", field=name)
    if not 0 < len(value) <= size_max:
        raise InvalidRequest(f"{name} must hold 1..{size_max} entries", field=name)
    return frozenset(value)


@dataclass(slots=True)
class _Stats:
    delivered: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    dead: int = 0


@dataclass(slots=True)
class _Queue:
    items: deque[Notification] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Dispatcher:
    def __init__(self, db: NotifyDb, options: DeliveryOptions | None = None) -> None:
        self.db = db
        self.options = options or DeliveryOptions()
        self.subscriptions: dict[str, Subscription] = {}
        self._takes: dict[str, bool] = {}  # event type -> some subscription takes it
        # Called after the subscriptions changed (what `takes` answers may have changed).
        self.on_change: list[Callable[[], None]] = []
        self.stats = _Stats()
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._queued = 0
        self._client: httpx.AsyncClient | None = None
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for doc in (await self.db.all("subscriptions")).values():
            sub = Subscription.from_json(doc)
            self.subscriptions[sub.id] = sub
        self._changed()
        self._client = httpx.AsyncClient(
            timeout=self.options.timeout_s,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )

    async def stop(self) -> None:
        """Stop delivering; whatever is still queued becomes a dead letter."""
        self._closing = True
        tasks = [q.task for q in self._queues.values() if q.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for t in list(self._background):
            await t
        for (sub_id, _), q in list(self._queues.items()):
            for n in q.items:
                await self._dead(sub_id, n, 0, "not delivered before shutdown")
        self._queues.clear()
        if self._client is not None:
            await self._client.aclose()

    # ------------------------------------------------------------------ subscriptions

    async def add(self, sub: Subscription) -> Subscription:
        if sub.id not in self.subscriptions and (
            len(self.subscriptions) >= self.options.subscriptions_max
        ):
            raise InvalidRequest("too many subscriptions", limit=self.options.subscriptions_max)
        await self.db.put("subscriptions", sub.id, sub.to_json(with_secret=True))
        self.subscriptions[sub.id] = sub
        self._changed()
        return sub

    async def remove(self, sub_id: str) -> bool:
        found = self.subscriptions.pop(sub_id, None) is not None
        self._changed()
        await self.db.delete("subscriptions", sub_id)
        return found

    def _changed(self) -> None:
        self._takes.clear()
        for hook in self.on_change:
            try:
                hook()
            except Exception:  # a listener's failure must not fail a subscription's change
                log.exception("subscriptions hook failed")

    def takes(self, event_type: str) -> bool:
        """Whether any subscription takes this type of event (asked per charge: remembered
        until the subscriptions change)."""
        known = self._takes.get(event_type)
        if known is None:
            known = self._takes[event_type] = any(
                sub.events is None or event_type in sub.events
                for sub in self.subscriptions.values()
            )
        return known

    # ------------------------------------------------------------------ sending

    def publish(self, n: Notification) -> int:
        """Queue for every matching subscription; never waits. Returns how many matched."""
        matched = 0
        for sub in self.subscriptions.values():
            if sub.matches(n):
                matched += 1
                self.enqueue(sub.id, n)
        return matched

    def enqueue(self, sub_id: str, n: Notification) -> None:
        key = (sub_id, n.subscriber_id)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue()
        opts = self.options
        if len(q.items) >= opts.queue_per_subscriber_max or self._queued >= opts.queued_total_max:
            task = asyncio.get_running_loop().create_task(self._dead(sub_id, n, 0, "queue full"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        q.items.append(n)
        self._queued += 1
        if q.task is None and not self._closing:
            q.task = asyncio.get_running_loop().create_task(self._drain(key, q))

    @property
    def queued(self) -> int:
        return self._queued

    async def _drain(self, key: tuple[str, str], q: _Queue) -> None:
        sub_id = key[0]
        try:
            while q.items:
                n = q.items[0]
                sub = self.subscriptions.get(sub_id)
                if sub is not None:  # else the subscription was deleted: drop what is left
                    attempts, error = await self._deliver(sub, n)
                    if error is not None:
                        await self._dead(sub_id, n, attempts, error)
                q.items.popleft()
                self._queued -= 1
        finally:
            q.task = None
            if not q.items and self._queues.get(key) is q:
                del self._queues[key]

    async def _deliver(self, sub: Subscription, n: Notification) -> tuple[int, str | None]:
        """Try until delivered or given up: (attempts made, last error or None)."""
        assert self._client is not None
        body = orjson.dumps({**n.to_json(), "subscription_id": sub.id})
        error = "not attempted"
        for attempt in range(1, self.options.attempts_max + 1):
            self.stats.attempts += 1
            headers = {
                "content-type": "application/json",
                SIGNATURE_HEADER: sign(sub.secret, body, time.time_ns() // 1_000_000),
                EVENT_ID_HEADER: n.id,
                ATTEMPT_HEADER: str(attempt),
            }
            try:
                response = await self._client.post(sub.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if response.is_success:
                    self.stats.delivered += 1
                    return attempt, None
                error = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and (
                    response.status_code not in RETRIED_STATUSES
                ):
                    return attempt, error + " (not retried)"
            self.stats.failed_attempts += 1
            if attempt < self.options.attempts_max:
                await asyncio.sleep(self.options.backoff_s(attempt))
        return self.options.attempts_max, error

    async def _dead(self, sub_id: str, n: Notification, attempts: int, error: str) -> None:
        self.stats.dead += 1
        log.warning(
            "notification dead-lettered",
            extra={"subscription": sub_id, "event": n.id, "error": error},
        )
        await self.db.add_dead_letter(
            sub_id, n.subscriber_id, n.to_json(), attempts, error, time.time_ns() // 1_000_000
        )
        if self.stats.dead % 1000 == 0:
            await self.db.prune_dead_letters(self.options.dead_letters_max)

    def status(self) -> dict[str, Any]:
        return {
            "subscriptions": len(self.subscriptions),
            "queued": self._queued,
            "active_queues": len(self._queues),
            "delivered": self.stats.delivered,
            "attempts": self.stats.attempts,
            "failed_attempts": self.stats.failed_attempts,
            "dead_lettered": self.stats.dead,
        }
