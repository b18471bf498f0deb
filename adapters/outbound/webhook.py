"""Outbound adapter for generic HTTP receivers, signed per Standard Webhooks 1.0.

The body is the event's CloudEvents 1.0 JSON envelope and nothing else. Each
request carries ``webhook-id`` (the delivery id, stable across retries so the
receiver can dedupe), ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``), REFERENCE §4.5.

:meth:`WebhookAdapter.render` returns a :class:`WebhookRequest` (id and body
bytes) and is pure; the timestamp and the signature depend on the clock, so
they are made in :meth:`WebhookAdapter.send`. :func:`verify_signature` is the
receiving side, shared with our own inbound CloudEvents endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ClassVar, Literal

import httpx
import structlog
from pydantic import Field, SecretStr, field_validator

from adapters.outbound.http import raise_for_delivery, request
from bridge.channels import AdapterContext, ChannelConfig, Post, SendResult

__all__ = [
    "WebhookAdapter",
    "WebhookConfig",
    "WebhookRequest",
    "decode_secret",
    "sign",
    "verify_signature",
]

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"
#: Standard Webhooks: secrets are 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
#: Receivers reject timestamps further than this from their clock (the standardwebhooks library's ±5 min).
DEFAULT_TOLERANCE = 300

#: Headers the adapter owns; an extra header must not replace the signature or the body's type.
_RESERVED_HEADERS = frozenset(
    {
        "content-length",
        "content-type",
        "host",
        "transfer-encoding",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
    }
)
#: RFC 9110 §5.6.2 token.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError if the format is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"must be {SECRET_PREFIX!r} followed by base64") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def verify_signature(
    secret: str | SecretStr,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True if one ``v1`` entry of ``webhook-signature`` signs ``body`` and the timestamp is fresh.

    ``body`` must be the raw bytes as received. ``headers`` may use any case.
    The answer is a bare bool so that a caller cannot tell a forger which
    check failed.
    """
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    try:
        key = decode_secret(raw)
    except ValueError:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not webhook_id or not (stamp.isascii() and stamp.isdigit()) or not signatures:
        return False
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(key, webhook_id, timestamp, body).encode("ascii")
    # The header is a space-separated list so a sender can sign with old and new keys during rotation;
    # v1a (ed25519) entries are skipped, we only hold a symmetric key.
    return any(
        hmac.compare_digest(entry.encode("utf-8"), expected)
        for entry in signatures.split(" ")
        if entry.startswith("v1,")
    )


class WebhookConfig(ChannelConfig):
    """An HTTP endpoint that receives signed CloudEvents.

    Keep credentials out of ``url`` (it is shown in reprs): put them in
    ``headers``, whose values are masked.
    """

    type: Literal["webhook"]
    url: str
    secret: SecretStr
    #: Standard Webhooks recommends 15-30 s.
    timeout: float = Field(default=15.0, gt=0, le=60)
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as exc:
            raise ValueError("is not a valid URL") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL")
        if url.userinfo:
            raise ValueError("must not carry credentials; use headers (their values are masked)")
        return value

    @field_validator("secret")
    @classmethod
    def _standard_secret(cls, value: SecretStr) -> SecretStr:
        decode_secret(value.get_secret_value())
        return value

    @field_validator("headers")
    @classmethod
    def _extra_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name!r} is set by the adapter")
            if any(char in header.get_secret_value() for char in "\r\n\0"):
                raise ValueError(f"value of {name!r} contains a line break or NUL")
        return value


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What is signed and sent: the idempotency key and the exact body bytes."""

    webhook_id: str
    body: bytes


class WebhookAdapter:
    """POSTs each event as a signed CloudEvent; the receiver handles threads and corrections itself."""

    config_model: ClassVar[type[WebhookConfig]] = WebhookConfig
    #: Standard Webhooks asks for payloads under 20 KB.
    max_text: ClassVar[int] = 20_000
    #: Unlimited by default: the receiver throttles with 429 + Retry-After, which the worker honours.
    rate_per_sec: ClassVar[float] = 0.0
    #: The event carries lifecycle and links; the receiver applies them.
    supports_threads: ClassVar[bool] = False
    supports_update: ClassVar[bool] = False

    def __init__(
        self,
        config: WebhookConfig,
        context: AdapterContext,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._name = context.name
        self._http = context.http
        self._clock = clock
        self._key = decode_secret(config.secret.get_secret_value())

    def __repr__(self) -> str:
        return f"WebhookAdapter(name={self._name!r})"

    def render(self, post: Post) -> WebhookRequest:
        """The id and body for ``post``: compact JSON with sorted keys, byte-identical on every call."""
        body = json.dumps(post.event.to_cloudevent(), ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode(
            "utf-8"
        )
        return WebhookRequest(webhook_id=post.delivery_id, body=body)

    async def send(self, payload: WebhookRequest) -> SendResult:
        """Sign with the current time and POST. 2xx is success; raises ``Retryable`` or ``Permanent``."""
        timestamp = int(self._clock())
        headers = {name: value.get_secret_value() for name, value in self._config.headers.items()}
        headers.update(
            {
                # Standard Webhooks receivers parse application/json; the CloudEvents structured
                # type would be rejected by most of them, and the envelope itself says what it is.
                "Content-Type": "application/json",
                "webhook-id": payload.webhook_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self._key, payload.webhook_id, timestamp, payload.body),
            }
        )
        response = await request(
            self._http,
            "POST",
            self._config.url,
            content=payload.body,
            headers=headers,
            timeout=self._config.timeout,
        )
        if response.status_code == 410:
            log.warning("webhook.endpoint_gone", channel=self._name, webhook_id=payload.webhook_id)
        raise_for_delivery(response, now=datetime.fromtimestamp(timestamp, UTC))
        return SendResult()

    async def aclose(self) -> None:
        """Nothing to release: the HTTP client belongs to the runtime."""
        return None
