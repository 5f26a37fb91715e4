"""Answer builders: what an answer takes from its request."""

from __future__ import annotations

import pytest

from quotaflow.diameter import CcRequestType, Message, decode_message, encode_message, make_answer
from quotaflow.diameter.messages import answer_basis, normalize_answer

from .helpers import open5gs_like_ccr

OCS_HOST, OCS_REALM = "ocs.quotaflow.local", "quotaflow.local"


def _received(request: Message) -> Message:
    """The request as the server sees it: decoded from the wire, definitions attached."""
    request.hop_by_hop, request.end_to_end = 0x1234, 0x5678
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
