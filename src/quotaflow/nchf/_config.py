"""Settings of the Nchf_ConvergedCharging interface. Every default is stated and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from quotaflow.ledger import Unit

BASE_PATH = "/nchf-convergedcharging/v3"


@dataclass(frozen=True, slots=True)
class NchfConfig:
    # Absolute API root for Location headers, e.g. "http://chf.example:8080"; None derives it
    # from the request's scheme and :authority (Host) and the mount point.
    api_root: str | None = None
    # Rating groups charged offline only: usage is rated and recorded, never refused, no quota.
    # A usedUnitContainer with quotaManagementIndicator OFFLINE_CHARGING makes any group offline.
    offline_rating_groups: frozenset[int] = frozenset()
    # The unit each rating group is charged in; a group not listed is charged in octets.
    rating_group_units: dict[int, Unit] = field(default_factory=dict)
    # Online: ask for a report when this share of a grant is left (volume/time/unitQuotaThreshold
    # with a QUOTA_THRESHOLD trigger); 0 sends no threshold.
    online_threshold_percent: int = 20
    # Offline: report usage every so many units (free5GC keeps reporting offline usage only when
    # QUOTA_THRESHOLD comes with a non-zero volumeQuotaThreshold).
    offline_threshold_octets: int = 10_000_000
    offline_threshold_seconds: int = 600
    offline_threshold_events: int = 100
    # Idle time after which the consumer should give unused online quota back (0: not sent).
    quota_holding_time_s: int = 300
    # Final-Unit-Action sent with the last units the balance can pay.
    final_unit_action: str = "TERMINATE"
    # Limits: a request body above this is refused with 413; at most this many rating groups
    # per request (the engine's own ceiling is 64).
    body_bytes_max: int = 256 * 1024
    units_per_request_max: int = 64
    # ChargingNotify: HTTP/2 with prior knowledge as the SBI does; a timeout per POST; a bound
    # on notifications in flight (more are dropped and logged, never queued without limit).
    notify_http2: bool = True
    notify_timeout_s: float = 2.0
    notify_in_flight_max: int = 1_000
    # Sessions whose rating groups are remembered for re-authorisation details; the oldest
    # entries are forgotten first (a forgotten session is re-authorised as a whole).
    tracked_sessions_max: int = 1_000_000
    # Keys the ChargingDataRef digest; set it per deployment so refs are not guessable.
    ref_key: bytes = b"quotaflow-nchf-v3"

    def __post_init__(self) -> None:
        if not 0 <= self.online_threshold_percent < 100:
            raise ValueError("online_threshold_percent must be in [0, 100)")
        if self.units_per_request_max < 1 or self.body_bytes_max < 1024:
            raise ValueError("units_per_request_max >= 1 and body_bytes_max >= 1024 required")
        # REDIRECT would need a redirect server address, which this interface does not configure.
        if self.final_unit_action not in ("TERMINATE", "RESTRICT_ACCESS"):
            raise ValueError("final_unit_action must be TERMINATE or RESTRICT_ACCESS")
        if Unit.MONEY in self.rating_group_units.values():
            raise ValueError("rating groups are charged in octets, seconds or events")
        if not 0 < len(self.ref_key) <= 64:
            raise ValueError("ref_key must be 1..64 bytes")

    def unit_of(self, rating_group: int) -> Unit:
        return self.rating_group_units.get(rating_group, Unit.OCTETS)
