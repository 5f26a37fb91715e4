"""What the engine needs of a store whose state is in this process (the embedded one).

A change applies at once and only its durability is awaited, so a session step can be charged
with no coroutine and answered once the barrier `submit` returns is done. A compiled class, not
a Protocol: compiled callers reach its methods through a vtable, where a Protocol's methods are
looked up and called as Python methods (about 600 instructions per call, ten calls per CCR-U).
"""

from __future__ import annotations

import asyncio
from typing import Any

from quotaflow.ledger import Subscriber
from quotaflow.store.base import Clock, Result


class ImmediateStore:
    """The base of such a store; each method is the subclass's (the embedded store's)."""

    clock: Clock  # milliseconds since the epoch; a native attribute, read without a lookup

    def submit(
        self,
        op: str,
        op_id: str | None,
        args: dict[str, Any],
        now_ms: int | None = None,
        sorted_keys: bool = False,
    ) -> tuple[Result, asyncio.Future[None] | None]:
        """Apply now; the result and the barrier to await before answering (None: nothing
        pending). A refusal raises; its caller still waits for `pending()` before answering.
        `sorted_keys`: every key of `args` is in sorted order (Ledger.apply_encoded)."""
        raise NotImplementedError

    def pending(self) -> asyncio.Future[None] | None:
        """The barrier of everything applied so far, or None when all of it is durable."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Return once everything applied so far is durable."""
        raise NotImplementedError

    def session_now(self, session_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def open_sessions_now(self) -> list[tuple[str, dict[str, Any]]]:
        """Every open session and its record, in the ledger's order (for indexes an
        application rebuilds at its start, before it serves: it copies the whole table)."""
        raise NotImplementedError

    def subscriber_now(self, subscriber_id: str) -> Subscriber:
        """As get_subscriber; raises UnknownSubscriber."""
        raise NotImplementedError

    def first_answer(self, op_id: str) -> Result | None:
        """The first result of an operation id, durable or not: answer it only after
        `pending()`."""
        raise NotImplementedError
