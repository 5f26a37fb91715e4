"""The delivery loop of cross-operator transfers, in process against a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quotaflow.interop import InteropService, OperatorDirectory
from tests.records.harness import running_engine, stops_when_woken


async def test_delivery_loop_stops_in_the_tick_it_is_poked(tmp_path: Path) -> None:
    """A poke and a stop in the same tick: the stop wins. (Python 3.11's wait_for returned the
    poke and dropped the cancel, so the loop ran on and the server's shutdown never ended.)"""
    async with running_engine(tmp_path / "data") as engine:
        service = InteropService(engine, OperatorDirectory()).start()
        await asyncio.sleep(0.05)  # through the start-up pass, waiting for the next poke
        assert service._task is not None and not service._task.done()
        await stops_when_woken(service.poke, service)
        assert service._task.cancelled()
