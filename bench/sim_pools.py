"""Shared-pool simulator: every allocation policy on the same seeded traffic, one table.

N members with heterogeneous usage (bursty video, steady background, idle) share one pool that
is smaller than their total demand. Each member has one data session; the simulated network
uses its grant at the member's demand rate and reports to the real engine (the same calls a Gy
or Nchf session makes, through the real durable store) when the grant is used up, when its
validity ends, or, after a report latency, when the engine asks for a re-authorisation.
Time is simulated; the store journals to SQLite as in production, each change before the next
(no group commit), so a seed gives one run.

Measures are those of shared/docs/SHARED-POOLS.md:
    overspent_units   units served beyond the pool (0 in strict mode)
    stranded_denials  refusals (or grants below the minimum) while the unused part of other
                      members' grants was at least the minimum grant; count and share
    msgs_per_gb       credit-control requests (+ answers to re-auths) per GB served
    served share      per member served/demanded: minimum, median, Jain's fairness index
    reclaim_msgs      re-auths sent for reclaim and the reports they caused
    pool_left, t_exhausted

    .venv/bin/python bench/sim_pools.py [--members 50] [--seconds 3600] [--seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quotaflow.engine import Engine, EngineEvent, GrantPolicy, ServiceRequest, ServiceResult
from quotaflow.store import EmbeddedStore

MB = 1_000_000
RG = 10
NO_CREDIT_RETRY_S = 30  # a refused member's device tries again after this long
POLICIES: dict[str, dict[str, Any]] = {
    "fixed": {"allocation": "fixed"},
    "progressive": {"allocation": "progressive"},
    "validity": {"allocation": "validity", "max_drift": 20 * MB},
    "predictive": {"allocation": "predictive", "horizon_s": 120},
    "reclaim": {
        "allocation": "reclaim",
        "retry_s": 2,
        "reclaim_wait_ms": 3000,
        "exhausted_retry_s": 3600,
    },
}


@dataclass
class Profile:
    kind: str
    rate: int  # octets/s while active
    on_s: tuple[int, int]
    off_s: tuple[int, int]


PROFILES = [
    Profile("video", 1_500_000, (60, 400), (200, 1500)),
    Profile("background", 15_000, (3600, 3600), (1, 1)),
    Profile("idle", 200_000, (5, 30), (900, 3600)),
]


def demand_trace(rng: random.Random, profile: Profile, seconds: int) -> list[int]:
    trace: list[int] = []
    on = rng.random() < 0.5
    while len(trace) < seconds:
        span = rng.randint(*(profile.on_s if on else profile.off_s))
        jitter = rng.uniform(0.6, 1.4)
        trace += [int(profile.rate * jitter) if on else 0] * span
        on = not on
    return trace[:seconds]


@dataclass
class Member:
    sid: str
    demand: list[int]
    grant_left: int = 0
    used_since_report: int = 0
    valid_until: int = 0
    next_try: int = 0  # when refused: when the device asks again
    reauth_at: int | None = None  # a re-auth arrived: report at this second
    request_number: int = 0
    started: bool = False
    pending: bool = False  # a request is out (maybe held by the engine while it reclaims)
    served: int = 0
    demanded: int = 0


@dataclass
class Result:
    policy: str
    overspent: int = 0
    stranded: int = 0
    requests: int = 0
    messages: int = 0
    reclaim_msgs: int = 0
    served: int = 0
    shares: list[float] = field(default_factory=list)
    pool_left: int = 0
    t_exhausted: int | None = None


class Simulation:
    def __init__(
        self, policy: str, traces: list[list[int]], pool_octets: int, data_dir: Path, latency_s: int
    ) -> None:
        self.policy = policy
        self.now_s = 0
        self.members = [Member(f"m{i}", t) for i, t in enumerate(traces)]
        self.by_id = {m.sid: m for m in self.members}
        self.pool_octets = pool_octets
        self.latency_s = latency_s
        # Each change is written before the engine goes on (no group commit), so the order of
        # requests, and the run, depend on the seed alone.
        self.store = EmbeddedStore(
            data_dir, clock=lambda: self.now_s * 1000, sweep_interval_s=3600, group_commit=False
        )
        self.engine = Engine(self.store, GrantPolicy(validity_s=600, grace_s=30))
        self.result = Result(policy)
        self.engine.subscribe(self._on_event)

    def _on_event(self, event: EngineEvent) -> None:
        if event.kind == "reauthorize" and event.detail.get("reclaim_for"):
            member = self.by_id.get(event.subscriber_id)
            if member is not None and member.reauth_at is None:
                member.reauth_at = self.now_s + self.latency_s
                self.result.messages += 1  # the RAA / notify answer
                self.result.reclaim_msgs += 2  # the re-auth and the report it causes

    async def setup(self) -> None:
        await self.store.open()
        admin = self.engine.admin
        for m in self.members:
            await admin("create_subscriber", f"c-{m.sid}", {"id": m.sid})
        await admin(
            "create_group", "g", {"group_id": "g", "owner": "m0", "policy": POLICIES[self.policy]}
        )
        for m in self.members[1:]:
            await admin("add_member", f"a-{m.sid}", {"group_id": "g", "subscriber_id": m.sid})
        await admin(
            "add_bucket",
            "pool",
            {
                "subscriber_id": "g",
                "bucket_id": "pool",
                "unit": "octets",
                "amount": self.pool_octets,
            },
        )

    def unused_elsewhere(self, member: Member) -> int:
        return sum(m.grant_left for m in self.members if m is not member)

    async def report(self, m: Member) -> None:
        m.pending = True
        try:
            await self._report(m)
        finally:
            m.pending = False

    async def _report(self, m: Member) -> None:
        minimum = self.engine.policy.limits[ServiceRequest(RG).unit].min_units
        want = ServiceRequest(RG, used_units=m.used_since_report)
        if not m.started:
            answer = await self.engine.session_start(
                m.sid, m.sid, 0, [want], meta={"interface": "sim"}
            )
            m.started = True
        else:
            m.request_number += 1
            answer = await self.engine.session_update(m.sid, m.request_number, [want])
        self.result.messages += 1
        self.result.requests += 1
        m.used_since_report = 0
        service = answer.services[0]
        m.grant_left = service.granted_units
        m.valid_until = self.now_s + service.validity_s
        m.reauth_at = None
        if service.result in (ServiceResult.NO_CREDIT, ServiceResult.RETRY) or (
            service.granted_units < minimum and m.demand[self.now_s] > 0
        ):
            if self.unused_elsewhere(m) >= minimum:
                self.result.stranded += 1
            if service.result is ServiceResult.RETRY:
                m.next_try = self.now_s + service.validity_s
            elif service.result is ServiceResult.NO_CREDIT:
                m.next_try = self.now_s + NO_CREDIT_RETRY_S
        if self.result.t_exhausted is None and self.store.pool_available("g", "octets") == 0:
            self.result.t_exhausted = self.now_s

    async def _settle(self, tasks: set[asyncio.Task[None]]) -> None:
        """Run the requests in flight until each is answered or held by the engine."""
        while True:
            for task in [t for t in tasks if t.done()]:
                tasks.discard(task)
                task.result()
            if len(tasks) <= self.engine.pool_waiters:
                return
            await asyncio.sleep(0.0002)

    async def run(self, seconds: int) -> Result:
        await self.setup()
        tasks: set[asyncio.Task[None]] = set()
        for m in self.members:
            await self.report(m)
        for self.now_s in range(seconds):
            self.engine._pool_moved("g")  # a tick: held answers look at the clock again
            for m in self.members:
                d = m.demand[self.now_s]
                m.demanded += d
                if m.pending:
                    continue  # no quota while its request is out
                use = min(d, m.grant_left)
                m.grant_left -= use
                m.used_since_report += use
                m.served += use
                due = (
                    (m.reauth_at is not None and self.now_s >= m.reauth_at)
                    or (m.grant_left == 0 and d > use and self.now_s >= m.next_try)
                    or (self.now_s >= m.valid_until and (m.grant_left or m.used_since_report))
                )
                if due:
                    m.grant_left = 0  # a report hands back what is left of the grant
                    tasks.add(asyncio.get_running_loop().create_task(self.report(m)))
                    # One request at a time (or until the engine holds it), so the order in
                    # which the store's group commits complete cannot change the run.
                    await self._settle(tasks)
            await self._settle(tasks)
        self.engine._pool_moved("g")
        await asyncio.gather(*tasks)
        r = self.result
        r.served = sum(m.served for m in self.members)
        r.overspent = max(0, r.served - self.pool_octets)
        r.shares = [m.served / m.demanded for m in self.members if m.demanded]
        r.pool_left = self.store.pool_available("g", "octets") + sum(
            m.grant_left for m in self.members
        )
        self.store.ledger.check_invariants()
        await self.store.close()
        return r


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if values else 0.0


async def main_async(args: argparse.Namespace) -> list[Result]:
    rng = random.Random(args.seed)
    traces = [
        demand_trace(rng, PROFILES[i % len(PROFILES)], args.seconds) for i in range(args.members)
    ]
    demand = sum(sum(t) for t in traces)
    pool = int(demand * args.pool_share)
    print(
        f"{args.members} members, {args.seconds} s, demand {demand / 1e9:.2f} GB, "
        f"pool {pool / 1e9:.2f} GB ({args.pool_share:.0%}), seed {args.seed}, "
        f"report latency {args.latency_s} s"
    )
    results = []
    base = os.environ.get("BENCH_DIR") or ("/dev/shm" if Path("/dev/shm").is_dir() else None)
    for name in args.policies.split(","):
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            results.append(
                await Simulation(name, traces, pool, Path(tmp), args.latency_s).run(args.seconds)
            )
    return results


def table(results: list[Result]) -> str:
    fixed = next((r for r in results if r.policy == "fixed"), results[0])
    fixed_mpg = fixed.messages / max(fixed.served / 1e9, 1e-9)
    lines = [
        "| policy | overspent | stranded denials | msgs/GB | vs fixed | served share min / "
        "median / Jain | reclaim msgs | pool left | exhausted at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mpg = r.messages / max(r.served / 1e9, 1e-9)
        share = r.stranded / max(r.requests, 1)
        lines.append(
            f"| {r.policy} | {r.overspent} | {r.stranded} ({share:.1%} of {r.requests}) | "
            f"{mpg:,.0f} | {mpg / fixed_mpg:.2f} | {min(r.shares):.2f} / "
            f"{statistics.median(r.shares):.2f} / {jain(r.shares):.2f} | {r.reclaim_msgs} | "
            f"{r.pool_left / MB:,.0f} MB | "
            f"{'-' if r.t_exhausted is None else f'{r.t_exhausted} s'} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--seconds", type=int, default=3600)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--pool-share", type=float, default=0.6, help="pool / total demand")
    p.add_argument("--latency-s", type=int, default=1, help="report latency after a re-auth")
    p.add_argument("--policies", default=",".join(POLICIES))
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
