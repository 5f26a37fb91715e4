"""What the engine needs from a store: the embedded one, and a Redis Cluster one to come."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from quotaflow.ledger import ChargingError, Subscriber
from quotaflow.ledger.model import Group, Reservation
from quotaflow.store.clock import wall_clock_ms as wall_clock_ms

Result = dict[str, Any]
Clock = Callable[[], int]


class Barrier(asyncio.Future[None]):
    """Released once a group commit is durable; awaited by every operation in it.

    It refuses cancellation: a waiter that is cancelled gets its CancelledError once the batch
    is written (asyncio's Task does this when the future it waits on will not cancel), and the
    others still get their answer. Cheaper than an `asyncio.shield` per waiter, which costs a
    future and two callbacks each. So a timeout around `execute` cannot fire before the batch's
    write ends. Defined here, interpreted: mypyc compiles no subclass of a C extension class.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


LOCK_FILE = ".lock"  # in a folder one process writes at a time, held (flock) while it does


class FolderInUse(RuntimeError):
    """Another process holds the folder's lock (LOCK_FILE)."""


def lock_folder(folder: Path, refusal: str) -> int:
    """Hold `folder`'s lock until the returned descriptor is closed (or the process ends);
    FolderInUse(refusal) if another open file holds it, in this process or another."""
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderInUse(refusal) from None
    return fd


class SnapshotFileError(RuntimeError):
    """The snapshot file the database names is missing or cut short: the journal it covered
    was deleted with it, so the store will not open without it (restore the file from a
    backup). Not compiled with the store: mypyc cannot subclass RuntimeError."""


class StoreUnavailable(ChargingError):
    """The store cannot make changes durable; nothing more is acknowledged."""

    code = "store_unavailable"


class Store(Protocol):
    """A ledger made durable. `execute` returns only once its change is on disk."""

    clock: Clock

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def execute(
        self, op: str, op_id: str | None, args: dict[str, Any], now_ms: int | None = None
    ) -> Result: ...

    async def get_subscriber(self, subscriber_id: str) -> Subscriber:
        """A read-only view of one subscriber; raises UnknownSubscriber."""
        ...

    async def identities_of(self, subscriber_ids: list[str]) -> dict[str, dict[str, str]]:
        """Each subscriber's identities (a copy; {} for one that is gone), in one call: the
        records exporter asks for a batch's subscribers at once."""
        ...

    async def list_subscribers(self, offset: int, limit: int) -> list[Subscriber]: ...

    async def resolve(self, kind: str, value: str) -> str:
        """Subscriber id for an identity; raises UnknownSubscriber."""
        ...

    async def get_session(self, session_id: str) -> dict[str, Any] | None: ...

    async def sessions_of(self, subscriber_id: str) -> dict[str, dict[str, Any]]: ...

    async def recorded(self, op_id: str) -> Result | None:
        """The first answer to an operation id still within the idempotency window."""
        ...

    def payable_units(
        self, sub: Subscriber, unit: str, rating_group: int | None, price: dict[str, int] | None
    ) -> int: ...

    async def get_group(self, group_id: str) -> Group:
        """A read-only view of a group; raises NotFound."""
        ...

    def pool_available(self, group_id: str, unit: str) -> int: ...

    def pool_held(self, group_id: str, unit: str) -> int:
        """Units of this group's pool held by open grants."""
        ...

    async def pool_reservations(self, group_id: str) -> list[Reservation]:
        """Open reservations that hold units of this group's pool."""
        ...

    def policy_counters(self, subscriber_id: str) -> list[dict[str, Any]]: ...

    async def transfer_report(self, transfer_id: str) -> dict[str, Any]:
        """A transfer with how much of it the receiver has used; raises NotFound."""
        ...

    async def get_voucher(self, voucher_id: str) -> dict[str, Any] | None:
        """A voucher as stored (its token only as a hash), or None."""
        ...

    async def open_offers(self) -> list[dict[str, Any]]:
        """The quota broker's offers that still have blocks to sell."""
        ...

    async def interop_transfers(self, state: str | None = None) -> list[dict[str, Any]]:
        """Transfers to other operators, optionally only those in one state (e.g. "held")."""
        ...

    async def get_interop_transfer(self, transfer_id: str) -> dict[str, Any] | None: ...

    async def prune_records(self, up_to_seq: int, before_ms: int) -> int:
        """Delete charging records with seq <= up_to_seq written before before_ms; how many."""
        ...

    def stats(self) -> dict[str, Any]: ...
