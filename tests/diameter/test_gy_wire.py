"""The CCA written straight to bytes (gy_wire) against the generic path (Avp objects, codec)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotaflow.diameter import Message, default_dictionary
from quotaflow.diameter.codec import encode_message
from quotaflow.diameter.constants import (
    APPLICATION_CREDIT_CONTROL,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    CommandCode,
    ResultCode,
)
from quotaflow.diameter.gy_answer import (
    AvpFactory,
    Echo,
    Outcome,
    add_outcomes,
    command_result,
    credit_control_answer,
)
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_mapping import ServiceAsk
from quotaflow.diameter.gy_wire import AnswerWriter
from quotaflow.diameter.validate import parse_message
from quotaflow.ledger import Unit

AVPS = AvpFactory(default_dictionary(), "ocs.quotaflow.test", "quotaflow.test")
WRITER = AnswerWriter(AVPS)
CONFIGS = (
    GyConfig(),
    GyConfig(quota_threshold_percent=0),
    GyConfig(quota_threshold_percent=99),
    GyConfig(
        final_unit_action="REDIRECT",
        redirect_address_type="URL",
        redirect_server_address="http://topup.example/",
    ),
    GyConfig(
        final_unit_action="RESTRICT_ACCESS",
        restriction_filter_rules=("permit out ip from any to 10.0.0.1",),
        filter_ids=("topup-only",),
    ),
)
CODES = (
    ResultCode.SUCCESS,
    ResultCode.CREDIT_LIMIT_REACHED,
    ResultCode.END_USER_SERVICE_DENIED,
    4011,
    5030,
    5031,
)
U32 = st.integers(0, 2**32 - 1)


def request(echo: Echo) -> Message:
    message = Message(
        CommandCode.CREDIT_CONTROL,
        APPLICATION_CREDIT_CONTROL,
        flags=FLAG_REQUEST | FLAG_PROXIABLE,
        hop_by_hop=7,
        end_to_end=9,
    )
    message.avps = ([] if echo.session is None else [echo.session]) + echo.echoed
    return message


@st.composite
def echoes(draw: st.DrawFn) -> Echo:
    """A request's Session-Id and echoed AVPs, with the flags a peer may have set on them
    (echoed as received) and any value of their types (the writer packs them in one call),
    and any Proxy-Info."""
    session = AVPS("Session-Id", draw(st.text(min_size=1, max_size=80)))
    kind = AVPS("CC-Request-Type", draw(st.integers(1, 4) | st.integers(-(2**31), 2**31 - 1)))
    number = AVPS("CC-Request-Number", draw(U32))
    echoed = [kind, number]
    if draw(st.booleans()):
        echoed.insert(0, AVPS("Auth-Application-Id", draw(st.just(4) | U32)))
    for avp in echoed:
        avp.flags = draw(st.sampled_from([avp.flags, 0, 0x20, 0x60]))
    for state in draw(st.lists(st.binary(max_size=20), max_size=2)):  # came through proxies
        echoed.append(
            AVPS("Proxy-Info", [AVPS("Proxy-Host", "p.test"), AVPS("Proxy-State", state)])
        )
    return Echo(session, echoed)


@st.composite
def outcomes(draw: st.DrawFn, in_mscc: st.SearchStrategy[bool]) -> Outcome:
    unit = draw(st.sampled_from([Unit.OCTETS, Unit.SECONDS, Unit.EVENTS, Unit.MONEY]))
    service_ids = tuple(AVPS("Service-Identifier", v) for v in draw(st.lists(U32, max_size=2)))
    ask = ServiceAsk(
        draw(st.none() | U32),
        unit,
        None,
        0,
        True,
        draw(in_mscc),
        service_identifiers=service_ids,
    )
    return Outcome(
        ask,
        draw(st.sampled_from(CODES)),
        granted_units=draw(st.sampled_from([0, 1, 99]) | st.integers(0, 2**64 - 1)),
        validity_s=draw(st.none() | st.integers(0, 2**40)),
        final=draw(st.booleans()),
        kept=draw(st.booleans()),
        starved=draw(st.booleans()),
        zero_grant=draw(st.booleans()),
    )


def generic(echo: Echo, code: int, services: list[Outcome], config: GyConfig) -> bytes:
    """The answer as the generic path builds and encodes it."""
    answer = credit_control_answer(request(echo), code, AVPS, echo)
    add_outcomes(answer, services, config, AVPS, 978)
    return encode_message(answer)[20:]


def covered(o: Outcome) -> bool:
    """What the writer writes: services in an MSCC, not granted money."""
    granted = bool(o.granted_units or o.zero_grant)
    return o.ask.in_mscc and not (granted and o.ask.unit is Unit.MONEY)


@settings(max_examples=400, deadline=None)
@given(
    echo=echoes(),
    services=st.lists(outcomes(st.booleans() | st.just(True)), max_size=3),
    config=st.sampled_from(CONFIGS),
)
def test_the_written_answer_is_the_generic_answer_byte_for_byte(
    echo: Echo, services: list[Outcome], config: GyConfig
) -> None:
    code = command_result(services)
    body = WRITER.body(echo, code, services, config)
    if all(covered(o) for o in services):
        assert body is not None
        assert body == generic(echo, code, services, config)
    else:
        assert body is None  # the generic path answers


def test_a_written_answer_passes_the_cca_grammar() -> None:
    echo = Echo(
        AVPS("Session-Id", "pgw;1;2"),
        [
            AVPS("Auth-Application-Id", 4),
            AVPS("CC-Request-Type", 2),
            AVPS("CC-Request-Number", 3),
        ],
    )
    ask = ServiceAsk(10, Unit.OCTETS, None, 5, True, True)
    services = [Outcome(ask, ResultCode.SUCCESS, 1_000_000, 3600)]
    body = WRITER.body(echo, ResultCode.SUCCESS, services, GyConfig())
    assert body is not None
    answer = credit_control_answer(request(echo), ResultCode.SUCCESS, AVPS, echo)
    answer.avps_wire = body
    decoded = parse_message(encode_message(answer), default_dictionary())
    assert decoded.get("Multiple-Services-Credit-Control/Granted-Service-Unit/CC-Total-Octets") == (
        1_000_000
    )
    assert decoded.get("Multiple-Services-Credit-Control/Volume-Quota-Threshold") == 200_000
    assert decoded.get("Multiple-Services-Credit-Control/Result-Code") == ResultCode.SUCCESS
    assert [a.name for a in decoded.avps][:4] == [
        "Session-Id",
        "Result-Code",
        "Origin-Host",
        "Origin-Realm",
    ]


def test_a_value_out_of_range_is_left_to_the_generic_path_and_its_error() -> None:
    echo = Echo(AVPS("Session-Id", "s"), [AVPS("CC-Request-Type", 2), AVPS("CC-Request-Number", 1)])
    ask = ServiceAsk(10, Unit.OCTETS, None, 0, True, True)
    services = [Outcome(ask, ResultCode.SUCCESS, 2**64, 60)]
    assert WRITER.body(echo, ResultCode.SUCCESS, services, GyConfig()) is None
    with pytest.raises(ValueError, match="does not fit"):
        generic(echo, ResultCode.SUCCESS, services, GyConfig())
