"""The embedded store's group commit, seen by its callers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quotaflow.store import EmbeddedStore


async def test_a_cancelled_waiter_does_not_cancel_its_batch(tmp_path: Path) -> None:
    """Many operations wait on one commit; cancelling one of them must not fail the others,
    and the cancelled one is still applied and durable (it was, before it was cancelled)."""
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    waiters = [
        asyncio.create_task(
            store.execute("topup", f"t{i}", {"subscriber_id": "a", "unit": "octets", "amount": 10})
        )
        for i in range(20)
    ]
    await asyncio.sleep(0)  # every waiter has applied its topup and waits for the commit
    assert waiters[3].cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    others = [r for i, r in enumerate(results) if i != 3]
    assert all(isinstance(r, dict) for r in others), others
    await store.close()
    again = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await again.open()
    try:
        balance = again.ledger.subscriber("a").buckets
        assert sum(b.amount for b in balance.values()) == 200  # all 20, the cancelled one too
    finally:
        await again.close()


async def test_a_waiter_cancelled_during_the_write_gets_cancelled_after_it(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, sweep_interval_s=3600)
    await store.open()
    await store.execute("create_subscriber", "c", {"id": "a"})
    task = asyncio.create_task(
        store.execute("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 5})
    )
    other = asyncio.create_task(
        store.execute("topup", "u", {"subscriber_id": "a", "unit": "octets", "amount": 7})
    )
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await other)["amount"] == 7
    assert store.pending() is None  # the cancelled one's change was written with the batch
    await store.close()


async def test_submits_offer_the_gil_while_a_commit_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled code never offers the GIL by itself; while the writer thread commits, a run of
    submits hands it over now and then, so the writer can report the commit without waiting a
    whole switch interval."""
    import time

    store = EmbeddedStore(tmp_path, tune_gc=False)
    await store.open()
    store.submit("create_subscriber", "c", {"id": "a"})
    store.submit("topup", "t", {"subscriber_id": "a", "unit": "octets", "amount": 10**9})
    await store.flush()
    offered: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (offered.append(s), real_sleep(s)))
    store.submit("debit", "d0", {"subscriber_id": "a", "unit": "octets", "units": 1})
    await asyncio.sleep(0)  # the commit of d0 starts: it is being written from here on
    assert store._committing
    for i in range(1, 1025):
        store.submit("debit", f"d{i}", {"subscriber_id": "a", "unit": "octets", "units": 1})
    idle = len(offered)
    await store.flush()
    await store.close()
    assert idle >= 1024 // 128 - 1  # once per 128 changes while the commit was in flight
