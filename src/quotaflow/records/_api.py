"""/v1/cdrs: list and filter charging records, the signing key, the exporter's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api.app import guarded, json_response
from quotaflow.ledger import InvalidRequest
from quotaflow.records._export import with_identities
from quotaflow.records._keys import key_id, public_pem
from quotaflow.records._service import RecordService
from quotaflow.records._source import RecordFilter

PAGE_MAX = 1000
Handler = Callable[[Request], Awaitable[Response]]


def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"query parameter {name!r} must be an integer", field=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"query parameter {name!r} must be in {low}..{high}", field=name)
    return value


FILTER_PARAMS = {
    "after_seq",
    "limit",
    "subscriber_id",
    "since_ms",
    "until_ms",
    "session_id",
    "kind",
}


def record_filter(request: Request) -> tuple[RecordFilter, int]:
    unknown = sorted(set(request.query_params) - FILTER_PARAMS)
    if unknown:
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    q = request.query_params
    flt = RecordFilter(
        after_seq=_int_param(request, "after_seq", 0, 0, 2**62) or 0,
        subscriber_id=q.get("subscriber_id"),
        since_ms=_int_param(request, "since_ms", None, 0, 2**62),
        until_ms=_int_param(request, "until_ms", None, 0, 2**62),
        session_id=q.get("session_id"),
        kind=q.get("kind"),
    )
    return flt, _int_param(request, "limit", 100, 1, PAGE_MAX) or 100


def routes(service: RecordService) -> list[Route]:
    """Routes for the management API; mount them next to ManagementApi.routes()."""
    source = service.source()

    async def list_cdrs(request: Request) -> Response:
        flt, limit = record_filter(request)
        records = await with_identities(service.store, await source.read(flt, limit))
        doc: dict[str, Any] = {"records": records}
        doc["next_after_seq"] = records[-1]["seq"] if len(records) == limit else None
        return json_response(doc)

    async def public_key(request: Request) -> Response:
        public = service.key.public_key()
        return json_response(
            {"algorithm": "Ed25519", "key_id": key_id(public), "pem": public_pem(public).decode()}
        )

    async def export_status(request: Request) -> Response:
        return json_response(service.status())

    async def seal(request: Request) -> Response:
        if service.exporter is None:
            raise InvalidRequest("file export is not enabled")
        sealed = await service.exporter.seal()
        return json_response({"sealed_files": sealed, **service.status()})

    return [
        Route("/v1/cdrs", guarded(list_cdrs), methods=["GET"]),
        Route("/v1/cdrs/public-key", guarded(public_key), methods=["GET"]),
        Route("/v1/cdrs/export", guarded(export_status), methods=["GET"]),
        Route("/v1/cdrs/export/seal", guarded(seal), methods=["POST"]),
    ]
