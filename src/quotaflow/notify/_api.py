"""/v1/subscriptions, /v1/thresholds, /v1/dead-letters and /v1/subscribers/{sid}/choice."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api.app import guarded, json_response
from quotaflow.api.validation import parse_body
from quotaflow.ledger import InvalidRequest, NotFound
from quotaflow.notify._delivery import Subscription
from quotaflow.notify._events import Notification
from quotaflow.notify._service import NotifyService
from quotaflow.notify._thresholds import Threshold

PAGE_MAX = 1000
Handler = Callable[[Request], Awaitable[Response]]


def _table(paths: dict[str, dict[str, Handler]]) -> list[Route]:
    """One route per path, so a wrong method is a 405 that lists the allowed ones."""

    return [Route(p, guarded(m), methods=list(m)) for p, m in paths.items()]


def _query_int(request: Request, name: str, default: int, high: int) -> int:
    text = request.query_params.get(name, str(default))
    if not text.isdigit() or not 0 <= int(text) <= high:
        raise InvalidRequest(
            f"query parameter {name!r} must be an integer in 0..{high}", field=name
        )
    return int(text)


def _path_int(request: Request, name: str) -> int:
    text = request.path_params[name]
    if not text.isdigit():
        raise NotFound(f"no {name} {text!r}")
    return int(text)


def routes(service: NotifyService) -> list[Route]:
    """Routes for the management API; mount them next to ManagementApi.routes()."""
    dispatcher = service.dispatcher

    async def create_subscription(request: Request) -> Response:
        body = parse_body(await request.body())
        sub = Subscription.from_json(body, service.store.clock())
        await dispatcher.add(sub)
        return json_response(
            sub.to_json(with_secret=True), 201, {"location": f"/v1/subscriptions/{sub.id}"}
        )

    async def list_subscriptions(request: Request) -> Response:
        subs = sorted(dispatcher.subscriptions.values(), key=lambda s: s.created_ms)
        return json_response({"subscriptions": [s.to_json() for s in subs]})

    def one_subscription(request: Request) -> Subscription:
        sub = dispatcher.subscriptions.get(request.path_params["id"])
        if sub is None:
            raise NotFound(f"no subscription {request.path_params['id']!r}")
        return sub

    async def get_subscription(request: Request) -> Response:
        return json_response(one_subscription(request).to_json())

    async def delete_subscription(request: Request) -> Response:
        await dispatcher.remove(one_subscription(request).id)
        return Response(status_code=204)

    async def create_threshold(request: Request) -> Response:
        th = await service.add_threshold(Threshold.from_json(parse_body(await request.body())))
        return json_response(th.to_json(), 201, {"location": f"/v1/thresholds/{th.id}"})

    async def list_thresholds(request: Request) -> Response:
        return json_response({"thresholds": [t.to_json() for t in service.thresholds.values()]})

    def one_threshold(request: Request) -> Threshold:
        th = service.thresholds.get(request.path_params["id"])
        if th is None:
            raise NotFound(f"no threshold {request.path_params['id']!r}")
        return th

    async def get_threshold(request: Request) -> Response:
        return json_response(one_threshold(request).to_json())

    async def delete_threshold(request: Request) -> Response:
        await service.remove_threshold(one_threshold(request).id)
        return Response(status_code=204)

    async def list_dead_letters(request: Request) -> Response:
        unknown = sorted(set(request.query_params) - {"subscription_id", "after_id", "limit"})
        if unknown:
            raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        letters = await service.db.dead_letters(
            request.query_params.get("subscription_id"),
            _query_int(request, "after_id", 0, 2**62),
            _query_int(request, "limit", 100, PAGE_MAX) or 1,
        )
        return json_response({"dead_letters": letters})

    async def one_letter(request: Request) -> dict[str, Any]:
        letter = await service.db.dead_letter(_path_int(request, "id"))
        if letter is None:
            raise NotFound(f"no dead letter {request.path_params['id']!r}")
        return letter

    async def get_dead_letter(request: Request) -> Response:
        return json_response(await one_letter(request))

    async def retry_dead_letter(request: Request) -> Response:
        letter = await one_letter(request)
        if letter["subscription_id"] not in dispatcher.subscriptions:
            raise NotFound(f"subscription {letter['subscription_id']!r} no longer exists")
        await service.db.delete_dead_letter(letter["id"])
        dispatcher.enqueue(letter["subscription_id"], Notification.from_json(letter["event"]))
        return json_response({"requeued": letter["id"]}, 202)

    async def delete_dead_letter(request: Request) -> Response:
        await service.db.delete_dead_letter((await one_letter(request))["id"])
        return Response(status_code=204)

    async def get_choice(request: Request) -> Response:
        return json_response(service.pending_choice(request.path_params["sid"]))

    async def make_choice(request: Request) -> Response:
        body = parse_body(await request.body())
        unknown = sorted(set(body) - {"session_id", "choice_id"})
        if unknown:
            raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
        session_id, choice_id = body.get("session_id"), body.get("choice_id")
        if not isinstance(session_id, str):
            raise InvalidRequest("session_id (a string) is required", field="session_id")
        if choice_id is not None and not isinstance(choice_id, str):
            raise InvalidRequest("choice_id must be a string", field="choice_id")
        result = await service.choose(request.path_params["sid"], session_id, choice_id)
        return json_response(result)

    async def status(request: Request) -> Response:
        return json_response(service.status())

    return _table(
        {
            "/v1/subscriptions": {"POST": create_subscription, "GET": list_subscriptions},
            "/v1/subscriptions/{id}": {"GET": get_subscription, "DELETE": delete_subscription},
            "/v1/thresholds": {"POST": create_threshold, "GET": list_thresholds},
            "/v1/thresholds/{id}": {"GET": get_threshold, "DELETE": delete_threshold},
            "/v1/dead-letters": {"GET": list_dead_letters},
            "/v1/dead-letters/{id}": {"GET": get_dead_letter, "DELETE": delete_dead_letter},
            "/v1/dead-letters/{id}/retry": {"POST": retry_dead_letter},
            "/v1/subscribers/{sid}/choice": {"GET": get_choice, "POST": make_choice},
            "/v1/notifications/status": {"GET": status},
        }
    )
