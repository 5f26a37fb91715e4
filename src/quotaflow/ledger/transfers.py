"""Moving quota between subscribers (gifts, transfers) as ledger operations.

A transfer takes free, usable, unscoped credit from the giver (never what is reserved, never a
bucket tied to particular services), in consumption order, and gives the receiver new buckets
of origin `gift` with the same expiry (`expiry: "carry"`, the default) or the one given
(`expiry: "reset"` with `expires_at_ms`). A reversal is itself a transfer: it gives back what
is left of those gift buckets. Conservation: transferred_out of one = transferred_in of other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quotaflow.ledger.errors import Conflict, InvalidRequest, LimitReached, NoCredit, NotFound
from quotaflow.ledger.model import NEVER_MS, Bucket, Origin, Status, Subscriber, Unit

DAY_MS = 86_400_000


def _default_per_transfer() -> dict[str, int]:
    return {"octets": 50_000_000_000, "seconds": 360_000, "events": 10_000, "money": 1_000_000_000}


@dataclass(slots=True)
class TransferLimits:
    """Stated bounds on moving quota; each refusal names the one it hit."""

    per_transfer: dict[str, int] = field(default_factory=_default_per_transfer)
    per_day: dict[str, int] = field(
        default_factory=lambda: {k: 5 * v for k, v in _default_per_transfer().items()}
    )
    keep_min: dict[str, int] = field(default_factory=dict)  # what a giver must keep, per unit
    # Donations: for every whole `per_units` given of a unit, the donor gets `amount` of
    # `reward_unit`: {"octets": {"per_units": 10**9, "reward_unit": "money", "amount": 100000}}
    rewards: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class Transfer:
    id: str
    giver: str
    receiver: str
    unit: Unit
    amount: int
    at_ms: int
    buckets: list[str]  # the receiver's gift buckets
    reversed_by: str | None = None
    donation: bool = False
    reward: dict[str, Any] | None = None  # what the donor got for it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "from": self.giver,
            "to": self.receiver,
            "unit": self.unit.value,
            "amount": self.amount,
            "at_ms": self.at_ms,
            "buckets": list(self.buckets),
            "reversed_by": self.reversed_by,
            "donation": self.donation,
            "reward": None if self.reward is None else dict(self.reward),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Transfer:
        return cls(
            doc["id"],
            doc["from"],
            doc["to"],
            Unit(doc["unit"]),
            doc["amount"],
            doc["at_ms"],
            list(doc["buckets"]),
            doc["reversed_by"],
            doc.get("donation", False),
            doc.get("reward"),
        )


def plan_transfer(
    giver: Subscriber, unit: Unit, amount: int, now_ms: int, only: list[str] | None = None
) -> list[tuple[Bucket, int]]:
    """Which of the giver's buckets pay, soonest expiry first; nothing moves here."""
    usable = [
        b
        for b in giver.buckets.values()
        if b.unit is unit
        and not b.rating_groups
        and b.usable(now_ms)
        and b.available > 0
        and b.origin is not Origin.OVERDRAFT
        and (only is None or b.id in only)
    ]
    usable.sort(key=lambda b: (b.expires_at_ms, b.priority, b.id))
    plan: list[tuple[Bucket, int]] = []
    want = amount
    for b in usable:
        if want == 0:
            break
        take = min(b.available, want)
        plan.append((b, take))
        want -= take
    if want:
        raise NoCredit(
            f"the giver has only {amount - want} {unit.value} free to transfer", free=amount - want
        )
    return plan


def check_limits(
    limits: TransferLimits,
    giver: Subscriber,
    unit: Unit,
    amount: int,
    sent_today: int,
    now_ms: int,
) -> None:
    cap = limits.per_transfer.get(unit.value)
    if cap is not None and amount > cap:
        raise LimitReached(f"at most {cap} {unit.value} per transfer", limit=cap)
    daily = limits.per_day.get(unit.value)
    if daily is not None and sent_today + amount > daily:
        raise LimitReached(
            f"at most {daily} {unit.value} a day; {sent_today} sent today", limit=daily
        )
    keep = limits.keep_min.get(unit.value, 0)
    if keep:
        free = sum(
            b.available for b in giver.buckets.values() if b.unit is unit and b.usable(now_ms)
        )
        if free - amount < keep:
            raise LimitReached(f"the giver must keep {keep} {unit.value}", limit=keep)


def check_parties(giver: Subscriber, receiver: Subscriber) -> None:
    if giver.id == receiver.id:
        raise InvalidRequest("giver and receiver are the same", field="to")
    for who, sub in (("giver", giver), ("receiver", receiver)):
        if sub.kind != "subscriber":
            raise InvalidRequest(f"the {who} is a group's pool; move pool credit with top-ups")
        if sub.status is Status.BARRED:
            raise InvalidRequest(f"the {who} is barred", field="from" if who == "giver" else "to")


def gift_expiry(args: dict[str, Any], source: Bucket) -> int:
    rule = args.get("expiry", "carry")
    if rule == "carry":
        return source.expires_at_ms
    if rule == "reset":
        expires = args.get("expires_at_ms")
        if expires is None:
            return NEVER_MS
        if type(expires) is not int or expires <= 0:
            raise InvalidRequest("expires_at_ms must be epoch milliseconds", field="expires_at")
        return int(expires)
    raise InvalidRequest('expiry must be "carry" or "reset"', field="expiry")


def transfer_unknown(transfer_id: str) -> NotFound:
    return NotFound(f"no transfer {transfer_id!r}")


def already_reversed(transfer: Transfer) -> Conflict:
    return Conflict(f"transfer {transfer.id!r} was reversed by {transfer.reversed_by!r}")


@dataclass(slots=True)
class Voucher:
    """A prepaid sub-account carved out of a parent's credit, owned by whoever redeems it.

    Only the SHA-256 of its token is kept (the journal never sees the token itself).
    """

    id: str
    parent: str
    unit: Unit
    amount: int
    token_hash: str
    created_ms: int
    expires_at_ms: int
    state: str = "issued"  # issued, redeemed, expired
    redeemed_by: str | None = None

    @property
    def account(self) -> str:
        return f"voucher:{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "unit": self.unit.value,
            "amount": self.amount,
            "token_hash": self.token_hash,
            "created_ms": self.created_ms,
            "expires_at_ms": None if self.expires_at_ms >= NEVER_MS else self.expires_at_ms,
            "state": self.state,
            "redeemed_by": self.redeemed_by,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Voucher:
        expires = doc["expires_at_ms"]
        return cls(
            doc["id"],
            doc["parent"],
            Unit(doc["unit"]),
            doc["amount"],
            doc["token_hash"],
            doc["created_ms"],
            NEVER_MS if expires is None else expires,
            doc["state"],
            doc["redeemed_by"],
        )


def no_such_voucher() -> NotFound:
    # The same answer for a wrong token, a used one, an expired one and an unknown one.
    return NotFound("no voucher for that token")


@dataclass(slots=True)
class Offer:
    """Spare quota a network puts up for sale: `blocks` of `block_units`, each at `price_micros`.

    A subscriber is served by the offers of its own network: those whose `network` (a PLMN,
    MCC+MNC) starts its IMSI; subscribers without an IMSI belong to network "home".
    """

    id: str
    network: str
    unit: Unit
    block_units: int
    price_micros: int
    blocks_left: int

    @property
    def account(self) -> str:
        return f"network:{self.network}"

    def serves(self, sub: Subscriber) -> bool:
        imsi = sub.identities.get("imsi")
        return imsi.startswith(self.network) if imsi else self.network == "home"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "network": self.network,
            "unit": self.unit.value,
            "block_units": self.block_units,
            "price_micros": self.price_micros,
            "blocks_left": self.blocks_left,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Offer:
        return cls(
            doc["id"],
            doc["network"],
            Unit(doc["unit"]),
            doc["block_units"],
            doc["price_micros"],
            doc["blocks_left"],
        )
