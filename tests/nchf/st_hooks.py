"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.nchf.st_hooks): reach past USER_UNKNOWN and 404.

Generated SUPIs and ChargingDataRefs are random, so without help every create is USER_UNKNOWN
and every update a 404. For part of the cases these hooks put in a provisioned subscriber and
live refs (from the environment the test sets), so 201 and 200 answers get checked too.
"""

from __future__ import annotations

import os
import zlib
from typing import Any

import schemathesis

_SUPI = os.environ.get("QF_ST_SUPI", "")
_REFS = [r for r in os.environ.get("QF_ST_REFS", "").split(",") if r]


def _pick(value: Any) -> int:
    # Deterministic per generated value, so shrinking and replays stay reproducible.
    return zlib.crc32(repr(value).encode())


@schemathesis.hook
def map_body(ctx: schemathesis.HookContext, body: Any) -> Any:
    if _SUPI and isinstance(body, dict) and _pick(body) % 2 == 0:
        body["subscriberIdentifier"] = _SUPI
    return body


@schemathesis.hook
def map_path_parameters(ctx: schemathesis.HookContext, params: Any) -> Any:
    if _REFS and isinstance(params, dict) and "ChargingDataRef" in params:
        choice = _pick(params)
        if choice % 3:  # a third stay random, to keep 404 answers checked
            params["ChargingDataRef"] = _REFS[choice % len(_REFS)]
    return params
