"""Golden tests of mappings/fhir/patient.yaml: synthetic Patients → registered, updated, merged, field by field.

Patient has the same shape in R4 and R5 for everything mapped here (identifier, name,
gender, birthDate, deceased[x], active, link).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

Resource = dict[str, Any]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ISIK_MERGE = "https://gematik.de/fhir/isik/SubscriptionTopic/patient-merge"


def patient(pid: str = "p1", mrn: str = "12345", *, version_id: str = "1", **extra: Any) -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T09:00:00Z"},
        "identifier": [
            {"system": "urn:test:insurance", "value": f"X{mrn}"},
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "system": "urn:test:mrn", "value": mrn},
        ],
        "active": True,
        "name": [{"use": "official", "family": "Testpatient", "given": ["Alpha"]}],
        "telecom": [{"system": "phone", "value": "000-0000"}],
        "gender": "female",
        "birthDate": "1980-05-21",
        **extra,
    }


def changed(resource: Resource, **changes: Any) -> Resource:
    """The next version of ``resource`` with ``changes``."""
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = str(int(new["meta"]["versionId"]) + 1)
    new.update(changes)
    return new


NO_VISIT = {
    "visit_number": None,
    "patient_class": None,
    "location": None,
    "prior_location": None,
    "attending": None,
    "admitted_at": None,
    "discharged_at": None,
}


@pytest.fixture
def base() -> dict[str, Any]:
    """Patient/p1 registered, as its fields read; each test changes what differs."""
    return {
        "type": "patient.registered",
        "severity": "info",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "patient",
            "key": "Patient/p1",
            "code": None,
            "text": None,
            "status": None,
            "start": None,
            "end": None,
            "detail": None,
        },
        "patient": {
            "mrn": "urn:test:mrn|12345",
            "family": "Testpatient",
            "given": "Alpha",
            "birth_date": "1980-05-21",
            "sex": "F",
        },
        "encounter": NO_VISIT,
        "thread_key": "pat:urn:test:mrn:12345",
        "occurred_at": "2024-01-15T09:00:00+00:00",
        "dedup_key": "patient.registered:Patient/p1/_history/1",
    }


# --- registered and updated -------------------------------------------------------------------------


def test_a_patient_seen_the_first_time_is_registered(map_one: Any, fields: Any, base: dict[str, Any]) -> None:
    assert fields(map_one(patient())) == base


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"telecom": [{"system": "phone", "value": "111-1111"}]},
        {"address": [{"city": "Testcity"}]},
        {"contact": [{"name": {"family": "Testrelative"}}]},
        {"meta": {"versionId": "2", "lastUpdated": "2024-01-16T09:00:00Z"}},
    ],
)
def test_a_resent_or_otherwise_edited_patient_posts_nothing(change: Resource, map_fhir: Any) -> None:
    before = patient()
    assert map_fhir(changed(before, **change), previous=before) == []


@pytest.mark.parametrize(
    ("change", "patient_fields", "severity"),
    [
        (
            {"name": [{"use": "official", "family": "Newname", "given": ["Alpha"]}]},
            {"family": "Newname"},
            "info",
        ),
        ({"birthDate": "1980-05-12"}, {"birth_date": "1980-05-12"}, "info"),
        ({"gender": "other"}, {"sex": "O"}, "info"),
        (
            {
                "identifier": [
                    {
                        "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
                        "system": "urn:test:mrn",
                        "value": "12345",
                    }
                ]
            },
            {},
            "info",
        ),
        # A death recorded is worth seeing today.
        ({"deceasedBoolean": True}, {}, "notice"),
        ({"deceasedDateTime": "2024-01-16T03:00:00+01:00"}, {}, "notice"),
    ],
)
def test_changed_demographics_are_an_update(
    change: Resource,
    patient_fields: dict[str, str],
    severity: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
) -> None:
    before = patient()
    event = map_one(changed(before, **change), previous=before)
    assert fields(event) == expect(
        base,
        type="patient.updated",
        severity=severity,
        patient=patient_fields,
        dedup_key="patient.updated:Patient/p1/_history/2",
    )


def test_a_death_already_recorded_is_no_notice_again(map_one: Any) -> None:
    dead = patient(deceasedDateTime="2024-01-16T03:00:00+01:00")
    corrected = changed(dead, deceasedDateTime="2024-01-16T02:30:00+01:00")
    event = map_one(corrected, previous=dead)
    assert (event.type.value, event.severity.value) == ("patient.updated", "info")


def test_the_sites_mrn_system_is_preferred(map_one: Any) -> None:
    event = map_one(patient(), mrn_authorities=["urn:test:nowhere", "urn:test:insurance"])
    assert event.patient.mrn is not None
    assert (event.patient.mrn.authority, event.patient.mrn.value) == ("urn:test:insurance", "X12345")
    assert event.thread_key == "pat:urn:test:insurance:X12345"


# --- merged ---------------------------------------------------------------------------------------


def test_the_obsolete_record_linking_forward_is_a_merge_naming_both_identities(
    map_one: Any, fields: Any, expect: Any, base: dict[str, Any]
) -> None:
    survivor = patient("new", "222", link=[{"other": {"reference": "Patient/old"}, "type": "replaces"}])
    before = patient("old", "111")
    gone = changed(before, active=False, link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}])
    event = map_one(gone, previous=before, context={"Patient/new": survivor})
    assert fields(event) == expect(
        base,
        type="patient.merged",
        severity="notice",
        links={"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"},
        subject={"key": "Patient/old"},
        # The event's patient is the survivor: after the merge, its thread is the patient's.
        patient={"mrn": "urn:test:mrn|222"},
        thread_key="pat:urn:test:mrn:222",
        dedup_key="patient.merged:Patient/old/_history/2",
    )


def test_merge_links_name_the_sites_mrn_system_as_the_patient_mrn_does(map_one: Any) -> None:
    # The MR-typed identifier is urn:test:mrn, but the site's MRN system is the other one: the
    # links name the same identity as patient.mrn, so a receiver can match them.
    survivor = patient("new", "222", link=[{"other": {"reference": "Patient/old"}, "type": "replaces"}])
    before = patient("old", "111")
    gone = changed(before, active=False, link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}])
    sites = ["urn:test:nowhere", "urn:test:insurance"]
    event = map_one(gone, previous=before, context={"Patient/new": survivor}, mrn_authorities=sites)
    assert event.patient.mrn is not None
    assert (event.patient.mrn.authority, event.patient.mrn.value) == ("urn:test:insurance", "X222")
    assert event.links == {"replaced_by": "urn:test:insurance|X222", "replaces": "urn:test:insurance|X111"}
    # The first of the site's systems wins, whatever the order of the identifiers in the record.
    first = map_one(
        gone, previous=before, context={"Patient/new": survivor}, mrn_authorities=["urn:test:mrn", "urn:test:insurance"]
    )
    assert first.links == {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"}


def test_a_forward_link_by_identifier_alone_is_enough(map_one: Any) -> None:
    link = [{"other": {"identifier": {"system": "urn:test:mrn", "value": "222"}}, "type": "replaced-by"}]
    event = map_one(patient("old", "111", active=False, link=link))
    assert event.type.value == "patient.merged"
    assert event.links == {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"}
    assert event.patient.mrn is not None and event.patient.mrn.value == "222"


def test_a_merge_topic_notifies_the_surviving_record(map_one: Any) -> None:
    # ISiK: the survivor links back to the obsolete record by identifier only.
    link = [{"other": {"identifier": {"system": "urn:test:mrn", "value": "111"}}, "type": "replaces"}]
    event = map_one(patient("new", "222", link=link), topic=ISIK_MERGE)
    assert (event.type.value, event.links) == (
        "patient.merged",
        {"replaced_by": "urn:test:mrn|222", "replaces": "urn:test:mrn|111"},
    )


@pytest.mark.parametrize(
    ("before", "after", "topic"),
    [
        # The survivor, first seen or gaining its back link, without the merge topic: the
        # obsolete record's forward link announces the merge.
        (None, patient("new", "222", link=[{"other": {"reference": "Patient/old"}, "type": "replaces"}]), None),
        (
            patient("new", "222"),
            patient("new", "222", version_id="2", link=[{"other": {"reference": "Patient/old"}, "type": "replaces"}]),
            None,
        ),
        # A merged record re-sent, or edited after the merge: no second merge, no update.
        (
            patient("old", "111", active=False, link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}]),
            patient(
                "old",
                "111",
                version_id="2",
                active=False,
                link=[{"other": {"reference": "Patient/new"}, "type": "replaced-by"}],
                name=[{"family": "Othername"}],
            ),
            None,
        ),
        # A record no longer in use, first seen without a merge topic: not a registration.
        (None, patient("old", "111", active=False), None),
    ],
)
def test_the_other_side_of_a_merge_posts_nothing(
    before: Resource | None, after: Resource, topic: str | None, map_fhir: Any
) -> None:
    assert map_fhir(after, previous=before, topic=topic) == []


def test_merge_links_never_carry_names(map_one: Any) -> None:
    gone = patient(
        "old",
        "111",
        link=[{"other": {"reference": "Patient/new", "display": "Testpatient, Alpha"}, "type": "replaced-by"}],
    )
    del gone["identifier"]
    event = map_one(gone)
    assert event.links == {"replaced_by": "Patient/new", "replaces": "Patient/old"}
