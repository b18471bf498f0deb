"""FHIR rest-hook endpoints: ``POST /fhir/{subscription}`` and (R4 classic) ``PUT /fhir/{subscription}/{Type}/{id}``.

Transport checks only: the subscription's header token (constant-time),
the content type, the body size. Every refusal is an OperationOutcome that
names the problem. ``bridge.fhir.intake`` does the rest and answers 200
only after the commit.
"""

from __future__ import annotations

import hmac
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bridge.fhir.intake import FhirIntake, FhirReceipt, operation_outcome

__all__ = ["ACCEPTED_TYPES", "build_router"]

log = structlog.get_logger(__name__)

ACCEPTED_TYPES = frozenset({"application/fhir+json", "application/json"})
_FHIR_JSON = "application/fhir+json"


def _answer(receipt: FhirReceipt) -> Response:
    if receipt.body is None:
        return Response(status_code=receipt.status, headers=receipt.headers)
    return JSONResponse(receipt.body, status_code=receipt.status, headers=receipt.headers, media_type=_FHIR_JSON)


def _refuse(status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> Response:
    return _answer(FhirReceipt(status, operation_outcome(code, diagnostics), headers or {}))


def build_router(intake: FhirIntake, *, max_body_bytes: int) -> APIRouter:
    """The rest-hook router for every configured subscription."""
    router = APIRouter()

    async def checked(name: str, request: Request) -> bytes | Response:
        sub = intake.subscription(name)
        if sub is None:
            return _refuse(404, "not-found", f"unknown subscription endpoint {name!r}")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = sub.header_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            log.warning("fhir.unauthorized", subscription=name)
            return _refuse(401, "security", "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _refuse(413, "too-long", f"body of {declared} bytes exceeds the limit of {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _refuse(413, "too-long", f"body exceeds the limit of {max_body_bytes} bytes")
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        # An R4 classic ping is an empty POST, which need not declare a type.
        if body.strip() and kind not in ACCEPTED_TYPES:
            return _refuse(
                415, "not-supported", f"unsupported Content-Type {kind or '(none)'!r}; use application/fhir+json"
            )
        return bytes(body)

    @router.post("/fhir/{name}")
    async def notify(name: str, request: Request) -> Any:
        body = await checked(name, request)
        if isinstance(body, Response):
            return body
        return _answer(await intake.notify(name, body))

    @router.put("/fhir/{name}/{resource_type}/{resource_id}")
    async def put_resource(name: str, resource_type: str, resource_id: str, request: Request) -> Any:
        body = await checked(name, request)
        if isinstance(body, Response):
            return body
        return _answer(await intake.put_resource(name, resource_type, resource_id, body))

    return router
