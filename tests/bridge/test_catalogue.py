"""The event catalogue: one source for EventType, the docs and the per-type JSON Schemas, and the schemas bite.

The mapping schemas' eventType enums are compared with EventType by the tests
of their own modules (test_mapping.py, fhir/test_mapping.py, test_compose.py);
here the catalogue is compared with EventType, so the three agree with it too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.catalogue import (
    MARKDOWN,
    SCHEMAS,
    EventSchemaError,
    catalogue,
    event_schema,
    generated_files,
    load_catalogue,
    main,
    render_markdown,
    stale_files,
    validate_event,
)
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Observation, Subject
from bridge.fhir.mapping import FhirMapper
from bridge.hl7.reader import parse
from bridge.mapping import Mapper, load_mappings, mappings_dir

DOCS = Path(__file__).resolve().parents[2] / "docs"
CATALOGUE = mappings_dir() / "catalogue.yaml"


def raw_catalogue() -> dict[str, Any]:
    doc = yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def event(event_type: str, **fields: Any) -> ClinicalEvent:
    """A synthetic event of ``event_type``; keyword arguments override any field."""
    values: dict[str, Any] = {
        "id": "evt-1",
        "type": event_type,
        "occurred_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "source": "urn:ehr-bridge:test",
        "thread_key": "enc:TESTHOSP:V1",
        "dedup_key": "d1",
    }
    values.update(fields)
    return ClinicalEvent(**values)


# --- the catalogue is EventType --------------------------------------------------------------------


def test_catalogue_types_are_exactly_the_event_types() -> None:
    in_file = set(raw_catalogue()["types"])
    assert in_file - {t.value for t in EventType} == set(), "in the catalogue but not an EventType"
    assert {t.value for t in EventType} - in_file == set(), "an EventType the catalogue does not describe"
    assert set(catalogue().types) == set(EventType)


def test_every_type_has_meaning_severity_subject_lifecycle_sources_and_version() -> None:
    for spec in catalogue().types.values():
        assert spec.meaning and spec.subject_kinds and spec.stages and spec.fields, spec.type
        assert spec.version >= 1
        assert spec.hl7v2 or spec.fhir or spec.bridge, spec.type


@pytest.mark.parametrize(
    ("event_type", "lifecycles", "kinds"),
    [
        ("patient.merged", ["new"], ["patient"]),
        ("patient.updated", ["new", "cancel"], ["patient"]),
        ("encounter.cancelled", ["cancel"], ["encounter"]),
        ("encounter.leave_of_absence", ["new", "update"], ["encounter"]),
        ("result.corrected", ["correct"], ["result"]),
        ("result.retracted", ["cancel"], ["result"]),
        ("order.cancelled", ["cancel"], ["order", "medication"]),
        ("order.completed", ["update"], ["order", "medication"]),
        ("appointment.rescheduled", ["correct"], ["appointment"]),
        ("appointment.noshow", ["update"], ["appointment"]),
        ("document.available", ["new", "correct"], ["document"]),
        ("document.amended", ["correct"], ["document"]),
        ("medication.ordered", ["new"], ["medication"]),
        ("bridge.subscription.stale", ["new"], ["subscription"]),
    ],
)
def test_lifecycles_and_subject_kinds_follow_the_plan(event_type: str, lifecycles: list[str], kinds: list[str]) -> None:
    spec = catalogue().types[EventType(event_type)]
    assert [s.lifecycle.value for s in spec.stages] == lifecycles
    assert list(spec.subject_kinds) == kinds


def test_a11_style_cancellation_links_to_event_types_and_a_correction_to_the_subject() -> None:
    cancelled = catalogue().types[EventType.ENCOUNTER_CANCELLED].stages[0]
    assert [(link.name, link.refers_to) for link in cancelled.links] == [("cancels", "types")]
    assert {EventType.ENCOUNTER_ADMITTED, EventType.ENCOUNTER_ARRIVED} <= set(cancelled.supersedes)
    corrected = catalogue().types[EventType.RESULT_CORRECTED].stages[0]
    assert [(link.name, link.refers_to) for link in corrected.links] == [("corrects", "subject")]


def mutated(tmp_path: Path, change: Any) -> Path:
    doc = raw_catalogue()
    change(doc)
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (lambda d: d["types"].pop("medication.ordered"), "$.types", "medication.ordered"),
        (lambda d: d["types"].update({"lab.spilled": d["types"]["order.placed"]}), "$.types", "lab.spilled"),
        (lambda d: d["types"]["result.final"]["fields"].append("subject.colour"), "fields[", "subject.colour"),
        (lambda d: d["types"]["result.final"].update(severity="urgent"), "severity", "urgent"),
        (
            lambda d: d["types"]["result.retracted"]["lifecycles"]["cancel"].pop("links"),
            "lifecycles.cancel",
            "'cancels' link",
        ),
        (
            lambda d: d["types"]["order.placed"]["lifecycles"]["new"].update(supersedes=["order.placed"]),
            "lifecycles.new.supersedes",
            "supersedes nothing",
        ),
        (
            lambda d: d["types"]["result.corrected"]["lifecycles"]["correct"].update(supersedes=["result.lost"]),
            "supersedes",
            "result.lost",
        ),
        (
            lambda d: d["types"]["order.changed"]["lifecycles"]["correct"]["links"].update(
                cancels={"refers_to": "subject", "value": "x"}
            ),
            "lifecycles.correct",
            "no cancels link",
        ),
    ],
)
def test_a_broken_catalogue_is_a_mapping_error_naming_file_and_path(
    tmp_path: Path, change: Any, path: str, message: str
) -> None:
    with pytest.raises(MappingError) as caught:
        load_catalogue(mutated(tmp_path, change))
    assert caught.value.source.endswith("catalogue.yaml")
    assert path in caught.value.path and message in str(caught.value)


def mapped_sources(family: str) -> dict[str, set[str]]:
    """What the bundled mapping files of a family map to each type: HL7 ``MSG^TRIGGER``s, or FHIR resource types.

    An HL7 rule conditioned on triggers maps those; any other rule may fire for every trigger its file matches.
    """
    found: dict[str, set[str]] = {}
    schema = mappings_dir() / ("fhir.schema.json" if family == "fhir" else "schema.json")
    for _, doc in load_mappings(family, [], schema):  # type: ignore[arg-type]
        for rule in doc.get("rules_first", []) + doc["rules"]:
            if family == "fhir":
                sources = {m["resourceType"] for m in doc["match"]}
            else:
                when = rule.get("when")
                only = set(when["trigger"]) if isinstance(when, dict) and "trigger" in when else None
                sources = {
                    f"{m['message']}^{trigger}"
                    for m in doc["match"]
                    for trigger in m.get("triggers", [])
                    if only is None or trigger in only
                }
            found.setdefault(rule["type"], set()).update(sources)
    return found


def test_hl7_sources_are_exactly_the_triggers_the_mapping_files_map() -> None:
    mapped = mapped_sources("hl7v2")
    for spec in catalogue().types.values():
        documented = {trigger for source in spec.hl7v2 for trigger in source.triggers}
        assert documented == mapped.get(spec.type.value, set()), spec.type.value


def test_fhir_sources_are_exactly_the_resources_the_mapping_files_map() -> None:
    mapped = mapped_sources("fhir")
    for spec in catalogue().types.values():
        assert {source.resource for source in spec.fhir} == mapped.get(spec.type.value, set()), spec.type.value


# --- generated docs --------------------------------------------------------------------------------


def test_docs_are_in_sync_with_the_catalogue() -> None:
    assert stale_files(DOCS) == [], "run `make docs` and commit docs/events.md and docs/schemas/events/"


def test_check_names_stale_missing_and_left_over_files_and_write_fixes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--write", "--docs", str(tmp_path)]) == 0
    assert main(["--check", "--docs", str(tmp_path)]) == 0
    (tmp_path / MARKDOWN).write_text("# edited by hand\n", encoding="utf-8")
    (tmp_path / SCHEMAS / "result.final.json").unlink()
    (tmp_path / SCHEMAS / "result.lost.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "events.md: stale" in err
    assert "result.final.json: missing" in err
    assert "result.lost.json: not a type of the catalogue" in err
    assert main(["--write", "--docs", str(tmp_path)]) == 0
    assert not (tmp_path / SCHEMAS / "result.lost.json").exists()
    assert main(["--check", "--docs", str(tmp_path)]) == 0


def test_one_schema_file_per_type_and_the_markdown() -> None:
    files = generated_files()
    assert set(files) == {MARKDOWN} | {SCHEMAS / f"{t.value}.json" for t in EventType}


def test_markdown_has_contents_lifecycle_section_and_every_type() -> None:
    md = render_markdown()
    assert "## Contents" in md and "## Lifecycle and links" in md
    for spec in catalogue().types.values():
        name = spec.type.value
        assert f"### `{name}`" in md
        assert f"(#{name.replace('.', '')})" in md  # the GitHub anchor of that heading
        assert f"(schemas/events/{name}.json)" in md
        assert spec.meaning.split()[0] in md


# --- per-type JSON Schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", list(EventType), ids=str)
def test_each_type_schema_is_a_valid_2020_12_schema_of_that_type(event_type: EventType) -> None:
    schema = event_schema(event_type)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["type"] == {"const": event_type.value}


def minimal_event(event_type: EventType, lifecycle: Lifecycle) -> ClinicalEvent:
    """The smallest event of this type and lifecycle the catalogue allows: its first kind, its required links."""
    spec = catalogue().types[event_type]
    stage = next(s for s in spec.stages if s.lifecycle is lifecycle)
    values = {"types": ",".join(t.value for t in stage.supersedes[:2]), "subject": "LAB:4711", "identity": "HOSP|42"}
    links = {link.name: values[link.refers_to] for link in stage.links}
    subject = Subject(kind=spec.subject_kinds[-1], key="LAB:4711")
    return event(event_type.value, lifecycle=lifecycle, links=links, subject=subject)


@pytest.mark.parametrize(
    ("event_type", "lifecycle"),
    [(spec.type, stage.lifecycle) for spec in catalogue().types.values() for stage in spec.stages],
    ids=str,
)
def test_every_type_and_lifecycle_has_a_valid_event(event_type: EventType, lifecycle: Lifecycle) -> None:
    validate_event(minimal_event(event_type, lifecycle))


OBSERVATION = Observation(code="2823-3", text="Potassium", value="6.9", units="mmol/L", flags=("HH",), critical=True)

GOOD = [
    event("encounter.cancelled", lifecycle="cancel", links={"cancels": "encounter.admitted,encounter.arrived"}),
    event("encounter.cancelled", lifecycle="cancel", links={"cancels": "encounter.leave_of_absence"}),
    event("encounter.leave_of_absence", lifecycle="update", subject=Subject(kind="encounter", key="V1")),
    event("patient.updated", lifecycle="cancel", links={"cancels": "patient.registered"}),
    event("patient.merged", links={"replaces": "HOSP|41", "replaced_by": "HOSP|42"}),
    event("patient.merged", links={"replaced_by": "HOSP|42"}),
    event(
        "result.critical", severity="critical", subject=Subject(kind="result", key="L:1", observations=(OBSERVATION,))
    ),
    event(
        "result.corrected", lifecycle="correct", links={"corrects": "L:1"}, subject=Subject(kind="result", key="L:1")
    ),
    event(
        "order.cancelled", lifecycle="cancel", links={"cancels": "P:9"}, subject=Subject(kind="medication", key="P:9")
    ),
    event("appointment.booked", subject=Subject(kind="appointment", key="S:1", start="2025-02-03T09:00:00")),
    event("medication.ordered", subject=Subject(kind="medication", key="P:1", detail="500 mg PO")),
    event("document.available", lifecycle="correct", links={"corrects": "D:1"}, subject=Subject(kind="document")),
    # Feeds omit most clinical content: nothing beyond the envelope is required, and no subject is fine.
    event("encounter.admitted"),
]


@pytest.mark.parametrize("good", GOOD, ids=lambda e: f"{e.type.value}-{e.lifecycle.value}")
def test_validate_event_accepts_events_that_fit_their_type(good: ClinicalEvent) -> None:
    validate_event(good)


BAD = [
    ("wrong lifecycle", event("encounter.admitted", lifecycle="cancel"), "$.lifecycle", "'cancel' is not one of 'new'"),
    ("update of a new-only", event("result.final", lifecycle="update"), "$.lifecycle", "'update'"),
    ("cancel without cancels", event("encounter.cancelled", lifecycle="cancel"), "$.links", "'cancels' is a required"),
    (
        "correct without corrects",
        event("result.corrected", lifecycle="correct", links={"cancels": "L:1"}),
        "$.links",
        "'cancels' is not one of 'corrects'",
    ),
    (
        "cancels a type it does not strike",
        event("encounter.cancelled", lifecycle="cancel", links={"cancels": "encounter.updated"}),
        "$.links.cancels",
        "comma-separated event types among",
    ),
    ("a link on a new event", event("order.placed", links={"corrects": "P:1"}), "$.links", "carries no links"),
    ("a merge naming no identity", event("patient.merged"), "$.links", "at least one"),
    (
        "an empty link",
        event("result.retracted", lifecycle="cancel", links={"cancels": ""}),
        "$.links.cancels",
        "empty text",
    ),
    (
        "observations on an encounter event",
        event("encounter.admitted", subject=Subject(kind="encounter", observations=(OBSERVATION,))),
        "$.subject.observations",
        "encounter.admitted does not carry it",
    ),
    (
        "a start on a result",
        event("result.final", subject=Subject(kind="result", start="2025-02-03T09:00:00")),
        "$.subject.start",
        "must be empty",
    ),
    (
        "a detail on an encounter event",
        event("encounter.transferred", subject=Subject(kind="encounter", detail="ward round")),
        "$.subject.detail",
        "must be empty",
    ),
    (
        "subject kind mismatch",
        event("encounter.admitted", subject=Subject(kind="result")),
        "$.subject.kind",
        "'result' is not one of 'encounter'",
    ),
    (
        "medication kind on a result",
        event("result.final", subject=Subject(kind="medication")),
        "$.subject.kind",
        "'medication'",
    ),
]


@pytest.mark.parametrize(("case", "bad", "path", "message"), BAD, ids=[b[0] for b in BAD])
def test_validate_event_rejects_what_the_type_does_not_allow(
    case: str, bad: ClinicalEvent, path: str, message: str
) -> None:
    with pytest.raises(EventSchemaError) as caught:
        validate_event(bad)
    assert caught.value.event_type == bad.type.value
    assert caught.value.path == path
    assert f"{bad.type.value} event evt-1" in str(caught.value) and f"{path}: " in str(caught.value)
    assert message in str(caught.value)


def test_the_error_never_shows_clinical_content() -> None:
    bad = event("encounter.admitted", subject=Subject(kind="encounter", observations=(OBSERVATION,), start="CANARY"))
    with pytest.raises(EventSchemaError) as caught:
        validate_event(bad)
    assert "Potassium" not in str(caught.value) and "6.9" not in str(caught.value) and "CANARY" not in str(caught.value)


def test_the_published_schema_file_judges_like_validate_event() -> None:
    good = event("result.corrected", lifecycle="correct", links={"corrects": "L:1"}, subject=Subject(kind="result"))
    bad = event("result.corrected", lifecycle="correct", subject=Subject(kind="result"))
    schema = json.loads((DOCS / SCHEMAS / "result.corrected.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(good.model_dump(mode="json"))
    assert not validator.is_valid(bad.model_dump(mode="json"))
    assert validator.is_valid(good.to_cloudevent()["data"])


# --- every mapped event is validated (tests/conftest.py) -------------------------------------------

ADT_A08 = (
    "MSH|^~\\&|ADTAPP|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ADT^A08|CTRL1|P|2.5.1\r"
    "EVN|A08|20240115102500\r"
    "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F\r"
    "PV1|1|I|4E^136^B^TESTHOSP" + "|" * 16 + "V555\r"
)


def adt_mapper(rule: dict[str, Any]) -> Mapper:
    docs = load_mappings("hl7v2", [], mappings_dir() / "schema.json")
    doc = next(d for source, d in docs if Path(source).name == "adt.yaml")  # with its bases under it
    doc["match"] = [{"message": "ADT", "triggers": ["A08"]}]
    doc["rules"] = [rule]
    return Mapper.from_documents([("synthetic-adt.yaml", doc)])


def map_a08(mapper: Mapper) -> list[ClinicalEvent]:
    return mapper.map_hl7(
        parse(ADT_A08.encode()),
        message_id="msg1",
        source="urn:ehr-bridge:hl7v2:test",
        received_at=datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        origin={"listener": "test"},
    )


def test_a_mapped_event_that_fits_is_not_reported(events_fit_the_catalogue: list[str]) -> None:
    events = map_a08(adt_mapper({"type": "encounter.updated", "severity": "info"}))
    assert [e.type for e in events] == [EventType.ENCOUNTER_UPDATED]
    assert events_fit_the_catalogue == []


def test_a_mapped_hl7_event_that_does_not_fit_is_reported(events_fit_the_catalogue: list[str]) -> None:
    rule = {"type": "encounter.updated", "severity": "info", "lifecycle": "correct", "links": {"corrects": "x"}}
    events = map_a08(adt_mapper(rule))
    assert len(events) == 1  # the mapper still returns it: the test fails at teardown, not inside the mapper
    assert len(events_fit_the_catalogue) == 1
    assert "encounter.updated event msg1-1" in events_fit_the_catalogue[0]
    assert "$.lifecycle" in events_fit_the_catalogue[0]
    events_fit_the_catalogue.clear()  # reported as expected: do not fail this test


def test_a_mapped_fhir_event_that_does_not_fit_is_reported(events_fit_the_catalogue: list[str]) -> None:
    doc = {
        "match": [{"resourceType": "Basic"}],
        "subject": {"kind": "patient", "key": "Basic/{id}"},
        "thread_key": "fhir:Basic/{id}",
        "dedup_key": "{type}:Basic/{id}",
        "rules": [{"type": "patient.merged", "severity": "notice"}],
    }
    mapper = FhirMapper.from_documents([("synthetic-basic.yaml", doc)])
    events = mapper.map_resource(
        {"resourceType": "Basic", "id": "b1"},
        message_id="n1",
        source="urn:ehr-bridge:fhir:test",
        received_at=datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        origin={"subscription": "test"},
    )
    assert [e.type for e in events] == [EventType.PATIENT_MERGED]
    assert events_fit_the_catalogue == [
        "patient.merged event n1-1 does not fit its catalogue schema: $.links: must have at least 1 "
        "(a new patient.merged carries the links replaces, replaced_by (at least one))"
    ]
    events_fit_the_catalogue.clear()
