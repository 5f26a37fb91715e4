"""A data account across operators: send quota to a subscriber of another operator.

Two steps with idempotent retries, so no value is lost or created if either side fails midway:
1. hold: the quota leaves the giver into an escrow account here (durable) — the answer is 202;
2. deliver: the other operator is asked to credit its subscriber (`POST /v1/interop/credits`,
   idempotent by the transfer id); on its yes the escrow is settled to the operator's account,
   on a definite no it goes back to the giver; on no answer (down, timeout) it is retried, also
   after a restart, until one of the two.
"""

from quotaflow.interop.service import InteropApi, InteropService, Operator, OperatorDirectory

__all__ = ["InteropApi", "InteropService", "Operator", "OperatorDirectory"]
