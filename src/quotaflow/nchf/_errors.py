"""The exception classes of the Nchf front, in a module that stays interpreted: the request
path that raises them (_wire, _mapping, _app) is compiled by mypyc (quotaflow._native), and a
compiled module keeps no exception classes of its own."""

from __future__ import annotations

from starlette.responses import Response


class WireError(Exception):
    """A request the CHF cannot use: becomes a 400 ProblemDetails naming `param`."""

    def __init__(self, cause: str, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.cause = cause
        self.param = param
        self.reason = reason


class Refused(Exception):
    """Answer at once with this response (a protocol-level refusal, before any charging)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class Disconnected(Exception):
    """The client went away before its request body ended: there is no one to answer."""
