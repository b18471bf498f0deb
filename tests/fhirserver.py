"""A fake FHIR server for tests: real HTTP on 127.0.0.1 serving reads, searches, Subscription operations, SMART tokens.

The FHIR endpoints live under ``/fhir`` (``server.base_url``); the SMART token
endpoint is ``/token`` (``server.token_url``), outside the base as on real
deployments. State is plain attributes that tests set and inspect; every value
in it is synthetic.

    with FakeFhirServer(version="r5") as server:
        server.put_resource({"resourceType": "Encounter", "id": "1", "status": "in-progress"})
        server.subscription_state["sub-1"] = SubscriptionState(events_since_start=3)
        server.events["sub-1"] = [(1, "Encounter/1"), (2, "Encounter/2"), (3, "Encounter/3")]
        ...  # point a FhirClient at server.base_url
        assert server.requests[-1].path == "/fhir/Subscription/sub-1/$events"
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.base import RequestResponseEndpoint

__all__ = [
    "FHIR_JSON",
    "FakeFhirServer",
    "KeyPair",
    "RecordedRequest",
    "SubscriptionState",
    "ec_key_pair",
    "rsa_key_pair",
]

FHIR_JSON = "application/fhir+json"
BASE_PATH = "/fhir"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BACKPORT_STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
)

Version = Literal["r4", "r4b", "r5"]


class KeyPair(NamedTuple):
    """A signing key pair as PEM text: the private key for the client, the public key for the server."""

    private_pem: str
    public_pem: str


def _pem_pair(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> KeyPair:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private.decode("ascii"), public.decode("ascii"))


def rsa_key_pair() -> KeyPair:
    """A fresh 2048-bit RSA key pair, for RS384 assertions."""
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key_pair() -> KeyPair:
    """A fresh P-384 key pair, for ES384 assertions."""
    return _pem_pair(ec.generate_private_key(ec.SECP384R1()))


@dataclass
class SubscriptionState:
    """What ``$status`` reports for one subscription."""

    status: str = "active"
    events_since_start: int = 0
    topic: str = "http://example.org/fhir/SubscriptionTopic/encounter-start"


class RecordedRequest(NamedTuple):
    """One request as the server saw it; ``query`` keeps the last value of each repeated name."""

    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Scripted:
    status: int
    body: bytes
    content_type: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    # A date or a dateTime without offset: FHIR leaves the zone open; UTC keeps comparisons total.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _outcome(status: int, code: str, diagnostics: str) -> JSONResponse:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


@dataclass
class FakeFhirServer:
    """A FHIR server on a free port of 127.0.0.1, run by uvicorn in a thread.

    Knobs: ``version`` (the status shape of ``$status`` / ``$events``),
    ``page_size``, ``events_supported`` (False: ``$events`` answers 501),
    ``require_token`` (FHIR endpoints demand a token the server issued or
    accepted), ``link_base`` (the base written into links and ``fullUrl``s, as a
    server behind a proxy may misreport it), ``stall`` (FHIR requests hang until
    cleared, to provoke client timeouts) and :meth:`script` (canned answers).
    """

    version: Version = "r4"
    page_size: int = 50
    client_id: str = "ehr-bridge-test"
    #: PEM of the key the token endpoint verifies assertions with.
    client_public_key: str | None = None
    #: When set, an assertion must carry this ``kid`` header.
    expected_kid: str | None = None
    token_lifetime: int = 300
    events_supported: bool = True
    require_token: bool = False
    stall: bool = False
    link_base: str | None = None
    subscription_state: dict[str, SubscriptionState] = field(default_factory=dict)
    #: Subscription id → its event log: (event number, focus reference).
    events: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    requests: list[RecordedRequest] = field(default_factory=list)
    #: The headers of each request, in the order of ``requests``.
    request_headers: list[dict[str, str]] = field(default_factory=list)
    #: Bodies received by PUT, as sent.
    updates: list[dict[str, Any]] = field(default_factory=list)
    token_requests: int = 0
    #: Claims and JOSE headers of every assertion the token endpoint accepted.
    assertions: list[dict[str, Any]] = field(default_factory=list)
    assertion_headers: list[dict[str, Any]] = field(default_factory=list)
    #: The ``scope`` of every token request.
    scopes: list[str] = field(default_factory=list)
    issued_tokens: set[str] = field(default_factory=set)
    port: int = 0
    _resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _history: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    _script: list[_Scripted] = field(default_factory=list)
    _seen_jti: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}{BASE_PATH}"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    @property
    def _links(self) -> str:
        return self.link_base or self.base_url

    # -- state helpers ------------------------------------------------------------------------------------------

    def put_resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a copy of ``resource`` as its next version (``meta.versionId`` and ``lastUpdated`` kept if set)."""
        stored = copy.deepcopy(resource)
        key = (str(stored["resourceType"]), str(stored["id"]))
        with self._lock:
            versions = self._history.setdefault(key, {})
            meta = stored.setdefault("meta", {})
            meta.setdefault("versionId", str(len(versions) + 1))
            meta.setdefault("lastUpdated", _now())
            versions[str(meta["versionId"])] = stored
            self._resources[key] = stored
        return copy.deepcopy(stored)

    def resource(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._resources.get((resource_type, resource_id))
        return copy.deepcopy(found) if found is not None else None

    def script(self, status: int, body: bytes | dict[str, Any] | None = None, content_type: str = FHIR_JSON) -> None:
        """Answer the next FHIR request (not the token endpoint) with this, whatever it asks; queued in order."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
        with self._lock:
            self._script.append(_Scripted(status, raw, content_type))

    def accept_token(self, token: str) -> None:
        """Accept a static bearer token as if this server had issued it."""
        with self._lock:
            self.issued_tokens.add(token)

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far: the next request with one gets 401."""
        with self._lock:
            self.issued_tokens.clear()

    def reset(self) -> None:
        """Back to a new server's state and knobs (``version`` included), keeping the running listener.

        Starting uvicorn costs a few hundred milliseconds, so a test module can
        share one started server and reset it before each test.
        """
        fresh = FakeFhirServer()
        with self._lock:
            for item in fields(self):
                if item.name not in _KEPT_ON_RESET:
                    setattr(self, item.name, getattr(fresh, item.name))

    def paths(self, method: str = "GET") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if r.method == method]

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> FakeFhirServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app(), log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        server = self._server
        self._thread = threading.Thread(target=lambda: server.run(sockets=[sock]), daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake FHIR server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        # A stalled handler would hold uvicorn's graceful shutdown open.
        self.stall = False
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeFhirServer:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the app ------------------------------------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app.middleware("http")(self._gate)
        app.add_api_route("/token", self._token, methods=["POST"])
        fhir = APIRouter(prefix=BASE_PATH)
        fhir.add_api_route("/Subscription/{sid}/$status", self._status, methods=["GET"])
        fhir.add_api_route("/Subscription/{sid}/$events", self._events, methods=["GET"])
        fhir.add_api_route("/{rtype}/{rid}/_history/{vid}", self._vread, methods=["GET"])
        fhir.add_api_route("/{rtype}/{rid}", self._read, methods=["GET"])
        fhir.add_api_route("/{rtype}/{rid}", self._update, methods=["PUT"])
        fhir.add_api_route("/{rtype}", self._search, methods=["GET"])
        app.include_router(fhir)
        return app

    async def _gate(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Record every request; on FHIR paths apply the stall, the script and the token check first."""
        with self._lock:
            self.requests.append(RecordedRequest(request.method, request.url.path, dict(request.query_params)))
            self.request_headers.append(dict(request.headers))
        if request.url.path != BASE_PATH and not request.url.path.startswith(BASE_PATH + "/"):
            return await call_next(request)
        while self.stall:
            await asyncio.sleep(0.01)
        with self._lock:
            scripted = self._script.pop(0) if self._script else None
        if scripted is not None:
            return Response(scripted.body, status_code=scripted.status, media_type=scripted.content_type)
        if self.require_token:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            with self._lock:
                valid = scheme.lower() == "bearer" and token in self.issued_tokens
            if not valid:
                return _outcome(401, "login", "a valid bearer token is required")
        return await call_next(request)

    async def _token(self, request: Request) -> Response:
        """SMART Backend Services token endpoint: verify the client assertion, issue an opaque token."""
        form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        with self._lock:
            self.token_requests += 1
        if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != ASSERTION_TYPE:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        assertion = form.get("client_assertion", "")
        if self.client_public_key is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.client_public_key,
                algorithms=["RS384", "ES384"],
                audience=self.token_url,
                issuer=self.client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        with self._lock:
            replayed = claims["jti"] in self._seen_jti
            self._seen_jti.add(claims["jti"])
        if claims["sub"] != self.client_id or replayed:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        if self.expected_kid is not None and header.get("kid") != self.expected_kid:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = secrets.token_urlsafe(24)
        scope = form.get("scope", "")
        with self._lock:
            self.assertions.append(claims)
            self.assertion_headers.append(header)
            self.scopes.append(scope)
            self.issued_tokens.add(token)
        return JSONResponse(
            {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime, "scope": scope}
        )

    async def _read(self, rtype: str, rid: str) -> Response:
        found = self.resource(rtype, rid)
        if found is None:
            return _outcome(404, "not-found", f"{rtype}/{rid} is not known")
        return _fhir(found)

    async def _vread(self, rtype: str, rid: str, vid: str) -> Response:
        with self._lock:
            found = copy.deepcopy(self._history.get((rtype, rid), {}).get(vid))
        if found is None:
            return _outcome(404, "not-found", f"{rtype}/{rid}/_history/{vid} is not known")
        return _fhir(found)

    async def _update(self, rtype: str, rid: str, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _outcome(400, "structure", "body is not JSON")
        if not isinstance(body, dict) or body.get("resourceType") != rtype or body.get("id") != rid:
            # FHIR http.html#update: the body's type and id must match the URL.
            return _outcome(400, "invalid", "resourceType and id must match the URL")
        with self._lock:
            self.updates.append(copy.deepcopy(body))
            created = (rtype, rid) not in self._resources
        meta = {k: v for k, v in body.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
        stored = self.put_resource({**body, "meta": meta})
        return _fhir(stored, status=201 if created else 200)

    async def _search(self, rtype: str, request: Request) -> Response:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
        offset = int(request.query_params.get("_offset", "0"))
        with self._lock:
            matches = [copy.deepcopy(r) for (t, _), r in self._resources.items() if t == rtype]
        for name, value in params:
            if name == "_id":
                wanted = set(value.split(","))
                matches = [r for r in matches if r["id"] in wanted]
            elif name == "_lastUpdated":
                matches = [r for r in matches if _compare(r["meta"]["lastUpdated"], value)]
        page = matches[offset : offset + self.page_size]
        links = [{"relation": "self", "url": f"{self._links}/{rtype}?{urlencode([*params, ('_offset', offset)])}"}]
        if offset + self.page_size < len(matches):
            after = urlencode([*params, ("_offset", offset + self.page_size)])
            links.append({"relation": "next", "url": f"{self._links}/{rtype}?{after}"})
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {"fullUrl": f"{self._links}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                for r in page
            ],
        }
        return _fhir(bundle)

    async def _status(self, sid: str) -> Response:
        state = self.subscription_state.get(sid)
        if state is None:
            return _outcome(404, "not-found", f"Subscription/{sid} is not known")
        entry = {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": self._status_resource(sid, state, "query-status")}
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": 1,
            "entry": [{**entry, "search": {"mode": "match"}}],
        }
        return _fhir(bundle)

    async def _events(self, sid: str, request: Request) -> Response:
        if not self.events_supported:
            return _outcome(501, "not-supported", "$events is not supported")
        state = self.subscription_state.get(sid)
        if state is None:
            return _outcome(404, "not-found", f"Subscription/{sid} is not known")
        log = self.events.get(sid, [])
        try:
            since = int(request.query_params.get("eventsSinceNumber", "1"))
            until = int(request.query_params.get("eventsUntilNumber", str(max((n for n, _ in log), default=0))))
        except ValueError:
            return _outcome(400, "invalid", "event numbers must be integers")
        content = request.query_params.get("content", "id-only")
        chosen = sorted((n, ref) for n, ref in log if since <= n <= until)
        status = self._status_resource(sid, state, "query-event", chosen, content)
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": status,
                "request": {"method": "GET", "url": f"Subscription/{sid}/$events"},
                "response": {"status": "200"},
            }
        ]
        if content != "empty":
            for _, ref in chosen:
                entries.append(self._focus_entry(ref, content))
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            # Backport IG: history on R4/R4B; R5 has its own Bundle type for notifications.
            "type": "subscription-notification" if self.version == "r5" else "history",
            "timestamp": _now(),
            "entry": entries,
        }
        return _fhir(bundle)

    def _focus_entry(self, ref: str, content: str) -> dict[str, Any]:
        relative = ref.removeprefix(self._links + "/")
        entry: dict[str, Any] = {
            "fullUrl": ref if "://" in ref else f"{self._links}/{ref}",
            "request": {"method": "PUT", "url": relative},
            "response": {"status": "200"},
        }
        if content == "full-resource" and relative.count("/") == 1:
            rtype, rid = relative.split("/")
            found = self.resource(rtype, rid)
            if found is not None:
                entry["resource"] = found
        return entry

    def _status_resource(
        self,
        sid: str,
        state: SubscriptionState,
        kind: str,
        chosen: list[tuple[int, str]] | None = None,
        content: str = "id-only",
    ) -> dict[str, Any]:
        subscription = {"reference": f"{self._links}/Subscription/{sid}"}
        with_focus = content != "empty"
        if self.version == "r4":
            # Backport IG, backport-subscription-status-r4: a Parameters; counts are valueString.
            parameters: list[dict[str, Any]] = [
                {"name": "subscription", "valueReference": subscription},
                {"name": "topic", "valueCanonical": state.topic},
                {"name": "status", "valueCode": state.status},
                {"name": "type", "valueCode": kind},
                {"name": "events-since-subscription-start", "valueString": str(state.events_since_start)},
            ]
            for number, ref in chosen or []:
                parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)}]
                if with_focus:
                    parts.append({"name": "focus", "valueReference": {"reference": ref}})
                parameters.append({"name": "notification-event", "part": parts})
            return {
                "resourceType": "Parameters",
                "id": str(uuid.uuid4()),
                "meta": {"profile": [BACKPORT_STATUS_PROFILE]},
                "parameter": parameters,
            }
        # R4B string, R5 integer64: both are JSON strings (R5 json.html: integer64 is sent as a string).
        resource: dict[str, Any] = {
            "resourceType": "SubscriptionStatus",
            "id": str(uuid.uuid4()),
            "status": state.status,
            "type": kind,
            "eventsSinceSubscriptionStart": str(state.events_since_start),
            "subscription": subscription,
            "topic": state.topic,
        }
        if chosen:
            resource["notificationEvent"] = [
                {"eventNumber": str(number), **({"focus": {"reference": ref}} if with_focus else {})}
                for number, ref in chosen
            ]
        return resource


_KEPT_ON_RESET = frozenset({"port", "_lock", "_server", "_thread"})


def _compare(last_updated: str, criterion: str) -> bool:
    """FHIR search.html#prefix on ``_lastUpdated``: gt, ge, lt, le, eq (the default)."""
    prefix = criterion[:2] if criterion[:2] in ("gt", "ge", "lt", "le", "eq") else "eq"
    bound = _instant(criterion[2:] if criterion[:2] == prefix else criterion)
    value = _instant(last_updated)
    return {
        "gt": value > bound,
        "ge": value >= bound,
        "lt": value < bound,
        "le": value <= bound,
        "eq": value == bound,
    }[prefix]
