"""Snapshots while serving: the event loop's worst stall, forked child against in place.

A store with N subscribers takes snapshots while debits are answered one after another; a
ticker measures how late the event loop runs. The same run measures the store serialising the
snapshot in place (the ceiling of what the fork avoids) and the figure is printed beside it.

    .venv/bin/python bench/bench_snapshot.py [--subscribers 200000] [--debits 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from quotaflow.store import EmbeddedStore


async def worst_stall_ms(subscribers: int, debits: int, fork: bool) -> tuple[float, float, int]:
    """Returns (worst loop stall ms, debits per second, snapshots taken)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(
            Path(tmp), snapshot_every_ops=10**12, sweep_interval_s=3600, fork_snapshots=fork
        )
        await store.open()
        for i in range(subscribers):
            if i % 20_000 == 0:
                await store.flush()
            store.submit("create_subscriber", None, {"id": f"s{i}"})
            store.submit(
                "topup", None, {"subscriber_id": f"s{i}", "unit": "octets", "amount": 10**9}
            )
        await store.flush()
        store.snapshot_every_ops = debits // 3
        commits = store.commits
        worst = 0.0
        running = True

        async def ticker() -> None:
            nonlocal worst
            while running:
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - started - 0.001)

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        for i in range(debits):
            await store.execute(
                "debit",
                f"d{i}",
                {"subscriber_id": f"s{i % subscribers}", "unit": "octets", "units": 1},
            )
        elapsed = time.perf_counter() - started
        running = False
        await task
        taken = store.snapshots_forked if fork else (store.commits - commits)
        store.snapshot_every_ops = 10**12
        await store.close()
        return worst * 1000, debits / elapsed, taken


async def main_async(args: argparse.Namespace) -> None:
    forked = await worst_stall_ms(args.subscribers, args.debits, True)
    inline = await worst_stall_ms(args.subscribers, args.debits, False)
    print(
        f"{args.subscribers:,} subscribers, {args.debits:,} debits, a snapshot due every "
        f"{args.debits // 3:,}"
    )
    print("| snapshot | worst event-loop stall | debits/s |")
    print("|---|---|---|")
    print(f"| forked child | {forked[0]:,.0f} ms | {forked[1]:,.0f} |")
    print(f"| in place (ceiling it avoids) | {inline[0]:,.0f} ms | {inline[1]:,.0f} |")
    print(f"stall ratio forked / in place: {forked[0] / max(inline[0], 1e-9):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--subscribers", type=int, default=200_000)
    p.add_argument("--debits", type=int, default=3000)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
