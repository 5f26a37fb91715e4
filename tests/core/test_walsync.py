"""The WAL's sync apart from its commit (store/walsync.py): the syncer itself, and the store's
answers, which wait for a sync that covers their commit."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import select
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from quotaflow import _native
from quotaflow.records._source import RecordFilter, RecordSource
from quotaflow.store import EmbeddedStore, StoreUnavailable
from quotaflow.store import embedded as embedded_module
from quotaflow.store import walsync as walsync_module
from quotaflow.store.walsync import PyWalSync, Syncer, file_identity
from tests.core.harness import recovered


def _implementations() -> list[Callable[[str], Syncer]]:
    found: list[Callable[[str], Syncer]] = [PyWalSync]
    if _native.MODE == "compiled":
        from quotaflow.store._walsync import WalSync

        found.append(WalSync)
    return found


def _wait_synced(syncer: Syncer, number: int) -> int:
    deadline = time.monotonic() + 5
    while True:
        synced = syncer.synced()
        if synced >= number or time.monotonic() > deadline:
            return synced
        time.sleep(0.001)


@pytest.fixture(params=_implementations(), ids=lambda m: m.__name__)
def syncer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Syncer]:
    """Each implementation, syncing a file `db-wal` in tmp_path; closed afterwards."""
    path = tmp_path / "db-wal"
    path.write_bytes(b"frames")
    made: Syncer = request.param(str(path))
    yield made
    made.close()


def test_a_syncer_numbers_its_syncs_and_follows_a_replaced_file(
    tmp_path: Path, syncer: Syncer
) -> None:
    path = tmp_path / "db-wal"
    assert syncer.synced() == 0
    first = syncer.request()
    assert _wait_synced(syncer, first) == first
    assert syncer.syncs >= 1 and syncer.reopens == 0
    # The path names another file: that one is synced, not the old inode.
    (tmp_path / "new").write_bytes(b"other")
    os.replace(tmp_path / "new", path)
    second = syncer.request()
    assert second == first + 1
    assert _wait_synced(syncer, second) == second
    assert syncer.reopens == 1
    # Gone: nothing can be vouched for, now or later.
    path.unlink()
    syncer.request()
    with pytest.raises(OSError) as failed:
        for _ in range(5000):
            syncer.synced()
            time.sleep(0.001)
    assert failed.value.errno == errno.ENOENT
    path.write_bytes(b"back")
    syncs = syncer.syncs
    syncer.request()
    time.sleep(0.05)
    with pytest.raises(OSError):  # sticky: a failed sync may have lost pages
        syncer.synced()
    assert syncer.syncs == syncs  # and it tries no more
    syncer.close()
    with pytest.raises(ValueError):
        syncer.request()


def test_file_identity_is_the_device_and_inode_stat_gives(tmp_path: Path) -> None:
    """PyWalSync's check (statx for the inode alone, through libc): the same device and inode
    as os.stat for a file, a folder and a device node; os.stat's errors for a missing one."""
    if sys.platform == "linux":  # glibc 2.28+ here: the statx path, not the fallback
        assert walsync_module._statx is not None
    path = tmp_path / "db-wal"
    path.write_bytes(b"frames")
    for target in (path, tmp_path, Path("/dev/null")):
        st = os.stat(target)
        assert file_identity(str(target)) == (st.st_dev, st.st_ino)
    replaced = tmp_path / "new"
    replaced.write_bytes(b"other")
    before = file_identity(str(path))
    os.replace(replaced, path)
    assert file_identity(str(path)) != before
    with pytest.raises(FileNotFoundError):
        file_identity(str(tmp_path / "gone"))
    with pytest.raises(NotADirectoryError):
        file_identity(str(path / "inside"))


@pytest.mark.parametrize("refusal", ["ENOSYS", "EPERM", "no inode in the mask"])
def test_file_identity_falls_back_to_stat_where_statx_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """An old kernel (ENOSYS), an older container's seccomp profile (EPERM) or a file system
    that reports no inode: os.stat answers instead. Any other error is the caller's."""

    def statx(dirfd: int, path: bytes, flags: int, mask: int, buffer: object) -> int:
        if refusal == "no inode in the mask":
            return 0  # the buffer stays zeroed: stx_mask says nothing was filled
        ctypes.set_errno(getattr(errno, refusal))
        return -1

    monkeypatch.setattr(walsync_module, "_statx", statx)
    path = tmp_path / "db-wal"
    path.write_bytes(b"frames")
    st = os.stat(path)
    assert file_identity(str(path)) == (st.st_dev, st.st_ino)

    def denied(dirfd: int, path: bytes, flags: int, mask: int, buffer: object) -> int:
        ctypes.set_errno(errno.EACCES)
        return -1

    monkeypatch.setattr(walsync_module, "_statx", denied)
    with pytest.raises(PermissionError):
        file_identity(str(path))


def test_a_syncer_wakes_its_reader_after_each_sync(syncer: Syncer) -> None:
    if not isinstance(syncer, PyWalSync):  # the C thread is named, for top -H and perf
        tasks = Path("/proc/self/task")
        names = [(t / "comm").read_text().strip() for t in tasks.iterdir()]
        assert "quotaflow-wal" in names
    number = syncer.request()
    readable, _, _ = select.select([syncer.fileno()], [], [], 5)
    assert readable
    # The figure is published before the wake-up: the store reads it once per wake-up.
    assert syncer.synced() == number
    readable, _, _ = select.select([syncer.fileno()], [], [], 0)
    assert not readable  # synced() drained the wake-up


class GatedSync(PyWalSync):
    """A real syncer whose fdatasync waits for the test to open the gate (a slow disk)."""

    made: list[GatedSync] = []

    def __init__(self, path: str) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail: OSError | None = None
        super().__init__(path)
        GatedSync.made.append(self)

    def _sync_once(self) -> None:
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        super()._sync_once()


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[GatedSync]]:
    GatedSync.made = []
    monkeypatch.setattr(embedded_module, "wal_syncer", GatedSync)
    yield GatedSync.made


async def _settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


async def test_an_answer_waits_for_the_sync_of_its_commit_and_the_loop_charges_meanwhile(
    tmp_path: Path, gated: list[GatedSync]
) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        assert len(gated) == 1, "the store must sync through wal_syncer"
        sync = gated[0]
        await store.execute("create_subscriber", "c", {"id": "a"})
        durable = store.durable_seq
        sync.gate.clear()
        topup = {"subscriber_id": "a", "unit": "octets", "amount": 10, "record": {"kind": "t"}}
        first = asyncio.create_task(store.execute("topup", "t1", topup))
        await _settle()
        # Written and committed (another connection sees the row), but not synced: no answer,
        # and the records readers do not see it either.
        assert not first.done()
        with sqlite3.connect(store.path) as other:
            assert other.execute("SELECT count(*) FROM cdr").fetchone() == (1,)
        assert store.read_records(0, 10) == []
        assert store.durable_seq == durable
        source = RecordSource(store)
        unbounded = RecordSource(db_path=store.path)  # the CLI's: it syncs what it read
        try:
            assert await source.read(RecordFilter(), 10) == []
            assert await source.last_seq() == 0
            assert [r["seq"] for r in await unbounded.read(RecordFilter(), 10)] == [2]
        finally:
            source.close()
            unbounded.close()
        # The loop goes on applying: the next change joins the next batch.
        second = asyncio.create_task(store.execute("topup", "t2", {**topup, "amount": 5}))
        await _settle()
        assert not second.done() and store.ledger.first_answer("t2") is not None
        sync.gate.set()
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert [r["seq"] for r in store.read_records(0, 10)] == [2, 3]
        assert store.durable_seq == 3
        assert store.stats()["wal_syncs"] >= 3
    finally:
        sync.gate.set()
        await store.close()


async def test_a_failed_sync_refuses_its_answers_and_every_change_after(
    tmp_path: Path, gated: list[GatedSync]
) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await store.execute("create_subscriber", "c", {"id": "a"})
        gated[0].fail = OSError(errno.EIO, "Input/output error")
        one = {"subscriber_id": "a", "unit": "octets", "amount": 1}
        with pytest.raises(StoreUnavailable):
            await store.execute("topup", "t1", one)
        with pytest.raises(StoreUnavailable):
            store.first_answer("t1")  # applied in memory, never durable
        with pytest.raises(StoreUnavailable):
            await store.execute("topup", "t2", one)
        assert store.stats()["failed"] is not None
    finally:
        with contextlib.suppress(StoreUnavailable):
            await store.close()
    # Nothing acknowledged was lost. The refused change may be there after a restart: its
    # frames were written and, here, the disk kept them (only the sync failed). Its client was
    # told to try again, and a retry with the same id gets the first answer, not a second top-up.
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        assert "a" in again.ledger.subscribers
        first = again.ledger.first_answer("t1")
        assert first is not None
        assert await again.execute("topup", "t1", one) == first
        assert sum(b.amount for b in again.ledger.subscriber("a").buckets.values()) == 1
    finally:
        await again.close()


async def test_a_commit_that_finds_the_write_lock_taken_is_tried_again(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await store.execute("create_subscriber", "c", {"id": "a"})
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # as the checkpointer's RESTART does, briefly
        started = time.perf_counter()
        topup = asyncio.create_task(
            store.execute("topup", "t1", {"subscriber_id": "a", "unit": "octets", "amount": 7})
        )
        deadline = time.monotonic() + 5
        while store.stats()["commit_busy_retries"] < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert not topup.done()
        assert store.stats()["commit_busy_retries"] >= 5
        # The loop itself never waited for the lock: it ran this coroutine all along.
        assert time.perf_counter() - started < 4
        holder.execute("COMMIT")
        holder.close()
        await asyncio.wait_for(topup, 5)
        async with recovered(store) as again:
            assert sum(b.amount for b in again.ledger.subscriber("a").buckets.values()) == 7
    finally:
        if store._db is not None:
            await store.close()


async def test_a_commit_whose_write_lock_stays_taken_stops_the_store(tmp_path: Path) -> None:
    """Another process holding a transaction open: the loop keeps retrying (never waiting),
    then after 5 s refuses, as SQLite's busy timeout made the store do before."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    holder = sqlite3.connect(store.path, isolation_level=None)
    try:
        await store.execute("create_subscriber", "c", {"id": "a"})
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                store.execute("topup", "t1", {"subscriber_id": "a", "unit": "octets", "amount": 1}),
                30,
            )
        assert 5 <= time.monotonic() - started < 20
        assert store.stats()["failed"] is not None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        with contextlib.suppress(StoreUnavailable):
            await store.close()


async def test_a_snapshot_is_stored_only_once_what_it_holds_is_durable(
    tmp_path: Path, gated: list[GatedSync]
) -> None:
    """A snapshot holding a charge whose commit (and record) a power cut could still take
    back would outlive them: it waits for the sync."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    try:
        await store.execute("create_subscriber", "c", {"id": "a"})
        gated[0].gate.clear()
        topup = asyncio.create_task(
            store.execute("topup", "t1", {"subscriber_id": "a", "unit": "octets", "amount": 1})
        )
        await _settle(0.02)
        snapshot = asyncio.create_task(store.snapshot())
        await _settle()
        assert not snapshot.done()
        with sqlite3.connect(store.path) as other:
            assert other.execute("SELECT count(*) FROM snapshot_file").fetchone() == (0,)
        gated[0].gate.set()
        await asyncio.wait_for(asyncio.gather(topup, snapshot), 5)
        with sqlite3.connect(store.path) as other:
            assert other.execute("SELECT max(seq) FROM snapshot_file").fetchone() == (2,)
    finally:
        gated[0].gate.set()
        await store.close()
