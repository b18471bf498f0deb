"""FhirClient against a real local FHIR server: the base-URL guard, error mapping, bearer and SMART auth."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from bridge.config import FhirAuthConfig, FhirServerConfig
from bridge.errors import FetchError, OffBaseReference
from bridge.fhir.client import FHIR_JSON, FhirClient
from tests.fhirserver import FakeFhirServer, KeyPair, SubscriptionState, Version, ec_key_pair, rsa_key_pair

BASE = "https://fhir.example.org/fhir"
# Building an SSL context loads the CA bundle (~0.1 s); every client here speaks plain HTTP to 127.0.0.1 and shares one.
_TLS = ssl.create_default_context()


def _encounter(rid: str, *, last_updated: str | None = None, status: str = "in-progress") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Encounter", "id": rid, "status": status, "class": {"code": "IMP"}}
    if last_updated is not None:
        resource["meta"] = {"lastUpdated": last_updated}
    return resource


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def running() -> Iterator[FakeFhirServer]:
    with FakeFhirServer() as server:
        yield server


@pytest.fixture
def server(running: FakeFhirServer) -> FakeFhirServer:
    running.reset()
    return running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=_TLS) as client:
        yield client


def _client(
    base_url: str, http: httpx.AsyncClient, auth: FhirAuthConfig | None = None, *, timeout: float = 10.0
) -> FhirClient:
    return FhirClient(FhirServerConfig(base_url=base_url, auth=auth or FhirAuthConfig(), timeout=timeout), http)


def _smart(server: FakeFhirServer, keys: KeyPair, algorithm: str = "RS384", **options: Any) -> FhirAuthConfig:
    server.client_public_key = keys.public_pem
    server.require_token = True
    return FhirAuthConfig(
        type="smart",
        token_url=server.token_url,
        client_id=server.client_id,
        private_key=SecretStr(keys.private_pem),
        algorithm=algorithm,
        scope="system/Encounter.read system/Subscription.read",
        **options,
    )


@pytest.fixture(scope="module")
def rsa_keys() -> KeyPair:
    return rsa_key_pair()


@pytest.fixture(scope="module")
def ec_keys() -> KeyPair:
    return ec_key_pair()


# -- resolve(): the SSRF guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Encounter/123", f"{BASE}/Encounter/123"),
        ("Encounter/123/_history/2", f"{BASE}/Encounter/123/_history/2"),
        (f"{BASE}/Encounter/123", f"{BASE}/Encounter/123"),
        (f"{BASE}/Encounter/123/_history/2", f"{BASE}/Encounter/123/_history/2"),
        ("HTTPS://FHIR.example.org:443/fhir/Encounter/123", f"{BASE}/Encounter/123"),
        ("Observation/a-b.c", f"{BASE}/Observation/a-b.c"),
    ],
)
def test_reference_under_the_base_resolves_to_an_absolute_url(reference: str, expected: str) -> None:
    assert _client(BASE, httpx.AsyncClient(verify=_TLS)).resolve(reference) == expected


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        ("https://other.example.org/fhir/Encounter/1", "other host"),
        ("https://fhir.example.org:8443/fhir/Encounter/1", "other host"),
        ("http://fhir.example.org/fhir/Encounter/1", "other scheme"),
        ("file:///etc/passwd", "other scheme"),
        ("urn:uuid:9986fc11-a845-4965-af24-45312fd0cc4e", "other scheme"),
        ("https://user:secret@fhir.example.org/fhir/Encounter/1", "userinfo"),
        ("https://fhir.example.org@evil.example.org/fhir/Encounter/1", "userinfo"),
        ("Encounter/../Patient/1", "dot segment"),
        ("https://fhir.example.org/fhir/../admin/Patient/1", "dot segment"),
        ("Encounter/%2e%2e/1", "dot segment"),
        ("Encounter/1?_format=xml", "query string"),
        ("", "empty"),
        ("#p1", "contained"),
        ("Encounter/1#p1", "fragment"),
        ("https://fhir.example.org/fhir-evil/Patient/1", "outside the base path"),
        ("https://fhir.example.org:99999/fhir/Patient/1", "malformed host or port"),
        ("https:///fhir/Patient/1", "malformed host or port"),
        ("https://fhir.example.org/Patient/1", "outside the base path"),
        ("//evil.example.org/fhir/Patient/1", "scheme-relative"),
        ("/fhir/Patient/1", "server-relative"),
        ("https:\\\\evil.example.org/fhir/Patient/1", "backslash"),
        ("Encounter/1 ", "whitespace"),
        ("Patient", "not a Type/id"),
        ("Patient/1/$everything", "not a Type/id"),
        ("patient/1", "not a Type/id"),
    ],
)
def test_reference_off_the_base_is_refused_with_its_reason(reference: str, reason: str) -> None:
    with pytest.raises(OffBaseReference) as caught:
        _client(BASE, httpx.AsyncClient(verify=_TLS)).resolve(reference)
    assert reason in str(caught.value)
    assert caught.value.status == 422
    assert caught.value.issue_code == "security"


def test_base_without_a_path_accepts_references_at_the_root() -> None:
    client = _client("https://fhir.example.org", httpx.AsyncClient(verify=_TLS))
    assert client.resolve("https://fhir.example.org/Patient/1") == "https://fhir.example.org/Patient/1"
    assert client.resolve("Patient/1") == "https://fhir.example.org/Patient/1"


def test_off_base_reference_is_logged_with_the_host_only() -> None:
    client = _client(BASE, httpx.AsyncClient(verify=_TLS))
    with capture_logs() as logs, pytest.raises(OffBaseReference) as caught:
        client.resolve("https://evil.example.org/fhir/Patient/MRN-TEST-0001")
    assert logs == [
        {"event": "fhir.off_base_reference", "host": "evil.example.org", "reason": "other host", "log_level": "warning"}
    ]
    assert "MRN-TEST-0001" not in str(caught.value)


# -- read, search, $status, $events, update ----------------------------------------------------------------------


async def test_read_returns_the_resource_asking_for_fhir_json(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.put_resource(_encounter("1"))
    resource = await _client(server.base_url, http).read("Encounter/1")
    assert (resource["resourceType"], resource["id"], resource["status"]) == ("Encounter", "1", "in-progress")
    assert server.requests[-1].path == "/fhir/Encounter/1"
    assert server.request_headers[-1]["accept"] == FHIR_JSON


async def test_read_follows_an_absolute_reference_and_a_version(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    server.put_resource(_encounter("1", status="planned"))
    server.put_resource(_encounter("1", status="in-progress"))
    client = _client(server.base_url, http)
    assert (await client.read(f"{server.base_url}/Encounter/1"))["status"] == "in-progress"
    assert (await client.read("Encounter/1/_history/1"))["status"] == "planned"


async def test_off_base_reference_is_never_requested(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    # Same port, other host name: still another origin as far as the guard is concerned.
    with pytest.raises(OffBaseReference):
        await _client(server.base_url, http).read(f"http://localhost:{server.port}/fhir/Encounter/1")
    assert server.requests == []


async def test_search_reads_every_page_and_keeps_plus_in_instants(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    server.page_size = 2
    server.put_resource(_encounter("old", last_updated="2025-12-31T23:00:00+00:00"))
    for i in range(5):
        server.put_resource(_encounter(f"e{i}", last_updated=f"2026-01-0{i + 1}T00:00:00+00:00"))
    found = await _client(server.base_url, http).search(
        "Encounter?status=in-progress&_lastUpdated=gt2026-01-01T00:30:00+01:00"
    )
    assert [r["id"] for r in found] == ["e0", "e1", "e2", "e3", "e4"]
    assert server.paths() == ["/fhir/Encounter"] * 3
    assert server.requests[0].query == {"status": "in-progress", "_lastUpdated": "gt2026-01-01T00:30:00+01:00"}


async def test_search_stops_after_max_pages(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.page_size = 1
    for i in range(4):
        server.put_resource(_encounter(f"e{i}"))
    with capture_logs() as logs:
        found = await _client(server.base_url, http).search("Encounter", max_pages=2)
    assert [r["id"] for r in found] == ["e0", "e1"]
    assert len(server.requests) == 2
    assert {"event": "fhir.search_truncated", "outcome": "max_pages"}.items() <= logs[-1].items()


async def test_search_does_not_follow_a_next_link_off_the_base(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.page_size = 2
    server.link_base = "http://evil.example.org/fhir"
    for i in range(3):
        server.put_resource(_encounter(f"e{i}"))
    with capture_logs() as logs:
        found = await _client(server.base_url, http).search("Encounter")
    assert [r["id"] for r in found] == ["e0", "e1"]
    assert len(server.requests) == 1
    assert logs[0] == {
        "event": "fhir.off_base_reference",
        "host": "evil.example.org",
        "reason": "other host",
        "log_level": "warning",
    }


@pytest.mark.parametrize(
    ("link", "followed"),
    [
        ("{base}?_getpages=abc&_getpagesoffset=2", True),
        ("{base}/Encounter?_offset=2", True),
        ("http://evil.example.org/fhir/Encounter?_offset=2", False),
        ("http://user@127.0.0.1:{port}/fhir/Encounter?_offset=2", False),
        ("https://127.0.0.1:{port}/fhir/Encounter?_offset=2", False),
        ("http://127.0.0.1:{port}/fhir-evil/Encounter?_offset=2", False),
        ("{base}/../admin?_offset=2", False),
        ("{base}/Encounter?_offset=2#top", False),
        ("Encounter?_offset=2", False),
    ],
)
async def test_next_link_is_followed_only_under_the_base(
    server: FakeFhirServer, http: httpx.AsyncClient, link: str, followed: bool
) -> None:
    next_url = link.format(base=server.base_url, port=server.port)
    first = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": next_url}],
        "entry": [{"resource": _encounter("e0")}],
    }
    server.script(200, first)
    server.script(200, {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": _encounter("e1")}]})
    found = await _client(server.base_url, http).search("Encounter?status=in-progress")
    assert [r["id"] for r in found] == (["e0", "e1"] if followed else ["e0"])
    if followed:
        second = server.requests[1]
        assert (second.path, second.query) == (
            httpx.URL(next_url).path,
            dict(httpx.URL(next_url).params),
        )


async def test_next_link_back_to_a_page_already_read_ends_the_search(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    looping = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": f"{server.base_url}/Encounter?_offset=2"}],
        "entry": [{"resource": _encounter("e0")}],
    }
    server.script(200, looping)
    server.script(200, looping)
    with capture_logs() as logs:
        found = await _client(server.base_url, http).search("Encounter")
    assert [r["id"] for r in found] == ["e0", "e0"]
    assert len(server.requests) == 2
    assert logs[-1]["outcome"] == "next_loops"


async def test_search_returns_matches_only(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.script(
        200,
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"resource": _encounter("match"), "search": {"mode": "match"}},
                {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}},
                {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}},
                {"resource": _encounter("no-mode")},
                {"fullUrl": "no-resource"},
            ],
        },
    )
    found = await _client(server.base_url, http).search("Encounter?_include=Encounter:patient")
    assert [r["id"] for r in found] == ["match", "no-mode"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [("http://evil.example.org/Encounter?x=1", "search is not"), ("../Encounter?x=1", "search is not")],
)
async def test_search_that_is_not_type_and_query_is_refused(
    server: FakeFhirServer, http: httpx.AsyncClient, query: str, reason: str
) -> None:
    with pytest.raises(OffBaseReference, match=reason):
        await _client(server.base_url, http).search(query)
    assert server.requests == []


@pytest.mark.parametrize(
    ("version", "status_type"), [("r4", "Parameters"), ("r4b", "SubscriptionStatus"), ("r5", "SubscriptionStatus")]
)
async def test_status_returns_the_servers_status_bundle(
    server: FakeFhirServer, http: httpx.AsyncClient, version: Version, status_type: str
) -> None:
    server.version = version
    server.subscription_state["sub-1"] = SubscriptionState(status="error", events_since_start=7)
    bundle = await _client(server.base_url, http).status("sub-1")
    assert bundle["type"] == "searchset"
    assert bundle["entry"][0]["resource"]["resourceType"] == status_type
    assert server.requests[-1].path == "/fhir/Subscription/sub-1/$status"


@pytest.mark.parametrize(
    ("version", "bundle_type"), [("r4", "history"), ("r4b", "history"), ("r5", "subscription-notification")]
)
async def test_events_asks_for_the_range_and_returns_the_notification_bundle(
    server: FakeFhirServer, http: httpx.AsyncClient, version: Version, bundle_type: str
) -> None:
    server.version = version
    server.subscription_state["sub-1"] = SubscriptionState(events_since_start=4)
    server.events["sub-1"] = [(n, f"Encounter/{n}") for n in range(1, 5)]
    bundle = await _client(server.base_url, http).events("sub-1", since=2, until=3)
    assert bundle["type"] == bundle_type
    assert [e["request"]["url"] for e in bundle["entry"][1:]] == ["Encounter/2", "Encounter/3"]
    assert server.requests[-1].query == {"eventsSinceNumber": "2", "eventsUntilNumber": "3", "content": "id-only"}


async def test_events_unsupported_is_a_permanent_501_so_callers_fall_back(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    server.events_supported = False
    server.subscription_state["sub-1"] = SubscriptionState()
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http).events("sub-1", since=1, until=2)
    assert (caught.value.transient, caught.value.status) == (False, 501)


@pytest.mark.parametrize("subscription_id", ["..", "a/b", "a?b", "", "x" * 65])
async def test_subscription_id_that_is_not_a_fhir_id_is_refused(
    server: FakeFhirServer, http: httpx.AsyncClient, subscription_id: str
) -> None:
    with pytest.raises(OffBaseReference, match="not a FHIR id"):
        await _client(server.base_url, http).status(subscription_id)
    assert server.requests == []


async def test_update_puts_the_resource_at_its_id(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    subscription = {"resourceType": "Subscription", "id": "ehr-bridge-adt", "status": "requested"}
    stored = await _client(server.base_url, http).update(subscription)
    assert server.updates == [subscription]
    assert server.requests[-1][:2] == ("PUT", "/fhir/Subscription/ehr-bridge-adt")
    assert server.request_headers[-1]["content-type"] == FHIR_JSON
    assert stored["meta"]["versionId"] == "1"


async def test_update_answered_without_a_body_returns_what_was_sent(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    server.script(201, b"")
    subscription = {"resourceType": "Subscription", "id": "ehr-bridge-adt", "status": "requested"}
    assert await _client(server.base_url, http).update(subscription) == subscription


@pytest.mark.parametrize(
    "resource",
    [{"resourceType": "Subscription", "id": "../x"}, {"resourceType": "../x", "id": "a"}, {"id": "a"}],
)
async def test_update_of_a_resource_without_a_valid_type_and_id_is_refused(
    server: FakeFhirServer, http: httpx.AsyncClient, resource: dict[str, Any]
) -> None:
    with pytest.raises(OffBaseReference):
        await _client(server.base_url, http).update(resource)
    assert server.requests == []


# -- error mapping -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "transient", "status"),
    [
        (500, True, 502),
        (502, True, 502),
        (503, True, 503),
        (504, True, 503),
        (429, True, 503),
        (408, True, 503),
        (400, False, 400),
        (401, False, 401),
        (403, False, 403),
        (404, False, 404),
        (410, False, 410),
        (422, False, 422),
        (501, False, 501),
        (302, False, 502),
    ],
)
async def test_http_status_maps_to_fetch_error(
    server: FakeFhirServer, http: httpx.AsyncClient, answer: int, transient: bool, status: int
) -> None:
    server.script(answer, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "Testpatient Alpha"}]})
    with capture_logs() as logs, pytest.raises(FetchError) as caught:
        await _client(server.base_url, http).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (transient, status)
    assert str(caught.value) == f"read Encounter: HTTP {answer}" + (
        " (redirects are not followed)" if answer == 302 else ""
    )
    assert "Testpatient" not in repr(logs)


async def test_unknown_resource_is_a_permanent_404(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http).read("Encounter/missing")
    assert (caught.value.transient, caught.value.status) == (False, 404)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"<html>Testpatient</html>", "text/html", "not JSON"),
        (b"[1, 2]", "application/fhir+json", "not a JSON object"),
        (b"\xff\xfe", "application/fhir+json", "not JSON"),
    ],
)
async def test_unreadable_body_is_a_permanent_fetch_error(
    server: FakeFhirServer, http: httpx.AsyncClient, body: bytes, content_type: str, reason: str
) -> None:
    server.script(200, body, content_type)
    with pytest.raises(FetchError, match=reason) as caught:
        await _client(server.base_url, http).read("Encounter/1")
    assert caught.value.transient is False
    assert "Testpatient" not in str(caught.value)


@pytest.mark.parametrize("call", ["status", "search"])
async def test_answer_that_is_not_a_bundle_is_a_permanent_fetch_error(
    server: FakeFhirServer, http: httpx.AsyncClient, call: str
) -> None:
    server.script(200, {"resourceType": "Patient", "id": "p"})
    client = _client(server.base_url, http)
    with pytest.raises(FetchError, match="not a Bundle") as caught:
        await (client.status("sub-1") if call == "status" else client.search("Encounter"))
    assert caught.value.transient is False


async def test_timeout_is_transient(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.put_resource(_encounter("1"))
    server.stall = True
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http, timeout=0.2).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (True, 503)
    assert "timed out" in str(caught.value)


async def test_unreachable_server_is_transient(http: httpx.AsyncClient) -> None:
    with pytest.raises(FetchError) as caught:
        await _client(f"http://127.0.0.1:{_unused_port()}/fhir", http).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (True, 502)


# -- auth --------------------------------------------------------------------------------------------------------


async def test_bearer_token_is_sent(server: FakeFhirServer, http: httpx.AsyncClient) -> None:
    server.require_token = True
    server.accept_token("static-token-1")
    server.put_resource(_encounter("1"))
    auth = FhirAuthConfig(type="bearer", token=SecretStr("static-token-1"))
    assert (await _client(server.base_url, http, auth).read("Encounter/1"))["id"] == "1"
    assert server.request_headers[-1]["authorization"] == "Bearer static-token-1"


async def test_refused_bearer_token_is_permanent_and_not_retried(
    server: FakeFhirServer, http: httpx.AsyncClient
) -> None:
    server.require_token = True
    auth = FhirAuthConfig(type="bearer", token=SecretStr("revoked-token"))
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http, auth).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (False, 401)
    assert len(server.requests) == 1


@pytest.mark.parametrize(("algorithm", "keys"), [("RS384", "rsa_keys"), ("ES384", "ec_keys")])
async def test_smart_assertion_is_verified_and_the_token_reused(
    server: FakeFhirServer, http: httpx.AsyncClient, request: pytest.FixtureRequest, algorithm: str, keys: str
) -> None:
    server.expected_kid = "bridge-key-1"
    auth = _smart(server, request.getfixturevalue(keys), algorithm, key_id="bridge-key-1")
    server.put_resource(_encounter("1"))
    client = FhirClient(FhirServerConfig(base_url=server.base_url, auth=auth), http, clock=lambda: 1_900_000_000.0)
    for _ in range(3):
        assert (await client.read("Encounter/1"))["id"] == "1"
    assert server.token_requests == 1
    claims = server.assertions[0]
    assert {k: claims[k] for k in ("iss", "sub", "aud", "exp")} == {
        "iss": server.client_id,
        "sub": server.client_id,
        "aud": server.token_url,
        "exp": 1_900_000_300,
    }
    assert len(claims["jti"]) >= 16
    assert (server.assertion_headers[0]["alg"], server.assertion_headers[0]["kid"]) == (algorithm, "bridge-key-1")
    assert server.scopes == ["system/Encounter.read system/Subscription.read"]


async def test_smart_concurrent_requests_share_one_token_request(
    server: FakeFhirServer, http: httpx.AsyncClient, ec_keys: KeyPair
) -> None:
    auth = _smart(server, ec_keys, "ES384")
    server.put_resource(_encounter("1"))
    client = _client(server.base_url, http, auth)
    results = await asyncio.gather(*(client.read("Encounter/1") for _ in range(5)))
    assert [r["id"] for r in results] == ["1"] * 5
    assert server.token_requests == 1


async def test_smart_token_is_fetched_again_30_seconds_before_it_expires(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    server.token_lifetime = 100
    start = float(int(time.time()))
    now = [start]
    server.put_resource(_encounter("1"))
    config = FhirServerConfig(base_url=server.base_url, auth=_smart(server, rsa_keys))
    client = FhirClient(config, http, clock=lambda: now[0])
    counts = []
    for elapsed in (0.0, 69.0, 70.0):
        now[0] = start + elapsed
        await client.read("Encounter/1")
        counts.append(server.token_requests)
    assert counts == [1, 1, 2]


async def test_smart_401_refreshes_the_token_and_retries_once(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    server.put_resource(_encounter("1"))
    client = _client(server.base_url, http, _smart(server, rsa_keys))
    await client.read("Encounter/1")
    server.expire_tokens()
    assert (await client.read("Encounter/1"))["id"] == "1"
    assert server.token_requests == 2
    assert server.paths() == ["/fhir/Encounter/1"] * 3


async def test_smart_second_401_is_a_permanent_fetch_error(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    client = _client(server.base_url, http, _smart(server, rsa_keys))
    server.script(401)
    server.script(401)
    with pytest.raises(FetchError) as caught:
        await client.read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (False, 401)
    assert server.token_requests == 2
    assert server.paths() == ["/fhir/Encounter/1"] * 2


async def test_smart_assertion_signed_with_the_wrong_key_is_permanent(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    auth = _smart(server, rsa_keys)
    server.client_public_key = rsa_key_pair().public_pem
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http, auth).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (False, 401)
    assert "SMART token request" in str(caught.value)
    assert server.paths() == []


async def test_smart_key_is_read_from_the_key_file(
    server: FakeFhirServer, http: httpx.AsyncClient, ec_keys: KeyPair, tmp_path: Path
) -> None:
    key_file = tmp_path / "bridge-key.pem"
    key_file.write_text(ec_keys.private_pem, encoding="utf-8")
    auth = _smart(server, ec_keys, "ES384").model_copy(update={"private_key": None, "private_key_file": key_file})
    server.put_resource(_encounter("1"))
    assert (await _client(server.base_url, http, auth).read("Encounter/1"))["id"] == "1"
    assert server.assertion_headers[0]["alg"] == "ES384"


@pytest.mark.parametrize(
    ("key", "reason"),
    [("missing-file", "key file cannot be read"), ("not a PEM key", "cannot be signed")],
)
async def test_smart_unusable_key_is_permanent_and_nothing_is_sent(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair, tmp_path: Path, key: str, reason: str
) -> None:
    auth = _smart(server, rsa_keys)
    if key == "missing-file":
        auth = auth.model_copy(update={"private_key": None, "private_key_file": tmp_path / "absent.pem"})
    else:
        auth = auth.model_copy(update={"private_key": SecretStr(key)})
    with pytest.raises(FetchError, match=reason) as caught:
        await _client(server.base_url, http, auth).read("Encounter/1")
    assert (caught.value.transient, caught.value.status) == (False, 500)
    assert server.requests == []


async def test_smart_unreachable_token_endpoint_is_transient(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    auth = _smart(server, rsa_keys).model_copy(update={"token_url": f"http://127.0.0.1:{_unused_port()}/token"})
    with pytest.raises(FetchError) as caught:
        await _client(server.base_url, http, auth).read("Encounter/1")
    assert caught.value.transient is True
    assert server.requests == []


async def test_no_token_or_key_in_repr_or_logs(
    server: FakeFhirServer, http: httpx.AsyncClient, rsa_keys: KeyPair
) -> None:
    server.put_resource(_encounter("1"))
    client = _client(server.base_url, http, _smart(server, rsa_keys))
    with capture_logs() as logs:
        await client.read("Encounter/1")
    (token,) = server.issued_tokens
    key_body = rsa_keys.private_pem.splitlines()[1]
    shown = repr(client) + repr(vars(client)) + repr(logs)
    assert token not in shown
    assert key_body not in shown
    assert repr(client) == f"FhirClient(base_url={server.base_url!r}, auth='smart')"


async def test_no_bearer_token_in_repr(http: httpx.AsyncClient) -> None:
    client = _client(BASE, http, FhirAuthConfig(type="bearer", token=SecretStr("static-token-1")))
    assert "static-token-1" not in repr(client) + repr(vars(client))
