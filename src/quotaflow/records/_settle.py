"""Roaming settlement check: verify a partner's signed usage statistics and re-rate them.

The partner sends its usage as a record file in our chained format (JSON lines or CSV) with a
manifest signed by its Ed25519 key. Each record states `seq`, `unit`, the units used (`units`,
or `used_units`), optionally `rating_group`, and the charge it claims in micro-units
(`charge_micros`, or `cost_micros`). The agreed tariff is a flat price per unit, optionally per
rating group:

    {"rates": [{"unit": "octets", "price_micros": 10000, "per_units": 1000000},
               {"unit": "octets", "rating_group": 20, "price_micros": 0, "per_units": 1}],
     "tolerance_micros": 0}

Re-rating charges every started block of `per_units` (the engine's rule: round up). A record
whose claim differs from the re-rated price by more than the tolerance is a discrepancy, as is
one that cannot be rated. The file's own problems (signature, chain) are reported first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from quotaflow.ledger import Price, Unit
from quotaflow.rating import Rater, TariffBook, load_text
from quotaflow.rating import TariffError as RatingTariffError
from quotaflow.records._chain import FORMATS
from quotaflow.records._verify import VerifyReport, read_lines, verify

MONEY_MICROS = Decimal(1_000_000)


class TariffError(ValueError):
    """A tariff file that cannot be used."""


@dataclass(frozen=True, slots=True)
class Rate:
    unit: str
    rating_group: int | None
    price_micros: int
    per_units: int

    def price(self, units: int) -> int:
        return -(-units // self.per_units) * self.price_micros


@dataclass(frozen=True, slots=True)
class PlanRate:
    """A service of a rating-engine tariff plan: billing pattern, connect fee and all."""

    price_of: Price

    def price(self, units: int) -> int:
        return self.price_of.cost(units)


@dataclass(slots=True)
class Tariff:
    rates: dict[tuple[str, int | None], Rate]
    tolerance_micros: int = 0
    # Or the agreed plan of a rating-engine tariff file (TOML, see docs/RATING.md).
    book: TariffBook | None = None
    plan: str | None = None

    def rate_for(self, unit: str, rating_group: int | None) -> Rate | PlanRate | None:
        if self.book is not None:
            rated = Rater(self.book).rate(self.plan, rating_group, Unit(unit), 0)
            return None if rated.price is None else PlanRate(rated.price)
        return self.rates.get((unit, rating_group)) or self.rates.get((unit, None))

    @classmethod
    def from_json(cls, doc: Any) -> Tariff:
        if not isinstance(doc, dict) or not isinstance(doc.get("rates"), list):
            raise TariffError("a tariff is an object with a list of `rates`")
        rates: dict[tuple[str, int | None], Rate] = {}
        for i, r in enumerate(doc["rates"]):
            rate = _rate(r, i)
            key = (rate.unit, rate.rating_group)
            if key in rates:
                raise TariffError(f"rates[{i}]: a second rate for {key}")
            rates[key] = rate
        tolerance = doc.get("tolerance_micros", 0)
        if type(tolerance) is not int or tolerance < 0:
            raise TariffError("tolerance_micros must be a non-negative integer")
        return cls(rates, tolerance)

    @classmethod
    def load(cls, path: str | Path, plan: str | None = None, tolerance_micros: int = 0) -> Tariff:
        """A JSON list of flat rates, or a rating-engine TOML tariff and its agreed plan."""
        if str(path).endswith(".toml"):
            try:
                book = load_text(Path(path).read_text(), str(path))
            except (OSError, RatingTariffError) as exc:
                raise TariffError(f"cannot use tariff {path}: {exc}") from None
            if plan is not None and plan not in book.plans:
                raise TariffError(f"tariff {path} has no plan {plan!r}")
            return cls({}, tolerance_micros, book, plan)
        try:
            return cls.from_json(orjson.loads(Path(path).read_bytes()))
        except (OSError, orjson.JSONDecodeError) as exc:
            raise TariffError(f"cannot read tariff {path}: {exc}") from None


def _rate(r: Any, i: int) -> Rate:
    if not isinstance(r, dict) or not isinstance(r.get("unit"), str):
        raise TariffError(f"rates[{i}] needs a unit")
    price_micros: Any = r.get("price_micros")
    if "price" in r:  # decimal money, e.g. "0.01": converted once, rounded down
        try:
            price_micros = int(Decimal(str(r["price"])) * MONEY_MICROS)
        except InvalidOperation:
            raise TariffError(f"rates[{i}].price is not a number") from None
    per_units = r.get("per_units", 1)
    rg = r.get("rating_group")
    if type(price_micros) is not int or price_micros < 0:
        raise TariffError(f"rates[{i}].price_micros must be a non-negative integer")
    if type(per_units) is not int or per_units <= 0:
        raise TariffError(f"rates[{i}].per_units must be a positive integer")
    if rg is not None and type(rg) is not int:
        raise TariffError(f"rates[{i}].rating_group must be an integer")
    return Rate(r["unit"], rg, price_micros, per_units)


@dataclass(frozen=True, slots=True)
class Discrepancy:
    kind: str  # "price", "unrated", "malformed"
    line: int
    seq: int
    message: str
    claimed_micros: int | None = None
    expected_micros: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "line": self.line,
            "seq": self.seq,
            "message": self.message,
            "claimed_micros": self.claimed_micros,
            "expected_micros": self.expected_micros,
        }

    def __str__(self) -> str:
        return f"line {self.line} seq {self.seq}: {self.kind}: {self.message}"


@dataclass(slots=True)
class SettlementReport:
    verification: VerifyReport
    records: int = 0
    claimed_micros: int = 0
    expected_micros: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verification.ok and not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verification": self.verification.to_json(),
            "records": self.records,
            "claimed_micros": self.claimed_micros,
            "expected_micros": self.expected_micros,
            "difference_micros": self.claimed_micros - self.expected_micros,
            "discrepancies": [d.to_json() for d in self.discrepancies],
        }


def _int(fields: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = fields.get(name)
        if type(value) is int:
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    return None


def settle_verify(
    path: str | Path, partner_key: Ed25519PublicKey, tariff: Tariff
) -> SettlementReport:
    """Verify the partner's file (signature, chain, every record) and re-rate each record."""
    data = Path(path)
    report = SettlementReport(verify(data, partner_key))
    fmt = data.suffix.lstrip(".")
    if fmt not in FORMATS:
        return report
    lines, _ = read_lines(data, fmt)
    for line in lines:
        report.records += 1
        f = line.fields
        units = _int(f, "units", "used_units")
        claimed = _int(f, "charge_micros", "cost_micros")
        unit = f.get("unit")
        rg = _int(f, "rating_group")
        if units is None or claimed is None or not isinstance(unit, str):
            report.discrepancies.append(
                Discrepancy("malformed", line.number, line.seq, "needs unit, units and a charge")
            )
            continue
        rate = tariff.rate_for(unit, rg)
        report.claimed_micros += claimed
        if rate is None:
            report.discrepancies.append(
                Discrepancy(
                    "unrated",
                    line.number,
                    line.seq,
                    f"no agreed rate for {unit} rating group {rg}",
                    claimed,
                )
            )
            continue
        expected = rate.price(units)
        report.expected_micros += expected
        if abs(claimed - expected) > tariff.tolerance_micros:
            report.discrepancies.append(
                Discrepancy(
                    "price",
                    line.number,
                    line.seq,
                    f"claims {claimed} micros for {units} {unit}; the tariff gives {expected}",
                    claimed,
                    expected,
                )
            )
    return report
