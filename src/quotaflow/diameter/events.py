"""What a PeerConnection reports after reading bytes (the h11 style: bytes in, events out)."""

from __future__ import annotations

from dataclasses import dataclass, field

from quotaflow.diameter.errors import DiameterError
from quotaflow.diameter.message import IPAddress, Message


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the remote peer said about itself in its CER (or CEA)."""

    origin_host: str
    origin_realm: str
    host_ip_addresses: tuple[IPAddress, ...]
    vendor_id: int
    product_name: str
    application_ids: frozenset[int]
    origin_state_id: int | None = None
    remote_address: IPAddress | None = None


class Event:
    """Base class of everything receive_data() returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CapabilitiesExchanged(Event):
    """CER/CEA succeeded: the connection is open for application traffic."""

    peer: PeerInfo


# One per request: not frozen (a frozen one sets its field through object.__setattr__) and an
# explicit __init__, which mypyc compiles. Never changed once made.
@dataclass(slots=True, init=False)
class RequestReceived(Event):
    """A valid application request (CCR, RAR, ...) that the application must answer."""

    request: Message

    def __init__(self, request: Message) -> None:
        self.request = request


@dataclass(slots=True, init=False)
class AnswerReceived(Event):
    """The answer to a request we sent, matched by hop-by-hop id (one per answer, as above)."""

    answer: Message
    request: Message

    def __init__(self, answer: Message, request: Message) -> None:
        self.answer = answer
        self.request = request


@dataclass(frozen=True, slots=True)
class UnmatchedAnswer(Event):
    """An answer whose hop-by-hop id matches nothing we sent; RFC 6733 says discard it."""

    answer: Message


@dataclass(frozen=True, slots=True)
class MessageRejected(Event):
    """A received frame failed validation; `answered` when an error answer was queued."""

    error: DiameterError
    answered: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The transport must send what data_to_send() holds, then close the connection."""

    reason: str
    pending: list[Message] = field(default_factory=list)  # our requests left unanswered
