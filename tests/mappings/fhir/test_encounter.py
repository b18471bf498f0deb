"""Golden tests of mappings/fhir/encounter.yaml: synthetic R4 and R5 Encounters → events, field by field.

Each version is mapped with the version before it, as the bridge does: the status the
Encounter moves from decides the event (and what a cancellation strikes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

Resource = dict[str, Any]
Place = tuple[str, str, str]

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SUBJECT_STATUS = "http://terminology.hl7.org/CodeSystem/encounter-subject-status"
WARD_4E: list[Place] = [
    ("Location/w4e", "Ward 4E", "wa"),
    ("Location/r136", "Room 136", "ro"),
    ("Location/b136b", "Bed B", "bd"),
]
WARD_3W: list[Place] = [
    ("Location/w3w", "Ward 3W", "wa"),
    ("Location/r301", "Room 301", "ro"),
    ("Location/b301a", "Bed A", "bd"),
]
VERSIONS = ["r4", "r5"]


def encounter(
    version: str,
    status: str,
    cls: str = "IMP",
    *,
    here: list[Place] = WARD_4E,
    gone: list[Place] | None = None,
    subject_status: str | None = None,
    version_id: str = "2",
) -> Resource:
    """Encounter e1 (visit V555) in R4 or R5 shape: ``here`` the active locations, ``gone`` completed ones."""
    r5 = version == "r5"
    kind = "form" if r5 else "physicalType"
    resource: Resource = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T10:25:00+01:00"},
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "VN"}]}, "system": "urn:test:visits", "value": "V555"}
        ],
        "status": status,
        "class": [{"coding": [{"system": ACT, "code": cls}]}] if r5 else {"system": ACT, "code": cls},
        "subject": {"reference": "Patient/p1"},
        "participant": [
            {
                "type": [{"coding": [{"code": "ATND"}]}],
                ("actor" if r5 else "individual"): {"reference": "Practitioner/d1", "display": "Dr Test Doctor"},
            }
        ],
        ("actualPeriod" if r5 else "period"): {"start": "2024-01-15T10:20:00+01:00"},
        "serviceProvider": {"display": "Test Hospital"},
        "location": [
            {"location": {"reference": ref, "display": text}, "status": state, kind: {"coding": [{"code": code}]}}
            for places, state in ((gone or [], "completed"), (here, "active"))
            for ref, text, code in places
        ],
    }
    if status in ("finished", "completed", "discharged", "discontinued"):
        resource["actualPeriod" if r5 else "period"]["end"] = "2024-01-20T08:00:00+01:00"
    if subject_status is not None:
        resource["subjectStatus"] = {"coding": [{"system": SUBJECT_STATUS, "code": subject_status}]}
    return resource


def first(resource: Resource) -> Resource:
    """The same Encounter as version 1: the version seen before."""
    before = copy.deepcopy(resource)
    before["meta"]["versionId"] = "1"
    return before


@pytest.fixture
def base(context_patient: dict[str, Any]) -> dict[str, Any]:
    """An inpatient admission of visit V555 on Ward 4E, as its fields read; each test changes what differs."""
    return {
        "type": "encounter.admitted",
        "severity": "notice",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "encounter",
            "key": "V555",
            "code": None,
            "text": None,
            "status": None,
            "start": None,
            "end": None,
            "detail": None,
        },
        "patient": context_patient,
        "encounter": {
            "visit_number": "V555",
            "patient_class": "I",
            "location": "Test Hospital/Ward 4E/Room 136/Bed B",
            "prior_location": None,
            "attending": "Dr Test Doctor",
            "admitted_at": "2024-01-15T10:20:00+01:00",
            "discharged_at": None,
        },
        "thread_key": "enc:V555",
        "occurred_at": "2024-01-15T10:25:00+01:00",
        "dedup_key": "encounter.admitted:Encounter/e1/_history/2",
    }


# --- each event type, field by field ----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_planned_encounter_is_preadmitted(
    version: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(encounter(version, "planned"), context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="encounter.preadmitted",
        severity="info",
        dedup_key="encounter.preadmitted:Encounter/e1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", [None, "planned"])
def test_inpatient_in_progress_is_admitted(
    version: str, before: str | None, map_one: Any, fields: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    previous = first(encounter(version, before)) if before else None
    event = map_one(encounter(version, "in-progress"), previous=previous, context=fhir_context(version))
    assert fields(event) == base


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("cls", "patient_class"), [("EMER", "E"), ("AMB", "O"), ("VR", "O")])
def test_other_visits_in_progress_are_arrivals(
    version: str,
    cls: str,
    patient_class: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(encounter(version, "in-progress", cls), context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="encounter.arrived",
        encounter={"patient_class": patient_class},
        dedup_key="encounter.arrived:Encounter/e1/_history/2",
    )


@pytest.mark.parametrize("status", ["arrived", "triaged"])
def test_r4_arrived_or_triaged_is_an_arrival_of_any_class(
    status: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(encounter("r4", status), previous=first(encounter("r4", "planned")), context=fhir_context("r4"))
    assert fields(event) == expect(
        base, type="encounter.arrived", dedup_key="encounter.arrived:Encounter/e1/_history/2"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_location_change_is_a_transfer_naming_both_places(
    version: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    previous = first(encounter(version, "in-progress", here=WARD_3W))
    current = encounter(version, "in-progress", here=WARD_4E, gone=WARD_3W)
    event = map_one(current, previous=previous, context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="encounter.transferred",
        encounter={"prior_location": "Test Hospital/Ward 3W/Room 301/Bed A"},
        dedup_key="encounter.transferred:Encounter/e1/_history/2",
    )


@pytest.mark.parametrize(
    ("version", "status"), [("r4", "finished"), ("r5", "discharged"), ("r5", "completed"), ("r5", "discontinued")]
)
def test_end_of_the_visit_is_a_discharge(
    version: str, status: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    previous = first(encounter(version, "in-progress"))
    event = map_one(encounter(version, status), previous=previous, context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="encounter.discharged",
        encounter={"discharged_at": "2024-01-20T08:00:00+01:00"},
        dedup_key="encounter.discharged:Encounter/e1/_history/2",
    )


@pytest.mark.parametrize(
    ("version", "leave", "back"),
    [
        # R4 has a status of its own.
        ("r4", {"status": "onleave"}, {"status": "in-progress"}),
        # R5 on-hold: its definition gives leave as the example.
        ("r5", {"status": "on-hold"}, {"status": "in-progress"}),
        # R5 says where the patient is in subjectStatus.
        (
            "r5",
            {"status": "in-progress", "subject_status": "on-leave"},
            {"status": "in-progress", "subject_status": "receiving-care"},
        ),
        ("r5", {"status": "on-hold", "subject_status": "on-leave"}, {"status": "in-progress"}),
    ],
)
def test_leave_of_absence_and_return(
    version: str,
    leave: dict[str, str],
    back: dict[str, str],
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    staying = first(encounter(version, "in-progress"))
    away = encounter(version, leave["status"], subject_status=leave.get("subject_status"))
    gone = map_one(away, previous=staying, context=fhir_context(version))
    assert fields(gone) == expect(
        base, type="encounter.leave_of_absence", dedup_key="encounter.leave_of_absence:Encounter/e1/_history/2"
    )
    returned = encounter(version, back["status"], subject_status=back.get("subject_status"), version_id="3")
    reply = map_one(returned, previous=away, context=fhir_context(version))
    # Notice, as HL7 A22: the ward has the patient back.
    assert fields(reply) == expect(
        base,
        type="encounter.leave_of_absence",
        severity="notice",
        lifecycle="update",
        dedup_key="encounter.leave_of_absence:Encounter/e1/_history/3",
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "cancels"),
    [
        # What the status before announced is what the cancellation strikes.
        (("planned", "IMP", None), "encounter.preadmitted"),
        (("in-progress", "IMP", None), "encounter.admitted"),
        (("in-progress", "AMB", None), "encounter.arrived"),
        (("in-progress", "IMP", "on-leave"), "encounter.leave_of_absence"),
        (("finished", "IMP", None), "encounter.discharged"),
        # Never seen before: the admission or the arrival, whichever was posted last.
        (None, "encounter.admitted,encounter.arrived"),
    ],
)
@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_cancellation_strikes_what_the_status_before_announced(
    version: str,
    before: tuple[str, str, str | None] | None,
    cancels: str,
    status: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    previous = None
    if before is not None:
        was, cls, subject_status = before
        was = "completed" if (version, was) == ("r5", "finished") else was
        previous = first(encounter(version, was, cls, subject_status=subject_status))
    cls = before[1] if before else "IMP"
    event = map_one(encounter(version, status, cls), previous=previous, context=fhir_context(version))
    assert fields(event) == expect(
        base,
        type="encounter.cancelled",
        lifecycle="cancel",
        links={"cancels": cancels},
        encounter={"patient_class": "I" if cls == "IMP" else "O"},
        dedup_key="encounter.cancelled:Encounter/e1/_history/2",
    )


@pytest.mark.parametrize(("before", "cancels"), [("arrived", "encounter.arrived"), ("triaged", "encounter.arrived")])
def test_r4_cancelled_arrival_strikes_it(before: str, cancels: str, map_one: Any) -> None:
    event = map_one(encounter("r4", "cancelled"), previous=first(encounter("r4", before)))
    assert (event.type.value, event.lifecycle.value, event.links) == (
        "encounter.cancelled",
        "cancel",
        {"cancels": cancels},
    )


# --- transitions: which version makes which event ---------------------------------------------------

#: (version, before, after) → the event type and lifecycle, or None. A state is (status, class, subjectStatus).
TRANSITIONS: list[
    tuple[str, tuple[str, str, str | None] | None, tuple[str, str, str | None], tuple[str, str] | None]
] = [
    # Nothing again for the same state, nor a second cancellation or discharge.
    ("r4", ("in-progress", "IMP", None), ("in-progress", "IMP", None), None),
    ("r4", ("cancelled", "IMP", None), ("entered-in-error", "IMP", None), None),
    ("r4", ("finished", "IMP", None), ("finished", "IMP", None), None),
    ("r5", ("discharged", "IMP", None), ("completed", "IMP", None), None),
    ("r4", ("planned", "IMP", None), ("planned", "IMP", None), None),
    # An arrival already announced: the visit getting under way is no second arrival.
    ("r4", ("arrived", "EMER", None), ("in-progress", "EMER", None), None),
    ("r4", ("arrived", "EMER", None), ("triaged", "EMER", None), None),
    # An arrived inpatient is admitted when the stay begins; an emergency visit that becomes
    # an inpatient stay is an admission (A06); the other way round is no news.
    ("r4", ("arrived", "IMP", None), ("in-progress", "IMP", None), ("encounter.admitted", "new")),
    ("r5", ("in-progress", "EMER", None), ("in-progress", "IMP", None), ("encounter.admitted", "new")),
    ("r5", ("in-progress", "IMP", None), ("in-progress", "EMER", None), None),
    # On hold for another reason than leave (subjectStatus says the patient is there).
    ("r5", ("in-progress", "IMP", None), ("on-hold", "IMP", "receiving-care"), None),
    # Back from leave is no new admission.
    ("r4", ("onleave", "IMP", None), ("in-progress", "IMP", None), ("encounter.leave_of_absence", "update")),
    # Cancelled while on leave: the leave post.
    ("r4", ("onleave", "IMP", None), ("cancelled", "IMP", None), ("encounter.cancelled", "cancel")),
    # First seen ended, or on leave: that is the news.
    ("r4", None, ("finished", "IMP", None), ("encounter.discharged", "new")),
    ("r5", None, ("on-hold", "IMP", None), ("encounter.leave_of_absence", "new")),
    # Unknown says nothing.
    ("r4", None, ("unknown", "IMP", None), None),
    ("r5", ("in-progress", "IMP", None), ("unknown", "IMP", None), None),
]


@pytest.mark.parametrize(("version", "before", "after", "expected"), TRANSITIONS)
def test_transitions(
    version: str,
    before: tuple[str, str, str | None] | None,
    after: tuple[str, str, str | None],
    expected: tuple[str, str] | None,
    map_fhir: Any,
) -> None:
    previous = first(encounter(version, before[0], before[1], subject_status=before[2])) if before else None
    events = map_fhir(encounter(version, after[0], after[1], subject_status=after[2]), previous=previous)
    assert [(e.type.value, e.lifecycle.value) for e in events] == ([expected] if expected else [])


@pytest.mark.parametrize("version", VERSIONS)
def test_an_update_storm_posts_nothing(version: str, map_fhir: Callable[..., list[Any]]) -> None:
    previous = first(encounter(version, "in-progress"))
    for n in range(2, 8):
        update = copy.deepcopy(previous)
        update["meta"]["versionId"] = str(n)
        update["reasonCode"] = [{"text": f"note {n}"}]
        update["identifier"].append({"system": "urn:test:other", "value": f"O-{n}"})
        assert map_fhir(update, previous=previous) == []
        previous = update


def test_without_the_patient_at_hand_the_reference_gives_the_name_and_the_visit_the_thread(map_one: Any) -> None:
    resource = encounter("r5", "in-progress")
    resource["subject"]["display"] = "Alpha Testpatient"
    del resource["identifier"]
    event = map_one(resource)
    assert event.patient.mrn is None and event.patient.family == "Alpha Testpatient"
    assert (event.subject is not None and event.subject.key, event.thread_key) == ("Encounter/e1", "fhir-enc:e1")


def test_the_sites_mrn_system_is_preferred(map_one: Any, fhir_context: Any) -> None:
    event = map_one(encounter("r4", "in-progress"), context=fhir_context("r4"), mrn_authorities=["urn:test:insurance"])
    assert event.patient.mrn is not None
    assert (event.patient.mrn.authority, event.patient.mrn.value) == ("urn:test:insurance", "X110000001")
    assert event.thread_key == "enc:V555"


@pytest.mark.parametrize("version", VERSIONS)
def test_discharge_with_every_location_completed_is_no_move(version: str, map_one: Any) -> None:
    previous = first(encounter(version, "in-progress"))
    ended = encounter(version, "finished" if version == "r4" else "completed", here=[], gone=WARD_4E)
    event = map_one(ended, previous=previous)
    assert event.type.value == "encounter.discharged"
    assert event.encounter.prior_location is None
