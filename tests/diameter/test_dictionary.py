"""The dictionary is self-consistent and agrees with Wireshark's (Debian package tshark)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from quotaflow.diameter import AvpType, default_dictionary
from quotaflow.diameter.dictionary import parse_grammar

WIRESHARK_DIR = Path("/usr/share/wireshark/diameter")

DICT = default_dictionary()

# Wireshark type names that are the same wire format as ours.
_SAME_FORMAT = {
    AvpType.ADDRESS: {"IPAddress"},
    AvpType.UNSIGNED32: {"Unsigned32", "VendorId", "AppId"},
    AvpType.OCTET_STRING: {"OctetString", "OctetStringOrUTF8"},
    AvpType.UTF8_STRING: {"UTF8String", "OctetStringOrUTF8"},
    AvpType.IP_FILTER_RULE: {"IPFilterRule"},
}

# (code, vendor) -> why we differ from Wireshark on purpose.
ALLOWED_DIFFERENCES: dict[tuple[int, int], str] = {
    (50, 0): "RFC 6733 9.8.5 and RFC 4006 say Acct-Multi-Session-Id; Wireshark spells it out",
    (268, 0): "Result-Code is Unsigned32 (RFC 6733); Wireshark uses Enumerated for value names",
    (298, 0): "Experimental-Result-Code is Unsigned32 (RFC 6733); Wireshark: Enumerated",
    (299, 0): "Inband-Security-Id is Unsigned32 (RFC 6733); Wireshark: Enumerated",
    (270, 0): "Session-Binding is an Unsigned32 bit mask (RFC 6733); Wireshark: Enumerated",
    (291, 0): "Authorization-Lifetime is Unsigned32 (RFC 6733 8.9); Wireshark: Integer32",
    (2, 10415): "3GPP-Charging-Id is Unsigned32 on Diameter (TS 29.061 16.4.7); "
    "Wireshark allows the RADIUS text form",
    (872, 10415): "TS 32.299 names it Reporting-Reason; Wireshark prefixes 3GPP-",
    (1028, 10415): "QoS-Class-Identifier: same Enumerated, we keep the value set open",
    (2039, 10415): "Diagnostics is Integer32 (TS 32.299 7.2.44); Wireshark: Enumerated",
    (3421, 10415): "CN-Operator-Selection-Entity: same code and type, Wireshark's enum labels",
}


def test_every_name_used_in_a_grammar_is_defined() -> None:
    assert DICT.unresolved_names() == []


def test_grammar_shorthand() -> None:
    grammar = parse_grammar(
        "<Session-Id> {Origin-Host} 1*{Host-IP-Address} *[Proxy-Info] 0*1[X] *[AVP]"
    )
    rules = {r.name: (r.min_count, r.max_count) for r in grammar.rules}
    assert rules == {
        "Session-Id": (1, 1),
        "Origin-Host": (1, 1),
        "Host-IP-Address": (1, None),
        "Proxy-Info": (0, None),
        "X": (0, 1),
    }
    assert grammar.open
    with pytest.raises(AssertionError):
        parse_grammar("{Origin-Host} garbage")


@pytest.mark.parametrize(
    "name",
    [
        # What the Open5GS SMF sends with the M bit: every one must be known (else 5001).
        "Service-Information",
        "PS-Information",
        "QoS-Information",
        "Reporting-Reason",
        "AoC-Request-Type",
        "Event-Timestamp",
        "Requested-Action",
        "Called-Station-Id",
        "User-Equipment-Info",
        "3GPP-Charging-Id",
        "3GPP-RAT-Type",
        "3GPP-SGSN-MCC-MNC",
        "3GPP-User-Location-Info",
        "3GPP-MS-TimeZone",
        "3GPP-PDP-Type",
        "Charging-Rule-Base-Name",
        "PDN-Connection-Charging-ID",
        "Node-Id",
        "SGSN-Address",
        "GGSN-Address",
        "PDP-Address",
        "Trigger",
        "Trigger-Type",
        "Time-Quota-Threshold",
        "Volume-Quota-Threshold",
        "Allocation-Retention-Priority",
        "APN-Aggregate-Max-Bitrate-UL",
        "3GPP-Selection-Mode",
        "3GPP-Charging-Characteristics",
        "Multiple-Services-Indicator",
        "Termination-Cause",
        "Cost-Information",
        "Check-Balance-Result",
        "Final-Unit-Indication",
        "Redirect-Server",
        "Restriction-Filter-Rule",
        "CC-Money",
        "Re-Auth-Request-Type",
    ],
)
def test_ro_essentials_are_present(name: str) -> None:
    assert name in DICT.by_name


def _wireshark_avps() -> dict[tuple[int, int], list[tuple[str, str]]]:
    """(code, vendor) -> [(name, type)] over every Wireshark dictionary file."""
    files = sorted(WIRESHARK_DIR.glob("*.xml"))
    if not files:
        pytest.fail("Wireshark's diameter dictionary is missing: apt-get install tshark")
    vendors: dict[str, int] = {"None": 0}
    entries: list[tuple[str, int, str, str]] = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        # Files are XML fragments pulled in through DTD entities: strip and wrap them.
        text = re.sub(r"<\?xml[^>]*\?>", "", text)
        text = re.sub(r"<!DOCTYPE.*?\]>", "", text, flags=re.S)
        text = re.sub(r"&\w+;", "", text)
        root = ET.fromstring(f"<root>{text}</root>")
        for vendor in root.iter("vendor"):
            vendors[vendor.get("vendor-id", "")] = int(vendor.get("code", "0"))
        for avp in root.iter("avp"):
            type_node = avp.find("type")
            avp_type = type_node.get("type-name", "?") if type_node is not None else "Grouped"
            entries.append(
                (
                    avp.get("name", ""),
                    int(avp.get("code", "0")),
                    avp.get("vendor-id", "None"),
                    avp_type,
                )
            )
    table: dict[tuple[int, int], list[tuple[str, str]]] = {}
    for name, code, vendor, avp_type in entries:
        table.setdefault((code, vendors[vendor]), []).append((name, avp_type))
    return table


def test_dictionary_agrees_with_wireshark() -> None:
    wireshark = _wireshark_avps()
    problems: list[str] = []
    compared = 0
    for key, definition in sorted(DICT.avps.items()):
        candidates = wireshark.get(key)
        if candidates is None or key in ALLOWED_DIFFERENCES:
            continue
        compared += 1
        formats = _SAME_FORMAT.get(definition.type, {definition.type.value})
        if not any(n == definition.name and t in formats for n, t in candidates):
            problems.append(
                f"{definition.name} {key} {definition.type.value}: Wireshark {candidates}"
            )
    assert not problems, "\n".join(problems)
    assert compared > 200, "too few AVPs compared: is the Wireshark dictionary complete?"


def test_allowlist_entries_are_still_needed() -> None:
    wireshark = _wireshark_avps()
    for key in ALLOWED_DIFFERENCES:
        assert key in DICT.avps, key
        assert key in wireshark, key
