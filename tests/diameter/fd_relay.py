"""Debian's freeDiameterd as a relay between a test client and quotaflow.

freeDiameter 1.2.1 decodes every message it relays with its own dictionaries (dict_nasreq,
dict_rfc5777, dict_dcca, dict_dcca_3gpp, loaded in that order) and drops an answer that breaks
them; dbg_msg_dumps logs the decoded tree of each message, and errors (e.g. "ERROR Invalid
length AVP") at level ERROR. It insists on TLS files even when every peer is No_TLS, so a
self-signed pair and named DH parameters are made here with openssl.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

RELAY_HOST = "relay.fd.test"
RELAY_REALM = "fd.test"
DICTIONARIES = ("dict_nasreq", "dict_rfc5777", "dict_dcca", "dict_dcca_3gpp")
EXTENSION_DIRS = ("/usr/lib/freeDiameter", "/usr/lib/x86_64-linux-gnu/freeDiameter")
# dbg_msg_dumps: errors, sent/received messages, routing decisions and peer events, as trees.
DUMP_MASK = "0x8888"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def require(binary: str, package: str) -> str:
    """The binary's path, or a failed test saying what to install (never a silent skip)."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} is not installed: apt-get install {package} (scripts/test.sh does it)",
            pytrace=False,
        )
    return path


def extension_dir() -> Path:
    for candidate in EXTENSION_DIRS:
        if all((Path(candidate) / f"{name}.fdx").exists() for name in DICTIONARIES):
            return Path(candidate)
    pytest.fail(
        f"freeDiameter extensions not found in {EXTENSION_DIRS}: apt-get install "
        "freediameter-extensions",
        pytrace=False,
    )


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate, its key and DH parameters (RFC 7919 ffdhe2048: instant)."""
    openssl = require("openssl", "openssl")
    cert, key, dh = directory / "cert.pem", directory / "key.pem", directory / "dh.pem"
    if not cert.exists():
        for command in (
            f"req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2"
            f" -keyout {key} -out {cert} -subj /CN={RELAY_HOST}",
            f"genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 -out {dh}",
        ):
            subprocess.run([openssl, *command.split()], check=True, capture_output=True, timeout=30)
    return cert, key, dh


@dataclass
class Relay:
    process: asyncio.subprocess.Process
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def problems(self) -> list[str]:
        """Lines freeDiameter logged at level ERROR: decode errors, drops, routing errors."""
        return [line for line in self.log().splitlines() if "  ERROR  " in line]

    def received_from(self, host: str, command: str) -> int:
        """How many `command` messages freeDiameter received from `host` and decoded."""
        lines = self.log().splitlines()
        return sum(
            1
            for i, line in enumerate(lines[:-1])
            if f"RCV from '{host}'" in line and f"'{command}'" in lines[i + 1]
        )

    async def wait_for(self, text: str, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.process.returncode is not None:
                pytest.fail(f"freeDiameterd exited:\n{self.log()[-4000:]}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the relay's log:\n{self.log()[-4000:]}")
            await asyncio.sleep(0.05)


def _config(
    directory: Path, port: int, server_host: str, server_port: int, clients: Iterable[str]
) -> Path:
    cert, key, dh = make_tls_files(directory)
    extensions = extension_dir()
    acl = directory / "acl_wl.conf"
    acl.write_text("".join(f"ALLOW_IPSEC {host}\n" for host in clients))
    lines = [
        f'Identity = "{RELAY_HOST}";',
        f'Realm = "{RELAY_REALM}";',
        f"Port = {port};",
        f"SecPort = {free_port()};",
        "No_SCTP;",
        "No_IPv6;",
        'ListenOn = "127.0.0.1";',
        f'TLS_Cred = "{cert}", "{key}";',
        f'TLS_CA = "{cert}";',
        f'TLS_DH_File = "{dh}";',
        *(f'LoadExtension = "{extensions / name}.fdx";' for name in DICTIONARIES),
        f'LoadExtension = "{extensions}/dbg_msg_dumps.fdx" : "{DUMP_MASK}";',
        f'LoadExtension = "{extensions}/acl_wl.fdx" : "{acl}";',
        f'ConnectPeer = "{server_host}" {{ ConnectTo = "127.0.0.1"; Port = {server_port};'
        " No_TLS; };",
    ]
    path = directory / "freeDiameter.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def freediameter_relay(
    directory: Path,
    *,
    server_port: int,
    server_host: str = "ocs.quotaflow.local",
    clients: Iterable[str],
) -> AsyncIterator[Relay]:
    """freeDiameterd relaying between `clients` (accepted by acl_wl) and the server, which
    must already listen: the relay connects to it at once and waits until the CEA."""
    binary = require("freeDiameterd", "freediameter")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = _config(directory, port, server_host, server_port, clients)
    log_path = directory / "freeDiameter.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=log_file, stderr=subprocess.STDOUT
        )
    relay = Relay(process, log_path, port)
    try:
        await relay.wait_for(f"CONNECTED TO '{server_host}'")
        yield relay
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await process.wait()
