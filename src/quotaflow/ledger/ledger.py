"""The ledger: the only place balances change.

Every change is an operation `apply(op, op_id, args, now_ms)` whose effect depends only on the
state, its JSON arguments and the clock value it was given. That makes the journal a list of
operations that replays to the same state, and makes retries safe: an operation id seen before
with the same content returns the first answer; with other content it is a Conflict.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

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
    PERIODS,
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
from quotaflow.ledger.periods import next_reset_ms
from quotaflow.ledger.transfers import (
    DAY_MS,
    Offer,
    Transfer,
    TransferLimits,
    Voucher,
    already_reversed,
    check_limits,
    check_parties,
    gift_expiry,
    no_such_voucher,
    plan_transfer,
    transfer_unknown,
)

Result = dict[str, Any]
Args = dict[str, Any]

AMOUNT_MAX = 2**62  # any single amount; keeps every sum far inside a signed 64-bit integer
ID_LEN_MAX = 128
OP_ID_LEN_MAX = 256  # room for an interface's prefix around a caller's id


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _split(buckets: Iterable[Bucket], want: int) -> list[tuple[Bucket, int]]:
    """How `want` is taken from what each bucket has free, in order (nothing moves here)."""
    takes: list[tuple[Bucket, int]] = []
    for b in buckets:
        if want <= 0:
            break
        take = min(b.available, want)
        if take:
            takes.append((b, take))
            want -= take
    return takes


PROVIDERS_MAX = 8


def _month(now_ms: int) -> int:
    """Months since 1970 (UTC), the period of a provider's limit."""
    day = datetime.fromtimestamp(now_ms / 1000, UTC)
    return day.year * 12 + day.month - 1


def _stale(key: str, today: int, month: int) -> bool:
    period = int(key.rsplit("|", 1)[1])
    return period < month if key.startswith("prov|") else period < today


def _check_amount(name: str, value: Any, *, signed: bool = False, zero_ok: bool = False) -> int:
    if type(value) is not int:  # bool is a subclass of int: refuse it too
        raise InvalidAmount(f"{name} must be an integer", field=name)
    low = -AMOUNT_MAX if signed else (0 if zero_ok else 1)
    if not low <= value <= AMOUNT_MAX:
        raise InvalidAmount(f"{name} out of range [{low}, {AMOUNT_MAX}]", field=name)
    return value


def _check_id(name: str, value: Any) -> str:
    if type(value) is not str or not 0 < len(value) <= ID_LEN_MAX:
        raise InvalidRequest(f"{name} must be a string of 1..{ID_LEN_MAX} characters", field=name)
    return value


_UNITS: dict[Any, Unit] = {u.value: u for u in Unit}


def _unit(value: Any) -> Unit:
    unit = _UNITS.get(value) if isinstance(value, str) else None
    if unit is None:
        raise InvalidRequest(f"unit must be one of {list(_UNITS)}", field="unit")
    return unit


E = TypeVar("E", Status, Origin)


def _enum(cls: type[E], value: Any, name: str) -> E:
    try:
        return cls(value)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be one of {[m.value for m in cls]}", field=name
        ) from None


def _price(value: Any) -> Price | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("price must be an object", field="price")
    price = _check_amount("price.price_micros", value.get("price_micros"), zero_ok=True)
    per = _check_amount("price.per_units", value.get("per_units"))
    # Without a billing pattern, every started block of `per_units` is charged whole.
    first = _check_amount("price.first_units", value.get("first_units", per))
    step = _check_amount("price.next_units", value.get("next_units", per))
    connect = _check_amount("price.connect_micros", value.get("connect_micros", 0), zero_ok=True)
    return Price(price, per, first, step, connect)


class Limits:
    """Every table has a stated maximum; reaching one is an answer with a reason."""

    def __init__(
        self,
        subscribers_max: int = 10_000_000,
        buckets_per_subscriber_max: int = 1_000,
        reservations_per_subscriber_max: int = 4_096,
        sessions_max: int = 4_000_000,
        idempotency_entries_max: int = 2_000_000,
        idempotency_window_ms: int = 3_600_000,
        transfers_max: int = 10_000_000,
        transfers: TransferLimits | None = None,
    ) -> None:
        self.subscribers_max = subscribers_max
        self.buckets_per_subscriber_max = buckets_per_subscriber_max
        self.reservations_per_subscriber_max = reservations_per_subscriber_max
        self.sessions_max = sessions_max
        self.idempotency_entries_max = idempotency_entries_max
        self.idempotency_window_ms = idempotency_window_ms
        self.transfers_max = transfers_max
        self.transfers = transfers or TransferLimits()


class Ledger:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.subscribers: dict[str, Subscriber] = {}
        self.identity_index: dict[str, str] = {}  # "msisdn:4670..." -> subscriber id
        self.sessions: dict[str, dict[str, Any]] = {}
        self.sessions_by_subscriber: dict[str, set[str]] = {}
        self.groups: dict[str, Group] = {}
        self.transfers: dict[str, Transfer] = {}
        self._sent: dict[str, int] = {}  # "giver|unit|day" -> amount transferred that day
        self.vouchers: dict[str, Voucher] = {}
        self.offers: dict[str, Offer] = {}
        # Transfers to other operators: id -> {from, to, operator, unit, amount, state, buckets}
        self.remote: dict[str, dict[str, Any]] = {}
        self._voucher_tokens: dict[str, str] = {}  # token hash -> voucher id
        # op_id -> (fingerprint, result, at_ms); insertion order is age order, for eviction.
        self.idempotency: dict[str, tuple[bytes, Result, int]] = {}
        # Open reservations by the second they lapse in: removed on commit or release, so
        # the table holds only what is open (a heap would keep every committed one until its
        # expiry came round). The heap holds each second that has an entry, once.
        self._lapse_slots: dict[int, set[tuple[str, str]]] = {}
        self._lapse_seconds: list[int] = []
        self._bucket_expiry_heap: list[tuple[int, str, str]] = []
        self._next_expiry: dict[str, int] = {}  # subscriber id -> soonest reservation expiry
        # Reservations voided lazily because their validity lapsed. Such a void can happen in
        # an operation that is then refused; the store journals that refusal too, so replay
        # voids the same reservations at the same instant.
        self.lapsed_voids = 0
        self._ops: dict[str, Callable[[Args, int], Result]] = {
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
        self, op: str, op_id: str | None, args: Args, now_ms: int
    ) -> tuple[Result, bool, bytes]:
        """As `apply`, also returning the canonical JSON of `args` (what the journal keeps)."""
        fn = self._ops.get(op)
        if fn is None:
            raise InvalidRequest(f"unknown ledger operation {op!r}")
        try:
            content = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:  # e.g. an integer beyond 64 bits
            raise InvalidAmount(f"arguments cannot be recorded: {exc}") from None
        if op_id is None:
            return fn(args, now_ms), True, content
        if type(op_id) is not str or not 0 < len(op_id) <= OP_ID_LEN_MAX:
            raise InvalidRequest(f"op_id must be a string of 1..{OP_ID_LEN_MAX} characters")
        fingerprint = hashlib.blake2b(op.encode() + content, digest_size=16).digest()
        seen = self.idempotency.get(op_id)
        if seen is not None:
            if seen[0] != fingerprint:
                raise Conflict(f"operation id {op_id!r} was used with different content")
            return seen[1], False, content
        result = fn(args, now_ms)
        self._remember(op_id, fingerprint, result, now_ms)
        return result, True, content

    def _remember(self, op_id: str, fingerprint: bytes, result: Result, now_ms: int) -> None:
        table = self.idempotency
        table[op_id] = (fingerprint, result, now_ms)
        if len(table) > self.limits.idempotency_entries_max:
            del table[next(iter(table))]

    def prune_idempotency(self, now_ms: int) -> int:
        """Forget operation ids older than the window. Deterministic given now_ms."""
        horizon = now_ms - self.limits.idempotency_window_ms
        table = self.idempotency
        dropped = 0
        while table:
            key = next(iter(table))
            if table[key][2] >= horizon:
                break
            del table[key]
            dropped += 1
        return dropped

    # ------------------------------------------------------------------ queries

    def subscriber(self, subscriber_id: str) -> Subscriber:
        sub = self.subscribers.get(subscriber_id)
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
        for sub in self.subscribers.values():
            for res in sub.reservations.values():
                if res.pool is not None and res.pool in self.groups:
                    key3 = (res.pool, sub.id, res.unit.value)
                    pool_held[key3] = pool_held.get(key3, 0) + res.pool_units
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
        self._claim_identities(sid, identities)
        status = _enum(Status, args.get("status") or "active", "status")
        sub = Subscriber(sid, identities, status, now_ms, plan=args.get("plan"))
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
            status = _enum(Status, args["status"], "status")
        self._claim_identities(sub.id, identities)
        for key, value in identities.items():
            old = sub.identities.get(key)
            if old is not None:
                self.identity_index.pop(f"{key}:{old}", None)
            sub.identities[key] = value
            self.identity_index[f"{key}:{value}"] = sub.id
        sub.status = status
        if "plan" in args:
            sub.plan = args["plan"]
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
        self._next_expiry.pop(sub.id, None)
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
        origin = _enum(Origin, args.get("origin", "purchase"), "origin")
        bucket = self._new_bucket(sub, _check_id("bucket_id", args.get("bucket_id")), args, origin)
        return bucket.to_json(now_ms)

    def _topup(self, args: Args, now_ms: int) -> Result:
        """Credit a bucket: the one named, the unscoped non-expiring main bucket, or a new one."""
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        amount = total = _check_amount("amount", args.get("amount"))
        repay = 0
        bucket_id = args.get("bucket_id")
        scoped = bool(args.get("rating_groups")) or args.get("expires_at_ms") is not None
        if bucket_id is None and not scoped:
            bucket_id = f"main-{unit.value}"
        if bucket_id is None:
            bucket_id = _check_id("topup_id", args.get("topup_id"))
        line = sub.buckets.get(f"overdraft-{unit.value}")
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
                raise InvalidRequest(f"bucket {bucket_id!r} holds {bucket.unit.value}")
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
        bucket_id = args.get("bucket_id") or f"main-{unit.value}"
        bucket = sub.buckets.get(bucket_id)
        if bucket is None:
            bucket = self._new_bucket(
                sub, bucket_id, {"unit": unit.value, "amount": 0}, Origin.REFUND
            )
        if bucket.unit is not unit:
            raise InvalidRequest(f"bucket {bucket_id!r} holds {bucket.unit.value}")
        bucket.amount += amount
        sub.counter(unit)["refunded"] += amount
        return {"subscriber_id": sub.id, "unit": unit.value, "amount": amount, "bucket": bucket.id}

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
        nxt = self._next_expiry.get(sub.id)
        if nxt is None or nxt > now_ms:
            return
        soonest = NEVER_MS
        for res in list(sub.reservations.values()):
            if res.expires_at_ms <= now_ms:
                self._void(sub, res)
                self.lapsed_voids += 1
            elif res.expires_at_ms < soonest:
                soonest = res.expires_at_ms
        if soonest < NEVER_MS:
            self._next_expiry[sub.id] = soonest
        else:
            self._next_expiry.pop(sub.id, None)

    def _account(self, sub: Subscriber, leg: Leg) -> Subscriber:
        return sub if leg.account is None else self.subscribers[leg.account]

    def _void(self, sub: Subscriber, res: Reservation) -> None:
        for leg in res.legs:
            self._account(sub, leg).buckets[leg.bucket_id].reserved -= leg.amount
        self._settle_pool(res, 0)
        del sub.reservations[res.id]
        self._untrack(sub.id, res)

    def _settle_pool(self, res: Reservation, posted: int) -> None:
        """A pool reservation ends: its hold on the member's room goes, what was used counts."""
        if res.pool is None:
            return
        group = self.groups.get(res.pool)
        member = None if group is None else group.members.get(res.subscriber_id)
        if member is None:  # left the group meanwhile: the pool was charged, nothing to count
            return
        key = res.unit.value
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
        sub = self._active_subscriber(args, now_ms)
        return self._reserve_on(sub, args, now_ms)

    def _reserve_on(
        self,
        sub: Subscriber,
        args: Args,
        now_ms: int,
        payer: Subscriber | None = None,
        base: int = 0,
        zero_rated: bool = False,
    ) -> Result:
        """Hold a grant: unit buckets first, then money by the price (from the payer's buckets
        when a sponsor pays). `base` is what the session already paid with money. A zero-rated
        service takes nothing from any bucket."""
        rid = _check_id("reservation_id", args.get("reservation_id"))
        if rid in sub.reservations:
            raise Conflict(f"reservation {rid!r} is open")
        if len(sub.reservations) >= self.limits.reservations_per_subscriber_max:
            raise LimitReached(
                "too many open reservations", limit=self.limits.reservations_per_subscriber_max
            )
        unit = _unit(args.get("unit"))
        rating_group = args.get("rating_group")
        units_max = _check_amount("units_max", args.get("units_max"))
        units_min = _check_amount("units_min", args.get("units_min", 1))
        validity_ms = _check_amount("validity_ms", args.get("validity_ms"))
        raw_price = args.get("price")
        price = None if raw_price is None else _price(raw_price)
        legs: list[Leg] = []
        need = units_max
        account = None if payer is None else payer.id
        acct = payer or sub
        # A member draws on its own buckets first, then on its group's pool within its room.
        pool, member, room = (None, None, 0) if payer else self._pool_for(sub, unit, now_ms)
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
            session_id=args.get("session_id"),
            priced_units=priced_units,
            price=price if priced_units else None,
            base=base,
            pool=None if pool is None or not pool_units else pool.id,
            pool_units=pool_units,
            pool_money=pool_money,
        )
        if member is not None and pool_units:
            member.held[unit.value] = member.held.get(unit.value, 0) + pool_units
        sub.reservations[rid] = res
        self._track(sub.id, res)
        nxt = self._next_expiry.get(sub.id)
        if nxt is None or expires < nxt:
            self._next_expiry[sub.id] = expires
        return {
            "reservation_id": rid,
            "units": granted,
            "free_units": free_units,
            "exhausted": granted < units_max,
            "validity_ms": validity_ms,
            "expires_at_ms": expires,
            "legs": [leg.to_json() for leg in legs],
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
        threshold = group.restrict_below.get(unit.value)
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
        return {
            "reservation_id": rid,
            "posted_units": posted,
            "money_units": money_units,
            "cost_micros": cost_micros,
            "drawn": drawn,
            "unit": res.unit.value,
            "rating_group": res.rating_group,
        }

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
        rating_group = args.get("rating_group")
        price = _price(args.get("price"))
        used = _check_amount("used_units", args.get("used_units", 0), zero_ok=True)
        rid = args.get("reservation_id")
        reserve = args.get("reserve")
        if reserve:
            # Validate the whole request before anything moves: a refusal after the usage was
            # posted would leave memory ahead of the journal.
            rid = _check_id("reservation_id", rid)
            if not isinstance(reserve, dict):
                raise InvalidRequest("reserve must be an object")
            units_max = _check_amount("units_max", reserve.get("units_max"))
            _check_amount("units_min", reserve.get("units_min", 1))
            _check_amount("validity_ms", reserve.get("validity_ms"))
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
        session = self.sessions.get(args.get("session_id") or "")
        key = str(rating_group)
        base = 0 if session is None else session.get("money_units", {}).get(key, 0)
        result: Result = {"posted_units": 0, "unpaid_units": 0, "drawn": {}, "cost_micros": 0}
        if rid is not None and rid in sub.reservations:
            committed = self._commit_on(sub, rid, used)
            result["posted_units"] = committed["posted_units"]
            result["drawn"] = committed["drawn"]
            result["cost_micros"] = committed["cost_micros"]
            base += committed["money_units"]
        extra = used - result["posted_units"]
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
            session.setdefault("money_units", {})[key] = base
        if not reserve:
            return result
        result["grant"] = None
        if sub.status is Status.BARRED:
            result["refused"] = "barred"
            return result
        try:
            result["grant"] = self._reserve_on(
                sub,
                {
                    **reserve,
                    "units_max": units_max,
                    "reservation_id": rid,
                    "unit": unit.value,
                    "rating_group": rating_group,
                    "price": args.get("price"),
                },
                now_ms,
                payer=payer,
                base=base,
                zero_rated=zero_rated,
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
            member.used[unit.value] = member.used.get(unit.value, 0) + pool_units
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
            args.get("rating_group"),
            units,
            _price(args.get("price")),
            now_ms,
            partial=bool(args.get("partial", False)),
            payer=payer,
            zero_rated=bool(args.get("zero_rated")),
        )
        return {"subscriber_id": sub.id, "unit": unit.value, **result}

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

    # ------------------------------------------------------------------ groups

    def group(self, group_id: str) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            raise NotFound(f"unknown group {group_id!r}")
        return group

    def _group_settings(self, group: Group, args: Args, now_ms: int) -> None:
        """Apply the settings an operation carries; all checked before anything changes."""
        period = args.get("period", group.period)
        if period not in PERIODS:
            raise InvalidRequest(f"period must be one of {list(PERIODS)}", field="period")
        day = args.get("reset_day", group.reset_day)
        valid_day = 0 <= day <= 6 if period == "weekly" else 1 <= day <= 28
        if type(day) is not int or not valid_day:
            raise InvalidRequest("reset_day: 1..28 monthly, 0..6 weekly", field="reset_day")
        restrict = args.get("restrict_below", group.restrict_below)
        if not isinstance(restrict, dict) or any(
            _UNITS.get(k) is None or type(v) is not int or v < 0 for k, v in restrict.items()
        ):
            raise InvalidRequest("restrict_below maps units to amounts", field="restrict_below")
        protected = args.get("protected_priority", group.protected_priority)
        if type(protected) is not int:
            raise InvalidRequest("protected_priority must be an integer")
        policy = args.get("policy", group.policy)
        if not isinstance(policy, dict):
            raise InvalidRequest("policy must be an object", field="policy")
        soft = self._soft_limits(group, args)
        if (period, day) != (group.period, group.reset_day) or group.next_reset_ms >= NEVER_MS:
            group.next_reset_ms = next_reset_ms(period, day, now_ms)
        group.period, group.reset_day = period, day
        group.restrict_below, group.protected_priority = dict(restrict), protected
        group.policy = dict(policy)
        group.soft_overspend_max = soft

    def _soft_limits(self, group: Group, args: Args) -> dict[str, int]:
        """Strict or soft mode; a credit line can change only while nothing was drawn on it."""
        mode = args.get("mode", "soft" if group.soft_overspend_max else "strict")
        if mode not in ("strict", "soft"):
            raise InvalidRequest("mode must be strict or soft", field="mode")
        limits = args.get("soft_overspend_max", group.soft_overspend_max)
        if not isinstance(limits, dict) or any(
            _UNITS.get(k) is None or type(v) is not int or not 0 < v <= AMOUNT_MAX
            for k, v in limits.items()
        ):
            raise InvalidRequest(
                "soft_overspend_max maps units to positive amounts", field="soft_overspend_max"
            )
        if mode == "soft" and not limits:
            raise InvalidRequest("soft mode needs soft_overspend_max", field="soft_overspend_max")
        wanted = dict(limits) if mode == "soft" else {}
        pool = self.subscribers.get(group.id)
        for unit in set(wanted) | set(group.soft_overspend_max):
            line = None if pool is None else pool.buckets.get(f"overdraft-{unit}")
            if (
                wanted.get(unit) != group.soft_overspend_max.get(unit)
                and line is not None
                and (line.amount != line.initial or line.reserved)
            ):
                raise Conflict(f"the {unit} credit line is in use; repay it first")
        return wanted

    def _sync_overdraft(self, group: Group) -> None:
        """Make the pool's credit-line buckets match the group's soft limits."""
        pool = self.subscribers[group.id]
        for b in [b for b in pool.buckets.values() if b.origin is Origin.OVERDRAFT]:
            if group.soft_overspend_max.get(b.unit.value) != b.initial:
                pool.counter(b.unit)["debited"] += b.amount  # an unused line is withdrawn
                del pool.buckets[b.id]
        for unit_name, limit in group.soft_overspend_max.items():
            bucket_id = f"overdraft-{unit_name}"
            if bucket_id not in pool.buckets:
                args = {"unit": unit_name, "amount": limit, "priority": 2**31 - 1}
                self._new_bucket(pool, bucket_id, args, Origin.OVERDRAFT)

    def _create_group(self, args: Args, now_ms: int) -> Result:
        gid = _check_id("group_id", args.get("group_id"))
        owner = self.subscriber(args.get("owner", ""))
        if gid in self.subscribers or gid in self.groups:
            raise Conflict(f"id {gid!r} is taken")
        if owner.group is not None or owner.kind != "subscriber":
            raise Conflict(f"owner {owner.id!r} already draws on group {owner.group!r}")
        group = Group(gid, owner.id, now_ms)
        self._group_settings(group, args, now_ms)
        self.subscribers[gid] = Subscriber(gid, {}, Status.ACTIVE, now_ms, kind="group")
        self.groups[gid] = group
        self._sync_overdraft(group)
        group.members[owner.id] = Member(owner.id, 0)
        owner.group = gid
        return group.to_json()

    def _update_group(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        probe = Group.from_json(group.to_json())
        self._group_settings(probe, args, now_ms)  # all checks pass before anything changes
        self._group_settings(group, args, now_ms)
        self._sync_overdraft(group)
        return group.to_json()

    @staticmethod
    def _member_settings(member: Member, args: Args) -> None:
        priority = args.get("priority", member.priority)
        if type(priority) is not int or not 0 <= priority < 2**31:
            raise InvalidRequest("priority must be an integer >= 0", field="priority")
        caps = args.get("caps", member.caps)
        if not isinstance(caps, dict) or any(
            _UNITS.get(k) is None or (v is not None and (type(v) is not int or v < 0))
            for k, v in caps.items()
        ):
            raise InvalidRequest("caps maps units to amounts per period", field="caps")
        member.priority = priority
        member.caps = {k: v for k, v in caps.items() if v is not None}

    def _add_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        sub = self.subscriber(args.get("subscriber_id", ""))
        if sub.kind != "subscriber":
            raise InvalidRequest("only subscribers can be members")
        if sub.group is not None:
            raise Conflict(f"{sub.id!r} already draws on group {sub.group!r}")
        member = Member(sub.id)
        self._member_settings(member, args)
        group.members[sub.id] = member
        sub.group = group.id
        return member.to_json()

    def _update_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        member = group.members.get(args.get("subscriber_id", ""))
        if member is None:
            raise NotFound("not a member of this group")
        self._member_settings(
            Member(member.subscriber_id, member.priority, dict(member.caps)), args
        )  # all checks pass before anything changes
        self._member_settings(member, args)
        return member.to_json()

    def _remove_member(self, args: Args, now_ms: int) -> Result:
        group = self.group(args.get("group_id", ""))
        sid = args.get("subscriber_id", "")
        if sid == group.owner:
            raise Conflict("the owner cannot leave the group")
        if group.members.pop(sid, None) is None:
            raise NotFound("not a member of this group")
        self.subscribers[sid].group = None
        return {"group_id": group.id, "removed": sid}

    def _group_reset(self, args: Args, now_ms: int) -> Result:
        """A new period: what members used from the pool counts from zero again."""
        group = self.group(args.get("group_id", ""))
        for member in group.members.values():
            member.used = {}
        group.next_reset_ms = next_reset_ms(group.period, group.reset_day, now_ms)
        return group.to_json()

    def pool_available(self, group_id: str, unit: Unit, now_ms: int) -> int:
        pool = self.subscribers[group_id]
        return sum(b.available for b in self._candidates(pool, unit, None, now_ms))

    def policy_counters(self, subscriber_id: str, now_ms: int) -> list[dict[str, Any]]:
        """Counter statuses a policy function reads: the member's caps and its pool's."""
        sub = self.subscriber(subscriber_id)
        group = None if sub.group is None else self.groups.get(sub.group)
        if group is None:
            return []
        counters: list[dict[str, Any]] = []
        member = group.members[sub.id]
        pool = self.subscribers[group.id]
        for unit in Unit:
            cap = member.caps.get(unit.value)
            has_buckets = any(b.unit is unit for b in pool.buckets.values())
            if cap is None and not has_buckets:
                continue
            available = self.pool_available(group.id, unit, now_ms)
            threshold = group.restrict_below.get(unit.value)
            if available == 0:
                status = "pool-exhausted"
            elif threshold is not None and available < threshold:
                status = "pool-low"
            else:
                status = "normal"
            counters.append(
                {
                    "id": f"{group.id}/pool/{unit.value}",
                    "owner": group.owner,
                    "unit": unit.value,
                    "status": status,
                    "available": available,
                }
            )
            if cap is not None:
                used = member.used.get(unit.value, 0) + member.held.get(unit.value, 0)
                counters.append(
                    {
                        "id": f"{group.id}/member/{sub.id}/{unit.value}",
                        "unit": unit.value,
                        "cap": cap,
                        "used": used,
                        "status": "member-cap-reached" if used >= cap else "normal",
                    }
                )
        return counters

    # ------------------------------------------------------------------ moving quota

    def _transfer(self, args: Args, now_ms: int) -> Result:
        """Give free credit to another subscriber, at once and whole, or refuse saying why."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        if len(self.transfers) >= self.limits.transfers_max:
            raise LimitReached("transfer table full", limit=self.limits.transfers_max)
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        receiver = self._subject({"subscriber_id": args.get("to", "")}, now_ms)
        check_parties(giver, receiver)
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        day_key = f"{giver.id}|{unit.value}|{now_ms // DAY_MS}"
        check_limits(self.limits.transfers, giver, unit, amount, self._sent.get(day_key, 0), now_ms)
        plan = plan_transfer(giver, unit, amount, now_ms)
        expiries = [gift_expiry(args, b) for b, _ in plan]  # all checked before anything moves
        if len(receiver.buckets) + len(plan) > self.limits.buckets_per_subscriber_max:
            raise LimitReached(
                "the receiver has too many buckets", limit=self.limits.buckets_per_subscriber_max
            )
        gifts = self._move(giver, receiver, unit, plan, expiries, tid, now_ms)
        self._sent[day_key] = self._sent.get(day_key, 0) + amount
        transfer = Transfer(tid, giver.id, receiver.id, unit, amount, now_ms, gifts)
        if args.get("donation"):
            transfer.donation = True
            transfer.reward = self._reward(giver, unit, amount, tid)
        self.transfers[tid] = transfer
        return transfer.to_json()

    def _reward(self, donor: Subscriber, unit: Unit, amount: int, tid: str) -> dict[str, Any]:
        """A donor's reward by the configured rule: new credit in a bucket of its own."""
        rule = self.limits.transfers.rewards.get(unit.value)
        if not rule:
            return {"unit": None, "amount": 0}
        earned = amount // int(rule["per_units"]) * int(rule["amount"])
        reward_unit = str(rule["reward_unit"])
        if earned:
            self._new_bucket(
                donor, f"reward-{tid}", {"unit": reward_unit, "amount": earned}, Origin.PROMOTION
            )
        return {"unit": reward_unit, "amount": earned}

    def transfer_report(self, transfer_id: str) -> dict[str, Any]:
        """A transfer, with how much of what was given the receiver has used so far."""
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            raise transfer_unknown(transfer_id)
        holder = self.subscribers.get(transfer.receiver)
        left = 0
        if holder is not None:
            left = sum(holder.buckets[b].amount for b in transfer.buckets if b in holder.buckets)
        returned = 0
        if transfer.reversed_by is not None and transfer.reversed_by in self.transfers:
            returned = self.transfers[transfer.reversed_by].amount
        return {
            **transfer.to_json(),
            "left": left,
            "used": max(0, transfer.amount - left - returned),
        }

    def _move(
        self,
        giver: Subscriber,
        receiver: Subscriber,
        unit: Unit,
        plan: list[tuple[Bucket, int]],
        expiries: list[int],
        tid: str,
        now_ms: int,
    ) -> list[str]:
        gifts: list[str] = []
        for n, ((source, take), expires) in enumerate(zip(plan, expiries, strict=True)):
            source.amount -= take
            bucket_id = f"gift-{tid}-{n}"
            self._new_bucket(
                receiver,
                bucket_id,
                {
                    "unit": unit.value,
                    "amount": take,
                    "expires_at_ms": None if expires >= NEVER_MS else expires,
                },
                Origin.GIFT,
            )
            gifts.append(bucket_id)
        total = sum(take for _, take in plan)
        giver.counter(unit)["transferred_out"] += total
        # _new_bucket counted the gifts as credited: they are transferred in, not new credit.
        receiver.counter(unit)["credited"] -= total
        receiver.counter(unit)["transferred_in"] += total
        return gifts

    def _reverse_transfer(self, args: Args, now_ms: int) -> Result:
        """Give back what is left of a transfer's gift buckets; itself a transfer."""
        original = self.transfers.get(args.get("transfer_id", ""))
        if original is None:
            raise transfer_unknown(str(args.get("transfer_id")))
        if original.reversed_by is not None:
            raise already_reversed(original)
        rid = _check_id("reversal_id", args.get("reversal_id"))
        if rid in self.transfers:
            raise Conflict(f"transfer id {rid!r} is taken")
        holder = self._subject({"subscriber_id": original.receiver}, now_ms)
        back_to = self._subject({"subscriber_id": original.giver}, now_ms)
        left = sum(
            holder.buckets[b].available
            for b in original.buckets
            if b in holder.buckets and holder.buckets[b].usable(now_ms)
        )
        if left == 0:
            raise NoCredit("nothing of the transfer is left to give back")
        plan = plan_transfer(holder, original.unit, left, now_ms, only=original.buckets)
        expiries = [b.expires_at_ms for b, _ in plan]
        gifts = self._move(holder, back_to, original.unit, plan, expiries, rid, now_ms)
        reversal = Transfer(rid, holder.id, back_to.id, original.unit, left, now_ms, gifts)
        self.transfers[rid] = reversal
        original.reversed_by = rid
        return {**reversal.to_json(), "reverses": original.id}

    def _set_providers(self, args: Args, now_ms: int) -> Result:
        """Who pays, in order and within a monthly limit, when the subscriber runs low."""
        sub = self._subject(args, now_ms)
        raw = args.get("providers")
        if not isinstance(raw, list) or len(raw) > PROVIDERS_MAX:
            raise InvalidRequest(
                f"providers must be a list of at most {PROVIDERS_MAX}", field="providers"
            )
        providers: list[dict[str, Any]] = []
        for n, p in enumerate(raw):
            where = f"providers[{n}]"
            if not isinstance(p, dict) or set(p) - {"id", "limit"}:
                raise InvalidRequest(f"{where} needs id and limit only", field="providers")
            provider = self.subscriber(_check_id(f"{where}.id", p.get("id")))
            if provider.id == sub.id or provider.kind != "subscriber":
                raise InvalidRequest(f"{where} cannot provide", field="providers")
            limit = p.get("limit")
            if (
                not isinstance(limit, dict)
                or not limit
                or any(
                    _UNITS.get(k) is None or type(v) is not int or not 0 < v <= AMOUNT_MAX
                    for k, v in limit.items()
                )
            ):
                raise InvalidRequest(
                    f"{where}.limit maps units to monthly amounts", field="providers"
                )
            providers.append({"id": provider.id, "limit": dict(limit)})
        sub.providers = providers
        return {"subscriber_id": sub.id, "providers": [dict(p) for p in providers]}

    def _provider_topup(self, args: Args, now_ms: int) -> Result:
        """Top the subscriber up from its providers, in order, each within what it allows this
        month and what it has free; refused (no_credit) when none can give anything."""
        sub = self._subject(args, now_ms)
        unit = _unit(args.get("unit"))
        want = _check_amount("amount", args.get("amount"))
        tid = _check_id("topup_id", args.get("topup_id"))
        month = _month(now_ms)
        given: list[dict[str, Any]] = []
        for n, p in enumerate(sub.providers):
            if want == 0:
                break
            provider = self.subscribers.get(p["id"])
            if provider is None or provider.status is Status.BARRED:
                continue
            key = f"prov|{sub.id}|{provider.id}|{unit.value}|{month}"
            room = p["limit"].get(unit.value, 0) - self._sent.get(key, 0)
            free = sum(
                b.available
                for b in provider.buckets.values()
                if b.unit is unit
                and not b.rating_groups
                and b.usable(now_ms)
                and b.origin is not Origin.OVERDRAFT
            )
            take = min(want, room, free)
            if take <= 0:
                continue
            plan = plan_transfer(provider, unit, take, now_ms)
            expiries = [b.expires_at_ms for b, _ in plan]
            self._move(provider, sub, unit, plan, expiries, f"{tid}-{n}", now_ms)
            self._sent[key] = self._sent.get(key, 0) + take
            given.append({"provider": provider.id, "amount": take})
            want -= take
        if not given:
            raise NoCredit("no provider could give anything", unit=unit.value)
        return {
            "subscriber_id": sub.id,
            "unit": unit.value,
            "given": given,
            "amount": sum(g["amount"] for g in given),
        }

    def _set_postpaid(self, args: Args, now_ms: int) -> Result:
        """A postpaid account: money it spends beyond its balance draws on a credit line
        (`overdraft-money`) up to the credit limit; what it owes is what the line misses."""
        sub = self._subject(args, now_ms)
        if sub.kind != "subscriber":
            raise InvalidRequest("only a subscriber can be postpaid")
        limit = _check_amount("credit_limit_micros", args.get("credit_limit_micros"))
        line = sub.buckets.get("overdraft-money")
        if line is not None:
            if line.amount != line.initial or line.reserved:
                raise Conflict("the credit line is in use; settle the bill first")
            sub.counter(Unit.MONEY)["debited"] += line.amount
            del sub.buckets[line.id]
        self._new_bucket(
            sub,
            "overdraft-money",
            {"unit": "money", "amount": limit, "priority": 2**31 - 1},
            Origin.OVERDRAFT,
        )
        return {"subscriber_id": sub.id, "credit_limit_micros": limit, "owed_micros": 0}

    def _allowance_transfer(self, args: Args, now_ms: int) -> Result:
        """A postpaid account gives part of its allowance to a prepaid subscriber and is
        credited with its money value (priced by the rater; first repaying what it owes)."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        if "overdraft-money" not in giver.buckets:
            raise InvalidRequest("the giver is not a postpaid account", field="from")
        value = _check_amount("value_micros", args.get("value_micros"), zero_ok=True)
        result = self._transfer({**args, "transfer_id": tid}, now_ms)
        if value:
            credit = self._topup(
                {
                    "subscriber_id": giver.id,
                    "unit": "money",
                    "amount": value,
                    "topup_id": f"value-{tid}",
                },
                now_ms,
            )
            result["repaid_micros"] = credit.get("repaid", 0)
        result["value_micros"] = value
        return result

    def _account_of(self, account_id: str, kind: str, now_ms: int) -> Subscriber:
        account = self.subscribers.get(account_id)
        if account is None:
            account = Subscriber(account_id, {}, Status.ACTIVE, now_ms, kind=kind)
            self.subscribers[account_id] = account
        return account

    def _interop_hold(self, args: Args, now_ms: int) -> Result:
        """Step 1 of a transfer to another operator: the quota leaves the giver into escrow."""
        tid = _check_id("transfer_id", args.get("transfer_id"))
        if tid in self.remote or tid in self.transfers:
            raise Conflict(f"transfer id {tid!r} is taken")
        giver = self._subject({"subscriber_id": args.get("from", "")}, now_ms)
        if giver.kind != "subscriber" or giver.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can give", field="from")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        operator = _check_id("operator", args.get("operator"))
        to = _check_id("to", args.get("to"))
        day_key = f"{giver.id}|{unit.value}|{now_ms // DAY_MS}"
        check_limits(self.limits.transfers, giver, unit, amount, self._sent.get(day_key, 0), now_ms)
        plan = plan_transfer(giver, unit, amount, now_ms)
        escrow = self._account_of("escrow:interop", "escrow", now_ms)
        expiries = [b.expires_at_ms for b, _ in plan]
        buckets = self._move(giver, escrow, unit, plan, expiries, tid, now_ms)
        self._sent[day_key] = self._sent.get(day_key, 0) + amount
        record = {
            "id": tid,
            "from": giver.id,
            "to": to,
            "operator": operator,
            "unit": unit.value,
            "amount": amount,
            "state": "held",
            "buckets": buckets,
            "at_ms": now_ms,
        }
        self.remote[tid] = record
        return dict(record, buckets=list(buckets))

    def _remote_held(self, args: Args) -> dict[str, Any]:
        record = self.remote.get(args.get("transfer_id", ""))
        if record is None:
            raise NotFound(f"no transfer to another operator {args.get('transfer_id')!r}")
        if record["state"] != "held":
            raise Conflict(f"transfer {record['id']!r} is already {record['state']}")
        return record

    def _release_escrow(self, record: dict[str, Any], to: Subscriber, now_ms: int) -> None:
        escrow = self.subscribers["escrow:interop"]
        unit = Unit(record["unit"])
        plan = [
            (escrow.buckets[b], escrow.buckets[b].amount)
            for b in record["buckets"]
            if b in escrow.buckets and escrow.buckets[b].amount
        ]
        expiries = [b.expires_at_ms for b, _ in plan]
        self._move(escrow, to, unit, plan, expiries, f"{record['id']}-{record['state']}", now_ms)
        for b, _ in plan:
            del escrow.buckets[b.id]  # emptied; the escrow keeps no husks

    def _interop_settle(self, args: Args, now_ms: int) -> Result:
        """Step 2, yes: the other operator credited its subscriber; the escrow goes to the
        account of what was sent to that operator."""
        record = self._remote_held(args)
        record["state"] = "delivered"
        settled = self._account_of(f"operator:{record['operator']}", "operator", now_ms)
        self._release_escrow(record, settled, now_ms)
        return dict(record, buckets=list(record["buckets"]))

    def _interop_cancel(self, args: Args, now_ms: int) -> Result:
        """Step 2, no: the other operator refused for good; the quota goes back to the giver."""
        record = self._remote_held(args)
        record["state"] = "refused"
        record["reason"] = str(args.get("reason", ""))[:200]
        self._release_escrow(record, self._account_of(record["from"], "subscriber", now_ms), now_ms)
        return dict(record, buckets=list(record["buckets"]))

    def _interop_credit(self, args: Args, now_ms: int) -> Result:
        """The receiving side: credit our subscriber with what another operator sent."""
        operator = _check_id("operator", args.get("operator"))
        receiver = self._subject({"subscriber_id": args.get("subscriber_id", "")}, now_ms)
        if receiver.kind != "subscriber" or receiver.status is Status.BARRED:
            raise InvalidRequest("the receiver cannot receive", field="to")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        tid = _check_id("transfer_id", args.get("transfer_id"))
        bucket = self._new_bucket(
            receiver, f"from-{operator}-{tid}", {"unit": unit.value, "amount": amount}, Origin.GIFT
        )
        # New value here, mirrored by what the sending operator settles to our account there.
        receiver.counter(unit)["credited"] -= amount
        receiver.counter(unit)["transferred_in"] += amount
        self._account_of(f"operator:{operator}", "operator", now_ms).counter(unit)[
            "transferred_out"
        ] += amount
        self._account_of(f"operator:{operator}", "operator", now_ms).counter(unit)["credited"] += (
            amount
        )
        return {
            "transfer_id": tid,
            "operator": operator,
            "subscriber_id": receiver.id,
            "unit": unit.value,
            "amount": amount,
            "bucket": bucket.id,
        }

    def _create_offer(self, args: Args, now_ms: int) -> Result:
        """A network offers spare quota for sale: its account is credited with what it offers."""
        oid = _check_id("offer_id", args.get("offer_id"))
        if oid in self.offers:
            raise Conflict(f"offer id {oid!r} is taken")
        network = _check_id("network", args.get("network"))
        unit = _unit(args.get("unit"))
        if unit is Unit.MONEY:
            raise InvalidRequest("offers sell octets, seconds or events", field="unit")
        block = _check_amount("block_units", args.get("block_units"))
        price = _check_amount("price_micros", args.get("price_micros"), zero_ok=True)
        blocks = _check_amount("blocks", args.get("blocks"))
        _check_amount("offered units", block * blocks)
        offer = Offer(oid, network, unit, block, price, blocks)
        seller = self.subscribers.get(offer.account)
        if seller is None:
            seller = Subscriber(offer.account, {}, Status.ACTIVE, now_ms, kind="network")
            self.subscribers[seller.id] = seller
        self._new_bucket(
            seller, f"offer-{oid}", {"unit": unit.value, "amount": block * blocks}, Origin.PURCHASE
        )
        self.offers[oid] = offer
        return offer.to_json()

    def _buy_quota(self, args: Args, now_ms: int) -> Result:
        """Buy at least `units` from the cheapest offers of the buyer's own network, paying in
        whole blocks with the buyer's free money; all or nothing."""
        pid = _check_id("purchase_id", args.get("purchase_id"))
        buyer = self._subject(args, now_ms)
        if buyer.kind != "subscriber" or buyer.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can buy quota")
        unit = _unit(args.get("unit"))
        want = _check_amount("units", args.get("units"))
        offers = sorted(
            (
                o
                for o in self.offers.values()
                if o.unit is unit and o.blocks_left and o.serves(buyer)
            ),
            key=lambda o: (o.price_micros / o.block_units, o.id),
        )
        picks: list[tuple[Offer, int]] = []
        for offer in offers:
            if want <= 0:
                break
            blocks = min(offer.blocks_left, _ceil_div(want, offer.block_units))
            picks.append((offer, blocks))
            want -= blocks * offer.block_units
        if want > 0:
            raise NoCredit("the network's offers do not cover that much", missing_units=want)
        cost = sum(o.price_micros * n for o, n in picks)
        # Every check before anything moves: the money must be there, free and unscoped.
        if cost:
            plan_transfer(buyer, Unit.MONEY, cost, now_ms)
        bought = 0
        for n, (offer, blocks) in enumerate(picks):
            seller = self.subscribers[offer.account]
            units = blocks * offer.block_units
            plan = plan_transfer(seller, unit, units, now_ms, only=[f"offer-{offer.id}"])
            self._move(seller, buyer, unit, plan, [NEVER_MS] * len(plan), f"{pid}-{n}", now_ms)
            price = offer.price_micros * blocks
            if price:  # each seller is paid for its own blocks
                pay = plan_transfer(buyer, Unit.MONEY, price, now_ms)
                self._move(
                    buyer, seller, Unit.MONEY, pay, [NEVER_MS] * len(pay), f"{pid}-pay-{n}", now_ms
                )
            offer.blocks_left -= blocks
            bought += units
        return {
            "purchase_id": pid,
            "subscriber_id": buyer.id,
            "unit": unit.value,
            "units": bought,
            "cost_micros": cost,
            "offers": [{"offer": o.id, "blocks": n} for o, n in picks],
        }

    def _create_voucher(self, args: Args, now_ms: int) -> Result:
        """Carve `amount` out of the parent's free credit into a voucher account, at once."""
        vid = _check_id("voucher_id", args.get("voucher_id"))
        if vid in self.vouchers:
            raise Conflict(f"voucher id {vid!r} is taken")
        token_hash = args.get("token_hash")
        if (
            type(token_hash) is not str
            or len(token_hash) != 64
            or token_hash in self._voucher_tokens
        ):
            raise InvalidRequest("token_hash must be a fresh SHA-256 in hex")
        parent = self._subject({"subscriber_id": args.get("parent", "")}, now_ms)
        if parent.kind != "subscriber" or parent.status is Status.BARRED:
            raise InvalidRequest("only an active subscriber can issue vouchers", field="parent")
        unit = _unit(args.get("unit"))
        amount = _check_amount("amount", args.get("amount"))
        expires = args.get("expires_at_ms")
        expires = NEVER_MS if expires is None else _check_amount("expires_at_ms", expires)
        if expires <= now_ms:
            raise InvalidRequest("a voucher must expire in the future", field="expires_at")
        plan = plan_transfer(parent, unit, amount, now_ms)
        voucher = Voucher(vid, parent.id, unit, amount, token_hash, now_ms, expires)
        account = Subscriber(voucher.account, {}, Status.ACTIVE, now_ms, kind="voucher")
        self.subscribers[account.id] = account
        self._move(parent, account, unit, plan, [b.expires_at_ms for b, _ in plan], vid, now_ms)
        self.vouchers[vid] = voucher
        self._voucher_tokens[token_hash] = vid
        return voucher.to_json()

    def _redeem_voucher(self, args: Args, now_ms: int) -> Result:
        """Whoever holds the token takes the voucher's credit; a token works once."""
        vid = self._voucher_tokens.get(str(args.get("token_hash")))
        voucher = None if vid is None else self.vouchers[vid]
        if voucher is None or voucher.state != "issued" or voucher.expires_at_ms <= now_ms:
            raise no_such_voucher()
        owner = self._subject({"subscriber_id": args.get("subscriber_id", "")}, now_ms)
        if owner.kind != "subscriber":
            raise InvalidRequest("only a subscriber can redeem a voucher", field="subscriber_id")
        gifts = self._empty_voucher(voucher, owner, now_ms)
        voucher.state, voucher.redeemed_by = "redeemed", owner.id
        return {**voucher.to_json(), "buckets": gifts}

    def _empty_voucher(self, voucher: Voucher, to: Subscriber, now_ms: int) -> list[str]:
        account = self.subscribers[voucher.account]
        left = sum(b.available for b in account.buckets.values() if b.usable(now_ms))
        if not left:
            return []
        plan = plan_transfer(account, voucher.unit, left, now_ms)
        expiries = [b.expires_at_ms for b, _ in plan]
        return self._move(account, to, voucher.unit, plan, expiries, f"v-{voucher.id}", now_ms)

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
        for voucher in sorted(self.vouchers.values(), key=lambda v: v.id):
            if voucher.state == "issued" and voucher.expires_at_ms <= now_ms:
                # An unredeemed voucher's value goes back to the parent that issued it.
                parent = self.subscribers.get(voucher.parent)
                if parent is not None:
                    self._empty_voucher(voucher, parent, now_ms)
                voucher.state = "expired"
        today = now_ms // DAY_MS
        month = _month(now_ms)
        for key in [k for k in self._sent if _stale(k, today, month)]:
            del self._sent[key]  # per-day transfer and per-month provider totals of the past
        resets = sorted(g.id for g in self.groups.values() if g.next_reset_ms <= now_ms)
        for gid in resets:
            self._group_reset({"group_id": gid}, now_ms)
        return {
            "voided": voided,
            "purged_buckets": purged,
            "pruned_ids": pruned,
            "group_resets": resets,
        }

    def next_deadline_ms(self) -> int | None:
        """When the next reservation lapses or bucket expires (for the sweeper's timer)."""
        times = [self._lapse_seconds[0] * 1000] if self._lapse_seconds else []
        times += [g.next_reset_ms for g in self.groups.values() if g.next_reset_ms < NEVER_MS]
        times += [
            v.expires_at_ms
            for v in self.vouchers.values()
            if v.state == "issued" and v.expires_at_ms < NEVER_MS
        ]
        if self._bucket_expiry_heap:
            times.append(self._bucket_expiry_heap[0][0])
        return min(times) if times else None

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        return {
            "subscribers": [s.to_json() for s in self.subscribers.values()],
            "sessions": self.sessions,
            "groups": [g.to_json() for g in self.groups.values()],
            "transfers": [t.to_json() for t in self.transfers.values()],
            "sent": self._sent,
            "vouchers": [v.to_json() for v in self.vouchers.values()],
            "offers": [o.to_json() for o in self.offers.values()],
            "remote": list(self.remote.values()),
            "idempotency": [[k, v[0].hex(), v[1], v[2]] for k, v in self.idempotency.items()],
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
                nxt = ledger._next_expiry.get(sub.id)
                if nxt is None or res.expires_at_ms < nxt:
                    ledger._next_expiry[sub.id] = res.expires_at_ms
            for b in sub.buckets.values():
                if b.expires_at_ms < NEVER_MS:
                    heapq.heappush(ledger._bucket_expiry_heap, (b.expires_at_ms, sub.id, b.id))
        ledger.groups = {g["id"]: Group.from_json(g) for g in doc.get("groups", [])}
        ledger.transfers = {t["id"]: Transfer.from_json(t) for t in doc.get("transfers", [])}
        ledger._sent = dict(doc.get("sent", {}))
        ledger.vouchers = {v["id"]: Voucher.from_json(v) for v in doc.get("vouchers", [])}
        ledger._voucher_tokens = {v.token_hash: v.id for v in ledger.vouchers.values()}
        ledger.offers = {o["id"]: Offer.from_json(o) for o in doc.get("offers", [])}
        ledger.remote = {r["id"]: dict(r) for r in doc.get("remote", [])}
        ledger.sessions = dict(doc["sessions"])
        for session_id, record in ledger.sessions.items():
            ledger.sessions_by_subscriber.setdefault(record["subscriber_id"], set()).add(session_id)
        ledger.idempotency = {
            k: (bytes.fromhex(fp), result, at) for k, fp, result, at in doc["idempotency"]
        }
        return ledger
