"""Golden tests of mappings/fhir/appointment.yaml: synthetic R4 and R5 Appointments → appointment events.

R4 names the patient among the participants only and has reasonCode; R5 also names it
in subject, makes serviceType a CodeableReference (serviceType.concept) and reason one
CodeableReference list, and adds class.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

Resource = dict[str, Any]

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VERSIONS = ["r4", "r5"]


def appointment(
    status: str = "booked",
    *,
    version: str = "r4",
    version_id: str = "1",
    start: str = "2024-02-01T09:00:00Z",
    end: str = "2024-02-01T09:30:00Z",
    service: str = "cardio",
    clinician: tuple[str, str] = ("Practitioner/d1", "Dr Test Doctor"),
    reason: str | None = None,
) -> Resource:
    resource: Resource = {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-20T15:00:00Z"},
        "status": status,
        "description": "Cardiology follow-up",
        "start": start,
        "end": end,
        "created": "2024-01-10",
        "participant": [
            {"actor": {"reference": "Patient/p1", "display": "Alpha Testpatient"}, "status": "accepted"},
            {
                "type": [{"coding": [{"code": "ATND"}]}],
                "actor": {"reference": clinician[0], "display": clinician[1]},
                "status": "accepted",
            },
            {"actor": {"reference": "Location/clinic", "display": "Cardiology clinic"}, "status": "accepted"},
        ],
    }
    concept = {"coding": [{"code": service, "display": service.title()}]}
    if version == "r5":
        resource["subject"] = {"reference": "Patient/p1"}
        resource["serviceType"] = [{"concept": concept}]
        resource["class"] = [{"coding": [{"system": ACT, "code": "AMB"}]}]
        if reason:
            resource["reason"] = [{"concept": {"text": reason}}]
    else:
        resource["serviceType"] = [concept]
        if reason:
            resource["reasonCode"] = [{"text": reason}]
    return resource


@pytest.fixture
def base(context_patient: dict[str, Any]) -> dict[str, Any]:
    """A cardiology follow-up booked for Patient/p1, as its fields read (R4: no class)."""
    return {
        "type": "appointment.booked",
        "severity": "info",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "appointment",
            "key": "Appointment/a1",
            "code": "cardio",
            # The coded service as named; the description is free text: detail only.
            "text": "Cardio",
            "status": "booked",
            "start": "2024-02-01T09:00:00Z",
            "end": "2024-02-01T09:30:00Z",
            "detail": "Cardiology follow-up",
        },
        "patient": context_patient,
        "encounter": {
            "visit_number": None,
            "patient_class": None,
            "location": "Cardiology clinic",
            "prior_location": None,
            "attending": "Dr Test Doctor",
            "admitted_at": None,
            "discharged_at": None,
        },
        # An appointment has no visit yet: the patient's thread.
        "thread_key": "pat:urn:test:mrn:12345",
        "occurred_at": "2024-01-20T15:00:00+00:00",
        "dedup_key": "appointment.booked:Appointment/a1/_history/1",
    }


def by_version(base: dict[str, Any], version: str, expect: Any, **changes: Any) -> dict[str, Any]:
    """``base`` with ``changes``, and R5's ambulatory class."""
    expected = expect(base, **changes)
    if version == "r5":
        expected["encounter"] = {**expected["encounter"], "patient_class": "O"}
    return expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("before", [None, "proposed", "pending", "waitlist"])
def test_an_appointment_that_becomes_booked_is_booked(
    version: str, before: str | None, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    previous = appointment(before, version=version) if before else None
    event = map_one(appointment(version=version, version_id="2"), previous=previous, context=fhir_context(version))
    assert fields(event) == by_version(base, version, expect, dedup_key="appointment.booked:Appointment/a1/_history/2")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "change",
    [
        {"start": "2024-02-02T14:00:00Z", "end": "2024-02-02T14:30:00Z"},
        {"end": "2024-02-01T10:00:00Z"},
        # Another time and another clinician: the time is the news.
        {"start": "2024-02-02T14:00:00Z", "clinician": ("Practitioner/d2", "Dr Other Doctor")},
    ],
)
def test_another_time_reschedules_the_booking(
    version: str,
    change: dict[str, Any],
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        appointment(version=version, version_id="2", **change),
        previous=appointment(version=version),
        context=fhir_context(version),
    )
    expected = by_version(
        base,
        version,
        expect,
        type="appointment.rescheduled",
        severity="notice",
        lifecycle="correct",
        links={"corrects": "Appointment/a1"},
        subject={
            "start": change.get("start", "2024-02-01T09:00:00Z"),
            "end": change.get("end", "2024-02-01T09:30:00Z"),
        },
        dedup_key="appointment.rescheduled:Appointment/a1/_history/2",
    )
    if "clinician" in change:
        expected["encounter"]["attending"] = "Dr Other Doctor"
    assert fields(event) == expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("change", "subject", "attending"),
    [
        ({"clinician": ("Practitioner/d2", "Dr Other Doctor")}, {}, "Dr Other Doctor"),
        ({"service": "angio"}, {"code": "angio", "text": "Angio"}, "Dr Test Doctor"),
        ({"reason": "Chest pain"}, {}, "Dr Test Doctor"),
    ],
)
def test_other_details_modify_the_booking(
    version: str,
    change: dict[str, Any],
    subject: dict[str, Any],
    attending: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        appointment(version=version, version_id="2", **change),
        previous=appointment(version=version),
        context=fhir_context(version),
    )
    expected = by_version(
        base,
        version,
        expect,
        type="appointment.modified",
        lifecycle="correct",
        links={"corrects": "Appointment/a1"},
        subject=subject,
        dedup_key="appointment.modified:Appointment/a1/_history/2",
    )
    expected["encounter"]["attending"] = attending
    assert fields(event) == expected


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_a_cancelled_booking_is_struck(
    version: str, status: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(
        appointment(status, version=version, version_id="2"),
        previous=appointment(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == by_version(
        base,
        version,
        expect,
        type="appointment.cancelled",
        severity="notice",
        lifecycle="cancel",
        links={"cancels": "Appointment/a1"},
        subject={"status": status},
        dedup_key="appointment.cancelled:Appointment/a1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_no_show_is_a_reply_to_the_booking(
    version: str, map_one: Any, fields: Any, expect: Any, base: dict[str, Any], fhir_context: Any
) -> None:
    event = map_one(
        appointment("noshow", version=version, version_id="2"),
        previous=appointment(version=version),
        context=fhir_context(version),
    )
    assert fields(event) == by_version(
        base,
        version,
        expect,
        type="appointment.noshow",
        severity="notice",
        lifecycle="update",
        subject={"status": "noshow"},
        dedup_key="appointment.noshow:Appointment/a1/_history/2",
    )


def _declined(resource: Resource) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = "2"
    new["participant"][1]["status"] = "declined"
    new["comment"] = "please bring the letter"
    return new


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("before", "after"),
    [
        # The booking as it was: a participant answering, a comment; arrival, check-in, fulfilment.
        ("booked", None),
        ("booked", "arrived"),
        ("booked", "checked-in"),
        ("arrived", "fulfilled"),
        # Never booked, so nothing to strike; nothing twice; a no-show is the last word.
        (None, "proposed"),
        ("pending", "cancelled"),
        ("cancelled", "entered-in-error"),
        ("noshow", "cancelled"),
        ("noshow", "noshow"),
    ],
)
def test_versions_that_post_nothing(version: str, before: str | None, after: str | None, map_fhir: Any) -> None:
    previous = appointment(before, version=version) if before else None
    current = _declined(appointment(before, version=version)) if after is None else appointment(after, version=version)
    if after == "noshow":
        current["comment"] = "called twice"
    assert map_fhir(current, previous=previous) == []


def test_without_the_patient_at_hand_the_reference_gives_the_thread(map_one: Any) -> None:
    event = map_one(appointment())
    assert (event.patient.mrn, event.patient.family, event.thread_key) == (None, "Alpha Testpatient", "fhir-pat:p1")
