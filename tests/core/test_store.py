"""The embedded store's group commit, seen by its callers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.store import EmbeddedStore
from tests.core.harness import recovered


async def test_a_cancelled_waiter_does_not_cancel_its_batch(tmp_path: Path) -> None:
    """Many operations wait on one commit; cancelling one of them must not fail the others,
    and the cancelled one is still applied and durable (it was, before it was cancelled)."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    waiters = [
        asyncio.create_task(
            store.execute("topup", f"t{i}", {"subscriber_id": "a", "unit": "octets", "amount": 10})
        )
        for i in range(20)
    ]
    await asyncio.sleep(0)  # every waiter has applied its topup and waits for the commit
    assert waiters[3].cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    others = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, dict) for r in others), others
    await store.close()
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        balance = again.ledger.subscriber("a").buckets
        assert sum(b.amount for b in balance.values()) == 200  # all 20, the cancelled one too
    finally:
        await again.close()


async def test_a_waiter_cancelled_during_the_write_gets_cancelled_after_it(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    task = asyncio.create_task(
        store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 5})
    )
    other = asyncio.create_task(
        store.execute("topup", "u", {"subscriber_id": "a", "unit": "octets", "amount": 7})
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await other)["amount"] == 7
    assert store.pending() is None  # the cancelled one's change was written with the batch
    await store.close()


async def test_recovery_replays_journal_rows_of_the_old_format_and_of_the_new(
    tmp_path: Path,
) -> None:
    """A data directory from before batches were encoded as they came holds rows that are an
    array of [seq, op, op_id, args, now_ms, refused]; they replay, and so do later rows."""
    import sqlite3

    import orjson

    from quotaflow.store.embedded import SCHEMA

    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    db.executescript(SCHEMA)
    old_rows = [
        [1, "create_subscriber", "c", {"id": "a"}, 1_000, 0],
        [2, "topup", "t", {"amount": 70, "subscriber_id": "a", "unit": "octets"}, 1_000, 0],
    ]
    db.execute("INSERT INTO journal VALUES (2, 1, ?)", (orjson.dumps(old_rows),))
    db.commit()
    db.close()
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    assert store._seq == 2
    debit = {"subscriber_id": "a", "unit": "octets", "units": 20}
    assert (await store.execute("debit", "d", debit))["units"] == 20
    async with recovered(store) as again:
        assert again._seq == 3 and again._since_snapshot == 3
        assert sum(b.amount for b in again.ledger.subscriber("a").buckets.values()) == 50
        # the replayed ids are remembered: a repeat is answered, not applied again
        assert (await again.execute("debit", "d", debit))["units"] == 20
        assert sum(b.amount for b in again.ledger.subscriber("a").buckets.values()) == 50


async def test_a_refused_operation_that_voided_a_lapsed_grant_replays_the_void(
    tmp_path: Path,
) -> None:
    """The refusal is journaled (marked refused) because its sweep voided a reservation whose
    validity had lapsed; replay voids it at the same instant and refuses the rest again."""
    from quotaflow.ledger import NotFound

    now = [1_000_000]
    store = EmbeddedStore(tmp_path, clock=lambda: now[0], sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 100})
    grant = {"subscriber_id": "a", "reservation_id": "r1", "unit": "octets"}
    await store.execute("reserve", "g", {**grant, "units_max": 60, "validity_ms": 1_000})
    now[0] += 5_000
    with pytest.raises(NotFound):
        await store.execute("commit", "x", {**grant, "reservation_id": "r2", "used_units": 1})
    assert store._seq == 4  # the refusal took a sequence number: it changed something
    assert not store.ledger.subscriber("a").reservations
    async with recovered(store, clock=lambda: now[0]) as again:
        assert again.ledger.lapsed_voids == 1


def test_a_journal_row_that_does_not_add_up_is_an_error_not_a_guess() -> None:
    import orjson

    from quotaflow.store.journal import Batch, decode

    batch = Batch(7)
    batch.add("topup", "t", b'{"amount":1}', 5, False)
    batch.add("expire", None, b"{}", 6, True)
    records = batch.encode()
    assert batch.encode() == records  # encoding twice changes nothing
    assert list(decode(7, 8, records)) == [
        (7, "topup", "t", {"amount": 1}, 5, 0),
        (8, "expire", None, {}, 6, 1),
    ]
    with pytest.raises(ValueError, match="do not hold 3 operations"):
        list(decode(7, 9, records))
    doc = orjson.loads(records)
    with pytest.raises(ValueError, match="unknown batch format 3"):
        list(decode(7, 8, orjson.dumps({**doc, "v": 3})))


def test_charging_records_are_inserted_in_order_in_statements_of_bounded_size() -> None:
    """One statement per commit where SQLite allows it; split where its parameter limit would
    not (`rows_max`); padding rows are dropped, nothing is lost or reordered at the seams."""
    import sqlite3

    from quotaflow.store.embedded import SCHEMA, _insert_records

    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(SCHEMA)
    records = [(seq, 1_000 + seq, f"s{seq % 3}", f'{{"seq":{seq}}}') for seq in range(1, 8)]
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    _insert_records(db, records, 4)
    _insert_records(db, [(8, 1_008, "s2", "{}")], 4)
    db.set_trace_callback(None)
    # 4 rows, then 3 padded to 4 (the same statement, prepared once), then 1
    assert len(statements) == 3 and statements[1].count("(0, 0, 0, 0)") == 1
    records.append((8, 1_008, "s2", "{}"))
    assert db.execute(
        "SELECT seq, at_ms, subscriber_id, body FROM cdr ORDER BY seq"
    ).fetchall() == [(seq, at, sid, body) for seq, at, sid, body in records]


async def test_without_group_commit_writes_do_not_race_a_snapshot(tmp_path: Path) -> None:
    """Each change is written before execute returns; a snapshot written meanwhile on the writer
    thread used to share the connection with it inside one transaction ("cannot start a
    transaction within a transaction"), which stopped the store."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600, group_commit=False)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**9})
    for i in range(300):  # a snapshot big enough to take a while
        record = {"pad": "y" * 2000}
        topup = {"subscriber_id": "a", "unit": "octets", "amount": 1, "record": record}
        await store.execute("topup", f"x{i}", topup)

    async def debits(k: int) -> None:
        for i in range(100):
            debit = {"subscriber_id": "a", "unit": "octets", "units": 1}
            await store.execute("debit", f"d{k}-{i}", debit)

    for k in range(5):
        await asyncio.gather(store.snapshot(), debits(k))
    assert store._failed is None
    async with recovered(store):
        pass


async def test_a_commit_with_more_records_than_one_statement_takes_keeps_them_all(
    tmp_path: Path,
) -> None:
    import sqlite3

    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 100})
    store._record_rows = 2
    for i in range(5):
        debit = {"subscriber_id": "a", "unit": "octets", "units": 1, "record": {"n": i}}
        store.submit("debit", f"d{i}", debit)
    commits = store.commits
    await store.flush()
    assert store.commits == commits + 1  # the five went in one commit
    await store.close()
    rows = sqlite3.connect(tmp_path / "ledger.sqlite3").execute("SELECT body FROM cdr").fetchall()
    assert [orjson.loads(body)["n"] for (body,) in rows] == [0, 1, 2, 3, 4]


async def test_a_store_refuses_to_start_on_a_journal_row_it_cannot_read(tmp_path: Path) -> None:
    """A row of a batch format this release does not know (written by a newer one) stops the
    start with a clear error: nothing is replayed half-way, and the row is left as it was."""
    import sqlite3

    from quotaflow.store.embedded import SCHEMA

    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    db.executescript(SCHEMA)
    row = orjson.dumps({"v": 3, "ops": ["create_subscriber"], "ids": ["c"], "args": [{}]})
    db.execute("INSERT INTO journal VALUES (1, 1, ?)", (row,))
    db.commit()
    db.close()
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    with pytest.raises(ValueError, match="unknown batch format 3"):
        await store.open()
    kept = sqlite3.connect(tmp_path / "ledger.sqlite3").execute("SELECT records FROM journal")
    assert kept.fetchall() == [(row,)]


async def test_records_hooks_run_once_per_commit_that_wrote_records_after_it_is_durable(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    seen: list[int] = []

    def failing() -> None:
        raise RuntimeError("a consumer's bug")

    store.on_records += [failing, lambda: seen.append(store.durable_seq)]
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 100})
    assert seen == []  # no charging record yet
    for i in range(3):
        debit = {"subscriber_id": "a", "unit": "octets", "units": 1, "record": {"n": i}}
        store.submit("debit", f"d{i}", debit)
    await store.flush()  # one commit: one call, which saw every record durable
    assert seen == [store._seq]
    # The failing hook changed nothing: the next charge is answered and reported too.
    debit = {"subscriber_id": "a", "unit": "octets", "units": 1, "record": {"n": 3}}
    await store.execute("debit", "d3", debit)
    assert seen == [store._seq - 1, store._seq]
    await store.close()


async def test_identities_of_answers_a_batch_with_copies_and_nothing_for_the_unknown(
    tmp_path: Path,
) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a", "msisdn": "46700000001"})
    found = await store.identities_of(["a", "gone"])
    assert found == {"a": {"msisdn": "46700000001"}, "gone": {}}
    found["a"]["msisdn"] = "changed"  # the caller's copy, not the subscriber's
    assert (await store.get_subscriber("a")).identities == {"msisdn": "46700000001"}
    await store.close()


async def test_after_a_failed_commit_no_first_answer_is_handed_out(tmp_path: Path) -> None:
    """The failed commit's changes are in memory only: a repeat of one of its operations must
    not be told it succeeded (it would be acknowledged, then lost on restart)."""
    import sqlite3

    from quotaflow.store import StoreUnavailable

    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await _funded(store, 9)
        with sqlite3.connect(store.path) as other:  # the next commit cannot write its records
            other.execute("DROP TABLE cdr")
        debit = {"subscriber_id": "a", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        with pytest.raises(StoreUnavailable):
            await store.execute("debit", "d1", debit)
        assert store.ledger.first_answer("d1") is not None  # applied in memory
        for ask in (store.recorded("d1"), store.recorded("c")):
            with pytest.raises(StoreUnavailable):
                await ask
        with pytest.raises(StoreUnavailable):
            store.first_answer("d1")
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()


async def test_checkpoints_run_off_the_commit_path_and_rewind_the_wal(tmp_path: Path) -> None:
    """No commit checkpoints (that would make its answers wait for the copy); the checkpointer
    thread does, and under a steady stream of commits it still gets the WAL rewound."""
    store = EmbeddedStore(
        tmp_path, sweep_interval_s=3600, checkpoint_interval_s=0.005, wal_restart_frames=32
    )
    await store.open()
    try:
        assert store._db is not None
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        await store.execute("create_subscriber", "c", {"id": "a"})
        for i in range(400):  # one commit each, a few frames each: far past 32 frames
            await store.execute(
                "topup", f"t{i}", {"subscriber_id": "a", "unit": "octets", "amount": 1}
            )
            if i % 50 == 0:
                await asyncio.sleep(0.02)  # a few rounds of the checkpointer meanwhile
        stats = store.stats()
        assert stats["wal_checkpoints"] > 0 and stats["wal_restarts"] > 0
        # With no checkpoints the WAL holds every commit's frames: 1.8 MB here.
        wal = tmp_path / "ledger.sqlite3-wal"
        assert wal.stat().st_size < 1_000_000, wal.stat().st_size
    finally:
        await store.close()
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert _octets(again) == 400
    finally:
        await again.close()


async def test_a_charging_record_is_written_once_and_is_no_part_of_the_operation(
    tmp_path: Path,
) -> None:
    """The record goes to the cdr table; the journal keeps the ledger's arguments only, and a
    retry that carries another record (a later clock, another plan name) is the same
    operation: the first answer, no second record."""
    import sqlite3

    from quotaflow.store.journal import decode

    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await _funded(store, 9)
        debit = {"subscriber_id": "a", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        first = await store.execute("debit", "d1", debit)
        again = await store.execute("debit", "d1", {**debit, "record": {"kind": "y"}})
        assert again == first
        assert [r["kind"] for r in store.read_records(0, 10)] == ["x"]
        with sqlite3.connect(store.path) as db:
            rows = db.execute("SELECT first_seq, last_seq, records FROM journal").fetchall()
        journaled = [args for row in rows for _, _, _, args, _, _ in decode(*row)]
        assert {"subscriber_id": "a", "unit": "octets", "units": 5} in journaled
        assert not any("record" in args for args in journaled)
    finally:
        await store.close()
    again_store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again_store.open()
    try:  # replayed without it, and the record is still there, once
        assert [r["kind"] for r in again_store.read_records(0, 10)] == ["x"]
        assert _octets(again_store) == 4
    finally:
        await again_store.close()


async def test_an_id_remembered_with_its_record_in_the_arguments_is_still_a_repeat(
    tmp_path: Path,
) -> None:
    """Before records left the arguments, an id's fingerprint covered its record: within the
    idempotency window after an upgrade, a retry of such an id is a repeat, not a conflict."""
    from quotaflow.ledger import Conflict

    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await _funded(store, 9)
        debit = {"subscriber_id": "a", "unit": "octets", "units": 5, "record": {"kind": "x"}}
        # What the earlier release did: the ledger saw (and fingerprinted) the record too.
        first, changed, _ = store.ledger.apply_encoded("debit", "d1", debit, store.clock())
        assert changed
        assert await store.execute("debit", "d1", debit) == first
        with pytest.raises(Conflict):
            await store.execute("debit", "d1", {**debit, "units": 4})
        assert _octets(store) == 4
    finally:
        await store.close()


async def test_a_session_steps_record_is_an_array_that_reads_as_the_object_it_was(
    tmp_path: Path,
) -> None:
    """The engine's record of a session step is stored as an array (store/cdr.py), about half
    the bytes; every reader gets the dict the object form gives, keys in the same order, and
    the records API's filters on session_id and kind still find it. An id remembered with the
    object form in its arguments (before records left them) is still a repeat."""
    import sqlite3

    from quotaflow.records._source import RecordFilter, RecordSource
    from quotaflow.store.cdr import SessionRecord, session_fields

    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    source = RecordSource(store)
    try:
        await _funded(store, 10_000)
        step: SessionRecord = ("gy", "s-1", 3, 1_000, 40, 60, False, None, "basic")
        charge = {
            "subscriber_id": "a",
            "session_id": "s-1",
            "unit": "octets",
            "rating_group": 10,
            "used_units": 100,
            "reservation_id": "s-1#10",
            "price": None,
        }
        await store.execute("charge", "c1", {**charge, "record": step})
        await store.execute("charge", "c2", {**charge, "record": session_fields(step)})
        with sqlite3.connect(store.path) as db:
            (array, _), (obj, _) = db.execute("SELECT body, seq FROM cdr ORDER BY seq")
        assert array.startswith("[") and obj.startswith("{") and len(array) < len(obj) / 1.8
        as_array, as_object = store.read_records(0, 10)
        assert list(as_array) == list(as_object)  # the same keys, in the same order
        assert {**as_array, "seq": 0, "at_ms": 0} == {**as_object, "seq": 0, "at_ms": 0}
        assert as_array["kind"] == "session" and as_array["posted_units"] == 100
        for flt in (RecordFilter(session_id="s-1"), RecordFilter(kind="session")):
            assert await source.read(flt, 10) == [as_array, as_object]
        for flt in (RecordFilter(session_id="s-2"), RecordFilter(kind="refund")):
            assert await source.read(flt, 10) == []
        # An id first applied with the object form in its arguments, retried with the array.
        old = {**charge, "record": session_fields(step)}
        first, changed, _ = store.ledger.apply_encoded("charge", "c3", old, store.clock())
        assert changed
        assert await store.execute("charge", "c3", {**charge, "record": step}) == first
    finally:
        source.close()
        await store.close()


async def _funded(store: EmbeddedStore, octets: int) -> None:
    """Subscriber "a" with `octets` in one bucket."""
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": octets})


def _octets(store: EmbeddedStore) -> int:
    return sum(b.amount for b in store.ledger.subscriber("a").buckets.values())


class _RecordedConnection:
    """A checkpointer's connection with its statements recorded in `steps`."""

    def __init__(self, db: Any, steps: list[str]) -> None:
        self.db, self.steps = db, steps

    def execute(self, sql: str) -> Any:
        self.steps.append(sql.split("(")[-1].rstrip(")"))
        return self.db.execute(sql)


def test_the_checkpointer_syncs_the_database_file_before_a_restart_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PASSIVE checkpoint that copied frames is followed by a sync of the database file, on
    the checkpointer's thread and under no lock, so that the RESTART (which holds the write
    lock through its own sync) flushes only what it copies itself. SQLite syncs the file only
    when a checkpoint reaches the WAL's end: a reader holding an older snapshot keeps this one
    short of it, and the file is synced all the same. No copy, no sync."""
    import sqlite3

    from quotaflow.store import checkpointer as checkpointer_module

    path = tmp_path / "ledger.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (a)")
    steps: list[str] = []
    c = checkpointer_module.Checkpointer(path, restart_frames=4)
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:  # os is every thread's: only this checkpointer's counts
        if fd == c._db_fd:
            steps.append("sync database file")
        real_fdatasync(fd)

    monkeypatch.setattr(checkpointer_module.os, "fdatasync", fdatasync)
    c._db_fd = os.open(path, os.O_RDONLY)
    own = sqlite3.connect(path, isolation_level=None)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        for i in range(10):
            writer.execute("INSERT INTO t VALUES (?)", (b"x" * 3000 + bytes([i]),))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchone()  # a snapshot of 10 rows
        for i in range(10):
            writer.execute("INSERT INTO t VALUES (?)", (b"y" * 3000 + bytes([i]),))
        c.restart_frames = 10**6  # a PASSIVE alone, first
        row = own.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        c._copied = 0  # as if that one had been this checkpointer's first
        _, frames, copied = row
        assert 0 < copied < frames  # short of the end: SQLite left the database file unsynced
        c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
        assert steps == ["PASSIVE", "sync database file"] and c.db_syncs == 1
        reader.execute("COMMIT")
        c.restart_frames = 4
        steps.clear()
        c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
        assert steps == ["PASSIVE", "sync database file", "RESTART"]
        assert c.db_syncs == 2 and c.restarts == 1
        # After a RESTART the count starts again from nothing: one more sync (with nothing
        # left to flush), then none while nothing is copied.
        for expected in (["PASSIVE", "sync database file"], ["PASSIVE"]):
            steps.clear()
            c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
            assert steps == expected
        assert c.db_syncs == 3
        writer.execute("INSERT INTO t VALUES (1)")  # the WAL rewinds: frames counted anew
        steps.clear()
        c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
        assert steps == ["PASSIVE", "sync database file"] and c.db_syncs == 4
    finally:
        os.close(c._db_fd)
        for db in (own, reader, writer):
            db.close()


def test_a_failed_sync_of_the_database_file_stops_the_wal_s_rewinding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed sync the copied pages may never reach the disk, and a sync through a new
    descriptor would not say so: no RESTART runs again, so the WAL keeps every frame."""
    import errno
    import sqlite3

    from quotaflow.store import checkpointer as checkpointer_module

    path = tmp_path / "ledger.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (a)")
    c = checkpointer_module.Checkpointer(path, restart_frames=4)
    real_fdatasync = os.fdatasync

    def fdatasync(fd: int) -> None:
        if fd == c._db_fd:
            raise OSError(errno.EIO, "Input/output error")
        real_fdatasync(fd)

    monkeypatch.setattr(checkpointer_module.os, "fdatasync", fdatasync)
    c._db_fd = os.open(path, os.O_RDONLY)
    own = sqlite3.connect(path, isolation_level=None)
    steps: list[str] = []
    try:
        for i in range(10):
            writer.execute("INSERT INTO t VALUES (?)", (b"x" * 3000 + bytes([i]),))
        with pytest.raises(OSError):
            c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
        assert c.sync_failed is not None and steps == ["PASSIVE"]
        monkeypatch.setattr(checkpointer_module.os, "fdatasync", real_fdatasync)
        for round_ in range(3):  # the disk seems sound again: still no RESTART
            writer.execute("INSERT INTO t VALUES (?)", (bytes([round_]),))
            steps.clear()
            c.run_once(_RecordedConnection(own, steps))  # type: ignore[arg-type]
            assert steps == ["PASSIVE"] and c.restarts == 0
    finally:
        os.close(c._db_fd)
        own.close()
        writer.close()


def test_the_checkpointer_never_creates_a_database_and_counts_its_failures(tmp_path: Path) -> None:
    """A database that went missing is a counted failure, not a new empty file; a path with
    characters that mean something in a URI is still the same file."""
    import sqlite3
    import time

    from quotaflow.store.checkpointer import Checkpointer

    odd = tmp_path / "a b#1?.sqlite3"
    with contextlib.closing(sqlite3.connect(odd, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (a)")
        db.execute("INSERT INTO t VALUES (1)")
        missing = tmp_path / "gone.sqlite3"
        checkpointers = [Checkpointer(odd, 0.005), Checkpointer(missing, 0.005)]
        for c in checkpointers:
            c.start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            checkpointers[0].checkpoints and checkpointers[1].failures
        ):
            time.sleep(0.01)
        for c in checkpointers:
            c.stop()
    assert checkpointers[0].checkpoints > 0 and checkpointers[0].failures == 0
    assert checkpointers[1].failures > 0 and checkpointers[1].checkpoints == 0
    assert not missing.exists()
