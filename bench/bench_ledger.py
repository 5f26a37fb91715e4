"""Durable ledger throughput: reserve+commit pairs through the embedded store.

Prints the store's ops/s next to the ceiling of a bare SQLite group-commit loop writing rows of
the same size in the same batches (WAL, synchronous=FULL), measured in the same run, and the
ratio. Every operation is acknowledged only after its batch committed.

    .venv/bin/python bench/bench_ledger.py [--pairs 200000] [--inflight 2000] [--no-op-ids]

`--no-op-ids` sends every operation without an operation id: nothing to fingerprint, nothing
kept for repeats. Not how the engine uses the ledger (every charge carries an id); it shows what
the idempotency table costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from quotaflow.store import EmbeddedStore

SUBSCRIBERS = 10_000


async def bench_store(
    data_dir: Path, pairs: int, inflight: int, op_ids: bool = True
) -> tuple[float, float, int]:
    """Returns (ops/s, mean rows per commit, journal row bytes)."""
    store = EmbeddedStore(data_dir, snapshot_every_ops=10**12)
    await store.open()
    for i in range(SUBSCRIBERS):
        store.submit("create_subscriber", f"c{i}", {"id": f"s{i}"})
        store.submit(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**15}
        )
    await store.flush()
    commits0, rows0 = store.commits, store.committed_rows
    submit = store.submit
    started = time.perf_counter()
    # Clients with up to `inflight` operations unanswered: the answers of each window of
    # `window` operations are released by its barrier; the oldest window is awaited before
    # more than `inflight` are outstanding, so the next window fills while one commits. The
    # client yields to the loop after each window.
    window = max(2, inflight // 4)
    windows: deque[asyncio.Future[None]] = deque()
    in_window = 0
    for i in range(pairs):
        sid = f"s{i % SUBSCRIBERS}"
        rid = f"r{i}"
        submit(
            "reserve",
            f"a{i}" if op_ids else None,
            {
                "subscriber_id": sid,
                "reservation_id": rid,
                "unit": "octets",
                "rating_group": 10,
                "units_max": 1_000_000,
                "validity_ms": 60_000,
            },
        )
        _, barrier = submit(
            "commit",
            f"b{i}" if op_ids else None,
            {"subscriber_id": sid, "reservation_id": rid, "used_units": 700_000},
        )
        in_window += 2
        if in_window >= window and barrier is not None:
            windows.append(barrier)
            in_window = 0
            # Many clients share the loop: let the commit machinery run between windows, as it
            # would between requests arriving from sockets (the group commit's completion and
            # the next batch's start are callbacks on this loop).
            await asyncio.sleep(0)
            while len(windows) * window > inflight - window:
                await windows.popleft()
    await store.flush()
    elapsed = time.perf_counter() - started
    commits = store.commits - commits0
    rows = store.committed_rows - rows0
    assert store._db is not None
    total_bytes, first, last = store._db.execute(
        "SELECT sum(length(records)), min(first_seq), max(last_seq) FROM journal"
    ).fetchone()
    row_bytes = total_bytes // (last - first + 1)
    store.ledger.check_invariants()
    await store.close()
    return 2 * pairs / elapsed, rows / max(commits, 1), row_bytes


def bench_sqlite_ceiling(path: Path, rows_total: int, batch: int, row_bytes: int) -> float:
    """A bare group-commit loop: one row per record, the same record size and batch size."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE journal (seq INTEGER PRIMARY KEY, op TEXT NOT NULL, op_id TEXT, "
        "args BLOB NOT NULL, now_ms INTEGER NOT NULL, refused INTEGER NOT NULL DEFAULT 0)"
    )
    payload = b"x" * row_bytes
    started = time.perf_counter()
    seq = 0
    while seq < rows_total:
        rows = [(seq + k, "reserve", f"a{seq + k}", payload, 1, 0) for k in range(batch)]
        seq += batch
        db.execute("BEGIN")
        db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return rows_total / elapsed


def bench_blob_ceiling(path: Path, rows_total: int, batch: int, row_bytes: int) -> float:
    """The store's own write pattern with nothing else: one pre-encoded blob per commit."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE journal (last_seq INTEGER PRIMARY KEY, first_seq INTEGER, records BLOB)"
    )
    blob = b"x" * (row_bytes * batch)
    started = time.perf_counter()
    seq = 0
    while seq < rows_total:
        db.execute("BEGIN")
        db.execute("INSERT INTO journal VALUES (?, ?, ?)", (seq + batch, seq + 1, blob))
        db.execute("COMMIT")
        seq += batch
    elapsed = time.perf_counter() - started
    db.close()
    return rows_total / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=200_000)
    p.add_argument("--inflight", type=int, default=2_000, help="most ops unanswered at once")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--no-op-ids", action="store_true", help="operations without ids (see the docstring)"
    )
    args = p.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    store_rates, ceilings, blob_ceilings = [], [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            rate, per_commit, row_bytes = runner(
                bench_store(Path(tmp), args.pairs, args.inflight, not args.no_op_ids)
            )
            batch = max(1, round(per_commit))
            ceiling = bench_sqlite_ceiling(
                Path(tmp) / "bare.sqlite3", 2 * args.pairs, batch, row_bytes
            )
            blob = bench_blob_ceiling(Path(tmp) / "blob.sqlite3", 2 * args.pairs, batch, row_bytes)
        store_rates.append(rate)
        ceilings.append(ceiling)
        blob_ceilings.append(blob)
        print(
            f"run: store {rate:,.0f} ops/s ({per_commit:,.0f} records/commit, {row_bytes} B "
            f"each); bare row-per-record group commit {ceiling:,.0f} rows/s (ratio "
            f"{rate / ceiling:.2f}); bare blob-per-commit {blob:,.0f} records/s",
            file=sys.stderr,
        )
    rate = statistics.median(store_rates)
    ceiling = statistics.median(ceilings)
    blob = statistics.median(blob_ceilings)
    # The ratio is the median of each run's own ratio: a run measures the store and then its
    # ceilings within seconds, while this host's speed drifts by 10-20% over a minute.
    ratio = statistics.median(r / c for r, c in zip(store_rates, ceilings, strict=True))
    blob_ratio = statistics.median(r / c for r, c in zip(store_rates, blob_ceilings, strict=True))
    print("| benchmark | figure (median) | ceiling (same runs, median) | ratio (median of runs) |")
    print("|---|---|---|---|")
    print(
        f"| durable reserve+commit (embedded store) | {rate:,.0f} ops/s | "
        f"{ceiling:,.0f} rows/s bare SQLite group commit, a row per record | {ratio:.2f} |"
    )
    print(
        f"| (same) | {rate:,.0f} ops/s | {blob:,.0f} records/s bare SQLite writing the store's "
        f"own batch blobs | {blob_ratio:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
