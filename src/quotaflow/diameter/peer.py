"""The sans-I/O Diameter peer connection: bytes in, events out; messages in, bytes out.

It handles what RFC 6733 puts below the application: framing, validation and error answers,
the capabilities exchange (CER/CEA), watchdog (DWR/DWA, RFC 3539), disconnection (DPR/DPA) and
hop-by-hop matching of answers to the requests we sent. Time is the caller's: it calls
on_watchdog_timer() every Tw seconds.
"""

from __future__ import annotations

import ipaddress
import random
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from quotaflow.diameter.codec import encode_message, salvage_avps
from quotaflow.diameter.constants import (
    APPLICATION_CREDIT_CONTROL,
    APPLICATION_RELAY,
    DEFAULT_IDENTITY,
    DEFAULT_REALM,
    DIAMETER_VERSION,
    FLAG_REQUEST,
    HEADER_OCTETS,
    PRODUCT_NAME,
    CommandCode,
    DisconnectCause,
    ResultCode,
)
from quotaflow.diameter.dictionary import VENDOR_3GPP, Dictionary, default_dictionary
from quotaflow.diameter.errors import DiameterError, FramingError, PeerError
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
from quotaflow.diameter.messages import (
    build_capabilities,
    build_dpr,
    build_dwr,
    make_answer,
    normalize_answer,
)
from quotaflow.diameter.validate import parse_message

MESSAGE_OCTETS_MAX = 65_536  # default frame limit; Gy frames are a few hundred octets
PENDING_REQUESTS_MAX = 4_096  # our requests awaiting an answer, per connection
WATCHDOG_MISSED_MAX = 2  # unanswered DWR periods before the peer is declared down (RFC 3539)


class Role(Enum):
    SERVER = "server"  # waits for CER
    CLIENT = "client"  # sends CER


class PeerState(Enum):
    WAIT_CER = "wait-cer"
    WAIT_CEA = "wait-cea"
    OPEN = "open"
    CLOSING = "closing"  # DPR sent, waiting for DPA
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class AllowedPeer:
    """An allowed client: its Origin-Host, and the addresses it may connect from (any if empty)."""

    origin_host: str
    addresses: frozenset[IPAddress] = frozenset()


@dataclass(frozen=True)
class PeerConfig:
    """Our identity and policy; one instance is shared by all connections of a server."""

    origin_host: str = DEFAULT_IDENTITY
    origin_realm: str = DEFAULT_REALM
    host_ip_addresses: tuple[IPAddress, ...] = (ipaddress.IPv4Address("127.0.0.1"),)
    vendor_id: int = 0
    product_name: str = PRODUCT_NAME
    firmware_revision: int = 1
    origin_state_id: int = field(default_factory=lambda: int(time.time()) & 0xFFFFFFFF)
    auth_application_ids: frozenset[int] = frozenset({APPLICATION_CREDIT_CONTROL})
    supported_vendor_ids: tuple[int, ...] = (VENDOR_3GPP,)
    allowed_peers: tuple[AllowedPeer, ...] = ()
    accept_any_loopback: bool = False  # dev mode: any Origin-Host from 127.0.0.0/8 or ::1
    message_octets_max: int = MESSAGE_OCTETS_MAX
    pending_requests_max: int = PENDING_REQUESTS_MAX
    watchdog_missed_max: int = WATCHDOG_MISSED_MAX
    dictionary: Dictionary = field(default_factory=default_dictionary)

    def __post_init__(self) -> None:
        assert HEADER_OCTETS <= self.message_octets_max <= 0xFFFFFF
        assert self.pending_requests_max > 0 and self.watchdog_missed_max > 0


class PeerConnection:
    """One transport connection to one Diameter peer."""

    def __init__(
        self,
        config: PeerConfig,
        role: Role = Role.SERVER,
        remote_address: IPAddress | None = None,
    ) -> None:
        self.config = config
        self.role = role
        self.remote_address = remote_address
        self.state = PeerState.WAIT_CER if role is Role.SERVER else PeerState.WAIT_CEA
        self.peer: PeerInfo | None = None
        self._inbound = bytearray()
        self._outbound: list[bytes] = []
        self._pending: dict[int, Message] = {}
        self._next_hop_by_hop = random.getrandbits(32)
        self._next_end_to_end = ((int(time.time()) & 0xFFF) << 20) | random.getrandbits(20)
        self._watchdog_outstanding = False
        self._watchdog_missed = 0
        self._traffic_seen = False

    # -- public API ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the transport; returns what happened, in order."""
        if self.state is PeerState.CLOSED:
            return []
        # Frames are sliced out of one bytes object: `data` itself when nothing was left over
        # from the last read (the usual case), so each frame is copied once.
        if self._inbound:
            self._inbound += data
            buffer = bytes(self._inbound)
            self._inbound.clear()
        else:
            buffer = bytes(data)
        events: list[Event] = []
        offset = 0
        size = len(buffer)
        octets_max = self.config.message_octets_max
        while not self.is_closed and size - offset >= 4:
            version = buffer[offset]
            length = int.from_bytes(buffer[offset + 1 : offset + 4], "big")
            if version != DIAMETER_VERSION or length < HEADER_OCTETS or length > octets_max:
                problem = self._frame_problem(version, length)
                assert problem is not None
                events += self._fail_stream(buffer[offset : offset + HEADER_OCTETS], problem)
                break
            if size - offset < length:
                break
            events += self._on_frame(buffer[offset : offset + length])
            offset += length
        if not self.is_closed and offset < size:
            self._inbound += memoryview(buffer)[offset:]
        return events

    def data_to_send(self) -> bytes:
        """Bytes queued for the transport (answers we produced automatically, and sends)."""
        data = b"".join(self._outbound)
        self._outbound.clear()
        return data

    def send(self, message: Message) -> bytes:
        """Queue a message and return all bytes to write. Requests get ids and are tracked."""
        self._queue(message)
        return self.data_to_send()

    def send_encoded(self, frame: bytes) -> bytes:
        """Send an answer already encoded for its request (ids and flags its own): the bytes
        go out as they are, where send_answer would encode the answer again."""
        if self.state is PeerState.CLOSED:
            raise PeerError("connection is closed")
        self._outbound.append(frame)
        return self.data_to_send()

    def send_answer(self, request: Message, answer: Message) -> bytes:
        """Send an application's answer, first fixing ids, flags and the leading AVPs."""
        normalize_answer(request, answer, self.config.origin_host, self.config.origin_realm)
        return self.send(answer)

    def answer(
        self, request: Message, result_code: int, error_message: str | None = None
    ) -> Message:
        """An answer skeleton from us (Session-Id, Result-Code, Origin-Host, Origin-Realm)."""
        return make_answer(
            request,
            result_code,
            self.config.origin_host,
            self.config.origin_realm,
            error_message=error_message,
        )

    def initiate(self) -> bytes:
        """Client role: send our CER."""
        if self.role is not Role.CLIENT or self.state is not PeerState.WAIT_CEA:
            raise PeerError("initiate() is for a new client connection")
        return self.send(self._capabilities(None, None))

    def on_watchdog_timer(self) -> list[Event]:
        """Call every Tw (RFC 3539, ~30 s): sends DWR when idle, declares the peer down when
        `watchdog_missed_max` timer periods pass with a DWR unanswered."""
        if self.state is not PeerState.OPEN:
            return []
        if self._watchdog_outstanding:
            self._watchdog_missed += 1
            if self._watchdog_missed >= self.config.watchdog_missed_max:
                return [self._close(f"watchdog: {self._watchdog_missed} DWR periods unanswered")]
            return []
        if self._traffic_seen:
            self._traffic_seen = False
            return []
        config = self.config
        self._queue(build_dwr(config.origin_host, config.origin_realm, config.origin_state_id))
        self._watchdog_outstanding = True
        return []

    def disconnect(self, cause: int = DisconnectCause.REBOOTING) -> bytes:
        """Send DPR; the connection closes when the DPA arrives (or the caller gives up)."""
        if self.state is not PeerState.OPEN:
            raise PeerError(f"cannot disconnect in state {self.state.value}")
        data = self.send(build_dpr(self.config.origin_host, self.config.origin_realm, cause))
        self.state = PeerState.CLOSING
        return data

    def connection_lost(self) -> list[Event]:
        """The transport saw the connection end."""
        if self.state is PeerState.CLOSED:
            return []
        return [self._close("connection lost")]

    def cancel_request(self, hop_by_hop: int) -> None:
        """Stop tracking a request we sent (the caller gave up waiting); a late answer is then
        reported as UnmatchedAnswer."""
        self._pending.pop(hop_by_hop, None)

    @property
    def is_closed(self) -> bool:
        return self.state is PeerState.CLOSED

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    # -- framing ------------------------------------------------------------------------------

    def _frame_problem(self, version: int, length: int) -> DiameterError | None:
        if version != DIAMETER_VERSION:
            return FramingError(ResultCode.UNSUPPORTED_VERSION, f"version {version}")
        if length < HEADER_OCTETS:
            return FramingError(ResultCode.INVALID_MESSAGE_LENGTH, f"length {length}")
        if length > self.config.message_octets_max:
            return FramingError(
                ResultCode.UNABLE_TO_COMPLY,
                f"message of {length} octets exceeds {self.config.message_octets_max}",
            )
        return None

    def _fail_stream(self, head: bytes, error: DiameterError) -> list[Event]:
        """The byte stream cannot be trusted: answer when the header allows, then close."""
        answered = False
        if len(head) == HEADER_OCTETS and head[4] & FLAG_REQUEST:
            self._queue_error_answer(_header_only_request(head, self.config.dictionary), error)
            answered = True
        return [MessageRejected(error, answered), self._close(error.error_message)]

    def _on_frame(self, frame: bytes) -> list[Event]:
        try:
            message = parse_message(frame, self.config.dictionary)
        except DiameterError as error:
            return self._on_invalid_frame(frame, error)
        self._traffic_seen = True
        self._watchdog_missed = 0
        if message.is_request:
            return self._on_request(message)
        return self._on_answer(message)

    def _on_invalid_frame(self, frame: bytes, error: DiameterError) -> list[Event]:
        events: list[Event] = []
        is_request = error.header is not None and bool(error.header.flags & FLAG_REQUEST)
        if is_request:
            request = _header_only_request(frame, self.config.dictionary)
            request.avps = salvage_avps(frame, self.config.dictionary)
            self._queue_error_answer(request, error)
        events.append(MessageRejected(error, answered=is_request))
        if self.state in (PeerState.WAIT_CER, PeerState.WAIT_CEA):
            events.append(self._close(f"invalid message before capabilities exchange: {error}"))
        return events

    def _queue_error_answer(self, request: Message, error: DiameterError) -> None:
        answer = make_answer(
            request,
            error.result_code,
            self.config.origin_host,
            self.config.origin_realm,
            error_message=error.error_message,
            failed_avps=error.failed_avps,
        )
        self._outbound.append(answer.encode())

    # -- requests -----------------------------------------------------------------------------

    def _on_request(self, request: Message) -> list[Event]:
        code = request.command_code
        if self.state is PeerState.WAIT_CER:
            if code == CommandCode.CAPABILITIES_EXCHANGE:
                return self._on_cer(request)
            return self._reject_and_close(request, ResultCode.UNKNOWN_PEER, "CER expected first")
        if self.state is PeerState.WAIT_CEA:
            return self._reject_and_close(request, ResultCode.UNKNOWN_PEER, "CEA expected first")
        if code == CommandCode.CAPABILITIES_EXCHANGE:
            self._outbound.append(
                self.answer(
                    request, ResultCode.UNABLE_TO_COMPLY, "capabilities already exchanged"
                ).encode()
            )
            return []
        if code == CommandCode.DEVICE_WATCHDOG:
            dwa = self.answer(request, ResultCode.SUCCESS)
            dwa.add("Origin-State-Id", self.config.origin_state_id)
            self._outbound.append(dwa.encode())
            return []
        if code == CommandCode.DISCONNECT_PEER:
            self._outbound.append(self.answer(request, ResultCode.SUCCESS).encode())
            cause = request.get("Disconnect-Cause")
            return [self._close(f"peer sent DPR (cause {cause!r})")]
        return [RequestReceived(request)]

    def _on_cer(self, cer: Message) -> list[Event]:
        origin_host = _text(cer, "Origin-Host")
        if not self._is_allowed(origin_host):
            return self._cea_and_close(cer, ResultCode.UNKNOWN_PEER, f"unknown peer {origin_host}")
        offered, vendor_specific = _offered_applications(cer)
        if APPLICATION_RELAY in offered:
            common = set(self.config.auth_application_ids)
        else:
            common = offered & self.config.auth_application_ids
        if not common:
            return self._cea_and_close(
                cer, ResultCode.NO_COMMON_APPLICATION, "no common application"
            )
        security = [avp.value for avp in cer.find_all("Inband-Security-Id")]
        if security and 0 not in security:
            return self._cea_and_close(
                cer, ResultCode.NO_COMMON_SECURITY, "only NO_INBAND_SECURITY"
            )
        self.peer = _peer_info(cer, common, self.remote_address)
        vsa = [(vendor, app) for vendor, app in vendor_specific if app in common]
        self._outbound.append(self._capabilities(cer, ResultCode.SUCCESS, common, vsa).encode())
        self.state = PeerState.OPEN
        return [CapabilitiesExchanged(self.peer)]

    def _is_allowed(self, origin_host: str) -> bool:
        remote = self.remote_address
        if self.config.accept_any_loopback and remote is not None and remote.is_loopback:
            return True
        host = origin_host.lower()
        for allowed in self.config.allowed_peers:
            if allowed.origin_host.lower() != host:
                continue
            if not allowed.addresses or remote in allowed.addresses:
                return True
        return False

    def _cea_and_close(self, cer: Message, result_code: int, reason: str) -> list[Event]:
        cea = self._capabilities(cer, result_code)
        cea.add("Error-Message", reason)
        self._outbound.append(cea.encode())
        return [self._close(reason)]

    def _reject_and_close(self, request: Message, result_code: int, reason: str) -> list[Event]:
        self._outbound.append(self.answer(request, result_code, reason).encode())
        return [self._close(reason)]

    def _capabilities(
        self,
        cer: Message | None,
        result_code: int | None,
        applications: set[int] | None = None,
        vendor_specific: list[tuple[int, int]] | None = None,
    ) -> Message:
        config = self.config
        return build_capabilities(
            request=cer,
            result_code=result_code,
            origin_host=config.origin_host,
            origin_realm=config.origin_realm,
            host_ip_addresses=config.host_ip_addresses,
            vendor_id=config.vendor_id,
            product_name=config.product_name,
            origin_state_id=config.origin_state_id,
            auth_application_ids=sorted(applications or config.auth_application_ids),
            supported_vendor_ids=config.supported_vendor_ids,
            vendor_specific_ids=vendor_specific or (),
            firmware_revision=config.firmware_revision,
        )

    # -- answers ------------------------------------------------------------------------------

    def _on_answer(self, answer: Message) -> list[Event]:
        request = self._pending.pop(answer.hop_by_hop, None)
        if request is None or request.command_code != answer.command_code:
            if request is not None:  # same id, other command: not ours after all
                self._pending[answer.hop_by_hop] = request
            return [UnmatchedAnswer(answer)]
        code = answer.command_code
        if code == CommandCode.CAPABILITIES_EXCHANGE:
            return self._on_cea(answer)
        if code == CommandCode.DEVICE_WATCHDOG:
            self._watchdog_outstanding = False
            return []
        if code == CommandCode.DISCONNECT_PEER:
            return [self._close("DPA received")]
        return [AnswerReceived(answer, request)]

    def _on_cea(self, cea: Message) -> list[Event]:
        result = cea.get("Result-Code")
        if result != ResultCode.SUCCESS:
            return [self._close(f"CEA refused us with Result-Code {result!r}")]
        offered, _ = _offered_applications(cea)
        self.peer = _peer_info(cea, offered, self.remote_address)
        self.state = PeerState.OPEN
        return [CapabilitiesExchanged(self.peer)]

    # -- helpers ------------------------------------------------------------------------------

    def _queue(self, message: Message) -> None:
        if self.state is PeerState.CLOSED:
            raise PeerError("connection is closed")
        if message.is_request:
            if self.state is not PeerState.OPEN and message.command_code not in _PEER_COMMANDS:
                raise PeerError(f"cannot send {message.name} in state {self.state.value}")
            if len(self._pending) >= self.config.pending_requests_max:
                raise PeerError(f"{self.config.pending_requests_max} requests already pending")
            self._assign_ids(message)
            self._pending[message.hop_by_hop] = message
        self._outbound.append(encode_message(message))

    def _assign_ids(self, message: Message) -> None:
        if not message.hop_by_hop:
            message.hop_by_hop = self._next_hop_by_hop or 1
            self._next_hop_by_hop = (message.hop_by_hop + 1) & 0xFFFFFFFF
        if not message.end_to_end:
            message.end_to_end = self._next_end_to_end or 1
            self._next_end_to_end = (message.end_to_end + 1) & 0xFFFFFFFF

    def _close(self, reason: str) -> ConnectionClosed:
        self.state = PeerState.CLOSED
        pending = list(self._pending.values())
        self._pending.clear()
        return ConnectionClosed(reason, pending)


_PEER_COMMANDS: Final = frozenset(
    {CommandCode.CAPABILITIES_EXCHANGE, CommandCode.DEVICE_WATCHDOG, CommandCode.DISCONNECT_PEER}
)


def _offered_applications(message: Message) -> tuple[set[int], list[tuple[int, int]]]:
    """Application ids a CER/CEA advertises, plus its (vendor, auth app) pairs."""
    offered: set[int] = set()
    for name in ("Auth-Application-Id", "Acct-Application-Id"):
        offered.update(avp.value for avp in message.find_all(name) if isinstance(avp.value, int))
    vendor_specific: list[tuple[int, int]] = []
    for group in message.find_all("Vendor-Specific-Application-Id"):
        vendor = group.get("Vendor-Id")
        for name in ("Auth-Application-Id", "Acct-Application-Id"):
            application = group.get(name)
            if isinstance(application, int):
                offered.add(application)
                if isinstance(vendor, int) and name == "Auth-Application-Id":
                    vendor_specific.append((vendor, application))
    return offered, vendor_specific


def _peer_info(message: Message, applications: set[int], remote: IPAddress | None) -> PeerInfo:
    addresses = tuple(
        avp.value
        for avp in message.find_all("Host-IP-Address")
        if isinstance(avp.value, ipaddress.IPv4Address | ipaddress.IPv6Address)
    )
    state = message.get("Origin-State-Id")
    vendor_id = message.get("Vendor-Id")
    return PeerInfo(
        origin_host=_text(message, "Origin-Host"),
        origin_realm=_text(message, "Origin-Realm"),
        host_ip_addresses=addresses,
        vendor_id=vendor_id if isinstance(vendor_id, int) else 0,
        product_name=_text(message, "Product-Name"),
        application_ids=frozenset(applications),
        origin_state_id=state if isinstance(state, int) else None,
        remote_address=remote,
    )


def _text(message: Message, name: str) -> str:
    value = message.get(name)
    return value if isinstance(value, str) else ""


def _header_only_request(frame: bytes, dictionary: Dictionary) -> Message:
    """A request carrying just the header fields of `frame`, to answer it."""
    flags = frame[4]
    return Message(
        int.from_bytes(frame[5:8], "big"),
        int.from_bytes(frame[8:12], "big"),
        flags=flags & 0xF0,
        hop_by_hop=int.from_bytes(frame[12:16], "big"),
        end_to_end=int.from_bytes(frame[16:20], "big"),
        dictionary=dictionary,
    )
