"""Shared fixtures of the FHIR golden tests (one module per mapping file in mappings/fhir/).

A golden test writes SYNTHETIC resources in the test (R4 and R5 where they differ), maps
each version with the version before it (``previous``) and compares the event(s) field by
field. Helpers are fixtures (importlib mode: a test module cannot import this conftest):

* ``map_fhir``: ``map_fhir(resource, *, previous=None, context=None, topic=None,
  mrn_authorities=(), message_id="n1")`` → the events the bundled mappings make of it;
* ``map_one``: the same, asserting exactly one event and returning it;
* ``fields``: ``fields(event)`` → the fields a golden compares, as plain data: type,
  severity, lifecycle, links, subject (without result lines), patient (MRN as
  "system|value"), encounter (locations and attending as displayed, admitted_at,
  discharged_at), thread_key, occurred_at, dedup_key;
* ``expect``: ``expect(base, **changes)`` → ``base`` with top-level keys replaced, and
  keys of the nested dicts ``subject``, ``patient`` and ``encounter`` merged;
* ``fhir_context``: ``fhir_context(version)`` → the resources that come with a
  notification (Patient/p1, Practitioner/d1, Encounter/e1 in R4 or R5 shape), and
  ``context_patient`` / ``context_visit``: what events read from them, as ``fields`` shows.

Every name and number is invented: patient "Testpatient, Alpha" (MRN 12345 of
urn:test:mrn), visit V555 on Ward 4E of "Test Hospital", attending "Dr Test Doctor".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import pytest

from bridge.events import ClinicalEvent
from bridge.fhir.mapping import FhirMapper
from bridge.mapping import MappingOptions

Resource = dict[str, Any]

#: When every golden resource is "received"; occurred_at falls back to it when no time reads.
RECEIVED_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SOURCE = "urn:ehr-bridge:fhir:golden"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


class MapFhir(Protocol):
    def __call__(
        self,
        resource: Resource,
        *,
        previous: Resource | None = None,
        context: Mapping[str, Resource] | None = None,
        topic: str | None = None,
        mrn_authorities: Iterable[str] = (),
        message_id: str = "n1",
    ) -> list[ClinicalEvent]: ...


class MapOne(Protocol):
    def __call__(
        self,
        resource: Resource,
        *,
        previous: Resource | None = None,
        context: Mapping[str, Resource] | None = None,
        topic: str | None = None,
        mrn_authorities: Iterable[str] = (),
        message_id: str = "n1",
    ) -> ClinicalEvent: ...


@pytest.fixture(scope="session")
def fhir_mapper() -> FhirMapper:
    """The bundled FHIR mappings with default options."""
    return FhirMapper.load()


@pytest.fixture(scope="session")
def map_fhir(fhir_mapper: FhirMapper) -> MapFhir:
    """Map one resource version with the bundled mappings; site MRN systems build (and cache) another mapper."""
    cache: dict[tuple[str, ...], FhirMapper] = {(): fhir_mapper}

    def run(
        resource: Resource,
        *,
        previous: Resource | None = None,
        context: Mapping[str, Resource] | None = None,
        topic: str | None = None,
        mrn_authorities: Iterable[str] = (),
        message_id: str = "n1",
    ) -> list[ClinicalEvent]:
        key = tuple(mrn_authorities)
        if key not in cache:
            cache[key] = FhirMapper.load(MappingOptions(mrn_authorities=key))
        return cache[key].map_resource(
            resource,
            message_id=message_id,
            source=SOURCE,
            received_at=RECEIVED_AT,
            origin={"subscription": "golden"},
            previous=previous,
            context=dict(context) if context is not None else None,
            topic=topic,
        )

    return run


@pytest.fixture(scope="session")
def map_one(map_fhir: MapFhir) -> MapOne:
    """Like ``map_fhir``, for a version that must make exactly one event."""

    def run(
        resource: Resource,
        *,
        previous: Resource | None = None,
        context: Mapping[str, Resource] | None = None,
        topic: str | None = None,
        mrn_authorities: Iterable[str] = (),
        message_id: str = "n1",
    ) -> ClinicalEvent:
        events = map_fhir(
            resource,
            previous=previous,
            context=context,
            topic=topic,
            mrn_authorities=mrn_authorities,
            message_id=message_id,
        )
        assert len(events) == 1, [e.type.value for e in events]
        return events[0]

    return run


def _fields(event: ClinicalEvent) -> dict[str, Any]:
    subject = event.subject.model_dump(mode="json", exclude={"observations"}) if event.subject else None
    mrn = event.patient.mrn
    encounter = event.encounter
    return {
        "type": event.type.value,
        "severity": event.severity.value,
        "lifecycle": event.lifecycle.value,
        "links": dict(event.links),
        "subject": subject,
        "patient": {
            "mrn": f"{mrn.authority}|{mrn.value}" if mrn is not None else None,
            "family": event.patient.family,
            "given": event.patient.given,
            "birth_date": event.patient.birth_date,
            "sex": event.patient.sex,
        },
        "encounter": {
            "visit_number": encounter.visit_number,
            "patient_class": encounter.patient_class,
            "location": encounter.location.display or None,
            "prior_location": encounter.prior_location.display if encounter.prior_location else None,
            "attending": encounter.attending.display if encounter.attending else None,
            "admitted_at": encounter.admitted_at,
            "discharged_at": encounter.discharged_at,
        },
        "thread_key": event.thread_key,
        "occurred_at": event.occurred_at.isoformat(),
        "dedup_key": event.dedup_key,
    }


@pytest.fixture(scope="session")
def fields() -> Callable[[ClinicalEvent], dict[str, Any]]:
    """The fields a golden test compares, as plain data (see the module docstring)."""
    return _fields


def _expect(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if key in ("subject", "patient", "encounter") and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


@pytest.fixture(scope="session")
def expect() -> Callable[..., dict[str, Any]]:
    """``expect(base, **changes)``: an expectation built from a base one (nested dicts merged)."""
    return _expect


# --- the resources that come with a notification ------------------------------------------------

PATIENT: Resource = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"system": "urn:test:insurance", "value": "X110000001"},
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


def _visit(version: str) -> Resource:
    """Encounter e1: inpatient visit V555 on Ward 4E, Room 136, Bed B of Test Hospital."""
    r5 = version == "r5"
    kind = "form" if r5 else "physicalType"
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "identifier": [
            {"type": {"coding": [{"system": V2_0203, "code": "VN"}]}, "system": "urn:test:visits", "value": "V555"}
        ],
        "status": "in-progress",
        "class": [{"coding": [{"system": ACT, "code": "IMP"}]}] if r5 else {"system": ACT, "code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "participant": [
            {
                "type": [{"coding": [{"code": "ATND"}]}],
                ("actor" if r5 else "individual"): {"reference": "Practitioner/d1", "display": "Dr Test Doctor"},
            }
        ],
        "serviceProvider": {"display": "Test Hospital"},
        "location": [
            {"location": {"reference": ref, "display": text}, "status": "active", kind: {"coding": [{"code": code}]}}
            for ref, text, code in (
                ("Location/w4e", "Ward 4E", "wa"),
                ("Location/r136", "Room 136", "ro"),
                ("Location/b136b", "Bed B", "bd"),
            )
        ],
    }


@pytest.fixture(scope="session")
def fhir_context() -> Callable[[str], dict[str, Resource]]:
    """``fhir_context(version)``: Patient/p1, Practitioner/d1 and Encounter/e1 as a notification brings them."""

    def build(version: str) -> dict[str, Resource]:
        return {
            "Patient/p1": copy.deepcopy(PATIENT),
            "Practitioner/d1": copy.deepcopy(PRACTITIONER),
            "Encounter/e1": _visit(version),
        }

    return build


@pytest.fixture(scope="session")
def context_patient() -> dict[str, Any]:
    """The ``patient`` of ``fields`` for an event about Patient/p1 of ``fhir_context``."""
    return {
        "mrn": "urn:test:mrn|12345",
        "family": "Testpatient",
        "given": "Alpha",
        "birth_date": "1980-05-21",
        "sex": "F",
    }


@pytest.fixture(scope="session")
def context_visit() -> dict[str, Any]:
    """The ``encounter`` of ``fields`` for an event in Encounter/e1 of ``fhir_context``."""
    return {
        "visit_number": "V555",
        "patient_class": "I",
        "location": "Test Hospital/Ward 4E/Room 136/Bed B",
        "prior_location": None,
        "attending": "Dr Test Doctor",
        "admitted_at": None,
        "discharged_at": None,
    }
