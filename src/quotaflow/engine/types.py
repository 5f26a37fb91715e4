"""What interfaces hand to the engine and get back. No wire format appears here."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from quotaflow.ledger import Unit


class ServiceResult(StrEnum):
    """Per rating group outcome; each interface maps it to its own codes."""

    GRANTED = "granted"  # a grant, more may follow
    FINAL = "final"  # the last units the balance can pay: final unit indication
    NO_CREDIT = "no_credit"  # nothing could be granted
    REPORTED = "reported"  # usage posted, no grant was asked for
    BARRED = "barred"
    RETRY = "retry"  # nothing now (credit is being reclaimed); ask again after the validity


@dataclass(frozen=True, slots=True)
class ServiceRequest:
    rating_group: int | None
    unit: Unit = Unit.OCTETS
    used_units: int = 0
    # None: the OCS sizes the grant itself; a number is the network's wish, an upper bound.
    requested_units: int | None = None
    want_grant: bool = True
    # Octets each way, for the charging record, when the network reports them apart.
    used_input_octets: int | None = None
    used_output_octets: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceAnswer:
    rating_group: int | None
    unit: Unit
    result: ServiceResult
    granted_units: int
    validity_s: int
    posted_units: int
    unpaid_units: int = 0

    @property
    def final(self) -> bool:
        return self.result is ServiceResult.FINAL


@dataclass(frozen=True, slots=True)
class SessionAnswer:
    session_id: str
    subscriber_id: str
    services: list[ServiceAnswer]


@dataclass(frozen=True, slots=True)
class DebitAnswer:
    subscriber_id: str
    unit: Unit
    units: int
    cost_micros: int
    drawn: dict[str, int]


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """Something interfaces may act on: re-authorise sessions after a top-up, abort when barred."""

    # "credit_added", "barred", "abort", "reauthorize" (interfaces act on these: re-auth or
    # abort the `sessions` given),
    # "balance_changed", "no_credit" (for thresholds and notifications; `detail` says more)
    kind: str
    subscriber_id: str
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
