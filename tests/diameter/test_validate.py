"""Each validation failure maps to the right Result-Code with the right Failed-AVP."""

from __future__ import annotations

import struct

import pytest

from quotaflow.diameter import (
    Avp,
    CcRequestType,
    DiameterError,
    FramingError,
    Message,
    ResultCode,
    default_dictionary,
    parse_message,
)

from .helpers import cer, open5gs_like_ccr

DICT = default_dictionary()


def _ccr() -> Message:
    return open5gs_like_ccr(CcRequestType.UPDATE, 1, used_octets=100)


def _raw(code: int, payload: bytes, *, vendor_id: int = 0, flags: int = 0x40) -> Avp:
    return Avp(code, payload, vendor_id, flags | (0x80 if vendor_id else 0))


def _replace(msg: Message, name: str, raw: Avp) -> Message:
    index = next(i for i, a in enumerate(msg.avps) if a.name == name)
    msg.avps[index] = raw
    return msg


def _error(data: bytes) -> DiameterError:
    with pytest.raises(DiameterError) as caught:
        parse_message(data)
    return caught.value


def test_valid_open5gs_like_ccr_passes() -> None:
    assert parse_message(_ccr().encode()).name == "CCR"


def test_unknown_mandatory_avp_is_5001_with_the_avp() -> None:
    msg = _ccr()
    unknown = _raw(4242, b"\x00\x00\x00\x01", vendor_id=10415)
    msg.avps.append(unknown)
    error = _error(msg.encode())
    assert error.result_code == ResultCode.AVP_UNSUPPORTED
    assert error.failed_avps == [unknown]
    assert not error.is_protocol_error


# Vendor-0 codes the dictionary lacks: a gap in the decoder's table by code, the first past
# its end, and far past it (looked up in its second table).
@pytest.mark.parametrize("code", [300, 486, 5000, 70_000])
def test_an_unknown_base_avp_is_5001_with_the_m_bit_and_kept_raw_without(code: int) -> None:
    msg = _ccr()
    unknown = _raw(code, b"\x00\x00\x00\x01")
    msg.avps.append(unknown)
    error = _error(msg.encode())
    assert error.result_code == ResultCode.AVP_UNSUPPORTED
    assert error.failed_avps == [unknown]
    msg.avps[-1] = _raw(code, b"abcd", flags=0)
    kept = parse_message(msg.encode()).avps[-1]
    assert (kept.code, kept.vendor_id, kept.value, kept.definition) == (code, 0, b"abcd", None)


def test_unknown_mandatory_avp_inside_grouped_is_wrapped() -> None:
    msg = _ccr()
    mscc = msg.find("Multiple-Services-Credit-Control")
    assert mscc is not None
    unknown = _raw(4242, b"abcd", vendor_id=99)
    mscc.children.append(unknown)
    error = _error(msg.encode())
    assert error.result_code == 5001
    [outer] = error.failed_avps
    assert outer.code == 456 and outer.value == [unknown]


def test_unknown_avp_without_m_bit_is_ignored() -> None:
    msg = _ccr()
    msg.avps.append(_raw(4242, b"abcd", vendor_id=99, flags=0))
    assert parse_message(msg.encode()).avps[-1].definition is None


def test_bad_enum_is_5004() -> None:
    bad = _raw(416, struct.pack(">i", 9))
    error = _error(_replace(_ccr(), "CC-Request-Type", bad).encode())
    assert error.result_code == ResultCode.INVALID_AVP_VALUE
    assert error.failed_avps == [bad]


def test_open_3gpp_enum_accepts_new_values() -> None:
    msg = _ccr()
    msg.set("AoC-Request-Type", 77)
    assert parse_message(msg.encode()).get("AoC-Request-Type") == 77


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("Session-Id", b"\xff\xfe bad utf-8"),
        ("Origin-Host", b""),  # empty DiameterIdentity
    ],
)
def test_bad_strings_are_5004(name: str, payload: bytes) -> None:
    definition = DICT.avp(name)
    bad = _raw(definition.code, payload)
    error = _error(_replace(_ccr(), name, bad).encode())
    assert error.result_code == ResultCode.INVALID_AVP_VALUE
    assert error.failed_avps == [bad]


def test_bad_address_inside_grouped_is_5004() -> None:
    msg = _ccr()
    ps = msg.find("Service-Information/PS-Information")
    assert ps is not None
    bad = _raw(1228, b"\x00\x01\x0a\x00\x00", vendor_id=10415)  # IPv4 with 3 octets
    ps.children.append(bad)
    error = _error(msg.encode())
    assert error.result_code == 5004
    [service_information] = error.failed_avps
    [ps_information] = service_information.children
    assert ps_information.code == 874 and ps_information.value == [bad]


def test_wrong_size_for_fixed_type_is_5014() -> None:
    bad = _raw(415, b"\x00\x00\x00\x00\x01")  # CC-Request-Number with 5 octets
    error = _error(_replace(_ccr(), "CC-Request-Number", bad).encode())
    assert error.result_code == ResultCode.INVALID_AVP_LENGTH
    assert error.failed_avps == [bad]


def test_avp_length_past_the_message_is_5014_with_zero_payload() -> None:
    data = bytearray(_ccr().encode())
    # The last top-level AVP is Service-Information; make its length overrun the frame.
    offset = 20
    while True:
        length = struct.unpack_from(">I", data, offset + 4)[0] & 0xFFFFFF
        if offset + ((length + 3) & ~3) >= len(data):
            break
        offset += (length + 3) & ~3
    struct.pack_into(">I", data, offset + 4, (0xC0 << 24) | 0xFFFF)
    error = _error(bytes(data))
    assert error.result_code == ResultCode.INVALID_AVP_LENGTH
    [failed] = error.failed_avps
    assert (failed.code, failed.vendor_id, failed.value) == (873, 10415, b"")


def test_truncated_avp_header_is_5014() -> None:
    msg = Message(272, 4, flags=0xC0)
    frame = msg.encode() + b"\x00\x00\x01\x07"
    frame = struct.pack(">I", (1 << 24) | len(frame)) + frame[4:]
    assert _error(frame).result_code == ResultCode.INVALID_AVP_LENGTH


def test_missing_avp_is_5005_with_zeroed_example() -> None:
    msg = _ccr()
    msg.avps = [a for a in msg.avps if a.name != "CC-Request-Number"]
    error = _error(msg.encode())
    assert error.result_code == ResultCode.MISSING_AVP
    assert error.failed_avps == [Avp(415, b"\0\0\0\0", 0, 0x40)]


def test_missing_avp_inside_grouped_is_wrapped() -> None:
    msg = _ccr()
    subscription = msg.find("Subscription-Id")
    assert subscription is not None
    subscription.value = [a for a in subscription.children if a.name != "Subscription-Id-Data"]
    error = _error(msg.encode())
    assert error.result_code == 5005
    [outer] = error.failed_avps
    assert outer.code == 443
    assert outer.value == [Avp(444, b"", 0, 0x40)]


def test_avp_too_many_times_is_5009_with_the_extra_one() -> None:
    msg = _ccr()
    extra = msg.build("CC-Request-Type", 2)
    msg.avps.append(extra)
    error = _error(msg.encode())
    assert error.result_code == ResultCode.AVP_OCCURS_TOO_MANY_TIMES
    assert error.failed_avps == [extra]


def _with_header(
    data: bytes,
    *,
    flags: int | None = None,
    app: int | None = None,
    code: int | None = None,
    version: int | None = None,
) -> bytes:
    frame = bytearray(data)
    if flags is not None:
        frame[4] = flags
    if code is not None:
        frame[5:8] = code.to_bytes(3, "big")
    if app is not None:
        frame[8:12] = app.to_bytes(4, "big")
    if version is not None:
        frame[0] = version
    return bytes(frame)


def test_e_bit_on_request_is_3008() -> None:
    error = _error(_with_header(_ccr().encode(), flags=0xE0))
    assert error.result_code == ResultCode.INVALID_HDR_BITS
    assert error.is_protocol_error


def test_p_bit_on_cer_is_3008() -> None:
    error = _error(_with_header(cer().encode(), flags=0xC0))
    assert error.result_code == ResultCode.INVALID_HDR_BITS


def test_reserved_header_bits_are_5013() -> None:
    error = _error(_with_header(_ccr().encode(), flags=0xC1))
    assert error.result_code == ResultCode.INVALID_BIT_IN_HEADER


def test_unknown_application_is_3007() -> None:
    error = _error(_with_header(_ccr().encode(), app=16777238))
    assert error.result_code == ResultCode.APPLICATION_UNSUPPORTED
    assert error.header is not None and error.header.application_id == 16777238


def test_unknown_command_is_3001() -> None:
    error = _error(_with_header(_ccr().encode(), code=275))
    assert error.result_code == ResultCode.COMMAND_UNSUPPORTED


def test_wrong_version_is_5011_framing() -> None:
    with pytest.raises(FramingError) as caught:
        parse_message(_with_header(_ccr().encode(), version=2))
    assert caught.value.result_code == ResultCode.UNSUPPORTED_VERSION


def test_length_not_multiple_of_four_is_5015() -> None:
    data = _ccr().encode() + b"\0\0"
    data = struct.pack(">I", (1 << 24) | len(data)) + data[4:]
    assert _error(data).result_code == ResultCode.INVALID_MESSAGE_LENGTH


def test_error_answer_grammar_is_used_for_e_bit_answers() -> None:
    answer = Message(272, 4, flags=0x20)
    answer.extend([("Origin-Host", "a.b"), ("Origin-Realm", "b"), ("Result-Code", 3010)])
    assert parse_message(answer.encode()).is_error


def test_failed_avp_content_is_never_validated() -> None:
    answer = Message(272, 4, flags=0x20)
    answer.extend([("Origin-Host", "a.b"), ("Origin-Realm", "b"), ("Result-Code", 5001)])
    answer.add("Failed-AVP", [_raw(4242, b"xx", vendor_id=7), _raw(416, b"\0\0\0\x09")])
    decoded = parse_message(answer.encode())
    failed = decoded.find("Failed-AVP")
    assert failed is not None and [a.code for a in failed.children] == [4242, 416]
