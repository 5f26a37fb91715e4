"""Typed ledger and engine errors, so every interface can map them to its own protocol's codes."""

from __future__ import annotations


class ChargingError(Exception):
    """Base class. `code` is a stable machine-readable reason used by every interface."""

    code = "charging_error"

    def __init__(self, message: str, **detail: object) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class UnknownSubscriber(ChargingError):
    code = "unknown_subscriber"


class SubscriberBarred(ChargingError):
    code = "subscriber_barred"


class NoCredit(ChargingError):
    code = "no_credit"


class InvalidAmount(ChargingError):
    code = "invalid_amount"


class InvalidRequest(ChargingError):
    code = "invalid_request"


class Conflict(ChargingError):
    """The same operation id was used before with different content, or an id is taken."""

    code = "conflict"


class NotFound(ChargingError):
    code = "not_found"


class UnknownSession(ChargingError):
    code = "unknown_session"


class LimitReached(ChargingError):
    code = "limit_reached"
