"""The operator directory, the delivery loop, and `/v1/interop/...`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api import guarded, json_response
from quotaflow.api.validation import check_fields, parse_body, want_int, want_str
from quotaflow.engine import Engine, split_identity
from quotaflow.ledger import InvalidRequest, NotFound

log = logging.getLogger("quotaflow.interop")
RETRY_S = 1.0  # how soon an undelivered transfer is tried again
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Operator:
    """Another operator: which identities are its subscribers, where its API is, and the
    shared secret each side presents to the other (as a bearer token)."""

    id: str
    url: str
    token: str
    msisdn_prefixes: tuple[str, ...] = ()
    imsi_prefixes: tuple[str, ...] = ()

    def owns(self, kind: str, value: str) -> bool:
        prefixes = (
            self.msisdn_prefixes
            if kind == "msisdn"
            else (self.imsi_prefixes if kind == "imsi" else ())
        )
        return any(value.startswith(p) for p in prefixes)


@dataclass(slots=True)
class OperatorDirectory:
    me: str = "local"
    operators: list[Operator] = field(default_factory=list)

    def for_identity(self, identity: str) -> tuple[Operator, str, str]:
        """The operator whose subscriber this is (msisdn-..., imsi-...), with kind and value."""
        kind, value = split_identity(identity)
        for op in self.operators:
            if op.owns(kind, value):
                return op, kind, value
        raise NotFound(f"no operator in the directory serves {identity!r}")

    def by_token(self, token: str) -> Operator | None:
        for op in self.operators:
            if hmac.compare_digest(op.token.encode(), token.encode()):
                return op
        return None


class InteropService:
    """Delivers held transfers to the other operators until each gets a definite answer."""

    def __init__(self, engine: Engine, directory: OperatorDirectory) -> None:
        self.engine = engine
        self.directory = directory
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S)

    def start(self) -> InteropService:
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()  # held transfers from before a restart go out at once
        return self

    async def __call__(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    def poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RETRY_S):
                    await self._wake.wait()
            self._wake.clear()
            for record in await self.engine.store.interop_transfers("held"):
                try:
                    await self._deliver(record)
                except Exception:  # one bad transfer must not stop the others
                    log.exception("interop delivery failed", extra={"transfer": record["id"]})

    async def _deliver(self, record: dict[str, Any]) -> None:
        operator = next((o for o in self.directory.operators if o.id == record["operator"]), None)
        if operator is None:
            await self._finish(record, "interop_cancel", "operator left the directory")
            return
        body = {
            "id": record["id"],
            "to": record["to"],
            "unit": record["unit"],
            "amount": record["amount"],
            "from_operator": self.directory.me,
        }
        try:
            answer = await self._client.post(
                f"{operator.url}/v1/interop/credits",
                json=body,
                headers={"authorization": f"Bearer {operator.token}"},
            )
        except httpx.HTTPError as exc:
            log.info(
                "operator unreachable; will retry",
                extra={"operator": operator.id, "error": repr(exc)},
            )
            return
        if answer.status_code in (200, 201, 409):  # 409: credited by an earlier attempt
            await self._finish(record, "interop_settle", "")
        elif answer.status_code in (400, 403, 404, 422):
            await self._finish(record, "interop_cancel", answer.text[:200])
        # anything else (5xx, 429): not definite; try again later

    async def _finish(self, record: dict[str, Any], op: str, reason: str) -> None:
        args: dict[str, Any] = {"transfer_id": record["id"]}
        if op == "interop_cancel":
            args["reason"] = reason
        await self.engine.admin(op, f"{op}:{record['id']}", args)


class InteropApi:
    def __init__(self, engine: Engine, service: InteropService) -> None:
        self.engine = engine
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/v1/interop/transfers", guarded(self.send), methods=["POST"]),
            Route("/v1/interop/transfers/{tid}", guarded(self.status), methods=["GET"]),
            Route("/v1/interop/credits", guarded(self.credit), methods=["POST"]),
        ]

    async def send(self, request: Request) -> Response:
        """Send quota to a subscriber of another operator; 202 once it is held here."""
        body = parse_body(await request.body())
        check_fields(
            body, {"id", "from", "to", "unit", "amount"}, {"id", "from", "to", "unit", "amount"}
        )
        for name in ("id", "from", "to", "unit"):
            want_str(body, name)
        want_int(body, "amount")
        operator, _, _ = self.service.directory.for_identity(body["to"])
        args = {
            "transfer_id": body["id"],
            "from": body["from"],
            "to": body["to"],
            "unit": body["unit"],
            "amount": body["amount"],
            "operator": operator.id,
        }
        result = await self.engine.admin("interop_hold", f"interop_hold:{body['id']}", args)
        self.service.poke()
        return json_response(result, 202, {"location": f"/v1/interop/transfers/{body['id']}"})

    async def status(self, request: Request) -> Response:
        record = await self.engine.store.get_interop_transfer(request.path_params["tid"])
        if record is None:
            raise NotFound(f"no transfer {request.path_params['tid']!r}")
        return json_response(record)

    async def credit(self, request: Request) -> Response:
        """Called by another operator: credit our subscriber (idempotent by transfer id)."""
        auth = request.headers.get("authorization", "")
        operator = self.service.directory.by_token(auth.removeprefix("Bearer ").strip())
        if operator is None:
            return json_response(
                {"error": {"code": "forbidden", "message": "unknown operator", "detail": {}}}, 403
            )
        body = parse_body(await request.body())
        check_fields(
            body, {"id", "to", "unit", "amount", "from_operator"}, {"id", "to", "unit", "amount"}
        )
        want_str(body, "to")
        want_int(body, "amount")
        if body.get("from_operator") not in (None, operator.id):
            raise InvalidRequest("from_operator does not match the credentials")
        subscriber_id = await self.engine.resolve_any(body["to"])
        args = {
            "transfer_id": body["id"],
            "operator": operator.id,
            "subscriber_id": subscriber_id,
            "unit": body["unit"],
            "amount": body["amount"],
        }
        result = await self.engine.admin(
            "interop_credit", f"interop_credit:{operator.id}:{body['id']}", args
        )
        return json_response(result, 201)
