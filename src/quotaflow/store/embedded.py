"""The embedded store: the ledger in memory, every change journaled to SQLite by group commit.

An operation is applied to memory at once and its journal row joins the open batch; its caller
waits on the batch's barrier, which is released only once the batch's transaction is committed
and the WAL holding it synced. The event loop writes each batch itself (a transaction of a few
page writes, no fsync) and a thread outside Python syncs the WAL (store/walsync.py, which says
why that is as durable as synchronous=FULL); while one batch is being synced, the next one fills
up, so the loop charges while the disk writes. On start the latest snapshot is loaded and the
journal after it replayed through the same ledger code.

Snapshots taken while serving are serialised by a forked child (as Redis does), so the event
loop never stops for them: the child writes the state it inherited to a file and exits; once
the commit holding the snapshot's last operation is durable (charging records included), the
journal thread stores the file and drops the journal it covers, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import orjson
from orjson import dumps as _dumps

from quotaflow.ledger import (
    ChargingError,
    Conflict,
    LimitReached,
    Limits,
    Price,
    Subscriber,
    Unit,
)
from quotaflow.ledger.ledger import Ledger
from quotaflow.ledger.model import Group, Reservation
from quotaflow.store import gc_policy
from quotaflow.store.base import (
    Barrier,
    Clock,
    Result,
    SnapshotFileError,
    StoreUnavailable,
    lock_folder,
    wall_clock_ms,
)
from quotaflow.store.cdr import SESSION_TAG, SessionRecord, expand, record_of, session_fields
from quotaflow.store.checkpointer import (
    CHECKPOINT_INTERVAL_S,
    WAL_FILE_BYTES_MAX,
    WAL_RESTART_FRAMES,
    Checkpointer,
)
from quotaflow.store.immediate import ImmediateStore
from quotaflow.store.journal import Batch, decode
from quotaflow.store.snapshot_files import (
    IdsPlan,
    IdsStored,
    drop_older,
    file_seq,
    load_ids,
    plan_ids,
    read_snapshot,
    snapshot_file_name,
    split_ids,
    write_ids,
)
from quotaflow.store.walsync import Syncer, sync_directory, sync_file, wal_syncer, write_synced
from quotaflow.tally import Latencies

log = logging.getLogger("quotaflow.store")

PRUNE_SLICE_ROWS: Final = 10_000  # charging records deleted per transaction by retention
SNAPSHOT_CHILD_TIMEOUT_S: Final = 3_600  # a child that has not finished by then is killed
SNAPSHOT_CHILD_NICE: Final = 10  # the forked snapshot's priority below the server's (os.nice)
# A batch that finds the write lock taken (the checkpointer's RESTART, a snapshot being stored)
# is tried again this much later; the loop never waits for the lock. A lock held longer than
# BUSY_WARN_S is logged; one held past BUSY_FAIL_S (another process keeping a transaction open)
# stops the store, as SQLite's busy timeout did before.
BUSY_RETRY_S: Final = 0.001
BUSY_WARN_S: Final = 1.0
BUSY_FAIL_S: Final = 5.0
# Charging records are inserted by one multi-row statement per commit, of up to
# RECORD_ROWS_PER_STATEMENT rows (fewer where the SQLite build allows fewer parameters): a
# statement per record cost a call and a step each. A statement's row count is rounded up to a
# power of two and the rest padded with rows of zeros that its WHERE drops (seq > 0; not NULL, which
# the sqlite3 module would take to its adapters), so there are only a dozen statements, each
# prepared once and kept in the connection's cache.
RECORD_ROWS_PER_STATEMENT: Final = 1024
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)

SCHEMA = """
-- One row per group commit: `records` holds the operations first_seq..last_seq, in the format
-- of store/journal.py.
CREATE TABLE IF NOT EXISTS journal (
    last_seq INTEGER PRIMARY KEY,
    first_seq INTEGER NOT NULL,
    records BLOB NOT NULL
);
-- Charging records, written in the same transaction as the operation that charged: no debit
-- without its record. `body` is JSON: the caller's `record` fields plus what the ledger posted
-- (a session step's record is an array of the same values: store/cdr.py).
CREATE TABLE IF NOT EXISTS cdr (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    subscriber_id TEXT NOT NULL,
    body BLOB NOT NULL
);
-- Snapshots stored in the table itself, as builds before session 21 wrote them: still read.
CREATE TABLE IF NOT EXISTS snapshot (
    seq INTEGER PRIMARY KEY,
    taken_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- The latest snapshot: a file in the data directory (`name`, `bytes` long), synced and renamed
-- into place before this row is written with the deletion of the journal it covers.
CREATE TABLE IF NOT EXISTS snapshot_file (
    seq INTEGER PRIMARY KEY,
    taken_ms INTEGER NOT NULL,
    name TEXT NOT NULL,
    bytes INTEGER NOT NULL
);
"""
# (seq, at_ms, subscriber id, JSON body). The body is bound as text: the sqlite3 module asks
# its adapters about every bytes (and None) parameter, about 3,000 instructions each time.
Record = tuple[int, int, str, str]
RECORDED_FIELDS: Final = ("unit", "rating_group", "used_units", "units", "amount")
RESULT_FIELDS: Final = ("posted_units", "unpaid_units", "units", "drawn", "cost_micros", "amount")
_ABSENT: Final = object()
# Committed charging records held for the exporter (see RecordOutbox) before the oldest are
# dropped and it reads them back from the cdr table instead.
OUTBOX_RECORDS_MAX: Final = 20_000


class RecordOutbox:
    """Charging records handed to one consumer (the file exporter) as their commit ends.

    An exporter that keeps up then takes each record as the dict it was written from, instead
    of reading the row back and decoding its JSON (a tenth of the CPU of a Gy request went to
    following the cdr table). It changes nothing durable: a record is taken only once it is
    committed, and whatever the outbox cannot vouch for is read from the table as before.

    `floor_seq`: every record committed with a greater seq is still here or was taken. A take
    after a seq below it is refused (None): the consumer reads the table. It never goes down.
    A closed outbox refuses every take: so does one whose store stopped on a failed commit.
    """

    def __init__(self, floor_seq: int, records_max: int = OUTBOX_RECORDS_MAX) -> None:
        assert records_max > 0
        self.opened_seq = floor_seq  # records up to it are the table's, whatever is delivered
        self.floor_seq = floor_seq
        self.records_max = records_max
        self.dropped = 0
        self.closed = False
        self._records: deque[dict[str, Any]] = deque()

    def close(self) -> None:
        """The consumer is gone: the store stops delivering (and may hand out a new one)."""
        self.closed = True
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)

    def deliver(self, bodies: list[dict[str, Any]]) -> None:
        """A commit's records, oldest first (on the event loop, once the commit ended)."""
        if bodies[0]["seq"] <= self.opened_seq:
            # Applied before this outbox opened (collected for one closed since, in a commit
            # that was under way): the table's, as the floor says.
            bodies = [b for b in bodies if b["seq"] > self.opened_seq]
        held = self._records
        held.extend(bodies)
        over = len(held) - self.records_max
        if over > 0:  # the consumer is behind: it reads the oldest from the table
            for _ in range(over):
                dropped = held.popleft()
            self.floor_seq = max(self.floor_seq, dropped["seq"])
            self.dropped += over

    def take(self, after_seq: int, limit: int) -> list[dict[str, Any]] | None:
        """Up to `limit` committed records with seq > after_seq, oldest first, handed over
        (they are the caller's to change); None when some of them may be only in the table."""
        if after_seq < self.floor_seq or self.closed:
            return None
        held = self._records
        while held and held[0]["seq"] <= after_seq:
            held.popleft()
        taken = [held.popleft() for _ in range(min(limit, len(held)))]
        if taken:
            # A consumer that fails to write these asks again from before them: the table.
            self.floor_seq = taken[-1]["seq"]
        return taken


class _Commit:
    """A batch taken from the open one: written by the loop, then held until its WAL sync."""

    def __init__(
        self,
        batch: tuple[int, int, bytes] | None,
        count: int,
        records: list[Record],
        bodies: list[dict[str, Any]],
        barrier: asyncio.Future[None] | None,
    ) -> None:
        self.batch = batch  # (last seq, first seq, encoded operations), None when empty
        self.count = count
        self.records = records
        self.bodies = bodies
        self.barrier = barrier
        self.sync_number = 0  # the syncer's number for the sync that must cover it
        self.started = 0.0
        self.busy_since = 0.0  # when it first found the write lock taken (0: it has not)
        self.busy_warned = False


class EmbeddedStore(ImmediateStore):
    # An ImmediateStore: the engine charges a session step without a coroutine.

    def __init__(
        self,
        data_dir: str | Path,
        *,
        clock: Clock = wall_clock_ms,
        limits: Limits | None = None,
        snapshot_every_ops: int = 500_000,
        pending_rows_max: int = 200_000,
        sweep_interval_s: float = 1.0,
        tune_gc: bool = True,
        group_commit: bool = True,
        fork_snapshots: bool = True,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        wal_restart_frames: int = WAL_RESTART_FRAMES,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.limits = limits or Limits()
        self.snapshot_every_ops = snapshot_every_ops
        self.pending_rows_max = pending_rows_max
        self.sweep_interval_s = sweep_interval_s
        self.tune_gc = tune_gc
        # False: each change is written (and fsynced) before execute returns, on the writer
        # thread while the loop waits; slow, but the order of everything is fixed (the pool
        # simulator needs that).
        self.group_commit = group_commit
        # False: snapshots are serialised on the event loop (bench_snapshot.py's comparison).
        self.fork_snapshots = fork_snapshots
        self._gc_engaged = False
        self.ledger = Ledger(self.limits)
        self._db: sqlite3.Connection | None = None  # the loop's: group commits (no fsync)
        self._aux: sqlite3.Connection | None = None  # the writer thread's: snapshots, pruning
        self._reader: sqlite3.Connection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="quotaflow-journal")
        self._syncer: Syncer | None = None
        self._syncer_loop: asyncio.AbstractEventLoop | None = None  # watching its pipe
        self._inflight: _Commit | None = None  # written, waiting for its sync
        self._unwritten: _Commit | None = None  # taken, the write lock was busy: next to write
        # A snapshot (its seq and body, or the forked child's file) to store once durable_seq
        # reaches it, and the writer thread's storing of one under way.
        self._snapshot_due: _Snapshot | None = None
        self._snapshot_task: asyncio.Future[None] | None = None
        # An in-place snapshot (`snapshot()`) is being taken: no other is planned meanwhile.
        self._snapshot_in_place = False
        self.busy_retries = 0
        self._seq = 0
        self._batch = Batch(1)  # what was applied since the last commit
        self._records: list[Record] = []
        self._bodies: list[dict[str, Any]] = []  # the records' dicts, for the outbox
        self._outbox: RecordOutbox | None = None
        self._barrier: Barrier | None = None
        self._committing = False
        self._since_snapshot = 0
        self._failed: BaseException | None = None
        # The forked snapshot in progress: its pid and what it writes.
        self._snapshot_child: tuple[int, _Snapshot] | None = None
        self._snapshot_name: str | None = None  # the snapshot file the database names
        self._ids_stored = IdsStored()  # the operation ids it keeps, in files of their own
        self._lock_fd = -1  # the data folder's lock, held while open
        self.snapshots_forked = 0
        # For /metrics: a snapshot seq far behind `seq` is a restart replaying that much.
        self.snapshots_stored = 0
        self.snapshot_failures = 0  # children that failed, stores that failed
        self.snapshot_seq = 0  # the stored snapshot's
        self.last_fork_s = 0.0  # the event loop's stall in fork(): it grows with the process
        self._sweeper: asyncio.Task[None] | None = None
        self._checkpointer: Checkpointer | None = None
        self._checkpoint_interval_s = checkpoint_interval_s
        self._wal_restart_frames = wal_restart_frames
        self._record_rows = 1  # charging records per INSERT, set by open()
        self.commits = 0
        self.committed_rows = 0
        self.durable_seq = 0  # the last operation committed and synced (and all before it)
        self.last_commit_s = 0.0
        # Observed on the event loop once each commit is reported (metrics.watch_store).
        self.commit_seconds = Latencies(COMMIT_SECONDS_BUCKETS)
        # Called on the event loop after each commit that wrote charging records, once
        # durable_seq covers them: the records exporter's wake-up, once per commit instead of
        # once per charge.
        self.on_records: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    async def open(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # One store per folder: a second one would replay a journal the first is writing,
        # and delete snapshot files it names.
        self._lock_fd = lock_folder(
            self.data_dir, f"data folder {self.data_dir} is in use by another quotaflow store"
        )
        try:
            await self._open()
        except BaseException:
            self.release_folder()
            raise

    def release_folder(self) -> None:
        """Let the folder's lock go (at close; a test's crash() too, as a killed process)."""
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)

    async def _open(self) -> None:
        for pattern in (".snapshot-*.tmp", ".ids-*.tmp"):  # a snapshot cut short
            for stale in self.data_dir.glob(pattern):
                stale.unlink(missing_ok=True)
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        self._db = db
        rows = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4
        if sqlite3.sqlite_version_info < (3, 8, 8):  # VALUES lists were compound selects
            rows = min(rows, db.getlimit(sqlite3.SQLITE_LIMIT_COMPOUND_SELECT))
        self._record_rows = max(1, min(RECORD_ROWS_PER_STATEMENT, rows))
        started = time.perf_counter()
        with gc_policy.paused():
            replayed = self._recover(db)
        self._drop_older_snapshot_files()
        # What was replayed counts as durable from here on, but a process killed between a
        # commit and its sync left frames that may be in the page cache alone.
        sync_file(f"{self.path}-wal")
        log.info(
            "ledger recovered",
            extra={
                "seq": self._seq,
                "replayed": replayed,
                "subscribers": len(self.ledger.subscribers),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        if self.tune_gc and not self._gc_engaged:
            gc_policy.engage()  # see store/gc_policy.py
            self._gc_engaged = True
        self._aux = self._connect()
        if self.group_commit:
            # The loop's commits append to the WAL and return; the syncer makes them durable
            # (store/walsync.py). It holds the WAL open, which the schema above created.
            # NORMAL, not OFF: no fsync at COMMIT either, but the WAL's new header is synced
            # before frames are written over an old generation's (see walsync.py).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=0")  # busy: tried again later, not waited for
            self._syncer = wal_syncer(f"{self.path}-wal")
            self._syncer_loop = asyncio.get_running_loop()
            self._syncer_loop.add_reader(self._syncer.fileno(), self._on_synced)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
        self._checkpointer = Checkpointer(
            self.path, self._checkpoint_interval_s, self._wal_restart_frames
        )
        self._checkpointer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        # Checkpoints run on a thread of their own (store/checkpointer.py), not in a commit.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={WAL_FILE_BYTES_MAX}")
        # Debian's SQLite zeroes every page a DELETE frees (SECURE_DELETE), so storing a
        # snapshot also wrote each freed page of the journal it covers to the WAL, under the
        # write lock (docs/PERFORMANCE.md, session 21). FAST still zeroes deleted content on
        # the pages a change writes anyway; freed pages keep theirs until they are reused.
        db.execute("PRAGMA secure_delete=FAST")
        return db

    def _recover(self, db: sqlite3.Connection) -> int:
        kept = db.execute(
            "SELECT seq, name, bytes FROM snapshot_file ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        row = db.execute("SELECT seq, body FROM snapshot ORDER BY seq DESC LIMIT 1").fetchone()
        if kept is not None and (row is None or kept[0] >= row[0]):
            row = (kept[0], read_snapshot(self.data_dir, kept[1], kept[2]))
        self._snapshot_name = None if kept is None else kept[1]
        if row is not None:
            self._seq = self.snapshot_seq = row[0]
            doc = orjson.loads(row[1])
            self._ids_stored = load_ids(self.data_dir, doc)
            self.ledger = Ledger.restore(doc, self.limits)
        replayed = 0
        snapshot_seq = self._seq
        for first_seq, last_seq, records in db.execute(
            "SELECT first_seq, last_seq, records FROM journal WHERE last_seq > ? ORDER BY last_seq",
            (snapshot_seq,),
        ):
            for seq, op, op_id, args, now_ms, refused in decode(first_seq, last_seq, records):
                if seq > snapshot_seq:
                    self._replay(op, op_id, args, now_ms, refused)
                    self._seq = seq
                    replayed += 1
        self._since_snapshot = replayed
        self._batch = Batch(self._seq + 1)
        self.durable_seq = self._seq
        return replayed

    def _drop_older_snapshot_files(self) -> None:
        if self._snapshot_name is not None:
            drop_older(self.data_dir, self._snapshot_name, self._ids_stored)

    def _replay(
        self, op: str, op_id: str | None, args: dict[str, Any], now_ms: int, refused: int
    ) -> None:
        if refused:
            # Refused, but it voided lapsed reservations on its way: replay that part.
            with contextlib.suppress(ChargingError):
                self.ledger.apply(op, op_id, args, now_ms)
        else:
            # It succeeded when first applied, so it must succeed again.
            self.ledger.apply(op, op_id, args, now_ms)

    async def close(self) -> None:
        try:
            await self._close()
        finally:
            if self._gc_engaged:
                gc_policy.release()
                self._gc_engaged = False
            self.release_folder()

    async def _close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        loop = asyncio.get_running_loop()
        try:
            await self.flush()
            if self._db is not None and self._failed is None:
                await self.snapshot()
        finally:
            # Whatever failed above, the threads stop and the files close; a forked snapshot
            # is superseded by the one just stored (or by the journal).
            await self._discard_unstored_snapshot()
            if self._checkpointer is not None:
                await loop.run_in_executor(None, self._checkpointer.stop)
                self._checkpointer = None
            self._close_syncer()
            # Before the connections close: a snapshot being stored uses one.
            await loop.run_in_executor(None, self._writer.shutdown)
            if self._db is not None:
                # The last connection to close checkpoints and deletes the WAL: with its
                # frames synced first, whichever it is.
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.close()
                self._db = None
            for other in (self._aux, self._reader):
                if other is not None:
                    other.close()
            self._aux = self._reader = None

    def _close_syncer(self) -> None:
        # Called from outside the loop too (a test's crash()): the loop is the one from open().
        if self._syncer is not None:
            # Any: uvloop's remove_reader returns None where asyncio's returns a bool, and
            # compiled code would check for the bool.
            loop: Any = self._syncer_loop
            if not loop.is_closed():
                # Before the pipe closes: a new file may take its number.
                loop.remove_reader(self._syncer.fileno())
            self._syncer.close()
            self._syncer = self._syncer_loop = None

    # ------------------------------------------------------------------ writes

    def submit(
        self,
        op: str,
        op_id: str | None,
        args: dict[str, Any],
        now_ms: int | None = None,
        sorted_keys: bool = False,
    ) -> tuple[Result, asyncio.Future[None] | None]:
        """Apply now; returns the result and the barrier to await before answering.
        `sorted_keys` as in `Ledger.apply_encoded`.

        The barrier is None when nothing is pending. A refusal raises; its caller should still
        wait for `pending()` so it never answers ahead of the state it saw.
        """
        self._refuse_if_failed()
        batch = self._batch
        if len(batch) >= self.pending_rows_max:
            raise LimitReached("journal backlog full", limit=self.pending_rows_max)
        now = self.clock() if now_ms is None else now_ms
        original = args
        record = args.get("record")
        if record is not None:
            # The record is written to the cdr table in the same commit: the ledger, its
            # journal and a repeat's fingerprint need none of it (a retry may carry another).
            args = args.copy()
            del args["record"]
        voids = self.ledger.lapsed_voids
        try:
            try:
                result, changed, content = self.ledger.apply_encoded(
                    op, op_id, args, now, sorted_keys
                )
            except Conflict:
                if args is original:
                    raise
                # An id first applied before records left the arguments (session 12) was
                # fingerprinted with its record, an object then: its repeat is still a repeat.
                if type(record) is tuple:
                    original = {**args, "record": session_fields(record)}
                result, changed, content = self.ledger.apply_encoded(op, op_id, original, now)
        except ChargingError:
            if self.ledger.lapsed_voids != voids:
                self._seq += 1
                batch.add(op, op_id, orjson.dumps(args), now, True)
            raise
        if changed:
            self._seq += 1
            batch.add(op, op_id, content, now, False)
            if record is not None:
                self._record(op, args, result, record, now)
        return result, self.pending()

    def _refuse_if_failed(self) -> None:
        if self._failed is not None:
            raise StoreUnavailable(
                "journal write failed; refusing changes", cause=repr(self._failed)
            )

    def _record(self, op: str, args: dict[str, Any], result: Result, record: Any, now: int) -> None:
        if type(record) is tuple:
            if op == "charge":
                self._session_record(args, result, record, now)
                return
            record = session_fields(record)
        body: dict[str, Any] = {"seq": self._seq, "at_ms": now, "op": op}
        if isinstance(record, dict):
            body.update(record)
        subscriber_id = str(args.get("subscriber_id", ""))
        body["subscriber_id"] = subscriber_id
        # One lookup per field (`in`, then `[]`, was two).
        for key in RECORDED_FIELDS:
            value = args.get(key, _ABSENT)
            if value is not _ABSENT:
                body[key] = value
        for key in RESULT_FIELDS:
            value = result.get(key, _ABSENT)
            if value is not _ABSENT:
                body[key] = value
        self._records.append((self._seq, now, subscriber_id, _dumps(body).decode()))
        outbox = self._outbox
        if outbox is not None and not outbox.closed:
            self._bodies.append(body)

    def _session_record(
        self, args: dict[str, Any], result: Result, record: SessionRecord, now: int
    ) -> None:
        """A session step's record (the engine's `SessionRecord`, charged by "charge"), as an
        array body (store/cdr.py): the same fields `_record` would write, without their keys."""
        subscriber_id: str = args["subscriber_id"]
        values = [
            SESSION_TAG,
            self._seq,
            now,
            "charge",
            subscriber_id,
            args["unit"],
            args["rating_group"],
            args["used_units"],
            result["posted_units"],
            result["unpaid_units"],
            result["drawn"],
            result["cost_micros"],
        ]
        values.extend(record)  # a list, extended: a tuple with *record was built via a list
        self._records.append((self._seq, now, subscriber_id, _dumps(values).decode()))
        outbox = self._outbox
        if outbox is not None and not outbox.closed:
            self._bodies.append(expand(values))

    def pending(self) -> asyncio.Future[None] | None:
        """The barrier of everything applied so far, or None when all of it is durable."""
        if not self.group_commit and len(self._batch) and not self._committing:
            self._write_now()
        if not len(self._batch) and not self._committing:
            return None
        if self._barrier is None:
            self._barrier = Barrier(loop=asyncio.get_running_loop())
            if not self._committing:
                self._committing = True
                asyncio.get_running_loop().call_soon(self._commit_next)
        return self._barrier

    async def execute(
        self, op: str, op_id: str | None, args: dict[str, Any], now_ms: int | None = None
    ) -> Result:
        try:
            result, barrier = self.submit(op, op_id, args, now_ms)
        except ChargingError:
            barrier = self.pending()
            if barrier is not None:
                await barrier
            raise
        if barrier is not None:
            await barrier
        return result

    async def flush(self) -> None:
        barrier = self.pending()
        if barrier is not None:
            await barrier

    def _take(self) -> _Commit:
        """Everything applied since the last commit, ready for `_write`; starts a new batch."""
        taken, records, bodies, barrier = self._batch, self._records, self._bodies, self._barrier
        self._batch, self._records, self._bodies = Batch(self._seq + 1), [], []
        self._barrier = None
        count = len(taken)
        self._since_snapshot += count
        if self._since_snapshot >= self.snapshot_every_ops and not self._snapshot_outstanding():
            self._since_snapshot = 0
            if not self._fork_snapshot() and self._snapshot_due is None:
                self._snapshot_due = self._serialise(self._seq, self._plan_ids())
        batch = (taken.last_seq, taken.first_seq, taken.encode()) if count else None
        return _Commit(batch, count, records, bodies, barrier)

    def _fork_snapshot(self) -> bool:
        """Start a child that writes the state as it is now to a file. False if it cannot."""
        if not self.fork_snapshots or not hasattr(os, "fork"):
            return False
        seq, plan = self._seq, self._plan_ids()
        due = _Snapshot(
            seq,
            self.data_dir / f".snapshot-{seq}.tmp",
            None if plan.new is None else self.data_dir / f".ids-{seq}.tmp",
            plan,
        )
        started = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as exc:
            log.warning("cannot fork for a snapshot; taking it inline", extra={"error": str(exc)})
            return False
        if pid == 0:  # the child: serialise, write, leave without running any cleanup
            code = 1
            try:
                # Signals meant for the server must not reach its loop through the inherited
                # wakeup descriptor.
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                signal.alarm(SNAPSHOT_CHILD_TIMEOUT_S)
                # It shares the server's CPUs; where the server has one core to itself, the
                # child's serialising (seconds of CPU at 500,000 operations) halved the rate of
                # answers for 3-4 s. Lowered, it took 16 s and the rate stayed at 24-28k of 33k
                # (PERFORMANCE.md, session 21).
                os.nice(SNAPSHOT_CHILD_NICE)
                # Nor may it keep the server's sockets open: a connection the server closes
                # must close for its peer now, not when the child is done.
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                made = self._serialise(seq, plan, ids=False)
                # The ids first (the body names them), straight from the id table: half a
                # million through Python objects took the child seconds (PERFORMANCE.md,
                # session 22).
                if (
                    isinstance(due.ids, Path)
                    and plan.new is not None
                    and write_ids(due.ids, self.ledger.idempotency, plan.start) != plan.new[2]
                ):
                    raise RuntimeError("the ids written are not the ids planned")
                assert isinstance(due.body, Path) and isinstance(made.body, bytes)
                write_synced(due.body, made.body)
                code = 0
            finally:
                os._exit(code)
        self.last_fork_s = time.perf_counter() - started
        self._snapshot_child = (pid, due)
        self.snapshots_forked += 1
        return True

    def _snapshot_outstanding(self) -> bool:
        """Whether a snapshot was planned and is not yet stored or discarded. Plans are made
        one at a time: each is based on the ids the stored snapshot keeps, and once stored it
        deletes the ids files it does not list, which a plan made before it was stored, on the
        one before, could list (the review of session 22 found such a file deleted under a
        durable snapshot whenever a child took longer than the snapshot interval)."""
        return (
            self._snapshot_child is not None
            or self._snapshot_task is not None
            or self._snapshot_due is not None
            or self._snapshot_in_place
        )

    def _plan_ids(self) -> IdsPlan:
        return plan_ids(self._ids_stored, self.ledger.idempotency.span(), self._seq)

    def _serialise(self, seq: int, plan: IdsPlan, ids: bool = True) -> _Snapshot:
        """The state as it is now, its new operation ids apart (store/snapshot_files.py);
        without them unless `ids`."""
        doc = self.ledger.snapshot(raw=True, ids_from=plan.start if ids else plan.stored.end)
        rows = split_ids(doc, plan)
        new = None if plan.new is None or not ids else orjson.dumps(rows)
        return _Snapshot(seq, orjson.dumps(doc), new, plan)

    def _finished_snapshot(self) -> _Snapshot | None:
        """The forked snapshot's files once its child exited cleanly; None while it runs."""
        if self._snapshot_child is None:
            return None
        pid, due = self._snapshot_child
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: its outcome is unknown
            done, status = pid, -1
        if done == 0:
            return None
        self._snapshot_child = None
        if status == -1 or os.waitstatus_to_exitcode(status) != 0 or not due.written():
            log.error("snapshot child failed; the next one is due later", extra={"seq": due.seq})
            self.snapshot_failures += 1
            due.discard()
            return None
        return due

    def _write_now(self) -> None:
        """Without group commit: this change alone, synced (synchronous=FULL) before it returns."""
        commit = self._take()
        commit.started = time.perf_counter()
        try:
            # On the writer thread (synchronous=FULL there), in turn with snapshots and pruning
            # on theirs: neither waits for the other's write lock.
            self._writer.submit(self._write, commit.batch, commit.records).result()
        except BaseException as exc:  # fail-stop, as in the group commit
            self._stop(exc)
            raise StoreUnavailable("journal write failed", cause=repr(exc)) from exc
        self._durable(commit)

    def _stop(self, exc: BaseException) -> None:
        """A journal write failed: refuse every change from now on. The write may have
        committed before it failed, so the exporter must ask the table: the outbox closes."""
        self._failed = exc
        if self._outbox is not None:
            self._outbox.close()

    def record_outbox(self, records_max: int = OUTBOX_RECORDS_MAX) -> RecordOutbox:
        """Hand every charging record committed from now on to one consumer (RecordOutbox),
        until it closes the outbox."""
        if self._outbox is not None and not self._outbox.closed:
            raise RuntimeError("the store's record outbox has a consumer already")
        # Records applied before now are only in the table (once committed: durable_seq).
        self._outbox = RecordOutbox(self._seq, records_max)
        return self._outbox

    def _commit_next(self) -> None:
        """Write the open batch (on the loop: its pages go to the WAL, no fsync) and ask the
        syncer to make it durable; its barrier is released by `_on_synced`. One commit waits
        for its sync at a time: the next is written when that one is durable."""
        if self._inflight is not None:
            return  # _on_synced calls again
        if self._failed is not None:
            self._committing = False
            return
        commit = self._unwritten
        if commit is not None:
            self._unwritten = None
        elif len(self._batch) or self._barrier is not None:
            try:
                commit = self._take()
            except BaseException as exc:  # the batch is lost to the journal: fail-stop
                self._fail(None, exc)
                return
        else:
            self._committing = False
            return
        if commit.batch is None and not commit.records:
            # Nothing new: everything before this barrier is durable already.
            self._durable(commit, written=False)
            self._commit_next()
            return
        now = time.perf_counter()
        if not commit.busy_since:
            commit.started = now
        try:
            self._write(commit.batch, commit.records)
            assert self._syncer is not None, "store is closed"
            commit.sync_number = self._syncer.request()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # extended codes too
                self._fail(commit, exc)
                return
            self._busy(commit, now, exc)
            return
        except BaseException as exc:  # fail-stop: memory is now ahead of disk
            self._fail(commit, exc)
            return
        self._inflight = commit

    def _busy(self, commit: _Commit, now: float, exc: sqlite3.OperationalError) -> None:
        """The write lock is taken (the checkpointer's RESTART, a snapshot or a prune being
        stored, or another process): this batch is written first when tried again, whatever
        is applied meanwhile."""
        self.busy_retries += 1
        if not commit.busy_since:
            commit.busy_since = now
        waited = now - commit.busy_since
        if waited >= BUSY_FAIL_S:
            self._fail(commit, exc)
            return
        if waited >= BUSY_WARN_S and not commit.busy_warned:
            commit.busy_warned = True
            log.error("the journal's write lock has been taken for %.1f s; changes wait", waited)
        self._unwritten = commit
        asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._commit_next)

    def _on_synced(self) -> None:
        """The syncer finished a sync (its pipe is readable): release what it covers."""
        syncer = self._syncer
        if syncer is None:
            return
        commit = self._inflight
        try:
            synced = syncer.synced()
        except OSError as exc:  # what the failed sync covered may never reach the disk
            self._inflight = None
            if commit is not None:
                self._fail(commit, exc)
            return
        if commit is None or synced < commit.sync_number:
            return
        self._inflight = None
        self._durable(commit)
        self._commit_next()

    def _durable(self, commit: _Commit, written: bool = True) -> None:
        """A commit is durable: its figures, its records to the outbox and the on_records
        hooks, its answers released, and a snapshot waiting for it handed over."""
        if written:
            self.commits += 1
            self.committed_rows += commit.count
            self.last_commit_s = time.perf_counter() - commit.started
            self.commit_seconds.observe(self.last_commit_s)
        if commit.batch is not None:
            self.durable_seq = commit.batch[0]
        outbox = self._outbox
        if commit.bodies and outbox is not None and not outbox.closed:
            outbox.deliver(commit.bodies)
        if commit.records:
            for hook in self.on_records:
                try:
                    hook()
                except Exception:  # a consumer's failure must not fail the commit's answers
                    log.exception("records hook failed")
        barrier = commit.barrier
        if barrier is not None and not barrier.done():
            barrier.set_result(None)
        self._store_snapshot_when_due()

    def _fail(self, commit: _Commit | None, exc: BaseException) -> None:
        self._stop(exc)
        log.critical("journal write failed; store refuses changes", exc_info=exc)
        failure = StoreUnavailable("journal write failed", cause=repr(exc))
        for b in (None if commit is None else commit.barrier, self._barrier):
            if b is not None and not b.done():
                b.set_exception(failure)
        self._batch, self._records, self._bodies = Batch(self._seq + 1), [], []
        self._barrier = None
        self._committing = False

    def _write(self, batch: tuple[int, int, bytes] | None, records: list[Record]) -> None:
        """One transaction of journal rows and charging records, on the caller's thread."""
        db = self._db
        assert db is not None, "store is closed"
        with _transaction(db):
            if batch is not None:
                db.execute(
                    "INSERT INTO journal (last_seq, first_seq, records) VALUES (?, ?, ?)", batch
                )
            if records:
                _insert_records(db, records, self._record_rows)

    def _store_snapshot_when_due(self) -> None:
        """Hand a snapshot to the writer thread once every operation it holds is durable: a
        forked child's file, or one taken inline. One at a time; none while `snapshot()` is
        settling them itself."""
        if self._snapshot_task is not None or self._snapshot_in_place:
            return
        due: _Snapshot | None = None
        try:
            due = self._snapshot_due
            if due is None:
                due = self._finished_snapshot()
                if due is None:
                    return
            if due.seq > self.durable_seq:
                self._snapshot_due = due
                return
            self._snapshot_due = None
            task = asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_snapshot, due
            )
        except Exception:  # the journal keeps everything; the answers must still go out
            log.exception("snapshot not handed to the writer")
            if due is not None and due is not self._snapshot_due:
                due.discard()
            return
        self._store_in_background(task)

    def _store_in_background(self, task: asyncio.Future[None]) -> None:
        """A snapshot being stored on the writer thread: outstanding until it is done, even if
        whoever awaits it is cancelled (the thread goes on storing)."""
        self._snapshot_task = task
        task.add_done_callback(self._snapshot_stored)

    def _snapshot_stored(self, task: asyncio.Future[None]) -> None:
        self._snapshot_task = None
        if not task.cancelled() and task.exception() is not None:
            # The journal still holds everything: the next snapshot is due as usual.
            self.snapshot_failures += 1
            log.error("snapshot not stored", exc_info=task.exception())

    def _write_snapshot(self, due: _Snapshot) -> None:
        """Store a snapshot and drop the journal it covers (writer thread, own connection).

        The body stays a file beside the database, renamed into place once synced, with the
        file of the operation ids that came since the last one (store/snapshot_files.py); the
        database records its name and deletes the journal in one short transaction. Copying
        it into a table wrote it to the WAL under the write lock (at 500,000 operations, 170 MB
        and a second when commits stood still: PERFORMANCE.md, session 21)."""
        db = self._aux
        assert db is not None, "store is closed"
        seq = due.seq
        name = snapshot_file_name(seq)
        if self._snapshot_name is not None and seq <= file_seq(self._snapshot_name):
            # The state at this seq is stored already (a close with nothing since the last
            # snapshot): writing it again would replace the files the database names before
            # the row could say how long the new one is. (An older one is never stored after
            # a newer: plans are made one at a time.)
            due.discard()
            return
        # Not the forked child's names: a close may take one in place while a child runs.
        body = due.file(self.data_dir / f".snapshot-{seq}.now.tmp", due.body)
        ids = None if due.ids is None else due.file(self.data_dir / f".ids-{seq}.now.tmp", due.ids)
        try:
            for segment in due.plan.stored.segments:  # never name a snapshot that cannot open
                if segment is not due.plan.new and not (self.data_dir / segment[0]).is_file():
                    raise SnapshotFileError(f"ids file {segment[0]} listed but not found")
            size = body.stat().st_size
            if ids is not None and due.plan.new is not None:
                os.replace(ids, self.data_dir / due.plan.new[0])
            os.replace(body, self.data_dir / name)
            sync_directory(self.data_dir / name)
            taken_ms = wall_clock_ms()
            with _transaction(db):
                db.execute(
                    "INSERT OR REPLACE INTO snapshot_file (seq, taken_ms, name, bytes)"
                    " VALUES (?, ?, ?, ?)",
                    (seq, taken_ms, name, size),
                )
                db.execute("DELETE FROM journal WHERE last_seq <= ?", (seq,))
                db.execute("DELETE FROM snapshot_file WHERE seq < ?", (seq,))
                # In the older builds' table, a row that is no state: an older build rolled
                # back to stops on it (no "subscribers") rather than start from the journal
                # left after it as if nothing came before.
                db.execute(
                    "INSERT OR REPLACE INTO snapshot (seq, taken_ms, body) VALUES (?, ?, ?)",
                    (seq, taken_ms, orjson.dumps({"snapshot_file": name})),
                )
                db.execute("DELETE FROM snapshot WHERE seq < ?", (seq,))
        finally:  # stored or not, the pending files are done with
            due.discard()
            body.unlink(missing_ok=True)
            if ids is not None:
                ids.unlink(missing_ok=True)
        # Only once the row naming the new file is durable (synchronous=FULL on this
        # connection); a file left by a failure here is dropped at the next open.
        self._snapshot_name = name
        self._ids_stored = due.plan.stored
        self.snapshot_seq = seq
        self.snapshots_stored += 1
        self._drop_older_snapshot_files()

    async def _discard_unstored_snapshot(self) -> None:
        """A forked child and a snapshot due are superseded: the child is stopped, their
        files go."""
        child, self._snapshot_child = self._snapshot_child, None  # taken first: the loop's
        if child is not None:  # _finished_snapshot must not wait for it too
            pid, unstored = child
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # its work is not wanted: no need to wait for it
            await asyncio.get_running_loop().run_in_executor(None, _reap, pid)
            unstored.discard()
        due, self._snapshot_due = self._snapshot_due, None
        if due is not None:
            due.discard()

    async def snapshot(self) -> None:
        """Write a snapshot of everything applied so far and drop the journal it covers.

        Stored only once all it holds is durable: a charge in it whose commit (and charging
        record) were then lost to a power cut would be a debit without its record."""
        loop = asyncio.get_running_loop()
        while self._snapshot_in_place:  # another call's: this one plans on what it stores
            await asyncio.sleep(0.01)
        self._snapshot_in_place = True
        try:
            # One planned at a time (`_snapshot_outstanding`): one being stored finishes, a
            # child or one due is superseded by this one.
            if self._snapshot_task is not None:
                with contextlib.suppress(Exception):  # logged by _snapshot_stored
                    await asyncio.shield(self._snapshot_task)
            await self._discard_unstored_snapshot()
            due = self._serialise(self._seq, self._plan_ids())
            await self.flush()  # everything applied by now, up to seq and beyond
            task = loop.run_in_executor(self._writer, self._write_snapshot, due)
            self._store_in_background(task)
            await asyncio.shield(task)
            self._since_snapshot = 0
        finally:
            self._snapshot_in_place = False

    async def _sweep_loop(self) -> None:
        """Void lapsed reservations and purge expired buckets, as journaled operations."""
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            deadline = self.ledger.next_deadline_ms()
            now = self.clock()
            if deadline is not None and deadline <= now:
                try:
                    await self.execute("expire", None, {}, now)
                except ChargingError as exc:
                    log.error("sweep failed", extra={"error": exc.message})

    # ------------------------------------------------------------------ reads

    def read_records(self, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Durable charging records with seq > after_seq, oldest first (for exporters and the
        API). A committed batch's rows are visible before its WAL sync: they are left out."""
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False)
        rows = self._reader.execute(
            "SELECT body FROM cdr WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, self.durable_seq, limit),
        ).fetchall()
        return [record_of(body) for (body,) in rows]

    async def get_subscriber(self, subscriber_id: str) -> Subscriber:
        return self.subscriber_now(subscriber_id)

    async def identities_of(self, subscriber_ids: list[str]) -> dict[str, dict[str, str]]:
        subs = self.ledger.subscribers
        found: dict[str, dict[str, str]] = {}
        for sid in subscriber_ids:
            sub = subs.get(sid)
            found[sid] = {} if sub is None else dict(sub.identities)
        return found

    async def list_subscribers(self, offset: int, limit: int) -> list[Subscriber]:
        subs = self.ledger.subscribers
        return [subs[k] for k in list(subs)[offset : offset + limit]]

    async def resolve(self, kind: str, value: str) -> str:
        return self.ledger.resolve(kind, value)

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        return self.session_now(session_id)

    def session_now(self, session_id: str) -> dict[str, Any] | None:
        return self.ledger.sessions.get(session_id)

    def open_sessions_now(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self.ledger.sessions.items())

    def subscriber_now(self, subscriber_id: str) -> Subscriber:
        return self.ledger.subscriber(subscriber_id)

    def first_answer(self, op_id: str) -> Result | None:
        # After a failed commit memory is ahead of disk: a first answer in memory may never
        # have been written, so none is handed out.
        self._refuse_if_failed()
        return self.ledger.first_answer(op_id)

    async def sessions_of(self, subscriber_id: str) -> dict[str, dict[str, Any]]:
        ids = self.ledger.sessions_by_subscriber.get(subscriber_id, ())
        return {sid: self.ledger.sessions[sid] for sid in ids}

    async def recorded(self, op_id: str) -> Result | None:
        answer = self.first_answer(op_id)
        if answer is None:
            return None
        await self.flush()  # never hand out a first answer that is not durable yet
        return answer

    def payable_units(
        self, sub: Subscriber, unit: str, rating_group: int | None, price: dict[str, int] | None
    ) -> int:
        p = None if price is None else Price(**price)
        return self.ledger.payable_units(sub, Unit(unit), rating_group, p, self.clock())

    async def get_group(self, group_id: str) -> Group:
        return self.ledger.group(group_id)

    def pool_available(self, group_id: str, unit: str) -> int:
        return self.ledger.pool_available(group_id, Unit(unit), self.clock())

    def pool_held(self, group_id: str, unit: str) -> int:
        return self.ledger.pool_held.get((group_id, unit), 0)

    async def pool_reservations(self, group_id: str) -> list[Reservation]:
        self.ledger.group(group_id)  # NotFound for an unknown group
        found: list[Reservation] = []
        for sid, rid in self.ledger.pool_holds.get(group_id, ()):
            found.append(self.ledger.subscribers[sid].reservations[rid])
        # In id order: the set's order is not stable across runs, the callers' decisions are.
        found.sort(key=lambda r: (r.subscriber_id, r.id))
        return found

    def policy_counters(self, subscriber_id: str) -> list[dict[str, Any]]:
        return self.ledger.policy_counters(subscriber_id, self.clock())

    async def transfer_report(self, transfer_id: str) -> dict[str, Any]:
        return self.ledger.transfer_report(transfer_id)

    async def get_voucher(self, voucher_id: str) -> dict[str, Any] | None:
        found = self.ledger.vouchers.get(voucher_id)
        return None if found is None else found.to_json()

    async def open_offers(self) -> list[dict[str, Any]]:
        return [o.to_json() for o in self.ledger.offers.values() if o.blocks_left]

    async def interop_transfers(self, state: str | None = None) -> list[dict[str, Any]]:
        return [
            dict(r) for r in self.ledger.remote.values() if state is None or r["state"] == state
        ]

    async def get_interop_transfer(self, transfer_id: str) -> dict[str, Any] | None:
        found = self.ledger.remote.get(transfer_id)
        return None if found is None else dict(found)

    async def prune_records(self, up_to_seq: int, before_ms: int) -> int:
        # On the writer thread's own connection, in slices: a group commit that finds the write
        # lock taken is retried (BUSY_RETRY_S) and waits for one slice at most.
        loop = asyncio.get_running_loop()
        pruned = 0
        while True:
            done = await loop.run_in_executor(self._writer, self._prune_slice, up_to_seq, before_ms)
            pruned += done
            if done < PRUNE_SLICE_ROWS:
                return pruned

    def _prune_slice(self, up_to_seq: int, before_ms: int) -> int:
        db = self._aux
        assert db is not None, "store is closed"
        cur = db.execute(
            "DELETE FROM cdr WHERE seq IN (SELECT seq FROM cdr WHERE seq <= ? AND at_ms < ?"
            " ORDER BY seq LIMIT ?)",
            (up_to_seq, before_ms, PRUNE_SLICE_ROWS),
        )
        return cur.rowcount

    def stats(self) -> dict[str, Any]:
        cp = self._checkpointer
        return {
            "backend": "embedded",
            "path": str(self.path),
            "seq": self._seq,
            "pending_rows": len(self._batch),
            "commits": self.commits,
            "committed_rows": self.committed_rows,
            "last_commit_s": self.last_commit_s,
            "subscribers": len(self.ledger.subscribers),
            "sessions": len(self.ledger.sessions),
            "failed": None if self._failed is None else repr(self._failed),
            "wal_frames": 0 if cp is None else cp.wal_frames,
            "wal_checkpoints": 0 if cp is None else cp.checkpoints,
            "wal_restarts": 0 if cp is None else cp.restarts,
            "wal_checkpoint_failures": 0 if cp is None else cp.failures,
            "wal_checkpoint_db_syncs": 0 if cp is None else cp.db_syncs,
            "wal_checkpoint_sync_failed": int(cp is not None and cp.sync_failed is not None),
            "wal_syncs": 0 if self._syncer is None else self._syncer.syncs,
            "commit_busy_retries": self.busy_retries,
            "snapshots_forked": self.snapshots_forked,
            "snapshots_stored": self.snapshots_stored,
            "snapshot_failures": self.snapshot_failures,
            "snapshot_seq": self.snapshot_seq,
            "snapshot_ids_files": len(self._ids_stored.segments),
            "last_snapshot_fork_s": self.last_fork_s,
        }


class _Snapshot:
    """A snapshot to store: its state and new operation ids, each as bytes (taken in place) or
    as the file a forked child wrote and synced; what it stores of the ids once stored."""

    def __init__(
        self, seq: int, body: bytes | Path, ids: bytes | Path | None, plan: IdsPlan
    ) -> None:
        self.seq = seq
        self.body = body
        self.ids = ids
        self.plan = plan

    def written(self) -> bool:
        """Whether the child's files are all there."""
        return all(not isinstance(f, Path) or f.exists() for f in (self.body, self.ids))

    def discard(self) -> None:
        """Delete the files a child wrote (not stored, or stored under their own names)."""
        for f in (self.body, self.ids):
            if isinstance(f, Path):
                f.unlink(missing_ok=True)

    @staticmethod
    def file(pending: Path, content: bytes | Path) -> Path:
        """The content's synced file: the child's, or written to `pending` now."""
        if isinstance(content, Path):
            return content
        write_synced(pending, content)
        return pending


def _reap(pid: int) -> None:
    """Wait for a child to exit (one reaped by someone else already is gone too)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: BEGIN IMMEDIATE (a lock that is taken raises here, before anything
    is written), COMMIT at the end, ROLLBACK on any error, COMMIT's own included (the
    connection's context manager would leave that one open, holding the write lock)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _insert_records(db: sqlite3.Connection, records: list[Record], rows_max: int) -> None:
    """All of `records`, in order, in statements of at most `rows_max` rows."""
    for at in range(0, len(records), rows_max):
        chunk = records[at : at + rows_max]
        size = 1 << (len(chunk) - 1).bit_length()  # the next power of two
        if size > rows_max:
            size = len(chunk)  # rows_max is not a power of two: its last chunks take their own
        params: list[int | str] = []
        for record in chunk:
            params.extend(record)
        params.extend([0] * (4 * (size - len(chunk))))
        db.execute(_insert_sql(size), params)


_INSERT_SQL: Final[dict[int, str]] = {}


def _insert_sql(rows: int) -> str:
    sql = _INSERT_SQL.get(rows)
    if sql is None:
        values = ", ".join(["(?, ?, ?, ?)"] * rows)
        sql = _INSERT_SQL[rows] = (
            "INSERT INTO cdr (seq, at_ms, subscriber_id, body) "
            f"SELECT * FROM (VALUES {values}) WHERE column1 > 0"
        )
    return sql
