"""The charging engine: sessions, events and administration on top of a store.

Pure logic over the store interface; it never parses a wire format and never touches a balance
except through ledger operations. Session steps get deterministic operation ids
(session, request number, rating group), so a retransmitted request finds its first answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from quotaflow.engine.grants import GrantPolicy, RateTracker, UnitGrantLimits
from quotaflow.engine.pools import PoolView, reclaimable, size_pool_grant
from quotaflow.engine.types import (
    DebitAnswer,
    EngineEvent,
    ServiceAnswer,
    ServiceRequest,
    ServiceResult,
    SessionAnswer,
)
from quotaflow.ledger import (
    AMOUNT_MAX,
    ChargingError,
    Conflict,
    InvalidAmount,
    InvalidRequest,
    LimitReached,
    NoCredit,
    Price,
    Reservation,
    Status,
    Subscriber,
    SubscriberBarred,
    Unit,
    UnknownSession,
    UnknownSubscriber,
    price_doc,
)
from quotaflow.ledger.model import UNIT_NAME, Group, PriceDoc
from quotaflow.rating import Rated, Rater
from quotaflow.store.base import Result, Store
from quotaflow.store.cdr import SessionRecord
from quotaflow.store.immediate import ImmediateStore

log = logging.getLogger("quotaflow.engine")


# Classes made per request have an explicit __init__: mypyc compiles it, while a
# dataclass-generated one runs interpreted (measured 0.77 us against 0.05 us per object).
# They are not frozen, which would set every field through object.__setattr__.
@dataclass(slots=True, init=False)
class _Step:
    """One request of one session: who, which request number, and what to record with it."""

    session_id: str
    subscriber_id: str
    request_number: int
    closing: bool
    meta: dict[str, Any]
    subscriber: Subscriber | None = None
    group: Group | None = None

    def __init__(
        self,
        session_id: str,
        subscriber_id: str,
        request_number: int,
        closing: bool,
        meta: dict[str, Any],
        subscriber: Subscriber | None = None,
        group: Group | None = None,
    ) -> None:
        self.session_id = session_id
        self.subscriber_id = subscriber_id
        self.request_number = request_number
        self.closing = closing
        self.meta = meta
        self.subscriber = subscriber
        self.group = group


def _check_services(services: list[ServiceRequest]) -> None:
    if len(services) > SERVICES_PER_REQUEST_MAX:
        raise LimitReached("too many services in one request", limit=SERVICES_PER_REQUEST_MAX)
    seen: set[int | None] = set()
    for s in services:
        if s.rating_group in seen:
            raise InvalidRequest(f"rating group {s.rating_group} appears twice")
        seen.add(s.rating_group)
        if s.used_units < 0 or (s.requested_units is not None and s.requested_units < 0):
            raise InvalidAmount("units must not be negative")


def _op_id(step: _Step, s: ServiceRequest) -> str:
    """A session step's charge id, the same on every path: a retransmission finds it."""
    return f"{step.session_id}#{step.request_number}#{s.rating_group}"


def _payer(rated: Rated, subscriber_id: str) -> str | None:
    """Who pays for a rated service instead of the subscriber: its sponsor, unless that is the
    subscriber itself."""
    sponsor = rated.sponsor
    return None if sponsor is None or sponsor == subscriber_id else sponsor


def _rank(order: list[int], s: ServiceRequest) -> int:
    return order.index(s.rating_group) if s.rating_group in order else len(order)


def _running_low(result: Result) -> bool:
    """Refused for lack of credit, or granted the last units the balance could pay."""
    grant = result.get("grant")
    return result.get("refused") == "no_credit" or (grant is not None and grant["exhausted"])


def _may_try_again(step: _Step, args: dict[str, Any], result: Result) -> bool:
    """Whether Engine._second_try can do anything after this charge: a member of a group
    (its pool may have moved, credit may be reclaimed), or a subscriber running low that
    asked for a grant (its providers may top it up)."""
    return step.group is not None or (_running_low(result) and "reserve" in args)


def _short(result: Result, lim: UnitGrantLimits) -> bool:
    """The grant asked for was refused, or is below the minimum while more was wanted."""
    if result.get("refused") == "no_credit":
        return True
    grant = result.get("grant")
    return grant is not None and grant["exhausted"] and grant["units"] < lim.min_units


Listener = Callable[[EngineEvent], None]
# Asked (kind, subscriber id) on a charge's path before its event is built: False means the
# listener would do nothing with that event.
Wants = Callable[[str, str], bool]
SERVICES_PER_REQUEST_MAX: Final = 64
PRICE_DOCS_MAX: Final = 4_096  # distinct Price objects whose JSON is kept (_price_doc)
RECLAIM_MIN_AGE_S: Final = 7  # measured with bench/sim_pools.py (docs/SHARED-POOLS.md)
# Events interfaces act on (re-authorise, abort); they carry the open sessions.
SESSION_EVENTS: Final = frozenset({"credit_added", "barred", "abort", "reauthorize"})
IDENTITY_PREFIXES: Final = {"imsi-": "imsi", "nai-": "nai", "msisdn-": "msisdn", "sip:": "sip_uri"}


def split_identity(identity: str) -> tuple[str, str]:
    """'imsi-0010...' / 'msisdn-46...' / 'nai-x@y' / 'sip:..' / 'id:abc' -> (kind, value)."""
    for prefix, kind in IDENTITY_PREFIXES.items():
        if identity.startswith(prefix):
            return kind, identity if kind == "sip_uri" else identity[len(prefix) :]
    kind, sep, value = identity.partition(":")
    if sep and kind in ("id", "msisdn", "imsi", "nai"):
        return kind, value
    return "id", identity


class Engine:
    def __init__(
        self,
        store: Store,
        policy: GrantPolicy | None = None,
        rater: Rater | None = None,
    ) -> None:
        self.store = store
        # The same store when it applies changes at once (the embedded one): session steps that
        # need nothing else (see `immediate`) are then charged without a coroutine.
        # Declared, not inferred: narrowed from the Store protocol the type would be an
        # intersection, which compiled code calls by method name (about 450 instructions each).
        self._now: ImmediateStore | None = store if isinstance(store, ImmediateStore) else None
        self.policy = policy or GrantPolicy()
        self.rater = rater or Rater()
        self._rates: dict[tuple[str, int | None], RateTracker] = {}
        # Each session's rating groups with a tracker, so ending a session touches only its own.
        self._session_rgs: dict[str, list[int | None]] = {}
        # Each listener with the event kinds it acts on (None: every kind), and, per kind, who
        # takes it: an event nobody takes is never built (a charge emits one, always).
        self._listeners: list[tuple[Listener, frozenset[str] | None, Wants | None]] = []
        self._takers: dict[str, tuple[tuple[Listener, Wants | None], ...]] = {}  # with `wants`
        self.reclaims = 0  # reclaim rounds started (the simulator reports it)
        self._pool_events: dict[str, asyncio.Event] = {}
        self.pool_waiters = 0  # answers held while a pool's credit is being reclaimed
        self._waiting: dict[str, int] = {}  # the same, by group
        self._in_group: dict[str, set[tuple[str, int | None]]] = {}  # rate keys by group
        self._active_counted: dict[str, tuple[int, int]] = {}  # group -> (second, count)
        # (group, unit) -> summed rate of the group's sessions holding a grant, kept as they
        # report, so sizing a grant never adds up a fleet's sessions.
        self._group_rate: dict[tuple[str, Unit], float] = {}
        self._price_docs: dict[int, tuple[Price, PriceDoc]] = {}  # see _price_doc

    # ------------------------------------------------------------------ events

    def subscribe(
        self, listener: Listener, kinds: frozenset[str] | None = None, wants: Wants | None = None
    ) -> None:
        """Call `listener` with every event of these kinds (None: of every kind). `wants`, if
        given, is asked first on a charge's path, where an event nobody wants is not built."""
        self._listeners.append((listener, kinds, wants))
        self._takers.clear()

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners = [entry for entry in self._listeners if entry[0] != listener]
        self._takers.clear()

    def _taken(self, kind: str) -> tuple[tuple[Listener, Wants | None], ...]:
        """The listeners of this kind, each with its `wants`."""
        found = self._takers.get(kind)
        if found is None:
            found = tuple((e[0], e[2]) for e in self._listeners if e[1] is None or kind in e[1])
            self._takers[kind] = found
        return found

    def _offer(
        self,
        kind: str,
        subscriber_id: str,
        detail: dict[str, Any] | None,
        step: _Step,
        s: ServiceRequest,
    ) -> dict[str, Any] | None:
        """Hand a charge's event of this kind for this subscriber to the takers that want it,
        building it (and its detail, once for all of the charge's events) only if one does.
        Returns the detail, built or not."""
        wanting: list[Listener] = []
        for listener, wants in self._taken(kind):
            try:
                if wants is None or wants(kind, subscriber_id):
                    wanting.append(listener)
            except Exception:  # as a listener's failure: never the charging answer's
                log.exception("event listener's wants failed", extra={"kind": kind})
                wanting.append(listener)
        if wanting:
            if detail is None:
                detail = {
                    "session_id": step.session_id,
                    "rating_group": s.rating_group,
                    "unit": UNIT_NAME[s.unit],
                }
            self._notify(EngineEvent(kind, subscriber_id, {}, detail), tuple(wanting))
        return detail

    async def _emit(
        self, kind: str, subscriber_id: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Tell listeners. Kinds that interfaces act on carry the subscriber's open sessions."""
        if not self._taken(kind):
            return
        sessions = await self.store.sessions_of(subscriber_id) if kind in SESSION_EVENTS else {}
        self._notify(EngineEvent(kind, subscriber_id, sessions, detail or {}))

    def _notify(self, event: EngineEvent, listeners: tuple[Listener, ...] | None = None) -> None:
        """Call `listeners` (None: every listener of the event's kind) with the event."""
        if listeners is None:
            listeners = tuple(fn for fn, _ in self._taken(event.kind))
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's failure must never fail the charging answer
                log.exception("event listener failed", extra={"kind": event.kind})

    async def abort_sessions(self, subscriber_id: str, session_ids: list[str]) -> None:
        """Ask the interfaces to end these sessions (Gy ASR, Nchf abort notification)."""
        everything = await self.store.sessions_of(subscriber_id)
        chosen = {sid: everything[sid] for sid in session_ids if sid in everything}
        self._notify(EngineEvent("abort", subscriber_id, chosen, {}))

    # ------------------------------------------------------------------ identities

    async def resolve(self, kind: str, value: str) -> str:
        return await self.store.resolve(kind, value)

    async def resolve_any(self, identity: str) -> str:
        kind, value = split_identity(identity)
        return await self.store.resolve(kind, value)

    # ------------------------------------------------------------------ sessions

    def _rate(
        self,
        sub: Subscriber,
        rating_group: int | None,
        unit: Unit,
        zone: str | None = None,
        now_ms: int | None = None,
    ) -> Rated:
        now = self.store.clock() if now_ms is None else now_ms
        return self.rater.rate(sub.plan, rating_group, unit, now, zone)

    def _priced(self, args: dict[str, Any], rated: Rated) -> dict[str, Any]:
        """Add what the ledger needs of a rating to an operation's arguments (a charge's
        `_charge_args` adds the same, in its keys' order)."""
        args["price"] = None if rated.price is None else self._price_doc(rated.price)
        if rated.zero_rated:
            args["zero_rated"] = True
        payer = _payer(rated, args["subscriber_id"])
        if payer is not None:
            args["payer"] = payer
        return args

    def _price_doc(self, price: Price) -> PriceDoc:
        """`price.to_json()` with the Price itself (PriceDoc: the ledger takes that, not the
        fields), made once per Price object (a tariff's live as long as it does). By identity:
        hashing a Price by value would run its dataclass's generated __hash__. An entry holds
        its Price, so no other object can have that id meanwhile. Nothing changes the dict once
        it is in an operation's arguments."""
        docs = self._price_docs
        found = docs.get(id(price))
        if found is not None and found[0] is price:
            return found[1]
        if len(docs) >= PRICE_DOCS_MAX:  # tariffs replaced many times over: start again
            docs.clear()
        doc = price_doc(price)  # checked once; its keys sorted: see _charge_args
        docs[id(price)] = (price, doc)
        return doc

    async def session_start(
        self,
        session_id: str,
        subscriber_id: str,
        request_number: int,
        services: list[ServiceRequest],
        meta: dict[str, Any] | None = None,
    ) -> SessionAnswer:
        sub = await self.store.get_subscriber(subscriber_id)
        if sub.kind != "subscriber":
            raise InvalidRequest(f"{sub.id!r} is a group's pool, not a subscriber")
        if sub.status is Status.BARRED:
            raise SubscriberBarred(f"subscriber {sub.id!r} is barred")
        opening = f"{session_id}#open"
        try:
            record = await self.store.execute(
                "session_open",
                opening,
                {"session_id": session_id, "subscriber_id": sub.id, "meta": meta or {}},
            )
        except Conflict:
            # The same start again with other meta (one written by an earlier release, or with
            # the peer-restart switch set otherwise): a retransmission when it names the same
            # subscriber, answered as the first time, as _charge_one does.
            first = await self.store.recorded(opening)
            if first is None or first.get("subscriber_id") != sub.id:
                raise
            record = first
        step = _Step(session_id, sub.id, request_number, False, record.get("meta") or {})
        return await self._step(step, services)

    async def session_update(
        self, session_id: str, request_number: int, services: list[ServiceRequest]
    ) -> SessionAnswer:
        if self.immediate(session_id):
            try:
                answer, barrier = self.session_update_now(session_id, request_number, services)
            except ChargingError:
                await self.settled()  # never refuse ahead of the state the refusal saw
                raise
            if barrier is not None:
                await barrier
            return answer
        record = await self._session(session_id)
        step = _Step(session_id, record["subscriber_id"], request_number, False, record["meta"])
        return await self._step(step, services)

    async def session_terminate(
        self,
        session_id: str,
        request_number: int,
        services: list[ServiceRequest],
        cause: str | None = None,
    ) -> SessionAnswer:
        """Post the final usage and release everything the session still holds."""
        closed = await self.store.recorded(f"{session_id}#close")
        if closed is not None:  # ended already: a copy of the termination that ended it?
            record: dict[str, Any] = {"subscriber_id": closed["subscriber_id"], "meta": {}}
        else:
            record = await self._session(session_id)
        final = [replace(s, requested_units=None, want_grant=False) for s in services]
        meta = {**record["meta"], "cause": cause}
        step = _Step(session_id, record["subscriber_id"], request_number, True, meta)
        if closed is not None:
            # A copy charged nothing new: each of its charge ids is known, and gets its first
            # answer. Any other termination of an ended session (a CCR-T after a refused CCR-I,
            # say) is for an unknown session, as an update is: its usage is not charged.
            for s in final:
                if await self.store.recorded(_op_id(step, s)) is None:
                    raise UnknownSession(f"session {session_id!r} has ended")
        answer = await self._step(step, final)
        if closed is None:
            await self.store.execute(
                "session_close", f"{session_id}#close", {"session_id": session_id}
            )
        self._forget_rates(session_id)
        return answer

    def _forget_rates(self, session_id: str) -> None:
        """Drop an ended session's rate trackers (and its share of its group's rate)."""
        for rating_group in self._session_rgs.pop(session_id, ()):
            key = (session_id, rating_group)
            tracker = self._rates.pop(key, None)
            if tracker is not None and tracker.pool is not None:
                self._contribute(tracker, 0.0)
                keys = self._in_group[tracker.pool[0]]
                keys.discard(key)
                if not keys:
                    del self._in_group[tracker.pool[0]]

    def _ended_during(self, step: _Step) -> UnknownSession:
        """What a step of a session that ended while it was charged raises (Gy 5002); the
        trackers this step made again are dropped, as the termination dropped the others."""
        self._forget_rates(step.session_id)
        return UnknownSession(f"session {step.session_id!r} ended during this step")

    def immediate(self, session_id: str) -> bool:
        """Whether `session_update_now` can charge this session's next step: the store applies
        changes at once, and its subscriber is in no group and has no providers (their credit
        may take a reclaim or a top-up first, which is awaited)."""
        store = self._now
        if store is None:
            return False
        record = store.session_now(session_id)
        if record is None:
            return False
        try:
            sub = store.subscriber_now(record["subscriber_id"])
        except UnknownSubscriber:  # gone while its session was open: session_update says so
            return False
        return sub.group is None and not sub.providers

    def session_update_now(
        self, session_id: str, request_number: int, services: list[ServiceRequest]
    ) -> tuple[SessionAnswer, asyncio.Future[None] | None]:
        """`session_update` with nothing awaited, for a session `immediate` accepts: the answer
        and the barrier to await before sending it (None: already durable). Raises what
        session_update raises; the caller then awaits `settled()` before answering."""
        store = self._now
        assert store is not None
        record = store.session_now(session_id)
        assert record is not None, "immediate() accepted it"
        sub = store.subscriber_now(record["subscriber_id"])
        _check_services(services)
        step = _Step(session_id, sub.id, request_number, False, record.get("meta") or {}, sub)
        # Outside a group services are charged in the order asked (_step's ranking is by the
        # group's policy).
        answers = [self._charge_now(store, step, s) for s in services]
        return SessionAnswer(session_id, sub.id, answers), store.pending()

    def pending_now(self) -> asyncio.Future[None] | None:
        """The barrier to await before answering a refusal `session_update_now` raised."""
        return None if self._now is None else self._now.pending()

    async def settled(self) -> None:
        """Wait until everything applied so far is durable (nothing to wait for without an
        immediate store: its `execute` waited already)."""
        if self._now is not None:
            await self._now.flush()

    def _charge_now(self, store: ImmediateStore, step: _Step, s: ServiceRequest) -> ServiceAnswer:
        """`_charge_one` for a subscriber outside groups, with a store that applies at once: no
        reclaim view, and no second try (it acts only for groups and providers)."""
        op_id = _op_id(step, s)
        result = store.first_answer(op_id)
        idle = False
        if result is None:
            # One clock reading for the rating, the grant's tracker and the ledger.
            now_ms = store.clock()
            args = self._charge_args(step, s, now_ms=now_ms)
            idle = bool(args.get("idle"))
            try:
                result, _ = store.submit("charge", op_id, args, now_ms, True)
            except Conflict:
                # As in _charge_one: same request number, other content is a retransmission.
                result = store.first_answer(op_id)
                if result is None:
                    raise
            else:
                self._after_charge(step, s, result)
        return self._remember_grant(step, s, self._answer(s, result, idle=idle))

    async def _session(self, session_id: str) -> dict[str, Any]:
        record = await self.store.get_session(session_id)
        if record is None:
            raise UnknownSession(f"unknown session {session_id!r}")
        return {"subscriber_id": record["subscriber_id"], "meta": record.get("meta") or {}}

    async def _step(self, step: _Step, services: list[ServiceRequest]) -> SessionAnswer:
        _check_services(services)
        subscriber = step.subscriber
        if subscriber is None:
            subscriber = await self.store.get_subscriber(step.subscriber_id)
        group = step.group
        if subscriber.group is not None:
            group = await self.store.get_group(subscriber.group)
        if subscriber is not step.subscriber or group is not step.group:
            # Built directly: dataclasses.replace costs several us, and this runs per request.
            step = _Step(
                step.session_id,
                step.subscriber_id,
                step.request_number,
                step.closing,
                step.meta,
                subscriber,
                group,
            )
        # The services the group designates are served first when they compete for credit.
        ranked: Sequence[int] = range(len(services))
        if len(services) > 1:
            order = [] if group is None else group.policy.get("service_priority", [])
            ranked = sorted(ranked, key=lambda i: _rank(order, services[i]))
        answers: list[ServiceAnswer | None] = [None] * len(services)
        for i in ranked:
            answers[i] = await self._charge_one(step, services[i])
        return SessionAnswer(
            step.session_id, step.subscriber_id, [a for a in answers if a is not None]
        )

    async def _charge_one(self, step: _Step, s: ServiceRequest) -> ServiceAnswer:
        op_id = _op_id(step, s)
        result = await self.store.recorded(op_id)
        idle = False
        if result is None:
            view = None
            if step.group is not None and step.group.policy.get("allocation") == "reclaim":
                view = await self._pool_view(step, s)
            args = self._charge_args(step, s, view)
            idle = bool(args.get("idle"))
            ended = not step.closing and not await self._open(step.session_id)
            if ended and "reserve" in args:
                # Ended while this step was charged (a termination between a group member's
                # rating groups, each awaiting its commit): its usage is posted, but no grant
                # is held for a session nothing would report on or release (its credit, a
                # shared pool's, would be held until it lapsed). Decided here, in what the
                # journal keeps, so that a replay makes the same choice.
                args = {k: v for k, v in args.items() if k != "reserve"}
            try:
                result = await self.store.execute("charge", op_id, args)
            except Conflict:
                # Same request number, other content (e.g. the grant was sized differently
                # before a restart): a retransmission by definition, so answer as the first time.
                result = await self.store.recorded(op_id)
                if result is None:
                    raise
            else:
                self._after_charge(step, s, result)
                if ended:
                    raise self._ended_during(step)
                second = None
                # Asked here first: most charges need no second try, and each call of the
                # coroutine costs an object.
                if _may_try_again(step, args, result):
                    second = await self._second_try(step, s, op_id, args, result)
                if second is not None:
                    result, retry_s = second
                    return self._remember_grant(step, s, self._answer(s, result, retry_s))
        return self._remember_grant(step, s, self._answer(s, result, idle=idle))

    async def _open(self, session_id: str) -> bool:
        """Whether the session is still open. The embedded store answers without suspending,
        so a charge submitted right after sees the same state."""
        return await self.store.get_session(session_id) is not None

    def _remember_grant(
        self, step: _Step, s: ServiceRequest, answer: ServiceAnswer
    ) -> ServiceAnswer:
        tracker = self._rates.get((step.session_id, s.rating_group))
        if tracker is not None:
            tracker.granted = answer.granted_units
            self._contribute(tracker, (tracker.rate_per_s or 0.0) if tracker.granted > 0 else 0.0)
        return answer

    def _contribute(self, tracker: RateTracker, rate: float) -> None:
        """Set what a member's session adds to its group's summed rate (`_group_rate`)."""
        if tracker.pool is None:
            return
        total = self._group_rate.get(tracker.pool, 0.0) - tracker.contribution + rate
        self._group_rate[tracker.pool] = total
        tracker.contribution = rate

    async def _second_try(
        self, step: _Step, s: ServiceRequest, op_id: str, args: dict[str, Any], result: Result
    ) -> tuple[Result, int | None] | None:
        """When the first charge left the service short: a pool's reclaim or back-off, or the
        subscriber's providers. Returns the result to answer with and a retry validity, or
        None to answer the first result as it is. Only called when _may_try_again."""
        if step.group is not None:
            self._pool_moved(step.group.id)
            if not _short(result, self.policy.limits[s.unit]):
                return None
            retry_s = await self._reclaim(step, s)
            if retry_s is not None:
                granted = await self._wait_for_reclaim(step, s, op_id, args)
                return ({**result, **granted}, None) if granted is not None else (result, retry_s)
            backoff_s = step.group.policy.get("exhausted_retry_s")
            if step.group.policy.get("allocation") == "reclaim" and backoff_s:
                # Nothing to reclaim: the pool is spent. Keep the session, without quota, and
                # tell it when to ask again; a top-up re-authorises it.
                return result, int(backoff_s)
            return None
        # Running low: the subscriber's providers (a parent, an employer) top it up in order
        # and the session goes on without a refusal.
        provided = await self._from_providers(step, s, op_id, args, result)
        return None if provided is None else ({**result, **provided}, None)

    async def _from_providers(
        self, step: _Step, s: ServiceRequest, op_id: str, args: dict[str, Any], first: Result
    ) -> Result | None:
        sub = step.subscriber
        if sub is None or not sub.providers:
            return None
        grant = first.get("grant")
        wanted = int(args["reserve"]["units_max"]) - (0 if grant is None else grant["units"])
        if not await self._open(step.session_id):
            raise self._ended_during(step)  # no top-up, no grant (see _charge_one)
        try:
            topup = await self.store.execute(
                "provider_topup",
                f"{op_id}#provided",
                {
                    "subscriber_id": sub.id,
                    "unit": UNIT_NAME[s.unit],
                    "amount": wanted,
                    "topup_id": f"{op_id}#provided",
                },
            )
        except NoCredit:
            return None
        await self._emit("balance_changed", sub.id, {"op": "provider_topup"})
        for given in topup["given"]:
            await self._emit("balance_changed", given["provider"], {"op": "provider_topup"})
        again = {k: v for k, v in args.items() if k != "record"}
        again["used_units"] = 0
        if not await self._open(step.session_id):
            raise self._ended_during(step)
        result = await self.store.execute("charge", f"{op_id}#after-providers", again)
        if result.get("grant") is None:
            return None
        return {"grant": result["grant"], "refused": None}

    def _pool_moved(self, group_id: str) -> None:
        """A member's charge may have returned pool credit: wake whoever waits for it."""
        event = self._pool_events.pop(group_id, None)
        if event is not None:
            event.set()

    async def _pool_wait(self, group_id: str, left_ms: int) -> bool:
        """Wait until a member's charge may have moved the pool; False after `left_ms`."""
        event = self._pool_events.setdefault(group_id, asyncio.Event())
        self.pool_waiters += 1
        self._waiting[group_id] = self._waiting.get(group_id, 0) + 1
        try:
            async with asyncio.timeout(left_ms / 1000):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            self.pool_waiters -= 1
            self._waiting[group_id] -= 1
        return True

    async def _wait_for_reclaim(
        self, step: _Step, s: ServiceRequest, op_id: str, args: dict[str, Any]
    ) -> Result | None:
        """Hold the member's answer while the sessions asked to report do so, then grant from
        what they returned. None when nothing came back within `reclaim_wait_ms`."""
        assert step.group is not None
        gid = step.group.id
        minimum = self.policy.limits[s.unit].min_units
        deadline_ms = self.store.clock() + int(step.group.policy.get("reclaim_wait_ms", 1_000))
        again = {k: v for k, v in args.items() if k != "record"}
        again["used_units"] = 0
        attempt = 0
        while (left_ms := deadline_ms - self.store.clock()) > 0:
            if not await self._pool_wait(gid, left_ms):
                return None
            if self.store.pool_available(gid, UNIT_NAME[s.unit]) < minimum:
                continue  # woken, but nothing came back yet
            if not await self._open(step.session_id):
                raise self._ended_during(step)  # ended while it waited: no grant for it
            attempt += 1
            result = await self.store.execute("charge", f"{op_id}#held{attempt}", again)
            if not _short(result, self.policy.limits[s.unit]):
                return {"grant": result["grant"], "refused": None}
        return None

    async def _reclaim(self, step: _Step, s: ServiceRequest) -> int | None:
        """Reclaim policy: when the pool cannot give a member its minimum grant, ask the
        sessions holding idle pool credit to report now (Gy RAR / Nchf re-authorisation).

        Returns the short validity for the member to come back after, or None when there is
        nothing worth reclaiming (then the refusal stands).
        """
        group = step.group
        assert group is not None
        if group.policy.get("allocation") != "reclaim":
            return None
        others = await self._held_by_others(step, s)
        rates: dict[tuple[str, int | None], float | None] = {}
        for r in others:
            key = (r.session_id or "", r.rating_group)
            tracker = self._rates.get(key)
            rates[key] = None if tracker is None else tracker.rate_per_s
        min_age_ms = int(group.policy.get("reclaim_min_age_s", RECLAIM_MIN_AGE_S)) * 1000
        minimum = self.policy.limits[s.unit].min_units
        # A re-auth costs two messages: a holding with less than half a minimum grant idle is
        # not worth asking back.
        total, worth = reclaimable(others, rates, self.store.clock(), min_age_ms, minimum // 2)
        if total < minimum:
            view = await self._pool_view(step, s)
            if view.spent(self.store.pool_available(group.id, UNIT_NAME[s.unit]), 0, minimum):
                # The pool is spent: what members still hold comes back and stays, so nobody
                # holds credit while others are refused. The refusal waits for them (at most
                # reclaim_wait_ms), so it goes out when nothing is held any more.
                await self._reauthorize(group.id, step.subscriber_id, others)
                deadline_ms = self.store.clock() + int(group.policy.get("reclaim_wait_ms", 1_000))
                held = others
                while held and (left_ms := deadline_ms - self.store.clock()) > 0:
                    if not await self._pool_wait(group.id, left_ms):
                        break
                    held = await self._held_by_others(step, s)
            return None
        await self._reauthorize(group.id, step.subscriber_id, worth)
        self.reclaims += 1
        retry_s: int = group.policy.get("retry_s", 5)
        return retry_s

    async def _held_by_others(self, step: _Step, s: ServiceRequest) -> list[Reservation]:
        """Open grants on the member's pool, in this unit, held by other sessions."""
        assert step.group is not None
        return [
            r
            for r in await self.store.pool_reservations(step.group.id)
            if r.session_id != step.session_id and r.unit is s.unit
        ]

    async def _reauthorize(self, group_id: str, for_id: str, held: list[Reservation]) -> None:
        """Ask the sessions holding these grants to report now (reclaim)."""
        sessions: dict[str, dict[str, Any]] = {}
        for res in held:
            if res.session_id is not None:
                record = await self.store.get_session(res.session_id)
                if record is not None:
                    sessions[res.session_id] = record
        by_owner: dict[str, dict[str, dict[str, Any]]] = {}
        for sid, record in sessions.items():
            by_owner.setdefault(record["subscriber_id"], {})[sid] = record
        for owner, owned in by_owner.items():
            self._notify(
                EngineEvent(
                    "reauthorize",
                    owner,
                    owned,
                    {"group_id": group_id, "reclaim_for": for_id},
                )
            )

    def _after_charge(self, step: _Step, s: ServiceRequest, result: Result) -> None:
        """Tell listeners what a charge changed. Not a coroutine: these kinds carry no
        sessions, so nothing is awaited (two coroutine objects per charge saved). Each event
        is built only if a listener wants it (the usual charge: nobody watches its subscriber,
        and building it cost about 3,000 instructions)."""
        # Asked and handed over in turn: a taker's answer may follow from the event before
        # (the notify gate wants a refused subscriber's balance event once its refusal came).
        detail: dict[str, Any] | None = None
        if result.get("refused") == "no_credit":
            detail = self._offer("no_credit", step.subscriber_id, detail, step, s)
        if result["posted_units"] or result.get("grant"):
            detail = self._offer("balance_changed", step.subscriber_id, detail, step, s)
            if step.group is not None:  # the shared pool may have moved too
                self._offer("balance_changed", step.group.id, detail, step, s)

    async def _pool_view(self, step: _Step, s: ServiceRequest) -> PoolView:
        """The pool as the reclaim policy sizes a grant: the others' summed rate, what open
        grants hold, who waits, how many sessions are active; none of it adds up the group."""
        assert step.group is not None
        gid = step.group.id
        own = self._rates.get((step.session_id, s.rating_group))
        rate = self._group_rate.get((gid, s.unit), 0.0) - (0.0 if own is None else own.contribution)
        held = self.store.pool_held(gid, UNIT_NAME[s.unit])
        return PoolView(rate, held, self._waiting.get(gid, 0), self._active(gid))

    def _active(self, group_id: str) -> int:
        """The group's sessions that would use at least a minimum grant in a validity time.

        Counted at most once per second per group: a fleet has thousands of sessions, and the
        count only decides when a nearly empty pool is spent."""
        second = self.store.clock() // 1000
        cached = self._active_counted.get(group_id)
        if cached is not None and cached[0] == second:
            return cached[1]
        floor = min(lim.min_units for lim in self.policy.limits.values()) / self.policy.validity_s
        active = 0
        for key in self._in_group.get(group_id, ()):
            tracker = self._rates.get(key)
            if tracker is not None and (tracker.rate_per_s or 0.0) >= floor:
                active += 1
        self._active_counted[group_id] = (second, active)
        return active

    def _charge_args(
        self,
        step: _Step,
        s: ServiceRequest,
        view: PoolView | None = None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        key = (step.session_id, s.rating_group)
        if now_ms is None:
            now_ms = self.store.clock()
        tracker = self._rates.get(key)
        if tracker is None:
            reservation_id = f"{step.session_id}#{s.rating_group}"
            tracker = self._rates[key] = RateTracker(now_ms, reservation_id=reservation_id)
            self._session_rgs.setdefault(step.session_id, []).append(s.rating_group)
            if step.group is not None:
                tracker.pool = (step.group.id, s.unit)
                self._in_group.setdefault(step.group.id, set()).add(key)
            interval_start_ms = now_ms
        else:
            interval_start_ms = tracker.last_ms
            # In a shared pool a report of nothing used is a sample too: an idle member's rate
            # decays, so its grants shrink to nothing. Elsewhere a session that has not used
            # anything yet keeps the size it asked for.
            if s.used_units or step.group is not None:
                tracker.observe(s.used_units, now_ms, self.policy.rate_weight)
        assert step.subscriber is not None
        rated = self._rate(step.subscriber, s.rating_group, s.unit, step.meta.get("zone"), now_ms)
        record: SessionRecord | None = None
        if s.used_units or step.closing:
            # Written with the debit, in the same commit (see store: charging records).
            record = (
                step.meta.get("interface", "unknown"),
                step.session_id,
                step.request_number,
                interval_start_ms,
                s.used_input_octets,
                s.used_output_octets,
                step.closing,
                step.meta.get("cause"),
                rated.plan,
            )
        idle = False
        reserve: dict[str, Any] | None = None
        if s.want_grant and not step.closing:
            validity_s = self.policy.validity_s
            pool_available = 0
            if step.group is not None:
                pool_available = self.store.pool_available(step.group.id, UNIT_NAME[s.unit])
                pool_grant = size_pool_grant(
                    step.group.policy,
                    self.policy,
                    s.unit,
                    tracker.rate_per_s,
                    s.requested_units,
                    pool_available,
                    len(step.group.members),
                    idle=s.used_units == 0 and tracker.granted > 0,
                    view=None
                    if view is None
                    else replace(view, rate_per_s=view.rate_per_s + (tracker.rate_per_s or 0.0)),
                    used=s.used_units,
                )
                units, validity_s = pool_grant.units, pool_grant.validity_s
                # Idle: nothing held; the network asks again on traffic.
                idle = units == 0
            else:
                units = self.policy.size(s.unit, tracker.rate_per_s, s.requested_units)
            if not idle:
                lim = self.policy.limits[s.unit]
                reserve = {
                    "session_id": step.session_id,
                    "units_max": units,
                    "units_min": min(lim.min_units, units),
                    "validity_ms": (validity_s + self.policy.grace_s) * 1000,
                }
                if view is not None and view.spent(pool_available, s.used_units, lim.min_units):
                    # Its own buckets only; keys stay in sorted order (see below).
                    reserve = {"session_id": step.session_id, "skip_pool": True, **reserve}
        # Keys in sorted order, nested ones too (`_price_doc`): the ledger encodes them as
        # they are, where it would sort them (`Ledger.apply_encoded(sorted_keys=True)`); the
        # journal's bytes and a repeat's fingerprint are the same as sorting gives.
        args: dict[str, Any] = {}
        if idle:
            args["idle"] = True
        payer = _payer(rated, step.subscriber_id)
        if payer is not None:
            args["payer"] = payer
        args["price"] = None if rated.price is None else self._price_doc(rated.price)
        args["rating_group"] = s.rating_group
        if record is not None:
            args["record"] = record
        args["reservation_id"] = tracker.reservation_id
        if reserve is not None:
            args["reserve"] = reserve
        args["session_id"] = step.session_id
        args["subscriber_id"] = step.subscriber_id
        args["unit"] = UNIT_NAME[s.unit]
        args["used_units"] = s.used_units
        if rated.zero_rated:
            args["zero_rated"] = True
        return args

    def _answer(
        self, s: ServiceRequest, result: Result, retry_s: int | None = None, idle: bool = False
    ) -> ServiceAnswer:
        grant = result.get("grant")
        validity_s = self.policy.validity_s
        if "grant" not in result and idle:
            return ServiceAnswer(
                s.rating_group,
                s.unit,
                ServiceResult.GRANTED,
                0,
                validity_s,
                result["posted_units"],
                result["unpaid_units"],
            )
        if grant is not None:
            validity_ms = grant.get("validity_ms", (validity_s + self.policy.grace_s) * 1000)
            validity_s = max(1, validity_ms // 1000 - self.policy.grace_s)
        if "grant" not in result:
            status = ServiceResult.REPORTED
            granted = 0
        elif grant is None:
            status = (
                ServiceResult.BARRED
                if result.get("refused") == "barred"
                else ServiceResult.NO_CREDIT
            )
            granted = 0
        else:
            granted = grant["units"]
            status = ServiceResult.FINAL if grant["exhausted"] else ServiceResult.GRANTED
        if retry_s is not None:  # credit is being reclaimed for this member: come back soon
            status, validity_s = ServiceResult.RETRY, retry_s
        return ServiceAnswer(
            rating_group=s.rating_group,
            unit=s.unit,
            result=status,
            granted_units=granted,
            validity_s=validity_s,
            posted_units=result["posted_units"],
            unpaid_units=result["unpaid_units"],
        )

    # ------------------------------------------------------------------ events (one-shot)

    async def direct_debit(
        self,
        op_id: str,
        subscriber_id: str,
        unit: Unit,
        units: int,
        rating_group: int | None,
        interface: str = "api",
    ) -> DebitAnswer:
        try:
            result = await self._debit(op_id, subscriber_id, unit, units, rating_group, interface)
        except NoCredit:
            await self._emit(
                "no_credit", subscriber_id, {"unit": UNIT_NAME[unit], "event_id": op_id}
            )
            raise
        await self._emit("balance_changed", subscriber_id, {"unit": UNIT_NAME[unit]})
        return DebitAnswer(
            subscriber_id, unit, result["units"], result["cost_micros"], result["drawn"]
        )

    async def _debit(
        self,
        op_id: str,
        subscriber_id: str,
        unit: Unit,
        units: int,
        rating_group: int | None,
        interface: str,
    ) -> Result:
        sub = await self.store.get_subscriber(subscriber_id)
        rated = self._rate(sub, rating_group, unit)
        args = {
            "subscriber_id": subscriber_id,
            "unit": UNIT_NAME[unit],
            "units": units,
            "rating_group": rating_group,
            "record": {
                "kind": "event",
                "interface": interface,
                "event_id": op_id,
                "plan": rated.plan,
            },
        }
        return await self.store.execute("debit", op_id, self._priced(args, rated))

    async def refund(
        self, op_id: str, subscriber_id: str, unit: Unit, units: int, interface: str = "api"
    ) -> dict[str, Any]:
        result = await self.store.execute(
            "refund",
            op_id,
            {
                "subscriber_id": subscriber_id,
                "unit": UNIT_NAME[unit],
                "amount": units,
                "record": {"kind": "refund", "interface": interface, "event_id": op_id},
            },
        )
        await self._emit("credit_added", subscriber_id)
        return result

    async def balance_check(self, subscriber_id: str, unit: Unit, rating_group: int | None) -> int:
        """Service units the subscriber could pay for now (unit buckets plus money)."""
        sub = await self.store.get_subscriber(subscriber_id)
        rated = self._rate(sub, rating_group, unit)
        if rated.zero_rated:
            return AMOUNT_MAX
        price = None if rated.price is None else rated.price.to_json()
        return self.store.payable_units(sub, UNIT_NAME[unit], rating_group, price)

    def price_enquiry(
        self,
        unit: Unit,
        units: int,
        *,
        plan: str | None = None,
        rating_group: int | None = None,
        zone: str | None = None,
    ) -> int:
        """Money, in micro-units, that `units` would cost from the first unit (0 when free)."""
        if units < 0:
            raise InvalidAmount("units must not be negative")
        rated = self.rater.rate(plan, rating_group, unit, self.store.clock(), zone)
        return 0 if rated.price is None else rated.price.cost(units)

    # ------------------------------------------------------------------ administration

    async def admin(self, op: str, op_id: str | None, args: dict[str, Any]) -> Result:
        """Provisioning operations; emits the events interfaces act on (RAR, ASR, notify)."""
        result = await self.store.execute(op, op_id, args)
        if (
            op in ("topup", "refund")
            or (op == "adjust" and args.get("amount", 0) > 0)
            or (op == "add_bucket" and args.get("amount", 0) > 0)
        ):
            for sid in await self._holders(args["subscriber_id"]):
                await self._emit("credit_added", sid)
        elif op in ("transfer", "reverse_transfer", "allowance_transfer"):
            await self._emit("credit_added", result["to"], {"transfer_id": result["id"]})
            await self._emit("balance_changed", result["from"], {"op": op})
        elif op == "create_voucher":
            await self._emit("balance_changed", result["parent"], {"op": op})
        elif op == "interop_credit":
            await self._emit("credit_added", result["subscriber_id"], {"op": op})
        elif op == "interop_cancel":
            await self._emit("credit_added", result["from"], {"op": op})
        elif op == "buy_quota":
            await self._emit("credit_added", result["subscriber_id"], {"op": op})
        elif op == "redeem_voucher":
            await self._emit("credit_added", result["redeemed_by"], {"voucher_id": result["id"]})
        elif op == "update_subscriber" and args.get("status") == Status.BARRED.value:
            await self._emit("barred", args["id"])
        elif op in ("update_group", "update_member", "group_reset", "add_member"):
            # New caps, priorities or policy apply to live sessions at their next report: ask
            # for it now.
            members = [args["subscriber_id"]] if "subscriber_id" in args else None
            for sid in members or await self._holders(args["group_id"]):
                await self._emit("reauthorize", sid, {"group_id": args["group_id"], "op": op})
                await self._emit("balance_changed", sid, {"group_id": args["group_id"], "op": op})
        if "subscriber_id" in args:
            self._pool_moved(args["subscriber_id"])  # a pool's top-up wakes held answers
            await self._emit("balance_changed", args["subscriber_id"], {"op": op})
        return result

    async def _holders(self, account_id: str) -> list[str]:
        """Who draws on an account: its members for a group's pool, else the subscriber."""
        sub = await self.store.get_subscriber(account_id)
        if sub.kind != "group":
            return [account_id]
        group = await self.store.get_group(account_id)
        return list(group.members)
