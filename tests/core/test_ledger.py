"""The ledger's rules, one by one, on the pure in-memory ledger."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from quotaflow.ledger import (
    Conflict,
    InvalidAmount,
    InvalidRequest,
    Ledger,
    LimitReached,
    Limits,
    NoCredit,
    NotFound,
    SubscriberBarred,
    UnknownSubscriber,
)

T0 = 1_700_000_000_000


def make(amount: int = 1000, **bucket: Any) -> Ledger:
    ledger = Ledger()
    ledger.apply("create_subscriber", "c", {"id": "a", "msisdn": "4670", "imsi": "00101"}, T0)
    if amount:
        ledger.apply(
            "add_bucket",
            "b",
            {
                "subscriber_id": "a",
                "bucket_id": "main",
                "unit": "octets",
                "amount": amount,
                **bucket,
            },
            T0,
        )
    return ledger


def reserve(ledger: Ledger, rid: str, units: int, now: int = T0, **extra: Any) -> dict[str, Any]:
    result, _ = ledger.apply(
        "reserve",
        f"r-{rid}-{now}",
        {
            "subscriber_id": "a",
            "reservation_id": rid,
            "unit": "octets",
            "rating_group": 10,
            "units_max": units,
            "validity_ms": 10_000,
            **extra,
        },
        now,
    )
    return result


def test_reserve_commit_posts_used_and_releases_rest() -> None:
    ledger = make(1000)
    assert reserve(ledger, "r1", 600)["units"] == 600
    bucket = ledger.subscribers["a"].buckets["main"]
    assert (bucket.amount, bucket.reserved) == (1000, 600)
    result, _ = ledger.apply(
        "commit", "c1", {"subscriber_id": "a", "reservation_id": "r1", "used_units": 250}, T0
    )
    assert result["posted_units"] == 250
    assert (bucket.amount, bucket.reserved) == (750, 0)
    ledger.check_invariants()


def test_release_voids_and_lapse_voids() -> None:
    ledger = make(1000)
    reserve(ledger, "r1", 400)
    ledger.apply("release", "x", {"subscriber_id": "a", "reservation_id": "r1"}, T0)
    assert ledger.subscribers["a"].buckets["main"].reserved == 0
    reserve(ledger, "r2", 400)
    # A later operation after the validity lapsed sees the credit back.
    assert reserve(ledger, "r3", 1000, now=T0 + 10_000)["units"] == 1000
    assert "r2" not in ledger.subscribers["a"].reservations
    with pytest.raises(NotFound):
        ledger.apply(
            "commit",
            "late",
            {"subscriber_id": "a", "reservation_id": "r2", "used_units": 1},
            T0 + 10_001,
        )
    ledger.check_invariants()


def test_sweep_voids_lapsed_reservations_of_untouched_subscribers() -> None:
    ledger = make(1000)
    reserve(ledger, "r1", 400)
    result, _ = ledger.apply("expire", None, {}, T0 + 10_000)
    assert result["voided"] == 1
    assert ledger.subscribers["a"].buckets["main"].reserved == 0


def test_grant_bounded_by_balance_and_minimum() -> None:
    ledger = make(300)
    result = reserve(ledger, "r1", 1000)
    assert (result["units"], result["exhausted"]) == (300, True)
    with pytest.raises(NoCredit):
        reserve(ledger, "r2", 1000)
    ledger2 = make(300)
    with pytest.raises(NoCredit):
        reserve(ledger2, "r1", 1000, units_min=500)
    assert ledger2.subscribers["a"].buckets["main"].reserved == 0


def test_consumption_order_scope_then_expiry_then_priority() -> None:
    ledger = make(0)
    buckets = [
        ("any-late", [], T0 + 9_000_000, 0),
        ("any-soon", [], T0 + 1_000_000, 0),
        ("rg10-wide", [10, 20, 30], None, 0),
        ("rg10-only", [10], None, 5),
        ("rg10-only-prio", [10], None, 1),
        ("rg20", [20], None, 0),
    ]
    for bid, groups, expires, prio in buckets:
        ledger.apply(
            "add_bucket",
            bid,
            {
                "subscriber_id": "a",
                "bucket_id": bid,
                "unit": "octets",
                "amount": 10,
                "rating_groups": groups,
                "expires_at_ms": expires,
                "priority": prio,
            },
            T0,
        )
    reserve(ledger, "r1", 55)
    legs = [leg.to_json() for leg in ledger.subscribers["a"].reservations["r1"].legs]
    assert [leg[0] for leg in legs] == [
        "rg10-only-prio",
        "rg10-only",
        "rg10-wide",
        "any-soon",
        "any-late",
    ]
    assert sum(leg[1] for leg in legs) == 50  # rg20 pays nothing for rating group 10


def test_expired_and_not_yet_valid_buckets_pay_nothing() -> None:
    ledger = make(0)
    ledger.apply(
        "add_bucket",
        "old",
        {
            "subscriber_id": "a",
            "bucket_id": "old",
            "unit": "octets",
            "amount": 100,
            "expires_at_ms": T0 + 5,
        },
        T0,
    )
    ledger.apply(
        "add_bucket",
        "future",
        {
            "subscriber_id": "a",
            "bucket_id": "future",
            "unit": "octets",
            "amount": 100,
            "valid_from_ms": T0 + 1000,
        },
        T0,
    )
    with pytest.raises(NoCredit):
        reserve(ledger, "r1", 10, now=T0 + 10)
    result, _ = ledger.apply("expire", None, {}, T0 + 10)
    assert result["purged_buckets"] == 1
    assert (
        ledger.subscribers["a"].counters[ledger.subscribers["a"].buckets["future"].unit]["expired"]
        == 100
    )
    assert reserve(ledger, "r2", 10, now=T0 + 1000)["units"] == 10
    ledger.check_invariants()


def test_same_id_same_content_returns_first_answer() -> None:
    ledger = make(1000)
    args = {"subscriber_id": "a", "unit": "octets", "amount": 50}
    first, changed = ledger.apply("topup", "t1", args, T0)
    again, changed_again = ledger.apply("topup", "t1", dict(args), T0 + 99)
    assert changed and not changed_again and first == again
    assert ledger.subscribers["a"].buckets["main-octets"].amount == 50
    with pytest.raises(Conflict):
        ledger.apply("topup", "t1", {**args, "amount": 51}, T0)


def test_money_pays_for_units_at_the_flat_price() -> None:
    ledger = make(0)
    ledger.apply(
        "add_bucket",
        "m",
        {"subscriber_id": "a", "bucket_id": "wallet", "unit": "money", "amount": 25_000},
        T0,
    )
    price = {"price_micros": 10_000, "per_units": 1_000_000}
    result = reserve(ledger, "r1", 5_000_000, price=price)
    assert result["units"] == 2_000_000 and result["exhausted"]
    committed, _ = ledger.apply(
        "commit", "c9", {"subscriber_id": "a", "reservation_id": "r1", "used_units": 1_500_000}, T0
    )
    assert committed["drawn"] == {"wallet": 20_000}  # two started blocks
    assert ledger.subscribers["a"].buckets["wallet"].amount == 5_000
    ledger.check_invariants()


def test_charge_posts_overuse_without_going_negative() -> None:
    ledger = make(1000)
    reserve(ledger, "s#10", 100)
    result, _ = ledger.apply(
        "charge",
        "u1",
        {
            "subscriber_id": "a",
            "unit": "octets",
            "rating_group": 10,
            "used_units": 2000,
            "reservation_id": "s#10",
            "reserve": {"units_max": 100, "validity_ms": 1000},
        },
        T0,
    )
    assert result["posted_units"] == 1000 and result["unpaid_units"] == 1000
    assert result["grant"] is None and result["refused"] == "no_credit"
    assert ledger.subscribers["a"].buckets["main"].amount == 0
    ledger.check_invariants()


def test_charge_refusal_changes_nothing() -> None:
    ledger = make(1000)
    reserve(ledger, "s#10", 100)
    before = ledger.snapshot()
    with pytest.raises(InvalidAmount):
        ledger.apply(
            "charge",
            "bad",
            {
                "subscriber_id": "a",
                "unit": "octets",
                "rating_group": 10,
                "used_units": 50,
                "reservation_id": "s#10",
                "reserve": {"units_max": -1, "validity_ms": 1000},
            },
            T0,
        )
    assert ledger.snapshot() == before


def test_barred_and_unknown_and_invalid() -> None:
    ledger = make(1000)
    ledger.apply("update_subscriber", "bar", {"id": "a", "status": "barred"}, T0)
    with pytest.raises(SubscriberBarred):
        reserve(ledger, "r1", 10)
    with pytest.raises(UnknownSubscriber):
        ledger.apply("reserve", "x", {"subscriber_id": "nobody"}, T0)
    with pytest.raises(InvalidRequest):
        ledger.apply("update_subscriber", "bad", {"id": "a", "status": "sleepy"}, T0)
    for bad in (-5, 0, 1.5, "10", True, 2**70):
        with pytest.raises(InvalidAmount):
            ledger.apply(
                "topup", f"t{bad!r}", {"subscriber_id": "a", "unit": "octets", "amount": bad}, T0
            )
    with pytest.raises(InvalidRequest):
        ledger.apply("topup", "u", {"subscriber_id": "a", "unit": "litres", "amount": 1}, T0)


def test_identities_resolve_and_are_unique() -> None:
    ledger = make(0)
    assert ledger.resolve("msisdn", "4670") == "a"
    assert ledger.resolve("imsi", "00101") == "a"
    with pytest.raises(Conflict):
        ledger.apply("create_subscriber", "c2", {"id": "b", "msisdn": "4670"}, T0)
    ledger.apply("update_subscriber", "u", {"id": "a", "msisdn": "4671"}, T0)
    with pytest.raises(UnknownSubscriber):
        ledger.resolve("msisdn", "4670")
    assert ledger.resolve("msisdn", "4671") == "a"


def test_limits_are_enforced() -> None:
    ledger = Ledger(Limits(subscribers_max=1, reservations_per_subscriber_max=1))
    ledger.apply("create_subscriber", "c", {"id": "a"}, T0)
    with pytest.raises(LimitReached):
        ledger.apply("create_subscriber", "c2", {"id": "b"}, T0)
    ledger.apply("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 100}, T0)
    reserve(ledger, "r1", 10)
    with pytest.raises(LimitReached):
        reserve(ledger, "r2", 10)


def test_idempotency_window_forgets_old_ids() -> None:
    ledger = Ledger(Limits(idempotency_window_ms=1000, idempotency_entries_max=3))
    ledger.apply("create_subscriber", "c", {"id": "a"}, T0)
    for i in range(5):
        ledger.apply("topup", f"t{i}", {"subscriber_id": "a", "unit": "octets", "amount": 1}, T0)
    assert len(ledger.idempotency) == 3
    ledger.apply("expire", None, {}, T0 + 2000)
    assert not ledger.idempotency


def test_idempotency_forgets_oldest_first_by_count_and_by_clock() -> None:
    ledger = Ledger(Limits(idempotency_window_ms=1000, idempotency_entries_max=4))
    ledger.apply("create_subscriber", "c", {"id": "a"}, T0)
    for i, at in enumerate([T0, T0 + 10, T0 + 10, T0 + 600, T0 + 700]):
        ledger.apply("topup", f"t{i}", {"subscriber_id": "a", "unit": "octets", "amount": 1}, at)
    # "c" and then "t0" went for the cap; the window then drops what came before each horizon
    assert ledger.idempotency.ids() == ["t1", "t2", "t3", "t4"]
    assert ledger.prune_idempotency(T0 + 1011) == 2
    assert ledger.idempotency.ids() == ["t3", "t4"]
    copy = Ledger.restore(ledger.snapshot(), ledger.limits)
    assert copy.snapshot() == ledger.snapshot()
    assert copy.prune_idempotency(T0 + 1650) == 1 and copy.idempotency.ids() == ["t4"]


def test_a_repeat_gets_a_copy_of_the_first_answer_and_snapshots_keep_it_either_way() -> None:
    """First answers are kept as JSON: a repeat gets an equal answer of its own (changing it
    changes nothing kept), and a snapshot written from the encoded answers (`raw`, as the store
    writes it) reads back as the plain one."""
    ledger = make(1000)
    args = {
        "subscriber_id": "a",
        "reservation_id": "r1",
        "unit": "octets",
        "rating_group": 10,
        "units_max": 300,
        "validity_ms": 60_000,
    }
    first, changed = ledger.apply("reserve", "x1", args, T0)
    assert changed and first["units"] == 300
    again, changed = ledger.apply("reserve", "x1", dict(args), T0 + 5)
    assert (again, changed) == (first, False) and again is not first
    again["units"] = 1
    assert ledger.first_answer("x1") == first
    raw = orjson.loads(orjson.dumps(ledger.snapshot(raw=True)))
    assert raw == ledger.snapshot()
    copy = Ledger.restore(raw)
    assert copy.apply("reserve", "x1", args, T0 + 9) == (first, False)
    assert copy.snapshot() == ledger.snapshot()


def test_a_bucket_never_passes_amount_max_and_nothing_moves_when_refused() -> None:
    """Each top-up of AMOUNT_MAX is valid; the sum would pass 64 bits, which neither the
    journal nor a snapshot can hold. The one that would is refused before anything moves."""
    from quotaflow.ledger._base import AMOUNT_MAX

    ledger = make(0)
    topup = {"subscriber_id": "a", "unit": "octets", "amount": AMOUNT_MAX}
    ledger.apply("topup", "t0", topup, T0)
    before = ledger.snapshot()
    with pytest.raises(InvalidAmount, match="would hold more than"):
        ledger.apply("topup", "t1", {**topup, "amount": 1}, T0)
    with pytest.raises(InvalidAmount, match="would hold more than"):
        ledger.apply("refund", "r1", {**topup, "amount": 1}, T0)
    assert ledger.snapshot() == before and ledger.first_answer("t1") is None
    orjson.dumps(ledger.snapshot(raw=True))  # still encodable


def test_a_first_answer_orjson_cannot_encode_is_kept_as_it_is() -> None:
    from quotaflow.ledger._opids import OperationIds

    table = OperationIds(10)
    table.add("x", "topup", bytes(16), {"n": 2**70}, 5)
    entry = table.get("x")
    assert entry is not None and table.answer(entry) == {"n": 2**70}
    assert table.to_json()[0][2] == {"n": 2**70}


def test_ids_from_a_snapshot_of_the_old_format_still_tell_repeats_from_conflicts() -> None:
    """Before the operation was kept beside its digest, a row was [id, digest of operation and
    arguments, result, clock value]."""
    ledger = make(1000)
    args = {"subscriber_id": "a", "unit": "octets", "amount": 5}
    first, _ = ledger.apply("topup", "t1", args, T0)
    doc = ledger.snapshot()
    content = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    old = hashlib.blake2b(b"topup" + content, digest_size=16).hexdigest()
    doc["idempotency"] = [row[:4] for row in doc["idempotency"]]
    doc["idempotency"][-1][1] = old
    copy = Ledger.restore(doc)
    assert copy.apply("topup", "t1", dict(args), T0) == (first, False)
    with pytest.raises(Conflict):
        copy.apply("adjust", "t1", args, T0)
    with pytest.raises(Conflict):
        copy.apply("topup", "t1", {**args, "amount": 6}, T0)


def test_ids_from_a_snapshot_before_xxh3_still_tell_repeats_from_conflicts() -> None:
    """Rows of five fields carry a BLAKE2b digest of the arguments; they are compared that way
    until they age out, and written back as they were read."""
    ledger = make(1000)
    args = {"subscriber_id": "a", "unit": "octets", "amount": 5}
    first, _ = ledger.apply("topup", "t1", args, T0)
    doc = ledger.snapshot()
    assert doc["idempotency"][-1][5] == "xxh3-128"
    content = orjson.dumps(args, option=orjson.OPT_SORT_KEYS)
    doc["idempotency"] = [row[:5] for row in doc["idempotency"]]
    doc["idempotency"][-1][1] = hashlib.blake2b(content, digest_size=16).hexdigest()
    copy = Ledger.restore(doc)
    assert copy.snapshot()["idempotency"] == doc["idempotency"]
    assert copy.apply("topup", "t1", dict(reversed(args.items())), T0) == (first, False)
    with pytest.raises(Conflict):
        copy.apply("topup", "t1", {**args, "amount": 6}, T0)
    with pytest.raises(Conflict):
        copy.apply("adjust", "t1", args, T0)
    doc["idempotency"][-1] = [*doc["idempotency"][-1], "sha-0"]
    with pytest.raises(ValueError, match="unknown scheme 'sha-0'"):
        Ledger.restore(doc)


def test_snapshot_restore_round_trip() -> None:
    ledger = make(1000, rating_groups=[10], expires_at_ms=T0 + 50_000)
    reserve(ledger, "r1", 100)
    ledger.apply("session_open", "o", {"session_id": "s", "subscriber_id": "a"}, T0)
    copy = Ledger.restore(ledger.snapshot())
    assert copy.snapshot() == ledger.snapshot()
    assert copy.resolve("msisdn", "4670") == "a"
    copy.apply("expire", None, {}, T0 + 10_000)
    assert not copy.subscribers["a"].reservations


def test_repeats_and_conflicts_are_told_apart_across_a_snapshot() -> None:
    ledger = make(1000)
    args = {"subscriber_id": "a", "unit": "octets", "amount": 5}
    first, _ = ledger.apply("topup", "t1", args, T0)
    for copy in (ledger, Ledger.restore(ledger.snapshot())):
        # the same id and content: the first answer, nothing changes (live entries keep what
        # was asked, restored ones its digest)
        again, changed = copy.apply("topup", "t1", dict(reversed(args.items())), T0)
        assert (again, changed) == (first, False)
        with pytest.raises(Conflict):
            copy.apply("topup", "t1", {**args, "amount": 6}, T0)
        with pytest.raises(Conflict):
            copy.apply("adjust", "t1", args, T0)
    assert Ledger.restore(ledger.snapshot()).snapshot() == ledger.snapshot()


def test_sessions_nobody_reports_on_are_closed_after_a_day() -> None:
    ledger = make(1000)
    day = 86_400_000
    for sid in ("quiet", "busy", "holding"):
        ledger.apply("session_open", f"o-{sid}", {"session_id": sid, "subscriber_id": "a"}, T0)
    # "holding" keeps a grant that lasts longer than a day; "busy" reports late in the day.
    ledger.apply(
        "reserve",
        "r-holding",
        {
            "subscriber_id": "a",
            "reservation_id": "holding#1",
            "unit": "octets",
            "units_max": 10,
            "validity_ms": 2 * day,
            "session_id": "holding",
        },
        T0,
    )
    ledger.apply(
        "charge",
        "c-busy",
        {
            "subscriber_id": "a",
            "unit": "octets",
            "rating_group": 1,
            "used_units": 0,
            "session_id": "busy",
        },
        T0 + day - 1000,
    )
    ledger.apply("expire", None, {}, T0 + day + 1)
    assert set(ledger.sessions) == {"busy", "holding"}
    copy = Ledger.restore(ledger.snapshot())
    assert copy.snapshot() == ledger.snapshot()  # the scan's clock is part of the state
    ledger.apply("expire", None, {}, T0 + 3 * day)
    assert set(ledger.sessions) == set()  # the hold lapsed, and then it was idle too


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_skip_pool_must_be_a_boolean(value: object) -> None:
    ledger = make(1000)
    before = ledger.snapshot()
    with pytest.raises(InvalidRequest, match="skip_pool"):
        reserve(ledger, "r1", 10, skip_pool=value)
    charge = {
        "subscriber_id": "a",
        "unit": "octets",
        "rating_group": 10,
        "used_units": 0,
        "reservation_id": "r2",
        "reserve": {"units_max": 10, "validity_ms": 10_000, "skip_pool": value},
    }
    with pytest.raises(InvalidRequest, match="skip_pool"):
        ledger.apply("charge", "ch", charge, T0)
    assert ledger.snapshot() == before


def test_a_charge_checks_its_grant_s_session_id_where_it_always_did() -> None:
    """Replay applies journals written by earlier versions: a barred subscriber's charge with a
    bad `reserve.session_id` posted its usage and succeeded (no grant, nothing checked), and
    must still; with a grant to make, the same charge is refused before anything moves."""
    charge = {
        "subscriber_id": "a",
        "unit": "octets",
        "rating_group": 10,
        "used_units": 0,
        "reservation_id": "r1",
        "reserve": {"units_max": 10, "validity_ms": 10_000, "session_id": 7},
    }
    ledger = make(1000)
    before = ledger.snapshot()
    with pytest.raises(InvalidRequest, match="session_id"):
        ledger.apply("charge", "ch", charge, T0)
    assert ledger.snapshot() == before
    ledger.apply("update_subscriber", "bar", {"id": "a", "status": "barred"}, T0)
    result, _ = ledger.apply("charge", "ch2", charge, T0)
    assert result["refused"] == "barred" and result["grant"] is None


def test_the_id_table_forgets_in_order_across_its_compactions() -> None:
    """Past a few thousand forgotten ids the table cuts them off the front of its id list; the
    order, the clock values and the snapshot rows stay right across such cuts, and pruning
    reaches into the newest run of ids (the one still open)."""
    from quotaflow.ledger._opids import OperationIds, PyIdTable

    table = OperationIds(3_000, PyIdTable(3_000))  # the Python table (the C one has no list)
    for i in range(10_000):
        table.add(f"id{i}", "topup", bytes(16), f'{{"n":{i}}}', 1_000 + i // 7)
    assert len(table) == 3_000 and table.ids()[0] == "id7000"  # the cap, one by one
    assert len(table.storage._ids) < 7_000  # the list was cut
    rows = table.to_json()
    assert [row[0] for row in rows] == [f"id{i}" for i in range(7_000, 10_000)]
    assert [row[3] for row in rows] == [1_000 + i // 7 for i in range(7_000, 10_000)]
    horizon = 1_000 + 9_000 // 7
    left = [i for i in range(7_000, 10_000) if 1_000 + i // 7 >= horizon]
    assert table.prune(horizon) == 3_000 - len(left)
    assert table.ids() == [f"id{i}" for i in left]
    assert OperationIds.from_json(table.to_json(), 3_000).to_json() == table.to_json()
    assert table.prune(10**12) == len(left) and len(table) == 0 and table.to_json() == []
    table.add("again", "topup", bytes(16), "{}", 5)
    assert [row[0] for row in table.to_json()] == ["again"] and table.prune(6) == 1


def test_a_price_doc_carries_its_price_and_encodes_as_its_fields() -> None:
    from quotaflow.ledger import AMOUNT_MAX, price_doc
    from quotaflow.ledger._base import _price
    from quotaflow.ledger.model import Price

    price = Price(2_000, 60, first_units=30, next_units=6, connect_micros=50_000)
    doc = price_doc(price)
    assert _price(doc) is price  # the engine's: not read field by field again
    assert list(doc) == sorted(doc)
    assert orjson.loads(orjson.dumps(doc)) == price.to_json()
    # The same fields as a plain dict (the API's, a replayed journal's) are read and checked.
    plain = _price(dict(doc))
    assert plain is not None and plain is not price and plain.to_json() == price.to_json()
    with pytest.raises(InvalidAmount):
        _price({**doc, "per_units": 0})
    # Checked once, when made, as a plain dict is at each charge: a tariff's number past
    # AMOUNT_MAX is refused before anything is charged (a journaled charge must replay).
    with pytest.raises(InvalidAmount):
        price_doc(Price(2_000, AMOUNT_MAX + 1))
    with pytest.raises(InvalidAmount):
        price_doc(Price(AMOUNT_MAX + 1, 60))
