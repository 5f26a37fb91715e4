"""Typed errors: every way a received frame can be wrong maps to one Result-Code.

The peer turns a DiameterError into an error answer (E bit for 3xxx) carrying Failed-AVP;
FramingError additionally means the byte stream can no longer be trusted and must be closed.

Every exception class of the Diameter package lives here, in a module that stays interpreted:
the codec, peer and Gy modules that raise them are compiled by mypyc (quotaflow._native), and a
compiled module keeps no exception classes of its own.
"""

from __future__ import annotations

from quotaflow.diameter.constants import ResultCode, is_protocol_error
from quotaflow.diameter.message import Avp, Header


class DiameterError(Exception):
    """A received message is invalid; `result_code` says why, `failed_avps` shows where."""

    def __init__(
        self,
        result_code: int,
        message: str,
        *,
        failed_avps: list[Avp] | None = None,
        header: Header | None = None,
    ) -> None:
        super().__init__(f"{_code_name(result_code)}: {message}")
        self.result_code = result_code
        self.error_message = message
        self.failed_avps: list[Avp] = failed_avps or []
        self.header = header  # set once the header itself was readable

    @property
    def is_protocol_error(self) -> bool:
        """3xxx: answered with the E bit and the generic error grammar."""
        return is_protocol_error(self.result_code)


class FramingError(DiameterError):
    """The stream is out of step (bad length or version): answer if possible, then close."""


def _code_name(result_code: int) -> str:
    try:
        return f"{result_code} {ResultCode(result_code).name}"
    except ValueError:
        return str(result_code)


class ValueProblem(Exception):
    """A value that cannot be decoded; the codec turns it into a DiameterError."""

    def __init__(self, result_code: int, reason: str) -> None:
        super().__init__(reason)
        self.result_code = result_code


class PeerError(Exception):
    """Misuse of a PeerConnection by its caller (not a wire problem)."""


class LinkClosedError(ConnectionError):
    """The connection closed before the answer arrived."""


class GyRequestError(Exception):
    """A request that cannot be acted on; answered with `result_code` at command level."""

    def __init__(self, result_code: int, message: str, failed: Avp | None = None) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.failed = failed


class ForeignCurrency(Exception):
    """A CC-Money amount in another currency than the tariff's: the service is not rated."""
