"""Message builders shared by the Diameter tests."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

from quotaflow.diameter import (
    Avp,
    CcRequestType,
    Message,
    PeerConfig,
    build_ccr,
)
from quotaflow.diameter.constants import AVP_FLAG_MANDATORY
from quotaflow.diameter.messages import build_capabilities

CLIENT_HOST = "pgw.test.example"
CLIENT_REALM = "test.example"
SESSION_ID = "pgw.test.example;1;42"


def cer(origin_host: str = CLIENT_HOST, *, applications: tuple[int, ...] = (4,)) -> Message:
    return build_capabilities(
        request=None,
        result_code=None,
        origin_host=origin_host,
        origin_realm=CLIENT_REALM,
        host_ip_addresses=[ipaddress.IPv4Address("127.0.0.1")],
        vendor_id=10415,
        product_name="test-pgw",
        origin_state_id=7,
        auth_application_ids=applications,
    )


def set_m_bit_everywhere(avps: list[Avp]) -> None:
    """What the Open5GS SMF does to most AVPs: an unknown one must then be refused (5001)."""
    for avp in avps:
        avp.flags |= AVP_FLAG_MANDATORY
        if isinstance(avp.value, list):
            set_m_bit_everywhere(avp.value)


def open5gs_like_ccr(
    request_type: int = CcRequestType.INITIAL, request_number: int = 0, *, used_octets: int = 0
) -> Message:
    """A CCR shaped like the Open5GS SMF's: M bits on 3GPP AVPs, Requested-Action, no
    Rating-Group, Service-Information/PS-Information with QoS."""
    mscc: dict[str, object] = {"Requested-Service-Unit": {}}
    if used_octets:
        mscc["Used-Service-Unit"] = {
            "CC-Time": 60,
            "CC-Total-Octets": used_octets,
            "CC-Input-Octets": used_octets // 2,
            "CC-Output-Octets": used_octets - used_octets // 2,
            "Reporting-Reason": "QUOTA_EXHAUSTED",
        }
    if request_type == CcRequestType.TERMINATION:
        mscc = {"Used-Service-Unit": {"CC-Total-Octets": used_octets, "Reporting-Reason": "FINAL"}}
    ccr = build_ccr(
        session_id=SESSION_ID,
        origin_host=CLIENT_HOST,
        origin_realm=CLIENT_REALM,
        destination_realm=CLIENT_REALM,  # Open5GS puts its own realm here
        request_type=request_type,
        request_number=request_number,
        extra=[
            ("Destination-Host", "ocs.quotaflow.local"),
            ("Origin-State-Id", 7),
            ("Event-Timestamp", datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)),
            (
                "Subscription-Id",
                {"Subscription-Id-Type": "END_USER_E164", "Subscription-Id-Data": "33612345678"},
            ),
            (
                "Subscription-Id",
                {
                    "Subscription-Id-Type": "END_USER_IMSI",
                    "Subscription-Id-Data": "001010000000001",
                },
            ),
            ("Requested-Action", "DIRECT_DEBITING"),
            ("AoC-Request-Type", "AOC_NOT_REQUESTED"),
            ("Multiple-Services-Indicator", "MULTIPLE_SERVICES_SUPPORTED"),
            ("Multiple-Services-Credit-Control", mscc),
            (
                "User-Equipment-Info",
                {
                    "User-Equipment-Info-Type": "IMEISV",
                    "User-Equipment-Info-Value": b"3534900698733190",
                },
            ),
            (
                "Service-Information",
                {
                    "PS-Information": {
                        "3GPP-Charging-Id": 0x12345678,
                        "3GPP-PDP-Type": "IPv4",
                        "PDP-Address": ipaddress.IPv4Address("10.45.0.2"),
                        "SGSN-Address": ipaddress.IPv4Address("127.0.0.3"),
                        "GGSN-Address": ipaddress.IPv6Address("2001:db8::4"),
                        "Called-Station-Id": "internet",
                        "3GPP-Selection-Mode": "0",
                        "3GPP-Charging-Characteristics": "0800",
                        "3GPP-SGSN-MCC-MNC": "00101",
                        "3GPP-MS-TimeZone": b"\x40\x00",
                        "3GPP-User-Location-Info": bytes.fromhex("8200f110000100f1100000010a"),
                        "3GPP-RAT-Type": b"\x06",
                        "PDN-Connection-Charging-ID": 0x12345678,
                        "Node-Id": "smf",
                        "Charging-Rule-Base-Name": "default",
                        "QoS-Information": {
                            "QoS-Class-Identifier": 9,
                            "Max-Requested-Bandwidth-UL": 1_000_000,
                            "Max-Requested-Bandwidth-DL": 2_000_000,
                            "Allocation-Retention-Priority": {
                                "Priority-Level": 8,
                                "Pre-emption-Capability": 1,
                                "Pre-emption-Vulnerability": 1,
                            },
                            "APN-Aggregate-Max-Bitrate-UL": 1_000_000,
                            "APN-Aggregate-Max-Bitrate-DL": 2_000_000,
                        },
                    }
                },
            ),
        ],
    )
    set_m_bit_everywhere(ccr.avps)
    return ccr


def server_config(**overrides: object) -> PeerConfig:
    from quotaflow.diameter import AllowedPeer

    settings: dict[str, object] = {"allowed_peers": (AllowedPeer(CLIENT_HOST),)}
    settings.update(overrides)
    return PeerConfig(**settings)  # type: ignore[arg-type]
