"""Shared balances: group API, policy counters for a PCF, and their status notifications.

The allocation policies themselves are in engine/pools.py and the ledger's group accounts in
ledger/; this package is what operators and policy functions talk to.
"""

from quotaflow.groups.api import GroupApi
from quotaflow.groups.watch import CounterWatch

__all__ = ["CounterWatch", "GroupApi"]
