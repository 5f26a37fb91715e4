"""`quotaflow settle verify` and `quotaflow cdr list|export|verify|public-key`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quotaflow.records import ChainWriter, Rotation, Tariff, public_pem, settle_verify
from quotaflow.records import cli as records_cli
from tests.records.harness import debits, provision, running_engine

MB = 1_000_000
TARIFF = {
    "rates": [
        {"unit": "octets", "price": "0.01", "per_units": MB},
        {"unit": "octets", "rating_group": 20, "price_micros": 0, "per_units": 1},
        {"unit": "seconds", "price_micros": 2000, "per_units": 1},
    ]
}


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="quotaflow")
    records_cli.register(parser.add_subparsers(dest="command", required=True))
    return records_cli.run(parser.parse_args(argv))


def partner_file(folder: Path, key: Ed25519PrivateKey, usage: list[dict[str, Any]]) -> Path:
    w = ChainWriter(folder, "jsonl", key, Rotation())
    w.recover()
    w.append(usage)
    w.seal()
    (data,) = folder.glob("cdr-*.jsonl")
    return data


def usage() -> list[dict[str, Any]]:
    return [
        {"seq": 1, "imsi": "00101x", "unit": "octets", "units": 5 * MB, "charge_micros": 50_000},
        {"seq": 2, "unit": "octets", "rating_group": 20, "units": MB, "charge_micros": 0},
        {"seq": 3, "unit": "octets", "units": MB + 1, "charge_micros": 30_000},  # 20_000 due
        {"seq": 4, "unit": "seconds", "units": 60, "charge_micros": 120_000},
        {"seq": 5, "unit": "events", "units": 1, "charge_micros": 50_000},  # no agreed rate
    ]


def test_settlement_reports_each_discrepancy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partner = Ed25519PrivateKey.generate()
    data = partner_file(tmp_path / "partner", partner, usage())
    report = settle_verify(data, partner.public_key(), Tariff.from_json(TARIFF))
    assert report.verification.ok
    assert [(d.kind, d.line, d.seq) for d in report.discrepancies] == [
        ("price", 3, 3),
        ("unrated", 5, 5),
    ]
    assert report.discrepancies[0].expected_micros == 20_000
    assert report.claimed_micros == 250_000 and report.expected_micros == 190_000
    (tmp_path / "partner.pub").write_bytes(public_pem(partner.public_key()))
    (tmp_path / "tariff.json").write_bytes(orjson.dumps(TARIFF))
    argv = ["settle", "verify", str(data), "--partner-key", str(tmp_path / "partner.pub")]
    assert run([*argv, "--tariff", str(tmp_path / "tariff.json")]) == 1
    out = capsys.readouterr().out
    assert "line 3 seq 3: price: claims 30000 micros" in out and "2 discrepancy" in out


def test_settlement_refuses_a_tampered_or_unsigned_file(tmp_path: Path) -> None:
    partner = Ed25519PrivateKey.generate()
    honest = usage()[:4]
    honest[2]["charge_micros"] = 20_000
    data = partner_file(tmp_path / "partner", partner, honest)
    tariff = Tariff.from_json(TARIFF)
    assert settle_verify(data, partner.public_key(), tariff).ok
    lines = data.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"20000", b"25000")  # edited after the partner signed it
    data.write_bytes(b"\n".join(lines))
    report = settle_verify(data, partner.public_key(), tariff)
    assert [(p.kind, p.line, p.seq) for p in report.verification.problems] == [("changed", 3, 3)]
    assert [(d.kind, d.seq) for d in report.discrepancies] == [("price", 3)]
    other = Ed25519PrivateKey.generate().public_key()
    assert not settle_verify(data, other, tariff).ok


async def test_cdr_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    async with running_engine(data) as engine:
        await provision(engine, "alice")
        await provision(engine, "bob")
        await debits(engine, "alice", 3, "a")
        await debits(engine, "bob", 2, "b")
        capsys.readouterr()
        assert run(["cdr", "list", "--data-dir", str(data), "--subscriber", "bob"]) == 0
        listed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["subscriber_id"] for r in listed] == ["bob", "bob"]
        out = tmp_path / "export"
        export = ["cdr", "export", "--data-dir", str(data), "--out", str(out)]
        assert run([*export, "--records-per-file", "2"]) == 0
        assert orjson.loads(capsys.readouterr().out)["exported"] == 5
        await debits(engine, "alice", 1, "c")
        assert run(export) == 0  # a second run continues where the first stopped
        assert orjson.loads(capsys.readouterr().out)["exported"] == 1
    assert run(["cdr", "verify", str(out), "--data-dir", str(data)]) == 0
    assert "4 file(s), 6 record(s): ok" in capsys.readouterr().out
    assert run(["cdr", "public-key", "--data-dir", str(data)]) == 0
    pem = tmp_path / "ocs.pub"
    pem.write_text(capsys.readouterr().out)
    victim = sorted(out.glob("cdr-*.jsonl"))[1]
    lines = victim.read_bytes().split(b"\n")
    victim.write_bytes(b"\n".join([lines[1], lines[0], *lines[2:]]))
    assert run(["cdr", "verify", str(out), "--public-key", str(pem), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert [(p["kind"], p["line"]) for p in report["problems"]] == [("reordered", 1)]
    assert run(["cdr", "verify", str(out), "--public-key", str(tmp_path / "nope")]) == 2


AGREED_TOML = """\
[[rating_group]]
id = 100
unit = "seconds"

[[plan]]
id = "roaming-eu"

  [[plan.service]]
  rating_groups = [100]
  price = "0.12"
  unit_size = 60
  first_increment = 30
  next_increment = 6
"""


def test_settlement_re_rates_with_a_rating_engine_plan(tmp_path: Path) -> None:
    """The agreed tariff as a rating-engine plan: billing pattern included (30/6 voice)."""
    partner = Ed25519PrivateKey.generate()
    calls = [
        {"seq": 1, "unit": "seconds", "rating_group": 100, "units": 10, "charge_micros": 60_000},
        {"seq": 2, "unit": "seconds", "rating_group": 100, "units": 31, "charge_micros": 62_000},
        {"seq": 3, "unit": "seconds", "rating_group": 100, "units": 37, "charge_micros": 84_000},
    ]
    data = partner_file(tmp_path / "partner", partner, calls)
    tariff_path = tmp_path / "agreed.toml"
    tariff_path.write_text(AGREED_TOML)
    report = settle_verify(data, partner.public_key(), Tariff.load(tariff_path, "roaming-eu"))
    assert report.verification.ok
    # 31 s is charged as 36 s (30 + one 6 s step): 72,000 due, 62,000 claimed.
    assert [(d.kind, d.seq) for d in report.discrepancies] == [("price", 2)]
    key = tmp_path / "partner.pub"
    key.write_bytes(public_pem(partner.public_key()))
    assert (
        run(
            [
                "settle",
                "verify",
                str(data),
                "--partner-key",
                str(key),
                "--tariff",
                str(tariff_path),
                "--plan",
                "roaming-eu",
            ]
        )
        == 1
    )
    assert (
        run(
            [
                "settle",
                "verify",
                str(data),
                "--partner-key",
                str(key),
                "--tariff",
                str(tariff_path),
                "--plan",
                "roaming-eu",
                "--tolerance-micros",
                "10000",
            ]
        )
        == 0
    )
