"""Builders for the messages both ends need: answers, CER, DWR, DPR, CCR, RAR, ASR."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from quotaflow.diameter.constants import (
    APPLICATION_COMMON,
    APPLICATION_CREDIT_CONTROL,
    AVP_ORIGIN_HOST,
    AVP_ORIGIN_REALM,
    AVP_PROXY_HOST,
    AVP_PROXY_INFO,
    AVP_PROXY_STATE,
    AVP_SESSION_ID,
    FLAG_ERROR,
    FLAG_PROXIABLE,
    CommandCode,
    is_protocol_error,
)
from quotaflow.diameter.dictionary import VENDOR_3GPP, CommandDef, Rule
from quotaflow.diameter.message import Avp, BuildValue, IPAddress, Message

# Avoid Session-Id collisions across restarts: RFC 6733 8.8 suggests a high part from boot time.
_SESSION_HIGH: Final = int.from_bytes(os.urandom(4), "big")
_session_counter = itertools.count(1)

# AVPs every answer starts with, in this order (Session-Id first: freeDiameter insists).
_ANSWER_HEAD: Final = ("Session-Id", "Result-Code", "Origin-Host", "Origin-Realm")


def new_session_id(origin_host: str, optional: str | None = None) -> str:
    """`<DiameterIdentity>;<high 32 bits>;<low 32 bits>[;<optional>]` (RFC 6733 8.8)."""
    low = next(_session_counter) & 0xFFFFFFFF
    session_id = f"{origin_host};{_SESSION_HIGH};{low}"
    return f"{session_id};{optional}" if optional else session_id


def make_answer(
    request: Message,
    result_code: int,
    origin_host: str,
    origin_realm: str,
    *,
    error_message: str | None = None,
    failed_avps: Sequence[Avp] = (),
    echo_required: bool = True,
) -> Message:
    """The answer skeleton: same command, application, ids and P bit; E bit for 3xxx.

    `echo_required` copies from the request the AVPs the answer grammar requires (e.g. CCA's
    Auth-Application-Id, CC-Request-Type, CC-Request-Number) so error answers still pass
    strict peers such as freeDiameter. The request's Proxy-Info AVPs follow, in their order.
    """
    flags = request.flags & FLAG_PROXIABLE
    if is_protocol_error(result_code):
        flags |= FLAG_ERROR
    answer = Message(
        request.command_code,
        request.application_id,
        flags=flags,
        hop_by_hop=request.hop_by_hop,
        end_to_end=request.end_to_end,
        dictionary=request.dictionary,
    )
    session = request.find("Session-Id")
    if session is not None:
        answer.avps.append(session)
    answer.add("Result-Code", result_code)
    answer.add("Origin-Host", origin_host)
    answer.add("Origin-Realm", origin_realm)
    if echo_required and not answer.is_error:
        for rule in _echoed_rules(request.command):
            answer.avps.extend(request.find_all(rule.name)[: rule.max_count])
    # Error answers too (RFC 6733 6.2, 7.2): each proxy on the way back finds its state here.
    answer.avps.extend(proxy_infos(request))
    if error_message:
        answer.add("Error-Message", error_message)
    if failed_avps:
        answer.add("Failed-AVP", list(failed_avps))
    return answer


def _echoed_rules(command: CommandDef | None) -> list[Rule]:
    """The rules of `command`'s answer whose AVPs make_answer copies from the request: the
    required ones past the answer's own head (none for a command the dictionary lacks)."""
    if command is None:
        return []
    return [rule for rule in command.answer.required if rule.name not in _ANSWER_HEAD]


def proxy_infos(message: Message) -> list[Avp]:
    """The message's top-level Proxy-Info AVPs, in their order, that have the one Proxy-Host and
    one Proxy-State their grammar requires. A malformed one gets its request a 5005 or 5009 that
    names it in Failed-AVP, and is not carried back: the answer would then fail the same check
    at every peer that reads it (our own client drops such an answer)."""
    return [
        avp
        for avp in message.avps
        if avp.code == AVP_PROXY_INFO and not avp.vendor_id and _well_formed_proxy_info(avp)
    ]


def _well_formed_proxy_info(info: Avp) -> bool:
    children = info.value
    if not isinstance(children, list):
        return False
    hosts = states = 0
    for child in children:
        if not child.vendor_id:
            if child.code == AVP_PROXY_HOST:
                hosts += 1
            elif child.code == AVP_PROXY_STATE:
                states += 1
    return hosts == 1 and states == 1


def with_proxy_info(answer: Message, request: Message) -> Message:
    """`answer` carrying `request`'s Proxy-Info in place of its own, for an answer made for
    another request: a retransmission's copy of the first answer. The copy may come through
    other proxies, or with other state in them, and each proxy finds its own state in the
    answer (RFC 6733 6.2). Unsealed when they differ, so that the transport encodes it again:
    `answer.avps` must then hold all of its AVPs (decoded from its frame, or never sealed),
    not only the head a sealed answer may keep (Message.avps_wire)."""
    theirs = proxy_infos(request)
    if proxy_infos(answer) == theirs:
        return answer
    avps: list[Avp] = []
    for avp in answer.avps:
        if avp.code == AVP_PROXY_INFO and not avp.vendor_id:
            avps += theirs  # where the first answer had its own
            theirs = []
        else:
            avps.append(avp)
    answer.avps = avps + theirs
    answer.avps_wire = None
    return answer


def normalize_answer(
    request: Message, answer: Message, origin_host: str, origin_realm: str
) -> None:
    """Make an application's answer safe to send: ids echoed, R cleared, P copied, Session-Id
    first, Origin-Host/Origin-Realm present, the request's Proxy-Info carried back."""
    answer.hop_by_hop = request.hop_by_hop
    answer.end_to_end = request.end_to_end
    answer.command_code = request.command_code
    answer.flags = (answer.flags & FLAG_ERROR) | (request.flags & FLAG_PROXIABLE)
    if answer.avps_wire is not None:
        return  # sealed: its AVPs were put in shape before they were encoded
    # One pass by code (this runs for every answer); answers built by make_answer or the Gy
    # application are already in shape and are left as they are.
    sessions = 0
    has_host = has_realm = has_proxy_info = False
    for avp in answer.avps:
        if not avp.vendor_id:
            code = avp.code
            if code == AVP_SESSION_ID:
                sessions += 1
            elif code == AVP_ORIGIN_HOST:
                has_host = True
            elif code == AVP_ORIGIN_REALM:
                has_realm = True
            elif code == AVP_PROXY_INFO:
                has_proxy_info = True
    first = answer.avps[0] if answer.avps else None
    if sessions > 1 or (
        sessions == 1 and (first is None or first.code != AVP_SESSION_ID or first.vendor_id)
    ):
        found = [avp for avp in answer.avps if avp.code == AVP_SESSION_ID and avp.vendor_id == 0]
        rest = [
            avp for avp in answer.avps if not (avp.code == AVP_SESSION_ID and avp.vendor_id == 0)
        ]
        answer.avps = found[:1] + rest
    elif not sessions:
        session = request.find("Session-Id")
        if session is not None:
            answer.avps.insert(0, session)
    if not has_host:
        answer.add("Origin-Host", origin_host)
    if not has_realm:
        answer.add("Origin-Realm", origin_realm)
    if not has_proxy_info:
        answer.avps.extend(proxy_infos(request))


def build_capabilities(
    *,
    request: Message | None,
    result_code: int | None,
    origin_host: str,
    origin_realm: str,
    host_ip_addresses: Iterable[IPAddress],
    vendor_id: int,
    product_name: str,
    origin_state_id: int,
    auth_application_ids: Iterable[int],
    supported_vendor_ids: Iterable[int] = (VENDOR_3GPP,),
    vendor_specific_ids: Iterable[tuple[int, int]] = (),
    firmware_revision: int | None = None,
) -> Message:
    """A CER (request None) or the CEA answering `request`."""
    if request is None:
        message = Message.request(CommandCode.CAPABILITIES_EXCHANGE, APPLICATION_COMMON)
    else:
        assert result_code is not None
        message = make_answer(request, result_code, origin_host, origin_realm, echo_required=False)
    if request is None:
        message.add("Origin-Host", origin_host)
        message.add("Origin-Realm", origin_realm)
    for address in host_ip_addresses:
        message.add("Host-IP-Address", address)
    message.add("Vendor-Id", vendor_id)
    message.add("Product-Name", product_name)
    message.add("Origin-State-Id", origin_state_id)
    for supported in supported_vendor_ids:
        message.add("Supported-Vendor-Id", supported)
    for application_id in auth_application_ids:
        message.add("Auth-Application-Id", application_id)
    for vsa_vendor, vsa_application in vendor_specific_ids:
        message.add(
            "Vendor-Specific-Application-Id",
            {"Vendor-Id": vsa_vendor, "Auth-Application-Id": vsa_application},
        )
    if firmware_revision is not None:
        message.add("Firmware-Revision", firmware_revision)
    return message


def build_dwr(origin_host: str, origin_realm: str, origin_state_id: int) -> Message:
    return Message.request(
        CommandCode.DEVICE_WATCHDOG,
        APPLICATION_COMMON,
        [
            ("Origin-Host", origin_host),
            ("Origin-Realm", origin_realm),
            ("Origin-State-Id", origin_state_id),
        ],
    )


def build_dpr(origin_host: str, origin_realm: str, cause: int) -> Message:
    return Message.request(
        CommandCode.DISCONNECT_PEER,
        APPLICATION_COMMON,
        [("Origin-Host", origin_host), ("Origin-Realm", origin_realm), ("Disconnect-Cause", cause)],
    )


def build_ccr(
    *,
    session_id: str,
    origin_host: str,
    origin_realm: str,
    destination_realm: str,
    request_type: int,
    request_number: int,
    service_context_id: str = "32251@3gpp.org",
    extra: Mapping[str, BuildValue] | Sequence[tuple[str, BuildValue]] = (),
) -> Message:
    """A Credit-Control-Request with the mandatory AVPs, then `extra` (e.g. Subscription-Id,
    Multiple-Services-Credit-Control) in the order given."""
    message = Message.request(
        CommandCode.CREDIT_CONTROL,
        APPLICATION_CREDIT_CONTROL,
        [
            ("Session-Id", session_id),
            ("Origin-Host", origin_host),
            ("Origin-Realm", origin_realm),
            ("Destination-Realm", destination_realm),
            ("Auth-Application-Id", APPLICATION_CREDIT_CONTROL),
            ("Service-Context-Id", service_context_id),
            ("CC-Request-Type", request_type),
            ("CC-Request-Number", request_number),
        ],
    )
    message.extend(extra)
    return message


def build_rar(
    *,
    session_id: str,
    origin_host: str,
    origin_realm: str,
    destination_host: str,
    destination_realm: str,
    re_auth_request_type: int = 0,
    extra: Mapping[str, BuildValue] | Sequence[tuple[str, BuildValue]] = (),
) -> Message:
    """A Re-Auth-Request (RFC 4006 5.5): the client should send a CCR-U soon."""
    message = Message.request(
        CommandCode.RE_AUTH,
        APPLICATION_CREDIT_CONTROL,
        [
            ("Session-Id", session_id),
            ("Origin-Host", origin_host),
            ("Origin-Realm", origin_realm),
            ("Destination-Realm", destination_realm),
            ("Destination-Host", destination_host),
            ("Auth-Application-Id", APPLICATION_CREDIT_CONTROL),
            ("Re-Auth-Request-Type", re_auth_request_type),
        ],
    )
    message.extend(extra)
    return message


def build_asr(
    *,
    session_id: str,
    origin_host: str,
    origin_realm: str,
    destination_host: str,
    destination_realm: str,
    extra: Mapping[str, BuildValue] | Sequence[tuple[str, BuildValue]] = (),
) -> Message:
    """An Abort-Session-Request: the client should end the session (with a CCR-T)."""
    message = Message.request(
        CommandCode.ABORT_SESSION,
        APPLICATION_CREDIT_CONTROL,
        [
            ("Session-Id", session_id),
            ("Origin-Host", origin_host),
            ("Origin-Realm", origin_realm),
            ("Destination-Realm", destination_realm),
            ("Destination-Host", destination_host),
            ("Auth-Application-Id", APPLICATION_CREDIT_CONTROL),
        ],
    )
    message.extend(extra)
    return message
