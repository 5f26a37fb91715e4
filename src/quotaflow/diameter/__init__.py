"""Diameter protocol core (RFC 6733, RFC 4006, 3GPP Ro): a sans-I/O codec and peer state
machine, with a thin asyncio server and client around them."""

from quotaflow.diameter._link import RequestHandler
from quotaflow.diameter.client import DiameterClient
from quotaflow.diameter.codec import decode_header, decode_message, encode_avp, encode_message
from quotaflow.diameter.constants import (
    APPLICATION_COMMON,
    APPLICATION_CREDIT_CONTROL,
    DEFAULT_IDENTITY,
    DEFAULT_PORT,
    DEFAULT_REALM,
    CcRequestType,
    CommandCode,
    DisconnectCause,
    ResultCode,
)
from quotaflow.diameter.dictionary import (
    VENDOR_3GPP,
    AvpDef,
    AvpType,
    CommandDef,
    Dictionary,
    default_dictionary,
)
from quotaflow.diameter.errors import DiameterError, FramingError, LinkClosedError, PeerError
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
from quotaflow.diameter.message import Avp, AvpValue, Header, Message, RawAddress
from quotaflow.diameter.messages import (
    build_asr,
    build_ccr,
    build_rar,
    make_answer,
    new_session_id,
)
from quotaflow.diameter.peer import (
    MESSAGE_OCTETS_MAX,
    AllowedPeer,
    PeerConfig,
    PeerConnection,
    PeerState,
    Role,
)
from quotaflow.diameter.registry import PeerRegistry
from quotaflow.diameter.transport import DiameterServer, PeerNotConnectedError, serve_diameter
from quotaflow.diameter.validate import parse_message

__all__ = [
    "APPLICATION_COMMON",
    "APPLICATION_CREDIT_CONTROL",
    "DEFAULT_IDENTITY",
    "DEFAULT_PORT",
    "DEFAULT_REALM",
    "MESSAGE_OCTETS_MAX",
    "VENDOR_3GPP",
    "AllowedPeer",
    "AnswerReceived",
    "Avp",
    "AvpDef",
    "AvpType",
    "AvpValue",
    "CapabilitiesExchanged",
    "CcRequestType",
    "CommandCode",
    "CommandDef",
    "ConnectionClosed",
    "DiameterClient",
    "DiameterError",
    "DiameterServer",
    "Dictionary",
    "DisconnectCause",
    "Event",
    "FramingError",
    "Header",
    "LinkClosedError",
    "Message",
    "MessageRejected",
    "PeerConfig",
    "PeerConnection",
    "PeerError",
    "PeerInfo",
    "PeerNotConnectedError",
    "PeerRegistry",
    "PeerState",
    "RawAddress",
    "RequestHandler",
    "RequestReceived",
    "ResultCode",
    "Role",
    "UnmatchedAnswer",
    "build_asr",
    "build_ccr",
    "build_rar",
    "decode_header",
    "decode_message",
    "default_dictionary",
    "encode_avp",
    "encode_message",
    "make_answer",
    "new_session_id",
    "parse_message",
    "serve_diameter",
]
