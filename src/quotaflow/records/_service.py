"""The records service: exporter to files, optional NATS stream, both following the cdr table."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow.engine import Engine, EngineEvent
from quotaflow.records._export import LINGER_S, Exporter, IdentityLookup, identities_from
from quotaflow.records._keys import load_or_create_key
from quotaflow.records._nats import NatsOptions, NatsStreamer
from quotaflow.records._process import ExporterProcess, ProcessSpec
from quotaflow.records._source import RecordSource
from quotaflow.records._writer import ChainWriter, Rotation
from quotaflow.store.base import Store

log = logging.getLogger("quotaflow.records")

WAKE_EVENTS = frozenset({"balance_changed", "credit_added"})


@dataclass(slots=True)
class RecordOptions:
    """Where and how records are exported. Paths default to folders of the data directory."""

    export: bool = True
    # Export from a process of its own (`python -m quotaflow.records`), off the charging
    # process's CPU and GIL; in process only where the store keeps no SQLite file to follow.
    process: bool = True
    export_dir: Path | None = None  # default <data_dir>/records
    key_dir: Path | None = None  # default <data_dir>/keys
    formats: tuple[str, ...] = ("jsonl",)
    rotation: Rotation = field(default_factory=Rotation)
    poll_interval_s: float = 0.5
    batch_records_max: int = 5000
    linger_s: float = LINGER_S
    nats: NatsOptions | None = None  # None: no stream
    # Charging records older than this leave the cdr table once every exporter and the stream
    # have them; 0 keeps them forever. Exported files are never deleted.
    retention_days: int = 0
    retention_check_s: float = 3600.0


class RecordService:
    """Started with the server; awaiting the service itself stops it (a stop coroutine)."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        data_dir: str | Path,
        options: RecordOptions | None = None,
    ) -> None:
        self.engine = engine
        self.store = store
        self.options = opts = options or RecordOptions()
        self.data_dir = Path(data_dir)
        self.export_dir = opts.export_dir or self.data_dir / "records"
        self.key_dir = opts.key_dir or self.data_dir / "keys"
        self.key: Ed25519PrivateKey = load_or_create_key(self.key_dir)
        self.exporter: Exporter | ExporterProcess | None = None
        self.streamer: NatsStreamer | None = None
        self._sources: list[RecordSource] = []
        self._retention: asyncio.Task[None] | None = None
        self._hooks: list[Callable[[], None]] | None = None  # the store's on_records, once in it
        self.pruned = 0

    def source(self) -> RecordSource:
        """A reader of its own (own connection and thread) for one consumer."""
        src = RecordSource(self.store)
        self._sources.append(src)
        return src

    async def start(self) -> RecordService:
        opts = self.options
        if opts.export:
            db_path = getattr(self.store, "path", None)
            if opts.process and db_path is not None:
                await self._start_process(db_path)
            else:
                await self._start_in_process()
        if opts.nats is not None:
            self.streamer = NatsStreamer(
                self.store,
                self.source(),
                self.export_dir,
                opts.nats,
                poll_interval_s=opts.poll_interval_s,
            )
            await self.streamer.start()
        # The embedded store says when records are durable, once per commit; another store's
        # charges are followed by the engine's events.
        hooks: list[Callable[[], None]] | None = getattr(self.store, "on_records", None)
        if hooks is not None:
            hooks.append(self._wake)
            self._hooks = hooks
        else:
            self.engine.subscribe(self._on_event, WAKE_EVENTS)
        if opts.retention_days > 0:
            self._retention = asyncio.get_running_loop().create_task(self._retain())
        log.info("records service started", extra={"export_dir": str(self.export_dir)})
        return self

    def _lookup(self) -> IdentityLookup:
        return functools.partial(identities_from, self.store)

    async def _start_process(self, db_path: Path) -> None:
        opts = self.options
        # Absolute: the exporter's working folder is not this process's concern.
        spec = ProcessSpec(
            db_path=str(Path(db_path).resolve()),
            folders={fmt: str((self.export_dir / fmt).resolve()) for fmt in opts.formats},
            key_dir=str(self.key_dir.resolve()),
            rotation=asdict(opts.rotation),
            poll_interval_s=opts.poll_interval_s,
            batch_records_max=opts.batch_records_max,
            linger_s=opts.linger_s,
            log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        )
        store = self.store
        self.exporter = ExporterProcess(
            spec, self._lookup(), lambda: getattr(store, "durable_seq", None)
        )
        await self.exporter.start()

    async def _start_in_process(self) -> None:
        opts = self.options
        writers = [
            ChainWriter(self.export_dir / fmt, fmt, self.key, opts.rotation) for fmt in opts.formats
        ]
        # The embedded store hands records over as they commit (one consumer: the files).
        handover = getattr(self.store, "record_outbox", None)
        outbox = handover() if handover is not None else None
        store = self.store
        try:
            self.exporter = Exporter(
                self._lookup(),
                self.source(),
                writers,
                poll_interval_s=opts.poll_interval_s,
                batch_records_max=opts.batch_records_max,
                linger_s=opts.linger_s,
                outbox=outbox,
                durable_seq=lambda: int(getattr(store, "durable_seq", -1)),
            )
            await self.exporter.start()
        except BaseException:
            if outbox is not None:  # else the store would refuse the next start
                outbox.close()
            for w in writers:  # the folders it locked
                w.close()
            raise

    def _on_event(self, event: EngineEvent) -> None:
        if event.kind in WAKE_EVENTS:
            self._wake()

    def _wake(self) -> None:
        """Never blocks: only sets flags (or writes one line to the exporter process)."""
        if self.exporter is not None:
            self.exporter.wake()
        if self.streamer is not None:
            self.streamer.wake()

    async def prune(self) -> int:
        """Delete records past retention that every consumer has; returns how many."""
        days = self.options.retention_days
        if days <= 0:
            return 0
        positions = [c.position for c in (self.exporter, self.streamer) if c is not None]
        up_to = min(positions) if positions else 2**62
        before_ms = self.store.clock() - days * 86_400_000
        pruned = await self.store.prune_records(up_to, before_ms)
        self.pruned += pruned
        if pruned:
            log.info("charging records pruned", extra={"records": pruned, "up_to_seq": up_to})
        return pruned

    async def _retain(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # a failed prune is retried at the next check
                log.exception("record retention failed")
            await asyncio.sleep(self.options.retention_check_s)

    async def stop(self) -> None:
        if self._hooks is not None:
            with contextlib.suppress(ValueError):
                self._hooks.remove(self._wake)
            self._hooks = None
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        if self.exporter is not None:
            await self.exporter.stop()
        if self.streamer is not None:
            await self.streamer.stop()
        for src in self._sources:
            src.close()
        self._sources.clear()

    async def __call__(self) -> None:
        await self.stop()

    def status(self) -> dict[str, Any]:
        return {
            "export": None if self.exporter is None else self.exporter.status(),
            "nats": None if self.streamer is None else self.streamer.status(),
            "retention_days": self.options.retention_days,
            "pruned": self.pruned,
        }


async def start(
    engine: Engine,
    store: Store,
    data_dir: str | Path,
    options: RecordOptions | None = None,
) -> RecordService:
    """Start exporting; the returned service is also its own stop coroutine function."""
    return await RecordService(engine, store, data_dir, options).start()
