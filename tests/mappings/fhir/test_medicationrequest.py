"""Golden tests of mappings/fhir/medicationrequest.yaml: synthetic R4 and R5 MedicationRequests → events.

R4 names the medication in medicationCodeableConcept / medicationReference, R5 in
medication (a CodeableReference: medication.concept / medication.reference); R5 adds the
status "ended". Every event's subject is the medication (kind medication).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

Resource = dict[str, Any]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
VERSIONS = ["r4", "r5"]
AMLODIPINE = {"coding": [{"system": RXNORM, "code": "197361", "display": "Amlodipine 5 MG Oral Tablet"}]}


def prescription(
    status: str = "active",
    intent: str = "order",
    *,
    version: str = "r4",
    version_id: str = "1",
    drug: dict[str, Any] = AMLODIPINE,
    dosage: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Resource:
    resource: Resource = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-16T08:15:00Z"},
        "status": status,
        "intent": intent,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "authoredOn": "2024-01-16T08:10:00Z",
        "dosageInstruction": dosage
        if dosage is not None
        else [
            {
                "text": "5 mg orally once daily",
                "route": {"coding": [{"display": "Oral"}]},
                "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}],
            }
        ],
        **extra,
    }
    if version == "r5":
        resource["medication"] = {"concept": copy.deepcopy(drug)}
    else:
        resource["medicationCodeableConcept"] = copy.deepcopy(drug)
    return resource


@pytest.fixture
def base(context_patient: dict[str, Any], context_visit: dict[str, Any]) -> dict[str, Any]:
    """Amlodipine ordered for Patient/p1 in visit V555, as its fields read."""
    return {
        "type": "medication.ordered",
        "severity": "info",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "medication",
            "key": "MedicationRequest/mr1",
            "code": "197361",
            "text": "Amlodipine 5 MG Oral Tablet",
            "status": "IP",
            "start": None,
            "end": None,
            "detail": "5 mg orally once daily",
        },
        "patient": context_patient,
        "encounter": context_visit,
        "thread_key": "enc:V555",
        "occurred_at": "2024-01-16T08:15:00+00:00",
        "dedup_key": "medication.ordered:MedicationRequest/mr1/_history/1",
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", [None, ("draft", "order"), ("active", "plan"), ("active", "proposal")])
def test_an_order_that_becomes_active_is_a_medication_ordered(
    version: str,
    before: tuple[str, str] | None,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    previous = prescription(*before, version=version) if before else None
    event = map_one(prescription(version=version, version_id="2"), previous=previous, context=fhir_context(version))
    assert fields(event) == expect(base, dedup_key="medication.ordered:MedicationRequest/mr1/_history/2")


@pytest.mark.parametrize(
    ("dosage", "detail"),
    [
        # Every instruction as written.
        ([{"text": "5 mg in the morning"}, {"text": "2.5 mg at night"}], "5 mg in the morning; 2.5 mg at night"),
        # Without text: dose and route, as RXE-3/5 and RXR-1.
        (
            [{"route": {"text": "Oral"}, "doseAndRate": [{"doseQuantity": {"value": 2.5, "unit": "mg"}}]}],
            "2.5 mg Oral",
        ),
        ([{"doseAndRate": [{"doseQuantity": {"value": 5, "code": "mg"}}]}], "5 mg"),
        ([{"route": {"coding": [{"display": "Intravenous"}]}}], "Intravenous"),
        ([], None),
    ],
)
def test_the_detail_is_the_dosage(dosage: list[dict[str, Any]], detail: str | None, map_one: Any) -> None:
    event = map_one(prescription(dosage=dosage))
    assert event.subject is not None and event.subject.detail == detail


@pytest.mark.parametrize("version", VERSIONS)
def test_a_referenced_medication_is_read_when_at_hand(version: str, map_one: Any) -> None:
    resource = prescription(version=version)
    del resource["medication" if version == "r5" else "medicationCodeableConcept"]
    reference = {"reference": "#med1", "display": "Amlodipine tablet"}
    if version == "r5":
        resource["medication"] = {"reference": reference}
    else:
        resource["medicationReference"] = reference
    resource["contained"] = [{"resourceType": "Medication", "id": "med1", "code": {**AMLODIPINE, "text": "Amlodipine"}}]
    event = map_one(resource)
    assert event.subject is not None and (event.subject.code, event.subject.text) == ("197361", "Amlodipine")
    del resource["contained"]
    event = map_one(resource)
    assert event.subject is not None and (event.subject.code, event.subject.text) == (None, "Amlodipine tablet")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "subject"),
    [
        ({}, {"dosage": [{"text": "10 mg orally once daily"}]}, {"detail": "10 mg orally once daily"}),
        (
            {},
            {"drug": {"coding": [{"system": RXNORM, "code": "308135", "display": "Amlodipine 10 MG Oral Tablet"}]}},
            {"code": "308135", "text": "Amlodipine 10 MG Oral Tablet"},
        ),
        # Put on hold and resumed.
        ({}, {"status": "on-hold"}, {"status": "HD"}),
        ({"status": "on-hold"}, {}, {}),
    ],
)
def test_a_change_of_an_ordered_medication_edits_its_post(
    version: str,
    before: dict[str, Any],
    after: dict[str, Any],
    subject: dict[str, Any],
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        prescription(version=version, version_id="2", **after),
        previous=prescription(version=version, **before),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.changed",
        lifecycle="correct",
        links={"corrects": "MedicationRequest/mr1"},
        subject=subject,
        dedup_key="order.changed:MedicationRequest/mr1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("status", "code"), [("cancelled", "CA"), ("stopped", "DC"), ("entered-in-error", "ER")])
def test_a_cancelled_or_stopped_order_strikes_its_post(
    version: str,
    status: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        prescription(status, version=version, version_id="2"),
        previous=prescription(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.cancelled",
        severity="notice",
        lifecycle="cancel",
        links={"cancels": "MedicationRequest/mr1"},
        subject={"status": code},
        dedup_key="order.cancelled:MedicationRequest/mr1/_history/2",
    )


@pytest.mark.parametrize(
    ("version", "status", "code"), [("r4", "completed", "CM"), ("r5", "completed", "CM"), ("r5", "ended", "ended")]
)
def test_a_completed_order_is_a_reply_to_its_post(
    version: str,
    status: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        prescription(status, version=version, version_id="2"),
        previous=prescription(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="order.completed",
        lifecycle="update",
        subject={"status": code},
        dedup_key="order.completed:MedicationRequest/mr1/_history/2",
    )


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Proposals, plans and drafts are no orders yet.
        (None, prescription("active", "proposal")),
        (None, prescription("active", "plan")),
        (None, prescription("draft")),
        # A draft never posted; nothing to strike twice; nothing after completion.
        (prescription("draft"), prescription("cancelled", version_id="2")),
        (prescription("cancelled"), prescription("stopped", version_id="2")),
        (prescription("completed"), prescription("completed", version_id="2", note=[{"text": "done"}])),
        # A note, an identifier or the dispense details are no change of the order.
        (
            prescription(),
            prescription(
                version_id="2",
                note=[{"text": "with food"}],
                identifier=[{"value": "RX-1"}],
                dispenseRequest={"numberOfRepeatsAllowed": 2},
            ),
        ),
        (prescription("active", "proposal"), prescription("cancelled", "proposal", version_id="2")),
    ],
)
def test_versions_that_post_nothing(before: Resource | None, after: Resource, map_fhir: Any) -> None:
    assert map_fhir(after, previous=before) == []
