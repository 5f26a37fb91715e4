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
from quotaflow.diameter.gy import Ccr
from quotaflow.diameter.gy_answer import ECHOED
from quotaflow.diameter.messages import _echoed_rules, normalize_answer, with_proxy_info

from .helpers import open5gs_like_ccr

OCS_HOST, OCS_REALM = "ocs.quotaflow.local", "quotaflow.local"


def _received(request: Message, *states: bytes) -> Message:
    """The request as the server sees it: decoded from the wire, definitions attached. It came
    through proxies, one Proxy-Info each (by default two)."""
    request.hop_by_hop, request.end_to_end = 0x1234, 0x5678
    for state in states or (b"\x01\x02", b"\x03"):
        request.add("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": state})
    return decode_message(encode_message(request))


def _proxy_states(message: Message) -> list[bytes]:
    states = []
    for avp in message.avps:
        if avp.name == "Proxy-Info":
            assert isinstance(avp.value, list)
            [state] = [m.value for m in avp.value if m.name == "Proxy-State"]
            assert isinstance(state, bytes)
            states.append(state)
    return states


@pytest.mark.parametrize("code", [2001, 4012, 5030, 3004, 5012])
def test_an_answer_carries_the_request_s_proxy_info_in_order(code: int) -> None:
    """RFC 6733 6.2: error answers (E bit, 3004) too, where nothing else is copied."""
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 7), b"first", b"second")
    answer = decode_message(encode_message(make_answer(request, code, OCS_HOST, OCS_REALM)))
    assert _proxy_states(answer) == [b"first", b"second"]
    assert answer.get("CC-Request-Number") == (None if code == 3004 else 7)
    plain = decode_message(encode_message(open5gs_like_ccr(CcRequestType.UPDATE, 7)))
    assert _proxy_states(make_answer(plain, code, OCS_HOST, OCS_REALM)) == []


@pytest.mark.parametrize("code", [2001, 4012, 5030, 3004, 5012])
def test_an_answer_built_from_the_basis_is_the_one_built_from_the_request(code: int) -> None:
    """The basis a CCR-U's waiting answer holds (Ccr.basis) keeps what make_answer copies (ids,
    flags, Session-Id, the CCA's required echoes, Proxy-Info), so an answer built from it has
    the same bytes, E bit (3004) or not; and it drops the rest, the grouped AVPs above all."""
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 7, used_octets=1_000))
    basis = Ccr.read(request).basis()
    assert [avp.name for avp in basis.avps] == [
        "Session-Id",
        "Auth-Application-Id",
        "CC-Request-Type",
        "CC-Request-Number",
        "Proxy-Info",
        "Proxy-Info",
    ]
    assert (basis.command_code, basis.flags, basis.hop_by_hop, basis.end_to_end) == (
        request.command_code,
        request.flags,
        0x1234,
        0x5678,
    )
    assert len(request.avps) > len(basis.avps) + 4
    assert request.find("Multiple-Services-Credit-Control") is not None
    assert basis.find("Multiple-Services-Credit-Control") is None
    from_request = make_answer(request, code, OCS_HOST, OCS_REALM, error_message="why")
    from_basis = make_answer(basis, code, OCS_HOST, OCS_REALM, error_message="why")
    assert encode_message(from_basis) == encode_message(from_request)
    assert from_basis.get("CC-Request-Number") == (None if code == 3004 else 7)


def test_what_a_cca_copies_is_what_ccr_basis_keeps() -> None:
    """Ccr.basis keeps the AVPs Gy echoes (ECHOED), not the dictionary's list: they must be
    the ones the CCA's grammar makes make_answer copy."""
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 7))
    names = [rule.name for rule in _echoed_rules(request.command)]
    assert names == ["Auth-Application-Id", "CC-Request-Type", "CC-Request-Number"]
    assert [request.dictionary.by_name[n].code for n in names] == list(ECHOED)


def test_normalizing_against_the_basis_is_normalizing_against_the_request() -> None:
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 3, used_octets=1_000))
    answers = []
    for source in (request, Ccr.read(request).basis()):
        answer = Message(request.command_code, request.application_id)
        answer.add("Result-Code", 2001)  # no Session-Id, Origin-Host, -Realm, Proxy-Info: added
        normalize_answer(source, answer, OCS_HOST, OCS_REALM)
        answers.append(encode_message(answer))
    assert answers[0] == answers[1]
    assert decode_message(answers[0]).session_id == request.session_id
    assert _proxy_states(decode_message(answers[0])) == [b"\x01\x02", b"\x03"]


def test_normalizing_leaves_an_answer_s_own_proxy_info() -> None:
    request = _received(open5gs_like_ccr(CcRequestType.UPDATE, 3), b"mine")
    answer = make_answer(request, 2001, OCS_HOST, OCS_REALM)
    normalize_answer(request, answer, OCS_HOST, OCS_REALM)
    assert _proxy_states(answer) == [b"mine"]


def test_a_copy_s_answer_carries_the_copy_s_proxy_info() -> None:
    """A retransmission answered with the first answer's frame: through other proxies, or
    with other state, it gets its own Proxy-Info, the rest unchanged; with the same, the
    sealed answer is left as it is."""
    first = _received(open5gs_like_ccr(CcRequestType.UPDATE, 3), b"a", b"b")
    sealed = make_answer(first, 5030, OCS_HOST, OCS_REALM, error_message="who")  # not last
    frame = encode_message(sealed)
    sealed.avps_wire = frame[20:]

    same = with_proxy_info(sealed, _received(open5gs_like_ccr(CcRequestType.UPDATE, 3), b"a", b"b"))
    assert same is sealed and same.avps_wire == frame[20:]

    copy = _received(open5gs_like_ccr(CcRequestType.UPDATE, 3), b"c")
    answer = with_proxy_info(decode_message(frame), copy)
    assert answer.avps_wire is None and _proxy_states(answer) == [b"c"]
    rest = [avp for avp in answer.avps if avp.name != "Proxy-Info"]
    assert rest == [avp for avp in decode_message(frame).avps if avp.name != "Proxy-Info"]
    # Where the first answer had its own (before Error-Message).
    names = [avp.name for avp in answer.avps]
    assert names[-1] == "Error-Message"
    assert names.index("Proxy-Info") == [a.name for a in decode_message(frame).avps].index(
        "Proxy-Info"
    )

    direct = decode_message(encode_message(open5gs_like_ccr(CcRequestType.UPDATE, 3)))
    assert _proxy_states(with_proxy_info(decode_message(frame), direct)) == []


def test_a_command_the_dictionary_lacks_is_answered_with_its_session_id_and_proxy_info() -> None:
    request = Message(999, 16777238, flags=0x80, hop_by_hop=5, end_to_end=6)
    request.add("Session-Id", "pgw;1;2")
    request.add("Origin-Host", "pgw.test")
    request.add("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": b"s"})
    request = decode_message(encode_message(request))
    answer = make_answer(request, 3001, OCS_HOST, OCS_REALM)
    assert [avp.name for avp in answer.avps] == [
        "Session-Id",
        "Result-Code",
        "Origin-Host",
        "Origin-Realm",
        "Proxy-Info",
    ]
    assert (answer.hop_by_hop, answer.end_to_end, answer.is_error) == (5, 6, True)


def test_an_avp_the_answer_requires_is_copied_once_the_dictionary_defines_it() -> None:
    """An AVP the answer's grammar names but the dictionary defines only later (add_avps) is
    copied from then on."""
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

    answer = make_answer(probe(), 2001, OCS_HOST, OCS_REALM)
    assert [avp.name for avp in answer.avps] == [
        "Session-Id",
        "Result-Code",
        "Origin-Host",
        "Origin-Realm",
    ]
    dictionary.add_avps([AvpSpec(9001, "Ticket", AvpType.UNSIGNED32)])
    assert make_answer(probe(), 2001, OCS_HOST, OCS_REALM).get("Ticket") == 7


@pytest.mark.parametrize(
    "broken",
    [
        {"Proxy-Host": "relay.test"},  # no Proxy-State
        {"Proxy-State": b"\x09"},  # no Proxy-Host
        [("Proxy-Host", "relay.test"), ("Proxy-State", b"a"), ("Proxy-State", b"b")],
    ],
)
def test_a_malformed_proxy_info_is_not_carried_back(broken: object) -> None:
    """Its request is refused by the grammar check; the answer keeps the well-formed ones in
    their order, and so passes the same check at the peers that read it."""
    request = open5gs_like_ccr(CcRequestType.UPDATE, 7)
    request.add("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": b"first"})
    request.add("Proxy-Info", broken)  # type: ignore[arg-type]
    request.add("Proxy-Info", {"Proxy-Host": "relay.test", "Proxy-State": b"last"})
    received = decode_message(encode_message(request))
    answer = decode_message(encode_message(make_answer(received, 5005, OCS_HOST, OCS_REALM)))
    assert _proxy_states(answer) == [b"first", b"last"]
