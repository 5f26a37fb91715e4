"""Engine answers to CCA AVPs (RFC 4006 8.16, TS 32.299 7.2.114), exactly to the grammar.

Every answer starts Session-Id, Result-Code, Origin-Host, Origin-Realm, then the request's
Auth-Application-Id, CC-Request-Type and CC-Request-Number: what freeDiameter insists on before
it relays a CCA. The request's Proxy-Info AVPs follow, in their order, for the proxies on the
way back (RFC 6733 6.2). AVPs are made with their dictionary definitions looked up once (this
runs for every request) and are never changed once made, so answers may share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from quotaflow.diameter.constants import (
    AVP_AUTH_APPLICATION_ID,
    AVP_CC_REQUEST_NUMBER,
    AVP_CC_REQUEST_TYPE,
    AVP_FLAG_MANDATORY,
    AVP_FLAG_VENDOR,
    AVP_PROXY_INFO,
    AVP_RESULT_CODE,
    AVP_SESSION_ID,
    FLAG_PROXIABLE,
    ResultCode,
    is_protocol_error,
)
from quotaflow.diameter.dictionary import AvpDef, AvpType, Dictionary
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_mapping import MICROS_EXPONENT, UINT32_MAX, ServiceAsk
from quotaflow.diameter.message import Avp, AvpValue, Message
from quotaflow.diameter.messages import make_answer
from quotaflow.engine import ServiceAnswer, ServiceResult
from quotaflow.ledger import Unit

GRANT_AVP: Final = {
    Unit.OCTETS: "CC-Total-Octets",
    Unit.SECONDS: "CC-Time",
    Unit.EVENTS: "CC-Service-Specific-Units",
}
THRESHOLD_AVP: Final = {
    Unit.OCTETS: "Volume-Quota-Threshold",
    Unit.SECONDS: "Time-Quota-Threshold",
    Unit.EVENTS: "Unit-Quota-Threshold",
}
# Enum members read once. From compiled code `ResultCode.SUCCESS` is an attribute lookup on
# the enum class, about 900 instructions each (callgrind): several per request. A module-level
# Final is a C global, and typed int it compares natively.
_SUCCESS: Final[int] = int(ResultCode.SUCCESS)
_DENIED: Final[int] = int(ResultCode.END_USER_SERVICE_DENIED)
_LIMIT_REACHED: Final[int] = int(ResultCode.CREDIT_LIMIT_REACHED)
_GRANTED: Final = ServiceResult.GRANTED
_FINAL: Final = ServiceResult.FINAL
_REPORTED: Final = ServiceResult.REPORTED
_RETRY: Final = ServiceResult.RETRY
_BARRED: Final = ServiceResult.BARRED
_NO_CREDIT: Final = ServiceResult.NO_CREDIT
# Request AVPs a CCA echoes (vendor 0 codes), in the answer's order.
ECHOED: Final = (AVP_AUTH_APPLICATION_ID, AVP_CC_REQUEST_TYPE, AVP_CC_REQUEST_NUMBER)


# Not frozen: one is made for every request and a frozen dataclass costs ~5x as much to
# construct (each field set through object.__setattr__). Never changed once made. An explicit
# __init__: mypyc compiles it, a dataclass-generated one runs interpreted.
@dataclass(slots=True, init=False)
class Echo:
    """What a CCA copies from its request: the Session-Id, then the ECHOED AVPs present and
    its Proxy-Info AVPs, in their order (RFC 6733 6.2)."""

    session: Avp | None
    echoed: list[Avp]

    def __init__(self, session: Avp | None, echoed: list[Avp]) -> None:
        self.session = session
        self.echoed = echoed


def echo_of(request: Message) -> Echo:
    session: Avp | None = None
    echoed: dict[int, Avp] = {}
    proxies: list[Avp] = []
    for avp in request.avps:
        if avp.vendor_id:
            continue
        if avp.code == AVP_SESSION_ID and session is None:
            session = avp
        elif avp.code in ECHOED and avp.code not in echoed:
            echoed[avp.code] = avp
        elif avp.code == AVP_PROXY_INFO:
            proxies.append(avp)
    return Echo(session, [*(echoed[code] for code in ECHOED if code in echoed), *proxies])


def result_code_of(answer: Message) -> int:
    """The top-level Result-Code (0 if none), found by code."""
    for avp in answer.avps:
        if avp.code == AVP_RESULT_CODE and not avp.vendor_id and isinstance(avp.value, int):
            return avp.value
    return 0


class AvpFactory:
    """AVPs by name, flags set as the dictionary says (the same as Message.add would)."""

    def __init__(self, dictionary: Dictionary, origin_host: str, origin_realm: str) -> None:
        self.dictionary = dictionary
        self._definitions: dict[str, tuple[AvpDef, int]] = {}
        self._result_codes: dict[int, Avp] = {}
        self.origin = (self("Origin-Host", origin_host), self("Origin-Realm", origin_realm))
        self.origin_host, self.origin_realm = origin_host, origin_realm

    def __call__(self, name: str, value: AvpValue) -> Avp:
        """`value` in its decoded form: an int (or an enumeration label), str, bytes, or the
        member AVPs of a Grouped AVP."""
        definition, flags = self.definition(name)
        if isinstance(value, str) and definition.type is AvpType.ENUMERATED:
            value = next(code for code, label in (definition.enum or {}).items() if label == value)
        return Avp(definition.code, value, definition.vendor_id, flags, definition)

    def definition(self, name: str) -> tuple[AvpDef, int]:
        """The dictionary entry named `name` and the AVP flags it sets."""
        known = self._definitions.get(name)
        if known is None:
            definition = self.dictionary.avp(name)
            flags = AVP_FLAG_MANDATORY if definition.sets_m_bit else 0
            if definition.vendor_id:
                flags |= AVP_FLAG_VENDOR
            known = self._definitions[name] = (definition, flags)
        return known

    def result_code(self, code: int) -> Avp:
        avp = self._result_codes.get(code)
        if avp is None:
            avp = self._result_codes[code] = self("Result-Code", code)
        return avp


def credit_control_answer(
    request: Message, result_code: int, avps: AvpFactory, echo: Echo | None = None
) -> Message:
    """The CCA skeleton (make_answer's, without its generic grammar walk). `echo` is what
    echo_of(request) returns, when the caller has it already."""
    if is_protocol_error(result_code):
        return make_answer(request, result_code, avps.origin_host, avps.origin_realm)
    if echo is None:
        echo = echo_of(request)
    head = [] if echo.session is None else [echo.session]
    head += [avps.result_code(result_code), *avps.origin, *echo.echoed]
    return Message(
        request.command_code,
        request.application_id,
        flags=request.flags & FLAG_PROXIABLE,
        hop_by_hop=request.hop_by_hop,
        end_to_end=request.end_to_end,
        avps=head,
        dictionary=request.dictionary,
    )


# ---------------------------------------------------------------------- per service


# Not frozen and an explicit __init__, as Echo above. Never changed once made.
@dataclass(slots=True, init=False)
class Outcome:
    """What one service of a CCR gets back."""

    ask: ServiceAsk
    result_code: int
    granted_units: int = 0
    validity_s: int | None = None
    final: bool = False  # carries a Final-Unit-Indication
    kept: bool = False  # no credit, but the session stays up, restricted
    starved: bool = False  # final units or no credit: a top-up should re-authorise it
    zero_grant: bool = False  # say "0 units" explicitly (a pool asks the session to wait)

    def __init__(
        self,
        ask: ServiceAsk,
        result_code: int,
        granted_units: int = 0,
        validity_s: int | None = None,
        final: bool = False,
        kept: bool = False,
        starved: bool = False,
        zero_grant: bool = False,
    ) -> None:
        self.ask = ask
        self.result_code = result_code
        self.granted_units = granted_units
        self.validity_s = validity_s
        self.final = final
        self.kept = kept
        self.starved = starved
        self.zero_grant = zero_grant


def outcome(ask: ServiceAsk, answer: ServiceAnswer, config: GyConfig) -> Outcome:
    result = answer.result
    if result is _GRANTED:
        return Outcome(ask, _SUCCESS, answer.granted_units, answer.validity_s)
    if result is _FINAL:
        return Outcome(
            ask,
            _SUCCESS,
            answer.granted_units,
            answer.validity_s,
            final=True,
            starved=True,
        )
    if result is _REPORTED:
        return Outcome(ask, _SUCCESS)
    if result is _RETRY:
        # A shared pool is reclaiming credit (or is spent): no units now, but not a refusal,
        # which Open5GS would treat as the end; Validity-Time brings the request back.
        return Outcome(ask, _SUCCESS, 0, answer.validity_s, starved=True, zero_grant=True)
    if result is _BARRED:
        return Outcome(ask, _DENIED)
    assert result is _NO_CREDIT, result
    return no_credit(ask, config)


def no_credit(ask: ServiceAsk, config: GyConfig) -> Outcome:
    """4012; with REDIRECT / RESTRICT_ACCESS the user stays restricted for a validity time."""
    if config.final_unit_action == "TERMINATE":
        return Outcome(ask, _LIMIT_REACHED, starved=True)
    return Outcome(
        ask,
        _LIMIT_REACHED,
        validity_s=config.restricted_validity_s,
        final=True,
        kept=True,
        starved=True,
    )


def command_result(outcomes: Sequence[Outcome]) -> int:
    """2001 when any service succeeded or is kept restricted (or there is none), else the
    first service's code: the client then ends the session."""
    for o in outcomes:  # a loop, not any(): this runs for every answer
        if o.result_code == _SUCCESS or o.kept:
            return _SUCCESS
    return outcomes[0].result_code if outcomes else _SUCCESS


def add_outcomes(
    answer: Message,
    outcomes: Sequence[Outcome],
    config: GyConfig,
    avps: AvpFactory,
    currency_code: int,
) -> None:
    """MSCCs for the services asked in MSCCs; top-level units for a single-service ask."""
    for o in outcomes:
        if o.ask.in_mscc:
            members = _mscc(o, config, avps, currency_code)
            answer.avps.append(avps("Multiple-Services-Credit-Control", members))
        else:
            answer.avps += _units(o, config, avps, currency_code, top_level=True)


def _mscc(o: Outcome, config: GyConfig, avps: AvpFactory, currency_code: int) -> list[Avp]:
    """Members in the order of the MSCC grammar."""
    members: list[Avp] = []
    if o.granted_units or o.zero_grant:
        members.append(granted_service_unit(o, avps, currency_code))
    members += o.ask.service_identifiers
    if o.ask.rating_group is not None:
        members.append(avps("Rating-Group", o.ask.rating_group))
    members += _units(o, config, avps, currency_code, top_level=False)
    return members


def _units(
    o: Outcome, config: GyConfig, avps: AvpFactory, currency_code: int, *, top_level: bool
) -> list[Avp]:
    members: list[Avp] = []
    if top_level and o.granted_units:
        members.append(granted_service_unit(o, avps, currency_code))
    if o.validity_s is not None:
        members.append(avps("Validity-Time", min(o.validity_s, UINT32_MAX)))
    if not top_level:
        members.append(avps.result_code(o.result_code))
    if o.final:
        members.append(avps("Final-Unit-Indication", final_unit_indication(config, avps)))
    threshold = THRESHOLD_AVP.get(o.ask.unit)
    percent = config.quota_threshold_percent
    if threshold and percent and o.granted_units and not o.final and not top_level:
        value = min(o.granted_units * percent // 100, UINT32_MAX)
        if value:
            members.append(avps(threshold, value))
    return members


def granted_service_unit(o: Outcome, avps: AvpFactory, currency_code: int) -> Avp:
    unit, units = o.ask.unit, o.granted_units
    if unit is Unit.MONEY:
        member = avps("CC-Money", money_value(units, currency_code, avps))
    else:
        if unit is Unit.SECONDS:
            units = min(units, UINT32_MAX)  # CC-Time is Unsigned32
        member = avps(GRANT_AVP[unit], units)
    return avps("Granted-Service-Unit", [member])


def final_unit_indication(config: GyConfig, avps: AvpFactory) -> list[Avp]:
    action = config.final_unit_action
    members = [avps("Final-Unit-Action", action)]
    if action == "RESTRICT_ACCESS":
        members += [avps("Restriction-Filter-Rule", r) for r in config.restriction_filter_rules]
        members += [avps("Filter-Id", filter_id) for filter_id in config.filter_ids]
    elif action == "REDIRECT":
        assert config.redirect_server_address is not None
        server = [
            avps("Redirect-Address-Type", config.redirect_address_type),
            avps("Redirect-Server-Address", config.redirect_server_address),
        ]
        members.append(avps("Redirect-Server", server))
    return members


def money_value(micros: int, currency_code: int, avps: AvpFactory) -> list[Avp]:
    """Unit-Value and Currency-Code (CC-Money, Cost-Information), trailing zeros folded into
    the exponent: 50,000 micro-units are 5 x 10^-2."""
    digits, exponent = micros, MICROS_EXPONENT
    while digits and digits % 10 == 0 and exponent < 0:
        digits //= 10
        exponent += 1
    if digits == 0:
        exponent = 0
    unit_value = [avps("Value-Digits", digits), avps("Exponent", exponent)]
    return [avps("Unit-Value", unit_value), avps("Currency-Code", currency_code)]
