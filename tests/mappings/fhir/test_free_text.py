"""Canary: free text in FHIR resources never reaches a channel at PHI level none.

Free text (an appointment's description, comment, notes and patient instructions; an order's
note and patient instruction; a prescription's note; a document's description) may name
anybody. The mappings put it in ``subject.detail`` at most, which compose hides at ``none``;
``subject.text`` is the coded name only. Each resource below carries a canary name and MRN in
every such field, through the versions that make each of its event types; everything a
``none`` channel gets (title, summary, facts, the redacted event) must hold none of it, in
every bundled locale. Every name and number is invented.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from bridge.channels import PhiLevel
from bridge.compose import Templates, compose, redact
from bridge.events import ClinicalEvent

Resource = dict[str, Any]

NAME, MRN = "Zzfreetextname", "MRN-FREE-77777"
TEXT = f"call {NAME} (MRN {MRN}) before"
CANARIES = (NAME, MRN, "77777", TEXT)
VERSIONS = ["r4", "r5"]
LOCALES = ["en", "de"]


def versioned(resource: Resource, version_id: str, **changes: Any) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"] = {"versionId": version_id, "lastUpdated": f"2024-01-2{version_id}T10:00:00Z"}
    new.update(changes)
    return new


def appointment(version: str) -> Resource:
    concept = {"coding": [{"code": "cardio", "display": "Cardiology"}]}
    resource: Resource = {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-20T10:00:00Z"},
        "status": "booked",
        "description": TEXT,
        "start": "2024-02-01T09:00:00Z",
        "end": "2024-02-01T09:30:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Location/clinic", "display": "Cardiology clinic"}, "status": "accepted"},
        ],
    }
    if version == "r5":
        resource |= {
            "subject": {"reference": "Patient/p1"},
            "serviceType": [{"concept": concept}],
            "note": [{"text": TEXT}],
            "patientInstruction": [{"concept": {"text": TEXT}}],
        }
    else:
        resource |= {"serviceType": [concept], "comment": TEXT, "patientInstruction": TEXT}
    return resource


def service_request(version: str) -> Resource:
    concept = {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}]}
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-20T10:00:00Z"},
        "status": "active",
        "intent": "order",
        "code": {"concept": concept} if version == "r5" else concept,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "note": [{"text": TEXT}],
        "patientInstruction": [{"instructionMarkdown": TEXT}] if version == "r5" else TEXT,
    }


def medication_request(version: str) -> Resource:
    drug = {"coding": [{"code": "17767", "display": "Amlodipine 5 mg tablet"}]}
    resource: Resource = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-20T10:00:00Z"},
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "note": [{"text": TEXT}],
        "dosageInstruction": [{"text": TEXT}],
    }
    if version == "r5":
        resource["medication"] = {"concept": drug}
    else:
        resource["medicationCodeableConcept"] = drug
    return resource


def document_reference(version: str) -> Resource:
    visit = {"reference": "Encounter/e1"}
    return {
        "resourceType": "DocumentReference",
        "id": "doc1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-20T10:00:00Z"},
        "status": "current",
        "docStatus": "preliminary",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
        "subject": {"reference": "Patient/p1"},
        "description": TEXT,
        "context": [visit] if version == "r5" else {"encounter": [visit]},
        "content": [{"attachment": {"contentType": "text/plain", "title": TEXT}}],
    }


def histories(version: str) -> list[tuple[Resource | None, Resource]]:
    """(previous, current) pairs that make each event type of the four resources."""
    appt, order = appointment(version), service_request(version)
    drug, doc = medication_request(version), document_reference(version)
    moved = versioned(appt, "2", start="2024-02-02T09:00:00Z", end="2024-02-02T09:30:00Z")
    return [
        (None, appt),  # booked
        (appt, moved),  # rescheduled
        (appt, versioned(appt, "2", participant=appt["participant"][:1])),  # modified
        (appt, versioned(appt, "2", status="cancelled")),  # cancelled
        (appt, versioned(appt, "2", status="noshow")),  # no-show
        (None, order),  # placed
        (order, versioned(order, "2", priority="stat")),  # changed
        (order, versioned(order, "2", status="revoked")),  # discontinued
        (order, versioned(order, "2", status="completed")),  # completed
        (None, drug),  # ordered
        (drug, versioned(drug, "2", status="stopped")),  # discontinued
        (None, doc),  # available, not authenticated yet
        (doc, versioned(doc, "2", docStatus="final")),  # status changed
        (doc, versioned(doc, "2", status="entered-in-error")),  # withdrawn
    ]


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load()


def mapped(map_fhir: Any, fhir_context: Any, version: str) -> list[ClinicalEvent]:
    events: list[ClinicalEvent] = []
    for previous, current in histories(version):
        made = map_fhir(current, previous=previous, context=fhir_context(version))
        assert len(made) == 1, (current["resourceType"], current.get("status"))
        events.append(made[0])
    return events


@pytest.mark.parametrize("version", VERSIONS)
def test_free_text_never_reaches_a_channel_at_phi_none(
    version: str, map_fhir: Any, fhir_context: Any, templates: Templates
) -> None:
    events = mapped(map_fhir, fhir_context, version)
    # Every event type of the four resources is covered.
    assert len({e.type for e in events}) == 12, sorted(e.type.value for e in events)
    for event in events:
        assert event.subject is not None
        # The subject's name is coded text only, at every level.
        assert not any(c in (event.subject.text or "") for c in CANARIES), event.type.value
        for locale in LOCALES:
            title, summary, facts = compose(event, PhiLevel.NONE, templates, locale=locale)
            shown = "\n".join([title, summary, *(f"{k}: {v}" for k, v in facts)])
            shown += "\n" + redact(event, PhiLevel.NONE).model_dump_json()
            for canary in CANARIES:
                assert canary not in shown, (event.type.value, locale, canary)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_canaries_do_reach_the_detail_where_it_is_mapped(
    version: str, map_fhir: Any, fhir_context: Any, templates: Templates
) -> None:
    # The test above means something only if the free text is in the events: appointments,
    # prescriptions and documents carry it as detail (dosage text, description), shown at full.
    details = {e.type.value: e.subject.detail for e in mapped(map_fhir, fhir_context, version) if e.subject}
    assert details["appointment.booked"] == TEXT
    assert details["medication.ordered"] == TEXT
    assert details["document.available"] == TEXT
    # An order's note and patient instruction are mapped nowhere.
    assert details["order.placed"] is None
    event = map_fhir(appointment(version), context=fhir_context(version))[0]
    assert TEXT in str(compose(event, PhiLevel.FULL, templates)[2])
