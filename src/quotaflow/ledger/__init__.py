"""The ledger: subscribers, buckets and two-phase reservations; the only place balances change."""

from quotaflow.ledger._base import AMOUNT_MAX, Limits, price_doc
from quotaflow.ledger.errors import (
    ChargingError,
    Conflict,
    InvalidAmount,
    InvalidRequest,
    LimitReached,
    NoCredit,
    NotFound,
    SubscriberBarred,
    UnknownSession,
    UnknownSubscriber,
)
from quotaflow.ledger.ledger import Ledger
from quotaflow.ledger.model import (
    NEVER_MS,
    Bucket,
    Origin,
    Price,
    Reservation,
    Status,
    Subscriber,
    Unit,
)

__all__ = [
    "AMOUNT_MAX",
    "NEVER_MS",
    "Bucket",
    "ChargingError",
    "Conflict",
    "InvalidAmount",
    "InvalidRequest",
    "Ledger",
    "LimitReached",
    "Limits",
    "NoCredit",
    "NotFound",
    "Origin",
    "Price",
    "Reservation",
    "Status",
    "Subscriber",
    "SubscriberBarred",
    "Unit",
    "UnknownSession",
    "UnknownSubscriber",
    "price_doc",
]
