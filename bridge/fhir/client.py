"""Read from one configured FHIR server: reads, searches, ``$status``, ``$events`` and updates.

Every URL the client requests lies under the configured service base; a
reference anywhere else is refused with :class:`~bridge.errors.OffBaseReference`
before any request is made, because notification payloads name the URLs
(``focus.reference``, ``Bundle.link``) and a forged one would otherwise make the
bridge fetch internal hosts with its credentials (SSRF). httpx exceptions and
HTTP statuses are mapped to :class:`~bridge.errors.FetchError` once, in this
module. Messages and logs name the resource type and the status only, never a
body, a query or a token.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
import jwt
import structlog

from bridge.config import FhirServerConfig
from bridge.errors import FetchError, OffBaseReference

__all__ = ["FHIR_JSON", "FhirClient"]

log = structlog.get_logger(__name__)

#: The FHIR JSON media type (FHIR R4 §3.1.0.1.6 http.html#mime-type).
FHIR_JSON = "application/fhir+json"

# FHIR R4 §2.3.0 datatypes.html#id and references.html#literal: Type/id[/_history/vid].
_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LITERAL = re.compile(r"(?P<type>[A-Z][A-Za-z]{0,63})/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Whitespace, controls and backslashes are read differently by different URL parsers
# (WHATWG turns "\" into "/"), so a URL that holds them is refused rather than normalised.
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")

# SMART App Launch v2, Backend Services §4.2.1: the JWT profile of RFC 7523.
_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Lifetime of a client assertion; SMART Backend Services caps ``exp`` at five minutes ahead.
_ASSERTION_SECONDS = 300
#: A cached access token is dropped this long before it expires, so no request carries a token that dies in flight.
_TOKEN_MARGIN = 30.0

#: Upstream statuses that mean "try later" rather than "broken": answered with 503 so senders retry.
_BUSY = frozenset({408, 429, 503, 504})


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    path: str


class FhirClient:
    """An httpx client bound to one FHIR server's base URL and credentials.

    ``clock`` gives the current time in seconds; it dates the SMART assertion
    and decides when a cached access token has expired.
    """

    def __init__(
        self,
        config: FhirServerConfig,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        self._base = _origin(urlsplit(config.base_url))
        self._token: _Token | None = None
        # One token request at a time: requests that find no valid token wait for the one in flight.
        self._token_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FhirClient(base_url={self.base_url!r}, auth={self._config.auth.type!r})"

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def resolve(self, reference: str) -> str:
        """The absolute URL of a literal reference that lies under the base, else ``OffBaseReference``.

        Accepted: ``Type/id``, ``Type/id/_history/vid``, and the same under the
        base as an absolute URL (same scheme, host and port; path below the base
        path). The returned URL is rebuilt from the base, never echoed.
        """
        return self._literal(reference)[0]

    async def read(self, reference: str) -> dict[str, Any]:
        """GET one resource (``Encounter/1``, or an absolute URL under the base)."""
        url, resource_type = self._literal(reference)
        return await self._json("GET", url, what=f"read {resource_type}")

    async def search(self, query: str, *, max_pages: int = 20) -> list[dict[str, Any]]:
        """Run ``Type?name=value&...`` and return the matched resources of every page.

        Values keep a literal ``+`` (timezone offsets in ``_lastUpdated``), so the
        query is re-encoded rather than sent as typed. ``next`` links are followed
        only when they stay under the base; a refused link or ``max_pages`` ends
        the search with what was read so far, logged as ``fhir.search_truncated``.
        """
        resource_type, _, raw = query.partition("?")
        if not _TYPE.fullmatch(resource_type):
            raise self._refuse("search is not Type?query")
        params: list[tuple[str, str]] | None = _query_params(raw)
        url = f"{self.base_url}/{resource_type}"
        what = f"search {resource_type}"
        found: list[dict[str, Any]] = []
        visited = {url}
        for page in range(1, max_pages + 1):
            bundle = await self._bundle("GET", url, params=params, what=what)
            found.extend(_matches(bundle))
            link = _next_link(bundle)
            if link is None:
                return found
            try:
                url = self._next_url(link)
            except OffBaseReference:
                log.warning("fhir.search_truncated", resource_type=resource_type, pages=page, outcome="next_refused")
                return found
            if url in visited:
                log.warning("fhir.search_truncated", resource_type=resource_type, pages=page, outcome="next_loops")
                return found
            visited.add(url)
            # The next link carries the server's own paging query; ours must not be appended again.
            params = None
        log.warning("fhir.search_truncated", resource_type=resource_type, pages=max_pages, outcome="max_pages")
        return found

    async def status(self, subscription_id: str) -> dict[str, Any]:
        """``GET Subscription/{id}/$status``: a searchset Bundle of status resources (Backport IG errors.md)."""
        url = f"{self.base_url}/Subscription/{self._id(subscription_id)}/$status"
        return await self._bundle("GET", url, what="Subscription $status")

    async def events(
        self,
        subscription_id: str,
        *,
        since: int,
        until: int,
        content: str = "id-only",
    ) -> dict[str, Any]:
        """``GET Subscription/{id}/$events`` for event numbers ``since``..``until``: a notification Bundle.

        The operation is optional for servers; a 501, 404 or 400 comes back as
        a non-transient ``FetchError`` so the caller can fall back to a search.
        """
        url = f"{self.base_url}/Subscription/{self._id(subscription_id)}/$events"
        params = [("eventsSinceNumber", str(since)), ("eventsUntilNumber", str(until)), ("content", content)]
        return await self._bundle("GET", url, params=params, what="Subscription $events")

    async def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``PUT {resourceType}/{id}``: create or replace, returning the server's version of it."""
        resource_type = resource.get("resourceType")
        resource_id = resource.get("id")
        if not isinstance(resource_type, str) or not _TYPE.fullmatch(resource_type):
            raise self._refuse("resource has no valid resourceType")
        url = f"{self.base_url}/{resource_type}/{self._id(resource_id)}"
        body = json.dumps(resource, separators=(",", ":")).encode()
        response = await self._send(
            "PUT",
            url,
            content=body,
            # RFC 7240 / FHIR http.html#ops: ask for the stored resource back, with its new meta.
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
        )
        if response.is_success and not response.content:
            # A server may ignore Prefer and answer 200/201 with no body (return=minimal).
            return dict(resource)
        return _object(response, what=f"update {resource_type}")

    def _literal(self, reference: str) -> tuple[str, str]:
        """The URL and resource type of a reference on the base; see :meth:`resolve`."""
        if not reference:
            raise self._refuse("empty reference")
        if reference.startswith("#"):
            raise self._refuse("contained reference")
        if _UNSAFE.search(reference):
            raise self._refuse("whitespace, control character or backslash")
        if "#" in reference:
            raise self._refuse("fragment")
        if "?" in reference:
            raise self._refuse("query string")
        if reference.startswith("//"):
            raise self._refuse("scheme-relative URL")
        if reference.startswith("/"):
            raise self._refuse("server-relative path")
        parts = urlsplit(reference)
        remainder = self._below_base(parts) if parts.scheme else reference
        if _dot_segment(remainder):
            raise self._refuse("dot segment in path", parts.hostname)
        literal = _LITERAL.fullmatch(remainder)
        if literal is None:
            raise self._refuse("not a Type/id reference", parts.hostname)
        return f"{self.base_url}/{remainder}", literal["type"]

    def _refuse(self, reason: str, host: str | None = None) -> OffBaseReference:
        log.warning("fhir.off_base_reference", host=host, reason=reason)
        return OffBaseReference(f"reference refused ({reason}): only URLs under the configured FHIR base are read")

    def _below_base(self, parts: SplitResult, *, allow_base: bool = False) -> str:
        """The path below the base path of an absolute URL on the base's origin (``""`` for the base itself)."""
        if parts.scheme.lower() != self._base.scheme:
            raise self._refuse("other scheme", parts.hostname)
        if "@" in parts.netloc:
            raise self._refuse("userinfo in URL", parts.hostname)
        try:
            origin = _origin(parts)
        except ValueError:
            raise self._refuse("malformed host or port") from None
        if (origin.host, origin.port) != (self._base.host, self._base.port):
            raise self._refuse("other host", parts.hostname)
        if allow_base and origin.path == self._base.path:
            return ""
        prefix = self._base.path + "/"
        # "/fhir-evil/..." starts with "/fhir" too: compare with the separator included.
        if not parts.path.startswith(prefix):
            raise self._refuse("outside the base path", parts.hostname)
        return parts.path[len(prefix) :]

    def _next_url(self, link: str) -> str:
        """A paging link made safe to follow: on the base's origin, at or below its path; its query is kept."""
        if _UNSAFE.search(link):
            raise self._refuse("whitespace, control character or backslash")
        parts = urlsplit(link)
        if "#" in link:
            raise self._refuse("fragment", parts.hostname)
        if not parts.scheme:
            raise self._refuse("relative next link")
        remainder = self._below_base(parts, allow_base=True)
        if _dot_segment(remainder):
            raise self._refuse("dot segment in path", parts.hostname)
        path = f"{self.base_url}/{remainder}" if remainder else self.base_url
        return f"{path}?{parts.query}" if parts.query else path

    def _id(self, value: object) -> str:
        if not isinstance(value, str) or not _ID.fullmatch(value) or value in (".", ".."):
            raise self._refuse("not a FHIR id")
        return value

    async def _bundle(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        body = await self._json(method, url, what=what, params=params)
        if body.get("resourceType") != "Bundle":
            raise FetchError(f"{what}: the answer is not a Bundle", transient=False, status=502)
        return body

    async def _json(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        return _object(await self._send(method, url, params=params), what=what)

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One request with credentials; with SMART, a 401 drops the token and the request is sent once more."""
        retried = False
        while True:
            token = await self._access_token()
            request_headers = {"Accept": FHIR_JSON, **(headers or {})}
            if token is not None:
                request_headers["Authorization"] = f"Bearer {token}"
            response = await self._request(
                method, url, params=params, content=content, headers=request_headers, what="FHIR request"
            )
            if response.status_code == 401 and self._config.auth.type == "smart" and not retried:
                # The server may revoke or expire a token before expires_in says: fetch a fresh one, once.
                self._forget(token)
                retried = True
                continue
            return response

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        headers: dict[str, str],
        params: Sequence[tuple[str, str]] | None = None,
        content: bytes | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            # Redirects are never followed: a 3xx to an internal host would bypass the base guard.
            return await self._http.request(
                method,
                url,
                params=list(params) if params is not None else None,
                content=content,
                data=data,
                headers=headers,
                timeout=self._config.timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException as exc:
            raise FetchError(f"{what} timed out ({type(exc).__name__})", transient=True, status=503) from exc
        except httpx.HTTPError as exc:
            raise FetchError(f"{what} failed ({type(exc).__name__})", transient=True, status=502) from exc

    async def _access_token(self) -> str | None:
        auth = self._config.auth
        if auth.type == "bearer" and auth.token is not None:
            return auth.token.get_secret_value()
        if auth.type != "smart":
            return None
        token = self._valid_token()
        if token is not None:
            return token
        async with self._token_lock:
            # Another request may have fetched a token while this one waited for the lock.
            token = self._valid_token()
            if token is not None:
                return token
            fresh = await self._fetch_token()
            self._token = fresh
            return fresh.value

    def _valid_token(self) -> str | None:
        if self._token is not None and self._clock() < self._token.expires_at:
            return self._token.value
        return None

    def _forget(self, token: str | None) -> None:
        # Only the token that was refused: a concurrent request may already hold a newer one.
        if self._token is not None and self._token.value == token:
            self._token = None

    async def _fetch_token(self) -> _Token:
        """SMART Backend Services §4.2: a client-credentials grant authenticated by a signed JWT."""
        auth = self._config.auth
        if auth.token_url is None or auth.client_id is None:
            raise FetchError("SMART auth needs token_url and client_id", transient=False, status=500)
        now = self._clock()
        claims = {
            "iss": auth.client_id,
            "sub": auth.client_id,
            "aud": auth.token_url,
            "exp": int(now) + _ASSERTION_SECONDS,
            # A fresh jti each time: servers reject a replayed assertion.
            "jti": secrets.token_urlsafe(24),
        }
        try:
            assertion = jwt.encode(
                claims,
                self._signing_key(),
                algorithm=auth.algorithm,
                headers={"kid": auth.key_id} if auth.key_id else None,
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise FetchError(
                f"SMART client assertion cannot be signed ({type(exc).__name__})", transient=False, status=500
            ) from exc
        form = {
            "grant_type": "client_credentials",
            "scope": auth.scope,
            "client_assertion_type": _ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        what = "SMART token request"
        response = await self._request(
            "POST", auth.token_url, data=form, headers={"Accept": "application/json"}, what=what
        )
        body = _object(response, what=what)
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise FetchError(f"{what}: the answer has no access_token", transient=False, status=502)
        expires_in = body.get("expires_in")
        # Without a usable expires_in the token serves the requests waiting now and is fetched again next time.
        lifetime = (
            float(expires_in) if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else 0.0
        )
        log.info("fhir.smart_token", outcome="issued", expires_in=lifetime)
        return _Token(value=value, expires_at=self._clock() + max(lifetime - _TOKEN_MARGIN, 0.0))

    def _signing_key(self) -> str:
        auth = self._config.auth
        if auth.private_key is not None:
            return auth.private_key.get_secret_value()
        if auth.private_key_file is None:
            raise FetchError("SMART auth needs private_key or private_key_file", transient=False, status=500)
        try:
            # Read on every token request, so a rotated key file takes effect without a restart.
            return auth.private_key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FetchError(
                f"SMART signing key file cannot be read ({type(exc).__name__})", transient=False, status=500
            ) from exc


def _origin(parts: SplitResult) -> _Origin:
    """Scheme, lower-case host, explicit port and path without trailing slash; ``ValueError`` if unreadable."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if not host:
        raise ValueError("no host")
    port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    return _Origin(scheme=scheme, host=host, port=port, path=parts.path.rstrip("/"))


def _dot_segment(path: str) -> bool:
    # RFC 3986 §5.2.4 removes "." and ".." segments, also when percent-encoded (%2e%2e), before the server routes.
    return any(unquote(segment) in (".", "..") for segment in path.split("/"))


def _query_params(raw: str) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        # unquote, not unquote_plus: in FHIR searches "+" is a timezone sign far more often than a space.
        params.append((unquote(name), unquote(value)))
    return params


def _status_error(status: int, what: str) -> FetchError:
    message = f"{what}: HTTP {status}"
    if status in _BUSY:
        return FetchError(message, transient=True, status=503)
    if status == 501:
        # Not implemented ($events is optional for servers): the caller falls back, a retry cannot help.
        return FetchError(message, transient=False, status=501)
    if status >= 500:
        return FetchError(message, transient=True, status=502)
    if 400 <= status < 500:
        return FetchError(message, transient=False, status=status)
    return FetchError(f"{message} (redirects are not followed)", transient=False, status=502)


def _object(response: httpx.Response, *, what: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; any other status or body becomes a ``FetchError``."""
    if not response.is_success:
        raise _status_error(response.status_code, what)
    try:
        body = response.json()
    except ValueError as exc:
        raise FetchError(f"{what}: the answer is not JSON", transient=False, status=502) from exc
    if not isinstance(body, dict):
        raise FetchError(f"{what}: the answer is not a JSON object", transient=False, status=502)
    return body


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a searchset page, without ``_include``s and OperationOutcome warnings."""
    found: list[dict[str, Any]] = []
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode in (None, "match"):
            found.append(entry["resource"])
    return found


def _next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            url: str = link["url"]
            return url
    return None
