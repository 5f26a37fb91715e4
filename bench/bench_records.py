"""Charging records and notifications: what the chain, the signature and the listener cost.

1. Export: chained JSON lines (and CSV) written by ChainWriter in batches of 5,000, fsync per
   batch, manifest signed at each rotation; next to it the ceiling measured in the same run:
   the same records as plain orjson lines to a file, same batches, same fsyncs.
2. Verify: records/s checked by `verify` (signature, per-record digests, chain).
3. Charging with notify: direct debits/s on the real embedded store with the notify service
   subscribed (a threshold on every subscriber, so every debit is evaluated) against the same
   run without it; the ratio is what notifications cost the charging path.

    .venv/bin/python bench/bench_records.py [--records 200000] [--debits 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from quotaflow import notify
from quotaflow.engine import Engine
from quotaflow.ledger import Unit
from quotaflow.records import ChainWriter, Rotation, load_or_create_key, verify
from quotaflow.store import EmbeddedStore

BATCH = 5000


def record(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "at_ms": 1_800_000_000_000 + seq,
        "op": "charge",
        "kind": "session",
        "interface": "gy",
        "session_id": f"sess-{seq % 5000}",
        "request_number": seq % 40,
        "interval_start_ms": 1_800_000_000_000 + seq - 300_000,
        "input_octets": 1200 * seq % 9_999_999,
        "output_octets": 5400 * seq % 99_999_999,
        "final": False,
        "cause": None,
        "subscriber_id": f"sub-{seq % 100_000}",
        "identities": {"msisdn": f"4670{seq % 100_000:07d}", "imsi": f"00101{seq:010d}"},
        "unit": "octets",
        "rating_group": 10,
        "used_units": 6_600_000,
        "posted_units": 6_600_000,
        "unpaid_units": 0,
        "drawn": {"main-octets": 6_600_000},
        "cost_micros": 0,
    }


def plain(path: Path, batches: list[list[dict[str, Any]]]) -> float:
    started = time.perf_counter()
    with open(path, "ab") as f:
        for batch in batches:
            f.write(b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in batch))
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - started


def chained(folder: Path, fmt: str, batches: list[list[dict[str, Any]]]) -> float:
    key = load_or_create_key(folder / "keys")
    w = ChainWriter(folder / fmt, fmt, key, Rotation(records_max=50_000))
    w.recover()
    started = time.perf_counter()
    for batch in batches:
        w.append(batch)
    w.seal()
    return time.perf_counter() - started


async def charging(folder: Path, debits: int, with_notify: bool) -> float:
    store = EmbeddedStore(folder, tune_gc=False)
    await store.open()
    engine = Engine(store)
    service = None
    if with_notify:
        service = await notify.start(engine, store, folder, notify.NotifyOptions())
        await service.add_threshold(
            notify.Threshold.from_json({"unit": "octets", "below_units": 1000})
        )
    subs = 100
    for i in range(subs):
        await engine.admin("create_subscriber", f"c{i}", {"id": f"s{i}"})
        await engine.admin(
            "topup", f"t{i}", {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**12}
        )
    window = 64  # concurrent requests, so group commit batches them as in a server
    started = time.perf_counter()

    async def worker(w: int) -> None:
        for i in range(w, debits, window):
            await engine.direct_debit(f"d{i}", f"s{i % subs}", Unit.OCTETS, 1000, None)

    await asyncio.gather(*(worker(w) for w in range(window)))
    elapsed = time.perf_counter() - started
    if service is not None:
        await service.drained()
        await service()
    await store.close()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--debits", type=int, default=20_000)
    args = p.parse_args()
    n = args.records
    batches = [[record(s) for s in range(i, min(i + BATCH, n + 1))] for i in range(1, n + 1, BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ceiling = n / plain(folder / "plain.jsonl", batches)
        print(f"plain JSON lines, fsync per {BATCH} (ceiling): {ceiling:,.0f} records/s")
        for fmt in ("jsonl", "csv"):
            rate = n / chained(folder, fmt, batches)
            print(
                f"chained {fmt}, signed manifests:           {rate:,.0f} records/s "
                f"(ratio {rate / ceiling:.2f})"
            )
        key = load_or_create_key(folder / "keys").public_key()
        started = time.perf_counter()
        report = verify(folder / "jsonl", key)
        assert report.ok and report.records == n
        print(
            f"verify jsonl:                              "
            f"{n / (time.perf_counter() - started):,.0f} records/s"
        )
        off = args.debits / asyncio.run(charging(folder / "off", args.debits, False))
        on = args.debits / asyncio.run(charging(folder / "on", args.debits, True))
        print(f"direct debits without notify:              {off:,.0f} ops/s")
        print(f"direct debits with notify (threshold/all): {on:,.0f} ops/s (ratio {on / off:.2f})")


if __name__ == "__main__":
    main()
