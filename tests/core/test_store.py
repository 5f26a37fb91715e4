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
