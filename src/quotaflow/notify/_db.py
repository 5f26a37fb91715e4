"""The notify service's own SQLite file: what would break a promise if it were lost.

Subscriptions, thresholds, fired threshold states, dead letters, who is out of credit and
pending choice offers. Writes are rare (API calls, threshold crossings, failed deliveries) and
run on a private thread, so the event loop never waits for an fsync.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS thresholds (id TEXT PRIMARY KEY, body BLOB NOT NULL);
-- Only targets that are not "ok" are kept: low, exhausted, or an expiry already announced.
CREATE TABLE IF NOT EXISTS threshold_state (
    threshold_id TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (threshold_id, target)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id TEXT NOT NULL,
    subscriber_id TEXT NOT NULL,
    event BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS out_of_credit (subscriber_id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS choices (subscriber_id TEXT PRIMARY KEY, body BLOB NOT NULL);
"""
KEYED_TABLES = {"subscriptions": "id", "thresholds": "id", "out_of_credit": "subscriber_id"}
KEYED_TABLES["choices"] = "subscriber_id"


class NotifyDb:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quotaflow-notify-db")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        self._db = db

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "notify db is closed"
        return self._db

    # ------------------------------------------------------------------ keyed documents

    async def put(self, table: str, key: str, body: dict[str, Any]) -> None:
        column = KEYED_TABLES[table]
        sql = f"INSERT OR REPLACE INTO {table} ({column}, body) VALUES (?, ?)"
        await self._run(self._exec, sql, (key, orjson.dumps(body)))

    async def delete(self, table: str, key: str) -> bool:
        column = KEYED_TABLES[table]
        changed: int = await self._run(
            self._exec, f"DELETE FROM {table} WHERE {column} = ?", (key,)
        )
        return changed > 0

    async def all(self, table: str) -> dict[str, dict[str, Any]]:
        column = KEYED_TABLES[table]
        rows = await self._run(self._query, f"SELECT {column}, body FROM {table}", ())
        return {key: orjson.loads(body) for key, body in rows}

    def _exec(self, sql: str, params: tuple[Any, ...]) -> int:
        return self._conn().execute(sql, params).rowcount

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._conn().execute(sql, params).fetchall()

    # ------------------------------------------------------------------ threshold states

    async def set_state(self, threshold_id: str, target: str, state: str | None) -> None:
        if state is None:
            sql = "DELETE FROM threshold_state WHERE threshold_id = ? AND target = ?"
            await self._run(self._exec, sql, (threshold_id, target))
        else:
            sql = "INSERT OR REPLACE INTO threshold_state VALUES (?, ?, ?)"
            await self._run(self._exec, sql, (threshold_id, target, state))

    async def states(self) -> dict[tuple[str, str], str]:
        rows = await self._run(
            self._query, "SELECT threshold_id, target, state FROM threshold_state", ()
        )
        return {(t, target): s for t, target, s in rows}

    async def drop_states(self, threshold_id: str) -> None:
        await self._run(
            self._exec, "DELETE FROM threshold_state WHERE threshold_id = ?", (threshold_id,)
        )

    # ------------------------------------------------------------------ dead letters

    async def add_dead_letter(
        self,
        subscription_id: str,
        subscriber_id: str,
        event: dict[str, Any],
        attempts: int,
        error: str,
        at_ms: int,
    ) -> int:
        sql = (
            "INSERT INTO dead_letters (subscription_id, subscriber_id, event, attempts, error, "
            "at_ms) VALUES (?, ?, ?, ?, ?, ?)"
        )
        params = (subscription_id, subscriber_id, orjson.dumps(event), attempts, error, at_ms)
        row_id: int = await self._run(self._insert, sql, params)
        return row_id

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        return int(self._conn().execute(sql, params).lastrowid or 0)

    async def dead_letters(
        self, subscription_id: str | None, after_id: int, limit: int
    ) -> list[dict[str, Any]]:
        sql = "SELECT id, subscription_id, subscriber_id, event, attempts, error, at_ms "
        sql += "FROM dead_letters WHERE id > ?"
        params: list[Any] = [after_id]
        if subscription_id is not None:
            sql += " AND subscription_id = ?"
            params.append(subscription_id)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        rows = await self._run(self._query, sql, tuple(params))
        return [
            {
                "id": r[0],
                "subscription_id": r[1],
                "subscriber_id": r[2],
                "event": orjson.loads(r[3]),
                "attempts": r[4],
                "error": r[5],
                "at_ms": r[6],
            }
            for r in rows
        ]

    async def dead_letter(self, letter_id: int) -> dict[str, Any] | None:
        found = await self.dead_letters(None, letter_id - 1, 1)
        return found[0] if found and found[0]["id"] == letter_id else None

    async def delete_dead_letter(self, letter_id: int) -> bool:
        changed: int = await self._run(
            self._exec, "DELETE FROM dead_letters WHERE id = ?", (letter_id,)
        )
        return changed > 0

    async def count_dead_letters(self) -> int:
        rows = await self._run(self._query, "SELECT count(*) FROM dead_letters", ())
        return int(rows[0][0])

    async def prune_dead_letters(self, keep: int) -> None:
        """Keep the newest `keep` dead letters (a bound on the table)."""
        sql = "DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?"
        await self._run(self._exec, sql, (keep,))
