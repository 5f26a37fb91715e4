"""The Diameter dictionary: which AVPs and commands exist, their types, flags and grammar.

The tables live in `_dict_base`, `_dict_cc` and `_dict_3gpp`; this module holds the types and
the lookup object. Grammars are written in the RFC's own ABNF shorthand (`<X>` fixed, `{X}`
required, `[X]` optional, `n*m` repetition, `*[AVP]` any other AVP) so the tables can be read
side by side with RFC 6733, RFC 4006 and TS 32.299.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

VENDOR_NONE: Final = 0
VENDOR_3GPP = 10415
VENDOR_3GPP2 = 5535

MBit = Literal["must", "may", "mustnot"]

# AVP nesting limit: Grouped AVPs deeper than this are refused (5004) so that a crafted
# frame cannot drive unbounded recursion.
GROUPED_DEPTH_MAX = 16


class AvpType(StrEnum):
    """Basic and derived AVP data formats of RFC 6733 section 4.2 and 4.3."""

    OCTET_STRING = "OctetString"
    INTEGER32 = "Integer32"
    INTEGER64 = "Integer64"
    UNSIGNED32 = "Unsigned32"
    UNSIGNED64 = "Unsigned64"
    FLOAT32 = "Float32"
    FLOAT64 = "Float64"
    GROUPED = "Grouped"
    ADDRESS = "Address"
    TIME = "Time"
    UTF8_STRING = "UTF8String"
    DIAMETER_IDENTITY = "DiameterIdentity"
    DIAMETER_URI = "DiameterURI"
    ENUMERATED = "Enumerated"
    IP_FILTER_RULE = "IPFilterRule"


# Data length each fixed-size type must have; a different length is DIAMETER_INVALID_AVP_LENGTH.
FIXED_SIZE_OCTETS: Mapping[AvpType, int] = {
    AvpType.INTEGER32: 4,
    AvpType.INTEGER64: 8,
    AvpType.UNSIGNED32: 4,
    AvpType.UNSIGNED64: 8,
    AvpType.FLOAT32: 4,
    AvpType.FLOAT64: 8,
    AvpType.TIME: 4,
    AvpType.ENUMERATED: 4,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of a grammar: an AVP name with its allowed number of occurrences."""

    name: str
    min_count: int
    max_count: int | None  # None: unbounded
    fixed_first: bool = False  # `< Session-Id >`: must come first in what we send
    position: int = 0  # its place in the grammar's rules: where check_avps counts it


@dataclass(frozen=True, slots=True)
class Grammar:
    """The ordered rules of a command or Grouped AVP; `open` when `*[AVP]` allows others."""

    rules: tuple[Rule, ...]
    open: bool
    # A dict, not a Mapping: compiled code then looks a name up natively, not by a method call
    # (once per AVP received).
    index: dict[str, Rule] = field(default_factory=dict, compare=False)
    # The rules with a minimum, checked for every message: most rules of a CCR have none.
    required: tuple[Rule, ...] = field(default=(), compare=False)

    def rule_for(self, name: str) -> Rule | None:
        return self.index.get(name)


@dataclass(frozen=True, slots=True)
class AvpDef:
    """Dictionary entry of one AVP."""

    code: int
    name: str
    type: AvpType
    vendor_id: int = VENDOR_NONE
    m_bit: MBit = "must"
    enum: Mapping[int, str] | None = None
    # Strict enums refuse unknown values (5004). 3GPP enums gain values every release, so
    # they are open: an unknown value is kept, not refused.
    enum_strict: bool = True
    grammar: Grammar | None = None
    # Failed-AVP carries whatever broke; its content is kept raw, never validated.
    opaque: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.code, self.vendor_id)

    @property
    def sets_m_bit(self) -> bool:
        return self.m_bit == "must"


@dataclass(frozen=True, slots=True)
class CommandDef:
    """Dictionary entry of one command (request and answer share the code)."""

    code: int
    name: str
    application_id: int
    request_abbrev: str
    answer_abbrev: str
    request: Grammar
    answer: Grammar
    proxiable: bool


# The generic answer of RFC 6733 section 7.2, used for answers with the E bit set.
ERROR_ANSWER_ABNF = (
    "0*1<Session-Id> {Origin-Host} {Origin-Realm} {Result-Code} [Origin-State-Id] [Error-Message]"
    " [Error-Reporting-Host] [Failed-AVP] [Experimental-Result] *[Proxy-Info] *[AVP]"
)

_TOKEN = re.compile(r"(\d*)\*?(\d*)\s*([<{\[])\s*([A-Za-z0-9][A-Za-z0-9_\-]*)\s*[>}\]]")


def parse_grammar(abnf: str) -> Grammar:
    """Parse RFC-style AVP grammar shorthand into a Grammar."""
    rules: list[Rule] = []
    is_open = False
    for match in _TOKEN.finditer(abnf):
        text = match.group(0)
        low, high, bracket, name = match.groups()
        if name == "AVP":
            is_open = True
            continue
        star = "*" in text.split(bracket)[0]
        required = bracket in "<{"
        min_count = int(low) if low else (1 if required else 0)
        if star:
            max_count: int | None = int(high) if high else None
        else:
            max_count = 1
        rules.append(Rule(name, min_count, max_count, bracket == "<", len(rules)))
    leftover = "".join(_TOKEN.sub(" ", abnf).split())
    assert not leftover, f"unparsed grammar text: {leftover!r}"
    assert len({rule.name for rule in rules}) == len(rules), f"a name twice in {abnf!r}"
    return Grammar(
        tuple(rules),
        is_open,
        {rule.name: rule for rule in rules},
        tuple(rule for rule in rules if rule.min_count),
    )


@dataclass(frozen=True, slots=True)
class AvpSpec:
    """Compact table row; becomes an AvpDef once the grammar text is parsed."""

    code: int
    name: str
    type: AvpType
    vendor_id: int = VENDOR_NONE
    m_bit: MBit = "must"
    enum: Mapping[int, str] | None = None
    abnf: str | None = None
    opaque: bool = False


@dataclass(frozen=True, slots=True)
class CommandSpec:
    code: int
    name: str
    application_id: int
    request_abbrev: str
    answer_abbrev: str
    request_abnf: str
    answer_abnf: str
    proxiable: bool


@dataclass
class Dictionary:
    """Lookup tables for AVPs (by name and by code+vendor) and commands (by code+app)."""

    avps: dict[tuple[int, int], AvpDef] = field(default_factory=dict)
    by_name: dict[str, AvpDef] = field(default_factory=dict)
    commands: dict[tuple[int, int], CommandDef] = field(default_factory=dict)
    applications: dict[int, str] = field(default_factory=dict)
    error_answer: Grammar = field(default_factory=lambda: parse_grammar(ERROR_ANSWER_ABNF))
    # The codec's per-AVP decoders, made from `avps` on first use (codec.py); reset on change.
    decoders: Any = field(default=None, repr=False, compare=False)

    def add_avps(self, specs: Iterable[AvpSpec]) -> None:
        self.decoders = None
        for spec in specs:
            enum_strict = spec.vendor_id == VENDOR_NONE
            grammar = parse_grammar(spec.abnf) if spec.abnf is not None else None
            assert (grammar is not None) == (spec.type is AvpType.GROUPED), spec.name
            assert spec.enum is None or spec.type is AvpType.ENUMERATED, spec.name
            definition = AvpDef(
                code=spec.code,
                name=spec.name,
                type=spec.type,
                vendor_id=spec.vendor_id,
                m_bit=spec.m_bit,
                enum=spec.enum,
                enum_strict=enum_strict and spec.enum is not None,
                grammar=grammar,
                opaque=spec.opaque,
            )
            assert definition.key not in self.avps, f"duplicate AVP {spec.name}"
            assert spec.name not in self.by_name, f"duplicate AVP name {spec.name}"
            self.avps[definition.key] = definition
            self.by_name[spec.name] = definition

    def add_commands(self, specs: Iterable[CommandSpec]) -> None:
        for spec in specs:
            command = CommandDef(
                code=spec.code,
                name=spec.name,
                application_id=spec.application_id,
                request_abbrev=spec.request_abbrev,
                answer_abbrev=spec.answer_abbrev,
                request=parse_grammar(spec.request_abnf),
                answer=parse_grammar(spec.answer_abnf),
                proxiable=spec.proxiable,
            )
            self.commands[(spec.code, spec.application_id)] = command

    def avp(self, name: str) -> AvpDef:
        """The definition named `name`; KeyError when the dictionary lacks it."""
        return self.by_name[name]

    def lookup(self, code: int, vendor_id: int) -> AvpDef | None:
        return self.avps.get((code, vendor_id))

    def command(self, code: int, application_id: int) -> CommandDef | None:
        return self.commands.get((code, application_id))

    def unresolved_names(self) -> list[str]:
        """Names used in a grammar without a definition (a table bug; checked in tests)."""
        grammars = [d.grammar for d in self.avps.values() if d.grammar is not None]
        for command in self.commands.values():
            grammars += [command.request, command.answer]
        names = {rule.name for grammar in grammars for rule in grammar.rules}
        return sorted(name for name in names if name not in self.by_name)


def _build_default() -> Dictionary:
    from quotaflow.diameter import _dict_3gpp, _dict_base, _dict_cc

    dictionary = Dictionary()
    for module in (_dict_base, _dict_cc, _dict_3gpp):
        dictionary.add_avps(module.AVPS)
        dictionary.add_commands(module.COMMANDS)
        dictionary.applications.update(module.APPLICATIONS)
    return dictionary


_DEFAULT: Dictionary | None = None


def default_dictionary() -> Dictionary:
    """Base + credit control + 3GPP Ro dictionary, built once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _build_default()
    return _DEFAULT
