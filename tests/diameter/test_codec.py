"""Codec: exact wire format, round trips of every AVP type, and fuzzing."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import struct
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotaflow.diameter import (
    Avp,
    AvpType,
    DiameterError,
    Message,
    RawAddress,
    decode_message,
    default_dictionary,
    encode_avp,
    parse_message,
)
from quotaflow.diameter.dictionary import AvpSpec, Dictionary

from .helpers import open5gs_like_ccr

DICT = default_dictionary()


def test_header_layout() -> None:
    msg = Message(272, 4, flags=0xC0, hop_by_hop=0x01020304, end_to_end=0x05060708)
    data = msg.encode()
    assert data == bytes.fromhex("01000014c0000110000000040102030405060708")


def test_avp_layout_with_vendor_and_padding() -> None:
    # Node-Id (2064, vendor 10415, UTF8String "smf"): 12-octet header + 3 octets + 1 pad.
    avp = Message(272, 4).build("Node-Id", "smf")
    data = encode_avp(avp)
    assert data == bytes.fromhex("000008108000000f000028af") + b"smf\0"


def test_m_bit_follows_dictionary() -> None:
    msg = Message(272, 4)
    assert msg.build("Session-Id", "x").flags == 0x40
    assert msg.build("Product-Name", "x").flags == 0x00
    assert msg.build("Time-Quota-Threshold", 1).flags == 0xC0  # V and M


def test_time_is_ntp_seconds() -> None:
    avp = Message(272, 4).build("Event-Timestamp", datetime(1970, 1, 1, tzinfo=UTC))
    assert encode_avp(avp)[8:] == struct.pack(">I", 2_208_988_800)


def test_time_after_2036_uses_era_1() -> None:
    when = datetime(2040, 1, 1, tzinfo=UTC)
    msg = Message(272, 4, avps=[Message(272, 4).build("Event-Timestamp", when)])
    assert decode_message(msg.encode()).get("Event-Timestamp") == when


def test_address_family_encoding() -> None:
    msg = Message(272, 4)
    v4 = encode_avp(msg.build("Host-IP-Address", ipaddress.IPv4Address("192.0.2.1")))
    assert v4[8:14] == b"\x00\x01\xc0\x00\x02\x01"
    v6 = encode_avp(msg.build("Host-IP-Address", ipaddress.IPv6Address("2001:db8::1")))
    assert v6[8:10] == b"\x00\x02" and len(v6) == 8 + 2 + 16 + 2


SAMPLES: list[tuple[AvpType, object]] = [
    (AvpType.OCTET_STRING, b"\x00\xffraw"),
    (AvpType.INTEGER32, -(2**31)),
    (AvpType.INTEGER64, 2**63 - 1),
    (AvpType.UNSIGNED32, 2**32 - 1),
    (AvpType.UNSIGNED64, 2**64 - 1),
    (AvpType.FLOAT32, 1.5),
    (AvpType.FLOAT64, -2.25e300),
    (AvpType.ADDRESS, ipaddress.IPv6Address("2001:db8::1")),
    (AvpType.ADDRESS, RawAddress(8, b"33612345678")),
    (AvpType.TIME, datetime(2026, 11, 22, 17, 0, 5, tzinfo=UTC)),
    (AvpType.UTF8_STRING, "héllo ☃"),
    (AvpType.DIAMETER_IDENTITY, "pgw.example.net"),
    (AvpType.DIAMETER_URI, "aaa://ocs.example.net:3868;transport=tcp"),
    (AvpType.ENUMERATED, 9),
    (AvpType.IP_FILTER_RULE, b"permit out ip from any to 10.0.0.1"),
]


@pytest.mark.parametrize(("avp_type", "value"), SAMPLES, ids=[f"{t}-{v!r}" for t, v in SAMPLES])
def test_round_trip_every_type(avp_type: AvpType, value: object) -> None:
    dictionary = _with_float_avps()
    definition = next(d for d in dictionary.avps.values() if d.type is avp_type)
    if avp_type is AvpType.ENUMERATED:
        definition = dictionary.avp("QoS-Class-Identifier")  # open enum
    msg = Message(272, 4, hop_by_hop=1, end_to_end=2, dictionary=dictionary)
    msg.add(definition.name, value)
    decoded = decode_message(msg.encode(), dictionary)
    assert decoded == msg
    assert decoded.avps[0].value == value


def _with_float_avps() -> Dictionary:
    """The default dictionary plus two Float AVPs (no Gy AVP is a Float)."""
    dictionary = copy.copy(DICT)
    dictionary.avps = dict(DICT.avps)
    dictionary.by_name = dict(DICT.by_name)
    dictionary.add_avps(
        [
            AvpSpec(9001, "Test-F32", AvpType.FLOAT32, 99),
            AvpSpec(9002, "Test-F64", AvpType.FLOAT64, 99),
        ]
    )
    return dictionary


def test_grouped_round_trip_and_lookup_by_path() -> None:
    ccr = open5gs_like_ccr(2, 1, used_octets=5000)
    decoded = parse_message(ccr.encode())
    assert decoded == ccr
    assert decoded.session_id == ccr.session_id
    assert decoded.get("Multiple-Services-Credit-Control/Used-Service-Unit/CC-Total-Octets") == 5000
    assert [a.get("Subscription-Id-Data") for a in decoded.find_all("Subscription-Id")] == [
        "33612345678",
        "001010000000001",
    ]
    qci = decoded.get("Service-Information/PS-Information/QoS-Information/QoS-Class-Identifier")
    assert qci == 9
    assert decoded.find("No-Such/Thing") is None


def test_unknown_avp_without_m_bit_is_kept_raw() -> None:
    raw = Avp(99999, b"\x01\x02\x03", vendor_id=12345, flags=0x80)
    msg = Message(272, 4, avps=[raw])
    decoded = decode_message(msg.encode())
    assert decoded.avps == [raw]
    assert decoded.avps[0].definition is None
    assert decoded.encode() == msg.encode()


def test_set_replaces_and_enum_names() -> None:
    msg = Message(272, 4)
    msg.add("CC-Request-Type", "UPDATE_REQUEST")
    msg.add("CC-Request-Type", 3)
    msg.set("CC-Request-Type", "TERMINATION_REQUEST")
    assert [a.value for a in msg.find_all("CC-Request-Type")] == [3]
    with pytest.raises(ValueError):
        msg.add("CC-Request-Type", "NOPE")


def test_encode_rejects_out_of_range_values() -> None:
    msg = Message(272, 4)
    msg.add("CC-Request-Number", 2**32)
    with pytest.raises(ValueError):
        msg.encode()
    bad_type = Message(272, 4)
    bad_type.add("Origin-Host", 5)
    with pytest.raises(TypeError):
        bad_type.encode()


# -- property tests ---------------------------------------------------------------------------

_VALUE_STRATEGIES = {
    AvpType.OCTET_STRING: st.binary(max_size=64),
    AvpType.IP_FILTER_RULE: st.binary(max_size=64),
    AvpType.INTEGER32: st.integers(-(2**31), 2**31 - 1),
    AvpType.INTEGER64: st.integers(-(2**63), 2**63 - 1),
    AvpType.UNSIGNED32: st.integers(0, 2**32 - 1),
    AvpType.UNSIGNED64: st.integers(0, 2**64 - 1),
    AvpType.UTF8_STRING: st.text(max_size=32),
    AvpType.DIAMETER_IDENTITY: st.from_regex(r"[a-z0-9][a-z0-9.\-]{0,30}", fullmatch=True),
    AvpType.DIAMETER_URI: st.from_regex(r"aaas?://[a-z0-9.]{1,20}", fullmatch=True),
    AvpType.ADDRESS: st.one_of(
        st.ip_addresses(), st.builds(RawAddress, st.integers(3, 30), st.binary(max_size=16))
    ),
    # Unix seconds a 32-bit NTP Time can carry: 1968-01-20 .. 2104-02-20.
    AvpType.TIME: st.integers(-61_505_152, 4_233_462_143).map(
        lambda s: datetime.fromtimestamp(s, tz=UTC)
    ),
}

_SCALARS = [
    d
    for d in DICT.avps.values()
    if d.type in _VALUE_STRATEGIES or (d.type is AvpType.ENUMERATED and d.enum)
]


@st.composite
def _avp(draw: st.DrawFn, depth: int = 0) -> tuple[str, object]:
    if depth < 2 and draw(st.booleans()):
        grouped = draw(
            st.sampled_from([d for d in DICT.avps.values() if d.grammar and not d.opaque])
        )
        members = draw(st.lists(_avp(depth + 1), max_size=3))
        return grouped.name, members
    definition = draw(st.sampled_from(_SCALARS))
    if definition.type is AvpType.ENUMERATED:
        assert definition.enum is not None
        return definition.name, draw(st.sampled_from(sorted(definition.enum)))
    return definition.name, draw(_VALUE_STRATEGIES[definition.type])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    avps=st.lists(_avp(), max_size=8),
    flags=st.sampled_from([0x00, 0x40, 0x80, 0xC0, 0x20, 0x90]),
    ids=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
def test_hypothesis_round_trip(
    avps: list[tuple[str, object]], flags: int, ids: tuple[int, int]
) -> None:
    msg = Message(272, 4, flags=flags, hop_by_hop=ids[0], end_to_end=ids[1])
    msg.extend(avps)
    data = msg.encode()
    assert len(data) % 4 == 0
    decoded = decode_message(data)
    assert decoded == msg
    assert decoded.encode() == data


def _check_never_untyped(data: bytes) -> None:
    try:
        parse_message(data)
    except DiameterError as error:
        assert 3000 <= error.result_code < 6000
        for failed in error.failed_avps:
            encode_avp(failed)  # Failed-AVP content must be sendable back
    with contextlib.suppress(DiameterError):
        decode_message(data)


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_typed_errors(data: bytes) -> None:
    _check_never_untyped(data)


_SEED = open5gs_like_ccr(2, 1, used_octets=1234).encode()


@settings(max_examples=1500)
@given(
    st.lists(
        st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.integers(0, len(_SEED)),
)
def test_fuzz_mutated_ccr_raises_only_typed_errors(
    mutations: list[tuple[int, int]], cut: int
) -> None:
    frame = bytearray(_SEED)
    for position, byte in mutations:
        frame[position] = byte
    frame = frame[:cut] if cut >= 20 else frame
    _check_never_untyped(bytes(frame))


def test_deep_nesting_is_refused() -> None:
    # Proxy-Info is Grouped; nest raw grouped AVPs 40 deep.
    data = b""
    for _ in range(40):
        body = data
        length = 8 + len(body)
        data = struct.pack(">II", 284, (0x40 << 24) | length) + body
    frame = Message(272, 4, flags=0xC0).encode()
    frame = struct.pack(">I", (1 << 24) | (len(frame) + len(data))) + frame[4:] + data
    with pytest.raises(DiameterError) as caught:
        decode_message(frame)
    assert caught.value.result_code == 5004


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("Rating-Group", [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF]),  # Unsigned32
        ("Exponent", [0, -1, 2**31 - 1, -(2**31)]),  # Integer32
        ("CC-Total-Octets", [0, 2**63, 2**64 - 1]),  # Unsigned64
        ("Value-Digits", [0, -1, 2**63 - 1, -(2**63)]),  # Integer64
        ("Subscription-Id-Data", ["", "4670000001", "\u00e5\u00e4\u00f6"]),  # UTF8String
        ("Origin-Host", ["pgw.example"]),  # DiameterIdentity
        ("User-Equipment-Info-Value", [b"", b"\x00\xff\x80"]),  # OctetString
    ],
)
def test_inline_reads_give_what_the_value_decoders_give(name: str, values: list[object]) -> None:
    """The decoder reads these formats itself (byte arithmetic, compiled), not through the
    definition's value decoder: both must agree at the edges of each range."""
    from quotaflow.diameter._values import decode_value
    from quotaflow.diameter.codec import _Decoder

    dictionary = default_dictionary()
    definition = dictionary.avp(name)
    for value in values:
        data = encode_avp(Message.request(272, 4).build(name, value))
        (avp,) = _Decoder(data, dictionary).avps(0, len(data), 1)
        head = 12 if definition.vendor_id else 8
        payload = data[head : int.from_bytes(data[5:8], "big")]
        assert avp.value == value
        assert decode_value(definition, payload) == value
        assert type(avp.value) is type(value)


@given(st.text(max_size=300), st.integers(-(2**31), 2**32 - 1))
def test_one_avp_encodes_as_a_level_of_avps_does(text: str, number: int) -> None:
    """encode_avp packs the common kinds (text, 32-bit integers) itself: the same bytes as
    _encode_avps, and the same refusal of a value out of range."""
    from quotaflow.diameter.codec import _encode_avps

    msg = Message.request(272, 4)
    for name in ("Session-Id", "Origin-Host"):
        avp = msg.build(name, text)
        assert encode_avp(avp) == _encode_avps([avp])
    kind = msg.build("CC-Request-Type", number)
    if number < 2**31:
        assert encode_avp(kind) == _encode_avps([kind])
    else:
        with pytest.raises(ValueError):
            encode_avp(kind)
    counter = msg.build("CC-Request-Number", number)
    if number >= 0:
        assert encode_avp(counter) == _encode_avps([counter])
    else:
        with pytest.raises(ValueError):
            encode_avp(counter)
