"""The asyncio Protocol wrapping one PeerConnection; shared by the server and the client.

It owns no protocol logic: it feeds bytes to the PeerConnection, writes what it returns, runs
the timers, dispatches application requests to an async handler and resolves the futures of
requests we sent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

from quotaflow.diameter.constants import ResultCode
from quotaflow.diameter.errors import LinkClosedError
from quotaflow.diameter.events import (
    AnswerReceived,
    CapabilitiesExchanged,
    ConnectionClosed,
    Event,
    MessageRejected,
    PeerInfo,
    RequestReceived,
    UnmatchedAnswer,
)
from quotaflow.diameter.message import IPAddress, Message
from quotaflow.diameter.peer import PeerConnection, PeerState

log = logging.getLogger("quotaflow.diameter")

RequestHandler = Callable[[PeerInfo, Message], Awaitable[Message]]


class ImmediateHandler(Protocol):
    """A handler that can answer some requests at once, with no task or coroutine: the answer
    is computed now and sent when its change is durable (a barrier it returns is done)."""

    def handle_now(
        self, peer: PeerInfo, request: Message
    ) -> tuple[Message, bytes | None, asyncio.Future[None] | None, Message] | None:
        """The answer, the answer as encoded for this request (None: encode it when sent), the
        barrier to wait on before sending it (None: send now), and what of the request to hold
        until then for `failed` (gy.Ccr.basis: the whole request would keep all its
        AVPs alive until the barrier is done); None for a request this path does not take (the
        async handler gets it)."""
        ...

    def failed(self, request: Message, exc: BaseException) -> Message:
        """The answer to send instead when the barrier failed with `exc`."""
        ...


IN_FLIGHT_MAX: Final = 1_024  # application requests being handled per connection; beyond: 3004
_UNABLE_TO_COMPLY: Final[int] = int(ResultCode.UNABLE_TO_COMPLY)  # read once (see gy_answer)


class PeerLink(asyncio.Protocol):
    def __init__(
        self,
        make_connection: Callable[[IPAddress | None, IPAddress | None], PeerConnection],
        handler: RequestHandler,
        *,
        watchdog_interval_s: float,
        open_timeout_s: float,
        in_flight_max: int = IN_FLIGHT_MAX,
        on_open: Callable[[PeerLink], None] | None = None,
        on_closed: Callable[[PeerLink], None] | None = None,
        immediate: ImmediateHandler | None = None,
    ) -> None:
        assert watchdog_interval_s > 0 and open_timeout_s > 0 and in_flight_max > 0
        self._make_connection = make_connection
        self._handler = handler
        self._immediate = immediate
        self._watchdog_interval_s = watchdog_interval_s
        self._open_timeout_s = open_timeout_s
        self._in_flight_max = in_flight_max
        self._on_open = on_open
        self._on_closed = on_closed
        self.connection: PeerConnection | None = None
        self.transport: asyncio.Transport | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[PeerInfo] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._waiters: dict[int, asyncio.Future[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        # Answers released by one group commit are written in the same loop iteration: they
        # are gathered here and sent in one transport.write (one syscall, not one each).
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        # Answers computed at once, each group waiting on its barrier: one callback per barrier
        # sends them all, where a task per request would wake and finish on its own.
        self._held: dict[asyncio.Future[None], list[tuple[Message, Message, bytes | None]]] = {}
        self._held_count = 0

    @property
    def peer(self) -> PeerInfo | None:
        return self.connection.peer if self.connection is not None else None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.connection = self._make_connection(
            _address(transport.get_extra_info("sockname")),
            _address(transport.get_extra_info("peername")),
        )
        self._timer = self._loop.call_later(self._open_timeout_s, self._open_timeout)

    def data_received(self, data: bytes) -> None:
        assert self.connection is not None
        self._handle(self.connection.receive_data(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.connection is not None:
            self._handle(self.connection.connection_lost())
        self._finish("connection lost" if exc is None else f"connection lost: {exc}")

    def pause_writing(self) -> None:
        # The peer reads slower than we answer: stop reading new requests until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- used by the server and the client -----------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue `data`; everything queued in this loop iteration goes out in one write."""
        if data and self.transport is not None and not self.transport.is_closing():
            self._out.append(data)
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued now."""
        self._flush_handle = None
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_request(self, request: Message) -> asyncio.Future[Message]:
        """Send a request; the future gets its answer (or LinkClosedError)."""
        assert self.connection is not None
        data = self.connection.send(request)
        future: asyncio.Future[Message] = self._loop.create_future()
        self._waiters[request.hop_by_hop] = future
        self.write(data)
        return future

    async def request(self, request: Message, timeout_s: float) -> Message:
        """Send a request and await its answer; TimeoutError after `timeout_s`.

        An answer that arrives in the loop iteration the deadline passes is still returned:
        the timeout cancels this wait, not the future the answer is already in.
        """
        future = self.send_request(request)
        try:
            return await answer_within(future, timeout_s)
        except TimeoutError:
            self.forget(request)
            raise

    def forget(self, request: Message) -> None:
        """Stop waiting for the answer to `request` (timed out)."""
        self._waiters.pop(request.hop_by_hop, None)
        if self.connection is not None:
            self.connection.cancel_request(request.hop_by_hop)

    def abort(self, reason: str) -> None:
        log.info("closing Diameter connection to %s: %s", self._name(), reason)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self.flush()  # what is queued (a DPA, an error answer) still goes before the close
        if self.transport is not None:
            self.transport.close()
        self._finish(reason)

    # -- internals -----------------------------------------------------------------------------

    def _handle(self, events: list[Event]) -> None:
        assert self.connection is not None
        for event in events:
            if isinstance(event, RequestReceived):
                self._dispatch(event.request)
            elif isinstance(event, AnswerReceived):
                waiter = self._waiters.pop(event.answer.hop_by_hop, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event.answer)
            elif isinstance(event, CapabilitiesExchanged):
                self._opened(event.peer)
            elif isinstance(event, MessageRejected):
                log.warning("Diameter message from %s rejected: %s", self._name(), event.error)
            elif isinstance(event, UnmatchedAnswer):
                log.debug("unmatched answer from %s: %r", self._name(), event.answer)
            elif isinstance(event, ConnectionClosed):
                self.write(self.connection.data_to_send())
                self.abort(event.reason)
        self.write(self.connection.data_to_send())

    def _opened(self, peer: PeerInfo) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._watchdog_interval_s, self._watchdog)
        if not self.opened.done():
            self.opened.set_result(peer)
        if self._on_open is not None:
            self._on_open(self)

    def _dispatch(self, request: Message) -> None:
        assert self.connection is not None
        connection = self.connection
        if len(self._tasks) + self._held_count >= self._in_flight_max:
            busy = connection.answer(request, ResultCode.TOO_BUSY, "too many requests in flight")
            self.write(connection.send(busy))
            return
        immediate = self._immediate
        if immediate is not None:
            assert connection.peer is not None
            try:
                done = immediate.handle_now(connection.peer, request)
            except Exception:
                log.exception("Diameter handler failed on %r", request)
                failure = connection.answer(request, _UNABLE_TO_COMPLY, "internal error")
                self.write(connection.send_answer(request, failure))
                return
            if done is not None:
                answer, frame, barrier, held = done
                if barrier is not None:
                    self._hold(held, answer, frame, barrier)
                elif frame is not None:
                    self.write(connection.send_encoded(frame))
                else:
                    self.write(connection.send_answer(request, answer))
                return
        task = self._loop.create_task(self._answer(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, request: Message) -> None:
        connection = self.connection
        assert connection is not None and connection.peer is not None
        try:
            answer = await self._handler(connection.peer, request)
        except Exception:
            log.exception("Diameter handler failed on %r", request)
            answer = connection.answer(request, ResultCode.UNABLE_TO_COMPLY, "internal error")
        if connection.state is not PeerState.CLOSED:
            self.write(connection.send_answer(request, answer))

    def _hold(
        self,
        request: Message,
        answer: Message,
        frame: bytes | None,
        barrier: asyncio.Future[None],
    ) -> None:
        held = self._held.get(barrier)
        if held is None:
            held = self._held[barrier] = []
            barrier.add_done_callback(self._release)
        held.append((request, answer, frame))
        self._held_count += 1

    def _release(self, barrier: asyncio.Future[None]) -> None:
        """The barrier is done: send what waited on it (or, if it failed, what the handler
        answers instead)."""
        held = self._held.pop(barrier, [])
        self._held_count -= len(held)
        connection = self.connection
        if connection is None or connection.state is PeerState.CLOSED:
            return
        exc = barrier.exception() if not barrier.cancelled() else asyncio.CancelledError()
        immediate = self._immediate
        for request, answer, frame in held:
            if exc is not None and immediate is not None:
                self.write(connection.send_answer(request, immediate.failed(request, exc)))
            elif frame is not None:
                self.write(connection.send_encoded(frame))
            else:
                self.write(connection.send_answer(request, answer))

    def _watchdog(self) -> None:
        assert self.connection is not None
        self._handle(self.connection.on_watchdog_timer())
        if self.connection.state is PeerState.OPEN:
            self._timer = self._loop.call_later(self._watchdog_interval_s, self._watchdog)

    def _open_timeout(self) -> None:
        self.abort(f"no capabilities exchange within {self._open_timeout_s} s")

    def _finish(self, reason: str) -> None:
        if self.closed.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(LinkClosedError(reason))
        self._waiters.clear()
        if not self.opened.done():
            self.opened.set_exception(LinkClosedError(reason))
            self.opened.exception()  # retrieved: nobody may be awaiting a refused connection
        self.closed.set_result(reason)
        if self._on_closed is not None:
            self._on_closed(self)

    def _name(self) -> str:
        peer = self.peer
        if peer is not None:
            return peer.origin_host
        remote = self.connection.remote_address if self.connection is not None else None
        return str(remote)


async def answer_within(future: asyncio.Future[Message], timeout_s: float) -> Message:
    """The answer `future` gets within `timeout_s`, else TimeoutError; an answer set in the very
    loop iteration the deadline passes still counts (awaited directly, the future would be
    cancelled with the wait, or its result dropped when the wait is cancelled after it)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(future)
    except TimeoutError:
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        raise


def _address(sockaddr: object) -> IPAddress | None:
    if isinstance(sockaddr, tuple) and sockaddr:
        try:
            return ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        except ValueError:
            return None
    return None
