"""Thresholds and notifications: webhooks signed with HMAC, retried, dead-lettered, in order.

Driven by engine events only; it never blocks a charging answer and never changes a balance
(the one action it takes is asking the engine to end sessions when a subscriber chooses).
"""

from quotaflow.notify._api import routes
from quotaflow.notify._delivery import DeliveryOptions, Dispatcher, Subscription
from quotaflow.notify._events import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPES,
    SIGNATURE_HEADER,
    Notification,
    sign,
    verify_signature,
)
from quotaflow.notify._service import NotifyOptions, NotifyService, start
from quotaflow.notify._thresholds import GroupResolver, Threshold

__all__ = [
    "ATTEMPT_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "DeliveryOptions",
    "Dispatcher",
    "GroupResolver",
    "Notification",
    "NotifyOptions",
    "NotifyService",
    "Subscription",
    "Threshold",
    "routes",
    "sign",
    "start",
    "verify_signature",
]
