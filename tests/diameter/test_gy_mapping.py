"""The pure parts of the Gy application: units, money, result codes, settings, the answer table."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quotaflow.diameter import Message, default_dictionary, gy_config
from quotaflow.diameter.codec import decode_header
from quotaflow.diameter.constants import FLAG_REQUEST, HEADER_OCTETS, ResultCode
from quotaflow.diameter.errors import GyRequestError
from quotaflow.diameter.gy_answer import AvpFactory, Outcome, command_result, money_value
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_mapping import (
    UNITS_KEPT_MAX,
    Reading,
    ServiceAsk,
    choose_unit,
    money_micros,
    result_code_for,
    unit_amounts,
)
from quotaflow.diameter.gy_retransmit import AnswerCache
from quotaflow.diameter.message import build_avp
from quotaflow.diameter.messages import normalize_answer
from quotaflow.ledger import (
    ChargingError,
    Conflict,
    InvalidAmount,
    LimitReached,
    NoCredit,
    SubscriberBarred,
    Unit,
    UnknownSession,
    UnknownSubscriber,
)
from quotaflow.store.base import StoreUnavailable

DICT = default_dictionary()


def test_units_named_by_a_request() -> None:
    rsu = build_avp(
        DICT, "Used-Service-Unit", {"CC-Input-Octets": 5, "CC-Output-Octets": 7, "CC-Time": 3}
    )
    assert unit_amounts(rsu, 978) == {Unit.OCTETS: 12, Unit.SECONDS: 3}
    rsu = build_avp(DICT, "Used-Service-Unit", {"CC-Total-Octets": 100, "CC-Input-Octets": 5})
    assert unit_amounts(rsu, 978) == {Unit.OCTETS: 100}  # the total wins
    assert unit_amounts(build_avp(DICT, "Requested-Service-Unit", {}), 978) == {}


def test_a_reading_asks_the_unit_of_a_rating_group_once_and_remembers_a_bounded_number() -> None:
    asked: list[int | None] = []

    def unit_of(rating_group: int | None) -> Unit:
        asked.append(rating_group)
        return Unit.SECONDS if rating_group == 7 else Unit.OCTETS

    reading = Reading(GyConfig(free_rating_groups=frozenset({3})), unit_of, 978)
    assert reading.free_rating_groups == frozenset({3}) and reading.rated_rating_groups is None
    assert [reading.unit(7), reading.unit(7), reading.unit(None), reading.unit(None)] == [
        Unit.SECONDS,
        Unit.SECONDS,
        Unit.OCTETS,
        Unit.OCTETS,
    ]
    assert asked == [7, None]
    for rating_group in range(100, 100 + UNITS_KEPT_MAX):  # the network names them: bounded
        reading.unit(rating_group)
    asked.clear()
    assert reading.unit(7) is Unit.SECONDS and reading.unit(99_999) is Unit.OCTETS
    assert reading.unit(99_999) is Unit.OCTETS
    assert asked == [99_999, 99_999]  # past the bound it asks each time; kept ones it does not


def test_choose_unit() -> None:
    octets, seconds = Unit.OCTETS, Unit.SECONDS
    assert choose_unit(None, {}, seconds) is seconds
    assert choose_unit({}, {octets: 1, seconds: 2}, seconds) is seconds
    assert choose_unit({}, {octets: 1, seconds: 2}, Unit.EVENTS) is octets
    assert choose_unit({seconds: 0}, {octets: 1}, octets) is seconds


@pytest.mark.parametrize(
    ("digits", "exponent", "micros"),
    [(5, 0, 5_000_000), (25, -1, 2_500_000), (1, -6, 1), (19, -7, 1), (3, 2, 300_000_000)],
)
def test_money_to_micros_rounds_down(digits: int, exponent: int, micros: int) -> None:
    money = build_avp(
        DICT, "CC-Money", {"Unit-Value": {"Value-Digits": digits, "Exponent": exponent}}
    )
    assert money_micros(money, 978) == micros


def test_money_out_of_range() -> None:
    money = build_avp(DICT, "CC-Money", {"Unit-Value": {"Value-Digits": 1, "Exponent": 40}})
    with pytest.raises(GyRequestError) as caught:
        money_micros(money, 978)
    assert caught.value.result_code == ResultCode.INVALID_AVP_VALUE


@given(st.integers(min_value=0, max_value=2**62))
def test_money_value_round_trips(micros: int) -> None:
    avps = AvpFactory(DICT, "ocs.test", "test")
    money = avps("CC-Money", money_value(micros, 978, avps))
    assert money_micros(money, 978) == micros
    digits = money.get("Unit-Value/Value-Digits")
    exponent = money.get("Unit-Value/Exponent")
    assert isinstance(digits, int) and isinstance(exponent, int)
    assert digits == 0 or digits % 10 or exponent == 0  # trailing zeros folded away


def _outcome(code: int, *, kept: bool = False) -> Outcome:
    ask = ServiceAsk(None, Unit.OCTETS, None, 0, True, True)
    return Outcome(ask, code, kept=kept)


def test_command_result() -> None:
    assert command_result([]) == 2001
    assert command_result([_outcome(4012), _outcome(2001)]) == 2001
    assert command_result([_outcome(4012), _outcome(5031)]) == 4012
    assert command_result([_outcome(4012, kept=True)]) == 2001


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownSubscriber("x"), 5030),
        (SubscriberBarred("x"), 4010),
        (NoCredit("x"), 4012),
        (UnknownSession("x"), 5002),
        (InvalidAmount("x"), 5004),
        (LimitReached("x"), 5006),
        (Conflict("x"), 5012),
        (StoreUnavailable("x"), 3004),
        (ChargingError("x"), 5012),
    ],
)
def test_engine_errors_to_result_codes(error: ChargingError, code: int) -> None:
    assert result_code_for(error) == code


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="redirect_server_address"):
        GyConfig(final_unit_action="REDIRECT")
    with pytest.raises(ValueError, match="final_unit_action"):
        GyConfig(final_unit_action="EXPLODE")
    with pytest.raises(ValueError):
        GyConfig(quota_threshold_percent=100)
    with pytest.raises(ValueError, match="currency_code"):
        GyConfig(currency_code=1978)
    # The server Config's diameter_gy when it has one (see the proposed Config field).
    mine = GyConfig(quota_threshold_percent=5)
    assert GyConfig.of(SimpleNamespace(diameter_gy=mine)) is mine
    assert GyConfig.of(SimpleNamespace()) is gy_config.DEFAULT


def _seal(request: Message, answer: Message) -> bytes:
    frame = answer.encode()
    answer.avps_wire = frame[HEADER_OCTETS:]
    return frame


def _answering(
    code: int, calls: list[int] | None = None, tag: int | None = None, pause_s: float | None = None
) -> Callable[[], Awaitable[Message]]:
    """A compute for the answer table: an answer with this Result-Code; the call is noted in
    `calls` (as `tag`, else the code), after a pause if one is given."""

    async def run() -> Message:
        if calls is not None:
            calls.append(code if tag is None else tag)
        if pause_s is not None:
            await asyncio.sleep(pause_s)
        answer = Message(272, 4)
        answer.add("Result-Code", code)
        return answer

    return run


async def test_answer_table_is_bounded_and_keeps_no_failures() -> None:
    cache = AnswerCache(entries_max=2, age_max_s=60, seal=_seal)
    request = Message(272, 4, flags=FLAG_REQUEST)
    computed: list[int] = []

    def compute(n: int) -> Callable[[], Awaitable[Message]]:
        return _answering(n, computed, pause_s=0)

    def keep(answer: Message) -> bool:
        return answer.get("Result-Code") != 5012

    for n in (1, 2, 1, 3, 1):
        await cache.answer(("s", 1, n), request, compute(n), keep)
    assert computed == [1, 2, 3, 1]  # 1 was evicted by 3 (two entries at most)
    assert len(cache) == 2 and cache.hits == 1
    await cache.answer(("s", 1, 5012), request, compute(5012), keep)
    await cache.answer(("s", 1, 5012), request, compute(5012), keep)
    assert computed[-2:] == [5012, 5012]

    async def boom() -> Message:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        await cache.answer(("s", 2, 0), request, boom, keep)
    again = await cache.answer(("s", 2, 0), request, compute(7), keep)
    assert again.get("Result-Code") == 7


async def test_an_answer_still_being_charged_is_not_forgotten_for_room() -> None:
    """Past entries_max the oldest settled answers go, never one still being charged: a copy
    must find it (and wait), or it would be answered from the first ledger result alone."""
    cache = AnswerCache(entries_max=2, age_max_s=60, seal=_seal)
    first = [cache.begin(("s", 2, n), 0.0) for n in (1, 2, 3)]
    assert len(cache) == 3 and all(cache.known(("s", 2, n), 0.0) for n in (1, 2, 3))
    answer = Message(272, 4)
    answer.add("Result-Code", 2001)
    for kept in first:
        cache.settle(kept, answer, _seal(Message(272, 4, flags=FLAG_REQUEST), answer), True)
    cache.begin(("s", 2, 4), 0.0)  # now the settled ones make room, oldest first
    assert len(cache) == 2
    assert [cache.known(("s", 2, n), 0.0) for n in (1, 2, 3, 4)] == [False, False, True, True]
    late = cache.begin(("s", 2, 5), 100.0)  # past the age limit everything goes
    assert len(cache) == 1 and not late.gone


async def test_a_kept_answer_is_its_first_frame_with_the_ids_of_the_retransmission() -> None:
    """The table keeps the sealed frame, not the AVP tree; a hit decodes it again and the
    transport sends the same AVP bytes behind the retransmission's own ids."""
    cache = AnswerCache(entries_max=8, age_max_s=60, seal=_seal)
    first_request = Message(272, 4, flags=FLAG_REQUEST, hop_by_hop=11, end_to_end=21)

    async def compute() -> Message:
        answer = Message(272, 4)
        answer.add("Result-Code", 2001)
        answer.add("Origin-Host", "ocs.test")
        return answer

    first = await cache.answer(("s", 2, 1), first_request, compute, lambda a: True)
    assert first.avps_wire is not None
    kept = cache._entries[("s", 2, 1)].first
    assert isinstance(kept, bytes)  # no Message, no AVP objects kept
    retry = Message(272, 4, flags=FLAG_REQUEST | 0x10, hop_by_hop=12, end_to_end=21)
    again = await cache.answer(("s", 2, 1), retry, compute, lambda a: True)
    assert cache.hits == 1 and again.get("Result-Code") == 2001
    assert again.get("Origin-Host") == "ocs.test"
    normalize_answer(retry, again, "ocs.test", "test")
    sent = again.encode()
    assert sent[HEADER_OCTETS:] == kept[HEADER_OCTETS:]
    header = decode_header(sent)
    assert (header.hop_by_hop, header.end_to_end, header.flags) == (12, 21, 0)


async def test_answers_older_than_the_age_are_forgotten() -> None:
    cache = AnswerCache(entries_max=8, age_max_s=0.05, seal=_seal)
    request = Message(272, 4, flags=FLAG_REQUEST)
    computed: list[int] = []

    def compute(n: int) -> Callable[[], Awaitable[Message]]:
        return _answering(2001, computed, tag=n)

    await cache.answer(("s", 1, 0), request, compute(0), lambda a: True)
    await cache.answer(("s", 1, 0), request, compute(0), lambda a: True)
    assert computed == [0] and cache.hits == 1
    await asyncio.sleep(0.06)
    await cache.answer(("s", 1, 1), request, compute(1), lambda a: True)
    assert len(cache) == 1  # the first went when the second came
    await cache.answer(("s", 1, 0), request, compute(0), lambda a: True)
    assert computed == [0, 1, 0]


async def test_an_answer_that_cannot_be_encoded_is_not_kept_and_its_copies_fail_too() -> None:
    failures = [ValueError("does not fit")]

    def seal(request: Message, answer: Message) -> bytes:
        if failures:
            raise failures.pop()
        return _seal(request, answer)

    cache = AnswerCache(entries_max=8, age_max_s=60, seal=seal)
    request = Message(272, 4, flags=FLAG_REQUEST)
    compute = _answering(2001, pause_s=0.01)

    first = asyncio.ensure_future(cache.answer(("s", 2, 1), request, compute, lambda a: True))
    await asyncio.sleep(0)
    copy = asyncio.ensure_future(cache.answer(("s", 2, 1), request, compute, lambda a: True))
    results = await asyncio.wait_for(asyncio.gather(first, copy, return_exceptions=True), 2)
    assert all(isinstance(r, ValueError) for r in results)
    assert len(cache) == 0
    again = await asyncio.wait_for(cache.answer(("s", 2, 1), request, compute, lambda a: True), 2)
    assert again.get("Result-Code") == 2001


async def test_answers_not_kept_do_not_use_up_the_table() -> None:
    cache = AnswerCache(entries_max=4, age_max_s=60, seal=_seal)
    request = Message(272, 4, flags=FLAG_REQUEST)

    def keep(answer: Message) -> bool:
        return answer.get("Result-Code") != 3004

    await cache.answer(("s", 2, 0), request, _answering(2001), keep)
    for n in range(1, 4):
        await cache.answer(("s", 2, n), request, _answering(3004), keep)
    await cache.answer(("s", 2, 9), request, _answering(2001), keep)
    assert len(cache) == 2
    await cache.answer(("s", 2, 0), request, _answering(5030), keep)
    assert cache.hits == 1  # the first answer is still kept


async def test_copies_arriving_while_the_first_is_charged_wait_for_its_answer() -> None:
    """Computed once; each copy gets the first answer once it is sealed. Without a copy no
    future is made at all."""
    cache = AnswerCache(entries_max=8, age_max_s=60, seal=_seal)
    request = Message(272, 4, flags=FLAG_REQUEST)
    computed: list[int] = []
    compute = _answering(2001, computed, pause_s=0.01)

    first = asyncio.ensure_future(cache.answer(("s", 2, 1), request, compute, lambda a: True))
    await asyncio.sleep(0)
    copies = [
        asyncio.ensure_future(cache.answer(("s", 2, 1), request, compute, lambda a: True))
        for _ in range(2)
    ]
    answers = await asyncio.wait_for(asyncio.gather(first, *copies), 2)
    assert computed == [2001] and cache.hits == 2
    assert [a.get("Result-Code") for a in answers] == [2001, 2001, 2001]
    assert answers[1] is not answers[0] and answers[1].avps_wire == answers[0].avps_wire
    await cache.answer(("s", 2, 2), request, _answering(2001), lambda a: True)
    assert cache._entries[("s", 2, 2)].waiting is None
