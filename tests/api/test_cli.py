"""The `quotaflow` command against a live server, and configuration files good and bad."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from quotaflow.config import ConfigError, load
from quotaflow.ledger import Unit
from quotaflow.server import Server


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quotaflow",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_provision_and_read_balance(server: Server) -> None:
    url = f"http://127.0.0.1:{server.cfg.http_port}"
    rc, out, _ = await cli("subscriber", "add", "bob", "--msisdn", "4671", "--url", url)
    assert rc == 0 and orjson.loads(out)["msisdn"] == "4671"
    rc, out, _ = await cli("topup", "bob", "octets", "5000", "--topup-id", "x1", "--url", url)
    assert rc == 0
    rc, out, _ = await cli("balance", "bob", "--url", url)
    assert rc == 0 and orjson.loads(out)["totals"]["octets"]["available"] == 5000
    rc, out, _ = await cli("subscriber", "bar", "bob", "--url", url)
    assert rc == 0 and orjson.loads(out)["status"] == "barred"
    rc, out, _ = await cli("subscriber", "show", "nobody", "--url", url)
    assert rc == 1 and orjson.loads(out)["error"]["code"] == "unknown_subscriber"


async def test_unreachable_server_is_a_clear_error() -> None:
    rc, _, err = await cli("balance", "bob", "--url", "http://127.0.0.1:9")
    assert rc == 2 and "cannot reach" in err


async def test_demo_runs_and_conserves() -> None:
    rc, out, err = await cli("demo")
    assert rc == 0, err
    assert "conservation holds" in out and "bob's SMS is refused: no_credit" in out


def test_config_file_is_read(tmp_path: Path) -> None:
    tariff = tmp_path / "t.toml"
    tariff.write_text(
        '[[plan]]\nid = "p"\n[[plan.service]]\nunit = "seconds"\nprice = "0.0020009"\n'
    )
    path = tmp_path / "q.toml"
    path.write_text(
        '[http]\nport = 9090\nserver = "hypercorn"\n'
        "[grants]\nvalidity_s = 120\n[grants.octets]\nmin = 1\n"
        'default = 2\nmax = 3\n[rating]\ntariff_file = "TARIFF"\n'
        '[diameter]\npeers = [{ origin_host = "pgw.example", address = "127.0.0.1" }]\n'
        '[records]\nformats = ["jsonl", "csv"]\nrotate_s = 600\nretention_days = 30\n'
        "process = false\n"
        '[records.nats]\nurl = "nats://127.0.0.1:4222"\nsubject = "ocs.cdr"\n'
    )
    path.write_text(path.read_text().replace("TARIFF", str(tariff)))
    cfg = load(path)
    assert cfg.http_port == 9090 and cfg.grants.validity_s == 120
    assert cfg.http_server == "hypercorn"
    assert load(None).http_server == "granian"
    assert cfg.grants.limits[Unit.OCTETS].max_units == 3
    assert cfg.tariffs is not None
    service = cfg.tariffs.plans["p"].services[0]
    assert service.unit is Unit.SECONDS
    assert service.price.price_micros == 2000  # rounded down, never up
    assert cfg.diameter_peers[0].origin_host == "pgw.example"
    assert cfg.records.formats == ("jsonl", "csv") and cfg.records.rotation.age_s_max == 600
    assert cfg.records.retention_days == 30
    assert cfg.records.process is False and cfg.records.export is True
    assert load(None).records.process is True
    assert cfg.records.nats is not None and cfg.records.nats.subject == "ocs.cdr"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[http]\nport = -1\n", "http.port"),
        ('[http]\nserver = "uvicorn"\n', "http.server"),
        ("[grants.octets]\nmin = 10\ndefault = 5\n", "grants.octets"),
        ('[rating]\ntariff_file = "/nonexistent/t.toml"\n', "cannot read tariff file"),
        ('[records]\nformats = ["xml"]\n', "records.formats"),
        ('[records]\nprocess = "yes"\n', "records.process"),
        ('[diameter]\npeers = [{ address = "x" }]\n', "origin_host"),
        ("not toml at all = = =", "cannot read config"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


async def test_server_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[grants]\nvalidity_s = 0\n")
    rc, _, err = await cli("serve", "--config", str(path))
    assert rc == 2 and "validity_s" in err


async def test_serve_on_a_folder_in_use_says_so_and_exits(tmp_path: Path) -> None:
    from quotaflow.store.base import lock_folder

    held = lock_folder(tmp_path, "held by the test")
    try:
        code, _, err = await cli(
            "serve", "--data-dir", str(tmp_path), "--http", "127.0.0.1:0", "--no-diameter"
        )
    finally:
        import os

        os.close(held)
    assert code == 1
    assert err.strip().endswith(f"data folder {tmp_path} is in use by another quotaflow store")
    assert "Traceback" not in err
