"""SIGKILL the server in the middle of load: every acknowledged change survives the restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from quotaflow.store import EmbeddedStore
from tests.conftest import free_port

SUBSCRIBERS = 8


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quotaflow",
            "serve",
            "--http",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--no-diameter",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read() if proc.stderr else ''!r}")


async def load(port: int, acked: list[tuple[str, str, int]], stop_after: int) -> None:
    """Many concurrent clients top up and debit; record every answer that came back 201."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as api:
        for i in range(SUBSCRIBERS):
            r = await api.post("/v1/subscribers", json={"id": f"s{i}"})
            assert r.status_code == 201

        async def client(n: int) -> None:
            k = 0
            while True:
                k += 1
                sid = f"s{(n + k) % SUBSCRIBERS}"
                op = f"c{n}-{k}"
                try:
                    if k % 3:
                        r = await api.post(
                            f"/v1/subscribers/{sid}/topups",
                            json={"id": op, "unit": "octets", "amount": 1000 + k, "bucket_id": op},
                        )
                        kind = "topup"
                    else:
                        r = await api.post(
                            f"/v1/subscribers/{sid}/adjustments",
                            json={"id": op, "unit": "octets", "amount": -10},
                        )
                        kind = "debit"
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 201:
                    acked.append((kind, sid, 1000 + k if kind == "topup" else -10))
                    if kind == "topup":
                        acked.append(("bucket", f"{sid}/{op}", 0))

        tasks = [asyncio.create_task(client(n)) for n in range(16)]
        while len(acked) < stop_after:
            await asyncio.sleep(0.01)
        await asyncio.wait(tasks, timeout=0.2)  # keep requests in flight while the kill lands
        for t in tasks:
            t.cancel()


async def test_sigkill_mid_load_loses_no_acknowledged_change(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    proc = start(data_dir, port)
    acked: list[tuple[str, str, int]] = []
    try:
        load_task = asyncio.create_task(load(port, acked, stop_after=600))
        while len(acked) < 600:
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of load: requests are in flight
        await asyncio.wait_for(load_task, 10)
    finally:
        proc.kill()
        proc.wait()
    acked_now = list(acked)

    store = EmbeddedStore(data_dir)
    await store.open()
    try:
        ledger = store.ledger
        ledger.check_invariants()
        for kind, key, _ in acked_now:
            if kind == "bucket":
                sid, bucket_id = key.split("/")
                assert bucket_id in ledger.subscribers[sid].buckets, f"lost top-up {key}"
        for sid in (f"s{i}" for i in range(SUBSCRIBERS)):
            counters = ledger.subscribers[sid].counters
            acked_debits = sum(-a for k, s, a in acked_now if k == "debit" and s == sid)
            if acked_debits:
                assert counters[next(iter(counters))]["debited"] >= acked_debits
    finally:
        await store.close()

    # And the server itself comes back on the same data and serves it.
    proc = start(data_dir, port)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/subscribers/s0/balance")
        assert r.status_code == 200 and r.json()["totals"]["octets"]["amount"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
