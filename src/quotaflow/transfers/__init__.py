"""Moving quota between people: transfers and gifts (`/v1/transfers`).

The ledger does the moving (ledger/transfers.py); this package is the API to it.
"""

from quotaflow.transfers.api import TransferApi

__all__ = ["TransferApi"]
