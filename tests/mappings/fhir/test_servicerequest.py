"""Golden tests of mappings/fhir/servicerequest.yaml: synthetic R4 and R5 ServiceRequests → order events.

R5 makes code a CodeableReference (code.concept); the statuses are the same.
"""

from __future__ import annotations

from typing import Any

import pytest

Resource = dict[str, Any]

VERSIONS = ["r4", "r5"]


def order(
    status: str = "active",
    intent: str = "order",
    *,
    version: str = "r4",
    version_id: str = "1",
    code: str = "58410-2",
    **extra: Any,
) -> Resource:
    concept = {"coding": [{"system": "http://loinc.org", "code": code, "display": "CBC panel"}], "text": "Blood count"}
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T09:30:00Z"},
        "status": status,
        "intent": intent,
        "priority": "routine",
        "code": {"concept": concept} if version == "r5" else concept,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "authoredOn": "2024-01-15T09:25:00Z",
        **extra,
    }


@pytest.fixture
def base(context_patient: dict[str, Any], context_visit: dict[str, Any]) -> dict[str, Any]:
    """A blood count placed for Patient/p1 in visit V555, as its fields read."""
    return {
        "type": "order.placed",
        "severity": "info",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "order",
            "key": "ServiceRequest/sr1",
            "code": "58410-2",
            "text": "Blood count",
            "status": "IP",
            "start": None,
            "end": None,
            "detail": None,
        },
        "patient": context_patient,
        "encounter": context_visit,
        "thread_key": "enc:V555",
        # When this version was recorded (ORC-9), not when the order was signed.
        "occurred_at": "2024-01-15T09:30:00+00:00",
        "dedup_key": "order.placed:ServiceRequest/sr1/_history/1",
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "before",
    [None, ("draft", "order"), ("active", "plan"), ("active", "proposal")],
)
def test_an_order_that_becomes_active_is_placed(
    version: str,
    before: tuple[str, str] | None,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    previous = order(*before, version=version) if before else None
    event = map_one(order(version=version, version_id="2"), previous=previous, context=fhir_context(version))
    assert fields(event) == expect(base, dedup_key="order.placed:ServiceRequest/sr1/_history/2")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "status"),
    [
        ({}, {"code": "24323-8"}, "IP"),
        ({}, {"priority": "stat"}, "IP"),
        ({}, {"occurrenceDateTime": "2024-01-16T08:00:00Z"}, "IP"),
        # Put on hold (ORC-1 SC to HD), and resumed.
        ({}, {"status": "on-hold"}, "HD"),
        ({"status": "on-hold"}, {}, "IP"),
    ],
)
def test_a_change_of_a_placed_order_edits_its_post(
    version: str,
    before: dict[str, Any],
    after: dict[str, Any],
    status: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        order(version=version, version_id="2", **after),
        previous=order(version=version, **before),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.changed",
        lifecycle="correct",
        links={"corrects": "ServiceRequest/sr1"},
        subject={"code": after.get("code", "58410-2"), "status": status},
        dedup_key="order.changed:ServiceRequest/sr1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    # Revoked: terminated before completion, so discontinued (ORC-5 DC); entered in error: never valid.
    ("before", "status", "code"),
    [("active", "revoked", "DC"), ("on-hold", "entered-in-error", "ER")],
)
def test_a_revoked_order_strikes_its_post(
    version: str,
    before: str,
    status: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        order(status, version=version, version_id="2"),
        previous=order(before, version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.cancelled",
        severity="notice",
        lifecycle="cancel",
        links={"cancels": "ServiceRequest/sr1"},
        subject={"status": code},
        dedup_key="order.cancelled:ServiceRequest/sr1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_completed_order_is_a_reply_to_its_post(
    version: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(
        order("completed", version=version, version_id="2"),
        previous=order(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.completed",
        lifecycle="update",
        subject={"status": "CM"},
        dedup_key="order.completed:ServiceRequest/sr1/_history/2",
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # Proposals, plans and drafts are not orders yet.
        (None, order("active", "plan"), None),
        (None, order("active", "proposal"), None),
        (None, order("draft"), None),
        # A revoked draft never posted; a second revocation has nothing left to strike.
        (order("draft"), order("revoked", version_id="2"), None),
        (order("revoked"), order("entered-in-error", version_id="2"), None),
        (order("completed"), order("completed", version_id="2", note=[{"text": "seen"}]), None),
        # A new note, identifier or supporting information is no change of the order.
        (order(), order(version_id="2", note=[{"text": "fasting"}], identifier=[{"value": "P-1"}]), None),
        # First seen revoked or completed: that is the news.
        (None, order("revoked"), "order.cancelled"),
        (None, order("completed"), "order.completed"),
    ],
)
def test_transitions(before: Resource | None, after: Resource, expected: str | None, map_fhir: Any) -> None:
    assert [e.type.value for e in map_fhir(after, previous=before)] == ([expected] if expected else [])
