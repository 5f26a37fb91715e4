"""Shared pools at scale: the engine's loop CPU per update for a family and a fleet, one run.

Each member has one data session on a group's pool under the reclaim policy; every session
reports twice. The family's cost is the ceiling a fleet should stay near: sizing a grant must
not add up the group's members on every request.

    .venv/bin/python bench/bench_pools.py [--fleet 2000] [--family 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from quotaflow.engine import Engine, ServiceRequest
from quotaflow.store import EmbeddedStore

MB = 1_000_000


async def loop_cpu_per_update_us(members: int, reports: int = 2) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp), snapshot_every_ops=10**12, sweep_interval_s=3600)
        await store.open()
        engine = Engine(store)
        for i in range(members):
            store.submit("create_subscriber", None, {"id": f"m{i}"})
        await store.flush()
        await engine.admin(
            "create_group",
            "g",
            {"group_id": "g", "owner": "m0", "policy": {"allocation": "reclaim"}},
        )
        for i in range(1, members):
            store.submit("add_member", None, {"group_id": "g", "subscriber_id": f"m{i}"})
        await store.flush()
        await engine.admin(
            "add_bucket",
            "pool",
            {"subscriber_id": "g", "bucket_id": "pool", "unit": "octets", "amount": 10**15},
        )
        await asyncio.gather(
            *(
                engine.session_start(f"x{i}", f"m{i}", 0, [ServiceRequest(10)])
                for i in range(members)
            )
        )
        started = time.thread_time()
        for n in range(1, reports + 1):
            await asyncio.gather(
                *(
                    engine.session_update(f"x{i}", n, [ServiceRequest(10, used_units=MB)])
                    for i in range(members)
                )
            )
        spent = time.thread_time() - started
        await store.close()
        return spent / (members * reports) * 1e6


async def main_async(args: argparse.Namespace) -> None:
    family = await loop_cpu_per_update_us(args.family, reports=max(2, 4000 // args.family))
    fleet = await loop_cpu_per_update_us(args.fleet)
    print("| group | loop CPU per update |")
    print("|---|---|")
    print(f"| family of {args.family} (ceiling) | {family:,.0f} us |")
    print(f"| fleet of {args.fleet:,} | {fleet:,.0f} us |")
    print(f"ratio family / fleet: {family / fleet:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fleet", type=int, default=2000)
    p.add_argument("--family", type=int, default=5)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
