"""`/v1/tariffs`: read the tariff in force, replace it, and ask what a use would cost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from quotaflow.api import guarded, json_response
from quotaflow.api.validation import BadRequest, parse_body
from quotaflow.engine import Engine
from quotaflow.ledger import Conflict, InvalidRequest, Unit
from quotaflow.rating.tariff import TariffBook, TariffError, load_document

TARIFF_FILE_NAME = "tariffs.json"


def persisted_tariffs(data_dir: Path) -> TariffBook | None:
    """What was last set through the API, if anything (checked again: never trusted blindly)."""
    path = data_dir / TARIFF_FILE_NAME
    if not path.exists():
        return None
    return load_document(orjson.loads(path.read_bytes()), str(path))


def _summary(book: TariffBook) -> dict[str, Any]:
    return {
        "currency": book.currency,
        "timezone": book.timezone,
        "default_plan": book.default_plan,
        "plans": sorted(book.plans),
        "rating_groups": {
            str(k): {"name": v[0], "unit": v[1].value}
            for k, v in sorted(book.rating_groups.items())
        },
        "document": book.document,
    }


class TariffApi:
    def __init__(self, engine: Engine, data_dir: Path, file_bound: Path | None) -> None:
        self.engine = engine
        self.data_dir = data_dir
        self.file_bound = file_bound

    def routes(self) -> list[Route]:
        return [
            Route("/v1/tariffs", guarded(self.get_or_put), methods=["GET", "PUT"]),
            Route("/v1/tariffs/price", guarded(self.price), methods=["GET"]),
        ]

    async def get_or_put(self, request: Request) -> Response:
        if request.method == "GET":
            return json_response(_summary(self.engine.rater.book))
        if self.file_bound is not None:
            raise Conflict(f"tariffs come from {self.file_bound}: edit it and restart")
        doc = parse_body(await request.body())
        try:
            book = load_document(doc, "request body")
        except TariffError as exc:
            raise InvalidRequest(exc.reason, field="tariff") from None
        # Durable before it is used or answered: written aside, then renamed over the old one.
        path = self.data_dir / TARIFF_FILE_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc))
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        self.engine.rater.replace(book)
        return json_response(_summary(book))

    async def price(self, request: Request) -> Response:
        q = request.query_params
        try:
            unit = Unit(q.get("unit", "octets"))
            units = int(q.get("units", "0"))
            rg_text = q.get("rating_group")
            rating_group = int(rg_text) if rg_text not in (None, "") else None
        except ValueError:
            raise BadRequest("unit must be octets/seconds/events; units an integer") from None
        if not 0 <= units <= 2**62:
            raise InvalidRequest("units out of range", field="units")
        plan = q.get("plan")
        cost = self.engine.price_enquiry(
            unit, units, plan=plan, rating_group=rating_group, zone=q.get("zone")
        )
        return json_response(
            {
                "unit": unit.value,
                "units": units,
                "cost_micros": cost,
                "plan": plan or self.engine.rater.book.default_plan,
            }
        )
