"""Reading charging records without blocking the event loop.

The embedded store keeps records in the `cdr` table of its SQLite file. Each reader here opens
its own read-only connection to it and runs every query on its own single thread, so a large
export or an API listing never stalls charging answers (WAL lets readers and the writer run side
by side). A store without a SQLite file falls back to `store.read_records` on the loop.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quotaflow.store.base import Store
from quotaflow.store.cdr import SESSION_ID_INDEX, record_of
from quotaflow.store.walsync import sync_file

# A field the SQL filters on, in a body of either form (store/cdr.py): an object's key, or its
# place in a session step's array (whose kind is "session").
_BODY = "CAST(body AS TEXT)"
_IN_BODY = {
    "session_id": f"coalesce(json_extract({_BODY}, '$.session_id'),"
    f" json_extract({_BODY}, '$[{SESSION_ID_INDEX}]'))",
    "kind": f"coalesce(json_extract({_BODY}, '$.kind'),"
    f" CASE WHEN json_type({_BODY}) = 'array' THEN 'session' END)",
}


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """What to list: records after a seq, optionally one subscriber's, within a time range."""

    after_seq: int = 0
    subscriber_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    session_id: str | None = None
    kind: str | None = None

    def matches(self, r: dict[str, Any]) -> bool:
        return (
            r["seq"] > self.after_seq
            and (self.subscriber_id is None or r.get("subscriber_id") == self.subscriber_id)
            and (self.since_ms is None or r.get("at_ms", 0) >= self.since_ms)
            and (self.until_ms is None or r.get("at_ms", 0) < self.until_ms)
            and (self.session_id is None or r.get("session_id") == self.session_id)
            and (self.kind is None or r.get("kind") == self.kind)
        )


class RecordSource:
    """Pages of records, oldest first, read on a private thread.

    Only durable records are handed out: the embedded store commits a batch before its WAL
    sync (store/walsync.py), and a record read in between could be exported, then lost with its
    charge in a power cut. So reads stop at `durable_seq()`: the store's own figure, or, in the
    exporter's process, the one the charging process last sent. Where there is none (the
    command line, which may read while a server runs) the WAL is synced after the query, before
    its rows are returned: every frame the query saw is then on disk."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        db_path: str | Path | None = None,
        durable_seq: Callable[[], int | None] | None = None,
    ) -> None:
        path = db_path or getattr(store, "path", None)
        self._path = Path(path) if path is not None else None
        self._store = store
        if durable_seq is None:
            durable_seq = functools.partial(getattr, store, "durable_seq", None)
        self.durable_seq = durable_seq
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quotaflow-records-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    async def read(self, flt: RecordFilter, limit: int) -> list[dict[str, Any]]:
        assert limit > 0
        if self._path is None:
            return self._fallback(flt, limit)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.read_sync, flt, limit)

    async def last_seq(self) -> int:
        if self._path is None:
            return 0
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._last_seq_sync)

    def _fallback(self, flt: RecordFilter, limit: int) -> list[dict[str, Any]]:
        read = getattr(self._store, "read_records", None)
        if read is None:
            return []
        after = flt.after_seq
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            page: list[dict[str, Any]] = read(after, 1000)
            if not page:
                break
            out.extend(r for r in page if flt.matches(r))
            after = page[-1]["seq"]
        return out[:limit]

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            assert self._path is not None
            uri = f"file:{self._path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return self._db

    def read_sync(self, flt: RecordFilter, limit: int) -> list[dict[str, Any]]:
        """The query itself; public for the command line, which has no event loop to spare."""
        sql = ["SELECT body FROM cdr WHERE seq > ?"]
        params: list[Any] = [flt.after_seq]
        bound = self.durable_seq()
        if bound is not None:
            sql.append("AND seq <= ?")
            params.append(bound)
        if flt.subscriber_id is not None:
            sql.append("AND subscriber_id = ?")
            params.append(flt.subscriber_id)
        if flt.since_ms is not None:
            sql.append("AND at_ms >= ?")
            params.append(flt.since_ms)
        if flt.until_ms is not None:
            sql.append("AND at_ms < ?")
            params.append(flt.until_ms)
        for name in ("session_id", "kind"):
            value = getattr(flt, name)
            if value is not None:
                sql.append(f"AND {_IN_BODY[name]} = ?")
                params.append(value)
        sql.append("ORDER BY seq LIMIT ?")
        params.append(limit)
        try:
            rows = self._conn().execute(" ".join(sql), params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the store has not created it yet
                return []
            raise
        if bound is None and rows:
            self._sync_what_was_read()
        return [record_of(body) for (body,) in rows]

    def _last_seq_sync(self) -> int:
        bound = self.durable_seq()
        limit = 2**62 if bound is None else bound
        try:
            row = self._conn().execute("SELECT max(seq) FROM cdr WHERE seq <= ?", (limit,))
            last = int(row.fetchone()[0] or 0)
        except sqlite3.OperationalError:
            return 0
        if bound is None:
            self._sync_what_was_read()
        return last

    def _sync_what_was_read(self) -> None:
        """With no durable figure to stop at: sync the WAL, so that every frame a query just
        read is on disk before its rows are handed out (a running server commits before it
        syncs)."""
        assert self._path is not None
        sync_file(f"{self._path}-wal")
