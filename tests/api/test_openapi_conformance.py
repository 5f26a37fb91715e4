"""schemathesis, from the server's own OpenAPI document, against the live server.

Every check runs except positive_data_acceptance: some rules cannot be written in OpenAPI 3.0
(valid_from before expires_at, a debit needs free credit) and are answered with a 4xx reason.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from quotaflow.server import Server


async def test_schemathesis_finds_nothing(server: Server, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.cfg.http_port}"
    st = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{base}/v1/openapi.json",
        "--url",
        base,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "40",
        "--generation-deterministic",
        "--request-timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    report = out.decode(errors="replace")
    assert proc.returncode == 0, report[-4000:]
    assert "Tested: 12" in report
