"""What is notified, and how a receiver knows it came from us (HMAC-SHA256 over the body)."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

EVENT_TYPES = frozenset(
    {
        "low_balance",  # a threshold's balance fell below its level
        "exhausted",  # ... reached zero
        "credit_restored",  # ... is back at or above its level after being low or exhausted
        "expiring",  # a bucket with credit left expires within the threshold's period
        "out_of_credit",  # a request was refused for lack of credit (once until credit returns)
        "credit_reallocated",  # credit is back for a subscriber that was out of credit
        "refused_requests",  # refusals for lack of credit passed the configured count
        "choice_offered",  # credit runs low with several sessions: pick the one to keep
        "choice_made",  # the answer: the other sessions are being ended
        "policy_counter",  # a member's policy counter changed status (pool-low, cap reached...)
    }
)
SIGNATURE_HEADER = "quotaflow-signature"
EVENT_ID_HEADER = "quotaflow-event-id"
ATTEMPT_HEADER = "quotaflow-delivery-attempt"
SIGNATURE_TOLERANCE_S = 300


@dataclass(frozen=True, slots=True)
class Notification:
    """One event for one subscriber. `sequence` counts up per subscriber (gaps: lost events)."""

    id: str
    type: str
    subscriber_id: str
    at_ms: int
    sequence: int
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.type in EVENT_TYPES, self.type

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "subscriber_id": self.subscriber_id,
            "at_ms": self.at_ms,
            "sequence": self.sequence,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Notification:
        return cls(
            doc["id"], doc["type"], doc["subscriber_id"], doc["at_ms"], doc["sequence"], doc["data"]
        )


def sign(secret: str, body: bytes, timestamp_ms: int) -> str:
    """The signature header: `t=<epoch ms>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.

    The timestamp is signed too, so a receiver can refuse a replay of an old delivery.
    """
    mac = hmac.new(secret.encode(), f"{timestamp_ms}.".encode() + body, hashlib.sha256)
    return f"t={timestamp_ms},v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    header: str,
    body: bytes,
    *,
    now_ms: int | None = None,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """For receivers: does `header` sign `body` with `secret`, within the time tolerance?"""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t, v1 = parts.get("t", ""), parts.get("v1", "")
    if not t.isdigit() or not v1:
        return False
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if abs(now - int(t)) > tolerance_s * 1000:
        return False
    expected = sign(secret, body, int(t)).split("v1=", 1)[1]
    return hmac.compare_digest(expected, v1)
