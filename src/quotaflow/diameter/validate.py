"""Strict checks of a received message, in the order RFC 6733 implies: header and command
(3xxx protocol errors), then AVP decoding (5001/5004/5014), then grammar (5005/5009/5008)."""

from __future__ import annotations

from quotaflow.diameter._values import zero_payload
from quotaflow.diameter.codec import check_header_bits, decode_body, decode_header
from quotaflow.diameter.constants import (
    AVP_FLAG_MANDATORY,
    AVP_FLAG_VENDOR,
    FLAG_ERROR,
    FLAG_PROXIABLE,
    FLAG_REQUEST,
    ResultCode,
)
from quotaflow.diameter.dictionary import CommandDef, Dictionary, Grammar, default_dictionary
from quotaflow.diameter.errors import DiameterError
from quotaflow.diameter.message import Avp, Header, Message


def parse_message(data: bytes, dictionary: Dictionary | None = None) -> Message:
    """Decode and fully validate one frame; raises DiameterError/FramingError only."""
    dictionary = dictionary if dictionary is not None else default_dictionary()
    if type(data) is not bytes:  # a bytearray or memoryview: its own copy (bytes() of bytes
        data = bytes(data)  # is the same object, but the call alone was 900 instructions)
    header = decode_header(data)
    check_header_bits(header)
    command = check_command(header, dictionary)
    message = decode_body(data, header, dictionary)
    try:
        check_avps(message.avps, grammar_for(command, header.flags, dictionary), dictionary)
    except DiameterError as error:
        error.header = header
        raise
    return message


def check_command(header: Header, dictionary: Dictionary) -> CommandDef:
    """The command definition for a header, or 3007/3001/3008."""
    if header.application_id not in dictionary.applications:
        raise DiameterError(
            ResultCode.APPLICATION_UNSUPPORTED,
            f"application {header.application_id} not supported",
            header=header,
        )
    command = dictionary.command(header.command_code, header.application_id)
    if command is None:
        raise DiameterError(
            ResultCode.COMMAND_UNSUPPORTED,
            f"command {header.command_code} not supported in application {header.application_id}",
            header=header,
        )
    is_request = bool(header.flags & FLAG_REQUEST)
    if is_request and header.flags & FLAG_ERROR:
        raise DiameterError(ResultCode.INVALID_HDR_BITS, "E bit set on a request", header=header)
    if header.flags & FLAG_PROXIABLE and not command.proxiable:
        # A missing P bit on a proxiable command is tolerated; a P bit on a peer-local one
        # (CER, DWR, DPR) contradicts the command definition.
        raise DiameterError(
            ResultCode.INVALID_HDR_BITS, f"P bit set on {command.request_abbrev}", header=header
        )
    return command


def grammar_for(command: CommandDef, flags: int, dictionary: Dictionary) -> Grammar:
    if flags & FLAG_REQUEST:
        return command.request
    if flags & FLAG_ERROR:
        return dictionary.error_answer
    return command.answer


def check_avps(avps: list[Avp], grammar: Grammar, dictionary: Dictionary) -> None:
    """Occurrence rules of `grammar` over `avps`, recursing into Grouped members."""
    # Occurrences by the rule's position: a list, not a dict by name (two dict operations per
    # AVP received were a third of this check). Only AVPs with a rule are ever counted.
    counts = [0] * len(grammar.rules)
    index = grammar.index
    grouped: list[Avp] = []  # a list, not None: compiled code appends to a list natively
    for avp in avps:
        definition = avp.definition
        if definition is None:
            continue
        rule = index.get(definition.name)
        if rule is None:
            if not grammar.open:
                raise DiameterError(
                    ResultCode.AVP_NOT_ALLOWED,
                    f"{definition.name} not allowed here",
                    failed_avps=[avp],
                )
        else:
            count = counts[rule.position] + 1
            counts[rule.position] = count
            if rule.max_count is not None and count > rule.max_count:
                raise DiameterError(
                    ResultCode.AVP_OCCURS_TOO_MANY_TIMES,
                    f"{definition.name} occurs more than {rule.max_count} time(s)",
                    failed_avps=[avp],
                )
        if definition.grammar is not None and not definition.opaque:
            grouped.append(avp)
    for rule in grammar.required:
        if counts[rule.position] < rule.min_count:
            raise DiameterError(
                ResultCode.MISSING_AVP,
                f"missing {rule.name}",
                failed_avps=[_missing_example(dictionary, rule.name)],
            )
    for avp in grouped:
        definition = avp.definition
        assert definition is not None and definition.grammar is not None
        if not isinstance(avp.value, list):
            continue
        try:
            check_avps(avp.value, definition.grammar, dictionary)
        except DiameterError as error:
            error.failed_avps = [Avp(avp.code, error.failed_avps, avp.vendor_id, avp.flags)]
            raise


def _missing_example(dictionary: Dictionary, name: str) -> Avp:
    """RFC 6733 7.5: the missing AVP with its Vendor-Id and a zero value of minimum size."""
    definition = dictionary.avp(name)
    flags = AVP_FLAG_MANDATORY | (AVP_FLAG_VENDOR if definition.vendor_id else 0)
    return Avp(definition.code, zero_payload(definition), definition.vendor_id, flags)
