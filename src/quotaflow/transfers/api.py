"""`/v1/transfers`: give data, time, events or money to another subscriber; reverse a gift."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api import guarded, json_response
from quotaflow.api.validation import (
    BadRequest,
    check_fields,
    parse_body,
    time_ms,
    want_int,
    want_str,
)
from quotaflow.engine import Engine
from quotaflow.ledger import InvalidRequest, NotFound, Unit

Handler = Callable[[Request], Awaitable[Response]]
FIELDS = {"id", "from", "to", "unit", "amount", "expiry", "expires_at", "donation"}


class TransferApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def routes(self) -> list[Route]:
        return [
            Route("/v1/transfers", guarded(self.create), methods=["POST"]),
            Route("/v1/transfers/{tid}", guarded(self.get), methods=["GET"]),
            Route("/v1/transfers/{tid}/reversal", guarded(self.reverse), methods=["POST"]),
            Route("/v1/subscribers/{sid}/vouchers", guarded(self.issue), methods=["POST"]),
            Route("/v1/vouchers/redeem", guarded(self.redeem), methods=["POST"]),
            Route("/v1/vouchers/{vid}", guarded(self.voucher), methods=["GET"]),
            Route(
                "/v1/subscribers/{sid}/providers",
                guarded(self.providers),
                methods=["GET", "PUT"],
            ),
            Route("/v1/subscribers/{sid}/postpaid", guarded(self.postpaid), methods=["PUT"]),
            Route("/v1/allowance-transfers", guarded(self.allowance), methods=["POST"]),
            Route("/v1/offers", guarded(self.offers), methods=["GET", "POST"]),
            Route("/v1/subscribers/{sid}/purchases", guarded(self.buy), methods=["POST"]),
        ]

    async def create(self, request: Request) -> Response:
        body = parse_body(await request.body())
        check_fields(body, FIELDS, {"id", "from", "to", "unit", "amount"})
        for name in ("id", "from", "to", "unit", "expiry"):
            want_str(body, name)
        want_int(body, "amount")
        if body.get("donation") is not None and not isinstance(body["donation"], bool):
            raise InvalidRequest("donation must be true or false", field="donation")
        args = {k: v for k, v in body.items() if k not in ("id", "expires_at")}
        args["transfer_id"] = body["id"]
        expires = time_ms(body, "expires_at")
        if expires is not None:
            args["expires_at_ms"] = expires
        result = await self.engine.admin("transfer", f"api:transfer:{body['id']}", args)
        return json_response(result, 201, {"location": f"/v1/transfers/{body['id']}"})

    async def get(self, request: Request) -> Response:
        """The transfer, and how much of it the receiver has used (a donation's report)."""
        return json_response(await self.engine.store.transfer_report(request.path_params["tid"]))

    async def reverse(self, request: Request) -> Response:
        tid = request.path_params["tid"]
        body = parse_body(await request.body())
        check_fields(body, {"id"}, {"id"})
        want_str(body, "id")
        result = await self.engine.admin(
            "reverse_transfer",
            f"api:reversal:{body['id']}",
            {"transfer_id": tid, "reversal_id": body["id"]},
        )
        return json_response(result, 201)

    # ------------------------------------------------------------------ postpaid to prepaid

    async def postpaid(self, request: Request) -> Response:
        """Make the subscriber a postpaid account with this credit limit (money micro-units)."""
        body = parse_body(await request.body())
        check_fields(body, {"credit_limit_micros"}, {"credit_limit_micros"})
        want_int(body, "credit_limit_micros")
        result = await self.engine.admin(
            "set_postpaid", None, {"subscriber_id": request.path_params["sid"], **body}
        )
        return json_response(result)

    async def allowance(self, request: Request) -> Response:
        """A postpaid account gives allowance to a prepaid subscriber, credited its value."""
        body = parse_body(await request.body())
        check_fields(
            body, {"id", "from", "to", "unit", "amount"}, {"id", "from", "to", "unit", "amount"}
        )
        for name in ("id", "from", "to", "unit"):
            want_str(body, name)
        want_int(body, "amount")
        giver = await self.engine.store.get_subscriber(body["from"])
        value = (
            self.engine.price_enquiry(Unit(body["unit"]), body["amount"], plan=giver.plan)
            if body["unit"] in ("octets", "seconds", "events")
            else body["amount"]
        )
        args = {
            "transfer_id": body["id"],
            "from": body["from"],
            "to": body["to"],
            "unit": body["unit"],
            "amount": body["amount"],
            "value_micros": value,
        }
        result = await self.engine.admin("allowance_transfer", f"api:allowance:{body['id']}", args)
        return json_response(result, 201)

    # ------------------------------------------------------------------ the quota broker

    async def offers(self, request: Request) -> Response:
        """Networks' spare quota for sale (POST one; GET lists those with blocks left)."""
        if request.method == "GET":
            return json_response({"offers": await self.engine.store.open_offers()})
        body = parse_body(await request.body())
        fields = {"id", "network", "unit", "block_units", "blocks", "price_micros"}
        check_fields(body, fields, fields)
        args = {k: v for k, v in body.items() if k != "id"}
        args["offer_id"] = body["id"]
        result = await self.engine.admin("create_offer", f"api:offer:{body['id']}", args)
        return json_response(result, 201)

    async def buy(self, request: Request) -> Response:
        """Buy more from the offers of the subscriber's own network, cheapest first."""
        body = parse_body(await request.body())
        check_fields(body, {"id", "unit", "units"}, {"id", "unit", "units"})
        want_str(body, "id")
        want_int(body, "units")
        args = {
            "purchase_id": body["id"],
            "subscriber_id": request.path_params["sid"],
            "unit": body["unit"],
            "units": body["units"],
        }
        result = await self.engine.admin("buy_quota", f"api:purchase:{body['id']}", args)
        return json_response(result, 201)

    # ------------------------------------------------------------------ providers

    async def providers(self, request: Request) -> Response:
        """Who tops the subscriber up when it runs low in a session, in order, each within a
        monthly limit: `[{"id": "dad", "limit": {"octets": 2000000000}}, ...]`."""
        sid = request.path_params["sid"]
        if request.method == "GET":
            sub = await self.engine.store.get_subscriber(sid)
            return json_response({"subscriber_id": sid, "providers": sub.providers})
        raw = await request.body()
        try:
            providers = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("body must be a JSON list of providers") from None
        result = await self.engine.admin(
            "set_providers", None, {"subscriber_id": sid, "providers": providers}
        )
        return json_response(result)

    # ------------------------------------------------------------------ vouchers

    async def issue(self, request: Request) -> Response:
        """Carve a voucher out of the subscriber's credit; its token is shown this once."""
        body = parse_body(await request.body())
        check_fields(body, {"id", "unit", "amount", "expires_at"}, {"id", "unit", "amount"})
        want_str(body, "id")
        want_int(body, "amount")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        args = {
            "voucher_id": body["id"],
            "parent": request.path_params["sid"],
            "unit": body["unit"],
            "amount": body["amount"],
            "expires_at_ms": time_ms(body, "expires_at"),
            "token_hash": _hash(token),
        }
        # A fresh token each call: a retried issue is a conflict, never a second voucher.
        result = await self.engine.admin("create_voucher", f"api:voucher:{body['id']}", args)
        return json_response(
            {**_public(result), "token": token}, 201, {"location": f"/v1/vouchers/{body['id']}"}
        )

    async def redeem(self, request: Request) -> Response:
        body = parse_body(await request.body())
        check_fields(body, {"token", "subscriber_id"}, {"token", "subscriber_id"})
        want_str(body, "token")
        want_str(body, "subscriber_id")
        token_hash = _hash(body["token"])
        result = await self.engine.admin(
            "redeem_voucher",
            # Per redeemer: a retry by the same one is answered as the first time; anyone else
            # gets what a wrong token gets.
            f"api:redeem:{token_hash}:{body['subscriber_id']}",
            {"token_hash": token_hash, "subscriber_id": body["subscriber_id"]},
        )
        return json_response(_public(result))

    async def voucher(self, request: Request) -> Response:
        found = await self.engine.store.get_voucher(request.path_params["vid"])
        if found is None:
            raise NotFound(f"no voucher {request.path_params['vid']!r}")
        return json_response(_public(found))


TOKEN_BYTES = 24  # 192 bits: unguessable


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "token_hash"}
