"""The common CCA written straight to bytes, without an AVP object per member.

Almost every CCA is the same few AVPs: the head (Session-Id, Result-Code, Origin-Host,
Origin-Realm, the echoed ids) and per service one MSCC of Granted-Service-Unit, Rating-Group,
Validity-Time, Result-Code and a quota threshold. Building those as Avp objects and then
encoding them took about a sixth of a CCR-U's instructions (callgrind of bench/profile_gy.py).
Here each integer AVP is one struct call, and what never changes (Origin-Host and -Realm after
each Result-Code, the configuration's Final-Unit-Indication) is encoded once.

What this does not write (a money grant, units outside an MSCC) makes `body` return None and
the answer takes the generic path (gy_answer.add_outcomes, then codec). The bytes are the ones
the generic path encodes; tests/diameter/test_gy_wire.py holds the two together.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

from quotaflow.diameter.codec import encode_avp
from quotaflow.diameter.constants import AVP_FLAG_VENDOR
from quotaflow.diameter.dictionary import AvpType
from quotaflow.diameter.gy_answer import (
    GRANT_AVP,
    THRESHOLD_AVP,
    AvpFactory,
    Echo,
    Outcome,
    final_unit_indication,
)
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_mapping import UINT32_MAX
from quotaflow.diameter.message import Avp
from quotaflow.ledger import Unit

_pack_avp_header: Final = struct.Struct(">II").pack
ECHOES_KEPT_MAX: Final = 1_024
_FORMATS: Final = {
    AvpType.UNSIGNED32: ("I", 4),
    AvpType.UNSIGNED64: ("Q", 8),
    AvpType.INTEGER32: ("i", 4),
    AvpType.INTEGER64: ("q", 8),
    AvpType.ENUMERATED: ("i", 4),
}


class _Integer:
    """One integer AVP of one definition, header and value packed by one struct call."""

    __slots__ = ("_code", "_pack", "_vendor_id", "_word", "format", "header", "size")

    def __init__(self, avps: AvpFactory, name: str) -> None:
        definition, flags = avps.definition(name)
        letter, size = _FORMATS[definition.type]
        self._code = definition.code
        self._vendor_id = definition.vendor_id
        if definition.vendor_id:
            self._word = ((flags | AVP_FLAG_VENDOR) << 24) | (12 + size)
            self.format = "III" + letter
            self.header = [self._code, self._word, self._vendor_id]
            self.size = 12 + size
        else:
            self._word = ((flags & ~AVP_FLAG_VENDOR) << 24) | (8 + size)
            self.format = "II" + letter
            self.header = [self._code, self._word]
            self.size = 8 + size
        self._pack: Callable[..., bytes] = struct.Struct(">" + self.format).pack

    # Methods, not __call__: compiled code calls a method directly, a __call__ through Python.
    def pack(self, value: int) -> bytes:
        if self._vendor_id:
            return self._pack(self._code, self._word, self._vendor_id, value)
        return self._pack(self._code, self._word, value)


class _Shape:
    """One MSCC of integer members only (its length is then fixed), packed by one struct call:
    the headers are in `template`, the values go in at the indexes named *_at (-1: absent)."""

    def __init__(
        self,
        mscc: _Grouped,
        gsu: _Grouped,
        grant: _Integer | None,
        rating_group: _Integer | None,
        validity: _Integer | None,
        result_code: _Integer,
        threshold: _Integer | None,
    ) -> None:
        fmt = ">II"
        values: list[int] = [mscc.code, 0]

        def member(avp: _Integer | None) -> int:
            nonlocal fmt
            if avp is None:
                return -1
            fmt += avp.format
            values.extend(avp.header)
            values.append(0)
            return len(values) - 1

        if grant is not None:
            fmt += "II"
            values += [gsu.code, gsu.flags | (8 + grant.size)]
        at = [member(m) for m in (grant, rating_group, validity, result_code, threshold)]
        self.grant_at, self.rating_group_at, self.validity_at, self.code_at, self.threshold_at = at
        self.pack: Callable[..., bytes] = struct.Struct(fmt).pack
        values[1] = mscc.flags | struct.calcsize(fmt)
        self.template = values


class _Grouped:
    """The header of one Grouped AVP (its members are padded already: no padding after)."""

    __slots__ = ("code", "flags")

    def __init__(self, avps: AvpFactory, name: str) -> None:
        definition, flags = avps.definition(name)
        assert definition.type is AvpType.GROUPED and not definition.vendor_id
        self.code = definition.code
        self.flags = (flags & ~AVP_FLAG_VENDOR) << 24

    def wrap(self, members: bytes) -> bytes:
        return _pack_avp_header(self.code, self.flags | (8 + len(members))) + members


class AnswerWriter:
    """The AVPs of a CCA (everything after its header) as bytes, for one AvpFactory."""

    def __init__(self, avps: AvpFactory) -> None:
        self.avps = avps
        self._heads: dict[int, bytes] = {}  # Result-Code, Origin-Host, Origin-Realm
        self._codes: dict[int, bytes] = {}  # Result-Code inside an MSCC
        self._mscc = _Grouped(avps, "Multiple-Services-Credit-Control")
        self._gsu = _Grouped(avps, "Granted-Service-Unit")
        self._grant = {unit: _Integer(avps, name) for unit, name in GRANT_AVP.items()}
        self._threshold = {unit: _Integer(avps, name) for unit, name in THRESHOLD_AVP.items()}
        self._rating_group = _Integer(avps, "Rating-Group")
        self._validity = _Integer(avps, "Validity-Time")
        self._result_code = _Integer(avps, "Result-Code")
        self._final: tuple[GyConfig, bytes] | None = None
        self._shapes: dict[int, _Shape] = {}
        self._units = {unit: i for i, unit in enumerate(Unit)}
        # Echoed integer AVPs as encoded, by (code, flags, value): Auth-Application-Id and
        # CC-Request-Type repeat, and so do the request numbers sessions share.
        self._echoes: dict[tuple[int, int, int], bytes] = {}

    def body(
        self, echo: Echo, result_code: int, outcomes: Sequence[Outcome], config: GyConfig
    ) -> bytes | None:
        """The answer's AVPs in the order credit_control_answer and add_outcomes put them,
        or None when an outcome needs the generic path."""
        parts: list[bytes] = []
        if echo.session is not None:
            parts.append(encode_avp(echo.session))
        head = self._heads.get(result_code)
        if head is None:
            head = self._heads[result_code] = self._result_code.pack(result_code) + b"".join(
                encode_avp(avp) for avp in self.avps.origin
            )
        parts.append(head)
        for avp in echo.echoed:
            parts.append(self._echo(avp))
        try:
            for o in outcomes:
                mscc = self._service(o, config)
                if mscc is None:
                    return None
                parts.append(mscc)
        except struct.error:
            return None  # a value out of range: the generic path says which
        return b"".join(parts)

    def _echo(self, avp: Avp) -> bytes:
        """An echoed request AVP: an integer one encoded once (about 1,200 instructions each
        time), up to ECHOES_KEPT_MAX of them; the rest as they come."""
        value = avp.value
        if type(value) is not int or avp.vendor_id:
            return encode_avp(avp)
        key = (avp.code, avp.flags, value)
        found = self._echoes.get(key)
        if found is None:
            found = encode_avp(avp)
            if len(self._echoes) < ECHOES_KEPT_MAX:
                self._echoes[key] = found
        return found

    def _service(self, o: Outcome, config: GyConfig) -> bytes | None:
        """One MSCC, members in the order of gy_answer._mscc."""
        ask = o.ask
        if not ask.in_mscc:
            return None
        if not ask.service_identifiers and not o.final:
            return self._shaped(o, config)
        members: list[bytes] = []
        if o.granted_units or o.zero_grant:
            if ask.unit is Unit.MONEY:
                return None
            members.append(self._gsu.wrap(self._grant[ask.unit].pack(_granted(o))))
        for avp in ask.service_identifiers:
            members.append(encode_avp(avp))
        if ask.rating_group is not None:
            members.append(self._rating_group.pack(ask.rating_group))
        if o.validity_s is not None:
            members.append(self._validity.pack(min(o.validity_s, UINT32_MAX)))
        code = self._codes.get(o.result_code)
        if code is None:
            code = self._codes[o.result_code] = self._result_code.pack(o.result_code)
        members.append(code)
        if o.final:
            members.append(self._final_unit_indication(config))
        threshold = _threshold(o, config)
        if threshold:
            members.append(self._threshold[ask.unit].pack(threshold))
        return self._mscc.wrap(b"".join(members))

    def _shaped(self, o: Outcome, config: GyConfig) -> bytes | None:
        """The common MSCC (integers only), by one struct call for its shape."""
        ask = o.ask
        unit = ask.unit
        has_grant = bool(o.granted_units or o.zero_grant)
        if has_grant and unit is Unit.MONEY:
            return None
        threshold_value = _threshold(o, config)
        key = self._units[unit] << 4
        if has_grant:
            key |= 1
        if ask.rating_group is not None:
            key |= 2
        if o.validity_s is not None:
            key |= 4
        if threshold_value:
            key |= 8
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(
                self._mscc,
                self._gsu,
                self._grant[unit] if has_grant else None,
                self._rating_group if ask.rating_group is not None else None,
                self._validity if o.validity_s is not None else None,
                self._result_code,
                self._threshold[unit] if threshold_value else None,
            )
        values = shape.template.copy()
        if shape.grant_at >= 0:
            values[shape.grant_at] = _granted(o)
        if ask.rating_group is not None:
            values[shape.rating_group_at] = ask.rating_group
        if o.validity_s is not None:
            values[shape.validity_at] = min(o.validity_s, UINT32_MAX)
        values[shape.code_at] = o.result_code
        if threshold_value:
            values[shape.threshold_at] = threshold_value
        return shape.pack(*values)

    def _final_unit_indication(self, config: GyConfig) -> bytes:
        final = self._final
        if final is None or final[0] is not config:
            avp = self.avps("Final-Unit-Indication", final_unit_indication(config, self.avps))
            final = self._final = (config, encode_avp(avp))
        return final[1]


def _granted(o: Outcome) -> int:
    """The units its Granted-Service-Unit says (gy_answer.granted_service_unit's rule)."""
    if o.ask.unit is Unit.SECONDS:
        return min(o.granted_units, UINT32_MAX)  # CC-Time is Unsigned32
    return o.granted_units


def _threshold(o: Outcome, config: GyConfig) -> int:
    """The quota threshold its MSCC carries, 0 for none (gy_answer._units's rule)."""
    percent = config.quota_threshold_percent
    if not percent or not o.granted_units or o.final or o.ask.unit not in THRESHOLD_AVP:
        return 0
    return min(o.granted_units * percent // 100, UINT32_MAX)
