"""The charging engine: sessions, grant sizing, event charging, administration."""

from quotaflow.engine.engine import SESSION_EVENTS, Engine, split_identity
from quotaflow.engine.grants import GrantPolicy, UnitGrantLimits
from quotaflow.engine.types import (
    DebitAnswer,
    EngineEvent,
    ServiceAnswer,
    ServiceRequest,
    ServiceResult,
    SessionAnswer,
)

__all__ = [
    "SESSION_EVENTS",
    "DebitAnswer",
    "Engine",
    "EngineEvent",
    "GrantPolicy",
    "ServiceAnswer",
    "ServiceRequest",
    "ServiceResult",
    "SessionAnswer",
    "UnitGrantLimits",
    "split_identity",
]
