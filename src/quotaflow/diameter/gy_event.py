"""EVENT_REQUEST credit control (RFC 4006 6.3-6.4, 8.41): one-shot charging without a session.

Requested-Action DIRECT_DEBITING (the default when absent), REFUND_ACCOUNT, CHECK_BALANCE and
PRICE_ENQUIRY. Operation ids derive from Session-Id and CC-Request-Number, so a retransmitted
event is never debited or refunded twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quotaflow.diameter.constants import ResultCode
from quotaflow.diameter.errors import GyRequestError
from quotaflow.diameter.gy_answer import (
    AvpFactory,
    Outcome,
    add_outcomes,
    command_result,
    credit_control_answer,
    money_value,
)
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_mapping import Reading, ServiceAsk, service_asks
from quotaflow.diameter.message import Avp, Message
from quotaflow.diameter.messages import make_answer
from quotaflow.engine import Engine
from quotaflow.ledger import NoCredit, SubscriberBarred, Unit, UnknownSubscriber

INTERFACE = "gy"  # what the charging records say the event came through
DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE, PRICE_ENQUIRY = 0, 1, 2, 3
ENOUGH_CREDIT, NO_CREDIT = 0, 1  # Check-Balance-Result

Resolver = Callable[[Message], Awaitable[str]]


class EventCharging:
    def __init__(self, engine: Engine, config: GyConfig) -> None:
        self._engine = engine
        self._config = config

    async def answer(
        self, request: Message, reading: Reading, avps: AvpFactory, resolve: Resolver
    ) -> Message:
        action = request.get("Requested-Action", DIRECT_DEBITING)
        asks = service_asks(request, reading, initial=True)
        refused = next((a.refusal for a in asks if a.refusal is not None), None)
        if action == PRICE_ENQUIRY:
            return await self._price(request, asks[0], refused, reading, avps, resolve)
        if action not in (DIRECT_DEBITING, REFUND_ACCOUNT, CHECK_BALANCE):
            raise GyRequestError(
                ResultCode.INVALID_AVP_VALUE,
                f"Requested-Action {action!r} not supported",
                request.find("Requested-Action"),
            )
        subscriber_id = await resolve(request)
        number = request.get("CC-Request-Number")
        assert isinstance(number, int)
        op_id = f"{request.session_id}#{number}"
        if action == DIRECT_DEBITING:
            return await self._debit(request, op_id, subscriber_id, asks, reading, avps)
        if refused is not None:
            return credit_control_answer(request, refused, avps)
        if action == REFUND_ACCOUNT:
            return await self._refund(request, op_id, subscriber_id, asks, avps)
        return await self._check_balance(request, subscriber_id, asks[0], avps)

    async def _debit(
        self,
        request: Message,
        op_id: str,
        subscriber_id: str,
        asks: list[ServiceAsk],
        reading: Reading,
        avps: AvpFactory,
    ) -> Message:
        outcomes: list[Outcome] = []
        cost_micros = 0
        for ask in asks:
            if ask.refusal is not None:
                outcomes.append(Outcome(ask, ask.refusal))
                continue
            try:
                debit = await self._engine.direct_debit(
                    f"{op_id}#debit#{ask.rating_group}",
                    subscriber_id,
                    ask.unit,
                    self._units(ask),
                    ask.rating_group,
                    interface=INTERFACE,
                )
            except NoCredit:
                outcomes.append(Outcome(ask, ResultCode.CREDIT_LIMIT_REACHED))
                continue
            except SubscriberBarred:
                outcomes.append(Outcome(ask, ResultCode.END_USER_SERVICE_DENIED))
                continue
            cost_micros += debit.units if ask.unit is Unit.MONEY else debit.cost_micros
            outcomes.append(Outcome(ask, ResultCode.SUCCESS, granted_units=debit.units))
        answer = credit_control_answer(request, command_result(outcomes), avps)
        add_outcomes(answer, outcomes, self._config, avps, reading.currency_code)
        if any(o.granted_units for o in outcomes):
            cost = money_value(cost_micros, reading.currency_code, avps)
            answer.avps.append(avps("Cost-Information", cost))
        return answer

    async def _refund(
        self,
        request: Message,
        op_id: str,
        subscriber_id: str,
        asks: list[ServiceAsk],
        avps: AvpFactory,
    ) -> Message:
        for ask in asks:
            units = ask.requested_units or ask.used_units
            if not units:
                raise GyRequestError(
                    ResultCode.MISSING_AVP,
                    "a refund needs the units in Requested-Service-Unit",
                    avps("Requested-Service-Unit", []),
                )
            await self._engine.refund(
                f"{op_id}#refund#{ask.rating_group}",
                subscriber_id,
                ask.unit,
                units,
                interface=INTERFACE,
            )
        return credit_control_answer(request, ResultCode.SUCCESS, avps)

    async def _check_balance(
        self, request: Message, subscriber_id: str, ask: ServiceAsk, avps: AvpFactory
    ) -> Message:
        payable = await self._engine.balance_check(subscriber_id, ask.unit, ask.rating_group)
        wanted = ask.requested_units or ask.used_units or 1
        answer = credit_control_answer(request, ResultCode.SUCCESS, avps)
        enough = ENOUGH_CREDIT if payable >= wanted else NO_CREDIT
        answer.avps.append(avps("Check-Balance-Result", enough))
        return answer

    async def _price(
        self,
        request: Message,
        ask: ServiceAsk,
        refused: int | None,
        reading: Reading,
        avps: AvpFactory,
        resolve: Resolver,
    ) -> Message:
        """The price of the units asked for, in the subscriber's plan when one is named (a
        price enquiry needs no subscriber: the default plan prices it then)."""
        if refused is not None:
            return credit_control_answer(request, refused, avps)
        if ask.unit is Unit.MONEY:
            failed = request.find("Multiple-Services-Credit-Control") or request.find(
                "Requested-Service-Unit"
            )
            return _with_failed(request, ResultCode.RATING_FAILED, avps, failed)
        plan = None
        try:
            subscriber = await self._engine.store.get_subscriber(await resolve(request))
            plan = subscriber.plan
        except UnknownSubscriber:
            pass
        price_micros = self._engine.price_enquiry(
            ask.unit, self._units(ask), plan=plan, rating_group=ask.rating_group
        )
        answer = credit_control_answer(request, ResultCode.SUCCESS, avps)
        cost = money_value(price_micros, reading.currency_code, avps)
        answer.avps.append(avps("Cost-Information", cost))
        return answer

    def _units(self, ask: ServiceAsk) -> int:
        """What the request names, else what the OCS would grant by default."""
        units = ask.requested_units or ask.used_units
        return units or self._engine.policy.limits[ask.unit].default_units


def _with_failed(request: Message, code: int, avps: AvpFactory, failed: Avp | None) -> Message:
    return make_answer(
        request,
        code,
        avps.origin_host,
        avps.origin_realm,
        failed_avps=[failed] if failed is not None else (),
    )
