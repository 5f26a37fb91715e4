"""First answers to credit-control requests, so a retransmission gets the very same answer.

A retransmission (T flag after a failover, or a client retry) has the same Session-Id,
CC-Request-Type and CC-Request-Number. While the first is still being charged the copy waits
for it, so it is never answered before the first answer is durable; afterwards it gets a copy
of that answer, with the copy's own Proxy-Info (messages.with_proxy_info). The table is
bounded in entries and age; past it, the engine's idempotency still charges a request only
once and rebuilds the same answer from the first result.

A first answer is kept sealed: put in shape for the wire and its AVPs encoded, once (the
transport then sends those bytes behind a header of its own). The table holds bytes, not a
tree of AVP objects per answer for the collector to walk and for eviction to free cold.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from quotaflow.diameter.codec import decode_message
from quotaflow.diameter.constants import FLAG_ERROR, HEADER_OCTETS
from quotaflow.diameter.message import Message
from quotaflow.diameter.messages import with_proxy_info

AnswerKey = tuple[str, int, int]  # Session-Id, CC-Request-Type, CC-Request-Number
# Puts an answer in shape for the request it answers and encodes it (setting its avps_wire).
Seal = Callable[[Message, Message], bytes]


def copy_answer(answer: Message) -> Message:
    """A new Message with the same AVPs (they are never mutated once built); the transport
    then sets the ids of the request it answers."""
    copy = Message(
        answer.command_code,
        answer.application_id,
        flags=answer.flags & FLAG_ERROR,
        avps=list(answer.avps),
        dictionary=answer.dictionary,
    )
    copy.avps_wire = answer.avps_wire
    return copy


def unseal(frame: bytes, request: Message) -> Message:
    """A kept answer as a Message again, for `request` (a copy of the one it answered): its
    AVPs decoded, the encoded ones reused to send unless the copy's Proxy-Info differs."""
    answer = decode_message(frame, request.dictionary)
    answer.flags &= FLAG_ERROR
    answer.avps_wire = frame[HEADER_OCTETS:]
    return with_proxy_info(answer, request)


class Kept:
    """One key's first answer: None while it is being charged, then the sealed frame. A copy
    arriving meanwhile waits on `waiting`, made only then (copies are rare; a future per
    request is not free)."""

    __slots__ = ("at", "first", "gone", "key", "waiting")

    def __init__(self, key: AnswerKey, at: float) -> None:
        self.key = key
        self.at = at
        self.first: bytes | None = None
        self.waiting: asyncio.Future[Message] | None = None
        self.gone = False  # replaced or discarded: no longer in the table


class AnswerCache:
    def __init__(self, entries_max: int, age_max_s: float, seal: Seal) -> None:
        assert entries_max > 0 and age_max_s > 0
        self._entries_max = entries_max
        self._age_max_s = age_max_s
        self._seal = seal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._entries: dict[AnswerKey, Kept] = {}
        # Oldest first (insertion order is age order), so eviction never hashes a key it keeps.
        # An entry replaced or discarded is marked gone and stays here until it reaches the
        # front; it counts against nothing. (Forgetting from the front of the dict itself would
        # rescan the slots its deletions left there: 23 us per insert at 32k entries.)
        self._order: deque[Kept] = deque()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def answer(
        self,
        key: AnswerKey,
        request: Message,
        compute: Callable[[], Awaitable[Message]],
        keep: Callable[[Message], bool],
    ) -> Message:
        """The first answer for `key` if it is known or being computed, else `compute()`'s,
        sealed. Answers for which `keep` is false (transient failures) are not kept."""
        now = time.monotonic()
        kept = self._entries.get(key)
        if kept is not None and now - kept.at <= self._age_max_s:
            self.hits += 1
            first = kept.first
            if first is not None:
                return unseal(first, request)
            waiting = kept.waiting
            if waiting is None:
                waiting = kept.waiting = self._running_loop().create_future()
            answer = await asyncio.shield(waiting)
            frame = kept.first  # set before the copies wake
            if frame:  # sealed: all of the answer (its `avps` may be only its head)
                return unseal(frame, request)
            return with_proxy_info(copy_answer(answer), request)  # never sealed: all its AVPs
        kept = self.begin(key, now)
        try:
            answer = await compute()
            # Sealed here, so that a failure to encode fails the copies waiting too.
            frame = self._seal(request, answer)
        except BaseException as exc:
            self.fail(kept, exc)
            raise
        self.settle(kept, answer, frame, keep(answer))
        return answer

    # The same steps for an answer computed at once but sent only once durable (Gy's
    # handle_now): `known` first, then `begin`, and `settle` or `fail` once the barrier is done.

    def known(self, key: AnswerKey, now: float) -> bool:
        """Whether `key` has a first answer, or one being computed, within the age limit."""
        kept = self._entries.get(key)
        return kept is not None and now - kept.at <= self._age_max_s

    def begin(self, key: AnswerKey, now: float) -> Kept:
        """Start keeping the first answer of a key that is not `known`; copies arriving from
        now on wait for it."""
        entries = self._entries
        kept = entries.get(key)
        if kept is not None:  # expired: replaced
            kept.gone = True
        kept = entries[key] = Kept(key, now)
        self._order.append(kept)
        self._evict(now)
        return kept

    def settle(self, kept: Kept, answer: Message, frame: bytes, keep: bool) -> None:
        """The first answer is durable: copies get it from now on (unless `keep` is false:
        a transient failure, which a retry may get differently)."""
        kept.first = frame
        if kept.waiting is not None:
            kept.waiting.set_result(answer)
        if not keep:
            self._discard(kept)

    def fail(self, kept: Kept, exc: BaseException) -> None:
        """No first answer: the copies waiting get `exc`, later ones are computed again."""
        self._discard(kept)
        waiting = kept.waiting
        if waiting is not None:
            waiting.set_exception(exc)
            waiting.exception()  # retrieved: every copy may have gone meanwhile

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop() costs a getpid() system call each time
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _evict(self, now: float) -> None:
        """Forget the oldest answers past the age limit, and past the size limit those that
        are settled. One still being charged stays until it is (or ages out): a copy must wait
        for it, and past the cache it would be answered from the first ledger result alone,
        without what a second try (a reclaim, a provider) or an idle pool's grant added. So
        the table may hold more than entries_max while that many requests are in flight."""
        order, entries = self._order, self._entries
        horizon = now - self._age_max_s
        while order:
            oldest = order[0]
            if (
                not oldest.gone
                and oldest.at >= horizon
                and (len(entries) <= self._entries_max or oldest.first is None)
            ):
                return
            order.popleft()
            if not oldest.gone:
                oldest.gone = True
                del entries[oldest.key]

    def _discard(self, kept: Kept) -> None:
        if not kept.gone:
            kept.gone = True
            del self._entries[kept.key]
