"""Thresholds: what to watch, and the pure rules that turn a balance into crossings.

A threshold watches, for one subscriber or for every subscriber (`subscriber_id` null):
- scope "subscriber": the balance of one unit over all usable buckets;
- scope "bucket": one bucket by id, or every bucket (of a unit, if given);
- scope "group": a shared group or member cap, through a GroupResolver (groups do not exist
  yet; the hook is here so they plug in without changing delivery or the API).

The balance is what is left *including* reserved units, so grants and releases do not make a
threshold flap; it moves on consumption and credit only. A level is absolute (`below_units`)
or a percentage (`below_percent`) of the base: the balance right after the latest credit, or
the buckets' initial amounts when larger (and after a restart, until the next credit).

Each target is "ok", "low" or "exhausted"; only a change of state notifies, so a threshold
fires once per crossing, not on every debit:
    ok -> low: low_balance      any -> exhausted: exhausted
    low/exhausted -> ok: credit_restored      exhausted -> low: (silent)
`expiring_within_s` announces once each bucket with credit left that expires that soon.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from quotaflow.ledger import NEVER_MS, Bucket, InvalidRequest, Subscriber, Unit

SCOPES = ("subscriber", "bucket", "group", "member_cap")
OK, LOW, EXHAUSTED, ANNOUNCED = "ok", "low", "exhausted", "announced"
THRESHOLD_FIELDS = {
    "id",
    "scope",
    "subscriber_id",
    "unit",
    "bucket_id",
    "group_id",
    "below_units",
    "below_percent",
    "expiring_within_s",
    "offer_choice",
}


class GroupResolver(Protocol):
    """The hook for group and member-cap thresholds (to be provided with shared groups)."""

    async def groups_of(self, subscriber_id: str) -> list[str]: ...

    async def group_balance(self, group_id: str, unit: Unit) -> tuple[int, int]:
        """(balance left, base for percentages) of a group or a member's cap."""
        ...


@dataclass(frozen=True, slots=True)
class Threshold:
    id: str
    scope: str = "subscriber"
    subscriber_id: str | None = None  # None: every subscriber
    unit: Unit | None = None
    bucket_id: str | None = None
    group_id: str | None = None
    below_units: int | None = None
    below_percent: int | None = None
    expiring_within_s: int | None = None
    offer_choice: bool = True  # a low balance with several sessions offers a choice

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "subscriber_id": self.subscriber_id,
            "unit": None if self.unit is None else self.unit.value,
            "bucket_id": self.bucket_id,
            "group_id": self.group_id,
            "below_units": self.below_units,
            "below_percent": self.below_percent,
            "expiring_within_s": self.expiring_within_s,
            "offer_choice": self.offer_choice,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Threshold:
        """Validated; raises InvalidRequest naming the field."""
        unknown = sorted(set(doc) - THRESHOLD_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
        scope = doc.get("scope", "subscriber")
        if scope not in SCOPES:
            raise InvalidRequest(f"scope must be one of {SCOPES}", field="scope")
        unit = None
        if doc.get("unit") is not None:
            try:
                unit = Unit(doc["unit"])
            except ValueError:
                raise InvalidRequest("unknown unit", field="unit") from None
        if scope in ("subscriber", "group", "member_cap") and unit is None:
            raise InvalidRequest(f"a {scope} threshold needs a unit", field="unit")
        if scope in ("group", "member_cap") and not doc.get("group_id"):
            raise InvalidRequest(f"a {scope} threshold needs group_id", field="group_id")
        if scope == "member_cap" and not doc.get("subscriber_id"):
            raise InvalidRequest(
                "a member_cap threshold needs subscriber_id", field="subscriber_id"
            )
        for name in ("subscriber_id", "bucket_id", "group_id", "id"):
            if doc.get(name) is not None and not (
                isinstance(doc[name], str) and 0 < len(doc[name]) <= 120
            ):
                raise InvalidRequest(f"{name} must be a string of 1..120 characters", field=name)
        below_units = _opt_int(doc, "below_units", 0, 2**62)
        below_percent = _opt_int(doc, "below_percent", 1, 100)
        expiring = _opt_int(doc, "expiring_within_s", 1, 10 * 365 * 86400)
        if below_units is not None and below_percent is not None:
            raise InvalidRequest("give below_units or below_percent, not both", field="below_units")
        if below_units is None and below_percent is None and expiring is None:
            raise InvalidRequest(
                "a threshold needs below_units, below_percent or expiring_within_s",
                field="below_units",
            )
        offer = doc.get("offer_choice", True)
        if not isinstance(offer, bool):
            raise InvalidRequest("offer_choice must be a boolean", field="offer_choice")
        return cls(
            id=doc.get("id") or f"th-{uuid.uuid4().hex[:12]}",
            scope=scope,
            subscriber_id=doc.get("subscriber_id"),
            unit=unit,
            bucket_id=doc.get("bucket_id"),
            group_id=doc.get("group_id"),
            below_units=below_units,
            below_percent=below_percent,
            expiring_within_s=expiring,
            offer_choice=offer,
        )

    @property
    def has_level(self) -> bool:
        return self.below_units is not None or self.below_percent is not None

    def applies_to(self, subscriber_id: str) -> bool:
        return self.subscriber_id is None or self.subscriber_id == subscriber_id

    def level(self, base: int) -> int:
        if self.below_units is not None:
            return self.below_units
        assert self.below_percent is not None
        return -(-base * self.below_percent // 100)


def _opt_int(doc: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer in {low}..{high}", field=name)
    return value


@dataclass(frozen=True, slots=True)
class Target:
    """One thing a threshold measures for one subscriber: a unit's total, or one bucket."""

    key: str  # stable: "<subscriber>/<unit>" or "<subscriber>/bucket/<id>"
    balance: int
    initial: int
    unit: Unit
    bucket_id: str | None = None


def targets(th: Threshold, sub: Subscriber, now_ms: int) -> list[Target]:
    """The balances a subscriber- or bucket-scoped threshold watches for this subscriber."""
    usable = [b for b in sub.buckets.values() if b.usable(now_ms)]
    if th.scope == "subscriber":
        assert th.unit is not None
        mine = [b for b in usable if b.unit is th.unit]
        return [
            Target(
                f"{sub.id}/{th.unit.value}",
                sum(b.amount for b in mine),
                sum(b.initial for b in mine),
                th.unit,
            )
        ]
    if th.scope == "bucket":
        return [
            Target(f"{sub.id}/bucket/{b.id}", b.amount, b.initial, b.unit, b.id)
            for b in usable
            if (th.bucket_id is None or b.id == th.bucket_id)
            and (th.unit is None or b.unit is th.unit)
        ]
    return []


def next_state(th: Threshold, state: str, balance: int, base: int) -> tuple[str, str | None]:
    """(new state, notification type or None) for a balance; pure."""
    if balance <= 0:
        return EXHAUSTED, None if state == EXHAUSTED else "exhausted"
    if balance < th.level(base):
        return LOW, "low_balance" if state == OK else None
    return OK, "credit_restored" if state in (LOW, EXHAUSTED) else None


def expiring(th: Threshold, sub: Subscriber, now_ms: int) -> list[Bucket]:
    """Buckets in the threshold's scope with credit left that expire within its period."""
    if th.expiring_within_s is None or th.scope in ("group", "member_cap"):
        return []
    horizon = now_ms + th.expiring_within_s * 1000
    return [
        b
        for b in sub.buckets.values()
        if b.amount > 0
        and b.expires_at_ms < NEVER_MS
        and now_ms < b.expires_at_ms <= horizon
        and (th.unit is None or b.unit is th.unit)
        and (th.scope != "bucket" or th.bucket_id is None or b.id == th.bucket_id)
    ]
