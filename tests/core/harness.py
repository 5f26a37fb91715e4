"""What several store tests share."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from quotaflow.store import EmbeddedStore
from quotaflow.store.base import Clock, wall_clock_ms


def crash(store: EmbeddedStore) -> None:
    """Stop as a killed process would: no closing snapshot, so the next open replays the
    journal. Call it once everything the test relies on was acknowledged (flushed)."""
    assert store._db is not None
    store._writer.shutdown()  # a snapshot being stored finishes first: it uses a connection
    store._close_syncer()
    store._db.close()
    store._db = None
    if store._aux is not None:
        store._aux.close()
        store._aux = None
    if store._sweeper is not None:
        store._sweeper.cancel()
    if store._checkpointer is not None:  # a killed process's threads are gone too
        store._checkpointer.stop()
        store._checkpointer = None
    if store._snapshot_child is not None:
        # Killed with it, as a process group is: a child just forked still holds the folder's
        # lock (shared with the server until it closes its descriptors), which could refuse
        # the next open.
        pid = store._snapshot_child[0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        store._snapshot_child = None
    store.release_folder()  # a killed process's lock goes with it


@asynccontextmanager
async def recovered(
    store: EmbeddedStore, clock: Clock = wall_clock_ms
) -> AsyncIterator[EmbeddedStore]:
    """Crash `store`, open its data directory again, and check the recovered state is the
    state it had; yields the reopened store and closes it afterwards."""
    expected = store.ledger.snapshot()
    crash(store)
    again = EmbeddedStore(store.data_dir, clock=clock, sweep_interval_s=3600, limits=store.limits)
    await again.open()
    try:
        assert again.ledger.snapshot() == expected
        yield again
    finally:
        await again.close()
