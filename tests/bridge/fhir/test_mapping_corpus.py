"""The bundled FHIR mappings against the shared corpus of published FHIR examples (R4 and R5).

Skipped when ``../shared/corpus/fhir`` is not checked out next to the repository.
Expectations are derived from each file's content (status, class, interpretation),
never from file names. Nothing here prints resource content.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.events import ClinicalEvent, EventType, Severity
from bridge.fhir.mapping import FhirMapper

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "fhir"
RESOURCES = CORPUS / "resources"
NOTIFICATIONS = CORPUS / "notifications"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

pytestmark = pytest.mark.skipif(not RESOURCES.is_dir(), reason="shared FHIR corpus not checked out")

Resource = dict[str, Any]


def corpus(resource_type: str | None = None) -> list[Path]:
    """Every resource file under resources/{r4,r5}/<Type>/ (optionally of one resource type)."""
    if not RESOURCES.is_dir():
        return []
    files = sorted(p for p in RESOURCES.glob("r*/*/*.json") if p.is_file())
    if resource_type is None:
        return files
    return [p for p in files if load(p).get("resourceType") == resource_type]


def load(path: Path) -> Resource:
    found = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(found, dict)
    return found


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(RESOURCES)) for p in paths]


@pytest.fixture(scope="module")
def mapper() -> FhirMapper:
    return FhirMapper.load()


def run(mapper: FhirMapper, resource: Resource, **kwargs: Any) -> list[ClinicalEvent]:
    return mapper.map_resource(
        resource,
        message_id="corpus",
        source="urn:ehr-bridge:fhir:corpus",
        received_at=datetime(2024, 3, 1, tzinfo=UTC),
        origin={},
        **kwargs,
    )


def codes(resource: Resource) -> set[str]:
    """Interpretation codes of the observation and its components (v3 or no system)."""
    found: set[str] = set()
    for element in [resource, *resource.get("component", [])]:
        for interpretation in element.get("interpretation", []):
            for coding in interpretation.get("coding", []):
                if coding.get("system") in (None, V3):
                    found.add(str(coding.get("code", "")).upper())
    return found


def says_critical(resource: Resource) -> bool:
    """HH, LL, AA, or an interpretation whose code, display or text says critical."""
    if codes(resource) & {"HH", "LL", "AA"}:
        return True
    for element in [resource, *resource.get("component", [])]:
        for interpretation in element.get("interpretation", []):
            texts = [interpretation.get("text", "")]
            for coding in interpretation.get("coding", []):
                texts += [coding.get("code", ""), coding.get("display", "")]
            if any(str(t).lower().startswith("critical") for t in texts):
                return True
    return False


@pytest.mark.parametrize("path", corpus(), ids=ids(corpus()))
def test_every_corpus_resource_maps_and_a_resend_is_silent(mapper: FhirMapper, path: Path) -> None:
    resource = load(path)
    assert mapper.matches(resource), "every resource type in the corpus has a bundled mapping"
    events = run(mapper, resource)
    assert len(events) <= 1
    for event in events:
        assert event.thread_key and event.dedup_key
    # The same version seen again (an update storm of identical PUTs) makes no event.
    assert run(mapper, copy.deepcopy(resource), previous=resource) == []


#: Released results (not withdrawn ones) whose interpretation is critical. The published
#: examples may hold none: then the next test makes critical ones out of the high and low.
CRITICAL = [
    p
    for p in corpus("Observation")
    if load(p).get("status") in ("preliminary", "final", "corrected", "amended") and says_critical(load(p))
]


@pytest.mark.parametrize("path", CRITICAL, ids=ids(CRITICAL))
def test_critical_interpretations_in_the_corpus_are_critical_results(mapper: FhirMapper, path: Path) -> None:
    resource = load(path)
    expected = (
        EventType.RESULT_CORRECTED if resource["status"] in ("corrected", "amended") else EventType.RESULT_CRITICAL
    )
    assert [(e.type, e.severity) for e in run(mapper, resource)] == [(expected, Severity.CRITICAL)]


ABNORMAL = [p for p in corpus("Observation") if load(p).get("status") == "final" and codes(load(p)) & {"H", "L"}]


@pytest.mark.parametrize("path", ABNORMAL, ids=ids(ABNORMAL))
def test_high_and_low_results_are_warnings_and_critical_when_made_hh_or_ll(mapper: FhirMapper, path: Path) -> None:
    resource = load(path)
    assert [(e.type, e.severity) for e in run(mapper, resource)] == [(EventType.RESULT_FINAL, Severity.WARNING)]
    critical = copy.deepcopy(resource)
    for element in [critical, *critical.get("component", [])]:
        for interpretation in element.get("interpretation", []):
            for coding in interpretation.get("coding", []):
                if coding.get("system") in (None, V3) and coding.get("code") in ("H", "L"):
                    coding["code"] = coding["code"] * 2
    events = run(mapper, critical)
    assert [(e.type, e.severity) for e in events] == [(EventType.RESULT_CRITICAL, Severity.CRITICAL)]
    assert events[0].subject is not None and any(o.critical for o in events[0].subject.observations)


#: Observation.status → the event types a first-seen version may make.
RESULT_TYPES = {
    "registered": {EventType.RESULT_PRELIMINARY},
    "preliminary": {EventType.RESULT_PRELIMINARY, EventType.RESULT_CRITICAL},
    "final": {EventType.RESULT_FINAL, EventType.RESULT_CRITICAL},
    "amended": {EventType.RESULT_CORRECTED},
    "corrected": {EventType.RESULT_CORRECTED},
    "cancelled": {EventType.RESULT_RETRACTED},
    "entered-in-error": {EventType.RESULT_RETRACTED},
    "unknown": set(),
}


@pytest.mark.parametrize("path", corpus("Observation"), ids=ids(corpus("Observation")))
def test_observation_event_type_follows_its_status(mapper: FhirMapper, path: Path) -> None:
    resource = load(path)
    events = run(mapper, resource)
    allowed = RESULT_TYPES[resource["status"]]
    assert {e.type for e in events} <= allowed and len(events) == (1 if allowed else 0)


INPATIENT = {"IMP", "ACUTE", "NONAC"}


def encounter_classes(resource: Resource) -> set[str]:
    cls = resource.get("class")
    if isinstance(cls, dict):
        return {cls.get("code", "")}
    return {c.get("code", "") for concept in cls or [] for c in concept.get("coding", [])}


@pytest.mark.parametrize("path", corpus("Encounter"), ids=ids(corpus("Encounter")))
def test_encounter_event_type_follows_status_and_class(mapper: FhirMapper, path: Path) -> None:
    resource = load(path)
    status = resource["status"]
    if status == "in-progress":
        expected = [
            EventType.ENCOUNTER_ADMITTED if encounter_classes(resource) & INPATIENT else EventType.ENCOUNTER_ARRIVED
        ]
    elif status in ("finished", "completed", "discharged", "discontinued"):
        expected = [EventType.ENCOUNTER_DISCHARGED]
    elif status in ("cancelled", "entered-in-error"):
        expected = [EventType.ENCOUNTER_CANCELLED]
    elif status == "planned":
        expected = [EventType.ENCOUNTER_PREADMITTED]
    elif status in ("arrived", "triaged"):
        expected = [EventType.ENCOUNTER_ARRIVED]
    elif status in ("onleave", "on-hold"):
        expected = [EventType.ENCOUNTER_LEAVE_OF_ABSENCE]
    else:
        expected = []
    assert [e.type for e in run(mapper, resource)] == expected


def notification_focuses() -> list[tuple[str, Resource, dict[str, Resource]]]:
    """(file, focus resource, the bundle's resources by fullUrl) for every full-resource focus."""
    if not NOTIFICATIONS.is_dir():
        return []
    found: list[tuple[str, Resource, dict[str, Resource]]] = []
    for path in sorted(NOTIFICATIONS.glob("*/*.json")):
        bundle = load(path)
        entries = bundle.get("entry", [])
        context = {e["fullUrl"]: e["resource"] for e in entries if "resource" in e and "fullUrl" in e}
        for entry in entries[1:]:
            resource = entry.get("resource")
            if resource is not None and resource.get("resourceType") != "Patient":
                found.append((str(path.relative_to(NOTIFICATIONS)), resource, context))
    return found


@pytest.mark.parametrize(
    ("name", "resource", "context"), notification_focuses(), ids=[n for n, _, _ in notification_focuses()]
)
def test_notification_focus_resources_make_events(
    mapper: FhirMapper, name: str, resource: Resource, context: dict[str, Resource]
) -> None:
    events = run(mapper, resource, context=context)
    assert len(events) == 1, name
