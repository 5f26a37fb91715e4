"""Property-based: random operation sequences, with expiry, retries and restarts, conserve credit.

The machine drives the real embedded store (SQLite journal, snapshots) and keeps its own
account of what went in and out, from the answers it was given. After every step, for each
subscriber and unit:
    held in buckets (available + reserved) + consumed + debited + transferred out + expired
      == credited (initial + top-ups) + refunded + transferred in
and no bucket is negative. A restart is either a crash (journal replay) or a clean stop
(snapshot), and must change nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from quotaflow.ledger import ChargingError
from quotaflow.store import EmbeddedStore
from tests.core.harness import crash

SUBS = ["a", "b", "c"]
RGS = [None, 10, 20]
PRICE = {"price_micros": 7, "per_units": 3}
PATTERN = {
    "price_micros": 7,
    "per_units": 3,
    "first_units": 5,
    "next_units": 2,
    "connect_micros": 4,
}


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="qf-prop-"))
        self.now = 1_000_000
        self.n = 0
        self.credited: dict[tuple[str, str], int] = {}
        self.consumed: dict[tuple[str, str], int] = {}
        self.open: list[tuple[str, str]] = []
        self.transfers: list[str] = []
        self.vouchers: list[str] = []
        self.held: list[str] = []
        self.history: list[tuple[str, str, dict[str, Any], Any, int]] = []
        self.store = self._open()

    def _open(self) -> EmbeddedStore:
        store = EmbeddedStore(
            self.dir, clock=lambda: self.now, snapshot_every_ops=7, sweep_interval_s=3600
        )
        self.loop.run_until_complete(store.open())
        return store

    def teardown(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _op(self, op: str, args: dict[str, Any], op_id: str | None = None) -> Any:
        self.n += 1
        op_id = op_id or f"op{self.n}"
        try:
            result = self.loop.run_until_complete(self.store.execute(op, op_id, args))
        except ChargingError:
            return None
        self.history.append((op, op_id, args, result, self.now))
        return result

    def _add(self, table: dict[tuple[str, str], int], sub: str, unit: str, amount: int) -> None:
        table[(sub, unit)] = table.get((sub, unit), 0) + amount

    def _count_drawn(self, sub: str, drawn: dict[str, int]) -> None:
        """Count what was drawn; keys of another account's buckets are "account/bucket"."""
        for key, amount in drawn.items():
            owner, _, bucket_id = key.rpartition("/")
            account = owner or sub
            unit = self.store.ledger.subscribers[account].buckets[bucket_id].unit.value
            self._add(self.consumed, account, unit, amount)

    @initialize()
    def subscribers(self) -> None:
        for sid in SUBS:
            assert self._op("create_subscriber", {"id": sid, "msisdn": f"m-{sid}"})
            for session in ("s1", "s2"):
                opened = self._op(
                    "session_open", {"session_id": f"{session}-{sid}", "subscriber_id": sid}
                )
                assert opened
        # a and b share the pool of group g; b may take at most 150 octets from it per period.
        group = {
            "group_id": "g",
            "owner": "a",
            "period": "daily",
            "restrict_below": {"octets": 40},
            "protected_priority": 0,
            "mode": "soft",  # b may overspend the pool by 50 octets, repaid by top-ups first
            "soft_overspend_max": {"octets": 50},
        }
        assert self._op("create_group", group)
        self._add(self.credited, "g", "octets", 50)  # the credit line is the pool's to spend
        providers = [{"id": "a", "limit": {"octets": 120}}, {"id": "b", "limit": {"octets": 60}}]
        assert self._op("set_providers", {"subscriber_id": "c", "providers": providers})
        offer = {
            "offer_id": "o1",
            "network": "home",
            "unit": "octets",
            "block_units": 20,
            "price_micros": 5,
            "blocks": 30,
        }
        assert self._op("create_offer", offer)
        self._add(self.credited, "network:home", "octets", 600)
        assert self._op("set_postpaid", {"subscriber_id": "a", "credit_limit_micros": 100})
        self._add(self.credited, "a", "money", 100)
        assert self._op(
            "add_member",
            {"group_id": "g", "subscriber_id": "b", "priority": 1, "caps": {"octets": 150}},
        )

    @rule(
        sub=st.sampled_from([*SUBS, "g"]),
        unit=st.sampled_from(["octets", "money"]),
        amount=st.integers(1, 500),
        rg=st.sampled_from([[], [10], [10, 20]]),
        life=st.one_of(st.none(), st.integers(1, 50)),
    )
    def add_bucket(self, sub: str, unit: str, amount: int, rg: list[int], life: int | None) -> None:
        self.n += 1
        args = {
            "subscriber_id": sub,
            "bucket_id": f"bk{self.n}",
            "unit": unit,
            "amount": amount,
            "rating_groups": rg,
            "expires_at_ms": None if life is None else self.now + life,
        }
        if self._op("add_bucket", args):
            self._add(self.credited, sub, unit, amount)

    @rule(sub=st.sampled_from([*SUBS, "g"]), amount=st.integers(1, 300))
    def topup(self, sub: str, amount: int) -> None:
        if self._op("topup", {"subscriber_id": sub, "unit": "octets", "amount": amount}):
            self._add(self.credited, sub, "octets", amount)

    @rule(
        sub=st.sampled_from(SUBS),
        rg=st.sampled_from(RGS),
        units=st.integers(1, 400),
        priced=st.booleans(),
        validity=st.integers(1, 40),
    )
    def reserve(self, sub: str, rg: int | None, units: int, priced: bool, validity: int) -> None:
        rid = f"res{self.n}"
        result = self._op(
            "reserve",
            {
                "subscriber_id": sub,
                "reservation_id": rid,
                "unit": "octets",
                "rating_group": rg,
                "units_max": units,
                "validity_ms": validity,
                "price": PRICE if priced else None,
            },
        )
        if result:
            assert 0 < result["units"] <= units
            self.open.append((sub, rid))

    @precondition(lambda self: self.open)
    @rule(data=st.data(), used=st.integers(0, 500))
    def commit(self, data: st.DataObject, used: int) -> None:
        sub, rid = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        result = self._op(
            "commit", {"subscriber_id": sub, "reservation_id": rid, "used_units": used}
        )
        if result:
            assert result["posted_units"] <= used
            self._count_drawn(sub, result["drawn"])

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        sub, rid = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        self._op("release", {"subscriber_id": sub, "reservation_id": rid})

    @rule(
        sub=st.sampled_from(SUBS),
        rg=st.sampled_from(RGS),
        used=st.integers(0, 300),
        units=st.integers(1, 300),
        session=st.sampled_from(["s1", "s2"]),
        price=st.sampled_from([PRICE, PATTERN]),
        payer=st.sampled_from([None, *SUBS]),
        skip_pool=st.booleans(),
    )
    def charge(
        self,
        sub: str,
        rg: int | None,
        used: int,
        units: int,
        session: str,
        price: dict[str, int],
        payer: str | None,
        skip_pool: bool,
    ) -> None:
        sid = f"{session}-{sub}"
        result = self._op(
            "charge",
            {
                "subscriber_id": sub,
                "unit": "octets",
                "rating_group": rg,
                "used_units": used,
                "reservation_id": f"{sid}#{rg}",
                "price": price,
                "session_id": sid,
                "payer": payer if payer != sub else None,
                "reserve": {"units_max": units, "validity_ms": 20, "skip_pool": skip_pool},
            },
        )
        if result:
            assert result["posted_units"] + result["unpaid_units"] == used
            self._count_drawn(sub, result["drawn"])

    @rule(sub=st.sampled_from(SUBS), units=st.integers(1, 300), partial=st.booleans())
    def debit(self, sub: str, units: int, partial: bool) -> None:
        result = self._op(
            "debit",
            {
                "subscriber_id": sub,
                "unit": "octets",
                "units": units,
                "rating_group": 10,
                "price": PRICE,
                "partial": partial,
            },
        )
        if result:
            self._count_drawn(sub, result["drawn"])

    @rule(sub=st.sampled_from(SUBS), amount=st.integers(1, 100))
    def refund(self, sub: str, amount: int) -> None:
        self._op("refund", {"subscriber_id": sub, "unit": "money", "amount": amount})

    @rule(sub=st.sampled_from(SUBS), amount=st.integers(-200, 200).filter(bool))
    def adjust(self, sub: str, amount: int) -> None:
        result = self._op(
            "adjust",
            {"subscriber_id": sub, "unit": "octets", "amount": amount, "topup_id": f"adj{self.n}"},
        )
        if result and amount > 0:
            self._add(self.credited, sub, "octets", amount)

    @rule(
        giver=st.sampled_from(SUBS),
        receiver=st.sampled_from(SUBS),
        amount=st.integers(1, 200),
        reset=st.booleans(),
    )
    def transfer(self, giver: str, receiver: str, amount: int, reset: bool) -> None:
        self.n += 1
        args: dict[str, Any] = {
            "transfer_id": f"tr{self.n}",
            "from": giver,
            "to": receiver,
            "unit": "octets",
            "amount": amount,
        }
        if reset:
            args.update(expiry="reset", expires_at_ms=self.now + 25)
        if self._op("transfer", args):
            self.transfers.append(f"tr{self.n}")

    @precondition(lambda self: self.transfers)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(self.transfers))
        self.n += 1
        self._op("reverse_transfer", {"transfer_id": tid, "reversal_id": f"rv{self.n}"})

    @rule(parent=st.sampled_from(SUBS), amount=st.integers(1, 200), life=st.integers(1, 40))
    def voucher(self, parent: str, amount: int, life: int) -> None:
        self.n += 1
        token_hash = hashlib.sha256(f"tok{self.n}".encode()).hexdigest()
        args = {
            "voucher_id": f"v{self.n}",
            "parent": parent,
            "unit": "octets",
            "amount": amount,
            "token_hash": token_hash,
            "expires_at_ms": self.now + life,
        }
        if self._op("create_voucher", args):
            self.vouchers.append(token_hash)

    @precondition(lambda self: self.vouchers)
    @rule(data=st.data(), who=st.sampled_from(SUBS))
    def redeem(self, data: st.DataObject, who: str) -> None:
        token_hash = data.draw(st.sampled_from(self.vouchers))
        self._op("redeem_voucher", {"token_hash": token_hash, "subscriber_id": who})

    @rule(to=st.sampled_from(["b", "c"]), amount=st.integers(1, 120), value=st.integers(0, 90))
    def allowance(self, to: str, amount: int, value: int) -> None:
        self.n += 1
        args = {
            "transfer_id": f"al{self.n}",
            "from": "a",
            "to": to,
            "unit": "octets",
            "amount": amount,
            "value_micros": value,
        }
        if self._op("allowance_transfer", args):
            self._add(self.credited, "a", "money", value)

    @rule(sub=st.sampled_from(SUBS), amount=st.integers(1, 120))
    def send_abroad(self, sub: str, amount: int) -> None:
        self.n += 1
        args = {
            "transfer_id": f"x{self.n}",
            "from": sub,
            "to": "msisdn-999",
            "unit": "octets",
            "amount": amount,
            "operator": "opB",
        }
        if self._op("interop_hold", args):
            self.held.append(f"x{self.n}")

    @precondition(lambda self: self.held)
    @rule(data=st.data(), delivered=st.booleans())
    def answer_abroad(self, data: st.DataObject, delivered: bool) -> None:
        tid = data.draw(st.sampled_from(self.held))
        op = "interop_settle" if delivered else "interop_cancel"
        self._op(op, {"transfer_id": tid})

    @rule(sub=st.sampled_from(SUBS), amount=st.integers(1, 120))
    def arrive_from_abroad(self, sub: str, amount: int) -> None:
        self.n += 1
        args = {
            "transfer_id": f"in{self.n}",
            "operator": "opB",
            "subscriber_id": sub,
            "unit": "octets",
            "amount": amount,
        }
        if self._op("interop_credit", args):
            self._add(self.credited, "operator:opB", "octets", amount)

    @rule(sub=st.sampled_from(SUBS), units=st.integers(1, 90))
    def buy(self, sub: str, units: int) -> None:
        self.n += 1
        self._op(
            "buy_quota",
            {"purchase_id": f"b{self.n}", "subscriber_id": sub, "unit": "octets", "units": units},
        )

    @rule(amount=st.integers(1, 150))
    def provided(self, amount: int) -> None:
        self.n += 1
        self._op(
            "provider_topup",
            {"subscriber_id": "c", "unit": "octets", "amount": amount, "topup_id": f"p{self.n}"},
        )

    @rule(ms=st.integers(1, 30))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule()
    def sweep(self) -> None:
        self.loop.run_until_complete(self.store.execute("expire", None, {}))

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        op, op_id, args, first, at = data.draw(st.sampled_from(self.history))
        if self.now - at >= self.store.ledger.limits.idempotency_window_ms:
            return  # ids are remembered for a stated window only
        before = self.store.ledger.snapshot()["subscribers"]
        again = self.loop.run_until_complete(self.store.execute(op, op_id, args))
        assert again == first
        assert self.store.ledger.snapshot()["subscribers"] == before

    @rule(clean=st.booleans())
    def restart(self, clean: bool) -> None:
        before = self.store.ledger.snapshot()
        if clean:
            self.loop.run_until_complete(self.store.close())
        else:  # a crash: what was acknowledged is on disk; drop the process state
            self.loop.run_until_complete(self.store.flush())
            crash(self.store)
        self.store = self._open()
        assert self.store.ledger.snapshot() == before

    @invariant()
    def caps_hold(self) -> None:
        member = self.store.ledger.groups["g"].members["b"]
        assert member.used.get("octets", 0) + member.held.get("octets", 0) <= 150

    @rule(hours=st.integers(1, 30))
    def new_day(self, hours: int) -> None:
        self.now += hours * 3_600_000
        self.loop.run_until_complete(self.store.execute("expire", None, {}))

    @invariant()
    def transfers_balance(self) -> None:
        ins = outs = 0
        for sub in self.store.ledger.subscribers.values():
            for c in sub.counters.values():
                ins += c["transferred_in"]
                outs += c["transferred_out"]
        assert ins == outs

    @invariant()
    def conserved(self) -> None:
        ledger = self.store.ledger
        ledger.check_invariants()
        for sid, sub in ledger.subscribers.items():
            for unit, c in sub.counters.items():
                held = sum(b.amount for b in sub.buckets.values() if b.unit is unit)
                key = (sid, unit.value)
                assert c["consumed"] == self.consumed.get(key, 0)
                assert c["credited"] == self.credited.get(key, 0)
                assert (
                    held + c["consumed"] + c["debited"] + c["transferred_out"] + c["expired"]
                    == c["credited"] + c["refunded"] + c["transferred_in"]
                )
            for b in sub.buckets.values():
                assert b.amount >= 0 and 0 <= b.reserved <= b.amount


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestConservation = LedgerMachine.TestCase
