"""Settings of the Diameter Gy application. Every default is stated and why.

`GyConfig.of(cfg)` takes the server Config's `diameter_gy` when it has one, else the
module-level DEFAULT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quotaflow.ledger import Unit

FINAL_UNIT_ACTIONS = ("TERMINATE", "REDIRECT", "RESTRICT_ACCESS")
REDIRECT_ADDRESS_TYPES = ("IPV4_ADDRESS", "IPV6_ADDRESS", "URL", "SIP_URI")


@dataclass(frozen=True, slots=True)
class GyConfig:
    # Final-Unit-Action sent with the last units the balance can pay. REDIRECT needs
    # redirect_server_address; RESTRICT_ACCESS sends restriction_filter_rules and filter_ids.
    # With REDIRECT or RESTRICT_ACCESS a session without credit is kept, restricted, for
    # restricted_validity_s (MSCC Result-Code 4012, command 2001); with TERMINATE it is refused.
    final_unit_action: str = "TERMINATE"
    redirect_address_type: str = "URL"
    redirect_server_address: str | None = None
    restriction_filter_rules: tuple[str, ...] = ()
    filter_ids: tuple[str, ...] = ()
    restricted_validity_s: int = 300
    # Ask for a report when this share of a grant is left (Volume/Time/Unit-Quota-Threshold);
    # 0 sends none. Open5GS honours it; it only adds reports, never removes any.
    quota_threshold_percent: int = 20
    # The unit a rating group is charged in when the request names none (an empty
    # Requested-Service-Unit, as Open5GS sends): rating_group_units, then the unit the tariff
    # gives the group, then default_unit.
    default_unit: Unit = Unit.OCTETS
    rating_group_units: Mapping[int, Unit] = field(default_factory=dict)
    # Rating groups not under credit control (free): answered 4011, never charged.
    free_rating_groups: frozenset[int] = frozenset()
    # Rating groups quotaflow can rate; None rates every group. Others are answered 5031.
    rated_rating_groups: frozenset[int] | None = None
    # ISO 4217 numeric code of the operator's one currency, for CC-Money and Cost-Information;
    # None takes the tariff's currency (see gy_mapping.ISO_4217). CC-Money in another currency
    # is answered 5031.
    currency_code: int | None = None
    # First answers kept for retransmissions (T flag): this many settled ones, for this long;
    # one still being charged is kept until it is settled (gy_retransmit._evict). Past that
    # a copy is still charged once and answered from the first ledger result, once durable
    # (without what a second try, a reclaim or a provider, added). 4,096: at tens of
    # thousands of CCR/s no size covers a Tx timeout, and 32,768 (13 MB of answers cycled
    # through the processor's caches) cost the Gy server about 3% of its rate (bench_diameter
    # at 4 x 32, four alternating rounds: 47.2k against 48.7k CCR/s; 2,048 gave 49.2k).
    answers_kept_max: int = 4_096
    answers_kept_s: float = 60.0
    # RAR / ASR: how long to wait for the RAA / ASA, and how many may be in flight (more are
    # dropped and logged: Validity-Time brings the client back anyway).
    notify_timeout_s: float = 5.0
    notify_in_flight_max: int = 1_000
    # Sessions whose last answer is remembered as starved (final units or no credit), so a
    # top-up re-authorises only those; the oldest are forgotten first (then re-authorised).
    tracked_sessions_max: int = 1_000_000
    # End the sessions of a directly connected client whose CER brings a new Origin-State-Id
    # (it restarted and lost them: gy_restart.py); at most tracked_sessions_max are followed.
    release_on_peer_restart: bool = True

    def __post_init__(self) -> None:
        if self.final_unit_action not in FINAL_UNIT_ACTIONS:
            raise ValueError(f"final_unit_action must be one of {FINAL_UNIT_ACTIONS}")
        if self.final_unit_action == "REDIRECT" and not self.redirect_server_address:
            raise ValueError("final_unit_action REDIRECT needs redirect_server_address")
        if self.redirect_address_type not in REDIRECT_ADDRESS_TYPES:
            raise ValueError(f"redirect_address_type must be one of {REDIRECT_ADDRESS_TYPES}")
        if not 0 <= self.quota_threshold_percent < 100:
            raise ValueError("quota_threshold_percent must be in [0, 100)")
        if not 0 < self.restricted_validity_s < 2**32:
            raise ValueError("restricted_validity_s must be a positive 32-bit integer")
        if self.currency_code is not None and not 0 < self.currency_code < 1000:
            raise ValueError("currency_code must be an ISO 4217 numeric code")
        if self.answers_kept_max < 1 or self.answers_kept_s <= 0:
            raise ValueError("answers_kept_max and answers_kept_s must be positive")
        if self.notify_in_flight_max < 1 or self.notify_timeout_s <= 0:
            raise ValueError("notify_in_flight_max and notify_timeout_s must be positive")
        if self.tracked_sessions_max < 1:
            raise ValueError("tracked_sessions_max must be positive")
        if type(self.release_on_peer_restart) is not bool:
            raise ValueError("release_on_peer_restart must be true or false")

    @staticmethod
    def of(cfg: object) -> GyConfig:
        """The server Config's `diameter_gy` if it has one, else DEFAULT."""
        found = getattr(cfg, "diameter_gy", None)
        return found if isinstance(found, GyConfig) else DEFAULT


# What start_gy runs with until the server Config carries a `diameter_gy` (module-level so a
# deployment or a test can replace it before the server starts).
DEFAULT = GyConfig()
