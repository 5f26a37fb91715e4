"""Snapshots taken while serving: a forked child writes them, the next commit stores them."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from quotaflow.ledger.ledger import Ledger
from quotaflow.store import EmbeddedStore
from quotaflow.store.base import FolderInUse, SnapshotFileError
from quotaflow.store.snapshot_files import snapshot_file_name
from tests.core.harness import recovered


async def _load(store: EmbeddedStore, first: int, count: int) -> None:
    for i in range(first, first + count):
        await store.execute(
            "debit",
            f"d{i}",
            {"subscriber_id": "a", "unit": "octets", "units": 1, "rating_group": 10},
        )


async def test_a_forked_snapshot_is_stored_and_recovery_starts_from_it(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, snapshot_every_ops=50, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**6})
    await _load(store, 0, 60)
    assert store.snapshots_forked == 1
    # The child's file is stored by a later commit, once it has finished.
    for _ in range(200):
        await _load(store, 1000 + _, 1)
        rows = (
            sqlite3.connect(tmp_path / "ledger.sqlite3")
            .execute("SELECT seq, name, bytes FROM snapshot_file")
            .fetchall()
        )
        if rows:
            break
        await asyncio.sleep(0.01)
    assert rows and 50 <= rows[0][0] < store._seq
    assert not list(tmp_path.glob(".snapshot-*.tmp"))
    # The body is the file the row names, not a copy in the database.
    seq, name, size = rows[0]
    assert name == snapshot_file_name(seq) and (tmp_path / name).stat().st_size == size
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    marker = db.execute("SELECT seq, body FROM snapshot").fetchall()
    assert [(s, orjson.loads(b)) for s, b in marker] == [(seq, {"snapshot_file": name})]
    assert db.execute("SELECT min(first_seq) FROM journal").fetchone()[0] > seq
    # Crash (no closing snapshot): recovery loads the forked snapshot, replays the rest.
    async with recovered(store) as again:
        # only what came after the snapshot was replayed
        assert 0 < again._since_snapshot == again._seq - rows[0][0]


async def test_a_failed_snapshot_child_changes_nothing(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, snapshot_every_ops=20, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**6})
    # Something the child cannot serialise (the ledger's classes may be compiled, so its
    # methods cannot be patched); taken out again before the store is closed.
    store.ledger.remote["poison"] = {"id": "poison", "unserialisable": object()}
    await _load(store, 0, 30)
    for i in range(100):  # commits go on while the child fails
        await _load(store, 100 + i, 1)
        if store.snapshots_forked and store._snapshot_child is None:
            break
        await asyncio.sleep(0.01)
    assert store.snapshots_forked >= 1 and store._snapshot_child is None
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert db.execute("SELECT count(*) FROM snapshot_file").fetchone() == (0,)
    assert not list(tmp_path.glob(".snapshot-*.tmp"))
    assert not list(tmp_path.glob("snapshot-*.json"))
    del store.ledger.remote["poison"]
    expected = store.ledger.snapshot()
    await store.close()
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert again.ledger.snapshot() == expected
    finally:
        await again.close()


async def _store_with_snapshot(tmp_path: Path) -> tuple[EmbeddedStore, int]:
    """A store whose latest snapshot (taken in place) covers its first operations."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    await store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**6})
    await _load(store, 0, 5)
    await store.snapshot()
    seq = store._seq
    await _load(store, 100, 3)  # journaled after it
    return store, seq


async def test_a_snapshot_is_a_file_and_replaces_the_one_before(tmp_path: Path) -> None:
    store, first = await _store_with_snapshot(tmp_path)
    assert [p.name for p in tmp_path.glob("snapshot-*.json")] == [snapshot_file_name(first)]
    expected = store.ledger.snapshot()
    body = orjson.loads((tmp_path / snapshot_file_name(first)).read_bytes())
    assert body["idempotency"]  # the state as it was then, in the file
    await store.snapshot()
    second = store._seq
    assert second > first
    # The newer file replaces the older once the row naming it is durable.
    assert [p.name for p in tmp_path.glob("snapshot-*.json")] == [snapshot_file_name(second)]
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert db.execute("SELECT seq FROM snapshot_file").fetchall() == [(second,)]
    async with recovered(store) as again:
        assert again.ledger.snapshot() == expected
        assert again._since_snapshot == 0  # nothing after it to replay


async def test_a_snapshot_kept_in_the_table_by_an_older_build_is_still_read(
    tmp_path: Path,
) -> None:
    store, seq = await _store_with_snapshot(tmp_path)
    # Made into what builds before session 21 left: the body in `snapshot`, no file.
    name = snapshot_file_name(seq)
    db = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    db.execute(
        "INSERT OR REPLACE INTO snapshot (seq, taken_ms, body) VALUES (?, 0, ?)",
        (seq, (tmp_path / name).read_bytes()),
    )
    db.execute("DELETE FROM snapshot_file")
    db.close()
    (tmp_path / name).unlink()
    async with recovered(store) as again:
        assert again._since_snapshot == again._seq - seq == 3
        await again.snapshot()  # the first file replaces the table's copy
        check = sqlite3.connect(tmp_path / "ledger.sqlite3")
        rows = check.execute("SELECT seq, body FROM snapshot").fetchall()
        assert [(s, orjson.loads(b)) for s, b in rows] == [
            (again._seq, {"snapshot_file": snapshot_file_name(again._seq)})
        ]
        assert check.execute("SELECT seq FROM snapshot_file").fetchall() == [(again._seq,)]


async def test_an_older_build_rolled_back_to_stops_rather_than_lose_the_snapshot(
    tmp_path: Path,
) -> None:
    store, _ = await _store_with_snapshot(tmp_path)
    await store.close()
    # What a build before session 21 reads at open: the latest row of `snapshot`, restored.
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    (body,) = db.execute("SELECT body FROM snapshot ORDER BY seq DESC LIMIT 1").fetchone()
    with pytest.raises(KeyError, match="subscribers"):
        Ledger.restore(orjson.loads(body))


async def test_a_missing_or_cut_snapshot_file_stops_the_store_from_opening(
    tmp_path: Path,
) -> None:
    store, _ = await _store_with_snapshot(tmp_path)
    await store.close()  # which takes one in place
    path = tmp_path / snapshot_file_name(store._seq)
    body = path.read_bytes()
    path.write_bytes(body[:-10])
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    with pytest.raises(SnapshotFileError, match="bytes where"):
        await again.open()
    path.unlink()
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    with pytest.raises(SnapshotFileError, match="is missing"):
        await again.open()
    path.write_bytes(body)  # restored: it opens with the state it had
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert again.ledger.subscribers["a"].id == "a"
    finally:
        await again.close()


async def test_older_snapshot_files_are_dropped_at_open_newer_ones_kept(
    tmp_path: Path,
) -> None:
    store, _ = await _store_with_snapshot(tmp_path)
    await store.close()
    named = snapshot_file_name(store._seq)  # close took one in place
    older = tmp_path / snapshot_file_name(store._seq - 1)  # one it replaced, left behind
    older.write_bytes(b"{}")
    # Newer: renamed into place and never recorded, or another process's on this folder,
    # just stored. Not this store's to delete.
    newer = tmp_path / snapshot_file_name(store._seq + 5)
    newer.write_bytes(b"{}")
    other = tmp_path / "snapshot-1-copy.json"  # not a snapshot file's name
    other.write_bytes(b"kept")
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert sorted(p.name for p in tmp_path.glob("snapshot-*")) == sorted(
            [named, newer.name, other.name]
        )
    finally:
        await again.close()


async def test_a_second_snapshot_at_the_same_seq_leaves_the_named_file(tmp_path: Path) -> None:
    store, _ = await _store_with_snapshot(tmp_path)
    await store.snapshot()
    path = tmp_path / snapshot_file_name(store._seq)
    before = path.stat()
    # Nothing since: a close (or a restart's close) stores nothing new.
    store.ledger.limits.idempotency_entries_max = 1  # would serialise other bytes
    await store.close()
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert again._seq == store._seq
    finally:
        await again.close()


async def test_store_connections_do_not_zero_freed_pages(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        for db in (store._db, store._aux):
            assert db is not None
            assert db.execute("PRAGMA secure_delete").fetchone() == (2,)  # FAST
    finally:
        await store.close()


async def test_a_second_store_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    store, _ = await _store_with_snapshot(tmp_path)
    second = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    with pytest.raises(FolderInUse, match="in use by another quotaflow store"):
        await second.open()
    # Another process too (flock is per open file, whoever holds it).
    script = (
        "import sys; from pathlib import Path; from quotaflow.store.base import lock_folder\n"
        "try:\n    lock_folder(Path(sys.argv[1]), 'taken')\n"
        "except RuntimeError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "taken"
    await store.close()
    async with _opened(tmp_path) as again:  # free once the first is closed
        assert again.ledger.subscribers["a"].id == "a"


@contextlib.asynccontextmanager
async def _opened(folder: Path) -> AsyncIterator[EmbeddedStore]:
    store = EmbeddedStore(folder, sweep_interval_s=3600)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
