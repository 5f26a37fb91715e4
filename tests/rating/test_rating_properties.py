"""Property-based: prices never fall as units grow, grants never cost more than the balance,
and a session reported in many pieces costs what it would in one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quotaflow.ledger import Ledger, Price

prices = st.builds(
    Price,
    price_micros=st.integers(1, 500_000),
    per_units=st.integers(1, 10_000),
    first_units=st.integers(1, 600),
    next_units=st.integers(1, 120),
    connect_micros=st.integers(0, 100_000),
)


@given(prices, st.integers(0, 10**7), st.integers(0, 10**6))
def test_cost_never_decreases(price: Price, units: int, more: int) -> None:
    assert price.cost(units + more) >= price.cost(units) >= 0


@given(prices, st.integers(0, 10**9), st.integers(0, 10**6))
def test_units_for_is_affordable_and_maximal(price: Price, money: int, before: int) -> None:
    units = price.units_for(money, before)
    assert price.cost(before + units) - price.cost(before) <= money
    # One unit more starts an increment the money cannot pay.
    assert price.cost(before + units + 1) - price.cost(before) > money


@given(prices, st.lists(st.integers(0, 5_000), min_size=1, max_size=12))
def test_splitting_reports_costs_the_same(price: Price, reports: list[int]) -> None:
    charged = 0
    total = 0
    for used in reports:
        charged += price.cost(total + used) - price.cost(total)
        total += used
    assert charged == price.cost(total)


@settings(max_examples=150, deadline=None)
@given(
    prices,
    st.integers(0, 3_000_000),
    st.integers(0, 5_000),
    st.lists(st.integers(0, 4_000), min_size=1, max_size=8),
)
def test_ledger_sessions_never_overdraw_and_split_reports_cost_the_same(
    price: Price, money: int, allowance: int, reports: list[int]
) -> None:
    """Two subscribers with the same balance: one reports its use piece by piece, re-reserving
    each time; the other once. Neither pays more than it had; the pieces cost no more."""
    ledger = Ledger()
    drawn: dict[str, int] = {}
    for sid in ("pieces", "whole"):
        ledger.apply("create_subscriber", f"c-{sid}", {"id": sid}, 0)
        ledger.apply("session_open", f"o-{sid}", {"session_id": sid, "subscriber_id": sid}, 0)
        if money:
            ledger.apply(
                "topup", f"m-{sid}", {"subscriber_id": sid, "unit": "money", "amount": money}, 0
            )
        if allowance:
            ledger.apply(
                "topup",
                f"a-{sid}",
                {"subscriber_id": sid, "unit": "seconds", "amount": allowance},
                0,
            )
        drawn[sid] = 0
    step = {"unit": "seconds", "rating_group": 1, "price": price.to_json()}

    def charge(sid: str, n: int, used: int) -> dict[str, object]:
        result, _ = ledger.apply(
            "charge",
            f"{sid}-{n}",
            {
                **step,
                "subscriber_id": sid,
                "session_id": sid,
                "reservation_id": f"{sid}#1",
                "used_units": used,
                "reserve": {"units_max": 10**6, "validity_ms": 10**9},
            },
            0,
        )
        drawn[sid] += result["cost_micros"]
        grant = result["grant"]
        if grant is not None:
            res = ledger.subscribers[sid].reservations[f"{sid}#1"]
            held = sum(
                leg.amount
                for leg in res.legs
                if ledger.subscribers[sid].buckets[leg.bucket_id].unit.value == "money"
            )
            assert held <= money  # a grant never holds more money than there is
        return result

    first = charge("pieces", 0, 0)
    posted_pieces = 0
    for n, used in enumerate(reports, 1):
        posted_pieces += charge("pieces", n, used)["posted_units"]  # type: ignore[operator]
    charge("whole", 0, 0)
    whole = charge("whole", 1, sum(reports))
    ledger.check_invariants()
    assert drawn["pieces"] <= money and drawn["whole"] <= money
    if posted_pieces == whole["posted_units"] == sum(reports):
        assert drawn["pieces"] == drawn["whole"]
    assert first["posted_units"] == 0
