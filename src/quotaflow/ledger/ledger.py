"""The ledger: the only place balances change.

Every change is an operation `apply(op, op_id, args, now_ms)` whose effect depends only on the
state, its JSON arguments and the clock value it was given. That makes the journal a list of
operations that replays to the same state, and makes retries safe: an operation id seen before
with the same content returns the first answer; with other content it is a Conflict.

This module holds subscribers, buckets, reservations, sessions and time; the operations on
groups are in _groups.py and those that move credit between accounts in _moves.py, mixed in.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Final

import orjson
from orjson import dumps as _dumps

from quotaflow.ledger._base import (
    AMOUNT_MAX,
    OP_ID_LEN_MAX,
    SESSION_SCAN_MS,
    Args,
    Limits,
    Result,
    _check_amount,
    _check_id,
    _check_room,
    _month,
    _optional_id,
    _origin,
    _price,
    _rating_group,
    _split,
    _stale,
    _status,
    _unit,
)
from quotaflow.ledger._groups import GroupOps
from quotaflow.ledger._moves import MovingOps
from quotaflow.ledger._opids import OperationIds, digest
from quotaflow.ledger.errors import (
    Conflict,
    InvalidAmount,
    InvalidRequest,
    LimitReached,
    NoCredit,
    NotFound,
    SubscriberBarred,
    UnknownSession,
    UnknownSubscriber,
)
from quotaflow.ledger.model import (
    IDENTITY_KINDS,
    NEVER_MS,
    UNIT_NAME,
    Bucket,
    Group,
    Leg,
    Member,
    Origin,
    Price,
    Reservation,
    Status,
    Subscriber,
    Unit,
)
from quotaflow.ledger.transfers import (
    DAY_MS,
    Offer,
    Transfer,
    Voucher,
)

# Read per operation: a module attribute lookup on orjson cost ~270 instructions each (callgrind).
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


class Ledger(GroupOps, MovingOps):
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.subscribers: dict[str, Subscriber] = {}
        self.identity_index: dict[str, str] = {}  # "msisdn:4670..." -> subscriber id
        # Least recently reported first, so the idle scan stops at the first recent one.
        self.sessions: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.sessions_by_subscriber: dict[str, set[str]] = {}
        self.groups: dict[str, Group] = {}
        self.transfers: dict[str, Transfer] = {}
        self._sent: dict[str, int] = {}  # "giver|unit|day" -> amount transferred that day
        # The day and month its past totals were last dropped for: once a day, not per sweep.
        self._sent_pruned: list[int] | None = None
        self.vouchers: dict[str, Voucher] = {}
        self.offers: dict[str, Offer] = {}
        # Transfers to other operators: id -> {from, to, operator, unit, amount, state, buckets}
        self.remote: dict[str, dict[str, Any]] = {}
        self._voucher_tokens: dict[str, str] = {}  # token hash -> voucher id
        # op_id -> (operation, digest of its canonical arguments, first result); see _opids.
        # Keeping the arguments themselves instead of a digest executes fewer instructions but
        # measured 10-20% slower (memory), and so did keeping the first result encoded as JSON
        # (bench_ledger, compiled).
        self.idempotency = OperationIds(self.limits.idempotency_entries_max)
        # Open reservations by the second they lapse in: removed on commit or release, so
        # the table holds only what is open (a heap would keep every committed one until its
        # expiry came round). The heap holds each second that has an entry, once.
        self._lapse_slots: dict[int, set[tuple[str, str]]] = {}
        self._lapse_seconds: list[int] = []
        self._bucket_expiry_heap: list[tuple[int, str, str]] = []
        # (when, id) of group resets and voucher expiries, so the sweeper never scans all
        # groups or vouchers; an entry whose time no longer matches is skipped.
        self._reset_heap: list[tuple[int, str]] = []
        self._voucher_heap: list[tuple[int, str]] = []
        # Open reservations holding each group's pool: (subscriber id, reservation id).
        self.pool_holds: dict[str, set[tuple[str, str]]] = {}
        # And what they hold in all, by (group id, unit).
        self.pool_held: dict[tuple[str, str], int] = {}
        # Reservations voided lazily because their validity lapsed. Such a void can happen in
        # an operation that is then refused; the store journals that refusal too, so replay
        # voids the same reservations at the same instant.
        self.lapsed_voids = 0
        # When the sweeper next looks for sessions nobody reported on for `session_idle_ms`
        # (a network element that vanished without a release); kept in snapshots so replay
        # closes the same ones.
        self._next_session_scan_ms = 0
        operations: dict[str, Callable[[Args, int], Result]] = {
            "create_subscriber": self._create_subscriber,
            "update_subscriber": self._update_subscriber,
            "delete_subscriber": self._delete_subscriber,
            "add_bucket": self._add_bucket,
            "topup": self._topup,
            "adjust": self._adjust,
            "reserve": self._reserve,
            "commit": self._commit,
            "release": self._release,
            "charge": self._charge,
            "debit": self._debit,
            "refund": self._refund,
            "session_open": self._session_open,
            "session_close": self._session_close,
            "create_group": self._create_group,
            "update_group": self._update_group,
            "add_member": self._add_member,
            "update_member": self._update_member,
            "remove_member": self._remove_member,
            "group_reset": self._group_reset,
            "transfer": self._transfer,
            "reverse_transfer": self._reverse_transfer,
            "create_voucher": self._create_voucher,
            "redeem_voucher": self._redeem_voucher,
            "set_providers": self._set_providers,
            "create_offer": self._create_offer,
            "interop_hold": self._interop_hold,
            "set_postpaid": self._set_postpaid,
            "allowance_transfer": self._allowance_transfer,
            "interop_settle": self._interop_settle,
            "interop_cancel": self._interop_cancel,
            "interop_credit": self._interop_credit,
            "buy_quota": self._buy_quota,
            "provider_topup": self._provider_topup,
            "expire": self._expire,
        }
        self._ops: dict[str, tuple[str, Callable[[Args, int], Result]]] = {
            name: (name, fn) for name, fn in operations.items()
        }

    # ------------------------------------------------------------------ entry point

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._ops)

    def apply(self, op: str, op_id: str | None, args: Args, now_ms: int) -> tuple[Result, bool]:
        """Apply one operation. Returns (result, changed); changed is False for a repeat.

        Raises a ChargingError and changes nothing when the operation is refused.
        """
        result, changed, _ = self.apply_encoded(op, op_id, args, now_ms)
        return result, changed

    def apply_encoded(
        self, op: str, op_id: str | None, args: Args, now_ms: int, sorted_keys: bool = False
    ) -> tuple[Result, bool, bytes]:
        """As `apply`, also returning the canonical JSON of `args` (what the journal keeps).

        `sorted_keys`: the caller built `args` with every key, nested ones too, in sorted
        order, so that encoding them as they are gives the canonical bytes without sorting
        (the engine's charges: about 1,900 instructions less each)."""
        known = self._ops.get(op)
        if known is None:
            raise InvalidRequest(f"unknown ledger operation {op!r}")
        name, fn = known  # the name every entry of this operation shares
        table = self.idempotency
        if type(op_id) is str:
            table.prefetch(op_id)  # its slot loads while the arguments are encoded
        try:
            content = _dumps(args) if sorted_keys else _dumps(args, None, _SORT_KEYS)
        except TypeError as exc:  # e.g. an integer beyond 64 bits
            raise InvalidAmount(f"arguments cannot be recorded: {exc}") from None
        if op_id is None:
            return fn(args, now_ms), True, content
        if type(op_id) is not str or not 0 < len(op_id) <= OP_ID_LEN_MAX:
            raise InvalidRequest(f"op_id must be a string of 1..{OP_ID_LEN_MAX} characters")
        fingerprint = digest(content)
        seen = table.get(op_id)
        if seen is not None:
            if not table.same(seen, name, fingerprint, content):
                raise Conflict(f"operation id {op_id!r} was used with different content")
            return table.answer(seen), False, content
        result = fn(args, now_ms)
        try:
            answer: bytes | Result = _dumps(result)  # the table keeps it as text
        except TypeError:  # a number past 64 bits: the change is made, so keep it as it is
            answer = result
        table.add(op_id, name, fingerprint, answer, now_ms)
        return result, True, content

    def first_answer(self, op_id: str) -> Result | None:
        """The answer an operation id got, while it is remembered."""
        seen = self.idempotency.get(op_id)
        return None if seen is None else self.idempotency.answer(seen)

    def prune_idempotency(self, now_ms: int) -> int:
        """Forget operation ids older than the window. Deterministic given now_ms."""
        return self.idempotency.prune(now_ms - self.limits.idempotency_window_ms)

    # ------------------------------------------------------------------ queries

    def subscriber(self, subscriber_id: object) -> Subscriber:
        # Not typed str: a client's value of another type is an unknown subscriber, where the
        # compiled ledger would raise TypeError.
        sub = self.subscribers.get(subscriber_id) if type(subscriber_id) is str else None
        if sub is None:
            raise UnknownSubscriber(f"unknown subscriber {subscriber_id!r}")
        return sub

    def resolve(self, kind: str, value: str) -> str:
        """Subscriber id for an identity (kind is msisdn, imsi, nai, sip_uri or id)."""
        if kind == "id":
            if value in self.subscribers:
                return value
        else:
            found = self.identity_index.get(f"{kind}:{value}")
            if found is not None:
                return found
        raise UnknownSubscriber(f"no subscriber with {kind} {value!r}")

    def payable_units(
        self,
        sub: Subscriber,
        unit: Unit,
        rating_group: int | None,
        price: Price | None,
        now_ms: int,
    ) -> int:
        """How many service units the buckets could pay for now (for balance checks): the
        subscriber's own, then its group's pool within its cap room."""
        total = sum(b.available for b in self._candidates(sub, unit, rating_group, now_ms))
        pool, _, room = self._pool_for(sub, unit, now_ms)
        if pool is not None and room != 0:
            shared = sum(b.available for b in self._candidates(pool, unit, rating_group, now_ms))
            total += shared if room is None else min(shared, room)
        if price is not None and unit is not Unit.MONEY:
            if price.price_micros == 0:
                return AMOUNT_MAX
            money = sum(b.available for b in self._candidates(sub, Unit.MONEY, None, now_ms))
            total += price.units_for(money, 0)
        return total

    def check_invariants(self) -> None:
        """Conservation and non-negativity for every subscriber; raises AssertionError."""
        reserved_by_bucket: dict[tuple[str, str], int] = {}
        for sub in self.subscribers.values():
            for res in sub.reservations.values():
                for leg in res.legs:
                    key = (leg.account or sub.id, leg.bucket_id)
                    reserved_by_bucket[key] = reserved_by_bucket.get(key, 0) + leg.amount
        pool_held: dict[tuple[str, str, str], int] = {}
        holds: dict[str, set[tuple[str, str]]] = {}
        held_total: dict[tuple[str, str], int] = {}
        for sub in self.subscribers.values():
            for res in sub.reservations.values():
                if res.pool is not None:
                    holds.setdefault(res.pool, set()).add((sub.id, res.id))
                    key2 = (res.pool, UNIT_NAME[res.unit])
                    held_total[key2] = held_total.get(key2, 0) + res.pool_units
                if res.pool is not None and res.pool in self.groups:
                    key3 = (res.pool, sub.id, UNIT_NAME[res.unit])
                    pool_held[key3] = pool_held.get(key3, 0) + res.pool_units
        assert holds == self.pool_holds, "pool index differs from the open reservations"
        assert {k: v for k, v in held_total.items() if v} == self.pool_held, "pool held total"
        for group in self.groups.values():
            for member in group.members.values():
                for unit_name, amount in member.held.items():
                    want = pool_held.get((group.id, member.subscriber_id, unit_name), 0)
                    assert amount == want, f"{group.id}/{member.subscriber_id} holds {amount}"
        for sub in self.subscribers.values():
            held: dict[Unit, int] = {}
            for b in sub.buckets.values():
                assert b.amount >= 0, f"bucket {b.id} negative: {b.amount}"
                assert 0 <= b.reserved <= b.amount, f"bucket {b.id} reserved {b.reserved}"
                assert b.reserved == reserved_by_bucket.get((sub.id, b.id), 0), f"{b.id} legs"
                held[b.unit] = held.get(b.unit, 0) + b.amount
            for unit, c in sub.counters.items():
                out = held.get(unit, 0) + c["consumed"] + c["debited"] + c["transferred_out"]
                into = c["credited"] + c["refunded"] + c["transferred_in"]
                assert out + c["expired"] == into, f"{sub.id} {unit}: {out}+{c['expired']}!={into}"

    # ------------------------------------------------------------------ subscribers

    def _identities(self, args: Args) -> dict[str, str]:
        found: dict[str, str] = {}
        for kind in IDENTITY_KINDS:
            value = args.get(kind)
            if value is not None:
                found[kind] = _check_id(kind, value)
        return found

    def _create_subscriber(self, args: Args, now_ms: int) -> Result:
        sid = _check_id("id", args.get("id"))
        existing = self.subscribers.get(sid)
        if existing is not None:
            # Creating what already exists, identically, is a retry: answer as the first time.
            same = (
                existing.identities == self._identities(args)
                and existing.status.value == (args.get("status") or "active")
                and existing.plan == args.get("plan")
            )
            if same:
                return existing.summary_json()
            raise Conflict(f"subscriber {sid!r} exists with other content")
        if len(self.subscribers) >= self.limits.subscribers_max:
            raise LimitReached("subscriber table full", limit=self.limits.subscribers_max)
        identities = self._identities(args)
        status = _status(args.get("status") or "active")
        plan = _optional_id("plan", args.get("plan"))
        self._claim_identities(sid, identities)
        sub = Subscriber(sid, identities, status, now_ms, plan=plan)
        self.subscribers[sid] = sub
        for key, value in identities.items():
            self.identity_index[f"{key}:{value}"] = sid
        return sub.summary_json()

    def _claim_identities(self, sid: str, identities: dict[str, str]) -> None:
        for key, value in identities.items():
            owner = self.identity_index.get(f"{key}:{value}")
            if owner is not None and owner != sid:
                raise Conflict(f"{key} {value!r} belongs to subscriber {owner!r}", field=key)

    def _update_subscriber(self, args: Args, now_ms: int) -> Result:
        sub = self.subscriber(args["id"])
        identities = self._identities(args)
        status = sub.status
        if args.get("status") is not None:
            status = _status(args["status"])
        plan = _optional_id("plan", args.get("plan")) if "plan" in args else sub.plan
        self._claim_identities(sub.id, identities)
        for key, value in identities.items():
            old = sub.identities.get(key)
            if old is not None:
                self.identity_index.pop(f"{key}:{old}", None)
            sub.identities[key] = value
            self.identity_index[f"{key}:{value}"] = sub.id
        sub.status = status
        sub.plan = plan
        return sub.summary_json()

    def _delete_subscriber(self, args: Args, now_ms: int) -> Result:
        sub = self.subscriber(args["id"])
        self._sweep_subscriber(sub, now_ms)
        if sub.reservations or any(b.reserved for b in sub.buckets.values()):
            raise Conflict("subscriber has open reservations", count=len(sub.reservations))
        if sub.group is not None or sub.kind == "group":
            raise Conflict("remove it from its group first", group=sub.group or sub.id)
        for key, value in sub.identities.items():
            self.identity_index.pop(f"{key}:{value}", None)
        del self.subscribers[sub.id]
        return {"id": sub.id, "deleted": True}

    # ------------------------------------------------------------------ buckets

    def _new_bucket(self, sub: Subscriber, bucket_id: str, args: Args, origin: Origin) -> Bucket:
        if bucket_id in sub.buckets:
            raise Conflict(f"bucket {bucket_id!r} exists")
        if len(sub.buckets) >= self.limits.buckets_per_subscriber_max:
            raise LimitReached("too many buckets", limit=self.limits.buckets_per_subscriber_max)
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"), zero_ok=True)
        groups = args.get("rating_groups") or []
        if not isinstance(groups, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < 2**32 for g in groups
        ):
            raise InvalidRequest("rating_groups must be a list of unsigned 32-bit integers")
        priority = args.get("priority", 0)
        if type(priority) is not int or not -(2**31) <= priority < 2**31:
            raise InvalidRequest("priority must be a 32-bit integer", field="priority")
        valid_from = args.get("valid_from_ms") or 0
        expires = args.get("expires_at_ms")
        expires = NEVER_MS if expires is None else _check_amount("expires_at_ms", expires)
        if not isinstance(valid_from, int) or valid_from >= expires:
            raise InvalidRequest("valid_from_ms must be an integer before expires_at_ms")
        bucket = Bucket(
            id=bucket_id,
            subscriber_id=sub.id,
            unit=unit,
            amount=amount,
            rating_groups=frozenset(groups),
            priority=priority,
            valid_from_ms=valid_from,
            expires_at_ms=expires,
            origin=origin,
            initial=amount,
        )
        sub.buckets[bucket_id] = bucket
        sub.counter(unit)["credited"] += amount
        if expires < NEVER_MS:
            heapq.heappush(self._bucket_expiry_heap, (expires, sub.id, bucket_id))
        return bucket

    def _add_bucket(self, args: Args, now_ms: int) -> Result:
        sub = self._subject(args, now_ms)
        origin = _origin(args.get("origin", "purchase"))
        bucket = self._new_bucket(sub, _check_id("bucket_id", args.get("bucket_id")), args, origin)
        return bucket.to_json(now_ms)

    def _topup(self, args: Args, now_ms: int) -> Result:
        """Credit a bucket: the one named, the unscoped non-expiring main bucket, or a new one."""
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        amount = total = _check_amount("amount", args.get("amount"))
        repay = 0
        bucket_id = _optional_id("bucket_id", args.get("bucket_id"))
        scoped = bool(args.get("rating_groups")) or args.get("expires_at_ms") is not None
        if bucket_id is None and not scoped:
            bucket_id = f"main-{UNIT_NAME[unit]}"
        if bucket_id is None:
            bucket_id = _check_id("topup_id", args.get("topup_id"))
        existing = sub.buckets.get(bucket_id)
        if existing is not None:
            _check_room(existing, amount)
        line = sub.buckets.get(f"overdraft-{UNIT_NAME[unit]}")
        if line is not None and line.amount < line.initial:
            # A soft pool's credit line is repaid first; the rest goes where it would have.
            repay = min(amount, line.initial - line.amount)
            line.amount += repay
            sub.counter(unit)["credited"] += repay
            amount -= repay
            if amount == 0:
                return {
                    "subscriber_id": sub.id,
                    "bucket": line.to_json(now_ms),
                    "amount": repay,
                    "repaid": repay,
                }
        bucket = sub.buckets.get(bucket_id)
        if bucket is None:
            bucket = self._new_bucket(sub, bucket_id, {**args, "amount": amount}, Origin.TOPUP)
        else:
            if bucket.unit is not unit:
                raise InvalidRequest(f"bucket {bucket_id!r} holds {UNIT_NAME[bucket.unit]}")
            bucket.amount += amount
            sub.counter(unit)["credited"] += amount
        result = {"subscriber_id": sub.id, "bucket": bucket.to_json(now_ms), "amount": total}
        if repay:
            result["repaid"] = repay
        return result

    def _adjust(self, args: Args, now_ms: int) -> Result:
        """A signed correction. Credits go to the main bucket; debits take from what is free."""
        amount = _check_amount("amount", args.get("amount"), signed=True)
        if amount == 0:
            raise InvalidAmount("an adjustment of zero changes nothing", field="amount")
        if amount > 0:
            return self._topup({**args, "amount": amount}, now_ms)
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        want = -amount
        candidates = self._candidates(sub, unit, None, now_ms)
        if sum(b.available for b in candidates) < want:
            raise NoCredit("not enough free balance for this adjustment", wanted=want)
        drawn = self._take(candidates, want)
        sub.counter(unit)["debited"] += want
        return {"subscriber_id": sub.id, "amount": amount, "drawn": drawn}

    def _refund(self, args: Args, now_ms: int) -> Result:
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        bucket_id = _optional_id("bucket_id", args.get("bucket_id")) or f"main-{UNIT_NAME[unit]}"
        bucket = sub.buckets.get(bucket_id)
        if bucket is None:
            bucket = self._new_bucket(
                sub, bucket_id, {"unit": UNIT_NAME[unit], "amount": 0}, Origin.REFUND
            )
        if bucket.unit is not unit:
            raise InvalidRequest(f"bucket {bucket_id!r} holds {UNIT_NAME[bucket.unit]}")
        _check_room(bucket, amount)
        bucket.amount += amount
        sub.counter(unit)["refunded"] += amount
        return {
            "subscriber_id": sub.id,
            "unit": UNIT_NAME[unit],
            "amount": amount,
            "bucket": bucket.id,
        }

    # ------------------------------------------------------------------ consumption order

    @staticmethod
    def _order(b: Bucket) -> tuple[int, int, int, str]:
        # Most specific scope first, then soonest expiry, then priority; the id breaks ties
        # so that replay draws from the same buckets in the same order.
        return (
            len(b.rating_groups) if b.rating_groups else 2**32,
            b.expires_at_ms,
            b.priority,
            b.id,
        )

    def _candidates(
        self, sub: Subscriber, unit: Unit, rating_group: int | None, now_ms: int
    ) -> list[Bucket]:
        found = [
            b
            for b in sub.buckets.values()
            if b.unit is unit
            and b.amount > b.reserved
            and b.valid_from_ms <= now_ms < b.expires_at_ms
            and (not b.rating_groups or rating_group in b.rating_groups)
        ]
        if len(found) > 1:
            found.sort(key=self._order)
        return found

    @staticmethod
    def _take(buckets: Iterable[Bucket], want: int) -> dict[str, int]:
        takes = _split(buckets, want)
        assert sum(take for _, take in takes) == want
        for b, take in takes:
            b.amount -= take
        return {b.id: take for b, take in takes}

    # ------------------------------------------------------------------ two-phase reservations

    def _sweep_subscriber(self, sub: Subscriber, now_ms: int) -> None:
        """Void this subscriber's lapsed reservations (validity over)."""
        if sub.lapse_at_ms > now_ms:
            return
        soonest = NEVER_MS
        for res in list(sub.reservations.values()):
            if res.expires_at_ms <= now_ms:
                self._void(sub, res)
                self.lapsed_voids += 1
            elif res.expires_at_ms < soonest:
                soonest = res.expires_at_ms
        sub.lapse_at_ms = soonest

    def _account(self, sub: Subscriber, leg: Leg) -> Subscriber:
        return sub if leg.account is None else self.subscribers[leg.account]

    def _void(self, sub: Subscriber, res: Reservation) -> None:
        for leg in res.legs:
            self._account(sub, leg).buckets[leg.bucket_id].reserved -= leg.amount
        self._settle_pool(res, 0)
        del sub.reservations[res.id]
        self._untrack(sub.id, res)

    def _hold_pool(self, res: Reservation) -> None:
        """Index an open reservation that holds a group's pool (undone by `_settle_pool`)."""
        if res.pool is None:
            return
        self.pool_holds.setdefault(res.pool, set()).add((res.subscriber_id, res.id))
        key = (res.pool, UNIT_NAME[res.unit])
        self.pool_held[key] = self.pool_held.get(key, 0) + res.pool_units

    def _settle_pool(self, res: Reservation, posted: int) -> None:
        """A pool reservation ends: its hold on the member's room goes, what was used counts."""
        if res.pool is None:
            return
        holds = self.pool_holds.get(res.pool)
        if holds is not None:
            holds.discard((res.subscriber_id, res.id))
            if not holds:
                del self.pool_holds[res.pool]
        key2 = (res.pool, UNIT_NAME[res.unit])
        left = self.pool_held.get(key2, 0) - res.pool_units
        if left:
            self.pool_held[key2] = left
        else:
            self.pool_held.pop(key2, None)
        group = self.groups.get(res.pool)
        member = None if group is None else group.members.get(res.subscriber_id)
        if member is None:  # left the group meanwhile: the pool was charged, nothing to count
            return
        key = UNIT_NAME[res.unit]
        member.held[key] = member.held.get(key, 0) - res.pool_units
        member.used[key] = member.used.get(key, 0) + posted

    def _subject(self, args: Args, now_ms: int) -> Subscriber:
        """The subscriber an operation is about, with its lapsed reservations voided first."""
        sub = self.subscriber(args.get("subscriber_id", ""))
        self._sweep_subscriber(sub, now_ms)
        return sub

    def _track(self, sid: str, res: Reservation) -> None:
        second = res.expires_at_ms // 1000
        slot = self._lapse_slots.get(second)
        if slot is None:
            slot = self._lapse_slots[second] = set()
            heapq.heappush(self._lapse_seconds, second)
        slot.add((sid, res.id))

    def _untrack(self, sid: str, res: Reservation) -> None:
        slot = self._lapse_slots.get(res.expires_at_ms // 1000)
        if slot is not None:
            slot.discard((sid, res.id))

    def _active_subscriber(self, args: Args, now_ms: int) -> Subscriber:
        sub = self._subject(args, now_ms)
        if sub.status is Status.BARRED:
            raise SubscriberBarred(f"subscriber {sub.id!r} is barred")
        return sub

    def _reserve(self, args: Args, now_ms: int) -> Result:
        """The reserve operation: its arguments checked, then `_hold`."""
        sub = self._active_subscriber(args, now_ms)
        rid = _check_id("reservation_id", args.get("reservation_id"))
        self._check_new_reservation(sub, rid)
        unit = _unit(args.get("unit"))
        rating_group = _rating_group(args.get("rating_group"))
        units_max = _check_amount("units_max", args.get("units_max"))
        units_min = _check_amount("units_min", args.get("units_min", 1))
        validity_ms = _check_amount("validity_ms", args.get("validity_ms"))
        session_id = _optional_id("session_id", args.get("session_id"))
        raw_price = args.get("price")
        price = None if raw_price is None else _price(raw_price)
        skip_pool = args.get("skip_pool", False)
        if type(skip_pool) is not bool:
            raise InvalidRequest("skip_pool must be true or false")
        return self._hold(
            sub,
            rid,
            unit,
            rating_group,
            units_max,
            units_min,
            validity_ms,
            session_id,
            price,
            skip_pool,
            now_ms,
            payer=None,
            base=0,
            zero_rated=False,
        )

    def _check_new_reservation(self, sub: Subscriber, rid: str) -> None:
        """A new reservation id, and room for one more."""
        if rid in sub.reservations:
            raise Conflict(f"reservation {rid!r} is open")
        if len(sub.reservations) >= self.limits.reservations_per_subscriber_max:
            raise LimitReached(
                "too many open reservations", limit=self.limits.reservations_per_subscriber_max
            )

    def _hold(
        self,
        sub: Subscriber,
        rid: str,
        unit: Unit,
        rating_group: int | None,
        units_max: int,
        units_min: int,
        validity_ms: int,
        session_id: str | None,
        price: Price | None,
        skip_pool: bool,
        now_ms: int,
        payer: Subscriber | None,
        base: int,
        zero_rated: bool,
    ) -> Result:
        """Hold a grant, its arguments checked (by the reserve operation, or by a charge for
        its next grant): unit buckets first, then money by the price (from the payer's buckets
        when a sponsor pays). `base` is what the session already paid with money. A zero-rated
        service takes nothing from any bucket."""
        legs: list[Leg] = []
        need = units_max
        account = None if payer is None else payer.id
        acct = payer or sub
        # A member draws on its own buckets first, then on its group's pool within its room.
        pool, member, room = (
            (None, None, 0) if payer or skip_pool else self._pool_for(sub, unit, now_ms)
        )
        pool_units = 0
        if not zero_rated:
            need = self._hold_units(acct, account, unit, rating_group, need, legs, now_ms)
            if need and pool is not None and room != 0:
                want = need if room is None else min(need, room)
                left = self._hold_units(pool, pool.id, unit, rating_group, want, legs, now_ms)
                pool_units = want - left
                need -= pool_units
        free_units = priced_units = 0
        pool_money = False
        if zero_rated:
            free_units, need = need, 0
        elif need and price is not None and unit is not Unit.MONEY:
            if price.price_micros == 0:  # free beyond the buckets: nothing to hold
                free_units, need = need, 0
            else:
                priced_units = self._reserve_money(acct, account, price, base, need, legs, now_ms)
                room_left = None if room is None else room - pool_units
                if not priced_units and pool is not None and room_left != 0:
                    want = need if room_left is None else min(need, room_left)
                    priced_units = self._reserve_money(
                        pool, pool.id, price, base, want, legs, now_ms
                    )
                    pool_money = priced_units > 0
                    pool_units += priced_units
                need -= priced_units
        granted = units_max - need
        if granted < min(units_min, units_max) or granted == 0:
            for leg in legs:
                self._account(sub, leg).buckets[leg.bucket_id].reserved -= leg.amount
            raise NoCredit("balance cannot pay for the minimum grant", payable=granted)
        expires = now_ms + validity_ms
        res = Reservation(
            id=rid,
            subscriber_id=sub.id,
            unit=unit,
            rating_group=rating_group,
            units=granted,
            legs=legs,
            created_ms=now_ms,
            expires_at_ms=expires,
            session_id=session_id,
            priced_units=priced_units,
            price=price if priced_units else None,
            base=base,
            pool=None if pool is None or not pool_units else pool.id,
            pool_units=pool_units,
            pool_money=pool_money,
        )
        if member is not None and pool_units:
            member.held[UNIT_NAME[unit]] = member.held.get(UNIT_NAME[unit], 0) + pool_units
        self._hold_pool(res)
        sub.reservations[rid] = res
        self._track(sub.id, res)
        if expires < sub.lapse_at_ms:
            sub.lapse_at_ms = expires
        return {
            "reservation_id": rid,
            "units": granted,
            "free_units": free_units,
            "exhausted": granted < units_max,
            "validity_ms": validity_ms,
            "expires_at_ms": expires,
            # No legs: the reservation holds them, and this answer is kept for the operation
            # id's window (a list per leg kept per grant, which nothing read).
        }

    def _hold_units(
        self,
        acct: Subscriber,
        account: str | None,
        unit: Unit,
        rating_group: int | None,
        need: int,
        legs: list[Leg],
        now_ms: int,
    ) -> int:
        """Reserve up to `need` from the account's unit buckets; returns what is still needed."""
        for b, take in _split(self._candidates(acct, unit, rating_group, now_ms), need):
            b.reserved += take
            legs.append(Leg(b.id, take, account))
            need -= take
        return need

    def _pool_for(
        self, sub: Subscriber, unit: Unit, now_ms: int
    ) -> tuple[Subscriber | None, Member | None, int | None]:
        """The member's pool account, its member record and the room it has (None: no cap).

        Room is 0 while the member is restricted: the pool's available units are below the
        group's threshold and the member's priority is not protected.
        """
        if sub.group is None:
            return None, None, 0
        group = self.groups.get(sub.group)
        member = None if group is None else group.members.get(sub.id)
        if group is None or member is None:
            return None, None, 0
        pool = self.subscribers[group.id]
        room = member.room(unit)
        threshold = group.restrict_below.get(UNIT_NAME[unit])
        if threshold is not None and member.priority > group.protected_priority:
            available = sum(b.available for b in self._candidates(pool, unit, None, now_ms))
            if available < threshold:
                room = 0
        return pool, member, room

    def _reserve_money(
        self,
        acct: Subscriber,
        account: str | None,
        price: Price,
        base: int,
        need: int,
        legs: list[Leg],
        now_ms: int,
    ) -> int:
        """Hold money for units the unit buckets could not cover; returns how many it covers.

        Units inside an increment the session already paid for cost nothing more.
        """
        buckets = self._candidates(acct, Unit.MONEY, None, now_ms)
        money = sum(b.available for b in buckets)
        units = min(need, price.units_for(money, base))
        cost = price.cost(base + units) - price.cost(base)
        for b, take in _split(buckets, cost):
            b.reserved += take
            legs.append(Leg(b.id, take, account))
            cost -= take
        assert cost == 0, "units_for promised what the buckets cannot pay"
        return units

    def _commit_on(self, sub: Subscriber, rid: str, used: int) -> Result:
        res, posted, money_units, cost_micros, drawn = self._post(sub, rid, used)
        return {
            "reservation_id": rid,
            "posted_units": posted,
            "money_units": money_units,
            "cost_micros": cost_micros,
            "drawn": drawn,
            "unit": UNIT_NAME[res.unit],
            "rating_group": res.rating_group,
        }

    def _post(
        self, sub: Subscriber, rid: str, used: int
    ) -> tuple[Reservation, int, int, int, dict[str, int]]:
        """Post `used` against the reservation and close it: the reservation, the units
        posted, the money units among them, their cost, and what each bucket gave."""
        res = sub.reservations.get(rid)
        if res is None:
            raise NotFound(f"no open reservation {rid!r} (released or lapsed)")
        posted = min(used, res.units)
        remaining = posted
        drawn: dict[str, int] = {}
        priced = res.unit is not Unit.MONEY
        money_legs: list[tuple[Subscriber, Bucket, Leg]] = []
        pool_posted = 0
        for leg in res.legs:
            acct = self._account(sub, leg)
            b = acct.buckets[leg.bucket_id]
            b.reserved -= leg.amount
            if priced and b.unit is Unit.MONEY:
                money_legs.append((acct, b, leg))
                continue
            here = min(leg.amount, remaining)
            remaining -= here
            if here:
                self._draw(acct, b, here, leg.account, drawn)
                if res.pool is not None and leg.account == res.pool:
                    pool_posted += here
        money_units = min(res.priced_units, remaining)
        if res.pool_money:
            pool_posted += money_units
        cost_micros = 0
        if money_units and res.price is not None:
            cost = cost_micros = res.price.cost(res.base + money_units) - res.price.cost(res.base)
            for acct, b, leg in money_legs:
                take = min(leg.amount, cost)
                cost -= take
                if take:
                    self._draw(acct, b, take, leg.account, drawn)
            assert cost == 0, "a commit cost more than its reservation held"
        self._settle_pool(res, pool_posted)
        del sub.reservations[rid]
        self._untrack(sub.id, res)
        return res, posted, money_units, cost_micros, drawn

    @staticmethod
    def _draw(
        acct: Subscriber, b: Bucket, amount: int, account: str | None, drawn: dict[str, int]
    ) -> None:
        b.amount -= amount
        acct.counter(b.unit)["consumed"] += amount
        key = b.id if account is None else f"{account}/{b.id}"
        drawn[key] = drawn.get(key, 0) + amount

    def _commit(self, args: Args, now_ms: int) -> Result:
        sub = self._subject(args, now_ms)
        used = _check_amount("used_units", args.get("used_units"), zero_ok=True)
        return self._commit_on(sub, _check_id("reservation_id", args.get("reservation_id")), used)

    def _release(self, args: Args, now_ms: int) -> Result:
        sub = self._subject(args, now_ms)
        rid = _check_id("reservation_id", args.get("reservation_id"))
        res = sub.reservations.get(rid)
        if res is None:
            raise NotFound(f"no open reservation {rid!r}")
        self._void(sub, res)
        return {"reservation_id": rid, "released_units": res.units}

    def _charge(self, args: Args, now_ms: int) -> Result:
        """One step of a session for one rating group: post the usage, then hold the next grant.

        Usage is posted against the open reservation if it is still there; what it does not
        cover (it lapsed, or the network used more than granted) is debited from what is free,
        as far as it goes. Then a new reservation is made when asked. One operation, so a crash
        can never leave the usage posted without the next grant or the other way round.
        """
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        rating_group = _rating_group(args.get("rating_group"))
        price = _price(args.get("price"))
        used = _check_amount("used_units", args.get("used_units", 0), zero_ok=True)
        rid = args.get("reservation_id")
        reserve = args.get("reserve")
        units_max = units_min = validity_ms = 0
        skip_pool = False
        if reserve:
            # Validate the whole request before anything moves: a refusal after the usage was
            # posted would leave memory ahead of the journal.
            rid = _check_id("reservation_id", rid)
            if not isinstance(reserve, dict):
                raise InvalidRequest("reserve must be an object")
            units_max = _check_amount("units_max", reserve.get("units_max"))
            units_min = _check_amount("units_min", reserve.get("units_min", 1))
            validity_ms = _check_amount("validity_ms", reserve.get("validity_ms"))
            skip = reserve.get("skip_pool", False)
            if type(skip) is not bool:
                raise InvalidRequest("skip_pool must be true or false")
            skip_pool = skip
        if (
            reserve
            and rid not in sub.reservations
            and (len(sub.reservations) >= self.limits.reservations_per_subscriber_max)
        ):
            raise LimitReached(
                "too many open reservations", limit=self.limits.reservations_per_subscriber_max
            )
        payer = None if args.get("payer") is None else self.subscriber(args["payer"])
        zero_rated = bool(args.get("zero_rated"))
        session = self.sessions.get(_optional_id("session_id", args.get("session_id")) or "")
        key = str(rating_group)
        paid = None if session is None else session.get("money_units")
        base = 0 if paid is None else paid.get(key, 0)
        posted = cost_micros = 0
        drawn: dict[str, int] = {}
        if rid is not None and rid in sub.reservations:
            _, posted, money_posted, cost_micros, drawn = self._post(sub, rid, used)
            base += money_posted
        result: Result = {
            "posted_units": posted,
            "unpaid_units": 0,
            "drawn": drawn,
            "cost_micros": cost_micros,
        }
        extra = used - posted
        if extra:
            # Used beyond the grant, or after it lapsed: take what the balance still pays.
            debit = self._debit_on(
                sub,
                unit,
                rating_group,
                extra,
                price,
                now_ms,
                partial=True,
                payer=payer,
                base=base,
                zero_rated=zero_rated,
            )
            base += debit["money_units"]
            result["posted_units"] += debit["units"]
            result["unpaid_units"] = extra - debit["units"]
            result["cost_micros"] += debit["cost_micros"]
            for name, value in debit["drawn"].items():
                result["drawn"][name] = result["drawn"].get(name, 0) + value
        if session is not None:
            money_units = session.get("money_units")
            if money_units is None:  # setdefault would build a dict on every step
                money_units = session["money_units"] = {}
            money_units[key] = base
            session["last_ms"] = now_ms
            self.sessions.move_to_end(args["session_id"])
        if not reserve:
            return result
        result["grant"] = None
        if sub.status is Status.BARRED:
            result["refused"] = "barred"
            return result
        try:
            assert type(rid) is str  # checked with the reservation above
            self._check_new_reservation(sub, rid)
            # Checked only here, where the reserve operation checks it too: a journal written
            # before may hold a charge that succeeded without a grant (a barred subscriber)
            # with a bad one.
            hold_session = _optional_id("session_id", reserve.get("session_id"))
            result["grant"] = self._hold(
                sub,
                rid,
                unit,
                rating_group,
                units_max,
                units_min,
                validity_ms,
                hold_session,
                price,
                skip_pool,
                now_ms,
                payer,
                base,
                zero_rated,
            )
        except NoCredit:
            result["refused"] = "no_credit"
        return result

    def _debit_on(
        self,
        sub: Subscriber,
        unit: Unit,
        rating_group: int | None,
        units: int,
        price: Price | None,
        now_ms: int,
        *,
        partial: bool,
        payer: Subscriber | None = None,
        base: int = 0,
        zero_rated: bool = False,
    ) -> Result:
        """Take `units` at once: unit buckets first, then money by the price after `base`.

        With `partial`, take what the balance pays and report the rest; without, all or nothing.
        """
        acct = payer or sub
        account = None if payer is None else payer.id
        units_left = 0 if zero_rated else units
        # (account, its id in `drawn`, bucket, amount); a member's own buckets, then its pool.
        plan: list[tuple[Subscriber, str | None, Bucket, int]] = []
        pool, member, room = (
            (None, None, 0) if payer or zero_rated else self._pool_for(sub, unit, now_ms)
        )
        pool_units = 0
        sources: list[tuple[Subscriber, str | None, int | None]] = [(acct, account, None)]
        if pool is not None and room != 0:
            sources.append((pool, pool.id, room))
        for owner, owner_id, limit in [] if zero_rated else sources:
            want = units_left if limit is None else min(units_left, limit)
            for b, take in _split(self._candidates(owner, unit, rating_group, now_ms), want):
                plan.append((owner, owner_id, b, take))
                units_left -= take
                if owner is pool:
                    pool_units += take
        free = zero_rated
        money_units = cost_micros = 0
        if units_left and price is not None and unit is not Unit.MONEY:
            if price.price_micros == 0:
                units_left, free = 0, True
            else:
                for owner, owner_id, limit in sources:
                    room_left = None if limit is None else limit - pool_units
                    if room_left == 0:
                        continue
                    buckets = self._candidates(owner, Unit.MONEY, None, now_ms)
                    money = sum(b.available for b in buckets)
                    want = units_left if room_left is None else min(units_left, room_left)
                    money_units = min(want, price.units_for(money, base))
                    if not money_units:
                        continue
                    cost_micros = price.cost(base + money_units) - price.cost(base)
                    plan += [(owner, owner_id, b, t) for b, t in _split(buckets, cost_micros)]
                    units_left -= money_units
                    if owner is pool:
                        pool_units += money_units
                    break  # own money and pool money are never mixed
        if units_left and not partial:
            raise NoCredit("balance cannot pay for the debit", missing_units=units_left)
        drawn: dict[str, int] = {}
        for owner, owner_id, b, take in plan:
            if take:
                self._draw(owner, b, take, owner_id, drawn)
        if member is not None and pool_units:
            member.used[UNIT_NAME[unit]] = member.used.get(UNIT_NAME[unit], 0) + pool_units
        return {
            "units": units - units_left,
            "drawn": drawn,
            "free": free,
            "money_units": money_units,
            "cost_micros": cost_micros,
        }

    def _debit(self, args: Args, now_ms: int) -> Result:
        sub = self._active_subscriber(args, now_ms)
        unit = _unit(args.get("unit"))
        units = _check_amount("units", args.get("units"))
        payer = None if args.get("payer") is None else self.subscriber(args["payer"])
        result = self._debit_on(
            sub,
            unit,
            _rating_group(args.get("rating_group")),
            units,
            _price(args.get("price")),
            now_ms,
            partial=bool(args.get("partial", False)),
            payer=payer,
            zero_rated=bool(args.get("zero_rated")),
        )
        return {"subscriber_id": sub.id, "unit": UNIT_NAME[unit], **result}

    # ------------------------------------------------------------------ sessions

    def _session_open(self, args: Args, now_ms: int) -> Result:
        session_id = _check_id("session_id", args.get("session_id"))
        sub = self._active_subscriber(args, now_ms)
        existing = self.sessions.get(session_id)
        if existing is not None:
            if existing["subscriber_id"] != sub.id:
                raise Conflict(f"session {session_id!r} belongs to another subscriber")
            return {
                "session_id": session_id,
                **existing,
                "money_units": dict(existing.get("money_units", {})),
            }
        if len(self.sessions) >= self.limits.sessions_max:
            raise LimitReached("session table full", limit=self.limits.sessions_max)
        record = {"subscriber_id": sub.id, "opened_ms": now_ms, "meta": args.get("meta") or {}}
        self.sessions[session_id] = record
        self.sessions_by_subscriber.setdefault(sub.id, set()).add(session_id)
        return {"session_id": session_id, **record}

    def _session_close(self, args: Args, now_ms: int) -> Result:
        session_id = _check_id("session_id", args.get("session_id"))
        record = self.sessions.pop(session_id, None)
        if record is None:
            raise UnknownSession(f"unknown session {session_id!r}")
        sid = record["subscriber_id"]
        owned = self.sessions_by_subscriber.get(sid)
        if owned is not None:
            owned.discard(session_id)
            if not owned:
                del self.sessions_by_subscriber[sid]
        sub = self.subscribers.get(sid)
        released = 0
        if sub is not None:
            for res in [r for r in sub.reservations.values() if r.session_id == session_id]:
                self._void(sub, res)
                released += 1
        return {"session_id": session_id, "subscriber_id": sid, "released_reservations": released}

    # ------------------------------------------------------------------ time

    def _expire(self, args: Args, now_ms: int) -> Result:
        """Void lapsed reservations and purge expired buckets that hold no reservation."""
        voided = 0
        now_s = now_ms // 1000
        seconds = self._lapse_seconds
        while seconds and seconds[0] <= now_s:
            entries = self._lapse_slots.get(seconds[0], set())
            for sid, rid in sorted(entries):  # sorted: the same order on replay
                owner = self.subscribers[sid]
                res = owner.reservations[rid]
                if res.expires_at_ms <= now_ms:
                    self._void(owner, res)
                    voided += 1
            if entries:  # later in this very second: keep the slot
                break
            self._lapse_slots.pop(heapq.heappop(seconds), None)
        purged = 0
        bheap = self._bucket_expiry_heap
        deferred: list[tuple[int, str, str]] = []
        while bheap and bheap[0][0] <= now_ms:
            entry = heapq.heappop(bheap)
            sub = self.subscribers.get(entry[1])
            bucket = None if sub is None else sub.buckets.get(entry[2])
            if sub is None or bucket is None or bucket.expires_at_ms != entry[0]:
                continue
            if bucket.reserved:
                deferred.append(entry)  # still pays for an open reservation; purge later
                continue
            sub.counter(bucket.unit)["expired"] += bucket.amount
            del sub.buckets[bucket.id]
            purged += 1
        for entry in deferred:
            heapq.heappush(bheap, (now_ms + 1, entry[1], entry[2]))
        pruned = self.prune_idempotency(now_ms)
        for vid in self._due(self._voucher_heap, now_ms, self._voucher_due):
            voucher = self.vouchers[vid]
            # An unredeemed voucher's value goes back to the parent that issued it.
            parent = self.subscribers.get(voucher.parent)
            if parent is not None:
                self._empty_voucher(voucher, parent, now_ms)
            voucher.state = "expired"
        if now_ms >= self._next_session_scan_ms:
            self._close_idle_sessions(now_ms)
            self._next_session_scan_ms = now_ms + SESSION_SCAN_MS
        today = now_ms // DAY_MS
        month = _month(now_ms)
        if self._sent_pruned != [today, month]:
            for key in [k for k in self._sent if _stale(k, today, month)]:
                del self._sent[key]  # per-day transfer and per-month provider totals of the past
            self._sent_pruned = [today, month]
        resets = self._due(self._reset_heap, now_ms, self._reset_due)
        for gid in resets:
            self._group_reset({"group_id": gid}, now_ms)
        return {
            "voided": voided,
            "purged_buckets": purged,
            "pruned_ids": pruned,
            "group_resets": resets,
        }

    def _close_idle_sessions(self, now_ms: int) -> int:
        """Close sessions with no report for `session_idle_ms` and nothing reserved."""
        horizon = now_ms - self.limits.session_idle_ms
        idle = []
        for session_id, record in self.sessions.items():
            if record.get("last_ms", record["opened_ms"]) > horizon:
                break  # the rest reported more recently
            sub = self.subscribers.get(record["subscriber_id"])
            if sub is None or not any(
                r.session_id == session_id for r in sub.reservations.values()
            ):
                idle.append(session_id)
        for session_id in sorted(idle):
            self._session_close({"session_id": session_id}, now_ms)
        return len(idle)

    @staticmethod
    def _due(
        heap: list[tuple[int, str]], now_ms: int, current: Callable[[str, int], bool]
    ) -> list[str]:
        """Ids whose time has come, in id order (replay goes the same way); stale entries go."""
        due: set[str] = set()
        while heap and heap[0][0] <= now_ms:
            at, key = heapq.heappop(heap)
            if current(key, at):
                due.add(key)
        return sorted(due)

    def _reset_due(self, gid: str, at_ms: int) -> bool:
        group = self.groups.get(gid)
        return group is not None and group.next_reset_ms == at_ms

    def _voucher_due(self, vid: str, at_ms: int) -> bool:
        voucher = self.vouchers.get(vid)
        return voucher is not None and voucher.state == "issued" and voucher.expires_at_ms == at_ms

    @staticmethod
    def _next_current(
        heap: list[tuple[int, str]], current: Callable[[str, int], bool]
    ) -> int | None:
        while heap and not current(heap[0][1], heap[0][0]):
            heapq.heappop(heap)  # stale: changed or gone since it was pushed
        return heap[0][0] if heap else None

    def next_deadline_ms(self) -> int | None:
        """When the next reservation lapses or bucket expires (for the sweeper's timer)."""
        times = [self._lapse_seconds[0] * 1000] if self._lapse_seconds else []
        for heap, current in (
            (self._reset_heap, self._reset_due),
            (self._voucher_heap, self._voucher_due),
        ):
            at = self._next_current(heap, current)
            if at is not None:
                times.append(at)
        if self._bucket_expiry_heap:
            times.append(self._bucket_expiry_heap[0][0])
        return min(times) if times else None

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, raw: bool = False, ids_from: int = 0) -> dict[str, Any]:
        """The whole state as JSON values. With `raw`, parts kept encoded stay so (as
        `orjson.Fragment`): for orjson to write, not to compare or read. `ids_from`: only the
        remembered operation ids numbered from it (a store keeps the older ones from earlier
        snapshots); `idempotency_span` numbers the oldest kept and the next."""
        return {
            "subscribers": [s.to_json() for s in self.subscribers.values()],
            "sessions": dict(self.sessions),
            "next_session_scan_ms": self._next_session_scan_ms,
            "groups": [g.to_json() for g in self.groups.values()],
            "transfers": [t.to_json() for t in self.transfers.values()],
            "sent": self._sent,
            "sent_pruned": self._sent_pruned,
            "vouchers": [v.to_json() for v in self.vouchers.values()],
            "offers": [o.to_json() for o in self.offers.values()],
            "remote": list(self.remote.values()),
            "idempotency": self.idempotency.to_json(raw, ids_from),
            "idempotency_span": list(self.idempotency.span()),
        }

    @classmethod
    def restore(cls, doc: dict[str, Any], limits: Limits | None = None) -> Ledger:
        ledger = cls(limits)
        for s in doc["subscribers"]:
            sub = Subscriber.from_json(s)
            ledger.subscribers[sub.id] = sub
            for key, value in sub.identities.items():
                ledger.identity_index[f"{key}:{value}"] = sub.id
            for res in sub.reservations.values():
                ledger._track(sub.id, res)
                ledger._hold_pool(res)
                if res.expires_at_ms < sub.lapse_at_ms:
                    sub.lapse_at_ms = res.expires_at_ms
            for b in sub.buckets.values():
                if b.expires_at_ms < NEVER_MS:
                    heapq.heappush(ledger._bucket_expiry_heap, (b.expires_at_ms, sub.id, b.id))
        ledger.groups = {g["id"]: Group.from_json(g) for g in doc.get("groups", [])}
        ledger._reset_heap = [
            (g.next_reset_ms, g.id) for g in ledger.groups.values() if g.next_reset_ms < NEVER_MS
        ]
        heapq.heapify(ledger._reset_heap)
        ledger.transfers = {t["id"]: Transfer.from_json(t) for t in doc.get("transfers", [])}
        ledger._sent = dict(doc.get("sent", {}))
        ledger._sent_pruned = doc.get("sent_pruned")
        ledger.vouchers = {v["id"]: Voucher.from_json(v) for v in doc.get("vouchers", [])}
        ledger._voucher_tokens = {v.token_hash: v.id for v in ledger.vouchers.values()}
        ledger._voucher_heap = [
            (v.expires_at_ms, v.id)
            for v in ledger.vouchers.values()
            if v.state == "issued" and v.expires_at_ms < NEVER_MS
        ]
        heapq.heapify(ledger._voucher_heap)
        ledger.offers = {o["id"]: Offer.from_json(o) for o in doc.get("offers", [])}
        ledger.remote = {r["id"]: dict(r) for r in doc.get("remote", [])}
        ledger.sessions = OrderedDict(
            sorted(
                doc["sessions"].items(),
                key=lambda item: (item[1].get("last_ms", item[1]["opened_ms"]), item[0]),
            )
        )
        ledger._next_session_scan_ms = doc.get("next_session_scan_ms", 0)
        for session_id, record in ledger.sessions.items():
            ledger.sessions_by_subscriber.setdefault(record["subscriber_id"], set()).add(session_id)
        span = doc.get("idempotency_span")  # absent from snapshots before session 22
        ledger.idempotency = OperationIds.from_json(
            doc["idempotency"],
            ledger.limits.idempotency_entries_max,
            None if span is None else span[1],
        )
        return ledger
