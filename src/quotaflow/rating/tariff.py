"""Tariff plans: read from TOML (or the same shape as JSON), checked, converted to integers once.

Money in the file is decimal text; it becomes integer micro-units here, rounded down, so no
charge is ever higher than the tariff says. A file that cannot be used is refused with the line
that is wrong: the server will not start on it rather than charge wrongly.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, InvalidOperation
from typing import Any

from quotaflow.ledger import Price, Unit

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
PLANS_MAX = 10_000
SERVICES_PER_PLAN_MAX = 1_000
VARIANTS_PER_SERVICE_MAX = 100
_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


class TariffError(ValueError):
    """A tariff that cannot be used; `line` is where (1-based) when it came from a file."""

    def __init__(self, message: str, line: int | None = None, source: str = "tariff") -> None:
        where = f"{source}:{line}: " if line else f"{source}: "
        super().__init__(where + message)
        self.line = line
        self.reason = message


@dataclass(frozen=True, slots=True)
class Band:
    """A time-of-day variant: on `days`, from `start_min` to `end_min` (local minutes)."""

    days: frozenset[int]
    start_min: int
    end_min: int
    price: Price

    def covers(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.start_min <= minute < self.end_min


@dataclass(frozen=True, slots=True)
class ServiceTariff:
    rating_groups: frozenset[int]  # empty: every rating group of `unit` not priced otherwise
    unit: Unit
    price: Price
    zero_rated: bool = False
    sponsor: str | None = None
    bands: tuple[Band, ...] = ()
    zones: dict[str, Price] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    services: tuple[ServiceTariff, ...]

    def find(self, rating_group: int | None, unit: Unit) -> ServiceTariff | None:
        fallback = None
        for s in self.services:
            if s.unit is not unit:
                continue
            if rating_group is not None and rating_group in s.rating_groups:
                return s
            if not s.rating_groups and fallback is None:
                fallback = s
        return fallback


@dataclass(frozen=True, slots=True)
class TariffBook:
    plans: dict[str, Plan]
    default_plan: str
    rating_groups: dict[int, tuple[str, Unit]]
    timezone: str = "UTC"
    currency: str = "EUR"
    document: dict[str, Any] = field(default_factory=dict)  # what it was read from, as JSON


# ---------------------------------------------------------------------- locating lines


class _Lines:
    """Finds the line of `[[table]]` number n and of a key inside it, in TOML text."""

    def __init__(self, text: str | None) -> None:
        self.headers: list[tuple[str, int]] = []
        self.lines = [] if text is None else text.splitlines()
        for number, raw in enumerate(self.lines, 1):
            stripped = raw.strip()
            if stripped.startswith("[["):
                self.headers.append((stripped.strip("[] "), number))

    def table(self, path: list[tuple[str, int]]) -> int | None:
        """Line of e.g. [("plan", 1), ("plan.service", 0)]: service 0 inside plan 1."""
        start = 0
        line = None
        for name, index in path:
            seen = -1
            found = None
            for i in range(start, len(self.headers)):
                header = self.headers[i][0]
                if i > start and name.startswith(header + "."):
                    break  # the next parent element began: no more children of ours
                if header == name:
                    seen += 1
                    if seen == index:
                        found = i
                        break
            if found is None:
                return line
            start, line = found, self.headers[found][1]
        return line

    def key(self, table_line: int | None, key: str) -> int | None:
        if table_line is None:
            return None
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(table_line, len(self.lines)):
            text = self.lines[number]
            if text.strip().startswith("["):
                break
            if pattern.match(text):
                return number + 1
        return table_line


# ---------------------------------------------------------------------- parsing


def _money_micros(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f'{what} must be decimal text such as "0.12"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what} must not be negative")
    return int((amount * 1_000_000).to_integral_value(rounding=ROUND_DOWN))


def _positive_int(table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if type(value) is not int or value <= 0:
        raise ValueError(f"{key} must be a positive integer")
    return value


def _minutes(text: Any, key: str) -> int:
    m = _TIME.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{key} must be HH:MM")
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    if minutes > MINUTES_PER_DAY:
        raise ValueError(f"{key} must be at most 24:00")
    return minutes


class _Reader:
    def __init__(self, doc: dict[str, Any], text: str | None, source: str) -> None:
        self.doc = doc
        self.lines = _Lines(text)
        self.source = source

    def fail(self, message: str, path: list[tuple[str, int]], key: str | None = None) -> None:
        line = self.lines.table(path)
        if key is not None:
            line = self.lines.key(line, key)
        raise TariffError(message, line, self.source)

    def book(self) -> TariffBook:
        catalogue = self.catalogue()
        plans: dict[str, Plan] = {}
        default = None
        raw_plans = self.doc.get("plan", [])
        if not isinstance(raw_plans, list) or not raw_plans:
            raise TariffError("at least one [[plan]] is required", None, self.source)
        if len(raw_plans) > PLANS_MAX:
            raise TariffError(f"more than {PLANS_MAX} plans", None, self.source)
        for i, raw in enumerate(raw_plans):
            path = [("plan", i)]
            plan_id = raw.get("id")
            if not isinstance(plan_id, str) or not plan_id:
                self.fail("plan needs an id", path, "id")
            if plan_id in plans:
                self.fail(f"plan {plan_id!r} is defined twice", path, "id")
            services = raw.get("service", [])
            if len(services) > SERVICES_PER_PLAN_MAX:
                self.fail(f"more than {SERVICES_PER_PLAN_MAX} services", path)
            plans[plan_id] = Plan(
                plan_id,
                tuple(
                    self.service(s, catalogue, [*path, ("plan.service", j)])
                    for j, s in enumerate(services)
                ),
            )
            if raw.get("default"):
                if default is not None:
                    self.fail("only one plan can be the default", path, "default")
                default = plan_id
        if default is None:
            default = next(iter(plans))
        return TariffBook(
            plans=plans,
            default_plan=default,
            rating_groups=catalogue,
            timezone=str(self.doc.get("timezone", "UTC")),
            currency=str(self.doc.get("currency", "EUR")),
            document=self.doc,
        )

    def catalogue(self) -> dict[int, tuple[str, Unit]]:
        found: dict[int, tuple[str, Unit]] = {}
        for i, raw in enumerate(self.doc.get("rating_group", [])):
            path = [("rating_group", i)]
            rg = raw.get("id")
            if type(rg) is not int or not 0 <= rg < 2**32:
                self.fail("rating_group id must be an unsigned 32-bit integer", path, "id")
            if rg in found:
                self.fail(f"rating group {rg} is defined twice", path, "id")
            try:
                unit = Unit(raw.get("unit"))
            except ValueError:
                self.fail("unit must be octets, seconds or events", path, "unit")
            if unit is Unit.MONEY:
                self.fail("a rating group is metered in octets, seconds or events", path, "unit")
            found[rg] = (str(raw.get("name", rg)), unit)
        return found

    def price(self, raw: dict[str, Any], path: list[tuple[str, int]], base: Price | None) -> Price:
        try:
            per = _positive_int(raw, "unit_size", base.per_units if base else 1)
            first = _positive_int(raw, "first_increment", base.first_units if base else per)
            step = _positive_int(raw, "next_increment", base.next_units if base else per)
            if "price" not in raw and base is None:
                raise ValueError("price is required")
            price = (
                base.price_micros
                if "price" not in raw and base
                else _money_micros(raw.get("price"), "price")
            )
            connect = (
                base.connect_micros
                if base and "connect_fee" not in raw
                else _money_micros(raw.get("connect_fee", "0"), "connect_fee")
            )
        except ValueError as exc:
            key = next(
                (
                    k
                    for k in (
                        "price",
                        "unit_size",
                        "first_increment",
                        "next_increment",
                        "connect_fee",
                    )
                    if k in str(exc)
                ),
                None,
            )
            self.fail(str(exc), path, key)
            raise  # unreachable: fail raises
        return Price(price, per, first, step, connect)

    def service(
        self,
        raw: dict[str, Any],
        catalogue: dict[int, tuple[str, Unit]],
        path: list[tuple[str, int]],
    ) -> ServiceTariff:
        groups = raw.get("rating_groups", [])
        if groups == "*":
            groups = []
        if not isinstance(groups, list):
            self.fail('rating_groups must be a list or "*"', path, "rating_groups")
        units = set()
        for rg in groups:
            if rg not in catalogue:
                self.fail(f"unknown rating group {rg!r}", path, "rating_groups")
            units.add(catalogue[rg][1])
        unit_name = raw.get("unit")
        if unit_name is not None:
            try:
                units.add(Unit(unit_name))
            except ValueError:
                self.fail(f"unknown unit {unit_name!r}", path, "unit")
        if len(units) != 1:
            self.fail(
                "a service needs rating groups of one unit (or `unit` for all)",
                path,
                "rating_groups",
            )
        unit = units.pop()
        price = self.price(raw, path, None)
        bands = tuple(
            self.band(b, price, [*path, ("plan.service.band", k)])
            for k, b in enumerate(raw.get("band", []))
        )
        self.check_overlap(bands, path)
        zones: dict[str, Price] = {}
        for k, z in enumerate(raw.get("zone", [])):
            zpath = [*path, ("plan.service.zone", k)]
            name = z.get("zone")
            if not isinstance(name, str) or not name or name in zones:
                self.fail("each zone variant needs a distinct zone name", zpath, "zone")
            zones[name] = self.price(z, zpath, price)
        if len(bands) + len(zones) > VARIANTS_PER_SERVICE_MAX:
            self.fail(f"more than {VARIANTS_PER_SERVICE_MAX} variants", path)
        sponsor = raw.get("sponsor")
        if sponsor is not None and (not isinstance(sponsor, str) or not sponsor):
            self.fail("sponsor must be a subscriber id", path, "sponsor")
        return ServiceTariff(
            frozenset(groups),
            unit,
            price,
            bool(raw.get("zero_rated", False)),
            sponsor,
            bands,
            zones,
        )

    def band(self, raw: dict[str, Any], base: Price, path: list[tuple[str, int]]) -> Band:
        days = raw.get("days", list(DAYS))
        if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
            self.fail(f"days must be a list of {', '.join(DAYS)}", path, "days")
        try:
            start = _minutes(raw.get("from"), "from")
            end = _minutes(raw.get("to"), "to")
        except ValueError as exc:
            self.fail(str(exc), path, str(exc).split()[0])
        if start >= end:
            self.fail("a band must end after it starts (split bands across midnight)", path, "to")
        return Band(frozenset(DAYS.index(d) for d in days), start, end, self.price(raw, path, base))

    def check_overlap(self, bands: tuple[Band, ...], path: list[tuple[str, int]]) -> None:
        for k, a in enumerate(bands):
            for b in bands[:k]:
                if a.days & b.days and a.start_min < b.end_min and b.start_min < a.end_min:
                    self.fail("time bands overlap", [*path, ("plan.service.band", k)], "from")


def load_text(text: str, source: str = "tariff") -> TariffBook:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise TariffError(
            f"not valid TOML: {exc}", int(m.group(1)) if m else None, source
        ) from None
    return _Reader(doc, text, source).book()


def load_document(doc: Any, source: str = "tariff") -> TariffBook:
    """The same checks on a parsed document (e.g. JSON through the API); no line numbers."""
    if not isinstance(doc, dict):
        raise TariffError("a tariff document must be an object", None, source)
    try:
        return _Reader(doc, None, source).book()
    except (AttributeError, TypeError) as exc:
        raise TariffError(f"malformed tariff document: {exc}", None, source) from None


DEFAULT_TARIFF = """\
# The built-in tariff, used when none is configured.
currency = "EUR"
timezone = "UTC"

[[plan]]
id = "default"
default = true

  [[plan.service]]
  unit = "octets"
  price = "0.01"            # per started MB
  unit_size = 1000000

  [[plan.service]]
  unit = "seconds"
  price = "0.12"            # per minute, charged 60/60
  unit_size = 60

  [[plan.service]]
  unit = "events"
  price = "0.05"
  unit_size = 1
"""
