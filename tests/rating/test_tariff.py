"""Tariff files: what they mean, and the line a bad one is refused at."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from quotaflow.ledger import Price, Unit
from quotaflow.rating import Rater, TariffError, load_document, load_text

TARIFF = """\
currency = "EUR"
timezone = "Europe/Stockholm"

[[rating_group]]
id = 10
name = "internet"
unit = "octets"

[[rating_group]]
id = 20
name = "video"
unit = "octets"

[[rating_group]]
id = 100
name = "voice"
unit = "seconds"

[[rating_group]]
id = 200
name = "sms"
unit = "events"

[[plan]]
id = "basic"
default = true

  [[plan.service]]
  rating_groups = [10]
  price = "0.01"
  unit_size = 1000000

    [[plan.service.zone]]
    zone = "eu-roaming"
    price = "0.05"

  [[plan.service]]
  rating_groups = [20]
  zero_rated = true
  price = "0"

  [[plan.service]]
  rating_groups = [100]
  price = "0.12"
  unit_size = 60
  first_increment = 30
  next_increment = 6
  connect_fee = "0.05"

    [[plan.service.band]]
    days = ["sat", "sun"]
    from = "00:00"
    to = "24:00"
    price = "0.06"

  [[plan.service]]
  rating_groups = [200]
  price = "0.10"
  sponsor = "acme"

[[plan]]
id = "unlimited-video"

  [[plan.service]]
  unit = "octets"
  price = "0.002"
  unit_size = 1000000
"""

MONDAY_NOON = int(datetime(2026, 11, 23, 11, 0, tzinfo=UTC).timestamp() * 1000)
SATURDAY_NOON = int(datetime(2026, 11, 28, 11, 0, tzinfo=UTC).timestamp() * 1000)


def test_plans_services_variants() -> None:
    rater = Rater(load_text(TARIFF))
    web = rater.rate(None, 10, Unit.OCTETS, MONDAY_NOON)
    assert web.plan == "basic" and web.price == Price(10_000, 1_000_000, 1_000_000, 1_000_000)
    roaming = rater.rate("basic", 10, Unit.OCTETS, MONDAY_NOON, zone="eu-roaming")
    assert roaming.price is not None and roaming.price.price_micros == 50_000
    assert rater.rate("basic", 20, Unit.OCTETS, MONDAY_NOON).zero_rated
    voice = rater.rate("basic", 100, Unit.SECONDS, MONDAY_NOON).price
    assert voice == Price(120_000, 60, 30, 6, 50_000)
    weekend = rater.rate("basic", 100, Unit.SECONDS, SATURDAY_NOON).price
    assert weekend is not None and weekend.price_micros == 60_000
    assert weekend.first_units == 30  # a band inherits the pattern it does not restate
    assert rater.rate("basic", 200, Unit.EVENTS, MONDAY_NOON).sponsor == "acme"
    # A rating group the plan does not price: only buckets of its own unit pay for it.
    assert rater.rate("basic", 999, Unit.OCTETS, MONDAY_NOON).price is None
    other = rater.rate("unlimited-video", 20, Unit.OCTETS, MONDAY_NOON)
    assert other.price is not None and other.price.price_micros == 2_000
    assert rater.rate("no-such-plan", 10, Unit.OCTETS, MONDAY_NOON).plan == "basic"


def test_voice_30_6_with_one_euro_gets_whole_increments() -> None:
    # 0.12 per minute, 30/6, no connect fee: 1.00 buys 498 s (30 + 78 x 6), not 500.
    price = Price(120_000, 60, 30, 6, 0)
    assert price.units_for(1_000_000, 0) == 498
    assert price.cost(498) == 996_000 <= 1_000_000 < price.cost(499)
    # Mid-call: 40 s already charged (30 + 2 x 6 = 42 s paid), so 2 s are already paid for.
    assert price.units_for(0, 40) == 2
    assert price.cost(1) == price.cost(30) == 60_000


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            '[[plan]]\nid = "p"\n  [[plan.service]]\n  rating_groups = [7]\n  price = "1"\n',
            4,
            "unknown rating group 7",
        ),
        (
            '[[rating_group]]\nid = 1\nunit = "octets"\n[[plan]]\nid = "p"\n'
            '[[plan.service]]\nrating_groups = [1]\nprice = "-0.5"\n',
            8,
            "must not be negative",
        ),
        (
            '[[plan]]\nid = "p"\n[[plan.service]]\nunit = "seconds"\nprice = "1"\n'
            '[[plan.service.band]]\ndays = ["mon"]\nfrom = "08:00"\nto = "18:00"\n'
            '[[plan.service.band]]\ndays = ["mon", "tue"]\nfrom = "17:00"\nto = "20:00"\n',
            12,
            "time bands overlap",
        ),
        (
            '[[plan]]\nid = "p"\n[[plan.service]]\nunit = "seconds"\nprice = "1"\nunit_size = 0\n',
            6,
            "unit_size must be a positive integer",
        ),
        ('[[plan]]\nid = "p"\n[[plan]]\nid = "p"\n', 4, "defined twice"),
        ('[[plan]]\nid = "p"\nbad toml here\n', 3, "not valid TOML"),
        (
            '[[plan]]\nid = "a"\n[[plan.service]]\nunit = "octets"\nprice = "1"\n'
            '[[plan]]\nid = "b"\n[[plan.service]]\nunit = "litres"\n',
            9,
            "unknown unit",
        ),
    ],
)
def test_bad_tariffs_name_the_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(TariffError) as caught:
        load_text(text, "t.toml")
    assert caught.value.line == line, str(caught.value)
    assert reason in str(caught.value)
    assert str(caught.value).startswith(f"t.toml:{line}: ")


def test_documents_get_the_same_checks() -> None:
    with pytest.raises(TariffError, match="at least one"):
        load_document({"plan": []})
    with pytest.raises(TariffError, match="must be an object"):
        load_document([1])
    book = load_document({"plan": [{"id": "x", "service": [{"unit": "events", "price": "1"}]}]})
    assert book.default_plan == "x"


async def test_server_refuses_a_bad_tariff_file(tmp_path: Path) -> None:
    import asyncio
    import sys

    tariff = tmp_path / "t.toml"
    tariff.write_text('[[plan]]\nid = "p"\n[[plan.service]]\nunit = "octets"\nprice = "x"\n')
    config = tmp_path / "q.toml"
    config.write_text(f'[rating]\ntariff_file = "{tariff}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quotaflow",
        "serve",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert f"{tariff}:5: price is not a number" in err.decode()
