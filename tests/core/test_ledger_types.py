"""Arguments of the wrong type are refused with a ledger error and change nothing.

The ledger runs compiled (mypyc), where a value of the wrong type reaching a typed parameter
raises TypeError; every operation must check its arguments first, so that each interface
answers with its protocol's error instead of a 500 or a dropped connection."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from quotaflow.ledger import ChargingError
from quotaflow.ledger.ledger import Ledger

WRONG: list[Any] = [None, "x", 1.5, [1], {"a": 1}, True, -1, 2**70, ""]

# A valid call of each operation that takes client-supplied fields; every field is then
# replaced in turn by each wrong value.
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("create_subscriber", {"id": "n", "msisdn": "4670", "plan": "p"}),
    ("update_subscriber", {"id": "a", "status": "active", "plan": "p"}),
    (
        "add_bucket",
        {
            "subscriber_id": "a",
            "bucket_id": "k",
            "unit": "octets",
            "amount": 5,
            "rating_groups": [10],
            "priority": 1,
            "expires_at_ms": 10**13,
        },
    ),
    ("topup", {"subscriber_id": "a", "unit": "octets", "amount": 5, "bucket_id": "main-octets"}),
    ("adjust", {"subscriber_id": "a", "unit": "octets", "amount": -1}),
    ("refund", {"subscriber_id": "a", "unit": "octets", "amount": 1, "bucket_id": "main-octets"}),
    (
        "reserve",
        {
            "subscriber_id": "a",
            "reservation_id": "r9",
            "unit": "octets",
            "rating_group": 10,
            "units_max": 10,
            "units_min": 1,
            "validity_ms": 1000,
            "session_id": "s",
            "price": {"price_micros": 1, "per_units": 1},
        },
    ),
    ("commit", {"subscriber_id": "a", "reservation_id": "r1", "used_units": 3}),
    ("release", {"subscriber_id": "a", "reservation_id": "r1"}),
    (
        "debit",
        {
            "subscriber_id": "a",
            "unit": "octets",
            "units": 2,
            "rating_group": 10,
            "price": {"price_micros": 1, "per_units": 1},
        },
    ),
    (
        "charge",
        {
            "subscriber_id": "a",
            "session_id": "s",
            "unit": "octets",
            "rating_group": 10,
            "used_units": 1,
            "reservation_id": "s#10",
            "reserve": {"units_max": 10, "units_min": 1, "validity_ms": 1000, "session_id": "s"},
        },
    ),
    ("session_open", {"session_id": "s2", "subscriber_id": "a", "meta": {}}),
    ("session_close", {"session_id": "s"}),
    ("transfer", {"transfer_id": "x1", "from": "a", "to": "b", "unit": "octets", "amount": 1}),
    ("create_group", {"group_id": "g", "owner": "a", "policy": {"allocation": "fixed"}}),
    ("add_member", {"group_id": "g0", "subscriber_id": "b"}),
]


def _ledger() -> Ledger:
    ledger = Ledger()
    for sid in ("a", "b"):
        ledger.apply("create_subscriber", None, {"id": sid}, 1)
        ledger.apply("topup", None, {"subscriber_id": sid, "unit": "octets", "amount": 1000}, 1)
        ledger.apply("topup", None, {"subscriber_id": sid, "unit": "money", "amount": 10**6}, 1)
    ledger.apply("create_group", None, {"group_id": "g0", "owner": "a", "policy": {}}, 1)
    ledger.apply("session_open", None, {"session_id": "s", "subscriber_id": "a"}, 1)
    ledger.apply(
        "reserve",
        None,
        {
            "subscriber_id": "a",
            "reservation_id": "r1",
            "unit": "octets",
            "units_max": 10,
            "validity_ms": 10**6,
        },
        1,
    )
    return ledger


def _cases() -> list[tuple[str, str, Any]]:
    cases = []
    for op, args in CALLS:
        for field in args:
            for value in WRONG:
                cases.append((op, field, value))
    return cases


@pytest.mark.parametrize(("op", "field", "value"), _cases())
def test_a_wrong_type_is_a_ledger_error(op: str, field: str, value: Any) -> None:
    ledger = _ledger()
    args = copy.deepcopy(dict(CALLS)[op])
    args[field] = value
    before = ledger.snapshot()
    try:
        ledger.apply(op, None, args, 2)
    except ChargingError:
        assert ledger.snapshot() == before  # refused: nothing changed
    ledger.check_invariants()


@pytest.mark.parametrize(
    ("op", "amount", "accepted"),
    [
        ("topup", 2**62, True),
        ("topup", 2**62 + 1, False),
        ("topup", 0, False),
        ("adjust", -(2**62), True),
        ("adjust", -(2**62) - 1, False),
    ],
)
def test_amounts_are_bounded_at_exactly_two_to_the_62(op: str, amount: int, accepted: bool) -> None:
    """The stated bound of any single amount (the API's OpenAPI says the same), checked with
    unboxed comparisons just below it and a boxed one at it."""
    ledger = Ledger()
    ledger.apply("create_subscriber", "c", {"id": "a"}, 0)
    full = {"subscriber_id": "a", "unit": "octets", "amount": 2**62}
    ledger.apply("topup", "t", full, 0)  # room for the largest debit
    ledger.apply("create_subscriber", "cb", {"id": "b"}, 0)  # and an empty one to top up
    target = "b" if op == "topup" else "a"  # a bucket holds at most 2**62 (see below)
    args = {"subscriber_id": target, "unit": "octets", "amount": amount}
    if accepted:
        ledger.apply(op, "x", args, 0)
    else:
        with pytest.raises(ChargingError, match="amount out of range"):
            ledger.apply(op, "x", args, 0)
