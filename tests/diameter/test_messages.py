"""Answer builders: what an answer takes from its request."""

from __future__ import annotations

import pytest

from quotaflow.diameter import (
    AvpType,
    CcRequestType,
    Message,
    decode_message,
    encode_message,
    make_answer,
)
from quotaflow.diameter.dictionary import AvpSpec, CommandSpec, Dictionary
from quotaflow.diameter.messages import answer_basis, normalize_answer

from .helpers import open5gs_like_ccr

OCS_HOST, OCS_REALM = "ocs.quotaflow.local", "quotaflow.local"


def _received(request: Message) -> Message:
    """The request as the server sees it: decoded from the wire, definitions attached. It came
    through a relay (Proxy-Info): should make_answer come to copy that, so must the basis."""
    request.hop_by_hop, request.end_to_end = 0x1234, 0x5678
    request.add("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": b"\x01\x02"})
    return decode_message(encode_message(request))


@pytest.mark.parametrize("code", [2001, 4012, 5030, 3004, 5012])
def test_an_answer_built_from_the_basis_is_the_one_built_from_the_request(code: int) -> None:
    """The basis keeps what make_answer copies (ids, flags, Session-Id, the CCA's required
    echoes), so an answer built from it has the same bytes, E bit (3004) or not; and it drops
    the rest, the grouped AVPs above all."""
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 7, used_octets=1_000))
    basis = answer_basis(request)
    assert [avp.name for avp in basis.avps] == [
        "Session-Id",
        "Auth-Application-Id",
        "CC-Request-Type",
        "CC-Request-Number",
    ]
    assert len(request.avps) > len(basis.avps) + 4
    assert request.find("Multiple-Services-Credit-Control") is not None
    assert basis.find("Multiple-Services-Credit-Control") is None
    from_request = make_answer(request, code, OCS_HOST, OCS_REALM, error_message="why")
    from_basis = make_answer(basis, code, OCS_HOST, OCS_REALM, error_message="why")
    assert encode_message(from_basis) == encode_message(from_request)
    assert from_basis.get("CC-Request-Number") == (None if code == 3004 else 7)


def test_normalizing_against_the_basis_is_normalizing_against_the_request() -> None:
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 3, used_octets=1_000))
    answers = []
    for source in (request, answer_basis(request)):
        answer = Message(request.command_code, request.application_id)
        answer.add("Result-Code", 2001)  # no Session-Id, Origin-Host or -Realm: added
        normalize_answer(source, answer, OCS_HOST, OCS_REALM)
        answers.append(encode_message(answer))
    assert answers[0] == answers[1]
    assert decode_message(answers[0]).session_id == request.session_id


def test_the_basis_of_a_command_the_dictionary_lacks_keeps_its_session_id() -> None:
    request = Message(999, 16777238, flags=0x80, hop_by_hop=5, end_to_end=6)
    request.add("Session-Id", "pgw;1;2")
    request.add("Origin-Host", "pgw.test")
    request = decode_message(encode_message(request))
    basis = answer_basis(request)
    assert [avp.name for avp in basis.avps] == ["Session-Id"]
    assert (basis.command_code, basis.flags, basis.hop_by_hop, basis.end_to_end) == (
        999,
        0x80,
        5,
        6,
    )
    assert encode_message(make_answer(basis, 3001, OCS_HOST, OCS_REALM)) == encode_message(
        make_answer(request, 3001, OCS_HOST, OCS_REALM)
    )


def test_an_avp_the_answer_requires_counts_once_the_dictionary_defines_it() -> None:
    """The basis's list of what an answer copies is kept per command; an AVP the answer's
    grammar names but the dictionary defines only later (add_avps) is kept from then on."""
    dictionary = Dictionary()
    dictionary.add_avps(
        [
            AvpSpec(263, "Session-Id", AvpType.UTF8_STRING),
            AvpSpec(264, "Origin-Host", AvpType.DIAMETER_IDENTITY),
            AvpSpec(268, "Result-Code", AvpType.UNSIGNED32),
            AvpSpec(296, "Origin-Realm", AvpType.DIAMETER_IDENTITY),
        ]
    )
    dictionary.add_commands(
        [
            CommandSpec(
                9000, "Probe", 5, "PRQ", "PRA", "< Session-Id > { Ticket }", "{ Ticket }", False
            )
        ]
    )

    def probe() -> Message:
        request = Message(9000, 5, flags=0x80, dictionary=dictionary)
        request.add("Session-Id", "pgw;1;2")
        if "Ticket" in dictionary.by_name:
            request.add("Ticket", 7)
        return decode_message(encode_message(request), dictionary)

    assert [avp.name for avp in answer_basis(probe()).avps] == ["Session-Id"]
    dictionary.add_avps([AvpSpec(9001, "Ticket", AvpType.UNSIGNED32)])
    request = probe()
    basis = answer_basis(request)
    assert [avp.name for avp in basis.avps] == ["Session-Id", "Ticket"]
    assert make_answer(basis, 2001, OCS_HOST, OCS_REALM).get("Ticket") == 7
