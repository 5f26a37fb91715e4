"""Numbers from RFC 6733 and RFC 4006 that code on both sides of the wire refers to by name.

Final, so that compiled modules use them as literals instead of looking each up by name
(several per AVP in the codec)."""

from enum import IntEnum
from typing import Final

DIAMETER_VERSION: Final = 1
HEADER_OCTETS: Final = 20
DEFAULT_PORT: Final = 3868
DEFAULT_IDENTITY: Final = "ocs.quotaflow.local"
DEFAULT_REALM: Final = "quotaflow.local"
PRODUCT_NAME: Final = "quotaflow"

# Message header flags (RFC 6733 section 3).
FLAG_REQUEST: Final = 0x80
FLAG_PROXIABLE: Final = 0x40
FLAG_ERROR: Final = 0x20
FLAG_RETRANSMIT: Final = 0x10
FLAG_RESERVED: Final = 0x0F

# AVP header flags (RFC 6733 section 4.1).
AVP_FLAG_VENDOR: Final = 0x80
AVP_FLAG_MANDATORY: Final = 0x40
AVP_FLAG_PROTECTED: Final = 0x20

# Vendor-0 AVP codes that code matches on by number (every request and answer passes them).
AVP_AUTH_APPLICATION_ID: Final = 258
AVP_SESSION_ID: Final = 263
AVP_ORIGIN_HOST: Final = 264
AVP_PROXY_INFO: Final = 284
AVP_PROXY_HOST: Final = 280
AVP_PROXY_STATE: Final = 33
AVP_RESULT_CODE: Final = 268
AVP_ORIGIN_REALM: Final = 296
AVP_CC_REQUEST_NUMBER: Final = 415
AVP_CC_REQUEST_TYPE: Final = 416

APPLICATION_COMMON: Final = 0
APPLICATION_CREDIT_CONTROL: Final = 4
APPLICATION_RELAY: Final = 0xFFFFFFFF


class CommandCode(IntEnum):
    CAPABILITIES_EXCHANGE = 257
    RE_AUTH = 258
    CREDIT_CONTROL = 272
    ABORT_SESSION = 274
    DEVICE_WATCHDOG = 280
    DISCONNECT_PEER = 282


class ResultCode(IntEnum):
    """Result-Code values used by quotaflow (RFC 6733 section 7.1, RFC 4006 section 9)."""

    SUCCESS = 2001
    LIMITED_SUCCESS = 2002
    COMMAND_UNSUPPORTED = 3001
    UNABLE_TO_DELIVER = 3002
    REALM_NOT_SERVED = 3003
    TOO_BUSY = 3004
    LOOP_DETECTED = 3005
    REDIRECT_INDICATION = 3006
    APPLICATION_UNSUPPORTED = 3007
    INVALID_HDR_BITS = 3008
    INVALID_AVP_BITS = 3009
    UNKNOWN_PEER = 3010
    AUTHENTICATION_REJECTED = 4001
    OUT_OF_SPACE = 4002
    ELECTION_LOST = 4003
    END_USER_SERVICE_DENIED = 4010
    CREDIT_CONTROL_NOT_APPLICABLE = 4011
    CREDIT_LIMIT_REACHED = 4012
    AVP_UNSUPPORTED = 5001
    UNKNOWN_SESSION_ID = 5002
    AUTHORIZATION_REJECTED = 5003
    INVALID_AVP_VALUE = 5004
    MISSING_AVP = 5005
    RESOURCES_EXCEEDED = 5006
    CONTRADICTING_AVPS = 5007
    AVP_NOT_ALLOWED = 5008
    AVP_OCCURS_TOO_MANY_TIMES = 5009
    NO_COMMON_APPLICATION = 5010
    UNSUPPORTED_VERSION = 5011
    UNABLE_TO_COMPLY = 5012
    INVALID_BIT_IN_HEADER = 5013
    INVALID_AVP_LENGTH = 5014
    INVALID_MESSAGE_LENGTH = 5015
    INVALID_AVP_BIT_COMBO = 5016
    NO_COMMON_SECURITY = 5017
    USER_UNKNOWN = 5030
    RATING_FAILED = 5031


def is_protocol_error(result_code: int) -> bool:
    """3xxx answers carry the E bit and the generic error-answer grammar."""
    return 3000 <= result_code < 4000


class DisconnectCause(IntEnum):
    REBOOTING = 0
    BUSY = 1
    DO_NOT_WANT_TO_TALK_TO_YOU = 2


class CcRequestType(IntEnum):
    INITIAL = 1
    UPDATE = 2
    TERMINATION = 3
    EVENT = 4
