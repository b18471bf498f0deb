"""Golden tests of mappings/fhir/documentreference.yaml: synthetic R4 and R5 DocumentReferences → document events.

R4 names the visit in context.encounter and codes relatesTo.code as a code; R5 names it
in context (a list of references) and codes relatesTo.code as a CodeableConcept, and has
more docStatus values (corrected, appended, cancelled, ...).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

Resource = dict[str, Any]

RELATION = "http://hl7.org/fhir/document-relationship-type"
VERSIONS = ["r4", "r5"]
#: The document's content, base64: it must never reach an event.
CONTENT = "VGVzdHBhdGllbnQgQWxwaGEgd2FzIGRpc2NoYXJnZWQgaW4gZ29vZCBoZWFsdGgu"


def document(
    status: str = "current",
    doc_status: str | None = "final",
    *,
    version: str = "r4",
    doc_id: str = "doc1",
    version_id: str = "1",
    relates: list[tuple[str, dict[str, Any]]] | None = None,
    description: str | None = "Discharge letter, cardiology",
) -> Resource:
    r5 = version == "r5"
    resource: Resource = {
        "resourceType": "DocumentReference",
        "id": doc_id,
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-20T16:00:00Z"},
        "status": status,
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
        "category": [{"text": "Letters"}],
        "subject": {"reference": "Patient/p1"},
        "date": "2024-01-20T15:45:00Z",
        "content": [{"attachment": {"contentType": "text/plain", "title": "discharge-letter.txt", "data": CONTENT}}],
        "context": [{"reference": "Encounter/e1"}] if r5 else {"encounter": [{"reference": "Encounter/e1"}]},
    }
    if doc_status is not None:
        resource["docStatus"] = doc_status
    if description is not None:
        resource["description"] = description
    if relates:
        resource["relatesTo"] = [
            {"code": {"coding": [{"system": RELATION, "code": code}]} if r5 else code, "target": target}
            for code, target in relates
        ]
    return resource


@pytest.fixture
def base(context_patient: dict[str, Any], context_visit: dict[str, Any]) -> dict[str, Any]:
    """Patient/p1's discharge letter of visit V555 available, as its fields read."""
    return {
        "type": "document.available",
        "severity": "notice",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "document",
            "key": "DocumentReference/doc1",
            "code": "18842-5",
            "text": "Discharge summary",
            "status": "final",
            "start": None,
            "end": None,
            "detail": "Discharge letter, cardiology",
        },
        "patient": context_patient,
        "encounter": context_visit,
        "thread_key": "enc:V555",
        "occurred_at": "2024-01-20T16:00:00+00:00",
        "dedup_key": "document.available:DocumentReference/doc1/_history/1",
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc_status", ["final", "preliminary"])
def test_a_current_document_is_available(
    version: str, doc_status: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(document(doc_status=doc_status, version=version), context=fhir_context(version))
    assert fields(event) == expect(base, subject={"status": doc_status})
    assert CONTENT not in json.dumps(event.model_dump(mode="json"))


@pytest.mark.parametrize("version", VERSIONS)
def test_a_status_change_edits_the_available_post(
    version: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(
        document(version=version, version_id="2"),
        previous=document(doc_status="preliminary", version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        lifecycle="correct",
        links={"corrects": "DocumentReference/doc1"},
        dedup_key="document.available:DocumentReference/doc1/_history/2",
    )


@pytest.mark.parametrize(
    ("version", "doc_status"), [("r4", "amended"), ("r5", "amended"), ("r5", "corrected"), ("r5", "appended")]
)
def test_a_document_amended_in_place_edits_its_own_post(
    version: str, doc_status: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(
        document(doc_status=doc_status, version=version, version_id="2"),
        previous=document(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="document.amended",
        lifecycle="correct",
        links={"corrects": "DocumentReference/doc1"},
        subject={"status": doc_status},
        dedup_key="document.amended:DocumentReference/doc1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("relation", ["replaces", "appends", "transforms"])
@pytest.mark.parametrize(
    "target",
    [
        {"reference": "DocumentReference/doc1"},
        {"reference": "https://fhir.test/r4/DocumentReference/doc1/_history/3", "display": "first letter"},
    ],
)
def test_a_new_document_amending_another_edits_the_others_post(
    version: str,
    relation: str,
    target: dict[str, Any],
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    addendum = document(version=version, doc_id="doc2", relates=[(relation, target)], description="Addendum")
    event = map_one(addendum, context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="document.amended",
        lifecycle="correct",
        links={"corrects": "DocumentReference/doc1"},
        subject={"key": "DocumentReference/doc2", "detail": "Addendum"},
        dedup_key="document.amended:DocumentReference/doc2/_history/1",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_an_amendment_naming_its_parent_by_identifier_only_edits_its_own_post(version: str, map_one: Any) -> None:
    target = {"identifier": {"system": "urn:test:documents", "value": "D-1"}}
    event = map_one(document(version=version, doc_id="doc2", relates=[("replaces", target)]))
    assert (event.type.value, event.links) == ("document.amended", {"corrects": "DocumentReference/doc2"})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("status", "doc_status"),
    [("entered-in-error", "final"), ("entered-in-error", None), ("current", "entered-in-error")],
)
def test_a_document_entered_in_error_is_struck(
    version: str,
    status: str,
    doc_status: str | None,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        document(status, doc_status, version=version, version_id="2"),
        previous=document(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == expect(
        base,
        type="document.cancelled",
        lifecycle="cancel",
        links={"cancels": "DocumentReference/doc1"},
        subject={"status": doc_status or status},
        dedup_key="document.cancelled:DocumentReference/doc1/_history/2",
    )


def test_r5_cancelled_document_is_struck(map_one: Any) -> None:
    event = map_one(document(doc_status="cancelled", version="r5", version_id="2"), previous=document(version="r5"))
    assert (event.type.value, event.links) == ("document.cancelled", {"cancels": "DocumentReference/doc1"})


def test_without_a_description_the_title_is_the_detail(map_one: Any) -> None:
    event = map_one(document(description=None))
    assert event.subject is not None and event.subject.detail == "discharge-letter.txt"
    assert CONTENT not in json.dumps(event.model_dump(mode="json"))


def _edited(resource: Resource, **changes: Any) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = "2"
    new.update(changes)
    return new


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Superseded: the replacement announces itself.
        ("current", "superseded"),
        (None, "superseded"),
        # Nothing twice; nothing for what is no news (a label, an author, a moved attachment).
        ("entered-in-error", "entered-in-error"),
        ("current", "current"),
    ],
)
def test_versions_that_post_nothing(version: str, before: str | None, after: str, map_fhir: Any) -> None:
    previous = document(before, version=version) if before else None
    current = document(after, version=version, version_id="2")
    if before == after:
        current = _edited(
            document(after, version=version),
            securityLabel=[{"coding": [{"code": "N"}]}],
            author=[{"reference": "Practitioner/d1"}],
            content=[{"attachment": {"url": "https://fhir.test/Binary/b2", "title": "discharge-letter.txt"}}],
        )
    assert map_fhir(current, previous=previous) == []


def test_a_signature_is_no_amendment(map_one: Any) -> None:
    event = map_one(document(doc_id="doc2", relates=[("signs", {"reference": "DocumentReference/doc1"})]))
    assert (event.type.value, event.lifecycle.value) == ("document.available", "new")


def test_without_the_visit_at_hand_the_encounter_reference_gives_the_thread(map_one: Any) -> None:
    assert map_one(document(version="r4")).thread_key == "fhir-enc:e1"
    assert map_one(document(version="r5")).thread_key == "fhir-enc:e1"
