"""Streaming records to NATS JetStream, at least once, with a position that survives restarts.

Each record is published with `Nats-Msg-Id: cdr-<seq>`, so JetStream drops a repeat that
arrives within the stream's duplicate window. The position (`nats-position.json`) moves only
after every record up to it was acknowledged by the stream; after a crash or a lost
acknowledgement the batch is sent again. Past the duplicate window a repeat is stored twice:
consumers deduplicate by `seq` (at-least-once, not exactly-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from quotaflow.records._export import with_identities
from quotaflow.records._source import RecordFilter, RecordSource
from quotaflow.records._writer import write_atomic
from quotaflow.store.base import Store

log = logging.getLogger("quotaflow.records.nats")

IN_FLIGHT_MAX = 256  # publishes awaiting their acknowledgement at once
RECONNECT_BACKOFF_S_MAX = 30.0


@dataclass(slots=True)
class NatsOptions:
    url: str = "nats://127.0.0.1:4222"
    stream: str = "QUOTAFLOW_CDR"
    subject: str = "quotaflow.cdr"
    create_stream: bool = True
    duplicate_window_s: float = 120.0
    ack_timeout_s: float = 5.0
    batch_records_max: int = 1000


async def _quiet(exc: Exception) -> None:
    log.debug("NATS client error", extra={"error": repr(exc)})


class NatsStreamer:
    def __init__(
        self,
        store: Store,
        source: RecordSource,
        folder: str | Path,
        options: NatsOptions,
        *,
        poll_interval_s: float = 0.5,
    ) -> None:
        assert 0 < options.batch_records_max <= 100_000
        self.store = store
        self.source = source
        self.options = options
        self.poll_interval_s = poll_interval_s
        self.path = Path(folder) / f"nats-position-{options.stream}.json"
        self.position = 0
        self.published = 0
        self.duplicates = 0
        self.errors = 0
        self.connected = False
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The position write on its thread: stop() waits for it, so that no write lands after
        # stop returned (a cancelled to_thread keeps running).
        self._saving: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.position = int(orjson.loads(self.path.read_bytes())["last_seq"])
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving
        await self._disconnect()

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self.connected = False
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self) -> JetStreamContext:
        if self._js is not None:
            return self._js
        opts = self.options
        # One quick reconnect inside the client at most (nats-py 2.16 hangs on a refused first
        # connection when reconnecting is off); beyond that the loop reconnects with backoff.
        async with asyncio.timeout(10):
            nc = await nats.connect(
                opts.url,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=_quiet,
            )
        js = nc.jetstream(timeout=opts.ack_timeout_s)
        if opts.create_stream:
            try:
                await js.stream_info(opts.stream)
            except NotFoundError:
                await js.add_stream(
                    name=opts.stream,
                    subjects=[opts.subject],
                    duplicate_window=opts.duplicate_window_s,
                )
        self._nc, self._js, self.connected = nc, js, True
        return js

    async def _run(self) -> None:
        backoff_s = 0.1
        while True:
            try:
                moved = await self.step()
                backoff_s = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down or slow: keep the position, try again later
                self.errors += 1
                log.warning("NATS stream failed; retrying", extra={"error": repr(exc)})
                await self._disconnect()
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_BACKOFF_S_MAX)
                continue
            if moved < self.options.batch_records_max:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()

    async def step(self) -> int:
        """Publish one batch and move the position; returns how many records were sent."""
        js = await self._connect()
        batch = await self.source.read(
            RecordFilter(after_seq=self.position), self.options.batch_records_max
        )
        if not batch:
            return 0
        records = await with_identities(self.store, batch)
        for start in range(0, len(records), IN_FLIGHT_MAX):
            chunk = records[start : start + IN_FLIGHT_MAX]
            acks = await asyncio.gather(*(self._publish(js, r) for r in chunk))
            self.duplicates += sum(1 for a in acks if a)
            self.published += len(chunk)
        self.position = records[-1]["seq"]
        position = orjson.dumps({"last_seq": self.position})
        self._saving = asyncio.ensure_future(asyncio.to_thread(write_atomic, self.path, position))
        await asyncio.shield(self._saving)
        return len(records)

    async def _publish(self, js: JetStreamContext, record: dict[str, Any]) -> bool:
        ack = await js.publish(
            self.options.subject,
            orjson.dumps(record),
            timeout=self.options.ack_timeout_s,
            stream=self.options.stream,
            headers={"Nats-Msg-Id": f"cdr-{record['seq']}"},
        )
        return bool(ack.duplicate)

    def status(self) -> dict[str, Any]:
        return {
            "stream": self.options.stream,
            "subject": self.options.subject,
            "connected": self.connected,
            "position": self.position,
            "published": self.published,
            "duplicates": self.duplicates,
            "errors": self.errors,
        }
