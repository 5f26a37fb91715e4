"""ChargingDataRequest JSON to plain data, checking only what the CHF uses.

Strict where a wrong value would charge wrongly (rating groups, units, sequence numbers), lenient
where real consumers stray harmlessly from the schema (free5GC: `nFName` "SMF" instead of a UUID,
no `localSequenceNumber`, an empty `requestedUnit` on offline usage). A refusal names the
offending attribute as a JSON pointer, as TS 29.500 asks of `invalidParams`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from quotaflow.nchf._errors import WireError

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

# TS 29.500 clause 5.2.7.2 causes for a malformed request, all answered with 400.
INVALID_MSG_FORMAT = "INVALID_MSG_FORMAT"
MANDATORY_IE_MISSING = "MANDATORY_IE_MISSING"
MANDATORY_IE_INCORRECT = "MANDATORY_IE_INCORRECT"
OPTIONAL_IE_INCORRECT = "OPTIONAL_IE_INCORRECT"
# TS 32.291 table 6.1.7.3-1: information the CHF needs for charging is erroneous.
CHARGING_FAILED = "CHARGING_FAILED"

# RFC 3339 date-time; the offset may be missing (read as UTC) since that strays harmlessly.
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
)
_IDENTITY_PREFIXES = ("imsi-", "nai-", "msisdn-")
# Each unit attribute with its largest value (Uint32 for time, Uint64 for the others).
_UNIT_FIELDS = (
    ("time", UINT32_MAX),
    ("totalVolume", UINT64_MAX),
    ("uplinkVolume", UINT64_MAX),
    ("downlinkVolume", UINT64_MAX),
    ("serviceSpecificUnits", UINT64_MAX),
)


# Parsed per request and never changed afterwards, but not frozen: a frozen dataclass is built
# field by field through object.__setattr__, about 5x the cost (~1.8 us against 0.4 here). And
# explicit constructors here and below: mypyc compiles them, a dataclass-generated one runs
# interpreted.
@dataclass(slots=True, init=False)
class Units:
    """One RequestedUnit or the sum of a group's UsedUnitContainers (absent fields are 0)."""

    time: int = 0
    total_volume: int = 0
    uplink_volume: int = 0
    downlink_volume: int = 0
    service_specific: int = 0

    def __init__(
        self,
        time: int = 0,
        total_volume: int = 0,
        uplink_volume: int = 0,
        downlink_volume: int = 0,
        service_specific: int = 0,
    ) -> None:
        self.time = time
        self.total_volume = total_volume
        self.uplink_volume = uplink_volume
        self.downlink_volume = downlink_volume
        self.service_specific = service_specific

    @property
    def volume(self) -> int:
        # totalVolume when sent; otherwise the two directions add up to it.
        return self.total_volume or self.uplink_volume + self.downlink_volume


_NO_UNITS = Units()


@dataclass(slots=True, init=False)
class UnitUsage:
    """One multipleUnitUsage entry."""

    rating_group: int
    requested: Units | None  # None: no requestedUnit, so no quota is asked for
    used: Units
    offline: bool  # a usedUnitContainer said OFFLINE_CHARGING
    upf_id: str | None  # echoed in the answer: free5GC matches grants to its UPF by it

    def __init__(
        self,
        rating_group: int,
        requested: Units | None,
        used: Units,
        offline: bool,
        upf_id: str | None,
    ) -> None:
        self.rating_group = rating_group
        self.requested = requested
        self.used = used
        self.offline = offline
        self.upf_id = upf_id


@dataclass(slots=True, init=False)
class ChargingRequest:
    sequence_number: int
    supi: str | None
    gpsi: str | None
    notify_uri: str | None
    consumer: str  # nodeFunctionality, e.g. "SMF"
    usages: tuple[UnitUsage, ...]

    def __init__(
        self,
        sequence_number: int,
        supi: str | None,
        gpsi: str | None,
        notify_uri: str | None,
        consumer: str,
        usages: tuple[UnitUsage, ...],
    ) -> None:
        self.sequence_number = sequence_number
        self.supi = supi
        self.gpsi = gpsi
        self.notify_uri = notify_uri
        self.consumer = consumer
        self.usages = usages


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise WireError(INVALID_MSG_FORMAT, "/", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(INVALID_MSG_FORMAT, "/", "body must be a JSON object")
    return doc


def parse_request(doc: dict[str, Any], *, units_max: int) -> ChargingRequest:
    """A ChargingDataRequest as create, update and release all carry it."""
    consumer = _object(doc, "nfConsumerIdentification", "", mandatory=True)
    assert consumer is not None
    node = consumer.get("nodeFunctionality")
    if not isinstance(node, str):
        raise _bad("/nfConsumerIdentification/nodeFunctionality", node, "a string", True)
    stamp = doc.get("invocationTimeStamp")
    if not isinstance(stamp, str) or not _valid_date_time(stamp):
        raise _bad("/invocationTimeStamp", stamp, "an RFC 3339 date-time", True)
    number = _uint(doc, "invocationSequenceNumber", "", UINT32_MAX, mandatory=True)
    assert number is not None
    return ChargingRequest(
        sequence_number=number,
        supi=_identity(doc.get("subscriberIdentifier"), "/subscriberIdentifier"),
        gpsi=_served_gpsi(doc),
        notify_uri=_notify_uri(doc.get("notifyUri")),
        consumer=node,
        usages=_usages(doc.get("multipleUnitUsage"), units_max),
    )


# ---------------------------------------------------------------------- pieces


def _usages(value: Any, units_max: int) -> tuple[UnitUsage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad("/multipleUnitUsage", value, "an array", False)
    if len(value) > units_max:
        raise WireError(
            CHARGING_FAILED, "/multipleUnitUsage", f"at most {units_max} rating groups per request"
        )
    usages: list[UnitUsage] = []
    seen: set[int] = set()
    for i, item in enumerate(value):
        where = f"/multipleUnitUsage/{i}"
        if not isinstance(item, dict):
            raise _bad(where, item, "an object", False)
        usage = _usage(item, where)
        if usage.rating_group in seen:
            # The engine keys reservations by rating group: two entries cannot both be charged.
            raise WireError(CHARGING_FAILED, f"{where}/ratingGroup", "rating group appears twice")
        seen.add(usage.rating_group)
        usages.append(usage)
    return tuple(usages)


def _usage(item: dict[str, Any], where: str) -> UnitUsage:
    rating_group = _uint(item, "ratingGroup", where, UINT32_MAX, mandatory=True)
    assert rating_group is not None
    requested_doc = _object(item, "requestedUnit", where, mandatory=False)
    requested = None if requested_doc is None else _units(requested_doc, f"{where}/requestedUnit")
    containers = item.get("usedUnitContainer")
    if containers is not None and not isinstance(containers, list):
        raise _bad(f"{where}/usedUnitContainer", containers, "an array", False)
    used = _NO_UNITS
    offline = False
    for j, container in enumerate(containers or ()):
        at = f"{where}/usedUnitContainer/{j}"
        if not isinstance(container, dict):
            raise _bad(at, container, "an object", False)
        units = _units(container, at)
        used = units if used is _NO_UNITS else _add(used, units)
        indicator = container.get("quotaManagementIndicator")
        if indicator is not None and not isinstance(indicator, str):
            raise _bad(f"{at}/quotaManagementIndicator", indicator, "a string", False)
        offline = offline or indicator == "OFFLINE_CHARGING"
    upf_id = item.get("uPFID")
    if upf_id is not None and not isinstance(upf_id, str):
        raise _bad(f"{where}/uPFID", upf_id, "a string", False)
    return UnitUsage(rating_group, requested, used, offline, upf_id)


def _units(doc: dict[str, Any], where: str) -> Units:
    if not doc:  # an empty requestedUnit: the common case of online charging
        return _NO_UNITS
    values: list[int] = []
    for name, top in _UNIT_FIELDS:
        value = doc.get(name)
        if value is None:
            values.append(0)
        # type() rather than isinstance: JSON true/false are bools, which are ints too.
        elif type(value) is int and 0 <= value <= top:
            values.append(value)
        else:
            raise _bad(f"{where}/{name}", value, f"an integer in [0, {top}]", False)
    return Units(*values)


def _add(a: Units, b: Units) -> Units:
    return Units(
        a.time + b.time,
        a.total_volume + b.total_volume,
        a.uplink_volume + b.uplink_volume,
        a.downlink_volume + b.downlink_volume,
        a.service_specific + b.service_specific,
    )


def _served_gpsi(doc: dict[str, Any]) -> str | None:
    info = _object(doc, "pDUSessionChargingInformation", "", mandatory=False)
    user = (
        None
        if info is None
        else _object(info, "userInformation", "/pDUSessionChargingInformation", mandatory=False)
    )
    if user is None:
        return None
    return _identity(
        user.get("servedGPSI"), "/pDUSessionChargingInformation/userInformation/servedGPSI"
    )


def _identity(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(where, value, "a string", False)
    return value


def resolvable(identity: str) -> bool:
    """A SUPI or GPSI form subscribers are provisioned with; gci-, gli-, extid- are not."""
    return identity.startswith(_IDENTITY_PREFIXES)


def _notify_uri(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise _bad("/notifyUri", value, "an http or https URI", False)
    return value


def _valid_date_time(value: str) -> bool:
    if _DATE_TIME.match(value) is None:
        return False
    try:
        datetime.fromisoformat(value)  # Python 3.11 takes "Z" and 1-9 fraction digits as is
    except ValueError:
        try:
            datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:  # e.g. month 13
            return False
    return True


def _object(
    doc: dict[str, Any], name: str, where: str, *, mandatory: bool
) -> dict[str, Any] | None:
    value = doc.get(name)
    if value is None:
        if mandatory:
            raise WireError(MANDATORY_IE_MISSING, f"{where}/{name}", "is required")
        return None
    if not isinstance(value, dict):
        raise _bad(f"{where}/{name}", value, "an object", mandatory)
    return value


def _uint(doc: dict[str, Any], name: str, where: str, top: int, *, mandatory: bool) -> int | None:
    value = doc.get(name)
    if value is None:
        if mandatory:
            raise WireError(MANDATORY_IE_MISSING, f"{where}/{name}", "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise _bad(f"{where}/{name}", value, f"an integer in [0, {top}]", mandatory)
    return value


def _bad(param: str, value: Any, wanted: str, mandatory: bool) -> WireError:
    cause = MANDATORY_IE_INCORRECT if mandatory else OPTIONAL_IE_INCORRECT
    if value is None:
        return WireError(MANDATORY_IE_MISSING if mandatory else cause, param, "is required")
    return WireError(cause, param, f"must be {wanted}")
