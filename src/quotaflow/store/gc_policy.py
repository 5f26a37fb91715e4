"""How the server uses CPython's cyclic garbage collector while a store is open.

The ledger's state is millions of long-lived objects without reference cycles, and each charge
leaves some behind (its operation id's first answer, a reservation, a cached answer). CPython's
collector rescans them again and again. With the earlier policy (young threshold 50,000 and a
freeze every 200,000 journal records), a Gy server at 10k CCR/s paused 8-50 ms per young pass
and 310 ms in one middle pass, and those pauses were its p99.

Now young passes run every YOUNG_THRESHOLD net allocations (about a millisecond each), a middle
pass follows every third young pass, and whatever survives a middle pass is frozen
(`gc.freeze`: moved to the permanent generation, never scanned again). Garbage without cycles is
still freed at once by reference counting, and a cycle that dies within its first three young
passes is collected as before. The cost: a cycle that dies later than that is never collected.
Measured with `tests/core/test_gc_policy.py` (management API, Gy, Nchf with ChargingNotify,
refusals; a server in its own process): nothing left behind. Freezing after every young pass
instead also left nothing there and gave a lower p99 (21-24 ms against 31 ms at 4 x 32 in
flight), but gives a cycle only one young pass to die; this is the safer of the two.
`quotaflow_gc_frozen_objects` shows the permanent generation's size, which should follow the
ledger's; `quotaflow_gc_pause_seconds` each pass.

The callback runs in whichever thread allocated, under the GIL.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

YOUNG_THRESHOLD = 10_000
MIDDLE_EVERY_YOUNG = 2  # gc's threshold is exceeded, not reached: every third young pass
THRESHOLDS = (YOUNG_THRESHOLD, MIDDLE_EVERY_YOUNG, 100)

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None
_started = 0.0
# Seconds of each collection, by generation; the metrics module reads them.
observers: list[Callable[[int, float], None]] = []


def _callback(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
        return
    if info["generation"] > 0:
        gc.freeze()  # what survived a middle pass is settled state: never scan it again
    if observers:
        took = time.perf_counter() - _started
        for observe in observers:
            observe(int(info["generation"]), took)


def engage() -> None:
    """Apply the policy (nested: each engage needs its release)."""
    global _users, _saved
    with _lock:
        _users += 1
        if _users > 1:
            return
        _saved = gc.get_threshold()
        gc.set_threshold(*THRESHOLDS)
        gc.collect()
        gc.freeze()
        gc.callbacks.append(_callback)


def release() -> None:
    """Undo `engage` once the last user is gone; what was frozen stays frozen."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users:
            return
        if _callback in gc.callbacks:
            gc.callbacks.remove(_callback)
        if _saved is not None:
            gc.set_threshold(*_saved)


def engaged() -> bool:
    return _users > 0
