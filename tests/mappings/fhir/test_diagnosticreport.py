"""Golden tests of mappings/fhir/diagnosticreport.yaml: synthetic reports with their results → events.

R4 and R5 differ in what is mapped here only by R5's "modified" status (changed before
it was final) and its conclusionCode; each case runs in both.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

Resource = dict[str, Any]

V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
VERSIONS = ["r4", "r5"]


def report(status: str = "final", *, version: str = "r4", version_id: str = "1", results: int = 2) -> Resource:
    resource: Resource = {
        "resourceType": "DiagnosticReport",
        "id": "dr1",
        "meta": {"versionId": version_id, "lastUpdated": "2024-01-15T11:10:00Z"},
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "Metabolic panel"}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "issued": "2024-01-15T11:05:00Z",
        "result": [{"reference": f"Observation/o{n}"} for n in range(1, results + 1)],
    }
    if version == "r5":
        resource["conclusionCode"] = [{"text": "see results"}]
    else:
        resource["conclusion"] = "see results"
    return resource


def line(n: int, flags: tuple[str, ...] = (), value: float = 4.2) -> Resource:
    resource: Resource = {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": f"000{n}-0"}], "text": f"Test {n}"},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": value, "unit": "mmol/L"},
        "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.1}}],
    }
    if flags:
        resource["interpretation"] = [{"coding": [{"system": V3, "code": f} for f in flags]}]
    return resource


def with_lines(context: dict[str, Resource], *flags: tuple[str, ...]) -> dict[str, Resource]:
    return {**context, **{f"Observation/o{n}": line(n, f) for n, f in enumerate(flags, start=1)}}


@pytest.fixture
def base(context_patient: dict[str, Any], context_visit: dict[str, Any]) -> dict[str, Any]:
    """A final metabolic panel of Patient/p1 in visit V555, as its fields read."""
    return {
        "type": "result.final",
        "severity": "notice",
        "lifecycle": "new",
        "links": {},
        "subject": {
            "kind": "result",
            "key": "DiagnosticReport/dr1",
            "code": "24323-8",
            "text": "Metabolic panel",
            "status": "F",
            "start": None,
            "end": None,
            "detail": None,
        },
        "patient": context_patient,
        "encounter": context_visit,
        "thread_key": "enc:V555",
        "occurred_at": "2024-01-15T11:05:00+00:00",
        "dedup_key": "result.final:DiagnosticReport/dr1/_history/1",
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("status", "flags", "type_", "severity", "code"),
    [
        ("final", ((), ()), "result.final", "notice", "F"),
        ("final", ((), ("H",)), "result.final", "warning", "F"),
        ("final", ((), ("HH",)), "result.critical", "critical", "F"),
        ("preliminary", ((), ()), "result.preliminary", "info", "P"),
        ("partial", (("L",), ()), "result.preliminary", "warning", "A"),
        ("registered", ((), ()), "result.preliminary", "info", "I"),
        ("partial", (("LL",), ()), "result.critical", "critical", "A"),
    ],
)
def test_a_new_report_is_typed_by_status_and_its_lines(
    version: str,
    status: str,
    flags: tuple[tuple[str, ...], ...],
    type_: str,
    severity: str,
    code: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(report(status, version=version), context=with_lines(fhir_context(version), *flags))
    assert fields(event) == expect(
        base,
        type=type_,
        severity=severity,
        subject={"status": code},
        dedup_key=f"{type_}:DiagnosticReport/dr1/_history/1",
    )
    assert event.subject is not None
    assert [
        (o.code, o.text, o.value, o.units, o.reference_range, o.flags, o.status) for o in event.subject.observations
    ] == [
        ("0001-0", "Test 1", "4.2", "mmol/L", "3.5-5.1", flags[0], "F"),
        ("0002-0", "Test 2", "4.2", "mmol/L", "3.5-5.1", flags[1], "F"),
    ]


def test_r5_modified_is_not_final_yet(map_one: Any) -> None:
    event = map_one(report("modified", version="r5"))
    assert (event.type.value, event.subject is not None and event.subject.status) == ("result.preliminary", "P")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("status", "flags", "severity"),
    [
        ("corrected", ((), ()), "notice"),
        ("amended", (("LL",), ()), "critical"),
        ("appended", ((), ("H",)), "warning"),
    ],
)
def test_a_correction_edits_the_reports_first_post(
    version: str,
    status: str,
    flags: tuple[tuple[str, ...], ...],
    severity: str,
    map_one: Any,
    fields: Any,
    expect: Any,
    base: dict[str, Any],
    fhir_context: Any,
) -> None:
    event = map_one(
        report(status, version=version, version_id="2"),
        previous=report("final", version=version),
        context=with_lines(fhir_context(version), *flags),
    )
    assert fields(event) == expect(
        base,
        type="result.corrected",
        severity=severity,
        lifecycle="correct",
        links={"corrects": "DiagnosticReport/dr1"},
        subject={"status": "C"},
        dedup_key="result.corrected:DiagnosticReport/dr1/_history/2",
    )


@pytest.mark.parametrize("version", VERSIONS)
# Cancelled: the test was not done (OBR-25 X); entered in error: posted in error (as OBX-11 W).
@pytest.mark.parametrize(("status", "code"), [("cancelled", "X"), ("entered-in-error", "W")])
def test_a_withdrawal_strikes_the_reports_first_post(
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
        report(status, version=version, version_id="2"),
        previous=report("final", version=version),
        context=with_lines(fhir_context(version), (), ()),
    )
    assert fields(event) == expect(
        base,
        type="result.retracted",
        lifecycle="cancel",
        links={"cancels": "DiagnosticReport/dr1"},
        subject={"status": code},
        dedup_key="result.retracted:DiagnosticReport/dr1/_history/2",
    )


def _presented(resource: Resource) -> Resource:
    new = copy.deepcopy(resource)
    new["meta"]["versionId"] = "2"
    new["presentedForm"] = [{"contentType": "application/pdf", "title": "report.pdf"}]
    return new


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (report("preliminary"), report("final", version_id="2"), "result.final"),
        # A final report released again with another result is a correction.
        (report("final"), report("final", version_id="2", results=3), "result.corrected"),
        # Nothing again: the same report with a rendered form, a withdrawal withdrawn again.
        (report("final"), _presented(report("final")), None),
        (report("cancelled"), report("entered-in-error", version_id="2"), None),
        (None, report("unknown"), None),
    ],
)
def test_transitions(before: Resource | None, after: Resource, expected: str | None, map_fhir: Any) -> None:
    assert [e.type.value for e in map_fhir(after, previous=before)] == ([expected] if expected else [])


def test_a_report_whose_results_are_not_at_hand_still_posts(map_one: Any) -> None:
    event = map_one(report("final"))
    assert (event.type.value, event.thread_key) == ("result.final", "fhir-enc:e1")
    assert event.subject is not None and event.subject.observations == ()
