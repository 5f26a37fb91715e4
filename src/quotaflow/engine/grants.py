"""Grant sizing: from the session's observed usage rate, bounded by configured limits.

A constant grant floods the OCS with updates for fast users and strands credit with slow ones.
We aim at about one update per validity period: grant what the session is expected to use in
one validity time, clamped to [min, max]; with no history yet, grant the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quotaflow.ledger import Unit


@dataclass(frozen=True, slots=True)
class UnitGrantLimits:
    min_units: int
    default_units: int
    max_units: int

    def __post_init__(self) -> None:
        if not 0 < self.min_units <= self.default_units <= self.max_units:
            raise ValueError("grant limits need 0 < min <= default <= max")


def _default_limits() -> dict[Unit, UnitGrantLimits]:
    return {
        Unit.OCTETS: UnitGrantLimits(100_000, 10_000_000, 1_000_000_000),
        Unit.SECONDS: UnitGrantLimits(10, 300, 3_600),
        Unit.EVENTS: UnitGrantLimits(1, 1, 100),
        Unit.MONEY: UnitGrantLimits(1, 1_000_000, 100_000_000),
    }


@dataclass(slots=True)
class GrantPolicy:
    validity_s: int = 600
    # A reservation outlives its validity by this much, so a report that arrives a little late
    # still finds it; after that the credit goes back to the balance by itself.
    grace_s: int = 30
    # Weight of the newest rate sample in the moving average (0..1].
    rate_weight: float = 0.5
    limits: dict[Unit, UnitGrantLimits] = field(default_factory=_default_limits)

    def size(self, unit: Unit, rate_per_s: float | None, requested: int | None) -> int:
        """Units to ask the ledger for. The ledger then bounds it by what the buckets can pay."""
        lim = self.limits[unit]
        target = lim.default_units if rate_per_s is None else int(rate_per_s * self.validity_s)
        if requested:
            target = min(target, requested) if rate_per_s is not None else requested
        return max(lim.min_units, min(lim.max_units, target))


# Classes made per request have an explicit __init__: mypyc compiles it, while a
# dataclass-generated one runs interpreted (measured 0.77 us against 0.05 us per object).
# They are not frozen, which would set every field through object.__setattr__.
@dataclass(slots=True, init=False)
class RateTracker:
    """Observed usage rate of one rating group of one session."""

    last_ms: int
    rate_per_s: float | None = None
    granted: int = 0  # what the last answer granted: a report of nothing used on a grant is idle
    # A member's session: its group and unit, and what it adds to that group's summed rate of
    # sessions holding a grant (its rate while it holds one, else 0).
    pool: tuple[str, Unit] | None = None
    contribution: float = 0.0
    # The session's reservation for this rating group, named once when the tracker is made: a
    # formatted string per step was 1,000 instructions.
    reservation_id: str = ""

    def __init__(
        self,
        last_ms: int,
        rate_per_s: float | None = None,
        granted: int = 0,
        pool: tuple[str, Unit] | None = None,
        contribution: float = 0.0,
        reservation_id: str = "",
    ) -> None:
        self.last_ms = last_ms
        self.rate_per_s = rate_per_s
        self.granted = granted
        self.pool = pool
        self.contribution = contribution
        self.reservation_id = reservation_id

    def observe(self, used_units: int, now_ms: int, weight: float) -> None:
        elapsed_ms = now_ms - self.last_ms
        self.last_ms = now_ms
        if elapsed_ms <= 0:
            return
        sample = used_units * 1000.0 / elapsed_ms
        if self.rate_per_s is None:
            self.rate_per_s = sample
        else:
            self.rate_per_s = weight * sample + (1.0 - weight) * self.rate_per_s
