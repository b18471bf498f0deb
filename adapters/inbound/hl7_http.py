"""HL7 v2 over HTTP: ``POST /hl7/{listener}``, after the HAPI HL7-over-HTTP draft.

One POST carries one message (a batch is accepted too); the response body is
the ACK and the status follows MSA-1: AA/CA → 200, AR/CR → 400, AE/CE → 500.
The Content-Type was never settled, so every type in use is accepted, with
its charset, which overrides MSH-18 on this transport (spec §1.2). Failures
before an ACK can be built get a 4xx whose plain-text body says why. When
the failure is ours (the store, an internal error), the AR comes with 503 and
``Retry-After``: an interface engine treats 4xx as final and would drop a
good message.
"""

from __future__ import annotations

import codecs
import hmac

import structlog
from fastapi import APIRouter, Request, Response

from bridge.hl7 import AckCode
from bridge.intake import Intake, RawMessage

__all__ = ["ACCEPTED_TYPES", "STATUS_FOR_CODE", "build_router"]

log = structlog.get_logger(__name__)

ACCEPTED_TYPES = frozenset({"application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7", "text/plain"})

STATUS_FOR_CODE = {
    AckCode.AA: 200,
    AckCode.CA: 200,
    AckCode.AR: 400,
    AckCode.CR: 400,
    AckCode.AE: 500,
    AckCode.CE: 500,
}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(detail + "\n", status_code=status, media_type="text/plain; charset=utf-8", headers=headers)


def _media_type(header: str) -> tuple[str, str | None]:
    kind, _, params = header.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value:
            charset = value.strip().strip('"')
    return kind.strip().lower(), charset


def _iana_charset(codec: str) -> str:
    """The IANA charset name of a Python codec, for the Content-Type of the ACK."""
    name = codecs.lookup(codec).name
    if name.startswith("iso8859-"):
        return "ISO-8859-" + name.removeprefix("iso8859-")
    return {"ascii": "US-ASCII", "utf-8": "UTF-8", "latin-1": "ISO-8859-1"}.get(name, name)


def build_router(intake: Intake, *, max_body_bytes: int) -> APIRouter:
    """The router for every configured listener; ``intake`` answers."""
    router = APIRouter()

    @router.post("/hl7/{listener}")
    async def receive(listener: str, request: Request) -> Response:
        cfg = intake.settings.listener(listener)
        if cfg is None:
            return _problem(404, f"unknown listener {listener!r}")
        if cfg.http_token is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            expected = cfg.http_token.get_secret_value().encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                log.warning("hl7_http.unauthorized", listener=listener)
                return _problem(
                    401, "missing or invalid bearer token", {"WWW-Authenticate": 'Bearer realm="ehr-bridge"'}
                )
        kind, charset = _media_type(request.headers.get("content-type", ""))
        if kind not in ACCEPTED_TYPES:
            accepted = ", ".join(sorted(ACCEPTED_TYPES))
            return _problem(415, f"unsupported Content-Type {kind or '(none)'!r}; use one of: {accepted}")
        if charset is not None:
            try:
                codecs.lookup(charset)
            except LookupError:
                return _problem(415, f"unsupported charset {charset!r}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _problem(413, f"body of {declared} bytes exceeds the limit of {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _problem(413, f"body exceeds the limit of {max_body_bytes} bytes")
        if not body.strip():
            return _problem(400, "empty body: expected one HL7 v2 message")
        peer = request.client.host if request.client else ""
        receipt = await intake.accept(
            RawMessage(listener=listener, payload=bytes(body), transport="http", peer=peer, charset=charset)
        )
        media_type = f"application/hl7-v2; charset={charset or _iana_charset(receipt.encoding)}"
        if receipt.transient:
            # Our failure (store, internal error): a 4xx would tell the engine to give up on a good message.
            return Response(receipt.ack, status_code=503, media_type=media_type, headers={"Retry-After": "30"})
        return Response(receipt.ack, status_code=STATUS_FOR_CODE[receipt.code], media_type=media_type)

    return router
