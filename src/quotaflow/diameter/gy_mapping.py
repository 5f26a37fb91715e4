"""CCR AVPs to engine service requests (RFC 4006, TS 32.299), engine errors to Result-Codes.

No business rules here: the engine sizes grants and decides what the balance pays; this module
only reads what the network asks in credit-control words (gy_answer says the answer). Pure
functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from quotaflow.diameter.constants import ResultCode
from quotaflow.diameter.errors import ForeignCurrency, GyRequestError
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.message import Avp, Message
from quotaflow.engine import ServiceRequest
from quotaflow.ledger import (
    ChargingError,
    Conflict,
    InvalidAmount,
    InvalidRequest,
    LimitReached,
    NoCredit,
    SubscriberBarred,
    Unit,
    UnknownSession,
    UnknownSubscriber,
)

UINT32_MAX: Final = 2**32 - 1
UNITS_KEPT_MAX: Final = 4_096  # rating groups whose unit a Reading remembers
# |Exponent| of a CC-Money Unit-Value; beyond it the value is refused
MONEY_EXPONENT_MAX: Final = 18
MICROS_EXPONENT: Final = -6  # money is held in micro-units of the currency

# Subscription-Id-Type (RFC 4006 8.47) to the ledger's identity kinds.
IDENTITY_KINDS: Final = {0: "msisdn", 1: "imsi", 2: "sip_uri", 3: "nai"}
# ISO 4217 numeric codes of the tariff's currency (Currency-Code, RFC 4006 8.11).
ISO_4217 = {
    "AUD": 36, "BRL": 986, "CAD": 124, "CHF": 756, "CNY": 156, "CZK": 203, "DKK": 208,
    "EUR": 978, "GBP": 826, "HUF": 348, "INR": 356, "JPY": 392, "NOK": 578, "NZD": 554,
    "PLN": 985, "RON": 946, "SEK": 752, "USD": 840, "ZAR": 710,
}  # fmt: skip

# When a request names several units, the one charged (after the rating group's own unit).
_UNIT_ORDER: Final = (Unit.OCTETS, Unit.SECONDS, Unit.EVENTS, Unit.MONEY)
# RFC 4006 AVP codes (vendor 0) read on every request: matched by code, not by name.
_CC_INPUT_OCTETS: Final = 412
_CC_MONEY: Final = 413
_CC_OUTPUT_OCTETS: Final = 414
_CC_SERVICE_SPECIFIC_UNITS: Final = 417
_CC_TIME: Final = 420
_CC_TOTAL_OCTETS: Final = 421
_RATING_GROUP: Final = 432
_RSU: Final = 437
_SERVICE_IDENTIFIER: Final = 439
_USU: Final = 446
_MSCC: Final = 456

# Engine errors to Result-Code, most specific class first. StoreUnavailable (code
# "store_unavailable") becomes 3004 TOO_BUSY so that a client may fail over to another server.
_ERROR_CODES: Final[tuple[tuple[type[ChargingError], int], ...]] = (
    (UnknownSubscriber, ResultCode.USER_UNKNOWN),
    (SubscriberBarred, ResultCode.END_USER_SERVICE_DENIED),
    (NoCredit, ResultCode.CREDIT_LIMIT_REACHED),
    (UnknownSession, ResultCode.UNKNOWN_SESSION_ID),
    (InvalidAmount, ResultCode.INVALID_AVP_VALUE),
    (InvalidRequest, ResultCode.INVALID_AVP_VALUE),
    (LimitReached, ResultCode.RESOURCES_EXCEEDED),
    (Conflict, ResultCode.UNABLE_TO_COMPLY),
)


def result_code_for(exc: ChargingError) -> int:
    if exc.code == "store_unavailable":
        return ResultCode.TOO_BUSY
    for kind, code in _ERROR_CODES:
        if isinstance(exc, kind):
            return code
    return ResultCode.UNABLE_TO_COMPLY


# ---------------------------------------------------------------------- requests


# Not frozen: one is made for every request and a frozen dataclass costs ~5x as much to
# construct (each field set through object.__setattr__). Never changed once made. An explicit
# __init__: mypyc compiles it, a dataclass-generated one runs interpreted.
@dataclass(slots=True, init=False)
class ServiceAsk:
    """One service of a CCR: an MSCC, or the top-level units of a single-service request."""

    rating_group: int | None
    unit: Unit
    requested_units: int | None  # None: the OCS sizes the grant
    used_units: int
    wants_grant: bool
    in_mscc: bool
    service_identifiers: tuple[Avp, ...] = ()
    refusal: int | None = None  # decided without the engine: 4011 (free) or 5031 (not rated)
    used_input_octets: int | None = None  # for the charging record, when reported apart
    used_output_octets: int | None = None

    def __init__(
        self,
        rating_group: int | None,
        unit: Unit,
        requested_units: int | None,
        used_units: int,
        wants_grant: bool,
        in_mscc: bool,
        service_identifiers: tuple[Avp, ...] = (),
        refusal: int | None = None,
        used_input_octets: int | None = None,
        used_output_octets: int | None = None,
    ) -> None:
        self.rating_group = rating_group
        self.unit = unit
        self.requested_units = requested_units
        self.used_units = used_units
        self.wants_grant = wants_grant
        self.in_mscc = in_mscc
        self.service_identifiers = service_identifiers
        self.refusal = refusal
        self.used_input_octets = used_input_octets
        self.used_output_octets = used_output_octets

    def engine_request(self) -> ServiceRequest:
        return ServiceRequest(
            self.rating_group,
            self.unit,
            self.used_units,
            self.requested_units,
            self.wants_grant,
            self.used_input_octets,
            self.used_output_octets,
        )


class Reading:
    """What reading a CCR needs besides the settings: the unit a rating group is charged in
    when the request names none, and the currency. Made again when the tariff changes."""

    def __init__(
        self, config: GyConfig, unit_of: Callable[[int | None], Unit], currency_code: int
    ) -> None:
        self.config = config
        self.unit_of = unit_of
        self.currency_code = currency_code
        # Read for every service of every request: here compiled code reads fields, where
        # GyConfig, an interpreted dataclass, is read by attribute name.
        self.free_rating_groups = config.free_rating_groups
        self.rated_rating_groups = config.rated_rating_groups
        self._units: dict[int | None, Unit] = {}

    def unit(self, rating_group: int | None) -> Unit:
        """unit_of, remembered per rating group (its answer depends on the settings and the
        tariff only); at most UNITS_KEPT_MAX groups, since the network names them."""
        unit = self._units.get(rating_group)
        if unit is None:
            unit = self.unit_of(rating_group)
            if len(self._units) < UNITS_KEPT_MAX:
                self._units[rating_group] = unit
        return unit


def service_asks(request: Message, reading: Reading, *, initial: bool) -> list[ServiceAsk]:
    """One ask per Multiple-Services-Credit-Control, in order; without any MSCC, one ask from
    the top-level Requested-/Used-Service-Unit (RFC 4006 single-service mode)."""
    msccs = [a for a in request.avps if a.code == _MSCC and not a.vendor_id]
    if msccs:
        return [_ask(mscc.children, reading, initial=initial, in_mscc=True) for mscc in msccs]
    return [_ask(request.avps, reading, initial=initial, in_mscc=False)]


def _ask(avps: list[Avp], reading: Reading, *, initial: bool, in_mscc: bool) -> ServiceAsk:
    rating_group: int | None = None
    rsu: Avp | None = None
    usus: list[Avp] = []
    identifiers: list[Avp] = []
    for avp in avps:  # one pass by code: this runs for every service of every request
        if avp.vendor_id:
            continue
        code = avp.code
        if code == _USU:
            usus.append(avp)
        elif code == _RSU:
            rsu = avp
        elif in_mscc and code == _RATING_GROUP and isinstance(avp.value, int):
            rating_group = avp.value
        elif in_mscc and code == _SERVICE_IDENTIFIER:
            identifiers.append(avp)
    refusal: int | None = None
    rated = reading.rated_rating_groups
    if rating_group in reading.free_rating_groups:
        refusal = ResultCode.CREDIT_CONTROL_NOT_APPLICABLE
    elif rated is not None and rating_group not in rated:
        refusal = ResultCode.RATING_FAILED
    used_in: int | None = None
    used_out: int | None = None
    try:
        requested = None if rsu is None else _amounts(rsu, reading.currency_code)[0]
        used: dict[Unit, int] = {}
        for usu in usus:
            amounts, input_octets, output_octets = _amounts(usu, reading.currency_code)
            if not used:
                used = amounts  # the usual single report: a fresh dict of its own
            else:
                for unit, amount in amounts.items():
                    used[unit] = used.get(unit, 0) + amount
            if input_octets is not None:
                used_in = (used_in or 0) + input_octets
            if output_octets is not None:
                used_out = (used_out or 0) + output_octets
    except ForeignCurrency:
        requested, used, refusal = None, {}, ResultCode.RATING_FAILED
        used_in = used_out = None
    unit = choose_unit(requested, used, reading.unit(rating_group))
    octets = unit is Unit.OCTETS
    return ServiceAsk(
        rating_group,
        unit,
        (requested or {}).get(unit) or None,
        used.get(unit, 0),
        rsu is not None or initial,
        in_mscc,
        tuple(identifiers),
        refusal,
        used_in if octets else None,
        used_out if octets else None,
    )


def choose_unit(requested: dict[Unit, int] | None, used: dict[Unit, int], preferred: Unit) -> Unit:
    """The unit the request names (Requested-Service-Unit first, then Used-Service-Unit),
    the rating group's own unit when it names several or none."""
    for named in (requested, used):
        if named:
            if preferred in named:
                return preferred
            return min(named, key=_UNIT_ORDER.index)
    return preferred


def unit_amounts(group: Avp, currency_code: int) -> dict[Unit, int]:
    """The amounts a Requested-/Used-Service-Unit names, in engine units. CC-Input-Octets plus
    CC-Output-Octets count only when CC-Total-Octets is absent."""
    return _amounts(group, currency_code)[0]


def _amounts(group: Avp, currency_code: int) -> tuple[dict[Unit, int], int | None, int | None]:
    """unit_amounts, and the octets each way when reported apart."""
    found: dict[Unit, int] = {}
    total = input_octets = output_octets = None
    for avp in group.children:  # each at most once: the grammar was checked on receipt
        value = avp.value
        if avp.vendor_id or not isinstance(value, int | list):
            continue
        code = avp.code
        if code == _CC_TOTAL_OCTETS and isinstance(value, int):
            total = value
        elif code == _CC_INPUT_OCTETS and isinstance(value, int):
            input_octets = value
        elif code == _CC_OUTPUT_OCTETS and isinstance(value, int):
            output_octets = value
        elif code == _CC_TIME and isinstance(value, int):
            found[Unit.SECONDS] = value
        elif code == _CC_SERVICE_SPECIFIC_UNITS and isinstance(value, int):
            found[Unit.EVENTS] = value
        elif code == _CC_MONEY:
            found[Unit.MONEY] = money_micros(avp, currency_code)
    if total is not None:
        found[Unit.OCTETS] = total
    elif input_octets is not None or output_octets is not None:
        found[Unit.OCTETS] = (input_octets or 0) + (output_octets or 0)
    return found, input_octets, output_octets


def money_micros(money: Avp, currency_code: int) -> int:
    """A CC-Money amount in micro-units, rounded down (never charge more than was said)."""
    currency = money.get("Currency-Code")
    if currency is not None and currency != currency_code:
        raise ForeignCurrency
    digits = money.get("Unit-Value/Value-Digits")
    exponent = money.get("Unit-Value/Exponent", 0)
    if not isinstance(digits, int) or not isinstance(exponent, int):
        raise GyRequestError(ResultCode.INVALID_AVP_VALUE, "CC-Money without a value", money)
    if digits < 0 or abs(exponent) > MONEY_EXPONENT_MAX:
        raise GyRequestError(ResultCode.INVALID_AVP_VALUE, "CC-Money out of range", money)
    shift = exponent - MICROS_EXPONENT
    scale: int = 10 ** abs(shift)
    return digits * scale if shift >= 0 else digits // scale


def identities(request: Message) -> Iterator[tuple[str, str]]:
    """(ledger identity kind, value) of each Subscription-Id this server understands."""
    for subscription in request.find_all("Subscription-Id"):
        kind = IDENTITY_KINDS.get(_int(subscription.get("Subscription-Id-Type")))
        data = subscription.get("Subscription-Id-Data")
        if kind is not None and isinstance(data, str) and data:
            yield kind, data


def _int(value: object) -> int:
    return value if isinstance(value, int) else -1
