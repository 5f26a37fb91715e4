"""Refusals: ProblemDetails with the TS 29.500 / TS 32.291 cause and the offending field named."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotaflow.nchf._errors import WireError
from quotaflow.nchf._wire import decode_body, parse_request
from tests.nchf.conftest import (
    MB,
    LiveChf,
    SpecClient,
    charging_request,
    imsi,
    subscriber,
    usage,
)


def _problem(response: httpx.Response, status: int, cause: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["cause"] == cause
    return body


def _params(problem: dict[str, Any]) -> list[str]:
    return [p["param"] for p in problem.get("invalidParams", [])]


@pytest.mark.parametrize(
    ("mutate", "cause", "param"),
    [
        (
            lambda b: b.pop("invocationSequenceNumber"),
            "MANDATORY_IE_MISSING",
            "/invocationSequenceNumber",
        ),
        (
            lambda b: b.update(invocationSequenceNumber=2**32),
            "MANDATORY_IE_INCORRECT",
            "/invocationSequenceNumber",
        ),
        (
            lambda b: b.update(invocationTimeStamp="yesterday"),
            "MANDATORY_IE_INCORRECT",
            "/invocationTimeStamp",
        ),
        (
            lambda b: b.pop("nfConsumerIdentification"),
            "MANDATORY_IE_MISSING",
            "/nfConsumerIdentification",
        ),
        (
            lambda b: b["nfConsumerIdentification"].pop("nodeFunctionality"),
            "MANDATORY_IE_MISSING",
            "/nfConsumerIdentification/nodeFunctionality",
        ),
        (
            lambda b: b.update(multipleUnitUsage=[{"ratingGroup": "ten"}]),
            "MANDATORY_IE_INCORRECT",
            "/multipleUnitUsage/0/ratingGroup",
        ),
        (
            lambda b: b.update(
                multipleUnitUsage=[{"ratingGroup": 1, "requestedUnit": {"time": -1}}]
            ),
            "OPTIONAL_IE_INCORRECT",
            "/multipleUnitUsage/0/requestedUnit/time",
        ),
        (
            lambda b: b.update(
                multipleUnitUsage=[
                    {
                        "ratingGroup": 1,
                        "usedUnitContainer": [{"localSequenceNumber": 1, "totalVolume": 1.5}],
                    }
                ]
            ),
            "OPTIONAL_IE_INCORRECT",
            "/multipleUnitUsage/0/usedUnitContainer/0/totalVolume",
        ),
        (lambda b: b.update(notifyUri=42), "OPTIONAL_IE_INCORRECT", "/notifyUri"),
        (lambda b: b.pop("subscriberIdentifier"), "CHARGING_FAILED", "/subscriberIdentifier"),
    ],
)
async def test_malformed_create_names_the_field(
    chf: LiveChf, client: SpecClient, mutate: Any, cause: str, param: str
) -> None:
    await subscriber(chf.engine, 40, MB)
    body = charging_request(0, imsi(40))
    mutate(body)
    # Each mutation but the last breaks the schema; a missing SUPI is legal but uncharged.
    response = await client.post("/chargingdata", body, invalid=cause != "CHARGING_FAILED")
    assert _params(_problem(response, 400, cause)) == [param]


async def test_duplicate_rating_group_is_refused(chf: LiveChf, client: SpecClient) -> None:
    await subscriber(chf.engine, 41, MB)
    body = charging_request(0, imsi(41), [usage(3), usage(3)])
    problem = _problem(await client.post("/chargingdata", body), 400, "CHARGING_FAILED")
    assert _params(problem) == ["/multipleUnitUsage/1/ratingGroup"]


async def test_not_json_and_not_an_object(chf: LiveChf, client: SpecClient) -> None:
    for raw in (b"{not json", b"[1, 2]", b""):
        response = await client.post("/chargingdata", raw, invalid=True)
        _problem(response, 400, "INVALID_MSG_FORMAT")


async def test_too_large_and_wrong_media_type(chf: LiveChf, client: SpecClient) -> None:
    big = charging_request(0, imsi(42), tenantIdentifier="x" * 300_000)
    _problem(await client.post("/chargingdata", big), 413, "PAYLOAD_TOO_LARGE")
    xml = await client.post(
        "/chargingdata", b"<xml/>", invalid=True, headers={"content-type": "application/xml"}
    )
    _problem(xml, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_unknown_refs_are_404(chf: LiveChf, client: SpecClient) -> None:
    for ref in ("0" * 32, "not-a-ref", "A" * 32):
        for op in ("update", "release"):
            response = await client.post(f"/chargingdata/{ref}/{op}", charging_request(1, imsi(1)))
            assert response.status_code == 404
            if response.headers["content-type"] == "application/problem+json":
                assert response.json()["cause"] == "CONTEXT_NOT_FOUND"


async def test_too_many_rating_groups(chf: LiveChf, client: SpecClient) -> None:
    await subscriber(chf.engine, 43, MB)
    body = charging_request(0, imsi(43), [usage(rg) for rg in range(65)])
    problem = _problem(await client.post("/chargingdata", body), 400, "CHARGING_FAILED")
    assert _params(problem) == ["/multipleUnitUsage"]


async def test_stray_requests_keep_the_connection(
    chf: LiveChf, client: SpecClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Off-spec requests with bodies are answered only after their body (hypercorn#329)."""
    await subscriber(chf.engine, 45, 100 * MB)
    http = client.http  # not spec operations: nothing to validate them against
    stray = [
        http.post(f"{chf.api}/chargingdata/abc", content=b"x" * 100_000),
        http.put(f"{chf.api}/chargingdata", content=b"x" * 100_000),
        http.post(f"{chf.api}/nothing/here", content=b"{}"),
    ]
    wanted = client.post("/chargingdata", charging_request(0, imsi(45), [usage(1)]))
    *answers, created = await asyncio.gather(*stray, wanted)
    assert [a.status_code for a in answers] == [404, 405, 404]
    assert answers[1].headers["allow"] == "POST"
    assert created.status_code == 201
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_curl_http2_prior_knowledge(chf: LiveChf) -> None:
    """An independent HTTP/2 client: curl --http2-prior-knowledge."""
    await subscriber(chf.engine, 44, 100 * MB)
    body = orjson.dumps(charging_request(0, imsi(44), [usage(1)]))
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--http2-prior-knowledge",
        "--include",
        "-H",
        "content-type: application/json",
        "--data-binary",
        "@-",
        f"{chf.api}/chargingdata",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(body)
    assert proc.returncode == 0, err
    head, _, payload = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/2 201")
    location = next(h for h in head.split("\r\n") if h.lower().startswith("location:"))
    assert location.split(": ", 1)[1].startswith(f"{chf.api}/chargingdata/")
    assert orjson.loads(payload)["multipleUnitInformation"][0]["resultCode"] == "SUCCESS"


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "nfConsumerIdentification": st.just({"nodeFunctionality": "SMF"}) | _json,
        "invocationTimeStamp": st.just("2026-01-01T00:00:00Z") | _json,
        "invocationSequenceNumber": st.integers(-1, 2**33) | _json,
        "subscriberIdentifier": _json,
        "notifyUri": _json,
        "pDUSessionChargingInformation": _json,
        "multipleUnitUsage": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "ratingGroup": st.integers(-1, 2**33) | _json,
                    "requestedUnit": _json,
                    "usedUnitContainer": _json,
                    "uPFID": _json,
                },
            )
            | _json,
            max_size=3,
        )
        | _json,
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fields)
def test_parser_refuses_only_with_wire_errors(doc: dict[str, Any]) -> None:
    """Any JSON object either parses or is a WireError (a 400), never another exception."""
    try:
        request = parse_request(decode_body(json.dumps(doc).encode()), units_max=64)
    except WireError as exc:
        assert exc.param.startswith("/")
        return
    assert 0 <= request.sequence_number < 2**32
    assert all(0 <= u.rating_group < 2**32 for u in request.usages)
