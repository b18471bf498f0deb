"""Subscription notification parsing (R4 backport, R4B, R5), ``$status`` answers and focus validation.

Corpus tests read ``../shared/corpus/fhir`` (the HL7 example notifications) and skip when it is
absent; expectations are read from each file's own JSON, never from its name. The R4 backport
bundles are written here, following the Backport IG ``BackportNotificationR4.fsh`` examples,
because the corpus has none. Every patient value below is invented.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import FhirError
from bridge.fhir.notification import (
    Notification,
    NotificationType,
    parse_notification,
    parse_status_bundle,
    validate_resource,
)

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "fhir"
NOTIFICATIONS = CORPUS / "notifications"
STATUS_EXAMPLES = CORPUS / "subscription-setup"

#: Corpus folder → the shape its bundles are in.
FOLDER_SHAPES = {"r4b-core": "r4b", "r5-core": "r5"}

#: How many bundles of each notification type each corpus folder holds (read from the files):
#: keeps a parser that mislabels types, or a corpus that lost files, from passing unnoticed.
CORPUS_TYPE_COUNTS = {
    "r4b-core": {"handshake": 1, "heartbeat": 1, "event-notification": 5, "query-status": 1, "query-event": 1},
    "r5-core": {"handshake": 1, "heartbeat": 1, "event-notification": 6, "query-status": 1, "query-event": 1},
}

R4_STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
SUBSCRIPTION = "https://ehr.example.test/fhir/Subscription/sub-42"
TOPIC = "https://ehr.example.test/fhir/SubscriptionTopic/encounter-start"
#: Free text that must never appear in an error message (it is not shaped like a code).
PHI_SENTINEL = "Doe, Jane"


def corpus_bundles() -> list[Path]:
    if not NOTIFICATIONS.is_dir():
        return []
    return sorted(p for p in NOTIFICATIONS.rglob("*.json") if p.parent.name in FOLDER_SHAPES)


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def corpus_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


needs_corpus = pytest.mark.skipif(not NOTIFICATIONS.is_dir(), reason="shared FHIR corpus not checked out")


# --- synthetic R4 backport notifications (Backport IG, backport-subscription-status-r4) ---------


def r4_event(number: str, focus: str | None = None, context: tuple[str, ...] = ()) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": number},
        {"name": "timestamp", "valueInstant": "2024-03-01T08:00:00.000Z"},
    ]
    if focus is not None:
        parts.append({"name": "focus", "valueReference": {"reference": focus}})
    parts.extend({"name": "additional-context", "valueReference": {"reference": ref}} for ref in context)
    return {"name": "notification-event", "part": parts}


def r4_status(
    notification_type: str,
    *,
    status: str = "active",
    since: str = "3",
    events: tuple[dict[str, Any], ...] = (),
    errors: tuple[str, ...] = (),
) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": notification_type},
        {"name": "events-since-subscription-start", "valueString": since},
        *events,
    ]
    parameters.extend(
        {
            "name": "error",
            "valueCodeableConcept": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscription-error", "code": code}]
            },
        }
        for code in errors
    )
    return {
        "resourceType": "Parameters",
        "id": "status-1",
        "meta": {"profile": [R4_STATUS_PROFILE]},
        "parameter": parameters,
    }


def history_bundle(status: dict[str, Any], *entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "notification-1",
        "type": "history",
        "timestamp": "2024-03-01T08:00:01Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b5c3a8e-6f4e-4d59-9a52-7a3d8f1c2e01",
                "resource": status,
                "request": {"method": "GET", "url": "Subscription/sub-42/$status"},
                "response": {"status": "200"},
            },
            *entries,
        ],
    }


def r4_encounter(encounter_id: str = "enc-3") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": encounter_id,
        "meta": {"versionId": "2"},
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/pat-1"},
        "period": {"start": "2024-03-01T08:00:00Z"},
    }


def r5_encounter() -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": "enc-5",
        "status": "in-progress",
        "class": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}]}],
        "subject": {"reference": "Patient/pat-1"},
        "actualPeriod": {"start": "2024-03-01T08:00:00Z"},
    }


def full_entry(resource: dict[str, Any], base: str = "https://ehr.example.test/fhir") -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {
        "fullUrl": f"{base}/{url}",
        "resource": resource,
        "request": {"method": "PUT", "url": url},
        "response": {"status": "200"},
    }


def r4_notification(notification_type: NotificationType) -> dict[str, Any]:
    """One IG-shaped R4 backport notification per type; events carry full resources."""
    if notification_type is NotificationType.HANDSHAKE:
        return history_bundle(r4_status("handshake", status="requested", since="0"))
    if notification_type is NotificationType.EVENT:
        event = r4_event("3", "https://ehr.example.test/fhir/Encounter/enc-3", ("Patient/pat-1",))
        return history_bundle(r4_status("event-notification", events=(event,)), full_entry(r4_encounter()))
    if notification_type is NotificationType.QUERY_EVENT:
        events = (r4_event("2", "Encounter/enc-2"), r4_event("3", "Encounter/enc-3"))
        return history_bundle(
            r4_status("query-event", events=events),
            full_entry(r4_encounter("enc-2")),
            full_entry(r4_encounter("enc-3")),
        )
    return history_bundle(r4_status(notification_type.value))


#: type → (status, events since start, [(event number, focus)]) the synthetic R4 bundle carries.
R4_EXPECTED: dict[NotificationType, tuple[str, int, list[tuple[int, str]]]] = {
    NotificationType.HANDSHAKE: ("requested", 0, []),
    NotificationType.HEARTBEAT: ("active", 3, []),
    NotificationType.EVENT: ("active", 3, [(3, "https://ehr.example.test/fhir/Encounter/enc-3")]),
    NotificationType.QUERY_STATUS: ("active", 3, []),
    NotificationType.QUERY_EVENT: ("active", 3, [(2, "Encounter/enc-2"), (3, "Encounter/enc-3")]),
}


# --- corpus ----------------------------------------------------------------------------------


@needs_corpus
@pytest.mark.parametrize("path", corpus_bundles(), ids=corpus_id)
def test_corpus_notification_parses_to_what_its_json_says(path: Path) -> None:
    bundle = load(path)
    status = bundle["entry"][0]["resource"]

    notification = parse_notification(bundle)

    assert notification.shape == FOLDER_SHAPES[path.parent.name]
    assert notification.type == status["type"]
    assert notification.status == status.get("status")
    assert notification.subscription == status["subscription"]["reference"]
    assert notification.subscription_id == status["subscription"]["reference"].rsplit("/", 1)[-1]
    assert notification.topic == status.get("topic")
    assert notification.events_since_start == int(status["eventsSinceSubscriptionStart"])
    expected_events = [
        (
            int(e["eventNumber"]),
            e.get("focus", {}).get("reference"),
            [c["reference"] for c in e.get("additionalContext", [])],
        )
        for e in status.get("notificationEvent", [])
    ]
    assert [(e.number, e.focus, list(e.additional_context)) for e in notification.events] == expected_events


@needs_corpus
def test_corpus_holds_the_expected_notification_types_per_folder() -> None:
    counts: dict[str, Counter[str]] = {folder: Counter() for folder in FOLDER_SHAPES}
    for path in corpus_bundles():
        counts[path.parent.name][parse_notification(load(path)).type.value] += 1

    assert {folder: dict(c) for folder, c in counts.items()} == CORPUS_TYPE_COUNTS


@needs_corpus
@pytest.mark.parametrize("path", corpus_bundles(), ids=corpus_id)
def test_corpus_resources_are_keyed_by_full_url_and_type_id(path: Path) -> None:
    bundle = load(path)
    notification = parse_notification(bundle)

    for entry in bundle["entry"][1:]:
        resource = entry.get("resource")
        if resource is None:
            assert notification.resource_for(entry["fullUrl"]) is None
            continue
        assert notification.resources[entry["fullUrl"]] is resource
        assert notification.resources[f"{resource['resourceType']}/{resource['id']}"] is resource


@needs_corpus
def test_corpus_error_status_reports_its_error_codes() -> None:
    errored = [n for n in map(parse_notification, map(load, corpus_bundles())) if n.status == "error"]

    assert errored, "the R5 corpus has a notification for a subscription in error"
    assert all(n.errors == ("no-response",) for n in errored)


def corpus_focus_resources() -> list[tuple[str, str, dict[str, Any]]]:
    found: list[tuple[str, str, dict[str, Any]]] = []
    for path in corpus_bundles():
        notification = parse_notification(load(path))
        version = "r5" if notification.shape == "r5" else "r4b"
        references = [r for e in notification.events for r in (e.focus, *e.additional_context) if r]
        for reference in references:
            resource = notification.resource_for(reference)
            if resource is not None:
                found.append((f"{corpus_id(path)}:{reference}", version, resource))
    return found


@needs_corpus
def test_corpus_full_resource_bundles_include_focus_resources() -> None:
    assert {version for _, version, _ in corpus_focus_resources()} == {"r4b", "r5"}


@needs_corpus
@pytest.mark.parametrize(
    ("version", "resource"),
    [pytest.param(v, r, id=i) for i, v, r in corpus_focus_resources()],
)
def test_corpus_included_focus_resource_validates_with_its_version(version: str, resource: dict[str, Any]) -> None:
    validate_resource(resource, version)  # type: ignore[arg-type]


def corpus_bundles_of_type(*types: str) -> list[Path]:
    return [path for path in corpus_bundles() if load(path)["entry"][0]["resource"]["type"] in types]


@needs_corpus
@pytest.mark.parametrize("path", corpus_bundles_of_type("handshake", "heartbeat"), ids=corpus_id)
def test_corpus_handshake_and_heartbeat_have_no_events(path: Path) -> None:
    notification = parse_notification(load(path))

    assert notification.type in (NotificationType.HANDSHAKE, NotificationType.HEARTBEAT)
    assert notification.events == ()
    assert notification.resources == {}


# --- R4 backport -------------------------------------------------------------------------------


@pytest.mark.parametrize("notification_type", list(NotificationType))
def test_r4_backport_parameters_notification_parses_for_every_type(notification_type: NotificationType) -> None:
    status, since, events = R4_EXPECTED[notification_type]

    notification = parse_notification(r4_notification(notification_type))

    assert notification.shape == "r4-backport"
    assert notification.type is notification_type
    assert notification.subscription == SUBSCRIPTION
    assert notification.subscription_id == "sub-42"
    assert notification.topic == TOPIC
    assert notification.status == status
    assert notification.events_since_start == since
    assert [(e.number, e.focus) for e in notification.events] == events
    assert all(e.timestamp == "2024-03-01T08:00:00.000Z" for e in notification.events)
    assert notification.errors == ()


@pytest.mark.parametrize("notification_type", list(NotificationType))
def test_synthetic_r4_backport_bundle_is_valid_fhir_r4(notification_type: NotificationType) -> None:
    validate_resource(r4_notification(notification_type), "r4")


def test_r4_backport_event_carries_context_and_resolves_its_focus() -> None:
    notification = parse_notification(r4_notification(NotificationType.EVENT))

    (event,) = notification.events
    assert event.additional_context == ("Patient/pat-1",)
    focus = notification.resource_for(event.focus or "")
    assert focus is not None and focus["id"] == "enc-3"
    assert notification.resource_for("Patient/pat-1") is None


def test_r4_backport_errors_are_read_from_error_parameters() -> None:
    body = history_bundle(r4_status("heartbeat", status="error", errors=("no-response", "timeout")))

    notification = parse_notification(body)

    assert notification.status == "error"
    assert notification.errors == ("no-response", "timeout")


def test_r4_backport_parameters_without_profile_is_still_a_status() -> None:
    status = r4_status("heartbeat")
    del status["meta"]

    assert parse_notification(history_bundle(status)).type is NotificationType.HEARTBEAT


@pytest.mark.parametrize("notification_type", [NotificationType.HANDSHAKE, NotificationType.HEARTBEAT])
def test_r4_handshake_and_heartbeat_have_no_events(notification_type: NotificationType) -> None:
    notification = parse_notification(r4_notification(notification_type))

    assert notification.events == ()
    assert notification.resources == {}


# --- numbers and references --------------------------------------------------------------------


def r5_bundle(**status_fields: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": "event-notification",
        "subscription": {"reference": SUBSCRIPTION},
        "topic": TOPIC,
        **status_fields,
    }
    return {"resourceType": "Bundle", "type": "subscription-notification", "entry": [{"resource": status}]}


@pytest.mark.parametrize(("raw", "number"), [("7", 7), (7, 7), ("0", 0), (2**63 - 1, 2**63 - 1), ("0042", 42)])
def test_event_numbers_as_strings_or_integers_become_ints(raw: object, number: int) -> None:
    notification = parse_notification(
        r5_bundle(eventsSinceSubscriptionStart=raw, notificationEvent=[{"eventNumber": raw}])
    )

    assert notification.events_since_start == number
    assert notification.events[0].number == number


@pytest.mark.parametrize(
    ("raw", "issue_code"),
    [("-1", "invalid"), ("+7", "invalid"), (" 7", "invalid"), ("7.0", "invalid"), ("\u0667", "invalid"),
     (-1, "invalid"), (2**63, "invalid"), (7.5, "structure"), (True, "structure"), ([7], "structure")],
)  # fmt: skip
def test_event_number_that_is_no_counter_is_rejected(raw: object, issue_code: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse_notification(r5_bundle(notificationEvent=[{"eventNumber": raw}]))

    assert (caught.value.status, caught.value.issue_code) == (400, issue_code)
    assert str(caught.value).startswith("entry[0].resource.notificationEvent[0].eventNumber must be")


@pytest.mark.parametrize(
    ("reference", "logical_id"),
    [
        ("Subscription/123", "123"),
        ("https://ehr.example.test/fhir/Subscription/abc", "abc"),
        ("https://ehr.example.test/fhir/Subscription/abc/_history/2", "abc"),
        ("https://ehr.example.test/fhir/Subscription/abc/?_format=json", "abc"),
    ],
)
def test_subscription_id_is_the_logical_id_of_the_reference(reference: str, logical_id: str) -> None:
    notification = parse_notification(r5_bundle(subscription={"reference": reference}))

    assert notification.subscription == reference
    assert notification.subscription_id == logical_id


def test_focus_resolves_across_bases_by_type_and_id_but_not_to_other_ids() -> None:
    bundle = r5_bundle(notificationEvent=[{"eventNumber": "1", "focus": {"reference": "Encounter/enc-5"}}])
    bundle["entry"].append(full_entry(r5_encounter(), base="https://other.example.test/fhir"))

    notification = parse_notification(bundle)

    assert notification.resource_for("Encounter/enc-5") is bundle["entry"][1]["resource"]
    assert notification.resource_for("https://ehr.example.test/fhir/Encounter/enc-5/_history/4") is not None
    assert notification.resource_for("Encounter/enc-6") is None


def test_notification_repr_leaves_out_included_resources() -> None:
    notification = parse_notification(r4_notification(NotificationType.EVENT))

    assert "Patient/pat-1" in repr(notification)  # additional context is a reference, not content
    assert "in-progress" not in repr(notification)


# --- rejections ----------------------------------------------------------------------------------


def bundle_with_status(status: dict[str, Any], bundle_type: str = "history") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": bundle_type, "entry": [{"resource": status}]}


REJECTIONS: list[tuple[str, object, str, str]] = [
    ("list body", [], "structure", "the body must be a JSON object, got array"),
    ("string body", "{}", "structure", "the body must be a JSON object, got string"),
    ("null body", None, "structure", "the body must be a JSON object, got null"),
    ("not a bundle", {"resourceType": "Parameters"}, "invalid", "expected a Bundle, got resourceType 'Parameters'"),
    ("no resourceType", {"type": "history"}, "invalid", "expected a Bundle, got resourceType nothing"),
    (
        "searchset",
        {"resourceType": "Bundle", "type": "searchset", "entry": []},
        "invalid",
        "Bundle.type must be history or subscription-notification, got 'searchset'",
    ),
    (
        "no Bundle.type",
        {"resourceType": "Bundle", "entry": []},
        "invalid",
        "Bundle.type must be history or subscription-notification, got nothing",
    ),
    (
        "missing entry",
        {"resourceType": "Bundle", "type": "history"},
        "invalid",
        "Bundle has no entry; entry[0] must be the subscription status",
    ),
    (
        "empty entry",
        {"resourceType": "Bundle", "type": "subscription-notification", "entry": []},
        "invalid",
        "Bundle has no entry; entry[0] must be the subscription status",
    ),
    (
        "entry not an array",
        {"resourceType": "Bundle", "type": "history", "entry": {}},
        "structure",
        "Bundle.entry must be a JSON array, got object",
    ),
    (
        "entry[0] without resource",
        {"resourceType": "Bundle", "type": "history", "entry": [{"fullUrl": "urn:uuid:1"}]},
        "invalid",
        "entry[0] has no resource; it must be the subscription status",
    ),
    (
        "entry[0] a Patient",
        bundle_with_status({"resourceType": "Patient", "id": "pat-1"}),
        "invalid",
        "entry[0] is not a subscription status (resourceType 'Patient')",
    ),
    (
        "entry[0] Parameters of another kind",
        bundle_with_status({"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 1}]}),
        "invalid",
        "entry[0] is not a subscription status (Parameters without the subscription and type parameters)",
    ),
    (
        "Parameters in an R5 bundle",
        bundle_with_status(r4_status("heartbeat"), "subscription-notification"),
        "invalid",
        "entry[0] is a Parameters status, which only R4 history bundles carry; "
        "a subscription-notification Bundle needs a SubscriptionStatus",
    ),
    (
        "unknown notification type",
        r5_bundle(type="ping"),
        "invalid",
        "entry[0].resource.type 'ping' is not a notification type",
    ),
    ("missing notification type", r5_bundle(type=None), "invalid", "entry[0].resource.type is missing"),
    (
        "R4 type parameter missing",
        bundle_with_status(
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "subscription", "valueReference": {"reference": "S/1"}}],
            }
        ),
        "invalid",
        "entry[0].resource.parameter(type) is missing",
    ),
    (
        "R4 event number not a number",
        history_bundle(r4_status("event-notification", events=(r4_event("two"),))),
        "invalid",
        "entry[0].resource.parameter[5](notification-event).part[0](event-number).valueString "
        "must be a non-negative integer",
    ),
    (
        "subscription without reference",
        r5_bundle(subscription={"identifier": {"value": "sub-42"}}),
        "invalid",
        "entry[0].resource.subscription has no reference",
    ),
    (
        "subscription reference without id",
        r5_bundle(subscription={"reference": "/"}),
        "invalid",
        "the subscription reference has no logical id",
    ),
    (
        "focus not a Reference",
        r5_bundle(notificationEvent=[{"eventNumber": "1", "focus": "Encounter/1"}]),
        "structure",
        "entry[0].resource.notificationEvent[0].focus must be a JSON object, got string",
    ),
]


@pytest.mark.parametrize(("body", "issue_code", "message"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
def test_malformed_notification_is_rejected_with_400_naming_the_problem(
    body: object, issue_code: str, message: str
) -> None:
    with pytest.raises(FhirError) as caught:
        parse_notification(body)

    assert (caught.value.status, caught.value.issue_code, str(caught.value)) == (400, issue_code, message)


@pytest.mark.parametrize(
    "body",
    [
        {"resourceType": "Bundle", "type": PHI_SENTINEL, "entry": []},
        {"resourceType": PHI_SENTINEL},
        bundle_with_status({"resourceType": PHI_SENTINEL}),
        r5_bundle(type=PHI_SENTINEL),
        r5_bundle(notificationEvent=[{"eventNumber": PHI_SENTINEL}]),
        r5_bundle(eventsSinceSubscriptionStart=PHI_SENTINEL),
        history_bundle(r4_status("event-notification", events=(r4_event(PHI_SENTINEL),))),
    ],
)
def test_rejection_messages_never_quote_content(body: object) -> None:
    with pytest.raises(FhirError) as caught:
        parse_notification(body)

    assert PHI_SENTINEL not in str(caught.value)


# --- fuzzing: only FhirError escapes ---------------------------------------------------------------

REPLACEMENTS: tuple[object, ...] = (
    None, 0, -1, 1.5, True, "", "x", PHI_SENTINEL, "99999999999999999999999", "1" * 5000,
    [], {}, [None], {"reference": None}, {"resourceType": "SubscriptionStatus"}, "history",
    "subscription-notification", "Parameters", "SubscriptionStatus",
)  # fmt: skip


def slots(node: object) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree, so any value can be removed or swapped."""
    found: list[tuple[Any, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((node, key))
            found.extend(slots(value))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((node, index))
            found.extend(slots(value))
    return found


def mutate(document: dict[str, Any], rng: random.Random) -> object:
    mutated: Any = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        candidates = slots(mutated)
        if not candidates:
            return rng.choice(REPLACEMENTS)
        container, key = rng.choice(candidates)
        operation = rng.randrange(4)
        if operation == 0:
            del container[key]
        elif operation == 1:
            container[key] = rng.choice(REPLACEMENTS)
        elif operation == 2:
            container[key] = [container[key]]
        else:
            container[key] = copy.deepcopy(rng.choice(candidates)[0])
    return mutated


def fuzz_seeds() -> list[dict[str, Any]]:
    seeds = [r4_notification(t) for t in NotificationType]
    seeds.extend(load(path) for path in corpus_bundles())
    return seeds


def test_random_mutations_of_notifications_raise_only_fhir_errors() -> None:
    rng = random.Random(20240301)
    seeds = fuzz_seeds()
    outcomes: Counter[str] = Counter()

    for _ in range(600):
        body = mutate(rng.choice(seeds), rng)
        try:
            parsed = parse_notification(body)
        except FhirError as exc:
            assert (exc.status, exc.issue_code) in ((400, "structure"), (400, "invalid"))
            assert PHI_SENTINEL not in str(exc)
            outcomes["rejected"] += 1
        else:
            assert isinstance(parsed, Notification)
            outcomes["parsed"] += 1

    assert outcomes["rejected"] > 0 and outcomes["parsed"] > 0


def test_random_mutations_of_status_bundles_raise_only_fhir_errors() -> None:
    rng = random.Random(7)
    seed = searchset(r4_status("query-status"), r5_status_resource(), operation_outcome())

    for _ in range(300):
        try:
            parse_status_bundle(mutate(seed, rng))
        except FhirError as exc:
            assert exc.status == 400
            assert PHI_SENTINEL not in str(exc)


# --- $status -----------------------------------------------------------------------------------


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    entries = [
        {"resource": r, "search": {"mode": "outcome" if r["resourceType"] == "OperationOutcome" else "match"}}
        for r in resources
    ]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def r5_status_resource(since: object = 12) -> dict[str, Any]:
    return {
        "resourceType": "SubscriptionStatus",
        "status": "error",
        "type": "query-status",
        "eventsSinceSubscriptionStart": since,
        "subscription": {"reference": "Subscription/sub-7"},
        "error": [{"text": "endpoint unreachable"}],
    }


def operation_outcome() -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}


def test_status_bundle_yields_one_query_status_per_status_resource() -> None:
    r4 = r4_status("query-status", events=(r4_event("3", "Encounter/enc-3"),))

    parsed = parse_status_bundle(searchset(r4, operation_outcome(), r5_status_resource()))

    assert [(n.shape, n.subscription_id, n.status, n.events_since_start) for n in parsed] == [
        ("r4-backport", "sub-42", "active", 3),
        ("r5", "sub-7", "error", 12),
    ]
    assert all(n.type is NotificationType.QUERY_STATUS and n.events == () and n.resources == {} for n in parsed)
    assert parsed[1].errors == ("endpoint unreachable",)


@pytest.mark.parametrize(
    ("since", "version", "shape"),
    [("12", None, "r4b"), (12, None, "r5"), ("12", "r5", "r5"), (12, "r4b", "r4b"), ("12", "r4", "r4b")],
)
def test_status_bundle_shape_follows_the_configured_version_else_the_number_type(
    since: object, version: Any, shape: str
) -> None:
    (notification,) = parse_status_bundle(searchset(r5_status_resource(since)), version=version)

    assert notification.shape == shape
    assert notification.events_since_start == 12


@pytest.mark.skipif(not STATUS_EXAMPLES.is_dir(), reason="shared FHIR corpus not checked out")
@pytest.mark.parametrize("version", ["r4b", "r5"])
def test_corpus_status_example_reads_as_a_status_answer(version: Any) -> None:
    status = load(STATUS_EXAMPLES / version / "SubscriptionStatus-example.json")

    (notification,) = parse_status_bundle(searchset(status), version=version)

    assert notification.shape == version
    assert notification.subscription == status["subscription"]["reference"]
    assert notification.events_since_start == int(status["eventsSinceSubscriptionStart"])
    assert notification.events == ()


def test_empty_status_answer_is_an_empty_list() -> None:
    assert parse_status_bundle({"resourceType": "Bundle", "type": "searchset", "total": 0}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"resourceType": "Bundle", "type": "history", "entry": []},
            "Bundle.type must be searchset for a $status answer, got 'history'",
        ),
        (
            searchset({"resourceType": "Patient", "id": "pat-1"}),
            "entry[0] is not a subscription status (resourceType 'Patient')",
        ),
        (
            {"resourceType": "Bundle", "type": "searchset", "entry": [{"search": {"mode": "match"}}]},
            "entry[0] has no resource",
        ),
        ("[]", "the body must be a JSON object, got string"),
    ],
)
def test_malformed_status_answer_is_rejected_with_400(body: object, message: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse_status_bundle(body)

    assert (caught.value.status, str(caught.value)) == (400, message)


# --- validate_resource ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["r4", "r4b"])
def test_r4_shaped_encounter_validates_with_r4b_models(version: Any) -> None:
    validate_resource(r4_encounter(), version)


def test_r5_shaped_encounter_validates_under_r5() -> None:
    validate_resource(r5_encounter(), "r5")


@pytest.mark.parametrize(
    ("resource", "version", "message"),
    [
        (r4_encounter(), "r5", "Encounter is not valid FHIR R5 at class (list_type)"),
        (r5_encounter(), "r4b", "Encounter is not valid FHIR R4B at class (model_validation_format)"),
        (
            {**r4_encounter(), "nickname": PHI_SENTINEL},
            "r4",
            "Encounter is not valid FHIR R4 at nickname (extra_forbidden)",
        ),
        (
            {**r4_encounter(), "period": {"start": PHI_SENTINEL}},
            "r4b",
            "Encounter is not valid FHIR R4B at period.start (value_error)",
        ),
        (
            {**r4_encounter(), "identifier": [{"system": "urn:oid:1.2.3"}, {"value": 7}]},
            "r4b",
            "Encounter is not valid FHIR R4B at identifier[1].value (string_type)",
        ),
        (
            {**r4_encounter(), "identifier": [{"system": "urn:oid:1.2.3"}, {"value": "7", "period": []}]},
            "r4b",
            "Encounter is not valid FHIR R4B at identifier[1].period (model_validation_format)",
        ),
    ],
    ids=["r4-class-under-r5", "r5-class-under-r4b", "unknown-element", "bad-datetime", "nested-path", "nested-element"],
)
def test_invalid_resource_is_rejected_with_422_naming_type_and_path(
    resource: dict[str, Any], version: Any, message: str
) -> None:
    with pytest.raises(FhirError) as caught:
        validate_resource(resource, version)

    assert (caught.value.status, caught.value.issue_code, str(caught.value)) == (422, "invalid", message)
    assert PHI_SENTINEL not in str(caught.value) and "IMP" not in str(caught.value)


@pytest.mark.parametrize(
    ("resource", "version", "issue_code", "message"),
    [
        ({"resourceType": "Spaceship"}, "r5", "not-supported", "resourceType 'Spaceship' is not a FHIR R5 resource"),
        (
            {"resourceType": "Coding", "code": "x"},
            "r4b",
            "not-supported",
            "resourceType 'Coding' is not a FHIR R4B resource",
        ),
        ({"resourceType": "lowercase"}, "r4", "not-supported", "resourceType 'lowercase' is not a FHIR R4 resource"),
        (
            {"resourceType": PHI_SENTINEL},
            "r5",
            "not-supported",
            "resourceType a value that is not a code is not a FHIR R5 resource",
        ),
        ({"id": "x"}, "r5", "invalid", "resource has no resourceType"),
    ],
)
def test_resource_without_a_known_type_is_refused_with_422(
    resource: dict[str, Any], version: Any, issue_code: str, message: str
) -> None:
    with pytest.raises(FhirError) as caught:
        validate_resource(resource, version)

    assert (caught.value.status, caught.value.issue_code, str(caught.value)) == (422, issue_code, message)
