"""Bytes <-> Message. Decoding checks framing and values; validate.py adds command grammar.

Every problem in received bytes surfaces as a DiameterError (or FramingError) carrying the
Result-Code and Failed-AVP RFC 6733 asks for; nothing else escapes decode_message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from quotaflow.diameter._values import (
    ValueDecoder,
    decode_value,
    encode_value,
    identity_value,
    utf8_value,
    value_decoder,
    zero_payload,
)
from quotaflow.diameter.constants import (
    AVP_FLAG_MANDATORY,
    AVP_FLAG_VENDOR,
    DIAMETER_VERSION,
    FLAG_RESERVED,
    HEADER_OCTETS,
    ResultCode,
)
from quotaflow.diameter.dictionary import (
    FIXED_SIZE_OCTETS,
    GROUPED_DEPTH_MAX,
    AvpDef,
    AvpType,
    Dictionary,
    default_dictionary,
)
from quotaflow.diameter.errors import DiameterError, FramingError, ValueProblem
from quotaflow.diameter.message import Avp, AvpValue, Header, Message

_S_HEADER: Final = struct.Struct(">IIIII")
_S_AVP: Final = struct.Struct(">II")
_S_AVP_VENDOR: Final = struct.Struct(">III")
_S_U32: Final = struct.Struct(">I")
# Bound once: from compiled code `_S_AVP.pack(...)` is a method lookup on every call (callgrind:
# ~26 per CCR and its answer, a few hundred instructions each); a bound method is just a call.
_pack_header: Final = _S_HEADER.pack
_pack_avp: Final = _S_AVP.pack
_pack_vendor_avp: Final = _S_AVP_VENDOR.pack
_pack_u32_avp: Final = struct.Struct(">III").pack  # header and an Unsigned32
_pack_i32_avp: Final = struct.Struct(">IIi").pack  # header and an Integer32 / Enumerated

AVP_LENGTH_MAX: Final = 0xFFFFFF  # 24-bit length field
# AVPs per message, all nesting levels together: far above any real CCR, low enough to bound work.
AVP_COUNT_MAX: Final = 4096


# -- encoding -------------------------------------------------------------------------------


def encode_avp(avp: Avp) -> bytes:
    """One AVP, padded to a multiple of 4 octets. The common kinds (no vendor id; a 32-bit
    integer or a text) are packed here at once: a Gy answer echoes several request AVPs, and
    a level of one AVP would cost a list and a join each. Anything else, or a value out of
    range, goes through _encode_avps (which says how it does not fit)."""
    definition = avp.definition
    if avp.vendor_id or definition is None:
        return _encode_avps([avp])
    value = avp.value
    kind = definition.type
    word = (avp.flags & ~AVP_FLAG_VENDOR) << 24
    try:
        if type(value) is int:
            if kind is AvpType.UNSIGNED32:
                return _pack_u32_avp(avp.code, word | 12, value)
            if kind is AvpType.INTEGER32 or kind is AvpType.ENUMERATED:
                return _pack_i32_avp(avp.code, word | 12, value)
        elif type(value) is str and kind in _TEXT_TYPES:
            data = value.encode()
            length = 8 + len(data)
            if length <= AVP_LENGTH_MAX:
                return _pack_avp(avp.code, word | length) + data + _PADDING[length & 3]
    except struct.error:
        pass
    return _encode_avps([avp])


def _encode_avps(avps: list[Avp]) -> bytes:
    """AVPs one after the other, each padded. One loop for a whole level (this runs for every
    AVP sent): only Grouped members recurse."""
    parts: list[bytes] = []
    add = parts.append
    for avp in avps:
        value = avp.value
        definition = avp.definition
        kind = type(value)
        if isinstance(value, list):
            data = _encode_avps(value)
        elif definition is None or isinstance(value, bytes):
            # Raw AVPs (unknown, or kept as received for Failed-AVP) and OctetStrings go out
            # byte for byte.
            if not isinstance(value, bytes):
                raise TypeError(f"raw AVP {avp.name} needs a bytes value")
            data = value
        elif (kind is int or (isinstance(value, int) and kind is not bool)) and (
            packer := _INT_PACKERS.get(definition.type)
        ) is not None:
            # The common case of every answer (IntEnum members too), without encode_value's
            # dispatch.
            try:
                data = packer(value)
            except struct.error as exc:
                raise ValueError(f"{value!r} does not fit {definition.type}: {exc}") from None
        elif kind is str and definition.type in _TEXT_TYPES:
            data = value.encode()  # type: ignore[union-attr]
        else:
            data = encode_value(definition.type, value)
        flags = avp.flags
        if avp.vendor_id:
            length = 12 + len(data)
            word = ((flags | AVP_FLAG_VENDOR) << 24) | length
            add(_pack_vendor_avp(avp.code, word, avp.vendor_id))
        else:
            length = 8 + len(data)
            add(_pack_avp(avp.code, ((flags & ~AVP_FLAG_VENDOR) << 24) | length))
        if length > AVP_LENGTH_MAX:
            raise ValueError(f"{avp.name} is {length} octets, above the 24-bit AVP length")
        add(data)
        if length & 3:
            add(_PADDING[length & 3])
    return b"".join(parts)


_PADDING: Final = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4
_INT_PACKERS: Final[dict[AvpType, Callable[..., bytes]]] = {
    AvpType.UNSIGNED32: struct.Struct(">I").pack,
    AvpType.UNSIGNED64: struct.Struct(">Q").pack,
    AvpType.INTEGER32: struct.Struct(">i").pack,
    AvpType.INTEGER64: struct.Struct(">q").pack,
    AvpType.ENUMERATED: struct.Struct(">i").pack,
}
_TEXT_TYPES: Final = frozenset(
    {AvpType.UTF8_STRING, AvpType.DIAMETER_IDENTITY, AvpType.DIAMETER_URI}
)


def encode_message(message: Message) -> bytes:
    body = message.avps_wire
    if body is None:
        body = _encode_avps(message.avps)
    length = HEADER_OCTETS + len(body)
    if length > AVP_LENGTH_MAX:
        raise ValueError(f"message is {length} octets, above the 24-bit message length")
    head = _pack_header(
        (DIAMETER_VERSION << 24) | length,
        (message.flags << 24) | message.command_code,
        message.application_id,
        message.hop_by_hop,
        message.end_to_end,
    )
    return head + body


# -- decoding -------------------------------------------------------------------------------


def decode_header(data: bytes) -> Header:
    """The header of a frame; FramingError when the frame cannot be delimited or versioned."""
    if len(data) < HEADER_OCTETS:
        raise FramingError(ResultCode.INVALID_MESSAGE_LENGTH, "shorter than a Diameter header")
    word0, word1, application_id, hop_by_hop, end_to_end = _S_HEADER.unpack_from(data)
    header = Header(
        version=word0 >> 24,
        length=word0 & 0xFFFFFF,
        flags=word1 >> 24,
        command_code=word1 & 0xFFFFFF,
        application_id=application_id,
        hop_by_hop=hop_by_hop,
        end_to_end=end_to_end,
    )
    if header.version != DIAMETER_VERSION:
        raise FramingError(
            ResultCode.UNSUPPORTED_VERSION, f"version {header.version}", header=header
        )
    if header.length < HEADER_OCTETS:
        raise FramingError(
            ResultCode.INVALID_MESSAGE_LENGTH, f"length {header.length}", header=header
        )
    return header


def check_header_bits(header: Header) -> None:
    """Reserved header bits must be zero (RFC 6733 section 3: 5013)."""
    if header.flags & FLAG_RESERVED:
        raise DiameterError(
            ResultCode.INVALID_BIT_IN_HEADER,
            f"reserved header bits set (flags 0x{header.flags:02x})",
            header=header,
        )


def decode_message(data: bytes, dictionary: Dictionary | None = None) -> Message:
    """Decode one complete frame (exactly `header.length` octets).

    Checks framing, AVP lengths, values and unknown mandatory AVPs; command grammar is
    validate.py's job. Raises DiameterError/FramingError only.
    """
    dictionary = dictionary if dictionary is not None else default_dictionary()
    data = bytes(data)
    return decode_body(data, decode_header(data), dictionary)


def decode_body(data: bytes, header: Header, dictionary: Dictionary) -> Message:
    """decode_message for a frame whose header was decoded already."""
    if header.length != len(data):
        raise FramingError(
            ResultCode.INVALID_MESSAGE_LENGTH,
            f"header says {header.length} octets, frame has {len(data)}",
            header=header,
        )
    if header.length % 4:
        raise DiameterError(
            ResultCode.INVALID_MESSAGE_LENGTH, "length not a multiple of 4", header=header
        )
    try:
        avps = _Decoder(data, dictionary).avps(HEADER_OCTETS, len(data), depth=0)
    except DiameterError as error:
        error.header = header
        raise
    return Message(
        header.command_code,
        header.application_id,
        flags=header.flags,
        hop_by_hop=header.hop_by_hop,
        end_to_end=header.end_to_end,
        avps=avps,
        dictionary=dictionary,
    )


def salvage_avps(data: bytes, dictionary: Dictionary | None = None) -> list[Avp]:
    """Best effort: the top-level AVPs that decode cleanly, up to the first framing problem.

    Used to echo Session-Id and similar AVPs in the error answer to a broken request.
    """
    dictionary = dictionary if dictionary is not None else default_dictionary()
    data = bytes(data)
    if len(data) < HEADER_OCTETS:
        return []
    end = min(len(data), _S_U32.unpack_from(data)[0] & 0xFFFFFF)
    salvaged: list[Avp] = []
    for raw in _raw_avps(data, HEADER_OCTETS, end, dictionary):
        if raw.definition is None or not isinstance(raw.value, bytes):
            continue
        payload = raw.value
        try:
            if raw.definition.type is AvpType.GROUPED:
                value: AvpValue = _Decoder(payload, dictionary).avps(0, len(payload), 1)
            else:
                value = decode_value(raw.definition, payload)
        except (DiameterError, ValueProblem):
            if raw.definition.type is not AvpType.ENUMERATED or len(payload) != 4:
                continue
            # A value outside the enumeration is still echoed (e.g. CC-Request-Type in the
            # CCA answering it: freeDiameter drops a CCA without one).
            value = int.from_bytes(payload, "big", signed=True)
        salvaged.append(Avp(raw.code, value, raw.vendor_id, raw.flags, raw.definition))
    return salvaged


# How the decoder reads one AVP's data: its definition, its value decoder (None for Grouped), a
# kind saying which common formats are read inline (no call through the decoder), and the data
# size of a fixed-size type. Kinds, not closures: compiled (mypyc), an inline read is C code,
# while a call through a Callable is a Python call.
_Entry = tuple[AvpDef, ValueDecoder | None, int, int]
# Vendor-0 entries in a list indexed by code (no key tuple to build, and no int object: a dict
# keyed by code boxed every code above 256 into a new one, per AVP received), the others by
# (code, vendor). Vendor-0 codes are small (the largest is 485); one past PLAIN_CODES_MAX would
# go to the second table.
_Tables = tuple[list[_Entry | None], dict[tuple[int, int], _Entry]]
PLAIN_CODES_MAX: Final = 4096

_GENERIC: Final = 0  # through the value decoder
_GROUPED: Final = 1
_U32: Final = 2
_I32: Final = 3
_U64: Final = 4
_I64: Final = 5
_OCTETS: Final = 6
_UTF8: Final = 7
_IDENTITY: Final = 8

_INLINE_KINDS: Final[dict[AvpType, int]] = {
    AvpType.UNSIGNED32: _U32,
    AvpType.INTEGER32: _I32,
    AvpType.ENUMERATED: _I32,  # open enumerations only: a strict one checks its values
    AvpType.UNSIGNED64: _U64,
    AvpType.INTEGER64: _I64,
    AvpType.OCTET_STRING: _OCTETS,
    AvpType.IP_FILTER_RULE: _OCTETS,
    AvpType.UTF8_STRING: _UTF8,
    AvpType.DIAMETER_IDENTITY: _IDENTITY,
}


def _tables(dictionary: Dictionary) -> _Tables:
    """The decoder's tables for a dictionary, made once."""
    tables: _Tables | None = dictionary.decoders
    if tables is None:
        size = 1 + max((c for c, v in dictionary.avps if not v and c < PLAIN_CODES_MAX), default=0)
        plain: list[_Entry | None] = [None] * size
        vendor: dict[tuple[int, int], _Entry] = {}
        for key, d in dictionary.avps.items():
            entry: _Entry
            if d.type is AvpType.GROUPED:
                entry = (d, None, _GROUPED, 0)
            else:
                kind = _INLINE_KINDS.get(d.type, _GENERIC)
                if d.type is AvpType.ENUMERATED and d.enum_strict:
                    kind = _GENERIC
                entry = (d, value_decoder(d), kind, FIXED_SIZE_OCTETS.get(d.type, 0))
            if d.vendor_id or d.code >= size:
                vendor[key] = entry
            else:
                plain[d.code] = entry
        tables = dictionary.decoders = (plain, vendor)
    return tables


def _read_u32(data: bytes, pos: int) -> int:
    return (data[pos] << 24) | (data[pos + 1] << 16) | (data[pos + 2] << 8) | data[pos + 3]


def _read_number(data: bytes, pos: int, kind: int) -> int:
    """An inline number kind (_U32 .. _I64) at `pos`, its size already checked."""
    if kind == _U32:
        return _read_u32(data, pos)
    if kind == _I32:
        value = _read_u32(data, pos)
        return value - 0x1_0000_0000 if value & 0x8000_0000 else value
    value = (_read_u32(data, pos) << 32) | _read_u32(data, pos + 4)
    if kind == _I64 and value & 0x8000_0000_0000_0000:
        return value - 0x1_0000_0000_0000_0000
    return value


class _Decoder:
    """Walks the AVPs of one frame; counts them to enforce AVP_COUNT_MAX."""

    __slots__ = ("count", "data", "dictionary", "plain", "vendor")

    def __init__(self, data: bytes, dictionary: Dictionary) -> None:
        self.data = data
        self.dictionary = dictionary
        self.plain, self.vendor = _tables(dictionary)
        self.count = 0

    def avps(self, start: int, end: int, depth: int) -> list[Avp]:
        """The AVPs between offsets `start` and `end` of the frame."""
        if depth > GROUPED_DEPTH_MAX:
            raise DiameterError(
                ResultCode.INVALID_AVP_VALUE, f"Grouped AVPs nested deeper than {GROUPED_DEPTH_MAX}"
            )
        # This loop runs for every AVP received: the common case (no vendor id, a length that
        # fits, a plain number or string) is read inline; anything else goes through
        # _avp_header (which raises 5014) or the definition's value decoder.
        data = self.data
        plain = self.plain
        avps: list[Avp] = []
        count = self.count
        pos = start
        while pos < end:
            if end - pos >= 8:
                code = _read_u32(data, pos)
                flags = data[pos + 4]
                length = (data[pos + 5] << 16) | (data[pos + 6] << 8) | data[pos + 7]
                vendor_id = 0
                head = 8
                if flags & 0x80 or length < 8 or length > end - pos:  # 0x80: AVP_FLAG_VENDOR
                    code, flags, length, vendor_id, head = _avp_header(
                        data, pos, end, self.dictionary
                    )
            else:
                code, flags, length, vendor_id, head = _avp_header(data, pos, end, self.dictionary)
            count += 1
            if count > AVP_COUNT_MAX:
                raise DiameterError(
                    ResultCode.RESOURCES_EXCEEDED, f"more than {AVP_COUNT_MAX} AVPs"
                )
            if vendor_id or code >= len(plain):
                entry = self.vendor.get((code, vendor_id))
            else:
                entry = plain[code]
            if entry is None:
                payload = data[pos + head : pos + length]
                if flags & AVP_FLAG_MANDATORY:
                    raise DiameterError(
                        ResultCode.AVP_UNSUPPORTED,
                        f"unknown mandatory AVP code {code} vendor {vendor_id}",
                        failed_avps=[Avp(code, payload, vendor_id, flags)],
                    )
                avps.append(Avp(code, payload, vendor_id, flags))
            else:
                definition, decode, kind, size = entry
                first = pos + head
                last = pos + length
                value: AvpValue
                if _U32 <= kind <= _I64 and last - first == size:
                    value = _read_number(data, first, kind)
                elif kind == _OCTETS:
                    value = data[first:last]
                elif kind == _GROUPED:
                    self.count = count
                    value = self._grouped(definition, first, last, depth, flags)
                    count = self.count
                else:
                    try:
                        if kind == _UTF8:
                            value = utf8_value(data[first:last])
                        elif kind == _IDENTITY:
                            value = identity_value(data[first:last])
                        else:
                            assert decode is not None
                            value = decode(data, first, last)
                    except ValueProblem as problem:
                        # Failed-AVP: the offender as received.
                        raise DiameterError(
                            problem.result_code,
                            str(problem),
                            failed_avps=[Avp(code, data[first:last], vendor_id, flags)],
                        ) from None
                avps.append(Avp(code, value, vendor_id, flags, definition))
            pos += (length + 3) & ~3
        self.count = count
        return avps

    def _grouped(
        self, definition: AvpDef, start: int, end: int, depth: int, flags: int
    ) -> list[Avp]:
        try:
            if definition.opaque:
                # Failed-AVP holds whatever broke elsewhere: keep members raw if they do not decode.
                try:
                    return self.avps(start, end, depth + 1)
                except DiameterError:
                    return _raw_avps(self.data, start, end, self.dictionary)
            return self.avps(start, end, depth + 1)
        except DiameterError as error:
            # Failed-AVP: the offender as received, inside its enclosing Grouped AVPs.
            inner: AvpValue = error.failed_avps if error.failed_avps else self.data[start:end]
            error.failed_avps = [Avp(definition.code, inner, definition.vendor_id, flags)]
            raise


def _avp_header(
    data: bytes, pos: int, end: int, dictionary: Dictionary
) -> tuple[int, int, int, int, int]:
    """(code, flags, length, vendor_id, header_octets) of the AVP at `pos`, or 5014."""
    if end - pos < 8:
        raise DiameterError(
            ResultCode.INVALID_AVP_LENGTH,
            "truncated AVP header",
            failed_avps=[Avp(0, b"", 0, 0)],
        )
    code, word = _S_AVP.unpack_from(data, pos)
    flags = word >> 24
    length = word & 0xFFFFFF
    vendor_id = 0
    head = 8
    if flags & AVP_FLAG_VENDOR:
        head = 12
        if end - pos < 12:
            raise DiameterError(
                ResultCode.INVALID_AVP_LENGTH,
                f"AVP {code}: truncated vendor id",
                failed_avps=[Avp(code, b"", 0, flags & ~AVP_FLAG_VENDOR)],
            )
        vendor_id = _S_U32.unpack_from(data, pos + 8)[0]
    if length < head or length > end - pos:
        # RFC 6733 7.1.5: the AVP header with a zero-filled payload of its minimum size.
        raise DiameterError(
            ResultCode.INVALID_AVP_LENGTH,
            f"AVP {code} vendor {vendor_id}: length {length} does not fit",
            failed_avps=[
                Avp(code, zero_payload(dictionary.lookup(code, vendor_id)), vendor_id, flags)
            ],
        )
    return code, flags, length, vendor_id, head


def _raw_avps(data: bytes, start: int, end: int, dictionary: Dictionary) -> list[Avp]:
    """Framing-only walk: AVPs with raw payloads (definition attached when known)."""
    found: list[Avp] = []
    pos = start
    while pos < end:
        try:
            code, flags, length, vendor_id, head = _avp_header(data, pos, end, dictionary)
        except DiameterError:
            break
        definition = dictionary.lookup(code, vendor_id)
        found.append(Avp(code, data[pos + head : pos + length], vendor_id, flags, definition))
        pos += (length + 3) & ~3
        if len(found) > AVP_COUNT_MAX:
            break
    return found
