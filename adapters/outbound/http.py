"""Translate HTTP outcomes of outbound deliveries into ``Retryable`` and ``Permanent``.

Every outbound adapter that speaks HTTP sends through :func:`request` and
checks the answer with :func:`raise_for_delivery`, so httpx exceptions and
status codes are mapped to :mod:`bridge.errors` exactly once, here. Error
messages carry the status and the exception type only: never the request body
or the URL, which may hold PHI or a secret (Teams ``sig=``, hook keys).

The client itself is the adapter's ``context.http``: the runtime builds one per
channel with :func:`bridge.http.delivery_client`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from bridge.errors import Permanent, Retryable

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after", "raise_for_delivery", "request"]

#: Upper bound (seconds) of a server-requested delay; a bogus Retry-After must not park a channel for days.
MAX_RETRY_AFTER = 3600.0

#: Statuses that mean "slow down / try later" (Standard Webhooks: 429, 502, 504 throttle; RFC 9110 503).
_THROTTLE = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), capped.

    Returns None when the header is absent or unreadable, so the worker falls
    back to its own backoff. A date in the past means "now" (0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    # RFC 9110 §10.2.3: delay-seconds is 1*DIGIT; anything else must be an HTTP-date.
    if text.isascii() and text.isdigit():
        return min(float(int(text)), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 §5.6.7: HTTP-dates are always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    delay = (when - now).total_seconds()
    return min(max(delay, 0.0), MAX_RETRY_AFTER)


def raise_for_delivery(response: httpx.Response, *, now: datetime | None = None) -> None:
    """Return if ``response`` is 2xx; otherwise raise the matching delivery error.

    - 429, 502, 503, 504, other 5xx, 408 → ``Retryable`` (``defer`` from Retry-After)
    - 410 → ``Permanent(disable_channel=True)`` (Standard Webhooks: the endpoint is gone)
    - 3xx → ``Permanent`` (redirects are not followed; Standard Webhooks counts them as failures)
    - other 4xx → ``Permanent``
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    reason = f"HTTP {status} {response.reason_phrase}".rstrip()
    # 408 is a 4xx only by number: the server timed out waiting for us, so a retry can succeed.
    if status in _THROTTLE or status == 408 or status >= 500:
        at = now if now is not None else datetime.now(UTC)
        raise Retryable(reason, defer=parse_retry_after(response.headers.get("Retry-After"), at))
    if status == 410:
        raise Permanent(reason, disable_channel=True)
    if 300 <= status < 400:
        raise Permanent(f"{reason} (redirects are not followed)")
    raise Permanent(reason)


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float,
) -> httpx.Response:
    """Send one request and return the response, whatever its status.

    Transport failures become ``Retryable``; a URL the client cannot use at all
    (bad scheme, malformed) or a request httpx refuses to send becomes
    ``Permanent``, since no retry can fix configuration. Redirects are never
    followed, even if the shared client is configured to: a redirect to an
    internal host is an SSRF vector, and the sender must see 3xx as a failure.
    """
    try:
        return await client.request(
            method,
            url,
            content=content,
            headers=dict(headers),
            timeout=timeout,
            follow_redirects=False,
        )
    except httpx.TimeoutException as exc:
        raise Retryable(f"timeout ({type(exc).__name__})") from exc
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
        raise Permanent(f"request cannot be sent ({type(exc).__name__})") from exc
    except httpx.RequestError as exc:
        raise Retryable(f"transport error ({type(exc).__name__})") from exc
