"""`/v1/groups` and `/v1/policy-counters`: shared balances, their members, and their status.

A group's shared buckets are the buckets of the account with the group's id, so balances,
top-ups and buckets work as for a subscriber (`/v1/groups/{gid}/balance`, `/topups`,
`/buckets` are the same calls on that account).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api import ManagementApi, guarded, json_response
from quotaflow.api.validation import check_fields, parse_body, want_int, want_str
from quotaflow.engine import Engine
from quotaflow.engine.pools import check_policy
from quotaflow.ledger import InvalidRequest

Handler = Callable[[Request], Awaitable[Response]]
GROUP_FIELDS = {
    "id",
    "owner",
    "period",
    "reset_day",
    "restrict_below",
    "protected_priority",
    "policy",
    "mode",
    "soft_overspend_max",
}
MEMBER_FIELDS = {"subscriber_id", "priority", "caps"}


def _op_id(request: Request, default: str) -> str:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 120:
        raise InvalidRequest("Idempotency-Key must be 1..120 characters", field="Idempotency-Key")
    return f"api:{key}" if key else f"{default}:{uuid.uuid4().hex}"


def _policy(body: dict[str, Any]) -> None:
    policy = body.get("policy")
    if policy is None:
        return
    if not isinstance(policy, dict):
        raise InvalidRequest("policy must be an object", field="policy")
    try:
        check_policy(policy)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="policy") from None


class GroupApi:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.accounts = ManagementApi(engine)  # balances, buckets, top-ups of the pool account

    def routes(self) -> list[Route]:
        table: dict[str, dict[str, Handler]] = {
            "/v1/groups": {"POST": self.create},
            "/v1/groups/{gid}": {"GET": self.get, "PATCH": self.update},
            "/v1/groups/{gid}/members": {"POST": self.add_member},
            "/v1/groups/{gid}/members/{sid}": {
                "PATCH": self.update_member,
                "DELETE": self.remove_member,
            },
            "/v1/groups/{gid}/reset": {"POST": self.reset},
            "/v1/groups/{gid}/balance": {"GET": self._as_account(self.accounts.balance)},
            "/v1/groups/{gid}/buckets": {"POST": self._as_account(self.accounts.add_bucket)},
            "/v1/groups/{gid}/topups": {"POST": self._as_account(self.accounts.topup)},
            "/v1/policy-counters/{sid}": {"GET": self.counters},
        }
        return [
            Route(path, guarded(methods), methods=list(methods)) for path, methods in table.items()
        ]

    def _as_account(self, fn: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            await self.store.get_group(request.path_params["gid"])
            request.path_params["sid"] = request.path_params["gid"]
            return await fn(request)

        return handle

    async def create(self, request: Request) -> Response:
        body = parse_body(await request.body())
        check_fields(body, GROUP_FIELDS, {"id", "owner"})
        want_str(body, "id")
        want_str(body, "owner")
        _policy(body)
        args = {k: v for k, v in body.items() if k != "id"}
        args["group_id"] = body["id"]
        result = await self.engine.admin("create_group", _op_id(request, "api:group"), args)
        return json_response(result, 201, {"location": f"/v1/groups/{body['id']}"})

    async def get(self, request: Request) -> Response:
        group = await self.store.get_group(request.path_params["gid"])
        doc = group.to_json()
        doc["pool_available"] = {
            u: self.store.pool_available(group.id, u)
            for u in ("octets", "seconds", "events", "money")
        }
        return json_response(doc)

    async def update(self, request: Request) -> Response:
        gid = request.path_params["gid"]
        body = parse_body(await request.body())
        check_fields(body, GROUP_FIELDS - {"id", "owner"})
        _policy(body)
        await self.store.get_group(gid)
        result = await self.engine.admin(
            "update_group", _op_id(request, "api:group-update"), {**body, "group_id": gid}
        )
        return json_response(result)

    async def add_member(self, request: Request) -> Response:
        gid = request.path_params["gid"]
        body = parse_body(await request.body())
        check_fields(body, MEMBER_FIELDS, {"subscriber_id"})
        want_str(body, "subscriber_id")
        want_int(body, "priority")
        result = await self.engine.admin(
            "add_member", _op_id(request, "api:member"), {**body, "group_id": gid}
        )
        return json_response(result, 201)

    async def update_member(self, request: Request) -> Response:
        gid, sid = request.path_params["gid"], request.path_params["sid"]
        body = parse_body(await request.body())
        check_fields(body, MEMBER_FIELDS - {"subscriber_id"})
        want_int(body, "priority")
        result = await self.engine.admin(
            "update_member",
            _op_id(request, "api:member-update"),
            {**body, "group_id": gid, "subscriber_id": sid},
        )
        return json_response(result)

    async def remove_member(self, request: Request) -> Response:
        gid, sid = request.path_params["gid"], request.path_params["sid"]
        await self.engine.admin(
            "remove_member",
            _op_id(request, "api:member-remove"),
            {"group_id": gid, "subscriber_id": sid},
        )
        return Response(status_code=204)

    async def reset(self, request: Request) -> Response:
        gid = request.path_params["gid"]
        result = await self.engine.admin(
            "group_reset", _op_id(request, "api:group-reset"), {"group_id": gid}
        )
        return json_response(result)

    async def counters(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        await self.store.get_subscriber(sid)
        return json_response({"subscriber_id": sid, "counters": self.store.policy_counters(sid)})
