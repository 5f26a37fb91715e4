"""Two real quotaflow servers as operators A and B: quota sent from A's subscriber to B's, with
either side killed midway. No value is lost or created: what left A arrives at B exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

MB = 1_000_000
TOKEN = "a-shared-secret-between-a-and-b"


class Operator:
    def __init__(
        self, name: str, root: Path, peer: str, peer_port: int, peer_prefix: str, port: int
    ) -> None:
        self.name, self.port = name, port
        self.config = root / f"{name}.toml"
        self.config.write_text(
            f'[server]\ndata_dir = "{root / name}"\nlog_level = "WARNING"\n'
            f"[http]\nport = {port}\n[diameter]\nenabled = false\n"
            f'[interop]\noperator_id = "{name}"\n'
            f'[[interop.operators]]\nid = "{peer}"\nurl = "http://127.0.0.1:{peer_port}"\n'
            f'token = "{TOKEN}"\nmsisdn_prefixes = ["{peer_prefix}"]\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quotaflow", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"operator {self.name} did not start")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


async def octets(api: httpx.AsyncClient, url: str, sid: str) -> int:
    balance = (await api.get(f"{url}/v1/subscribers/{sid}/balance")).json()
    return int(balance["totals"].get("octets", {}).get("amount", 0))


async def state(api: httpx.AsyncClient, a: Operator, tid: str) -> str:
    return str((await api.get(f"{a.url}/v1/interop/transfers/{tid}")).json()["state"])


async def until(api: httpx.AsyncClient, a: Operator, tid: str, wanted: str) -> None:
    for _ in range(300):
        if await state(api, a, tid) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{tid} never became {wanted}: {await state(api, a, tid)}")


async def test_quota_crosses_operators_and_survives_either_side_dying(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    a = Operator("opA", tmp_path, "opB", port_b, "4690", port_a)
    b = Operator("opB", tmp_path, "opA", port_a, "4670", port_b)
    a.start()
    b.start()
    try:
        async with httpx.AsyncClient(timeout=10) as api:
            await api.post(f"{a.url}/v1/subscribers", json={"id": "alice", "msisdn": "46700001"})
            await api.post(
                f"{a.url}/v1/subscribers/alice/topups", json={"unit": "octets", "amount": 100 * MB}
            )
            await api.post(f"{b.url}/v1/subscribers", json={"id": "bob", "msisdn": "46900001"})

            def send(tid: str, amount: int, to: str = "msisdn-46900001") -> dict[str, Any]:
                return {"id": tid, "from": "alice", "to": to, "unit": "octets", "amount": amount}

            # 1. B is down: A holds the quota and keeps trying; B comes back; it arrives.
            b.kill()
            r = await api.post(f"{a.url}/v1/interop/transfers", json=send("t1", 10 * MB))
            assert r.status_code == 202, r.text
            await asyncio.sleep(1.5)
            assert await state(api, a, "t1") == "held"
            assert await octets(api, a.url, "alice") == 90 * MB
            b.start()
            await until(api, a, "t1", "delivered")
            assert await octets(api, b.url, "bob") == 10 * MB

            # 2. A dies right after holding (before or after B credited: either way).
            r = await api.post(f"{a.url}/v1/interop/transfers", json=send("t2", 5 * MB))
            assert r.status_code == 202
            a.kill()
            a.start()
            await until(api, a, "t2", "delivered")
            assert await octets(api, b.url, "bob") == 15 * MB  # credited once, not twice
            assert await octets(api, a.url, "alice") == 85 * MB

            # 3. B refuses for good (no such subscriber): the quota goes back to alice.
            r = await api.post(
                f"{a.url}/v1/interop/transfers", json=send("t3", 7 * MB, "msisdn-46909999")
            )
            assert r.status_code == 202
            await until(api, a, "t3", "refused")
            assert await octets(api, a.url, "alice") == 85 * MB

            # 4. A number no operator serves is refused at once.
            r = await api.post(f"{a.url}/v1/interop/transfers", json=send("t4", MB, "msisdn-12345"))
            assert r.status_code == 404
            # 5. B refuses credits from anyone without the shared secret.
            r = await api.post(
                f"{b.url}/v1/interop/credits",
                json={"id": "x", "to": "msisdn-46900001", "unit": "octets", "amount": MB},
                headers={"authorization": "Bearer wrong"},
            )
            assert r.status_code == 403
            assert await octets(api, b.url, "bob") == 15 * MB
    finally:
        a.stop()
        b.stop()
