"""The records service: exporter to files, optional NATS stream, both following the cdr table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow.engine import Engine, EngineEvent
from quotaflow.records._export import Exporter
from quotaflow.records._keys import load_or_create_key
from quotaflow.records._nats import NatsOptions, NatsStreamer
from quotaflow.records._source import RecordSource
from quotaflow.records._writer import ChainWriter, Rotation
from quotaflow.store.base import Store

log = logging.getLogger("quotaflow.records")

WAKE_EVENTS = frozenset({"balance_changed", "credit_added"})


@dataclass(slots=True)
class RecordOptions:
    """Where and how records are exported. Paths default to folders of the data directory."""

    export: bool = True
    export_dir: Path | None = None  # default <data_dir>/records
    key_dir: Path | None = None  # default <data_dir>/keys
    formats: tuple[str, ...] = ("jsonl",)
    rotation: Rotation = field(default_factory=Rotation)
    poll_interval_s: float = 0.5
    batch_records_max: int = 5000
    nats: NatsOptions | None = None  # None: no stream


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
        self.exporter: Exporter | None = None
        self.streamer: NatsStreamer | None = None
        self._sources: list[RecordSource] = []

    def source(self) -> RecordSource:
        """A reader of its own (own connection and thread) for one consumer."""
        src = RecordSource(self.store)
        self._sources.append(src)
        return src

    async def start(self) -> RecordService:
        opts = self.options
        if opts.export:
            writers = [
                ChainWriter(self.export_dir / fmt, fmt, self.key, opts.rotation)
                for fmt in opts.formats
            ]
            self.exporter = Exporter(
                self.store,
                self.source(),
                writers,
                poll_interval_s=opts.poll_interval_s,
                batch_records_max=opts.batch_records_max,
            )
            await self.exporter.start()
        if opts.nats is not None:
            self.streamer = NatsStreamer(
                self.store,
                self.source(),
                self.export_dir,
                opts.nats,
                poll_interval_s=opts.poll_interval_s,
            )
            await self.streamer.start()
        self.engine.subscribe(self._on_event)
        log.info("records service started", extra={"export_dir": str(self.export_dir)})
        return self

    def _on_event(self, event: EngineEvent) -> None:
        if event.kind in WAKE_EVENTS:  # never blocks: only sets flags
            if self.exporter is not None:
                self.exporter.wake()
            if self.streamer is not None:
                self.streamer.wake()

    async def stop(self) -> None:
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
        }


async def start(
    engine: Engine,
    store: Store,
    data_dir: str | Path,
    options: RecordOptions | None = None,
) -> RecordService:
    """Start exporting; the returned service is also its own stop coroutine function."""
    return await RecordService(engine, store, data_dir, options).start()
