"""Store backends: the ledger made durable. The embedded store is the default."""

from quotaflow.store.base import Store, StoreUnavailable, wall_clock_ms
from quotaflow.store.embedded import EmbeddedStore

__all__ = ["EmbeddedStore", "Store", "StoreUnavailable", "wall_clock_ms"]
