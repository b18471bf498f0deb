"""Golden tests of mappings/fhir/observation.yaml: synthetic Observations → result events, field by field.

The Observation elements mapped here have the same shape in R4 and R5; each case runs in
both all the same, with the visit (Encounter/e1) in the shape of its version.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

Resource = dict[str, Any]

V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
VERSIONS = ["r4", "r5"]


def observation(
    status: str = "final", flags: tuple[str, ...] = (), *, value: float = 4.2, version_id: str = "1"
) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T11:00:00Z"},
        "status": status,
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium [Moles/volume]"}],
            "text": "Potassium",
        },
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-01-15T10:30:00Z",
        "issued": "2024-01-15T10:55:00Z",
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.1}}],
    }
    if flags:
        resource["interpretation"] = [{"coding": [{"system": V3, "code": f} for f in flags]}]
    return resource


def later(resource: Resource, **changes: Any) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = str(int(new["meta"]["versionId"]) + 1)
    new.update(changes)
    return new


@pytest.fixture
def base(context_patient: dict[str, Any], context_visit: dict[str, Any]) -> dict[str, Any]:
    """A final, normal potassium of Patient/p1 in visit V555, as its fields read."""
    return {
        "type": "result.final",
        "severity": "notice",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "result",
            "key": "Observation/o1",
            "code": "2823-3",
            "text": "Potassium",
            "status": "F",
            "start": None,
            "end": None,
            "detail": None,
        },
        "patient": context_patient,
        "encounter": context_visit,
        "thread_key": "enc:V555",
        # issued: when the result was released (OBR-22), not when the specimen was taken.
        "occurred_at": "2024-01-15T10:55:00+00:00",
        "dedup_key": "result.final:Observation/o1/_history/1",
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("status", "flags", "type_", "severity", "code"),
    [
        ("final", (), "result.final", "notice", "F"),
        ("final", ("N",), "result.final", "notice", "F"),
        ("final", ("H",), "result.final", "warning", "F"),
        ("final", ("L",), "result.final", "warning", "F"),
        ("final", ("HH",), "result.critical", "critical", "F"),
        ("final", ("LL",), "result.critical", "critical", "F"),
        ("final", ("AA",), "result.critical", "critical", "F"),
        ("preliminary", (), "result.preliminary", "info", "P"),
        ("preliminary", ("H",), "result.preliminary", "warning", "P"),
        # Labs phone critical values before verification: critical, preliminary or not.
        ("preliminary", ("HH",), "result.critical", "critical", "P"),
        ("registered", (), "result.preliminary", "info", "I"),
    ],
)
def test_a_new_result_is_typed_by_status_and_interpretation(
    version: str,
    status: str,
    flags: tuple[str, ...],
    type_: str,
    severity: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(observation(status, flags), context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type=type_,
        severity=severity,
        subject={"status": code},
        dedup_key=f"{type_}:Observation/o1/_history/1",
    )
    assert event.subject is not None
    assert [o.model_dump() for o in event.subject.observations] == [
        {
            "code": "2823-3",
            "text": "Potassium",
            "value": "4.2",
            "units": "mmol/L",
            "reference_range": "3.5-5.1",
            "flags": flags,
            "status": code,
            "critical": severity == "critical",
        }
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "severity", "code"),
    [
        (observation("final"), observation("corrected", version_id="2"), "notice", "C"),
        (observation("final"), observation("amended", ("L",), version_id="2"), "warning", "C"),
        (observation("final", ("H",)), observation("corrected", ("HH",), version_id="2"), "critical", "C"),
        # A final result re-released with another value is a correction in all but name.
        (observation("final"), observation("final", value=5.9, version_id="2"), "notice", "F"),
        (observation("preliminary"), observation("corrected", version_id="2"), "notice", "C"),
    ],
)
def test_a_correction_edits_the_results_first_post(
    version: str,
    before: Resource,
    after: Resource,
    severity: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(after, previous=before, context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="result.corrected",
        severity=severity,
        lifecycle="correct",
        links={"corrects": "Observation/o1"},
        subject={"status": code},
        dedup_key="result.corrected:Observation/o1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("status", "code"), [("cancelled", "X"), ("entered-in-error", "W")])
def test_a_withdrawal_strikes_the_results_first_post(
    version: str,
    status: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(observation(status, version_id="2"), previous=observation("final"), context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="result.retracted",
        lifecycle="cancel",
        links={"cancels": "Observation/o1"},
        subject={"status": code},
        dedup_key="result.retracted:Observation/o1/_history/2",
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (observation("preliminary"), observation("final", version_id="2"), "result.final"),
        (observation("preliminary", ("HH",)), observation("final", ("HH",), version_id="2"), "result.critical"),
        # Nothing again: a withdrawn result withdrawn once more, a re-sent result, a new note.
        (observation("cancelled"), observation("entered-in-error", version_id="2"), None),
        (observation("final", ("HH",)), observation("final", ("HH",), version_id="2"), None),
        (observation("final"), later(observation("final"), note=[{"text": "seen"}]), None),
        (None, observation("unknown"), None),
    ],
)
def test_transitions(before: Resource | None, after: Resource, expected: str | None, map_fhir: Any) -> None:
    assert [e.type.value for e in map_fhir(after, previous=before)] == ([expected] if expected else [])


def test_without_the_visit_at_hand_the_thread_is_the_patients_or_the_encounter_reference(map_one: Any) -> None:
    assert map_one(observation(), context={}).thread_key == "fhir-enc:e1"
    alone = observation()
    del alone["encounter"]
    assert map_one(alone, context={}).thread_key == "fhir-pat:p1"
