"""How long the record exporter holds the event loop while it catches up on a backlog.

5,000 debits are charged first; then the exporter starts (JSON lines and CSV) while a ticker on
the same loop sleeps 1 ms at a time and records how late it wakes. The figure is the worst
lateness, printed beside CPython's thread switch interval: the longest any interpreted thread
may keep the GIL from the loop's thread once the loop asks for it (the ceiling of what a
well-behaved background thread can cause).

The exporter runs in a process of its own by default, so the loop then waits only for the
identity look-ups it answers; `--in-process` runs it on a thread of this process instead.

    .venv/bin/python bench/bench_export_lag.py [--records 5000] [--runs 3] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from quotaflow import records
from quotaflow.engine import Engine
from quotaflow.ledger import Unit
from quotaflow.records import RecordOptions
from quotaflow.store import EmbeddedStore


async def one_run(data: Path, count: int, process: bool) -> tuple[float, float, float]:
    """(worst lateness s, p99 lateness s, export seconds)."""
    store = EmbeddedStore(data, tune_gc=False)
    await store.open()
    engine = Engine(store)
    await engine.admin("create_subscriber", "c", {"id": "alice", "msisdn": "46700"})
    await engine.admin("topup", "t", {"subscriber_id": "alice", "unit": "octets", "amount": 10**12})
    for i in range(count):
        await engine.direct_debit(f"d{i}", "alice", Unit.OCTETS, 1000, None)
    last = store.read_records(0, 10**6)[-1]["seq"]
    lateness: list[float] = []
    ticking = True

    async def ticker() -> None:
        while ticking:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lateness.append(time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    service = await records.start(
        engine, store, data, RecordOptions(formats=("jsonl", "csv"), process=process)
    )
    assert service.exporter is not None
    while service.exporter.position < last:
        await asyncio.sleep(0.005)
    took = time.perf_counter() - started
    ticking = False
    await tick
    await service()
    await store.close()
    lateness.sort()
    return lateness[-1], lateness[int(len(lateness) * 0.99)], took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--in-process", action="store_true", help="export on a thread, not a process")
    args = p.parse_args()
    worst, p99s = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            w, p99, took = asyncio.run(one_run(Path(tmp), args.records, not args.in_process))
        worst.append(w)
        p99s.append(p99)
        print(
            f"run: {args.records} records exported in {took * 1000:.0f} ms; loop lateness "
            f"worst {w * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms",
            file=sys.stderr,
        )
    switch_ms = sys.getswitchinterval() * 1000
    where = "on a thread" if args.in_process else "in its own process"
    w_ms = statistics.median(worst) * 1000
    print("| benchmark | figure | ceiling (same run) | ratio |")
    print("|---|---|---|---|")
    print(
        f"| event loop held by the exporter ({where}) catching up on {args.records} records | "
        f"worst lateness {w_ms:.1f} ms (p99 {statistics.median(p99s) * 1000:.1f} ms) | "
        f"{switch_ms:.1f} ms thread switch interval | {w_ms / switch_ms:.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
