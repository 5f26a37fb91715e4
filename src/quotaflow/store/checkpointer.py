"""The WAL checkpointer: copies committed WAL frames into the database file on a thread and
SQLite connection of its own, so that no commit waits for it.

By default SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: that
commit, and every answer waiting for it, also waited for about 4 MB to be copied into the
database file and for that file's fsync. In the Gy benchmark (4 x 32 in flight) that was the
difference between a p99 of 10.5-11.6 ms and 8.9-9.4 ms (docs/PERFORMANCE.md). So the writer
connection turns it off (`wal_autocheckpoint=0`) and this thread runs PASSIVE checkpoints,
which block neither the writer nor readers.

A PASSIVE checkpoint cannot rewind the WAL while commits keep landing: SQLite writes from the
start of the file again only when a writer begins with every frame copied. So once the WAL
holds `restart_frames`, a RESTART checkpoint follows the PASSIVE one. It takes the write lock,
copies the few frames committed in between and makes the next commit rewind; it does not wait
(busy timeout 0): while a commit or a reader (the records exporter's process) is in the way it
gives up at once and is tried next round. A commit meanwhile waits only for that short copy
and the database file's fsync.

A PASSIVE checkpoint that does not reach the WAL's end (under steady commits, none does)
copies pages into the database file without syncing it: SQLite syncs the file only when a
checkpoint reaches the end, which under load is the RESTART, holding the write lock. That
sync then flushed every page the PASSIVE rounds had copied since the last one (a second of
them at 4 x 32 in the Gy benchmark, about 60 MB). So after each PASSIVE that copied frames
this thread syncs the database file itself, holding no lock, and the RESTART's own sync covers
only what it copies (docs/PERFORMANCE.md, session 20). Should that sync (or the RESTART's) fail,
no RESTART runs again: the pages it held may be lost, so the WAL keeps every frame and grows,
the failure logged once as critical and shown in the stats (`wal_checkpoint_sync_failed`).

Checkpoints move frames that are durable already: a crash during one loses nothing, the WAL
still has them. An error is counted (`failures`, in the store's stats and metrics) and the next
round tries again with a new connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Final

log = logging.getLogger("quotaflow.store")

# Often, so that each copy is short: the thread shares the server's core, and a copy of a
# quarter second's frames held the event loop back long enough to show in the p99.
CHECKPOINT_INTERVAL_S: Final = 0.1
WAL_RESTART_FRAMES: Final = 8_192  # 32 MiB of 4 KiB pages
FAILURES_LOGGED_EVERY: Final = 100  # a failing checkpoint logs its first failure, then 1 in 100
# What a rewound WAL file is cut back to (SQLite's journal_size_limit, set on the writer).
WAL_FILE_BYTES_MAX: Final = 64 * 1024 * 1024


class Checkpointer:
    """Runs checkpoints of the database at `path` every `interval_s` until stopped."""

    def __init__(
        self,
        path: Path,
        interval_s: float = CHECKPOINT_INTERVAL_S,
        restart_frames: int = WAL_RESTART_FRAMES,
    ) -> None:
        assert interval_s > 0 and restart_frames > 0
        self.path = path
        self.interval_s = interval_s
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self.restarts = 0  # RESTART checkpoints that completed (the WAL rewinds after each)
        self.wal_frames = 0  # frames in the WAL at the last checkpoint
        self.failures = 0
        self.db_syncs = 0  # syncs of the database file after a PASSIVE that copied frames
        self._restarted_at = -1  # the WAL's frame count at the last RESTART that completed
        self._copied = 0  # frames copied, as the last checkpoint reported it
        self._db_fd = -1  # the database file, for those syncs (opened with the connection)
        # A sync of the database file failed: the pages it held may never reach the disk, and
        # a later sync through a new descriptor would not say so (Linux reports a writeback
        # error once per open file). The WAL then keeps every frame: no RESTART from now on.
        self.sync_failed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        assert self._thread is None, "started twice"
        self._thread = threading.Thread(target=self._run, name="quotaflow-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval_s):
            try:
                if db is None:
                    # mode=rw: a database that went missing is an error here, not a new file.
                    uri = f"{self.path.resolve().as_uri()}?mode=rw"
                    db = sqlite3.connect(uri, uri=True, isolation_level=None)
                    db.execute("PRAGMA busy_timeout=0")
                    # Syncs the WAL before copying frames and the database file before the WAL
                    # may rewind: the loop's commits are synced by the store's syncer alone.
                    db.execute("PRAGMA synchronous=FULL")
                    self._db_fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                self.run_once(db)
            except Exception as exc:  # counted; the WAL only grows until a round succeeds
                self.failures += 1
                if self.failures == 1 or not self.failures % FAILURES_LOGGED_EVERY:
                    log.warning(
                        "WAL checkpoint of %s failed (%d so far): %s", self.path, self.failures, exc
                    )
                self._close_db_fd()
                if db is not None:
                    db.close()
                    db = None
        self._close_db_fd()
        if db is not None:
            db.close()

    def _close_db_fd(self) -> None:
        fd, self._db_fd = self._db_fd, -1
        if fd >= 0:
            os.close(fd)

    def _sync_db_file(self) -> None:
        try:
            os.fdatasync(self._db_fd)  # outside every lock: see the module's docstring
        except OSError as exc:
            self.sync_failed = repr(exc)
            log.critical(
                "syncing %s after a checkpoint failed: the WAL is no longer rewound, so that "
                "it keeps every frame (it grows until the server is restarted on a sound disk)",
                self.path,
                exc_info=exc,
            )
            raise
        self.db_syncs += 1

    def run_once(self, db: sqlite3.Connection) -> None:
        """One PASSIVE checkpoint, the database file's sync when it copied frames, and a
        RESTART after it when the WAL has grown long."""
        _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        self.wal_frames = frames
        if copied != self._copied:  # more frames copied (or fewer: the WAL rewound since)
            if copied > 0 and self._db_fd >= 0:
                self._sync_db_file()
            self._copied = copied
        # Not again while the WAL is as the last RESTART left it (no commit since: the rewind
        # happens at the next one).
        if (
            frames >= self.restart_frames
            and frames != self._restarted_at
            and self.sync_failed is None
        ):
            try:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_IOERR:
                    self.sync_failed = repr(exc)  # its own sync, or a write, failed: as above
                    log.critical("a RESTART checkpoint of %s failed: %s", self.path, exc)
                raise
            if not busy:
                self.restarts += 1
                self._restarted_at = frames
                self._copied = 0  # the next frames are counted from the WAL's start
