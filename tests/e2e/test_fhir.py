"""FHIR Subscriptions through a running bridge: the corpus, id-only fetches, gap recovery, the watchdog, bad input."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from bridge.store import JournalEntry, MessageStatus, SubscriptionProgress, new_id
from tests.fhirserver import FakeFhirServer, SubscriptionState

from .support import CORPUS

TOKEN = "sub-header-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
NOTIFICATIONS = CORPUS / "fhir" / "notifications"
TOPIC = "http://example.org/fhir/SubscriptionTopic/encounter-start"


# --- the corpus, against a remote server that respx plays from the corpus' own resources -------------------


def _corpus_files() -> list[Path]:
    return sorted(NOTIFICATIONS.glob("*/Bundle-*.json"))


def _remote(folder: Path) -> Any:
    """Answers for http://example.org/FHIR/<version>: resources and $events taken from that folder's bundles."""
    known: dict[str, dict[str, Any]] = {}
    history: dict[str, Any] | None = None
    for path in folder.glob("Bundle-*.json"):
        bundle = json.loads(path.read_text())
        for entry in bundle.get("entry", [])[1:]:
            resource = entry.get("resource")
            if isinstance(resource, dict) and "id" in resource:
                known[f"{resource['resourceType']}/{resource['id']}"] = resource
        status = bundle["entry"][0]["resource"]
        if status.get("type") == "query-event" and history is None:
            history = bundle

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/$events") and history is not None:
            return httpx.Response(200, json=history)
        found = known.get("/".join(path.rstrip("/").split("/")[-2:]))
        if found is None:
            return httpx.Response(404, json={"resourceType": "OperationOutcome", "issue": [{"code": "not-found"}]})
        return httpx.Response(200, json=found)

    return answer


def _kind(path: Path) -> tuple[str, bool]:
    status = json.loads(path.read_text())["entry"][0]["resource"]
    return status.get("type", ""), any("focus" in e for e in status.get("notificationEvent", []))


@pytest.fixture
def remote() -> Iterator[None]:
    if not NOTIFICATIONS.is_dir():
        pytest.skip("shared corpus not present beside the repository")
    with respx.mock(assert_all_called=False) as mock:
        for version in ("R4B", "R5"):
            folder = NOTIFICATIONS / f"{version.lower()}-core"
            mock.route(host="example.org", path__startswith=f"/FHIR/{version}/").mock(side_effect=_remote(folder))
        yield


async def test_every_corpus_notification_is_answered_200_and_event_notifications_with_a_focus_produce_events(
    remote: None, make_bridge: Any, tmp_path: Path
) -> None:
    servers = {
        "r4b": {"base_url": "http://example.org/FHIR/R4B", "version": "r4b"},
        "r5": {"base_url": "http://example.org/FHIR/R5", "version": "r5"},
    }
    silent: list[str] = []
    answered: list[tuple[str, int]] = []
    for path in _corpus_files():
        # A bridge of its own per file: a resource version seen once is (rightly) silent the second time.
        name = f"{path.parent.name}-{path.stem[7:15]}"
        sub = {
            "name": name,
            "server": path.parent.name[:3].rstrip("-"),
            "topic": TOPIC,
            "header_token": TOKEN,
            "server_id": "123",
        }
        bridge = await make_bridge(
            store={"path": str(tmp_path / f"{name}.db")}, fhir={"servers": servers, "subscriptions": [sub]}
        )
        kind, focused = _kind(path)
        if kind in ("heartbeat", "query-status"):
            # The bridge has committed every event the server counts: the status itself must add nothing.
            counted = int(json.loads(path.read_text())["entry"][0]["resource"].get("eventsSinceSubscriptionStart", 0))
            entry = JournalEntry(new_id(), name, "fhir", time.time(), b"", MessageStatus.UNMAPPED, "200")
            progress = SubscriptionProgress(name, last_event_number=counted)
            await bridge.runtime.store.commit_message(entry, [], dedup_window=0, progress=progress)
        response = await bridge.client.post(f"/fhir/{name}", content=path.read_bytes(), headers=AUTH)
        answered.append((name, response.status_code))
        events = await event_types(bridge)
        if kind in ("handshake", "heartbeat", "query-status"):
            assert events == [], f"{name} ({kind}) made events"
        elif focused and not events:
            silent.append(f"{name} ({kind})")
    assert len(answered) == len(_corpus_files()) > 0
    assert [a for a in answered if a[1] != 200] == []
    assert silent == []


# --- a local FHIR server -------------------------------------------------------------------------------------


@pytest.fixture
def fhir_server() -> Iterator[FakeFhirServer]:
    with FakeFhirServer(version="r4") as server:
        yield server


def encounter(ident: str, *, status: str = "in-progress", unit: str = "ICU", version: str = "1") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": ident,
        "meta": {"versionId": version, "lastUpdated": "2026-11-22T10:00:00Z"},
        "identifier": [{"type": {"coding": [{"code": "VN"}]}, "value": f"V-{ident}"}],
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "location": [{"location": {"display": unit}, "status": "active"}],
    }


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:hosp", "value": "MRN-1"}],
    "name": [{"family": "Testpatient", "given": ["Alpha"]}],
    "birthDate": "1970-01-01",
    "gender": "female",
}


def r4_notification(
    events: list[tuple[int, str | None]], *, kind: str = "event-notification", since: int | None = None
) -> dict[str, Any]:
    """An R4 Backport IG notification (Parameters status, id-only)."""
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": "Subscription/ehr-bridge-adt"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {
            "name": "events-since-subscription-start",
            "valueString": str(since or max((n for n, _ in events), default=0)),
        },
    ]
    for number, focus in events:
        part: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)}]
        if focus:
            part.append({"name": "focus", "valueReference": {"reference": focus}})
        parameters.append({"name": "notification-event", "part": part})
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:2c6d1b44-5b4e-4a0d-9a6e-1f2f4c1b1a01",
            "resource": {"resourceType": "Parameters", "parameter": parameters},
            "request": {"method": "GET", "url": "Subscription/ehr-bridge-adt/$status"},
            "response": {"status": "200"},
        }
    ]
    for _, focus in events:
        if focus:
            entries.append(
                {"fullUrl": focus, "request": {"method": "PUT", "url": focus}, "response": {"status": "200"}}
            )
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


def local_config(server: FakeFhirServer, **sub: Any) -> dict[str, Any]:
    return {
        "servers": {"local": {"base_url": server.base_url, "version": "r4"}},
        "subscriptions": [{"name": "adt", "server": "local", "topic": TOPIC, "header_token": TOKEN, **sub}],
    }


async def event_types(bridge: Any) -> list[str]:
    rows = await bridge.runtime.store.query("SELECT type FROM events ORDER BY seq")
    return [r[0] for r in rows]


async def test_id_only_notification_fetches_its_focus_from_the_configured_base(
    fhir_server: FakeFhirServer, make_bridge: Any
) -> None:
    fhir_server.put_resource(encounter("e1"))
    fhir_server.put_resource(PATIENT)
    bridge = await make_bridge(fhir=local_config(fhir_server))
    handshake = await bridge.client.post("/fhir/adt", json=r4_notification([], kind="handshake"), headers=AUTH)
    assert handshake.status_code == 200 and await event_types(bridge) == []
    response = await bridge.client.post("/fhir/adt", json=r4_notification([(1, "Encounter/e1")]), headers=AUTH)
    assert response.status_code == 200
    assert await event_types(bridge) == ["encounter.admitted"]
    assert "/fhir/Encounter/e1" in fhir_server.paths()
    state = await bridge.runtime.store.subscription_state("adt")
    assert (state.status, state.last_event_number) == ("active", 1)
    again = await bridge.client.post("/fhir/adt", json=r4_notification([(1, "Encounter/e1")]), headers=AUTH)
    assert again.status_code == 200 and await event_types(bridge) == ["encounter.admitted"]  # a resend posts nothing


async def test_a_document_is_posted_in_the_thread_of_the_visit_its_context_names(
    fhir_server: FakeFhirServer, make_bridge: Any
) -> None:
    fhir_server.put_resource(encounter("e1"))
    fhir_server.put_resource(PATIENT)
    fhir_server.put_resource(
        {
            "resourceType": "DocumentReference",
            "id": "doc1",
            "meta": {"versionId": "1", "lastUpdated": "2026-11-22T11:00:00Z"},
            "status": "current",
            "docStatus": "final",
            "type": {"text": "Discharge summary"},
            "subject": {"reference": "Patient/p1"},
            "context": {"encounter": [{"reference": "Encounter/e1"}]},
            "content": [{"attachment": {"contentType": "text/plain", "title": "letter.txt"}}],
        }
    )
    bridge = await make_bridge(fhir=local_config(fhir_server))
    notification = r4_notification([(1, "DocumentReference/doc1")])
    response = await bridge.client.post("/fhir/adt", json=notification, headers=AUTH)
    assert response.status_code == 200
    # The visit named in context.encounter is fetched: the document joins the admission's thread.
    assert "/fhir/Encounter/e1" in fhir_server.paths()
    rows = await bridge.runtime.store.query("SELECT type, thread_key FROM events ORDER BY seq")
    assert [tuple(r) for r in rows] == [("document.available", "enc:V-e1")]


async def test_a_gap_of_three_events_is_recovered_in_order_before_the_new_one(
    fhir_server: FakeFhirServer, make_bridge: Any
) -> None:
    for ident in ("e1", "e2", "e3", "e4", "e5"):
        fhir_server.put_resource(encounter(ident))
    fhir_server.put_resource(PATIENT)
    fhir_server.events["ehr-bridge-adt"] = [(n, f"Encounter/e{n}") for n in range(1, 6)]
    fhir_server.subscription_state["ehr-bridge-adt"] = SubscriptionState(events_since_start=5)
    bridge = await make_bridge(fhir=local_config(fhir_server))
    assert (
        await bridge.client.post("/fhir/adt", json=r4_notification([(1, "Encounter/e1")]), headers=AUTH)
    ).status_code == 200
    response = await bridge.client.post("/fhir/adt", json=r4_notification([(5, "Encounter/e5")]), headers=AUTH)
    assert response.status_code == 200
    rows = await bridge.runtime.store.query("SELECT body FROM events ORDER BY seq")
    visits = [json.loads(r[0])["encounter"]["visit_number"] for r in rows]
    assert visits == ["V-e1", "V-e2", "V-e3", "V-e4", "V-e5"]
    assert any("$events" in p for p in fhir_server.paths())
    assert (await bridge.runtime.store.subscription_state("adt")).last_event_number == 5


async def test_a_heartbeat_that_counts_more_events_recovers_them(fhir_server: FakeFhirServer, make_bridge: Any) -> None:
    fhir_server.put_resource(encounter("e1"))
    fhir_server.put_resource(PATIENT)
    fhir_server.events["ehr-bridge-adt"] = [(1, "Encounter/e1")]
    fhir_server.subscription_state["ehr-bridge-adt"] = SubscriptionState(events_since_start=1)
    bridge = await make_bridge(fhir=local_config(fhir_server))
    beat = await bridge.client.post("/fhir/adt", json=r4_notification([], kind="heartbeat", since=1), headers=AUTH)
    assert beat.status_code == 200
    assert await event_types(bridge) == ["encounter.admitted"]


@pytest.mark.parametrize(
    ("server_status", "expected"), [("active", "bridge.subscription.stale"), ("error", "bridge.subscription.error")]
)
async def test_a_silent_subscription_raises_stale_or_error_once(
    fhir_server: FakeFhirServer, make_bridge: Any, server_status: str, expected: str
) -> None:
    fhir_server.subscription_state["ehr-bridge-adt"] = SubscriptionState(status=server_status, events_since_start=0)
    bridge = await make_bridge(fhir=local_config(fhir_server, heartbeat_seconds=5))
    intake = bridge.runtime.fhir
    await intake.watch()
    assert await event_types(bridge) == []  # not yet silent for 2 x 5 s
    intake.clock = lambda: time.time() + 11
    await intake.watch()
    await intake.watch()  # reported once per silence
    assert await event_types(bridge) == [expected]
    assert any("$status" in p for p in fhir_server.paths())


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code", "says"),
    [
        ("/fhir/nowhere", AUTH, b"{}", 404, "not-found", "unknown subscription"),
        ("/fhir/adt", {"Content-Type": "application/fhir+json"}, b"{}", 401, "security", "bearer token"),
        ("/fhir/adt", {**AUTH, "Authorization": "Bearer wrong"}, b"{}", 401, "security", "bearer token"),
        ("/fhir/adt", {**AUTH, "Content-Type": "text/plain"}, b"{}", 415, "not-supported", "Content-Type"),
        ("/fhir/adt", AUTH, b"{" + b" " * 2_000_000 + b"}", 413, "too-long", "exceeds"),
        ("/fhir/adt", AUTH, b"{not json", 400, "structure", "not valid JSON"),
        (
            "/fhir/adt",
            AUTH,
            json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode(),
            400,
            "invalid",
            "Bundle.type",
        ),
        ("/fhir/adt", AUTH, json.dumps({"resourceType": "Patient"}).encode(), 400, "invalid", "Bundle"),
    ],
    ids=[
        "unknown-endpoint",
        "no-token",
        "bad-token",
        "wrong-type",
        "too-large",
        "broken-json",
        "wrong-bundle",
        "not-a-bundle",
    ],
)
async def test_bad_notifications_get_an_operation_outcome_that_says_why(
    fhir_server: FakeFhirServer,
    make_bridge: Any,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
    says: str,
) -> None:
    bridge = await make_bridge(fhir=local_config(fhir_server))
    response = await bridge.client.post(path, content=body, headers=headers)
    assert response.status_code == status
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code
    assert says in outcome["issue"][0]["diagnostics"]
    assert await event_types(bridge) == []


async def test_a_status_for_another_subscription_is_refused(fhir_server: FakeFhirServer, make_bridge: Any) -> None:
    bridge = await make_bridge(fhir=local_config(fhir_server))
    other = r4_notification([(1, "Encounter/e1")])
    other["entry"][0]["resource"]["parameter"][0]["valueReference"]["reference"] = "Subscription/someone-else"
    response = await bridge.client.post("/fhir/adt", json=other, headers=AUTH)
    assert response.status_code == 400
    assert "Subscription/someone-else" in response.json()["issue"][0]["diagnostics"]


async def test_a_focus_off_the_configured_base_is_never_fetched(fhir_server: FakeFhirServer, make_bridge: Any) -> None:
    bridge = await make_bridge(fhir=local_config(fhir_server))
    evil = r4_notification([(1, "http://169.254.169.254/latest/meta-data/Encounter/1")])
    response = await bridge.client.post("/fhir/adt", json=evil, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["issue"][0]["code"] == "security"
    assert fhir_server.paths() == []
    assert (await bridge.runtime.store.subscription_state("adt")).last_event_number == 0


async def test_unreachable_fhir_server_answers_503_and_commits_nothing(make_bridge: Any) -> None:
    unreachable = {"base_url": "http://127.0.0.1:9/fhir", "version": "r4"}
    config = {
        "servers": {"local": unreachable},
        "subscriptions": [{"name": "adt", "server": "local", "topic": TOPIC, "header_token": TOKEN}],
    }
    bridge = await make_bridge(fhir=config)
    response = await bridge.client.post("/fhir/adt", json=r4_notification([(1, "Encounter/e1")]), headers=AUTH)
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert (await bridge.runtime.store.subscription_state("adt")).last_event_number == 0


# --- subscriptions ensure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["r4", "r4b", "r5"])
def test_subscriptions_ensure_writes_a_valid_subscription_in_the_servers_form(
    fhir_server: FakeFhirServer, tmp_path: Path, version: str
) -> None:
    import yaml
    from typer.testing import CliRunner

    from bridge.cli import app
    from bridge.fhir.subscriptions import validate_subscription

    config = {
        "store": {"path": str(tmp_path / "b.db")},
        "fhir": {
            "servers": {"local": {"base_url": fhir_server.base_url, "version": version}},
            "subscriptions": [
                {
                    "name": "adt",
                    "server": "local",
                    "topic": TOPIC,
                    "filters": ["Encounter?location=Location/icu"],
                    "header_token": TOKEN,
                    "endpoint": "https://bridge.example.org/fhir/adt",
                    "payload": "id-only",
                    "heartbeat_seconds": 120,
                }
            ],
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["subscriptions", "ensure", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "Subscription/ehr-bridge-adt" in result.output
    (saved,) = [
        b for b in fhir_server.updates if (b.get("resourceType"), b.get("id")) == ("Subscription", "ehr-bridge-adt")
    ]
    validate_subscription(saved, version)  # type: ignore[arg-type]
    text = json.dumps(saved)
    assert "https://bridge.example.org/fhir/adt" in text and TOKEN in text and "id-only" in text
    assert TOKEN not in result.output


# --- R4 classic (query-based) rest-hook ---------------------------------------------------------------------


def classic_config(server: FakeFhirServer) -> dict[str, Any]:
    return {
        "servers": {"local": {"base_url": server.base_url, "version": "r4"}},
        "subscriptions": [
            {"name": "classic", "server": "local", "criteria": "Encounter?status=in-progress", "header_token": TOKEN}
        ],
    }


async def test_r4_classic_empty_post_searches_from_the_watermark(fhir_server: FakeFhirServer, make_bridge: Any) -> None:
    first = encounter("c1")
    first["meta"]["lastUpdated"] = "2026-11-22T10:00:00Z"
    fhir_server.put_resource(first)
    fhir_server.put_resource(PATIENT)
    bridge = await make_bridge(fhir=classic_config(fhir_server))
    ping = await bridge.client.post("/fhir/classic", content=b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ping.status_code == 200
    assert await event_types(bridge) == ["encounter.admitted"]
    second = encounter("c2")
    second["meta"]["lastUpdated"] = "2026-11-22T11:00:00Z"
    fhir_server.put_resource(second)
    again = await bridge.client.post("/fhir/classic", content=b"", headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.status_code == 200
    assert await event_types(bridge) == ["encounter.admitted", "encounter.admitted"]
    searches = [r.query for r in fhir_server.requests if r.path == "/fhir/Encounter"]
    assert "gt2026-11-22T10:00:00Z" in str(searches[-1])  # the second search starts at the watermark
    assert (await bridge.runtime.store.subscription_state("classic")).watermark == "2026-11-22T11:00:00Z"


async def test_r4_classic_put_carries_the_resource_and_a_resent_version_posts_nothing(
    fhir_server: FakeFhirServer, make_bridge: Any
) -> None:
    fhir_server.put_resource(PATIENT)
    bridge = await make_bridge(fhir=classic_config(fhir_server))
    body = json.dumps(encounter("p1-visit")).encode()
    for _ in range(2):
        response = await bridge.client.put("/fhir/classic/Encounter/p1-visit", content=body, headers=AUTH)
        assert response.status_code == 200
    assert await event_types(bridge) == ["encounter.admitted"]
    mismatch = await bridge.client.put("/fhir/classic/Encounter/other", content=body, headers=AUTH)
    assert mismatch.status_code == 400
    assert "does not match" in mismatch.json()["issue"][0]["diagnostics"]


def test_subscriptions_status_shows_the_server_and_the_bridge_view(fhir_server: FakeFhirServer, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from bridge.cli import app

    fhir_server.subscription_state["ehr-bridge-adt"] = SubscriptionState(status="active", events_since_start=4)
    config = {"store": {"path": str(tmp_path / "b.db")}, "fhir": local_config(fhir_server)}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["subscriptions", "status", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "adt: server active events=4 | bridge requested events=0 last seen never" in result.output
