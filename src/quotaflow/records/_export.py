"""The exporter: follows the cdr table by seq and appends every record to chained files.

At-least-once by construction: records are read after the writer's persisted position, written
and fsynced, then the position moves. A restart resumes from the position; a record the writer
already holds is skipped by seq, so a crash between the write and the position update does not
duplicate lines in files either.

An embedded store also hands each record over as its commit ends (RecordOutbox): an exporter
that keeps up takes them from there and reads the table only to catch up (after a start, or
when it fell behind by more than the outbox holds).

Subscriber identities are not in the stored record; they are joined here at export time from
the store. Identities rarely change, but a record exported after a change (or after the
subscriber was deleted) carries the identities of export time (or none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from quotaflow.ledger import ChargingError
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


async def with_identities(store: Store, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, each given `identities` of its subscriber as the store knows them now.
    They are changed in place: every caller passes records of its own (decoded from the table,
    or handed over by the outbox)."""
    cache: dict[str, dict[str, str]] = {}
    for n, r in enumerate(records, 1):
        if n % 500 == 0:
            await asyncio.sleep(0)  # a batch of thousands would hold the loop for milliseconds
        sid = str(r.get("subscriber_id", ""))
        ids = cache.get(sid)
        if ids is None:
            try:
                ids = dict((await store.get_subscriber(sid)).identities)
            except ChargingError:  # deleted since
                ids = {}
            cache[sid] = ids
        r["identities"] = ids
    return records


class Exporter:
    """Background task feeding one writer per format from one source."""

    def __init__(
        self,
        store: Store,
        source: RecordSource,
        writers: list[ChainWriter],
        *,
        poll_interval_s: float = 0.5,
        batch_records_max: int = BATCH_RECORDS_MAX,
        linger_s: float = LINGER_S,
        outbox: RecordOutbox | None = None,
    ) -> None:
        assert writers and poll_interval_s > 0 and 0 < batch_records_max <= 100_000
        assert linger_s >= 0
        self.store = store
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

    @property
    def position(self) -> int:
        return min(w.last_seq for w in self.writers)

    async def _run(self) -> None:
        while True:
            try:
                moved = await self.step()
            except Exception:
                self.errors += 1
                log.exception("record export failed; retrying")
                moved = 0
            if moved < self.batch_records_max:
                self._wake.clear()
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
            durable = getattr(self.store, "durable_seq", -1)
            batch = await self.source.read(RecordFilter(after_seq=position), limit)
            if len(batch) < limit:
                table_end = durable
        else:
            self.from_outbox += len(batch)
        if batch:
            self.batches += 1
            enriched = await with_identities(self.store, batch)
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
