"""A snapshot keeps the remembered operation ids in segment files: each stores only the ids that
came since the last one (store/snapshot_files.py)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from quotaflow.ledger import Limits
from quotaflow.store import EmbeddedStore
from quotaflow.store.base import SnapshotFileError
from quotaflow.store.snapshot_files import (
    IdsStored,
    file_seq,
    ids_file_name,
    plan_ids,
    snapshot_file_name,
)
from tests.core.harness import recovered

DEBIT = {"subscriber_id": "a", "unit": "octets", "units": 1, "rating_group": 10}


async def _opened(folder: Path, ids_max: int = 2_000_000) -> EmbeddedStore:
    store = EmbeddedStore(
        folder, sweep_interval_s=3600, limits=Limits(idempotency_entries_max=ids_max)
    )
    await store.open()
    return store


async def _forking(folder: Path, every_ops: int) -> EmbeddedStore:
    """A store forking a snapshot every `every_ops` operations, with subscriber "a" to debit."""
    store = EmbeddedStore(folder, snapshot_every_ops=every_ops, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**9})
    return store


async def _debits(store: EmbeddedStore, first: int, count: int) -> None:
    for i in range(first, first + count):
        await store.execute("debit", f"d{i}", DEBIT)


def _doc(folder: Path, seq: int) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads((folder / snapshot_file_name(seq)).read_bytes())
    return doc


def _ids_in(folder: Path, seq: int) -> list[str]:
    return [row[0] for row in orjson.loads((folder / ids_file_name(seq)).read_bytes())]


async def _two_snapshots(folder: Path, ids_max: int = 2_000_000) -> tuple[EmbeddedStore, int, int]:
    store = await _opened(folder, ids_max)
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**6})
    await _debits(store, 0, 5)
    await store.snapshot()
    first = store._seq
    await _debits(store, 5, 4)
    await store.snapshot()
    return store, first, store._seq


async def test_a_snapshot_stores_only_the_ids_that_came_since_the_last_one(
    tmp_path: Path,
) -> None:
    store, first, second = await _two_snapshots(tmp_path)
    assert _ids_in(tmp_path, first) == ["c", "t", *(f"d{i}" for i in range(5))]
    assert _ids_in(tmp_path, second) == [f"d{i}" for i in range(5, 9)]
    doc = _doc(tmp_path, second)
    assert doc["idempotency"] == {
        "segments": [[ids_file_name(first), 0, 7], [ids_file_name(second), 7, 4]]
    }
    assert doc["idempotency_span"] == [0, 11]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == sorted(
        [snapshot_file_name(second), ids_file_name(first), ids_file_name(second)]
    )
    await _debits(store, 9, 2)  # journaled after the snapshot, replayed at recovery
    async with recovered(store) as again:  # the same state, every id numbered the same
        # A repeat of an id stored by the first segment is answered, not charged again.
        balance = again.ledger.subscribers["a"].buckets
        before = {k: b.amount for k, b in balance.items()}
        await again.execute("debit", "d1", DEBIT)
        assert {k: b.amount for k, b in balance.items()} == before
        assert again.ledger.idempotency.span() == (0, 13)


async def test_segments_whose_ids_all_aged_out_are_dropped_with_their_files(
    tmp_path: Path,
) -> None:
    store, first, second = await _two_snapshots(tmp_path, ids_max=6)
    # Six ids kept: the first segment holds 1..6 (0 had gone), and still two of 5..10 now.
    assert _doc(tmp_path, second)["idempotency"]["segments"][0] == [ids_file_name(first), 1, 6]
    await _debits(store, 100, 3)  # now 8..13: the first segment holds none
    await store.snapshot()
    third = store._seq
    doc = _doc(tmp_path, third)
    assert doc["idempotency"] == {
        "segments": [[ids_file_name(second), 7, 4], [ids_file_name(third), 11, 3]]
    }
    assert not (tmp_path / ids_file_name(first)).exists()
    async with recovered(store) as again:
        assert len(again.ledger.idempotency) == 6
        assert again.ledger.idempotency.span() == (8, 14)


async def test_a_missing_or_cut_ids_file_stops_the_store_from_opening(tmp_path: Path) -> None:
    store, first, _ = await _two_snapshots(tmp_path)
    await store.close()
    path = tmp_path / ids_file_name(first)
    body = path.read_bytes()
    path.write_bytes(body[:-10])
    with pytest.raises(SnapshotFileError, match="is cut or damaged"):
        await _opened(tmp_path)
    path.write_bytes(orjson.dumps(orjson.loads(body)[:-1]))  # whole JSON, a row short
    with pytest.raises(SnapshotFileError, match="does not hold the 7 ids listed"):
        await _opened(tmp_path)
    path.unlink()
    with pytest.raises(SnapshotFileError, match="is missing"):
        await _opened(tmp_path)
    path.write_bytes(body)  # restored from a backup: it opens
    again = await _opened(tmp_path)
    try:
        assert again.ledger.first_answer("d0") is not None
    finally:
        await again.close()


async def test_a_snapshot_holding_every_id_itself_is_read_and_the_next_writes_them_all(
    tmp_path: Path,
) -> None:
    store = await _opened(tmp_path)
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", None, {"subscriber_id": "a", "unit": "octets", "amount": 100})
    await _debits(store, 0, 3)
    # What session 21 wrote: the ids inline in the snapshot file, no span.
    seq = store._seq
    doc = store.ledger.snapshot()
    del doc["idempotency_span"]
    await store.close()
    for stale in tmp_path.glob("*.json"):
        stale.unlink()
    body = orjson.dumps(doc)
    (tmp_path / snapshot_file_name(seq)).write_bytes(body)
    db = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    db.execute("UPDATE snapshot_file SET bytes = ? WHERE seq = ?", (len(body), seq))
    db.close()
    again = await _opened(tmp_path)
    try:
        assert again.ledger.first_answer("d2") is not None
        await _debits(again, 3, 1)
        await again.snapshot()
        # Numbered anew from the inline rows; the first segment holds every id kept.
        assert _ids_in(tmp_path, again._seq) == ["c", "d0", "d1", "d2", "d3"]
        assert _doc(tmp_path, again._seq)["idempotency_span"] == [0, 5]
    finally:
        await again.close()


async def test_ids_files_no_snapshot_lists_are_dropped_at_open_newer_ones_kept(
    tmp_path: Path,
) -> None:
    store, first, second = await _two_snapshots(tmp_path)
    await store.close()  # nothing new: no third snapshot
    stray = tmp_path / ids_file_name(first + 1)  # written before a failure, never listed
    stray.write_bytes(b"[]")
    newer = tmp_path / ids_file_name(second + 5)  # another process's, just stored
    newer.write_bytes(b"[]")
    again = await _opened(tmp_path)
    try:
        assert sorted(p.name for p in tmp_path.glob("ids-*")) == sorted(
            [ids_file_name(first), ids_file_name(second), newer.name]
        )
    finally:
        await again.close()


async def test_a_forked_snapshot_writes_its_segment_too(tmp_path: Path) -> None:
    store = await _forking(tmp_path, 20)
    await _debits(store, 0, 25)
    for i in range(300):  # stored by a later commit, once the child is done
        await _debits(store, 1000 + i, 1)
        if store._snapshot_name is not None:
            break
    assert store._snapshot_name is not None and store.snapshots_forked >= 1
    doc = orjson.loads((tmp_path / store._snapshot_name).read_bytes())
    (name, start, count) = doc["idempotency"]["segments"][-1]
    assert start == 0 and count == doc["idempotency_span"][1] >= 20
    assert len(orjson.loads((tmp_path / name).read_bytes())) == count
    # What /metrics shows of it (CONFIGURATION.md).
    stats = store.stats()
    assert stats["snapshots_forked"] >= stats["snapshots_stored"] >= 1
    assert stats["snapshot_seq"] == file_seq(store._snapshot_name) > 0
    assert stats["snapshot_ids_files"] == len(doc["idempotency"]["segments"]) == 1
    assert stats["snapshot_failures"] == 0 and stats["last_snapshot_fork_s"] > 0
    async with recovered(store):
        pass


def test_a_plan_lists_the_segments_still_holding_ids() -> None:
    stored = IdsStored(10, [["ids-5.json", 0, 6], ["ids-9.json", 6, 4]])
    plan = plan_ids(stored, (7, 15), 20)
    assert plan.start == 10 and plan.new == ["ids-20.json", 10, 5]
    assert plan.stored == IdsStored(15, [["ids-9.json", 6, 4], ["ids-20.json", 10, 5]])
    # No new id: no new segment. All aged out past the stored end: the new one starts at head.
    assert plan_ids(stored, (3, 10), 21).new is None
    assert plan_ids(stored, (12, 14), 22).stored == IdsStored(14, [["ids-22.json", 12, 2]])
    # A table numbered below the stored end (not this store's): written whole again.
    assert plan_ids(stored, (0, 4), 23).stored == IdsStored(4, [["ids-23.json", 0, 4]])


async def test_snapshots_in_quick_succession_never_name_a_missing_ids_file(
    tmp_path: Path,
) -> None:
    """Forked snapshots due faster than they are stored, and in-place ones among them: each
    plan is made on the one stored before it, so no stored snapshot lists a deleted file."""
    store = await _forking(tmp_path, 15)
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    checked = 0

    def check() -> None:
        nonlocal checked
        row = db.execute("SELECT name FROM snapshot_file ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return
        try:
            doc = orjson.loads((tmp_path / row[0]).read_bytes())
        except FileNotFoundError:
            return  # replaced by a newer one between the query and the read
        for name, _, count in doc["idempotency"]["segments"]:
            assert len(orjson.loads((tmp_path / name).read_bytes())) == count, name
        checked += 1

    async def load(worker: int) -> None:
        for i in range(120):
            await store.execute("debit", f"w{worker}-{i}", DEBIT)
            if i % 10 == 0:
                check()

    async def in_place() -> None:
        for _ in range(6):
            await asyncio.sleep(0.02)
            await store.snapshot()
            check()

    await asyncio.gather(*(load(w) for w in range(8)), in_place())
    assert store.snapshots_forked >= 3 and checked > 10
    async with recovered(store):
        pass


async def test_close_stops_a_running_child_and_leaves_none_of_its_files(tmp_path: Path) -> None:
    store = await _forking(tmp_path, 10)
    await _debits(store, 0, 12)
    for i in range(200):  # until a commit has just forked one
        if store._snapshot_child is not None:
            break
        await _debits(store, 100 + i, 1)
    assert store._snapshot_child is not None
    pid = store._snapshot_child[0]
    await store.close()  # superseded by the one close takes in place
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left
    assert not list(tmp_path.glob(".*.tmp"))
    again = await _opened(tmp_path)
    try:
        assert again.ledger.first_answer("d11") is not None
        assert again._since_snapshot == 0  # close's own snapshot holds everything
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("segments", "refusal"),
    [
        ("path", "which is no ids file's name"),  # a path out of the folder, never opened
        ("gap", "starts at id 7, not 0"),  # the first segment left out
        ("short", "end at id 7, not 11"),  # the last one left out
    ],
)
async def test_a_snapshot_whose_segment_list_is_wrong_stops_the_open(
    tmp_path: Path, segments: str, refusal: str
) -> None:
    store, first, second = await _two_snapshots(tmp_path)
    await store.close()
    doc = _doc(tmp_path, second)
    listed = doc["idempotency"]["segments"]
    assert listed == [[ids_file_name(first), 0, 7], [ids_file_name(second), 7, 4]]
    if segments == "path":
        listed[0][0] = "../" + ids_file_name(first)
    elif segments == "gap":
        del listed[0]
    else:
        del listed[1]
    body = orjson.dumps(doc)
    (tmp_path / snapshot_file_name(second)).write_bytes(body)
    db = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    db.execute("UPDATE snapshot_file SET bytes = ? WHERE seq = ?", (len(body), second))
    db.close()
    with pytest.raises(SnapshotFileError, match=refusal):
        await _opened(tmp_path)
