"""The allocation policies' arithmetic, on its own."""

from __future__ import annotations

import pytest

from quotaflow.engine import GrantPolicy
from quotaflow.engine.pools import PoolView, check_policy, reclaimable, size_pool_grant
from quotaflow.ledger import Reservation, Unit

MB = 1_000_000
GRANTS = GrantPolicy(validity_s=600)


def grant(policy: dict[str, object], rate: float | None, pool: int, idle: bool = False) -> int:
    return size_pool_grant(policy, GRANTS, Unit.OCTETS, rate, None, pool, 10, idle).units


def test_each_policy_sizes_differently() -> None:
    assert grant({"allocation": "fixed", "fixed_units": 7 * MB}, 1e6, 10**10) == 7 * MB
    # progressive: at most pool / (2 x 10 members), never below the minimum
    assert grant({"allocation": "progressive"}, None, 100 * MB) == 5 * MB
    assert grant({"allocation": "progressive"}, None, MB) == 100_000
    # predictive: the rate for the horizon; an idle member that held quota gets nothing
    assert grant({"allocation": "predictive", "horizon_s": 60}, 50_000, 10**10) == 3 * MB
    assert grant({"allocation": "predictive"}, 100, 10**10, idle=True) == 0
    assert grant({"allocation": "predictive"}, 100, 10**10, idle=False) == 100_000
    # reclaim: predictive, but shrinking with the pool, and short-lived once nearly spent
    assert grant({"allocation": "reclaim", "horizon_s": 60}, 1e6, 200 * MB) == 10 * MB
    low = size_pool_grant({"allocation": "reclaim"}, GRANTS, Unit.OCTETS, 1e6, None, MB, 10)
    assert (low.units, low.validity_s) == (100_000, 10)


def test_reclaim_shares_the_credit_left_by_rate_and_time() -> None:
    policy = {"allocation": "reclaim", "horizon_s": 600}
    # 100 MB free + 20 MB held, of which the asker just reported 5 MB used: 115 MB left. At
    # 4 MB/s in all it lasts 28.75 s; a 1 MB/s member gets its part for half that time.
    view = PoolView(rate_per_s=4e6, held_units=20 * MB, waiting=0)
    g = size_pool_grant(
        policy, GRANTS, Unit.OCTETS, 1e6, None, 100 * MB, 10, view=view, used=5 * MB
    )
    assert g.units == 14_375_000 and g.validity_s == 600
    # a slow member's part is small, but never below the minimum grant
    slow = size_pool_grant(policy, GRANTS, Unit.OCTETS, 1e3, None, 100 * MB, 10, view=view)
    assert slow.units == 100_000
    # a member that held a grant and used none of it gets nothing, whatever its past rate
    idle = size_pool_grant(policy, GRANTS, Unit.OCTETS, 1e6, None, 100 * MB, 10, True, view)
    assert idle.units == 0


def test_a_pool_is_spent_when_it_cannot_give_each_asker_a_minimum() -> None:
    view = PoolView(rate_per_s=0.0, held_units=60_000, waiting=1)
    assert view.left(50_000, 10_000) == 100_000
    assert view.spent(50_000, 10_000, 100_000)  # two members asking, 100 kB left
    assert not view.spent(150_000, 10_000, 100_000)
    assert not PoolView(0.0, 60_000, 0).spent(50_000, 10_000, 100_000)
    # five sessions are using credit: 400 kB cannot give each of them a minimum grant
    assert PoolView(0.0, 300_000, waiting=0, active=5).spent(100_000, 0, 100_000)
    assert not PoolView(0.0, 400_000, waiting=0, active=5).spent(100_000, 0, 100_000)


def test_validity_policy_bounds_the_drift() -> None:
    g = size_pool_grant(
        {"allocation": "validity", "max_drift": 20 * MB}, GRANTS, Unit.OCTETS, 1e6, None, 10**10, 10
    )
    assert g.units == 20 * MB and g.validity_s == 20


def _res(rid: str, units: int, created_ms: int) -> Reservation:
    return Reservation(
        rid,
        "m",
        Unit.OCTETS,
        10,
        units,
        [],
        created_ms,
        10**12,
        session_id=rid,
        pool="g",
        pool_units=units,
    )


def test_reclaimable_counts_idle_and_overdue_grants() -> None:
    now = 100_000
    rates = {("busy", 10): 1e6, ("quiet", 10): 0.0, ("overdue", 10): 1e6, ("young", 10): 0.0}
    others = [
        _res("busy", 200 * MB, now - 50_000),  # 1 MB/s for 50 s: 50 MB used, 150 MB idle
        _res("quiet", 10 * MB, now - 50_000),  # uses nothing: all of it idle
        _res("overdue", 20 * MB, now - 50_000),  # should have run out 30 s ago: half counted
        _res("young", 10 * MB, now - 1_000),  # just granted: left alone
    ]
    total, worth = reclaimable(others, rates, now, min_age_ms=10_000)
    assert total == 150 * MB + 10 * MB + 10 * MB
    assert [r.id for r in worth] == ["busy", "quiet", "overdue"]
    # asking back less than `min_idle` is not worth a re-auth's two messages
    total, worth = reclaimable(others, rates, now, min_age_ms=10_000, min_idle=12 * MB)
    assert total == 150 * MB and [r.id for r in worth] == ["busy"]


@pytest.mark.parametrize(
    "policy",
    [
        {"allocation": "x"},
        {"horizon_s": 0},
        {"retry_s": "2"},
        {"service_priority": ["a"]},
        {"reclaim_min_age_s": -1},
    ],
)
def test_bad_policies_are_refused(policy: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        check_policy(policy)
