"""`quotaflow demo`: a guided tour on an in-process engine with a real durable store."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from quotaflow.engine import Engine, ServiceRequest, SessionAnswer
from quotaflow.ledger import NoCredit, Unit
from quotaflow.store import EmbeddedStore

MB = 1_000_000


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def _show(label: str, answer: SessionAnswer) -> None:
    for s in answer.services:
        _say(
            f"  {label}: rating group {s.rating_group}: {s.result.value}, granted "
            f"{s.granted_units / MB:.1f} MB for {s.validity_s} s, "
            f"charged {s.posted_units / MB:.1f} MB"
        )


async def run_demo(data_dir: Path | None) -> int:
    folder = data_dir or Path(tempfile.mkdtemp(prefix="quotaflow-demo-"))
    # Simulated time, five minutes between reports, so grant sizing sees realistic rates.
    clock_ms = [1_800_000_000_000]

    def clock() -> int:
        clock_ms[0] += 300_000
        return clock_ms[0]

    store = EmbeddedStore(folder, clock=clock)
    await store.open()
    engine = Engine(store)
    try:
        _say(f"ledger journal: {store.path}")
        for sid, msisdn, mb in (("alice", "46700000001", 50), ("bob", "46700000002", 12)):
            await engine.admin("create_subscriber", f"demo:{sid}", {"id": sid, "msisdn": msisdn})
            await engine.admin(
                "topup",
                f"demo:topup:{sid}",
                {"subscriber_id": sid, "unit": "octets", "amount": mb * MB},
            )
            _say(f"provisioned {sid} ({msisdn}) with {mb} MB")
        await engine.admin(
            "add_bucket",
            "demo:promo",
            {
                "subscriber_id": "alice",
                "bucket_id": "video-pass",
                "unit": "octets",
                "amount": 20 * MB,
                "rating_groups": [20],
                "origin": "promotion",
            },
        )
        _say("alice also has a 20 MB video pass that pays only for rating group 20")

        _say("\nalice opens a data session with web (RG 10) and video (RG 20):")
        a = await engine.session_start(
            "demo-s1", "alice", 0, [ServiceRequest(10), ServiceRequest(20)]
        )
        _show("initial", a)
        a = await engine.session_update(
            "demo-s1",
            1,
            [ServiceRequest(10, used_units=8 * MB), ServiceRequest(20, used_units=10 * MB)],
        )
        _show("update ", a)
        again = await engine.session_update(
            "demo-s1",
            1,
            [ServiceRequest(10, used_units=8 * MB), ServiceRequest(20, used_units=10 * MB)],
        )
        _say(f"  the same update retransmitted is answered alike: {again == a}")
        a = await engine.session_terminate(
            "demo-s1",
            2,
            [ServiceRequest(10, used_units=2 * MB), ServiceRequest(20, used_units=5 * MB)],
        )
        _show("final  ", a)

        _say("\nbob streams until his 12 MB run out:")
        b = await engine.session_start("demo-s2", "bob", 0, [ServiceRequest(10)])
        _show("initial", b)
        n = 1
        while b.services[0].granted_units:
            b = await engine.session_update(
                "demo-s2", n, [ServiceRequest(10, used_units=b.services[0].granted_units)]
            )
            _show(f"update {n}", b)
            n += 1
        await engine.session_terminate("demo-s2", n, [ServiceRequest(10)])
        try:
            await engine.direct_debit("demo:sms", "bob", Unit.EVENTS, 1, None)
        except NoCredit as exc:
            _say(f"  bob's SMS is refused: {exc.code}")
        for sid in ("alice", "bob"):
            sub = await store.get_subscriber(sid)
            left = sum(b.available for b in sub.buckets.values() if b.unit is Unit.OCTETS)
            _say(f"{sid} has {left / MB:.1f} MB left")
        store.ledger.check_invariants()
        _say("conservation holds for every subscriber.")
    finally:
        await store.close()
    return 0
