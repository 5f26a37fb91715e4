"""Parsed requests to engine service requests, engine answers to ChargingDataResponse JSON.

No business rules: the engine sizes grants and decides what the balance pays; this module only
says it in TS 32.291 words, with every integer inside a signed 32-bit range (free5GC decodes
grants, thresholds and times into int32) and every timestamp with its time zone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from quotaflow.engine import ServiceAnswer, ServiceRequest, ServiceResult
from quotaflow.ledger import Unit
from quotaflow.nchf._config import NchfConfig
from quotaflow.nchf._wire import ChargingRequest, Units, UnitUsage

INT32_MAX = 2**31 - 1

# Where each unit goes in GrantedUnit, and which threshold attribute of MultipleUnitInformation.
_GRANT_FIELD = {
    Unit.OCTETS: "totalVolume",
    Unit.SECONDS: "time",
    Unit.EVENTS: "serviceSpecificUnits",
}
_THRESHOLD_FIELD = {
    Unit.OCTETS: "volumeQuotaThreshold",
    Unit.SECONDS: "timeQuotaThreshold",
    Unit.EVENTS: "unitQuotaThreshold",
}
_IMMEDIATE = "IMMEDIATE_REPORT"


# Not frozen, as the parsed request (_wire.Units), and an explicit __init__ (compiled; a
# dataclass-generated one runs interpreted): built per answer.
@dataclass(slots=True, init=False)
class Charged:
    """One rating group of a request with the engine's answer for it."""

    usage: UnitUsage
    unit: Unit
    offline: bool
    answer: ServiceAnswer

    def __init__(
        self,
        usage: UnitUsage,
        unit: Unit,
        offline: bool,
        answer: ServiceAnswer,
    ) -> None:
        self.usage = usage
        self.unit = unit
        self.offline = offline
        self.answer = answer


def _amount(units: Units, unit: Unit) -> int:
    if unit is Unit.OCTETS:
        return units.volume
    if unit is Unit.SECONDS:
        return units.time
    return units.service_specific


def is_offline(usage: UnitUsage, config: NchfConfig) -> bool:
    return usage.offline or usage.rating_group in config.offline_rating_groups


def service_requests(
    request: ChargingRequest, config: NchfConfig, *, final: bool = False
) -> list[ServiceRequest]:
    """One engine service request per multipleUnitUsage, in the same order."""
    services: list[ServiceRequest] = []
    for usage in request.usages:
        unit = config.unit_of(usage.rating_group)
        # A quota is asked for only online, only with a requestedUnit (free5GC sends an empty
        # one with offline usage too), and never on release.
        want = not final and usage.requested is not None and not is_offline(usage, config)
        requested = None
        if want and usage.requested is not None:
            # 0 (an empty requestedUnit) lets the engine size the grant; cap at what we can say.
            requested = min(_amount(usage.requested, unit), INT32_MAX) or None
        services.append(
            ServiceRequest(usage.rating_group, unit, _amount(usage.used, unit), requested, want)
        )
    return services


def charged(
    request: ChargingRequest, answers: list[ServiceAnswer], config: NchfConfig
) -> list[Charged]:
    assert len(answers) == len(request.usages), "one engine answer per rating group"
    result: list[Charged] = []
    for usage, answer in zip(request.usages, answers, strict=True):
        assert answer.rating_group == usage.rating_group
        result.append(Charged(usage, answer.unit, is_offline(usage, config), answer))
    return result


_last_second: tuple[int, str] = (-1, "")


def timestamp_now(now_ms: int | None = None) -> str:
    """Now in RFC 3339 with milliseconds (UTC). The date and time of day are formatted once per
    second: at thousands of answers a second, formatting each one cost ~2% of the loop."""
    global _last_second
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    second = ms // 1000
    if second != _last_second[0]:
        when = datetime.fromtimestamp(second, UTC)
        _last_second = (second, when.strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{_last_second[1]}.{ms % 1000:03d}Z"


def charging_data_response(
    sequence_number: int, groups: list[Charged], config: NchfConfig
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "invocationTimeStamp": timestamp_now(),
        "invocationSequenceNumber": sequence_number,
    }
    if groups:
        body["multipleUnitInformation"] = [unit_information(g, config) for g in groups]
    return body


def _i32(value: int) -> int:
    assert value >= 0, value
    return min(value, INT32_MAX)


def _trigger(kind: str) -> dict[str, str]:
    return {"triggerType": kind, "triggerCategory": _IMMEDIATE}


# Built once and shared by every answer: they are only ever serialised, never changed.
_QUOTA_EXHAUSTED = _trigger("QUOTA_EXHAUSTED")
_VALIDITY_TIME = _trigger("VALIDITY_TIME")
_QHT = _trigger("QHT")
_QUOTA_THRESHOLD = _trigger("QUOTA_THRESHOLD")


def unit_information(group: Charged, config: NchfConfig) -> dict[str, Any]:
    answer = group.answer
    info: dict[str, Any] = {"ratingGroup": group.usage.rating_group}
    if group.usage.upf_id is not None:
        info["uPFID"] = group.usage.upf_id
    result = answer.result
    if result is ServiceResult.REPORTED:
        info["resultCode"] = "SUCCESS"
        if group.offline:
            _offline_threshold(info, group.unit, config)
    elif result in (ServiceResult.GRANTED, ServiceResult.FINAL, ServiceResult.RETRY):
        # RETRY: nothing yet while the pool's credit is reclaimed; come back at validityTime.
        info["resultCode"] = "SUCCESS"
        _grant(info, group, config)
    else:
        denied = result is ServiceResult.BARRED
        info["resultCode"] = "END_USER_SERVICE_DENIED" if denied else "QUOTA_LIMIT_REACHED"
        # QUOTA_EXHAUSTED with no grant is how free5GC learns to set the quota to zero.
        info["triggers"] = [_QUOTA_EXHAUSTED]
    return info


def _grant(info: dict[str, Any], group: Charged, config: NchfConfig) -> None:
    answer = group.answer
    granted = _i32(answer.granted_units)
    info["grantedUnit"] = {_GRANT_FIELD[group.unit]: granted}
    info["validityTime"] = _i32(answer.validity_s)
    # free5GC installs an online grant only when QUOTA_EXHAUSTED is among the triggers.
    triggers = [_QUOTA_EXHAUSTED, _VALIDITY_TIME]
    if config.quota_holding_time_s:
        info["quotaHoldingTime"] = _i32(config.quota_holding_time_s)
        triggers.append(_QHT)
    if answer.final:
        info["finalUnitIndication"] = {"finalUnitAction": config.final_unit_action}
    else:
        threshold = granted * config.online_threshold_percent // 100
        if threshold:
            info[_THRESHOLD_FIELD[group.unit]] = threshold
            triggers.append(_QUOTA_THRESHOLD)
    info["triggers"] = triggers


def _offline_threshold(info: dict[str, Any], unit: Unit, config: NchfConfig) -> None:
    threshold = {
        Unit.OCTETS: config.offline_threshold_octets,
        Unit.SECONDS: config.offline_threshold_seconds,
        Unit.EVENTS: config.offline_threshold_events,
    }[unit]
    if threshold:
        info[_THRESHOLD_FIELD[unit]] = _i32(threshold)
        info["triggers"] = [_QUOTA_THRESHOLD]
