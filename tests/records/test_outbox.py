"""Records handed from the store to the exporter as they commit (RecordOutbox), with the cdr
table as the fallback: whatever way a record comes, it is exported once, in order."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow import records
from quotaflow.ledger import Unit
from quotaflow.records import ChainWriter
from quotaflow.records._export import Exporter, identities_from
from quotaflow.store import EmbeddedStore
from quotaflow.store.base import StoreUnavailable
from quotaflow.store.embedded import RecordOutbox
from tests.records.harness import debits, provision, running_engine, stored
from tests.records.test_export import exported


def _bodies(*seqs: int) -> list[dict[str, Any]]:
    return [{"seq": s} for s in seqs]


def _exporter(
    store: EmbeddedStore, data: Path, key: Ed25519PrivateKey, outbox: RecordOutbox, **options: Any
) -> Exporter:
    """An exporter to JSON lines under `data`, not started: the test drives its steps."""
    writer = ChainWriter(data / "records" / "jsonl", "jsonl", key, records.Rotation())
    writer.recover()
    return Exporter(
        functools.partial(identities_from, store),
        records.RecordSource(store),
        [writer],
        outbox=outbox,
        durable_seq=lambda: store.durable_seq,
        **options,
    )


async def _stopped(exporter: Exporter) -> None:
    await exporter.stop()
    exporter.source.close()


def test_outbox_hands_over_committed_records_once_and_refuses_what_it_cannot_vouch_for() -> None:
    box = RecordOutbox(floor_seq=10, records_max=4)
    assert box.take(9, 100) is None  # seq 10 and before: only in the table
    assert box.take(10, 100) == []
    box.deliver(_bodies(12, 15))
    box.deliver(_bodies(16))
    assert box.take(10, 2) == _bodies(12, 15)
    assert box.floor_seq == 15  # a consumer that failed to write 12 and 15 reads the table
    assert box.take(12, 100) is None
    assert box.take(15, 100) == _bodies(16)
    box.deliver(_bodies(17, 18, 19, 20, 21, 22))  # two more than it holds
    assert box.dropped == 2 and box.floor_seq == 18 and len(box) == 4
    assert box.take(16, 100) is None
    assert box.take(19, 100) == _bodies(20, 21, 22)  # what the consumer has is skipped
    box.close()
    assert box.closed and len(box) == 0
    assert box.take(22, 100) is None  # closed: the table is the truth


def test_records_applied_before_an_outbox_opened_never_lower_its_floor() -> None:
    """A commit under way when an outbox opened may deliver records collected for the one
    before it: they are the table's, and an overflow among them must not lower the floor (the
    exporter would then skip a record that is in neither)."""
    box = RecordOutbox(floor_seq=6, records_max=2)
    box.deliver(_bodies(3, 4, 5, 7))
    assert len(box) == 1 and box.floor_seq == 6 and box.dropped == 0
    assert box.take(5, 10) is None
    box.deliver(_bodies(8, 9, 10))
    assert box.floor_seq == 8 and box.dropped == 2
    box.deliver(_bodies(11))
    assert box.floor_seq == 9  # up only


async def test_a_store_delivers_only_records_committed_after_the_outbox_was_opened(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path / "data", tune_gc=False)
    await store.open()
    try:
        store.submit("create_subscriber", "c1", {"id": "s1"})
        store.submit("topup", "t1", {"subscriber_id": "s1", "unit": "octets", "amount": 10**6})
        debit = {"subscriber_id": "s1", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        store.submit("debit", "d1", debit)  # applied, its commit still to come
        box = store.record_outbox()
        assert box.floor_seq == 3
        with pytest.raises(RuntimeError, match="consumer already"):
            store.record_outbox()
        await store.flush()
        assert store.durable_seq == 3
        assert box.take(2, 10) is None and box.take(3, 10) == []  # d1 is in the table only
        await store.execute("debit", "d2", debit)
        taken = box.take(3, 10)
        assert taken is not None and [r["seq"] for r in taken] == [4]
        assert taken == store.read_records(3, 10)  # the same record as the table holds
        box.close()
        await store.execute("debit", "d3", debit)
        assert len(box) == 0  # closed: nothing more delivered
        assert store.record_outbox().floor_seq == 5  # a new consumer may open one
    finally:
        await store.close()


async def test_an_exporter_restarted_on_an_open_store_loses_no_record(tmp_path: Path) -> None:
    """Records applied while the first exporter's outbox was open, committed after a second
    one opened (the review's case): every record reaches the files once, in order."""
    data = tmp_path / "data"
    key = records.load_or_create_key(data / "keys")
    async with running_engine(data) as engine:
        store = engine.store
        assert isinstance(store, EmbeddedStore)
        await provision(engine, "alice")
        debit = {"subscriber_id": "alice", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        first = store.record_outbox(2)
        for i in range(3):
            store.submit("debit", f"a{i}", debit)  # collected for the first, not committed
        first.close()
        store.submit("debit", "between", debit)  # no outbox open
        second = store.record_outbox(2)
        store.submit("debit", "after", debit)
        await store.flush()  # one commit delivers all five
        exporter = _exporter(store, data, key, second, batch_records_max=2)
        while await exporter.step():
            pass
        in_table = [r["seq"] for r in stored(engine)]
        await _stopped(exporter)
    assert [r["seq"] for r in exported(data / "records" / "jsonl")] == in_table
    assert len(in_table) == 5


async def test_a_store_stopped_by_a_failed_commit_closes_its_outbox(tmp_path: Path) -> None:
    """The write may have committed before it failed: the exporter must ask the table."""
    store = EmbeddedStore(tmp_path / "data", tune_gc=False, sweep_interval_s=3600)
    await store.open()
    try:
        await store.execute("create_subscriber", "c1", {"id": "s1"})
        await store.execute("topup", "t1", {"subscriber_id": "s1", "unit": "octets", "amount": 99})
        box = store.record_outbox()
        with sqlite3.connect(store.path) as other:  # a broken database: the cdr table is gone
            other.execute("DROP TABLE cdr")
        debit = {"subscriber_id": "s1", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        with pytest.raises(StoreUnavailable):
            await store.execute("debit", "d1", debit)
        assert box.closed and box.take(box.floor_seq, 10) is None
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()


async def test_a_records_service_that_fails_to_start_leaves_the_store_free(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        with pytest.raises(AssertionError):  # refused by the exporter, after the outbox opened
            await records.start(
                engine,
                engine.store,
                data,
                records.RecordOptions(batch_records_max=0, process=False),
            )
        options = records.RecordOptions(process=False)
        service = await records.start(engine, engine.store, data, options)
        assert service.exporter is not None and service.exporter.outbox is not None
        await service()


async def test_exporter_takes_records_from_the_outbox_and_the_table_and_loses_none(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    key = records.load_or_create_key(data / "keys")
    async with running_engine(data) as engine:
        store = engine.store
        assert isinstance(store, EmbeddedStore)
        await provision(engine, "alice")
        await debits(engine, "alice", 3, "before")  # in the table only
        exporter = _exporter(store, data, key, store.record_outbox(4))
        await debits(engine, "alice", 10, "overflow")  # six more than the outbox holds
        assert await exporter.step() == 13 and exporter.from_outbox == 0  # from the table
        await debits(engine, "alice", 2, "kept")
        assert await exporter.step() == 2 and exporter.from_outbox == 2  # from the outbox
        assert exporter.status()["outbox_dropped"] == 8  # the six, then two it had read

        # A write that fails loses the records it took from the outbox: they are read again
        # from the table. (The open file is made a folder for one step: a real write error.)
        await debits(engine, "alice", 2, "lost")
        (part,) = (data / "records" / "jsonl").glob("*.part")
        part.rename(part.with_name("aside"))
        part.mkdir()
        with pytest.raises(IsADirectoryError):
            await exporter.step()
        part.rmdir()
        part.with_name("aside").rename(part)
        assert await exporter.step() == 2 and exporter.from_outbox == 4  # two taken, then lost
        await engine.direct_debit("after", "alice", Unit.OCTETS, 1000, None)
        assert await exporter.step() == 1 and exporter.from_outbox == 5
        assert await exporter.step() == 0

        in_table = stored(engine)
        # Sealed: the manifest's digests are of what was written, not of the failed attempt.
        assert await exporter.seal() == 1
        await _stopped(exporter)
    files = exported(data / "records" / "jsonl")
    identities = {"msisdn": "4670alice", "imsi": "00101alice"}
    assert files == [{**r, "identities": identities} for r in in_table] and len(files) == 18
    report = records.verify(data / "records" / "jsonl", key.public_key())
    assert report.ok and report.records == 18 and report.files == 1, report.problems
