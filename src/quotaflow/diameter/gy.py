"""The Diameter Gy/Ro credit-control application (RFC 4006, TS 32.299) on the charging engine.

    stop = await start_gy(engine, cfg)   # serves cfg.diameter_host:cfg.diameter_port
    await stop()

CCR INITIAL / UPDATE / TERMINATION map to the engine's session steps (the Session-Id is the
session id, CC-Request-Number the request number); EVENT to one-shot debits, refunds, balance
checks and price enquiries (gy_event). Accept what real clients send (Destination-Realm is never
checked: Open5GS puts its own realm there); answer exactly to the spec (gy_answer).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from quotaflow.diameter.codec import encode_message
from quotaflow.diameter.constants import (
    AVP_AUTH_APPLICATION_ID,
    AVP_CC_REQUEST_NUMBER,
    AVP_CC_REQUEST_TYPE,
    AVP_ORIGIN_HOST,
    AVP_ORIGIN_REALM,
    AVP_PROXY_INFO,
    AVP_SESSION_ID,
    HEADER_OCTETS,
    CcRequestType,
    CommandCode,
    ResultCode,
)
from quotaflow.diameter.dictionary import Dictionary
from quotaflow.diameter.errors import GyRequestError
from quotaflow.diameter.events import PeerInfo
from quotaflow.diameter.gy_answer import (
    ECHOED,
    AvpFactory,
    Echo,
    Outcome,
    add_outcomes,
    command_result,
    credit_control_answer,
    outcome,
    result_code_of,
)
from quotaflow.diameter.gy_config import GyConfig
from quotaflow.diameter.gy_event import EventCharging
from quotaflow.diameter.gy_mapping import (
    ISO_4217,
    Reading,
    ServiceAsk,
    identities,
    result_code_for,
    service_asks,
)
from quotaflow.diameter.gy_notify import GyNotifier, session_meta
from quotaflow.diameter.gy_restart import PeerRestarts, direct_state
from quotaflow.diameter.gy_retransmit import AnswerCache, Kept
from quotaflow.diameter.gy_wire import AnswerWriter
from quotaflow.diameter.message import Avp, Message
from quotaflow.diameter.messages import make_answer, normalize_answer
from quotaflow.diameter.peer import AllowedPeer
from quotaflow.diameter.transport import DiameterServer, serve_diameter
from quotaflow.engine import SESSION_EVENTS, Engine, ServiceRequest, SessionAnswer
from quotaflow.ledger import ChargingError, SubscriberBarred, Unit, UnknownSubscriber
from quotaflow.metrics import SESSION_STEPS, request_seconds
from quotaflow.rating import TariffBook
from quotaflow.store.immediate import ImmediateStore

if TYPE_CHECKING:
    from quotaflow.config import Config

log = logging.getLogger("quotaflow.diameter.gy")

_STEPS: Final[dict[int, str]] = {
    CcRequestType.INITIAL: "initial",
    CcRequestType.UPDATE: "update",
    CcRequestType.TERMINATION: "termination",
    CcRequestType.EVENT: "event",
}
# Enum members read once (see gy_answer: an attribute lookup on the enum class per use).
_INITIAL: Final[int] = int(CcRequestType.INITIAL)
_UPDATE: Final[int] = int(CcRequestType.UPDATE)
_TERMINATION: Final[int] = int(CcRequestType.TERMINATION)
_EVENT: Final[int] = int(CcRequestType.EVENT)
_CREDIT_CONTROL: Final[int] = int(CommandCode.CREDIT_CONTROL)
_SUCCESS: Final[int] = int(ResultCode.SUCCESS)
DEFAULT_CURRENCY_CODE: Final = 978  # EUR, when the tariff's currency is not in ISO_4217
ERROR_MESSAGE_CHARS_MAX: Final = 200
# Answers a retry may get differently: not kept for retransmissions.
_TRANSIENT: Final = frozenset({ResultCode.TOO_BUSY, ResultCode.UNABLE_TO_COMPLY})
# Ccr.read builds the echoed AVPs in this order.
assert ECHOED == (AVP_AUTH_APPLICATION_ID, AVP_CC_REQUEST_TYPE, AVP_CC_REQUEST_NUMBER)


# Not frozen: one is made for every request and a frozen dataclass costs ~5x as much to
# construct (each field set through object.__setattr__). Never changed once made.
@dataclass(slots=True, init=False)
class Ccr:
    """What identifies a CCR, read once."""

    message: Message
    session_id: str
    request_type: int
    number: int
    origin_host: str
    origin_realm: str
    echo: Echo  # what the CCA copies from it

    def __init__(
        self,
        message: Message,
        session_id: str,
        request_type: int,
        number: int,
        origin_host: str,
        origin_realm: str,
        echo: Echo,
    ) -> None:
        self.message = message
        self.session_id = session_id
        self.request_type = request_type
        self.number = number
        self.origin_host = origin_host
        self.origin_realm = origin_realm
        self.echo = echo

    @staticmethod
    def read(message: Message) -> Ccr:
        # One pass by code over the top-level AVPs (this runs for every request); the first
        # of each counts, as in the grammar check.
        session: Avp | None = None
        auth: Avp | None = None
        kind: Avp | None = None
        number: Avp | None = None
        proxies: list[Avp] | None = None  # Proxy-Info, rare: no list unless there is one
        host = realm = None
        for avp in message.avps:
            if avp.vendor_id:
                continue
            code = avp.code
            if code == AVP_SESSION_ID:
                if session is None:
                    session = avp
            elif code == AVP_ORIGIN_HOST:
                if host is None:
                    host = avp.value
            elif code == AVP_ORIGIN_REALM:
                if realm is None:
                    realm = avp.value
            elif code == AVP_CC_REQUEST_NUMBER:
                if number is None:
                    number = avp
            elif code == AVP_CC_REQUEST_TYPE:
                if kind is None:
                    kind = avp
            elif code == AVP_AUTH_APPLICATION_ID:
                if auth is None:
                    auth = avp
            elif code == AVP_PROXY_INFO:
                if proxies is None:
                    proxies = [avp]
                else:
                    proxies.append(avp)
        # The grammar was checked on receipt: these are present, with these types.
        assert session is not None and isinstance(session.value, str)
        assert kind is not None and isinstance(kind.value, int)
        assert number is not None and isinstance(number.value, int)
        echoed = [kind, number] if auth is None else [auth, kind, number]  # ECHOED's order
        if proxies is not None:
            echoed += proxies
        return Ccr(
            message,
            session.value,
            kind.value,
            number.value,
            str(host),
            str(realm),
            Echo(session, echoed),
        )

    def basis(self) -> Message:
        """All of the request that `failed` and the transport read once its answer waits for
        its commit (make_answer, normalize_answer): the header, Session-Id, the AVPs a CCA
        echoes and Proxy-Info. The rest of the request, its grouped AVPs above all, is then
        freed at once, while still in the processor's caches, where freeing it a hundred
        requests later, after the commit, missed them. tests/diameter/test_messages.py builds
        answers from both and compares their bytes."""
        request, echo = self.message, self.echo
        avps = list(echo.echoed) if echo.session is None else [echo.session, *echo.echoed]
        return Message(
            request.command_code,
            request.application_id,
            flags=request.flags,
            hop_by_hop=request.hop_by_hop,
            end_to_end=request.end_to_end,
            avps=avps,
            dictionary=request.dictionary,
        )


# An answer handle_now computed, until its barrier is done: its cache entry, the request's
# answer basis (Ccr.basis), the answer and its sealed frame, and when the request
# came (perf_counter).
_Held = tuple[Kept, Message, Message, bytes, float]


class GyApplication:
    """The request handler of the Diameter server: CCR in, CCA out."""

    def __init__(self, engine: Engine, config: GyConfig, identity: str, realm: str) -> None:
        self.engine = engine
        self.config = config
        self.identity = identity
        self.realm = realm
        self.answers = AnswerCache(config.answers_kept_max, config.answers_kept_s, self._seal)
        self.notifier = GyNotifier(engine, config, identity, realm)
        self.events = EventCharging(engine, config)
        self.restarts = PeerRestarts(
            engine,
            enabled=config.release_on_peer_restart,
            sessions_max=config.tracked_sessions_max,
            on_ended=self.notifier.forget,
        )
        self._avps: AvpFactory | None = None
        self._writer: AnswerWriter | None = None
        self._reading: tuple[TariffBook, Reading] | None = None
        self._seconds = request_seconds("gy")
        # The session-steps count of each (request type, result code), by one integer.
        self._steps: dict[int, list[int]] = {}
        # Answers handle_now computed, by the barrier they wait on.
        self._held: dict[asyncio.Future[None], list[_Held]] = {}
        self.answered_now = 0  # requests handle_now took

    def handle_now(
        self, peer: PeerInfo, request: Message
    ) -> tuple[Message, bytes | None, asyncio.Future[None] | None, Message] | None:
        """A CCR-U answered with no coroutine, when the engine can charge it at once
        (Engine.immediate): the answer, its frame (encoded once, also kept for copies), the
        barrier to await before sending it, and what to hold of the request until then (for
        `failed`). None for every other request: `handle` gets it. The same steps as handle,
        in the same order."""
        if request.command_code != _CREDIT_CONTROL:
            return None
        ccr = Ccr.read(request)
        if ccr.request_type != _UPDATE:
            return None
        key = (ccr.session_id, ccr.request_type, ccr.number)
        now = time.monotonic()
        answers, engine = self.answers, self.engine
        if answers.known(key, now) or not engine.immediate(ccr.session_id):
            return None  # a copy of a request in hand, or a step that may wait: the async path
        started = time.perf_counter()
        self.answered_now += 1
        kept = answers.begin(key, now)
        try:
            reading = self.reading()
            avps = self.avps(request.dictionary)
            try:
                asks = service_asks(request, reading, initial=False)
                charged, barrier = engine.session_update_now(
                    ccr.session_id, ccr.number, _engine_requests(asks)
                )
                answer, _ = self._session_answer(ccr, asks, charged, reading, avps)
            except GyRequestError as exc:
                answer = self._refusal(request, exc.result_code, str(exc), exc.failed)
                barrier = None  # nothing was charged
            except ChargingError as exc:
                answer = self._refusal(request, result_code_for(exc), exc.message)
                barrier = engine.pending_now()  # not ahead of the state it saw
            frame = self._seal(request, answer)
        except BaseException as exc:
            answers.fail(kept, exc)
            raise
        if barrier is None or barrier.done():
            self._settle(barrier, [(kept, request, answer, frame, started)])
            return answer, frame, barrier, request
        held = self._held.get(barrier)
        if held is None:
            held = self._held[barrier] = []
            barrier.add_done_callback(self._release)
        basis = ccr.basis()  # all `failed` needs of the request
        held.append((kept, basis, answer, frame, started))
        return answer, frame, barrier, basis

    def failed(self, request: Message, exc: BaseException) -> Message:
        """What handle_now's request gets when its barrier failed (as `handle` answers then)."""
        if isinstance(exc, ChargingError):
            return self._refusal(request, result_code_for(exc), exc.message)
        return make_answer(request, ResultCode.UNABLE_TO_COMPLY, self.identity, self.realm)

    def _release(self, barrier: asyncio.Future[None]) -> None:
        self._settle(barrier, self._held.pop(barrier, []))

    def _settle(self, barrier: asyncio.Future[None] | None, held: list[_Held]) -> None:
        """The barrier is done: the answers become first answers (copies get them); if it
        failed, the copies get what `failed` answers, which is not kept."""
        exc: BaseException | None = None
        if barrier is not None:
            exc = barrier.exception() if not barrier.cancelled() else asyncio.CancelledError()
        answers = self.answers
        ended = time.perf_counter()
        for kept, request, answer, frame, started in held:
            if exc is None:
                answers.settle(kept, answer, frame, _keep(answer))
            else:  # counted as what the peer gets (the link asks `failed` too)
                answer = self.failed(request, exc)
                answers.settle(kept, answer, b"", False)
            self._seconds.observe(ended - started)
            self._count(_UPDATE, answer)

    async def handle(self, peer: PeerInfo, request: Message) -> Message:
        if request.command_code != _CREDIT_CONTROL:
            # RAR/ASR are ours to send, not to receive.
            return make_answer(request, ResultCode.COMMAND_UNSUPPORTED, self.identity, self.realm)
        ccr = Ccr.read(request)
        return await self.answers.answer(
            (ccr.session_id, ccr.request_type, ccr.number),
            request,
            lambda: self._answer(peer, ccr),
            _keep,
        )

    def _seal(self, request: Message, answer: Message) -> bytes:
        """Put the answer in shape for the wire and encode it once; the frame is kept for
        retransmissions and the transport reuses the encoded AVPs."""
        normalize_answer(request, answer, self.identity, self.realm)
        frame = encode_message(answer)
        if answer.avps_wire is None:
            answer.avps_wire = frame[HEADER_OCTETS:]
        return frame

    async def _answer(self, peer: PeerInfo, ccr: Ccr) -> Message:
        started = time.perf_counter()
        reading = self.reading()
        avps = self.avps(ccr.message.dictionary)
        try:
            if ccr.request_type == _INITIAL:
                answer = await self._initial(peer, ccr, reading, avps)
            elif ccr.request_type == _UPDATE:
                answer = await self._update(ccr, reading, avps)
            elif ccr.request_type == _TERMINATION:
                answer = await self._terminate(ccr, reading, avps)
            elif ccr.request_type == _EVENT:
                answer = await self.events.answer(ccr.message, reading, avps, self._subscriber)
            else:
                raise GyRequestError(
                    ResultCode.INVALID_AVP_VALUE,
                    f"CC-Request-Type {ccr.request_type}",
                    ccr.message.find("CC-Request-Type"),
                )
        except GyRequestError as exc:
            answer = self._refusal(ccr.message, exc.result_code, str(exc), exc.failed)
        except ChargingError as exc:
            answer = self._refusal(ccr.message, result_code_for(exc), exc.message)
        self._seconds.observe(time.perf_counter() - started)
        self._count(ccr.request_type, answer)
        return answer

    # ------------------------------------------------------------------ session steps

    async def _initial(
        self, peer: PeerInfo, ccr: Ccr, reading: Reading, avps: AvpFactory
    ) -> Message:
        asks = service_asks(ccr.message, reading, initial=True)
        subscriber_id = await self._subscriber(ccr.message)
        meta: dict[str, Any] = session_meta(ccr.origin_host, ccr.origin_realm, peer.origin_host)
        peer_state = direct_state(peer, ccr.origin_host) if self.restarts.enabled else None
        if peer_state is not None:
            meta["peer_state"] = peer_state  # what a restart is told by (gy_restart.load)
        try:
            charged = await self.engine.session_start(
                ccr.session_id, subscriber_id, ccr.number, _engine_requests(asks), meta
            )
        except SubscriberBarred:
            denied = ResultCode.END_USER_SERVICE_DENIED
            answer = credit_control_answer(ccr.message, denied, avps, ccr.echo)
            refused = [Outcome(ask, denied) for ask in asks if ask.in_mscc]
            add_outcomes(answer, refused, self.config, avps, reading.currency_code)
            return answer
        answer, code = self._session_answer(ccr, asks, charged, reading, avps)
        if code != _SUCCESS:
            # Refused: the client ends the service without a CCR-T, so release it here.
            await self.engine.session_terminate(ccr.session_id, ccr.number, [], cause="refused")
            self.notifier.forget(ccr.session_id)
        else:
            self.restarts.opened(ccr.session_id, peer.origin_host, peer_state)
        return answer

    async def _update(self, ccr: Ccr, reading: Reading, avps: AvpFactory) -> Message:
        asks = service_asks(ccr.message, reading, initial=False)
        charged = await self.engine.session_update(
            ccr.session_id, ccr.number, _engine_requests(asks)
        )
        answer, _ = self._session_answer(ccr, asks, charged, reading, avps)
        return answer

    async def _terminate(self, ccr: Ccr, reading: Reading, avps: AvpFactory) -> Message:
        # Every MSCC reports its last usage; a single-service request only when it has some.
        asks = [
            a
            for a in service_asks(ccr.message, reading, initial=False)
            if a.in_mscc or a.used_units
        ]
        try:
            await self.engine.session_terminate(
                ccr.session_id,
                ccr.number,
                _engine_requests(asks),
                cause=_termination_cause(ccr.message),
            )
        finally:
            self.restarts.forget(ccr.session_id)  # ended now, or unknown already
        self.notifier.forget(ccr.session_id)
        return credit_control_answer(ccr.message, _SUCCESS, avps, ccr.echo)

    def _session_answer(
        self,
        ccr: Ccr,
        asks: list[ServiceAsk],
        charged: SessionAnswer,
        reading: Reading,
        avps: AvpFactory,
    ) -> tuple[Message, int]:
        services = iter(charged.services)
        outcomes: list[Outcome] = []
        for ask in asks:
            if ask.refusal is not None:
                outcomes.append(Outcome(ask, ask.refusal))
            else:
                outcomes.append(outcome(ask, next(services), self.config))
        assert next(services, None) is None, "the engine answers each service asked"
        code = command_result(outcomes)
        answer = credit_control_answer(ccr.message, code, avps, ccr.echo)
        # The common answer goes straight to bytes: its `avps` then hold only the head.
        wire = self.writer(avps).body(ccr.echo, code, outcomes, self.config)
        if wire is not None:
            answer.avps_wire = wire
        else:
            add_outcomes(answer, outcomes, self.config, avps, reading.currency_code)
        self.notifier.track(ccr.session_id, any(o.starved for o in outcomes))
        return answer, code

    # ------------------------------------------------------------------ helpers

    def reading(self) -> Reading:
        """Settings plus what the current tariff says (it may be replaced at any time)."""
        book = self.engine.rater.book
        if self._reading is None or self._reading[0] is not book:
            code = self.config.currency_code
            if code is None:
                code = ISO_4217.get(book.currency, DEFAULT_CURRENCY_CODE)
            self._reading = (book, Reading(self.config, self._unit_of, code))
        return self._reading[1]

    def avps(self, dictionary: Dictionary) -> AvpFactory:
        factory = self._avps
        if factory is None or factory.dictionary is not dictionary:
            factory = self._avps = AvpFactory(dictionary, self.identity, self.realm)
        return factory

    def writer(self, avps: AvpFactory) -> AnswerWriter:
        writer = self._writer
        if writer is None or writer.avps is not avps:
            writer = self._writer = AnswerWriter(avps)
        return writer

    def _unit_of(self, rating_group: int | None) -> Unit:
        """The configured unit of a rating group, else the tariff's, else the default."""
        if rating_group is None:
            return self.config.default_unit
        unit = self.config.rating_group_units.get(rating_group)
        if unit is not None:
            return unit
        named = self.engine.rater.book.rating_groups.get(rating_group)
        return named[1] if named is not None else self.config.default_unit

    async def _subscriber(self, request: Message) -> str:
        """The subscriber of the first Subscription-Id that names one; UnknownSubscriber."""
        for kind, value in identities(request):
            try:
                return await self.engine.resolve(kind, value)
            except UnknownSubscriber:
                continue
        raise UnknownSubscriber("no Subscription-Id names a known subscriber")

    def _refusal(
        self, request: Message, code: int, message: str, failed: Avp | None = None
    ) -> Message:
        return make_answer(
            request,
            code,
            self.identity,
            self.realm,
            error_message=message[:ERROR_MESSAGE_CHARS_MAX],
            failed_avps=[failed] if failed is not None else (),
        )

    def _count(self, request_type: int, answer: Message) -> None:
        code = result_code_of(answer)
        at = (request_type << 32) | (code & 0xFFFFFFFF)
        cell = self._steps.get(at)
        if cell is None:
            step = _STEPS.get(request_type, "other")
            cell = self._steps[at] = SESSION_STEPS.cell(("gy", step, str(code)))
        cell[0] += 1


def _engine_requests(asks: list[ServiceAsk]) -> list[ServiceRequest]:
    return [a.engine_request() for a in asks if a.refusal is None]


def _termination_cause(request: Message) -> str | None:
    """The Termination-Cause by name (DIAMETER_LOGOUT, ...), for the charging record."""
    avp = request.find("Termination-Cause")
    if avp is None or not isinstance(avp.value, int):
        return None
    names = avp.definition.enum if avp.definition is not None else None
    return (names or {}).get(avp.value, str(avp.value))


def _keep(answer: Message) -> bool:
    return result_code_of(answer) not in _TRANSIENT


# ---------------------------------------------------------------------- start and stop


class GyService:
    """What start_gy returns: calling it stops the application (RAR/ASR in flight are
    cancelled, peers get a DPR)."""

    def __init__(self, app: GyApplication, server: DiameterServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self) -> None:
        await self.app.restarts.aclose()
        await self.app.notifier.aclose()
        await self.server.close()


def allowed_peers(cfg: Config) -> list[AllowedPeer]:
    peers = []
    for peer in cfg.diameter_peers:
        addresses = frozenset({ipaddress.ip_address(peer.address)}) if peer.address else frozenset()
        peers.append(AllowedPeer(peer.origin_host, addresses))
    return peers


async def start_gy(engine: Engine, cfg: Config, config: GyConfig | None = None) -> GyService:
    """Serve Gy on cfg.diameter_host:cfg.diameter_port. With no cfg.diameter_peers, any peer
    connecting from loopback is accepted (the development default)."""
    gy = config if config is not None else GyConfig.of(cfg)
    app = GyApplication(engine, gy, cfg.diameter_identity, cfg.diameter_realm)
    store = engine.store
    if app.restarts.enabled and isinstance(store, ImmediateStore):
        tied = app.restarts.load(store.open_sessions_now())  # before any peer connects
        if tied:
            log.info("Gy sessions tied to their peer's Origin-State-Id: %d", tied)
    peers = allowed_peers(cfg)
    server = await serve_diameter(
        app.handle,
        cfg.diameter_host,
        cfg.diameter_port,
        cfg.diameter_identity,
        cfg.diameter_realm,
        peers,
        accept_any_loopback=not peers,
        immediate=app,
        peer_opened=(app.restarts.peer_opened,),  # no CER may complete before it observes
    )
    app.notifier.attach(server)
    engine.subscribe(app.notifier.on_event, SESSION_EVENTS)
    log.info(
        "Gy serving",
        extra={"diameter": f"{cfg.diameter_host}:{server.port}", "peers": len(peers)},
    )
    return GyService(app, server)
