"""What several store tests share."""

from __future__ import annotations

from quotaflow.store import EmbeddedStore


def crash(store: EmbeddedStore) -> None:
    """Stop as a killed process would: no closing snapshot, so the next open replays the
    journal. Call it once everything the test relies on was acknowledged (flushed)."""
    assert store._db is not None
    store._db.close()
    store._db = None
    if store._sweeper is not None:
        store._sweeper.cancel()
    store._writer.shutdown()
