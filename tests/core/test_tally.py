"""The hot path's plain-integer counters (tally.py) and how /metrics shows them."""

from __future__ import annotations

from quotaflow.tally import Latencies, Tally


def test_latencies_fall_in_the_first_bound_they_do_not_exceed() -> None:
    lat = Latencies((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 0.01, 5.0, 7.0):
        lat.observe(seconds)
    assert lat.counts == [2, 2, 2]  # <= 1 ms, <= 10 ms, above
    assert abs(lat.sum_s - 12.0135) < 1e-9


def test_tally_counts_by_key() -> None:
    tally = Tally()
    tally.add(("gy", "update", "2001"))
    tally.add(("gy", "update", "2001"), 2)
    tally.add(("gy", "update", "4012"))
    assert tally.counts == {("gy", "update", "2001"): 3, ("gy", "update", "4012"): 1}
    held = tally.cell(("gy", "update", "2001"))  # what a hot caller keeps and adds to
    held[0] += 1
    assert tally.cell(("gy", "update", "2001")) is held
    assert tally.counts[("gy", "update", "2001")] == 4
