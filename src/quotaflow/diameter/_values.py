"""Encoding and decoding of non-Grouped AVP values, one pair of functions per data format."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from quotaflow.diameter.constants import ResultCode
from quotaflow.diameter.dictionary import FIXED_SIZE_OCTETS, AvpDef, AvpType
from quotaflow.diameter.errors import ValueProblem
from quotaflow.diameter.message import AvpValue, RawAddress

# NTP era 0 starts 1900-01-01; Unix time starts 2 208 988 800 s later.
_NTP_UNIX_OFFSET_S: Final = 2_208_988_800
# RFC 4330 section 3: with the top bit clear, a 32-bit NTP value is in era 1 (from 2036-02-07).
_NTP_ERA_S: Final = 1 << 32

_ADDRESS_FAMILY_IPV4: Final = 1
_ADDRESS_FAMILY_IPV6: Final = 2

_S_I32 = struct.Struct(">i")
_S_I64 = struct.Struct(">q")
_S_U32: Final = struct.Struct(">I")
_S_U64 = struct.Struct(">Q")
_S_F32 = struct.Struct(">f")
_S_F64 = struct.Struct(">d")
_S_U16: Final = struct.Struct(">H")


def decode_value(definition: AvpDef, data: bytes) -> AvpValue:
    """Decode a non-Grouped value; raises ValueProblem (5014 length, 5004 value)."""
    avp_type = definition.type
    size = FIXED_SIZE_OCTETS.get(avp_type)
    if size is not None and len(data) != size:
        raise ValueProblem(
            ResultCode.INVALID_AVP_LENGTH,
            f"{definition.name} needs {size} octets of data, got {len(data)}",
        )
    value = _DECODERS[avp_type](data)
    if avp_type is AvpType.ENUMERATED and definition.enum_strict:
        assert definition.enum is not None
        if value not in definition.enum:
            raise ValueProblem(
                ResultCode.INVALID_AVP_VALUE, f"{definition.name} has no value {value!r}"
            )
    return value


# A value decoder reads data[start:end] of a frame: integers are unpacked in place, without
# slicing the payload out first.
ValueDecoder = Callable[[bytes, int, int], AvpValue]


def value_decoder(definition: AvpDef) -> ValueDecoder:
    """decode_value for one definition, specialised once: the same values and the same
    ValueProblems, with the per-call lookups done here."""
    avp_type = definition.type
    name = definition.name
    size = FIXED_SIZE_OCTETS.get(avp_type)
    unpacker = _UNPACKERS.get(avp_type)
    if unpacker is not None and avp_type is not AvpType.TIME:
        assert size is not None
        unpack_from = unpacker.unpack_from
        strict = (
            definition.enum if avp_type is AvpType.ENUMERATED and definition.enum_strict else None
        )

        def number(data: bytes, start: int, end: int) -> AvpValue:
            if end - start != size:
                raise ValueProblem(
                    ResultCode.INVALID_AVP_LENGTH,
                    f"{name} needs {size} octets of data, got {end - start}",
                )
            value: int | float = unpack_from(data, start)[0]
            if strict is not None and value not in strict:
                raise ValueProblem(ResultCode.INVALID_AVP_VALUE, f"{name} has no value {value!r}")
            return value

        return number
    if avp_type is AvpType.OCTET_STRING or avp_type is AvpType.IP_FILTER_RULE:
        return lambda data, start, end: data[start:end]
    if avp_type is AvpType.UTF8_STRING:
        return lambda data, start, end: utf8_value(data[start:end])
    if avp_type is AvpType.DIAMETER_IDENTITY:
        return lambda data, start, end: identity_value(data[start:end])
    return lambda data, start, end: decode_value(definition, data[start:end])


def encode_value(avp_type: AvpType, value: AvpValue) -> bytes:
    """Encode a non-Grouped value; ValueError/TypeError when it does not fit the type."""
    try:
        return _ENCODERS[avp_type](value)
    except struct.error as exc:
        raise ValueError(f"{value!r} does not fit {avp_type}: {exc}") from None


def zero_payload(definition: AvpDef | None) -> bytes:
    """The zero-filled minimum value RFC 6733 puts in Failed-AVP for a missing/short AVP."""
    if definition is None:
        return b""
    if definition.type is AvpType.ADDRESS:
        return bytes(6)
    return bytes(FIXED_SIZE_OCTETS.get(definition.type, 0))


# -- decoders -------------------------------------------------------------------------------


def utf8_value(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueProblem(ResultCode.INVALID_AVP_VALUE, f"invalid UTF-8: {exc}") from None


def identity_value(data: bytes) -> str:
    # DiameterIdentity is an FQDN or realm: ASCII (IDNs travel as A-labels), never empty.
    # One decode, no isascii() first: compiled, decode("ascii") is a C call, isascii() a
    # method call through Python.
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if not text:
        raise ValueProblem(ResultCode.INVALID_AVP_VALUE, "DiameterIdentity must be non-empty ASCII")
    return text


def _uri(data: bytes) -> str:
    text = utf8_value(data)
    if not text.startswith(("aaa://", "aaas://")):
        raise ValueProblem(ResultCode.INVALID_AVP_VALUE, "DiameterURI must start aaa:// or aaas://")
    return text


def _address(data: bytes) -> AvpValue:
    if len(data) < 2:
        raise ValueProblem(ResultCode.INVALID_AVP_VALUE, "Address shorter than its family")
    family = _S_U16.unpack_from(data)[0]
    body = data[2:]
    if family == _ADDRESS_FAMILY_IPV4:
        if len(body) != 4:
            raise ValueProblem(ResultCode.INVALID_AVP_VALUE, "IPv4 Address needs 4 octets")
        return ipaddress.IPv4Address(body)
    if family == _ADDRESS_FAMILY_IPV6:
        if len(body) != 16:
            raise ValueProblem(ResultCode.INVALID_AVP_VALUE, "IPv6 Address needs 16 octets")
        return ipaddress.IPv6Address(body)
    if family == 0 or family == 0xFFFF:  # IANA reserved
        raise ValueProblem(ResultCode.INVALID_AVP_VALUE, f"reserved address family {family}")
    return RawAddress(family, body)


def _time(data: bytes) -> datetime:
    ntp_s = _S_U32.unpack(data)[0]
    if not ntp_s & 0x8000_0000:
        ntp_s += _NTP_ERA_S
    return datetime.fromtimestamp(ntp_s - _NTP_UNIX_OFFSET_S, tz=UTC)


def _float(unpacker: struct.Struct) -> Callable[[bytes], AvpValue]:
    def decode(data: bytes) -> AvpValue:
        value: float = unpacker.unpack(data)[0]
        return value

    return decode


def _int(unpacker: struct.Struct) -> Callable[[bytes], AvpValue]:
    def decode(data: bytes) -> AvpValue:
        value: int = unpacker.unpack(data)[0]
        return value

    return decode


_UNPACKERS: Final[dict[AvpType, struct.Struct]] = {
    AvpType.INTEGER32: _S_I32,
    AvpType.ENUMERATED: _S_I32,
    AvpType.INTEGER64: _S_I64,
    AvpType.UNSIGNED32: _S_U32,
    AvpType.UNSIGNED64: _S_U64,
    AvpType.FLOAT32: _S_F32,
    AvpType.FLOAT64: _S_F64,
    AvpType.TIME: _S_U32,
}

_DECODERS: Final[dict[AvpType, Callable[[bytes], AvpValue]]] = {
    AvpType.OCTET_STRING: bytes,
    AvpType.IP_FILTER_RULE: bytes,
    AvpType.INTEGER32: _int(_S_I32),
    AvpType.ENUMERATED: _int(_S_I32),
    AvpType.INTEGER64: _int(_S_I64),
    AvpType.UNSIGNED32: _int(_S_U32),
    AvpType.UNSIGNED64: _int(_S_U64),
    AvpType.FLOAT32: _float(_S_F32),
    AvpType.FLOAT64: _float(_S_F64),
    AvpType.UTF8_STRING: utf8_value,
    AvpType.DIAMETER_IDENTITY: identity_value,
    AvpType.DIAMETER_URI: _uri,
    AvpType.ADDRESS: _address,
    AvpType.TIME: _time,
}


# -- encoders -------------------------------------------------------------------------------


def _enc_bytes(value: AvpValue) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected bytes, got {type(value).__name__}")


def _enc_str(value: AvpValue) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    return value.encode("utf-8")


def _enc_int(packer: struct.Struct) -> Callable[[AvpValue], bytes]:
    def encode(value: AvpValue) -> bytes:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"expected int, got {type(value).__name__}")
        return packer.pack(value)

    return encode


def _enc_float(packer: struct.Struct) -> Callable[[AvpValue], bytes]:
    def encode(value: AvpValue) -> bytes:
        if not isinstance(value, float | int) or isinstance(value, bool):
            raise TypeError(f"expected float, got {type(value).__name__}")
        return packer.pack(value)

    return encode


def _enc_address(value: AvpValue) -> bytes:
    if isinstance(value, str):
        value = ipaddress.ip_address(value)
    if isinstance(value, ipaddress.IPv4Address):
        return _S_U16.pack(_ADDRESS_FAMILY_IPV4) + value.packed
    if isinstance(value, ipaddress.IPv6Address):
        return _S_U16.pack(_ADDRESS_FAMILY_IPV6) + value.packed
    if isinstance(value, RawAddress):
        return _S_U16.pack(value.family) + value.data
    raise TypeError(f"expected an IP address, got {type(value).__name__}")


def _enc_time(value: AvpValue) -> bytes:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("Time values must be timezone-aware")
        unix_s = int(value.timestamp())
    elif isinstance(value, int) and not isinstance(value, bool):
        unix_s = value
    else:
        raise TypeError(f"expected datetime or Unix seconds, got {type(value).__name__}")
    ntp_s = unix_s + _NTP_UNIX_OFFSET_S
    # Representable: 1968-01-20 .. 2104-02-26 (era 0 top half, then era 1 bottom half).
    if not 0x8000_0000 <= ntp_s < _NTP_ERA_S + 0x8000_0000:
        raise ValueError(f"{value!r} is outside the 32-bit NTP range")
    return _S_U32.pack(ntp_s % _NTP_ERA_S)


_ENCODERS: Final[dict[AvpType, Callable[[AvpValue], bytes]]] = {
    AvpType.OCTET_STRING: _enc_bytes,
    AvpType.IP_FILTER_RULE: _enc_bytes,
    AvpType.INTEGER32: _enc_int(_S_I32),
    AvpType.ENUMERATED: _enc_int(_S_I32),
    AvpType.INTEGER64: _enc_int(_S_I64),
    AvpType.UNSIGNED32: _enc_int(_S_U32),
    AvpType.UNSIGNED64: _enc_int(_S_U64),
    AvpType.FLOAT32: _enc_float(_S_F32),
    AvpType.FLOAT64: _enc_float(_S_F64),
    AvpType.UTF8_STRING: _enc_str,
    AvpType.DIAMETER_IDENTITY: _enc_str,
    AvpType.DIAMETER_URI: _enc_str,
    AvpType.ADDRESS: _enc_address,
    AvpType.TIME: _enc_time,
}
