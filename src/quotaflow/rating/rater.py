"""The rater: which price applies to a subscriber's use of a service, now, in this zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from quotaflow.ledger import Price, Unit
from quotaflow.rating.tariff import DEFAULT_TARIFF, TariffBook, TariffError, load_text

_FREE: Final = Price(0, 1)  # a zero-rated service's price: one object (Engine keeps its JSON by it)


# Made for every request: an explicit __init__, which mypyc compiles, and not frozen.
@dataclass(slots=True, init=False)
class Rated:
    """The price to charge with, or none (the service is not priced with money: only buckets of
    its own unit pay for it); zero-rated services take nothing from any bucket."""

    price: Price | None
    zero_rated: bool = False
    sponsor: str | None = None
    plan: str | None = None

    def __init__(
        self,
        price: Price | None,
        zero_rated: bool = False,
        sponsor: str | None = None,
        plan: str | None = None,
    ) -> None:
        self.price = price
        self.zero_rated = zero_rated
        self.sponsor = sponsor
        self.plan = plan


class Rater:
    def __init__(self, book: TariffBook | None = None) -> None:
        self.book = book or load_text(DEFAULT_TARIFF, "built-in tariff")
        self._zone = _zone(self.book.timezone)

    def replace(self, book: TariffBook) -> None:
        """Swap in a new tariff at once; sessions rate their next report with it."""
        zone = _zone(book.timezone)
        self.book, self._zone = book, zone

    def rate(
        self,
        plan_id: str | None,
        rating_group: int | None,
        unit: Unit,
        at_ms: int,
        zone: str | None = None,
    ) -> Rated:
        book = self.book
        plan = book.plans.get(plan_id or book.default_plan) or book.plans[book.default_plan]
        service = plan.find(rating_group, unit)
        if service is None:
            return Rated(None, plan=plan.id)
        if service.zero_rated:
            return Rated(_FREE, zero_rated=True, sponsor=service.sponsor, plan=plan.id)
        price = service.price
        if zone is not None and zone in service.zones:
            price = service.zones[zone]
        elif service.bands:
            local = datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(self._zone)
            minute = local.hour * 60 + local.minute
            band = next((b for b in service.bands if b.covers(local.weekday(), minute)), None)
            if band is not None:
                price = band.price
        return Rated(price, sponsor=service.sponsor, plan=plan.id)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffError(f"unknown timezone {name!r}") from None
