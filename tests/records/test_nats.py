"""Records to a real NATS JetStream (127.0.0.1:4222): at least once, across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from quotaflow import records
from quotaflow.records import NatsOptions, RecordOptions
from tests.records.harness import (
    debits,
    eventually,
    provision,
    running_engine,
    stops_when_woken,
    stored,
)

NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def stream() -> AsyncIterator[tuple[NatsOptions, JetStreamContext]]:
    tag = uuid.uuid4().hex[:12]
    opts = NatsOptions(url=NATS_URL, stream=f"QF_TEST_{tag}", subject=f"qftest.{tag}.cdr")
    nc = await nats.connect(NATS_URL, connect_timeout=2)
    js = nc.jetstream(timeout=5)
    try:
        yield opts, js
    finally:
        with contextlib.suppress(NotFoundError):  # a test that never reached NATS
            await js.delete_stream(opts.stream)
        await nc.close()


async def stored_seqs(js: JetStreamContext, opts: NatsOptions) -> list[int]:
    info = await js.stream_info(opts.stream)
    out = []
    for n in range(1, info.state.last_seq + 1):
        msg = await js.get_msg(opts.stream, n)
        assert msg.data is not None and msg.headers is not None
        record = orjson.loads(msg.data)
        assert msg.headers["Nats-Msg-Id"] == f"cdr-{record['seq']}"
        out.append(record["seq"])
    return out


async def test_stream_at_least_once_across_restart(
    tmp_path: Path, stream: tuple[NatsOptions, JetStreamContext]
) -> None:
    opts, js = stream
    data = tmp_path / "data"
    options = RecordOptions(export=False, nats=opts, poll_interval_s=0.05)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await debits(engine, "alice", 5, "a")
        service = await records.start(engine, engine.store, data, options)
        assert service.streamer is not None
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: service.streamer.position == last, what="stream")  # type: ignore[union-attr]
        await service()
        # A crash after the stream acknowledged but before the position was saved: the next
        # run sends those records again; JetStream drops the repeats by Nats-Msg-Id.
        position_file = data / "records" / f"nats-position-{opts.stream}.json"
        first = stored(engine)[1]["seq"]
        position_file.write_bytes(orjson.dumps({"last_seq": first}))
        await debits(engine, "alice", 3, "b")  # while the streamer is down
    async with running_engine(data) as engine:
        service = await records.start(engine, engine.store, data, options)
        assert service.streamer is not None
        ledger = [r["seq"] for r in stored(engine)]
        await eventually(lambda: service.streamer.position == ledger[-1], what="catch up")  # type: ignore[union-attr]
        assert service.streamer.duplicates == 3  # seqs 3..5 of the first run, sent again
        await service()
    assert await stored_seqs(js, opts) == ledger and len(ledger) == 8


async def test_stream_waits_for_nats_and_loses_nothing(
    tmp_path: Path, stream: tuple[NatsOptions, JetStreamContext]
) -> None:
    opts, js = stream
    data = tmp_path / "data"
    down = NatsOptions(url="nats://127.0.0.1:1", stream=opts.stream, subject=opts.subject)
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await debits(engine, "alice", 2, "a")
        service = await records.start(
            engine, engine.store, data, RecordOptions(export=False, nats=down, poll_interval_s=0.05)
        )
        assert service.streamer is not None
        await eventually(lambda: service.streamer.errors >= 2, what="failed attempts")  # type: ignore[union-attr]
        assert service.streamer.position == 0
        await service()
        service = await records.start(
            engine, engine.store, data, RecordOptions(export=False, nats=opts, poll_interval_s=0.05)
        )
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: service.streamer.position == last, what="delivered")  # type: ignore[union-attr]
        await service()
    assert len(await stored_seqs(js, opts)) == 2


async def test_stream_stops_in_the_tick_it_is_woken(
    tmp_path: Path, stream: tuple[NatsOptions, JetStreamContext]
) -> None:
    """A wake-up and a stop in the same tick: the stop wins (see the exporter's twin test)."""
    opts, _ = stream
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await debits(engine, "alice", 2, "a")
        options = RecordOptions(export=False, nats=opts, poll_interval_s=0.05)
        service = await records.start(engine, engine.store, data, options)
        assert service.streamer is not None
        last = stored(engine)[-1]["seq"]
        await eventually(lambda: service.streamer.position == last, what="stream")  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
        await stops_when_woken(service.streamer.wake, service.streamer.stop)
        await service()
        assert service.streamer._task is not None and service.streamer._task.cancelled()
