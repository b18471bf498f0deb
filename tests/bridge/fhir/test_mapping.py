"""The bundled FHIR mappings and the engine that applies them, on synthetic R4 and R5 resources.

Every name and number below is invented (patient "Testpatient, Alpha", visit V555,
organisation "Test Hospital").
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Identifier, Lifecycle, Severity
from bridge.fhir.mapping import FhirMapper, fhir_instant
from bridge.hl7.reader import parse
from bridge.mapping import Mapper, MappingOptions, load_mappings, mappings_dir
from bridge.routing import Route

RECEIVED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def mapper() -> FhirMapper:
    return FhirMapper.load()


def run(
    mapper: FhirMapper,
    resource: Resource,
    *,
    previous: Resource | None = None,
    context: dict[str, Resource] | None = None,
    topic: str | None = None,
    message_id: str = "n1",
) -> list[ClinicalEvent]:
    return mapper.map_resource(
        resource,
        message_id=message_id,
        source="urn:ehr-bridge:fhir:test",
        received_at=RECEIVED,
        origin={"subscription": "test"},
        previous=previous,
        context=context,
        topic=topic,
    )


def one(mapper: FhirMapper, resource: Resource, **kwargs: Any) -> ClinicalEvent:
    events = run(mapper, resource, **kwargs)
    assert len(events) == 1, [e.type for e in events]
    return events[0]


def kind(mapper: FhirMapper, resource: Resource, **kwargs: Any) -> EventType | None:
    events = run(mapper, resource, **kwargs)
    assert len(events) <= 1
    return events[0].type if events else None


# --- synthetic resources --------------------------------------------------------------------------

PATIENT: Resource = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "urn:oid:1.2.276.0.76.4.8", "value": "X110000001"},
        {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": "urn:test:mrn", "value": "12345"},
    ],
    "name": [
        {"use": "usual", "family": "Usualname", "given": ["Al"]},
        {"use": "official", "family": "Testpatient", "given": ["Alpha", "Beta"]},
    ],
    "gender": "female",
    "birthDate": "1980-05-21",
}
PRACTITIONER: Resource = {
    "resourceType": "Practitioner",
    "id": "d1",
    "identifier": [{"system": "urn:test:lanr", "value": "1234"}],
    "name": [{"family": "Doctor", "given": ["Test"], "prefix": ["Dr"]}],
}
CONTEXT = {"Patient/p1": PATIENT, "Practitioner/d1": PRACTITIONER}

#: Where a patient lies: ward, room and bed entries, each with its kind (location-physical-type).
WARD_4E = [("Location/w4e", "Ward 4E", "wa"), ("Location/r136", "Room 136", "ro"), ("Location/b136b", "Bed B", "bd")]
WARD_3W = [("Location/w3w", "Ward 3W", "wa"), ("Location/r301", "Room 301", "ro"), ("Location/b301a", "Bed A", "bd")]


def encounter(
    version: str,
    status: str,
    cls: str = "IMP",
    *,
    here: list[tuple[str, str, str]] | None = None,
    gone: list[tuple[str, str, str]] | None = None,
    version_id: str = "1",
    visit: str | None = "V555",
) -> Resource:
    """An Encounter in R4 or R5 shape; ``here`` active locations, ``gone`` completed ones."""
    r5 = version == "r5"
    if r5 and status == "finished":
        status = "completed"
    coding = {"system": ACT, "code": cls}
    kind_key = "form" if r5 else "physicalType"
    person_key = "actor" if r5 else "individual"
    locations = [
        {"location": {"reference": ref, "display": text}, "status": "completed", kind_key: {"coding": [{"code": k}]}}
        for ref, text, k in (gone or [])
    ] + [
        {"location": {"reference": ref, "display": text}, "status": "active", kind_key: {"coding": [{"code": k}]}}
        for ref, text, k in (here or [])
    ]
    resource: Resource = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T10:25:00+01:00"},
        "status": status,
        "class": [{"coding": [coding]}] if r5 else coding,
        "subject": {"reference": "Patient/p1"},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}
                        ]
                    }
                ],
                person_key: {"reference": "Practitioner/d1", "display": "Dr Test Doctor"},
            }
        ],
        ("actualPeriod" if r5 else "period"): {
            "start": "2024-01-15T10:20:00+01:00",
            "end": "2024-01-20T08:00:00+01:00",
        },
        "serviceProvider": {"display": "Test Hospital"},
        "location": locations,
    }
    if visit is not None:
        resource["identifier"] = [
            {"system": "urn:test:visits", "value": "OTHER-1"},
            {"type": {"coding": [{"system": V2_0203, "code": "VN"}]}, "system": "urn:test:visits", "value": visit},
        ]
    return resource


def observation(
    status: str = "final",
    flags: tuple[str, ...] = (),
    *,
    value: float = 6.8,
    version_id: str = "1",
    encounter_ref: str | None = "Encounter/e1",
    interpretation: list[Resource] | None = None,
) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T11:00:00Z"},
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}], "text": "K"},
        "subject": {"reference": "Patient/p1"},
        "issued": "2024-01-15T10:55:00Z",
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.1}}],
    }
    if encounter_ref is not None:
        resource["encounter"] = {"reference": encounter_ref}
    if interpretation is not None:
        resource["interpretation"] = interpretation
    elif flags:
        resource["interpretation"] = [{"coding": [{"system": V3, "code": f} for f in flags]}]
    return resource


def versioned(resource: Resource, version_id: str, **changes: Any) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = version_id
    new.update(changes)
    return new


# --- Encounter ------------------------------------------------------------------------------------

VERSIONS = ["r4", "r5"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, ("in-progress", "IMP"), EventType.ENCOUNTER_ADMITTED),
        (None, ("in-progress", "ACUTE"), EventType.ENCOUNTER_ADMITTED),
        (("planned", "IMP"), ("in-progress", "IMP"), EventType.ENCOUNTER_ADMITTED),
        (None, ("in-progress", "EMER"), EventType.ENCOUNTER_ARRIVED),
        (None, ("in-progress", "AMB"), EventType.ENCOUNTER_ARRIVED),
        (None, ("in-progress", "VR"), EventType.ENCOUNTER_ARRIVED),
        (("planned", "AMB"), ("in-progress", "AMB"), EventType.ENCOUNTER_ARRIVED),
        # An emergency visit that becomes an inpatient stay is an admission (A06).
        (("in-progress", "EMER"), ("in-progress", "IMP"), EventType.ENCOUNTER_ADMITTED),
        (("in-progress", "IMP"), ("finished", "IMP"), EventType.ENCOUNTER_DISCHARGED),
        (None, ("finished", "IMP"), EventType.ENCOUNTER_DISCHARGED),
        (("in-progress", "IMP"), ("cancelled", "IMP"), EventType.ENCOUNTER_CANCELLED),
        (("in-progress", "AMB"), ("entered-in-error", "AMB"), EventType.ENCOUNTER_CANCELLED),
        (None, ("cancelled", "IMP"), EventType.ENCOUNTER_CANCELLED),
        # A planned visit was announced (preadmitted): its cancellation strikes that post.
        (None, ("planned", "IMP"), EventType.ENCOUNTER_PREADMITTED),
        (("planned", "IMP"), ("cancelled", "IMP"), EventType.ENCOUNTER_CANCELLED),
        # Nothing twice.
        (("cancelled", "IMP"), ("entered-in-error", "IMP"), None),
        (("finished", "IMP"), ("finished", "IMP"), None),
        (("in-progress", "IMP"), ("in-progress", "IMP"), None),
        (("in-progress", "IMP"), ("in-progress", "EMER"), None),
    ],
)
def test_encounter_status_and_class_transitions(
    mapper: FhirMapper, version: str, before: tuple[str, str] | None, after: tuple[str, str], expected: EventType | None
) -> None:
    previous = encounter(version, before[0], before[1]) if before else None
    current = encounter(version, after[0], after[1], version_id="2")
    assert kind(mapper, current, previous=previous, context=CONTEXT) is expected


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # R4 only: arrived and triaged come before the visit is under way.
        ("arrived", "in-progress", EventType.ENCOUNTER_ADMITTED),
        ("triaged", "in-progress", EventType.ENCOUNTER_ADMITTED),
        ("arrived", "triaged", None),
        # The arrival was announced: its cancellation strikes it.
        ("triaged", "cancelled", EventType.ENCOUNTER_CANCELLED),
        # Back from leave is not a new admission: a reply to the leave post.
        ("onleave", "in-progress", EventType.ENCOUNTER_LEAVE_OF_ABSENCE),
    ],
)
def test_r4_only_encounter_statuses(mapper: FhirMapper, before: str, after: str, expected: EventType | None) -> None:
    previous = encounter("r4", before)
    assert kind(mapper, encounter("r4", after, version_id="2"), previous=previous) is expected


@pytest.mark.parametrize(
    ("before", "expected"), [("in-progress", EventType.ENCOUNTER_DISCHARGED), ("discharged", None)]
)
def test_r5_completed_after_discharged_is_not_a_second_discharge(
    mapper: FhirMapper, before: str, expected: EventType | None
) -> None:
    previous = encounter("r5", before)
    assert kind(mapper, encounter("r5", "completed", version_id="2"), previous=previous) is expected


@pytest.mark.parametrize("version", VERSIONS)
def test_transfer_names_the_new_and_the_prior_location(mapper: FhirMapper, version: str) -> None:
    previous = encounter(version, "in-progress", here=WARD_3W)
    current = encounter(version, "in-progress", here=WARD_4E, gone=WARD_3W, version_id="2")
    event = one(mapper, current, previous=previous, context=CONTEXT)
    assert event.type is EventType.ENCOUNTER_TRANSFERRED
    assert event.severity is Severity.NOTICE
    assert event.encounter.location.model_dump() == {
        "facility": "Test Hospital",
        "unit": "Ward 4E",
        "room": "Room 136",
        "bed": "Bed B",
    }
    assert event.encounter.prior_location is not None
    assert (event.encounter.prior_location.unit, event.encounter.prior_location.room) == ("Ward 3W", "Room 301")
    assert event.encounter.prior_location.bed == "Bed A"


@pytest.mark.parametrize("version", VERSIONS)
def test_bed_move_in_the_same_ward_is_a_transfer(mapper: FhirMapper, version: str) -> None:
    other_bed = [*WARD_4E[:2], ("Location/b136a", "Bed A", "bd")]
    previous = encounter(version, "in-progress", here=WARD_4E)
    current = encounter(version, "in-progress", here=other_bed, version_id="2")
    event = one(mapper, current, previous=previous)
    assert event.type is EventType.ENCOUNTER_TRANSFERRED
    assert event.encounter.location.bed == "Bed A"
    assert event.encounter.prior_location is not None and event.encounter.prior_location.bed == "Bed B"


@pytest.mark.parametrize("version", VERSIONS)
def test_first_location_on_a_visit_is_not_a_transfer(mapper: FhirMapper, version: str) -> None:
    previous = encounter(version, "in-progress")
    assert run(mapper, encounter(version, "in-progress", here=WARD_4E, version_id="2"), previous=previous) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_update_storm_of_unchanged_encounters_posts_nothing(mapper: FhirMapper, version: str) -> None:
    first = encounter(version, "in-progress", here=WARD_4E)
    assert kind(mapper, first) is EventType.ENCOUNTER_ADMITTED
    previous = first
    for n in range(2, 12):
        # New versions that change what no event depends on: notes, diagnoses, period, identifiers.
        update = versioned(previous, str(n), reasonCode=[{"text": f"note {n}"}])
        update["identifier"] = [{"system": "urn:test:visits", "value": f"V555-{n}"}]
        assert run(mapper, update, previous=previous, context=CONTEXT) == []
        previous = update


@pytest.mark.parametrize("version", VERSIONS)
def test_admission_carries_patient_visit_attending_and_times(mapper: FhirMapper, version: str) -> None:
    event = one(mapper, encounter(version, "in-progress", here=WARD_4E), context=CONTEXT)
    assert event.type is EventType.ENCOUNTER_ADMITTED
    assert event.patient.mrn is not None
    assert event.patient.mrn.model_dump() == {"value": "12345", "authority": "urn:test:mrn", "type": "MR"}
    assert [i.value for i in event.patient.identifiers] == ["X110000001", "12345"]
    # The official name, not the usual one; the first given name, as PID-5.2.
    assert (event.patient.family, event.patient.given) == ("Testpatient", "Alpha")
    assert (event.patient.birth_date, event.patient.sex) == ("1980-05-21", "F")
    assert event.encounter.visit_number == "V555"
    assert event.encounter.patient_class == "I"
    assert event.encounter.attending is not None
    assert event.encounter.attending.model_dump() == {"id": "1234", "family": "Doctor", "given": "Test", "prefix": "Dr"}
    assert event.encounter.admitted_at == "2024-01-15T10:20:00+01:00"
    assert event.occurred_at == datetime(2024, 1, 15, 10, 25, tzinfo=timezone(timedelta(hours=1)))
    assert event.subject is not None and (event.subject.kind, event.subject.key) == ("encounter", "V555")
    assert event.thread_key == "enc:V555"
    assert event.dedup_key == "encounter.admitted:Encounter/e1/_history/1"
    assert (event.id, event.source, event.origin) == ("n1-1", "urn:ehr-bridge:fhir:test", {"subscription": "test"})


@pytest.mark.parametrize("version", VERSIONS)
def test_without_context_the_references_give_what_they_can(mapper: FhirMapper, version: str) -> None:
    resource = encounter(version, "in-progress", visit=None)
    resource["subject"] = {"reference": "Patient/p1", "display": "Alpha Testpatient"}
    event = one(mapper, resource)
    assert event.patient.mrn is None
    assert event.patient.family == "Alpha Testpatient"
    assert event.encounter.attending is not None and event.encounter.attending.display == "Dr Test Doctor"
    assert event.thread_key == "fhir-enc:e1"


def test_discharge_carries_the_end_of_the_stay(mapper: FhirMapper) -> None:
    event = one(mapper, encounter("r5", "completed", here=WARD_4E), previous=encounter("r5", "in-progress"))
    assert event.type is EventType.ENCOUNTER_DISCHARGED
    assert event.encounter.discharged_at == "2024-01-20T08:00:00+01:00"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "cancels"),
    [
        ("in-progress", "encounter.admitted"),
        (None, "encounter.admitted,encounter.arrived"),
    ],
)
def test_cancelled_encounter_strikes_the_admission(
    mapper: FhirMapper, version: str, before: str | None, cancels: str
) -> None:
    previous = encounter(version, before) if before else None
    event = one(mapper, encounter(version, "cancelled", version_id="2"), previous=previous)
    assert event.type is EventType.ENCOUNTER_CANCELLED
    assert event.lifecycle is Lifecycle.CANCEL
    assert event.links == {"cancels": cancels}
    assert event.thread_key == "enc:V555"


def test_location_levels_come_from_location_resources_in_context(mapper: FhirMapper) -> None:
    resource = encounter("r4", "in-progress")
    resource["location"] = [{"location": {"reference": "Location/bed7"}, "status": "active"}]
    context = {
        "https://fhir.test/Location/bed7": {
            "resourceType": "Location",
            "id": "bed7",
            "name": "Bed 7",
            "physicalType": {"coding": [{"code": "bd"}]},
            "partOf": {"reference": "Location/room2"},
        },
        "Location/room2": {
            "resourceType": "Location",
            "id": "room2",
            "name": "Room 2",
            "form": {"coding": [{"code": "ro"}]},
        },
    }
    location = one(mapper, resource, context=context).encounter.location
    assert (location.room, location.bed) == ("Room 2", "Bed 7")


def test_untyped_location_is_the_point_of_care(mapper: FhirMapper) -> None:
    resource = encounter("r4", "in-progress")
    resource["location"] = [{"location": {"display": "Emergency Waiting Room"}, "status": "active"}]
    assert one(mapper, resource).encounter.location.unit == "Emergency Waiting Room"


def test_fhir_and_hl7_events_of_one_visit_share_a_thread(mapper: FhirMapper) -> None:
    hl7 = Mapper.load().map_hl7(
        parse(
            b"MSH|^~\\&|ADT|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ADT^A01|C1|P|2.5.1\r"
            b"PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha\rPV1|1|I|4E^136^B||||||||||||||||V555\r"
        ),
        message_id="m1",
        source="urn:ehr-bridge:hl7v2:test",
        received_at=RECEIVED,
        origin={},
    )
    fhir = one(mapper, encounter("r4", "in-progress"))
    assert [e.thread_key for e in hl7] == [fhir.thread_key] == ["enc:V555"]
    assert hl7[0].type is fhir.type and hl7[0].encounter.patient_class == fhir.encounter.patient_class


def test_a_resent_version_has_the_same_dedup_key(mapper: FhirMapper) -> None:
    first = one(mapper, encounter("r4", "in-progress"), message_id="n1")
    again = one(mapper, encounter("r4", "in-progress"), message_id="n2")
    assert first.id != again.id and first.dedup_key == again.dedup_key


# --- Observation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected", "severity"),
    [
        (("HH",), EventType.RESULT_CRITICAL, Severity.CRITICAL),
        (("LL",), EventType.RESULT_CRITICAL, Severity.CRITICAL),
        (("AA",), EventType.RESULT_CRITICAL, Severity.CRITICAL),
        (("H",), EventType.RESULT_FINAL, Severity.WARNING),
        (("L",), EventType.RESULT_FINAL, Severity.WARNING),
        (("A",), EventType.RESULT_FINAL, Severity.WARNING),
        (("N",), EventType.RESULT_FINAL, Severity.NOTICE),
        ((), EventType.RESULT_FINAL, Severity.NOTICE),
    ],
)
def test_interpretation_sets_type_and_severity(
    mapper: FhirMapper, flags: tuple[str, ...], expected: EventType, severity: Severity
) -> None:
    event = one(mapper, observation("final", flags))
    assert (event.type, event.severity) == (expected, severity)
    assert event.subject is not None and event.subject.observations[0].flags == flags


@pytest.mark.parametrize(
    "interpretation",
    [
        [{"coding": [{"system": "urn:test:lab-flags", "code": "CRIT", "display": "Critical high"}]}],
        [{"coding": [{"system": "urn:test:lab-flags", "code": "critical"}]}],
        [{"text": "CRITICAL - called to ward"}],
    ],
)
def test_critical_in_any_code_system_or_text_is_critical(mapper: FhirMapper, interpretation: list[Resource]) -> None:
    event = one(mapper, observation("final", interpretation=interpretation))
    assert event.type is EventType.RESULT_CRITICAL
    assert event.subject is not None and event.subject.observations[0].critical


def test_flags_of_other_code_systems_are_not_flags(mapper: FhirMapper) -> None:
    interpretation = [
        {"coding": [{"system": "http://snomed.info/sct", "code": "166717003"}, {"system": V3, "code": "H"}]}
    ]
    event = one(mapper, observation("final", interpretation=interpretation))
    assert event.subject is not None and event.subject.observations[0].flags == ("H",)


def test_critical_component_makes_the_observation_critical(mapper: FhirMapper) -> None:
    resource = observation("final")
    resource["component"] = [
        {
            "code": {"text": "Systolic"},
            "valueQuantity": {"value": 220, "unit": "mmHg"},
            "interpretation": [{"coding": [{"system": V3, "code": "HH"}]}],
        },
        {"code": {"text": "Diastolic"}, "valueQuantity": {"value": 80, "unit": "mmHg"}},
    ]
    event = one(mapper, resource)
    assert event.type is EventType.RESULT_CRITICAL
    assert event.subject is not None
    assert [(o.text, o.value, o.critical) for o in event.subject.observations] == [
        ("K", "6.8", False),
        ("Systolic", "220", True),
        ("Diastolic", "80", False),
    ]


def test_site_critical_flags_apply_to_fhir_too() -> None:
    site = FhirMapper.load(MappingOptions(critical_flags=frozenset({"HH", "LL", "AA", "HU"})))
    assert one(site, observation("final", ("HU",))).type is EventType.RESULT_CRITICAL
    assert one(FhirMapper.load(), observation("final", ("HU",))).severity is Severity.WARNING


@pytest.mark.parametrize(
    ("status", "flags", "expected", "severity", "lifecycle"),
    [
        ("preliminary", (), EventType.RESULT_PRELIMINARY, Severity.INFO, Lifecycle.NEW),
        ("registered", (), EventType.RESULT_PRELIMINARY, Severity.INFO, Lifecycle.NEW),
        ("preliminary", ("H",), EventType.RESULT_PRELIMINARY, Severity.WARNING, Lifecycle.NEW),
        ("preliminary", ("HH",), EventType.RESULT_CRITICAL, Severity.CRITICAL, Lifecycle.NEW),
        ("corrected", (), EventType.RESULT_CORRECTED, Severity.NOTICE, Lifecycle.CORRECT),
        ("amended", ("L",), EventType.RESULT_CORRECTED, Severity.WARNING, Lifecycle.CORRECT),
        ("corrected", ("LL",), EventType.RESULT_CORRECTED, Severity.CRITICAL, Lifecycle.CORRECT),
        ("cancelled", (), EventType.RESULT_RETRACTED, Severity.NOTICE, Lifecycle.CANCEL),
        ("entered-in-error", ("HH",), EventType.RESULT_RETRACTED, Severity.NOTICE, Lifecycle.CANCEL),
    ],
)
def test_observation_status_sets_type_and_lifecycle(
    mapper: FhirMapper,
    status: str,
    flags: tuple[str, ...],
    expected: EventType,
    severity: Severity,
    lifecycle: Lifecycle,
) -> None:
    event = one(mapper, observation(status, flags))
    assert (event.type, event.severity, event.lifecycle) == (expected, severity, lifecycle)


@pytest.mark.parametrize(
    ("status", "link"),
    [("corrected", "corrects"), ("amended", "corrects"), ("cancelled", "cancels"), ("entered-in-error", "cancels")],
)
def test_correction_and_withdrawal_link_the_subject_of_the_first_post(
    mapper: FhirMapper, status: str, link: str
) -> None:
    first = one(mapper, observation("final"), context=CONTEXT)
    later = one(mapper, observation(status, version_id="2"), previous=observation("final"), context=CONTEXT)
    assert first.subject is not None and first.subject.key == "Observation/o1"
    assert later.links == {link: first.subject.key}
    assert later.thread_key == first.thread_key


def test_unknown_status_makes_no_event(mapper: FhirMapper) -> None:
    assert run(mapper, observation("unknown")) == []
    assert mapper.matches(observation("unknown"))


def test_observation_update_storm_posts_nothing(mapper: FhirMapper) -> None:
    previous = observation("final", ("HH",))
    for n in range(2, 8):
        update = versioned(previous, str(n), note=[{"text": f"seen {n}"}])
        assert run(mapper, update, previous=previous) == []
        previous = update


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (observation("preliminary"), observation("final", version_id="2"), EventType.RESULT_FINAL),
        (observation("preliminary", ("HH",)), observation("final", ("HH",), version_id="2"), EventType.RESULT_CRITICAL),
        # A final result re-released with another value is a correction in all but name.
        (observation("final"), observation("final", value=7.4, version_id="2"), EventType.RESULT_CORRECTED),
        (observation("final", ("H",)), observation("final", ("HH",), version_id="2"), EventType.RESULT_CORRECTED),
    ],
)
def test_observation_changes_against_the_previous_version(
    mapper: FhirMapper, before: Resource, after: Resource, expected: EventType
) -> None:
    assert kind(mapper, after, previous=before) is expected


def test_observation_fields_read_like_oru(mapper: FhirMapper) -> None:
    enc = encounter("r5", "in-progress", here=WARD_4E)
    event = one(mapper, observation("final", ("HH",)), context={**CONTEXT, "Encounter/e1": enc})
    assert event.subject is not None
    assert (event.subject.kind, event.subject.code, event.subject.text, event.subject.status) == (
        "result",
        "2823-3",
        "K",
        "F",
    )
    line = event.subject.observations[0]
    assert (line.code, line.value, line.units, line.reference_range, line.status) == (
        "2823-3",
        "6.8",
        "mmol/L",
        "3.5-5.1",
        "F",
    )
    assert event.patient.mrn is not None and event.patient.mrn.value == "12345"
    assert (event.encounter.visit_number, event.encounter.patient_class) == ("V555", "I")
    assert (event.encounter.location.unit, event.encounter.location.bed) == ("Ward 4E", "Bed B")
    # issued, when the result was released; not when the specimen was taken.
    assert event.occurred_at == datetime(2024, 1, 15, 10, 55, tzinfo=UTC)
    assert event.thread_key == "enc:V555"
    assert event.dedup_key == "result.critical:Observation/o1/_history/1"


def test_comparator_is_part_of_the_value(mapper: FhirMapper) -> None:
    resource = observation("final")
    resource["valueQuantity"]["comparator"] = "<"
    event = one(mapper, resource)
    assert event.subject is not None and event.subject.observations[0].value == "<6.8"


@pytest.mark.parametrize(
    ("encounter_ref", "context", "thread"),
    [
        ("Encounter/e1", {"Encounter/e1": encounter("r4", "in-progress")}, "enc:V555"),
        ("https://fhir.test/r4/Encounter/e1/_history/3", {}, "fhir-enc:e1"),
        (None, CONTEXT, "pat:urn:test:mrn:12345"),
        (None, {}, "fhir-pat:p1"),
    ],
)
def test_observation_thread_key_fallbacks(
    mapper: FhirMapper, encounter_ref: str | None, context: dict[str, Resource], thread: str
) -> None:
    assert one(mapper, observation("final", encounter_ref=encounter_ref), context=context).thread_key == thread


def test_a_critical_route_fires_for_hl7_and_fhir_alike(mapper: FhirMapper) -> None:
    route = Route(
        name="icu-critical",
        types=("result.critical",),
        min_severity=Severity.CRITICAL,
        facilities=frozenset(),
        units=frozenset({"4E"}),
        patient_classes=frozenset({"I"}),
        channels=("icu",),
    )
    hl7 = Mapper.load().map_hl7(
        parse(
            b"MSH|^~\\&|LAB|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ORU^R01|C2|P|2.5.1\r"
            b"PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha\rPV1|1|I|4E^136^B||||||||||||||||V555\r"
            b"OBR|1||ACC1^LAB|2823-3^Potassium|||||||||||||||||||F\r"
            b"OBX|1|NM|2823-3^Potassium||6.8|mmol/L|3.5-5.1|HH|||F\r"
        ),
        message_id="m2",
        source="urn:ehr-bridge:hl7v2:test",
        received_at=RECEIVED,
        origin={},
    )
    enc = encounter("r4", "in-progress")
    enc["location"] = [{"location": {"display": "4E"}, "status": "active"}]
    fhir = one(mapper, observation("final", ("HH",)), context={"Encounter/e1": enc})
    assert [route.matches(e) for e in (*hl7, fhir)] == [True, True]
    assert hl7[0].thread_key == fhir.thread_key


# --- DiagnosticReport -----------------------------------------------------------------------------


def report(
    status: str = "final", *, version: str = "r4", version_id: str = "1", results: tuple[str, ...] = ("o1", "o2")
) -> Resource:
    return {
        "resourceType": "DiagnosticReport",
        "id": "dr1",
        "meta": {"versionId": version_id},
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "Metabolic panel"}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "issued": "2024-01-15T11:05:00Z",
        "result": [{"reference": f"Observation/{r}"} for r in results],
        **(
            {"conclusionCode": [{"concept": {"text": "see results"}}]}
            if version == "r5"
            else {"conclusion": "see results"}
        ),
    }


def results(*flags: tuple[str, ...]) -> dict[str, Resource]:
    found: dict[str, Resource] = {}
    for n, f in enumerate(flags, start=1):
        line = observation("final", f)
        line["id"] = f"o{n}"
        found[f"Observation/o{n}"] = line
    return found


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("status", "flags", "expected", "severity", "lifecycle"),
    [
        ("final", ((), ("HH",)), EventType.RESULT_CRITICAL, Severity.CRITICAL, Lifecycle.NEW),
        ("final", ((), ("H",)), EventType.RESULT_FINAL, Severity.WARNING, Lifecycle.NEW),
        ("final", ((), ()), EventType.RESULT_FINAL, Severity.NOTICE, Lifecycle.NEW),
        ("preliminary", ((), ()), EventType.RESULT_PRELIMINARY, Severity.INFO, Lifecycle.NEW),
        ("partial", (("L",), ()), EventType.RESULT_PRELIMINARY, Severity.WARNING, Lifecycle.NEW),
        ("corrected", ((), ()), EventType.RESULT_CORRECTED, Severity.NOTICE, Lifecycle.CORRECT),
        ("amended", (("LL",), ()), EventType.RESULT_CORRECTED, Severity.CRITICAL, Lifecycle.CORRECT),
        ("appended", ((), ()), EventType.RESULT_CORRECTED, Severity.NOTICE, Lifecycle.CORRECT),
        ("cancelled", ((), ()), EventType.RESULT_RETRACTED, Severity.NOTICE, Lifecycle.CANCEL),
        ("entered-in-error", ((), ()), EventType.RESULT_RETRACTED, Severity.NOTICE, Lifecycle.CANCEL),
    ],
)
def test_diagnostic_report_status_and_result_lines(
    mapper: FhirMapper,
    version: str,
    status: str,
    flags: tuple[tuple[str, ...], ...],
    expected: EventType,
    severity: Severity,
    lifecycle: Lifecycle,
) -> None:
    event = one(mapper, report(status, version=version), context={**CONTEXT, **results(*flags)})
    assert (event.type, event.severity, event.lifecycle) == (expected, severity, lifecycle)
    assert event.subject is not None and len(event.subject.observations) == 2
    if lifecycle is not Lifecycle.NEW:
        assert set(event.links.values()) == {"DiagnosticReport/dr1"}


def test_report_without_its_results_at_hand_still_posts(mapper: FhirMapper) -> None:
    event = one(mapper, report("final"))
    assert event.type is EventType.RESULT_FINAL
    assert event.subject is not None and event.subject.observations == ()
    assert event.thread_key == "fhir-enc:e1"


def test_report_update_storm_posts_nothing_and_a_new_result_corrects(mapper: FhirMapper) -> None:
    first = report("final")
    assert run(mapper, versioned(first, "2", presentedForm=[{"title": "pdf"}]), previous=first) == []
    more = report("final", version_id="3", results=("o1", "o2", "o3"))
    assert kind(mapper, more, previous=first) is EventType.RESULT_CORRECTED


# --- ServiceRequest -------------------------------------------------------------------------------


def order(status: str, intent: str = "order", *, version: str = "r4", version_id: str = "1") -> Resource:
    coding = {
        "coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}],
        "text": "Blood count",
    }
    return {
        "resourceType": "ServiceRequest",
        "id": "sr1",
        "meta": {"versionId": version_id},
        "status": status,
        "intent": intent,
        "code": {"concept": coding} if version == "r5" else coding,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, ("active", "order"), EventType.ORDER_PLACED),
        (None, ("active", "original-order"), EventType.ORDER_PLACED),
        (("draft", "order"), ("active", "order"), EventType.ORDER_PLACED),
        (("active", "plan"), ("active", "order"), EventType.ORDER_PLACED),
        (None, ("active", "plan"), None),
        (None, ("active", "proposal"), None),
        (None, ("draft", "order"), None),
        (("active", "order"), ("active", "order"), None),
        # Resumed from hold, or done: the placed post is edited, or answered.
        (("on-hold", "order"), ("active", "order"), EventType.ORDER_CHANGED),
        (("active", "order"), ("completed", "order"), EventType.ORDER_COMPLETED),
        (("active", "order"), ("revoked", "order"), EventType.ORDER_CANCELLED),
        (("on-hold", "order"), ("entered-in-error", "order"), EventType.ORDER_CANCELLED),
        (None, ("revoked", "order"), EventType.ORDER_CANCELLED),
        (("draft", "order"), ("revoked", "order"), None),
        (("revoked", "order"), ("entered-in-error", "order"), None),
    ],
)
def test_service_request_transitions(
    mapper: FhirMapper, version: str, before: tuple[str, str] | None, after: tuple[str, str], expected: EventType | None
) -> None:
    previous = order(*before, version=version) if before else None
    assert kind(mapper, order(*after, version=version, version_id="2"), previous=previous) is expected


@pytest.mark.parametrize("version", VERSIONS)
def test_order_cancellation_strikes_the_placed_order(mapper: FhirMapper, version: str) -> None:
    placed = one(mapper, order("active", version=version), context=CONTEXT)
    cancelled = one(
        mapper, order("revoked", version=version, version_id="2"), previous=order("active"), context=CONTEXT
    )
    assert placed.subject is not None and cancelled.subject is not None
    assert (placed.subject.code, placed.subject.text, placed.subject.status) == ("58410-2", "Blood count", "IP")
    assert cancelled.lifecycle is Lifecycle.CANCEL and cancelled.links == {"cancels": "ServiceRequest/sr1"}
    assert (cancelled.subject.key, cancelled.thread_key) == (placed.subject.key, placed.thread_key)
    # Revoked: the order held until now, so it is discontinued (ORC-5 DC), not cancelled.
    assert cancelled.subject.status == "DC"


# --- Appointment ----------------------------------------------------------------------------------


def appointment(status: str, *, version: str = "r4", version_id: str = "1") -> Resource:
    resource: Resource = {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": version_id},
        "status": status,
        "description": "Cardiology follow-up",
        "start": "2024-02-01T09:00:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1", "display": "Alpha Testpatient"}, "status": "accepted"},
            {
                "type": [{"coding": [{"code": "ATND"}]}],
                "actor": {"reference": "Practitioner/d1", "display": "Dr Test Doctor"},
                "status": "accepted",
            },
            {"actor": {"reference": "Location/clinic", "display": "Cardiology clinic"}, "status": "accepted"},
        ],
    }
    if version == "r5":
        resource["subject"] = {"reference": "Patient/p1"}
        resource["serviceType"] = [{"concept": {"coding": [{"code": "cardio", "display": "Cardiology"}]}}]
        resource["class"] = [{"coding": [{"system": ACT, "code": "AMB"}]}]
    else:
        resource["serviceType"] = [{"coding": [{"code": "cardio", "display": "Cardiology"}]}]
    return resource


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (None, "booked", EventType.APPOINTMENT_BOOKED),
        ("proposed", "booked", EventType.APPOINTMENT_BOOKED),
        ("pending", "booked", EventType.APPOINTMENT_BOOKED),
        ("booked", "booked", None),
        ("booked", "arrived", None),
        (None, "proposed", None),
        ("booked", "cancelled", EventType.APPOINTMENT_CANCELLED),
        ("booked", "noshow", EventType.APPOINTMENT_NOSHOW),
        ("pending", "cancelled", None),
        ("cancelled", "entered-in-error", None),
    ],
)
def test_appointment_transitions(
    mapper: FhirMapper, version: str, before: str | None, after: str, expected: EventType | None
) -> None:
    previous = appointment(before, version=version) if before else None
    assert kind(mapper, appointment(after, version=version, version_id="2"), previous=previous) is expected


@pytest.mark.parametrize("version", VERSIONS)
def test_appointment_cancellation_strikes_the_booking(mapper: FhirMapper, version: str) -> None:
    booked = one(mapper, appointment("booked", version=version), context=CONTEXT)
    cancelled = one(
        mapper,
        appointment("cancelled", version=version, version_id="2"),
        previous=appointment("booked", version=version),
        context=CONTEXT,
    )
    assert booked.patient.mrn is not None and booked.patient.mrn.value == "12345"
    assert booked.encounter.location.unit == "Cardiology clinic"
    assert booked.encounter.attending is not None and booked.encounter.attending.family == "Doctor"
    # The coded service names the appointment; its description is free text: the detail only.
    assert booked.subject is not None and (booked.subject.code, booked.subject.text, booked.subject.detail) == (
        "cardio",
        "Cardiology",
        "Cardiology follow-up",
    )
    assert cancelled.lifecycle is Lifecycle.CANCEL and cancelled.links == {"cancels": "Appointment/a1"}
    assert cancelled.subject is not None and cancelled.subject.key == booked.subject.key
    assert cancelled.thread_key == booked.thread_key == "pat:urn:test:mrn:12345"


# --- Patient merge --------------------------------------------------------------------------------

ISIK_MERGE = "https://gematik.de/fhir/isik/SubscriptionTopic/patient-merge"


def patient(pid: str, mrn: str, **extra: Any) -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": "2"},
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": "urn:test:mrn", "value": mrn}
        ],
        "name": [{"use": "official", "family": "Testpatient", "given": ["Alpha"]}],
        "gender": "female",
        "birthDate": "1980-05-21",
        **extra,
    }


def test_obsolete_record_linking_forward_is_a_merge_naming_both_identities(mapper: FhirMapper) -> None:
    gone = patient("old", "111", active=False, link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}])
    survivor = patient("new", "222", link=[{"other": {"reference": "Patient/old"}, "type": "replaces"}])
    event = one(mapper, gone, context={"Patient/new": survivor})
    assert event.type is EventType.PATIENT_MERGED and event.severity is Severity.NOTICE
    assert event.patient.mrn is not None and event.patient.mrn.value == "222"
    assert event.links == {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"}
    assert event.thread_key == "pat:urn:test:mrn:222"


def test_forward_link_by_identifier_is_enough(mapper: FhirMapper) -> None:
    link = [{"other": {"identifier": {"system": "urn:test:mrn", "value": "222"}}, "type": "replaced-by"}]
    event = one(mapper, patient("old", "111", link=link))
    assert event.links == {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"}
    assert event.patient.mrn is not None and event.patient.mrn.value == "222"


def test_isik_merge_topic_with_the_surviving_record(mapper: FhirMapper) -> None:
    # ISiK: the surviving record links back to the obsolete one by identifier only.
    link = [{"other": {"identifier": {"system": "urn:test:mrn", "value": "111"}}, "type": "replaces"}]
    survivor = patient("new", "222", link=link)
    event = one(mapper, survivor, topic=ISIK_MERGE)
    assert event.links == {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"}
    # Without the topic a record that replaces another is no news by itself.
    assert run(mapper, survivor) == []


def test_isik_merge_topic_with_an_inactive_record_without_links(mapper: FhirMapper) -> None:
    event = one(mapper, patient("old", "111", active=False), topic=ISIK_MERGE)
    assert event.type is EventType.PATIENT_MERGED
    assert event.links == {"replaces": "urn:test:mrn|111"}


def test_merge_links_never_carry_names(mapper: FhirMapper) -> None:
    link = [{"other": {"reference": "Patient/new", "display": "Testpatient, Alpha"}, "type": "replaced-by"}]
    gone = patient("old", "111", link=link)
    del gone["identifier"]
    event = one(mapper, gone)
    assert event.links == {"replaced_by": "Patient/new", "replaces": "Patient/old"}


def test_merged_record_resent_posts_nothing(mapper: FhirMapper) -> None:
    gone = patient("old", "111", active=False, link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}])
    again = versioned(gone, "3", telecom=[{"system": "phone", "value": "000"}])
    assert run(mapper, again, previous=gone) == []


def test_patient_without_merge_is_registered_once_and_updated_only_by_demographics(mapper: FhirMapper) -> None:
    assert mapper.matches(PATIENT)
    assert kind(mapper, PATIENT) is EventType.PATIENT_REGISTERED
    assert run(mapper, copy.deepcopy(PATIENT), previous=PATIENT) == []
    assert run(mapper, {**PATIENT, "telecom": [{"system": "phone", "value": "000"}]}, previous=PATIENT) == []
    assert kind(mapper, {**PATIENT, "birthDate": "1980-05-22"}, previous=PATIENT) is EventType.PATIENT_UPDATED


# --- the engine -----------------------------------------------------------------------------------


def test_bundled_files_are_valid_and_loaded_in_name_order(mapper: FhirMapper) -> None:
    # A fragment (_*.yaml) is only a base; every other file, with its bases under it, is a mapping.
    assert [p.name for p in (mappings_dir() / "fhir").glob("_*.yaml")] == ["_visit.yaml"]
    docs = load_mappings("fhir", [], mappings_dir() / "fhir.schema.json")  # validates each one
    assert [Path(source).name for source, _ in docs] == [
        "appointment.yaml",
        "diagnosticreport.yaml",
        "documentreference.yaml",
        "encounter.yaml",
        "medicationrequest.yaml",
        "observation.yaml",
        "patient.yaml",
        "servicerequest.yaml",
    ]
    assert all("base" not in doc for _, doc in docs)
    assert list(mapper.sources) == [source for source, _ in docs]


def test_schema_event_types_are_the_catalogue() -> None:
    schema = json.loads((mappings_dir() / "fhir.schema.json").read_text(encoding="utf-8"))
    assert set(schema["$defs"]["eventType"]["enum"]) == {t.value for t in EventType}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Encounter"}, True),
        ({"resourceType": "Observation", "status": "unknown"}, True),
        ({"resourceType": "Basic"}, False),
        ({"id": "no-type"}, False),
        ({"resourceType": 7}, False),
    ],
)
def test_matches_by_resource_type(mapper: FhirMapper, resource: Resource, expected: bool) -> None:
    assert mapper.matches(resource) is expected
    if not expected:
        assert run(mapper, resource) == []


ODD: list[Resource] = [
    {"resourceType": "Encounter"},
    {"resourceType": "Encounter", "status": 5, "class": "IMP", "location": {"location": "x"}, "identifier": "V1"},
    {"resourceType": "Encounter", "status": "in-progress", "class": [{"coding": "IMP"}], "subject": "Patient/p1"},
    {"resourceType": "Encounter", "status": ["in-progress"], "meta": "v1", "participant": [None, 3]},
    {"resourceType": "Observation", "status": "final", "interpretation": "HH", "component": {"code": 1}},
    {"resourceType": "Observation", "status": "final", "valueQuantity": {"value": "high"}, "issued": "yesterday"},
    {"resourceType": "Observation", "status": "final", "interpretation": [{"text": ["critical"]}], "code": []},
    {"resourceType": "DiagnosticReport", "status": "final", "result": "Observation/o1", "contained": "x"},
    {"resourceType": "ServiceRequest", "status": "active", "intent": ["order", "plan"], "code": {"concept": 1}},
    {"resourceType": "Appointment", "status": "booked", "participant": {"actor": None}},
    {"resourceType": "Patient", "link": [{"type": "replaced-by", "other": "Patient/x"}], "identifier": [7]},
]


@pytest.mark.parametrize("resource", ODD)
def test_odd_content_never_raises(mapper: FhirMapper, resource: Resource) -> None:
    events = run(mapper, resource, previous=copy.deepcopy(resource), context={"Patient/p1": {"resourceType": 5}})
    assert isinstance(events, list)
    events = run(mapper, resource)
    assert all(isinstance(e, ClinicalEvent) for e in events)


def test_an_expression_failing_on_content_is_logged_without_content(mapper: FhirMapper) -> None:
    secret = "Testpatient-Secret"
    resource = observation("final", interpretation=[{"text": ["critical", secret]}])
    with capture_logs() as logs:
        assert kind(mapper, resource) is EventType.RESULT_FINAL
    failures = [entry for entry in logs if entry["event"] == "fhir.mapping.expression_failed"]
    assert failures and failures[0]["mapping"] == "observation.yaml"
    assert failures[0]["path"] == "$.observations.critical"
    assert secret not in repr(logs)


def test_references_resolve_by_full_url_version_and_contained(mapper: FhirMapper) -> None:
    resource = observation("final", encounter_ref="https://fhir.test/r4/Encounter/e1/_history/2")
    enc = encounter("r4", "in-progress", visit="V777")
    assert one(mapper, resource, context={"https://fhir.test/r4/Encounter/e1": enc}).thread_key == "enc:V777"
    contained = observation("final")
    contained["subject"] = {"reference": "#pat"}
    contained["contained"] = [{**PATIENT, "id": "pat"}]
    assert one(mapper, contained).patient.family == "Testpatient"
    wrong_type = observation("final")
    assert one(mapper, wrong_type, context={"Patient/p1": {**PRACTITIONER, "id": "p1"}}).patient.family is None


def test_time_of_receipt_when_the_resource_has_no_time(mapper: FhirMapper) -> None:
    resource = observation("final")
    del resource["issued"], resource["meta"]["lastUpdated"]
    naive = datetime(2024, 3, 1, 12, 0)
    event = mapper.map_resource(resource, message_id="n9", source="urn:t", received_at=naive, origin={})[0]
    assert event.occurred_at == RECEIVED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15T10:25:00+01:00", datetime(2024, 1, 15, 10, 25, tzinfo=timezone(timedelta(hours=1)))),
        ("2024-01-15T10:25:00.123Z", datetime(2024, 1, 15, 10, 25, 0, 123000, tzinfo=UTC)),
        ("2024-01-15T10:25:00", datetime(2024, 1, 15, 10, 25, tzinfo=UTC)),
        ("2024-01-15", None),  # a day is not a moment: the next source, else receipt
        ("2024-01", None),
        ("2024", None),
        ("2024-13-01", None),
        ("yesterday", None),
    ],
)
def test_fhir_instant(text: str, expected: datetime | None) -> None:
    assert fhir_instant(text) == expected


def write_mapping(folder: Path, name: str, doc: Resource) -> Path:
    (folder / "fhir").mkdir(parents=True, exist_ok=True)
    path = folder / "fhir" / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


MINIMAL: Resource = {
    "match": [{"resourceType": "Basic"}],
    "thread_key": "fhir:Basic/{id}",
    "dedup_key": "{type}:Basic/{id}",
    "rules": [{"when": "code.text = 'merge'", "type": "patient.merged", "severity": "notice"}],
}


@pytest.mark.off_catalogue("a synthetic Basic mapping of the engine test")
def test_extra_folder_adds_fhir_files_and_replaces_bundled_ones_by_name(tmp_path: Path) -> None:
    write_mapping(tmp_path, "basic.yaml", MINIMAL)
    write_mapping(tmp_path, "observation.yaml", {**MINIMAL, "match": [{"resourceType": "Observation"}]})
    (tmp_path / "adt.yaml").write_text("this: is an HL7 file, not read here\n", encoding="utf-8")
    site = FhirMapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert [Path(s).name for s in site.sources][-1] == "basic.yaml"
    assert (
        run(site, {"resourceType": "Basic", "id": "b1", "code": {"text": "merge"}})[0].type is EventType.PATIENT_MERGED
    )
    assert run(site, observation("final", ("HH",))) == []


@pytest.mark.parametrize(
    ("change", "json_path", "message"),
    [
        (
            {"rules": [{"when": "status == 'final'", "type": "result.final", "severity": "notice"}]},
            "$.rules[0].when",
            "FHIRPath",
        ),
        ({"rules": [{"when": "%nope", "type": "result.final", "severity": "notice"}]}, "$.rules[0].when", "%nope"),
        (
            {"rules": [{"when": "resolve().exists()", "type": "result.final", "severity": "notice"}]},
            "$.rules[0].when",
            "resolve()",
        ),
        ({"let": {"previous": "id"}}, "$.let.previous", "reserved"),
        ({"let": {"a": "%b", "b": "id"}}, "$.let.a", "%b"),
        ({"compare": ["%previous.status"]}, "$.compare[0]", "%previous"),
        ({"compare": {"state": "%changed"}}, "$.compare.state", "%changed"),
        ({"compare": {"State": "status"}}, "$.compare", "State"),
        ({"let": {"changed": "id"}}, "$.let.changed", "reserved"),
        ({"let": {"mrn_systems": "id"}}, "$.let.mrn_systems", "reserved"),
        ({"thread_key": "x:{digest}"}, "$.thread_key[0]", "digest"),
        ({"rules": [{"type": "result.final", "severity": "urgent"}]}, "$.rules[0].severity", "urgent"),
        ({"match": [{"resourceType": "observation"}]}, "$.match[0].resourceType", "observation"),
    ],
)
def test_a_broken_file_is_a_mapping_error_naming_file_and_path(
    tmp_path: Path, change: Resource, json_path: str, message: str
) -> None:
    path = write_mapping(tmp_path, "broken.yaml", {**MINIMAL, **change})
    with pytest.raises(MappingError) as caught:
        FhirMapper.load(MappingOptions(extra_paths=(path,)))
    assert "broken.yaml" in str(caught.value) and json_path in str(caught.value)
    assert message in str(caught.value)


# --- %changed and %mrn_systems --------------------------------------------------------------------

#: Rules that say which compared facts changed: named entries, and a list entry named by its text.
CHANGES: Resource = {
    "match": [{"resourceType": "Basic"}],
    "thread_key": "fhir:Basic/{id}",
    "dedup_key": "{type}:Basic/{id}/{meta.versionId}",
    "subject": {"kind": "order", "key": "Basic/{id}", "text": "%changed.join(',')"},
    "rules": [
        {"when": "%previous.empty() and %changed.empty()", "type": "order.placed", "severity": "info"},
        {"when": "%changed contains 'what'", "type": "order.changed", "severity": "info"},
        {"when": "%changed contains 'author.reference'", "type": "order.completed", "severity": "info"},
    ],
}


def basic(version_id: str, code: str = "a", author: str = "Practitioner/d1", note: str = "") -> Resource:
    return {
        "resourceType": "Basic",
        "id": "b1",
        "meta": {"versionId": version_id},
        "code": {"text": code},
        "author": {"reference": author},
        "extension": [{"url": "urn:test:note", "valueString": note}],
    }


@pytest.mark.off_catalogue("a synthetic Basic mapping of the engine test")
@pytest.mark.parametrize(
    ("compare", "before", "after", "expected", "changed"),
    [
        # Named entries: %changed holds the names of those that differ.
        ({"what": "code", "who": "author.reference"}, None, basic("1"), EventType.ORDER_PLACED, None),
        (
            {"what": "code", "who": "author.reference"},
            basic("1"),
            basic("2", code="b"),
            EventType.ORDER_CHANGED,
            "what",
        ),
        (
            {"what": "code", "who": "author.reference"},
            basic("1"),
            basic("2", code="b", author="Practitioner/d2"),
            EventType.ORDER_CHANGED,
            "what,who",
        ),
        # A change of nothing compared: an update storm, no event.
        ({"what": "code", "who": "author.reference"}, basic("1"), basic("2", note="seen"), None, None),
        # A list entry is named by its own text.
        (
            ["code", "author.reference"],
            basic("1"),
            basic("2", author="Practitioner/d2"),
            EventType.ORDER_COMPLETED,
            None,
        ),
    ],
)
def test_changed_names_the_compared_facts_that_differ(
    tmp_path: Path,
    compare: Resource | list[str],
    before: Resource | None,
    after: Resource,
    expected: EventType | None,
    changed: str | None,
) -> None:
    path = write_mapping(tmp_path, "basic.yaml", {**CHANGES, "compare": compare})
    site = FhirMapper.load(MappingOptions(extra_paths=(path,)))
    events = run(site, after, previous=before)
    assert [e.type for e in events] == ([expected] if expected else [])
    if events and changed is not None:
        assert events[0].subject is not None and events[0].subject.text == changed


@pytest.mark.off_catalogue("a synthetic Basic mapping of the engine test")
def test_mrn_systems_are_the_sites_mrn_authorities_in_order(tmp_path: Path) -> None:
    doc = {
        **MINIMAL,
        "rules": [{"type": "patient.registered", "severity": "info"}],
        "patient": {
            "mrn": {
                "from": ["identifier.where(system = %mrn_systems.first())", "identifier.where(system in %mrn_systems)"],
                "value": "value",
                "authority": "system",
            }
        },
    }
    path = write_mapping(tmp_path, "basic.yaml", doc)
    resource = {
        "resourceType": "Basic",
        "id": "b1",
        "identifier": [
            {"system": "urn:test:other", "value": "1"},
            {"system": "urn:test:b", "value": "2"},
            {"system": "urn:test:a", "value": "3"},
        ],
    }
    mrn = [
        one(FhirMapper.load(MappingOptions(extra_paths=(path,), mrn_authorities=sites)), resource).patient.mrn
        for sites in (("urn:test:a", "urn:test:b"), ("urn:test:none", "urn:test:b"), ())
    ]
    assert [(m.authority, m.value) if m else None for m in mrn] == [("urn:test:a", "3"), ("urn:test:b", "2"), None]


def test_bundled_mappings_prefer_the_sites_mrn_system() -> None:
    resource = observation("final")
    site = FhirMapper.load(MappingOptions(mrn_authorities=("urn:oid:1.2.276.0.76.4.8",)))
    event = one(site, resource, context=CONTEXT)
    assert event.patient.mrn is not None
    assert (event.patient.mrn.authority, event.patient.mrn.value) == ("urn:oid:1.2.276.0.76.4.8", "X110000001")
    # Without site systems the identifier of type MR.
    assert one(FhirMapper.load(), resource, context=CONTEXT).patient.mrn == Identifier(
        value="12345", authority="urn:test:mrn", type="MR"
    )


# --- times without a UTC equivalent (review #4 finding 17); errors in an overlay's rules_first (18) ----


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999-00:01"]
)
def test_an_instant_without_a_utc_equivalent_is_none(text: str) -> None:
    assert fhir_instant(text) is None


def test_an_instant_at_the_edge_of_time_with_a_utc_equivalent_stays() -> None:
    assert fhir_instant("9999-12-31T23:59:59Z") == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert fhir_instant("0001-01-01T10:00:00+09:00") == datetime(1, 1, 1, 1, 0, tzinfo=UTC)


def test_a_resource_time_without_a_utc_equivalent_falls_back_to_receipt(mapper: FhirMapper) -> None:
    resource = observation("final")
    resource["issued"] = resource["meta"]["lastUpdated"] = "9999-12-31T23:59:59-14:00"
    assert one(mapper, resource, context=CONTEXT).occurred_at == RECEIVED


def test_an_error_in_an_overlays_rules_first_names_the_overlay_and_its_own_path(tmp_path: Path) -> None:
    bad = {"when": "status == 'final'", "type": "result.final", "severity": "notice"}
    good = {"when": "status = 'final'", "type": "result.final", "severity": "notice"}
    path = write_mapping(tmp_path, "observation-site.yaml", {"extends": "observation.yaml", "rules_first": [good, bad]})
    with pytest.raises(MappingError) as caught:
        FhirMapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert (caught.value.source, caught.value.path) == (str(path), "$.rules_first[1].when")
    assert "FHIRPath" in str(caught.value)
