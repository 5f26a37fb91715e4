"""The exporter: follows the cdr table by seq and appends every record to chained files.

At-least-once by construction: records are read after the writer's persisted position, written
and fsynced, then the position moves. A restart resumes from the position; a record the writer
already holds is skipped by seq, so a crash between the write and the position update does not
duplicate lines in files either.

An embedded store also hands each record over as its commit ends (RecordOutbox): an exporter
that keeps up takes them from there and reads the table only to catch up (after a start, or
when it fell behind by more than the outbox holds).

Subscriber identities are not in the stored record; they are joined here at export time, as the
charging process knows them. Identities rarely change, but a record exported after a change (or
after the subscriber was deleted) carries the identities of export time (or none).

By default this runs in a process of its own (see `_process`); in the charging process only
where the store has no SQLite file to follow, or where configured so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from quotaflow.records._source import RecordFilter, RecordSource
from quotaflow.records._writer import ChainWriter
from quotaflow.store.base import Store
from quotaflow.store.embedded import RecordOutbox

log = logging.getLogger("quotaflow.records")

BATCH_RECORDS_MAX = 5000
# After a wake-up from a charge, wait this long before reading, so that the burst it belongs to
# is exported as one batch: each batch costs two fsyncs and a position write per format, and
# on a busy server a wake-up comes with nearly every charge. Capped by the poll interval.
LINGER_S = 0.1


# Looks up the identities of the given subscribers, as the store knows them now; a subscriber
# that is gone has none. In-process that is the store; the exporter's own process asks the
# charging process over its pipe (one round trip per batch).
IdentityLookup = Callable[[list[str]], Awaitable[dict[str, dict[str, str]]]]
IDENTITIES_PER_CALL: Final = 500  # subscribers looked up between two yields to the loop


async def identities_from(store: Store, subscriber_ids: list[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for at in range(0, len(subscriber_ids), IDENTITIES_PER_CALL):
        if at:
            await asyncio.sleep(0)  # a batch of thousands would hold the loop for milliseconds
        found.update(await store.identities_of(subscriber_ids[at : at + IDENTITIES_PER_CALL]))
    return found


async def join_identities(
    lookup: IdentityLookup, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The records, each given `identities` of its subscriber. They are changed in place:
    every caller passes records of its own (decoded from the table, or handed over by the
    outbox)."""
    sids = list(dict.fromkeys(str(r.get("subscriber_id", "")) for r in records))
    found = await lookup(sids) if sids else {}
    for r in records:
        r["identities"] = found.get(str(r.get("subscriber_id", "")), {})
    return records


async def with_identities(store: Store, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`join_identities` from the store itself."""
    return await join_identities(functools.partial(identities_from, store), records)


class Exporter:
    """Background task feeding one writer per format from one source."""

    def __init__(
        self,
        identities: IdentityLookup,
        source: RecordSource,
        writers: list[ChainWriter],
        *,
        poll_interval_s: float = 0.5,
        batch_records_max: int = BATCH_RECORDS_MAX,
        linger_s: float = LINGER_S,
        outbox: RecordOutbox | None = None,
        durable_seq: Callable[[], int] | None = None,
    ) -> None:
        assert writers and poll_interval_s > 0 and 0 < batch_records_max <= 100_000
        assert linger_s >= 0
        self.identities = identities
        self.source = source
        self.writers = writers
        self.poll_interval_s = poll_interval_s
        self.linger_s = min(linger_s, poll_interval_s)
        self.batches = 0
        self.batch_records_max = batch_records_max
        self.errors = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="quotaflow-records-write")
        self.outbox = outbox
        # Every record with a seq up to this one is in the files: the position, or further
        # when the table was read to its end (there are no records between the two).
        self._exported_to = 0
        self.from_outbox = 0  # records taken from the outbox rather than read from the table
        self.durable_seq = durable_seq  # the store's last synced seq, where it tells
        # Called after every step (the exporter's own process reports its state to the
        # charging process from here: that report also answers the wake-up that began it).
        self.on_step: Callable[[], None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for w in self.writers:
            await loop.run_in_executor(self._io, w.recover)
        self._task = loop.create_task(self._run())

    def wake(self) -> None:
        """Something was charged: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.outbox is not None:
            self.outbox.close()
        self._io.shutdown(wait=True)
        for w in self.writers:
            w.close()

    @property
    def position(self) -> int:
        return min(w.last_seq for w in self.writers)

    async def _run(self) -> None:
        while True:
            # Cleared before the step, not after: a wake-up that comes while the step runs may
            # be for a record it did not see, so it must start another step.
            self._wake.clear()
            try:
                moved = await self.step()
            except Exception:
                self.errors += 1
                log.exception("record export failed; retrying")
                moved = -1
            if self.on_step is not None:
                self.on_step()
            if moved < self.batch_records_max:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
                if self._wake.is_set() and self.linger_s:
                    await asyncio.sleep(self.linger_s)

    async def step(self) -> int:
        """Export one batch; returns how many records were read (0: caught up)."""
        loop = asyncio.get_running_loop()
        limit = self.batch_records_max
        position = self.position
        exported_to = max(position, self._exported_to)
        batch = None if self.outbox is None else self.outbox.take(exported_to, limit)
        table_end = -1
        if batch is None:
            # Committed before the read starts: a short page then holds every record up to it.
            durable = -1 if self.durable_seq is None else self.durable_seq()
            batch = await self.source.read(RecordFilter(after_seq=position), limit)
            if len(batch) < limit:
                table_end = durable
        else:
            self.from_outbox += len(batch)
        if batch:
            self.batches += 1
            enriched = await join_identities(self.identities, batch)
            for w in self.writers:
                await loop.run_in_executor(self._io, w.append, enriched)
        else:
            for w in self.writers:
                await loop.run_in_executor(self._io, w.rotate_if_due)
        # Written (an exception above leaves both as they were).
        self._exported_to = max(exported_to, table_end, self.position)
        return len(batch)

    async def seal(self) -> int:
        """Seal every open file now; returns how many were sealed."""
        loop = asyncio.get_running_loop()
        sealed = 0
        for w in self.writers:
            sealed += int(await loop.run_in_executor(self._io, w.seal))
        return sealed

    def status(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "batches": self.batches,
            "errors": self.errors,
            # Records handed over by the store as they committed (the rest were read from the
            # table), and how many the outbox let go before they were taken.
            "from_outbox": self.from_outbox,
            "outbox_dropped": 0 if self.outbox is None else self.outbox.dropped,
            "writers": [w.status() for w in self.writers],
        }
