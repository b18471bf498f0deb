"""PHI reduction per channel level and the wording from mappings/templates.yaml.

Events come from synthetic HL7 messages through the real mapper, so the tests
cover what channels will actually receive. Every name and number is invented.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.channels import PhiLevel
from bridge.compose import Templates, compose, redact
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle
from bridge.hl7.reader import parse
from bridge.mapping import Mapper, mappings_dir

FAMILY, GIVEN, MRN, VISIT, BIRTH = "Testpatient", "Alpha", "MRN4711", "VIS0815", "19800521"
PID = f"PID|1||OTHER99^^^LAB^PI~{MRN}^^^TESTHOSP^MR||{FAMILY}^{GIVEN}||{BIRTH}|F"
PV1 = f"PV1|1|I|ICU^12^A^TESTHOSP|||3W^301^A^TESTHOSP|1234^Doctor^Test^^^Dr||||||||||||{VISIT}"


def message(kind: str, *body: str) -> bytes:
    msh = f"MSH|^~\\&|APP|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||{kind}|CTRL1|P|2.5.1"
    return ("\r".join((msh, "EVN||20240115102500", PID, PV1, *body)) + "\r").encode()


MESSAGES = {
    "ADT^A01": message("ADT^A01"),
    "ADT^A02": message("ADT^A02"),
    "ADT^A03": message("ADT^A03"),
    "ADT^A11": message("ADT^A11"),
    "ORU critical": message(
        "ORU^R01",
        "OBR|1|PL1|ACC123|BMP^Basic metabolic panel",
        "OBX|1|NM|K^Potassium||6.8|mmol/L|3.5-5.1|HH|||F",
        "OBX|2|NM|NA^Sodium||140|mmol/L|135-145|N|||F",
    ),
    "ORU final": message(
        "ORU^R01",
        "OBR|1|PL1|ACC124|CBC^Blood count",
        "OBX|1|NM|HGB^Hemoglobin||9.1|g/dL|12-16|L|||F",
    ),
    "ORU withdrawn": message("ORU^R01", "OBR|1|PL1|ACC125|CBC^Blood count", "OBX|1|NM|HGB^Hemoglobin||9.1|g/dL||N|||W"),
    "ORM NW": message("ORM^O01", "ORC|NW|ORD9", "OBR|1|ORD9||CBC^Blood count"),
}


@pytest.fixture(scope="module")
def events() -> dict[str, ClinicalEvent]:
    mapper = Mapper.load()
    received = datetime(2024, 1, 15, 11, 0, tzinfo=UTC)
    out: dict[str, ClinicalEvent] = {}
    for name, raw in MESSAGES.items():
        mapped = mapper.map_hl7(parse(raw), message_id=name, source="urn:test", received_at=received, origin={})
        assert len(mapped) == 1, name
        out[name] = mapped[0]
    return out


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates.load()


def everything(title: str, summary: str, facts: tuple[tuple[str, str], ...]) -> str:
    return "\n".join([title, summary, *(f"{label}: {value}" for label, value in facts)])


# --- redact ---------------------------------------------------------------------------------------


def test_full_level_is_the_event_unchanged(events: dict[str, ClinicalEvent]) -> None:
    event = events["ORU critical"]
    assert redact(event, PhiLevel.FULL) is event


def test_limited_keeps_initials_year_sex_location_attending_and_results(
    events: dict[str, ClinicalEvent],
) -> None:
    event = redact(events["ORU critical"], PhiLevel.LIMITED)
    p = event.patient
    assert (p.given, p.family, p.birth_date, p.sex, p.mrn, p.identifiers) == ("A", "T", "1980", "F", None, ())
    assert event.encounter.visit_number is None
    assert event.encounter.location.display == "TESTHOSP/ICU/12/A"
    assert event.encounter.attending is not None and event.encounter.attending.family == "Doctor"
    assert event.subject is not None and event.subject.observations[0].value == "6.8"


def test_none_keeps_no_patient_and_only_facility_unit_and_result_names(
    events: dict[str, ClinicalEvent],
) -> None:
    event = redact(events["ORU critical"], PhiLevel.NONE)
    assert event.patient.model_dump() == {
        "mrn": None,
        "identifiers": (),
        "family": None,
        "given": None,
        "birth_date": None,
        "sex": None,
    }
    enc = event.encounter
    assert (enc.visit_number, enc.attending, enc.location.display) == (None, None, "TESTHOSP/ICU")
    assert event.subject is not None
    k = event.subject.observations[0]
    assert (k.text, k.flags, k.critical, k.value, k.units, k.reference_range) == (
        "Potassium",
        ("HH",),
        True,
        None,
        None,
        None,
    )


@pytest.mark.parametrize("level", [PhiLevel.LIMITED, PhiLevel.NONE])
def test_keys_below_full_are_stable_pseudonyms_without_identifiers(
    events: dict[str, ClinicalEvent], level: PhiLevel
) -> None:
    event = events["ORU withdrawn"]
    reduced = redact(event, level)
    dumped = reduced.model_dump_json()
    for secret in (MRN, VISIT, "ACC125"):
        assert secret not in dumped
    assert reduced.thread_key.startswith("k:") and reduced.thread_key != event.thread_key
    assert redact(event, level).thread_key == reduced.thread_key
    assert reduced.subject is not None and reduced.links == {"cancels": reduced.subject.key}
    assert redact(event, level, hash_key=b"site-secret").thread_key != reduced.thread_key


def test_links_naming_an_event_type_stay_readable(events: dict[str, ClinicalEvent]) -> None:
    assert redact(events["ADT^A11"], PhiLevel.NONE).links == {"cancels": "encounter.admitted,encounter.arrived"}


# --- compose --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MESSAGES))
def test_limited_never_shows_the_family_name_or_mrn(
    events: dict[str, ClinicalEvent], templates: Templates, name: str
) -> None:
    text = everything(*compose(events[name], PhiLevel.LIMITED, templates))
    for secret in (FAMILY, GIVEN, MRN, VISIT, "1980-05-21"):
        assert secret not in text


@pytest.mark.parametrize("name", list(MESSAGES))
def test_none_shows_no_name_mrn_or_birth_date(
    events: dict[str, ClinicalEvent], templates: Templates, name: str
) -> None:
    text = everything(*compose(events[name], PhiLevel.NONE, templates))
    for secret in (FAMILY, GIVEN, "A.T.", MRN, VISIT, "1980", "Doctor", "6.8"):
        assert secret not in text


@pytest.mark.parametrize("name", ["ADT^A01", "ORU critical", "ORM NW"])
def test_full_shows_name_and_mrn(events: dict[str, ClinicalEvent], templates: Templates, name: str) -> None:
    title, _, facts = compose(events[name], PhiLevel.FULL, templates)
    assert f"{FAMILY}, {GIVEN}" in title
    assert ("MRN", MRN) in facts


@pytest.mark.parametrize(
    ("name", "level", "title"),
    [
        ("ADT^A01", PhiLevel.FULL, f"Admitted: {FAMILY}, {GIVEN}"),
        ("ADT^A01", PhiLevel.LIMITED, "Admitted: A.T."),
        ("ADT^A01", PhiLevel.NONE, "Admitted"),
        ("ORU critical", PhiLevel.LIMITED, "CRITICAL result: A.T."),
        ("ORU withdrawn", PhiLevel.NONE, "Result withdrawn: Blood count"),
        ("ORM NW", PhiLevel.NONE, "New order: Blood count"),
    ],
)
def test_title_drops_optional_parts_without_a_value(
    events: dict[str, ClinicalEvent], templates: Templates, name: str, level: PhiLevel, title: str
) -> None:
    assert compose(events[name], level, templates)[0] == title


def test_admission_summary_reads_as_a_sentence(events: dict[str, ClinicalEvent], templates: Templates) -> None:
    assert compose(events["ADT^A01"], PhiLevel.LIMITED, templates)[1] == (
        "Inpatient admission to TESTHOSP/ICU/12/A under Dr Test Doctor."
    )
    assert compose(events["ADT^A01"], PhiLevel.NONE, templates)[1] == "Inpatient admission to TESTHOSP/ICU."


def test_transfer_summary_names_both_locations(events: dict[str, ClinicalEvent], templates: Templates) -> None:
    summary = compose(events["ADT^A02"], PhiLevel.LIMITED, templates)[1]
    assert summary == "Moved from TESTHOSP/3W/301/A to TESTHOSP/ICU/12/A."


@pytest.mark.parametrize(
    ("level", "critical"),
    [
        (PhiLevel.FULL, "Potassium 6.8 mmol/L HH"),
        (PhiLevel.LIMITED, "Potassium 6.8 mmol/L HH"),
        (PhiLevel.NONE, "Potassium HH"),
    ],
)
def test_each_critical_observation_is_a_fact(
    events: dict[str, ClinicalEvent], templates: Templates, level: PhiLevel, critical: str
) -> None:
    facts = compose(events["ORU critical"], level, templates)[2]
    assert [value for label, value in facts if label == "Critical"] == [critical]


def test_final_result_summary_lists_the_abnormal_lines(events: dict[str, ClinicalEvent], templates: Templates) -> None:
    assert compose(events["ORU final"], PhiLevel.LIMITED, templates)[1] == (
        "Blood count is final; abnormal: Hemoglobin 9.1 g/dL L."
    )


def test_every_event_type_has_wording(templates: Templates) -> None:
    assert [t for t in EventType if not templates.covers(t)] == []


def test_every_event_type_and_lifecycle_composes_a_title(templates: Templates) -> None:
    for event_type in EventType:
        for lifecycle in Lifecycle:
            event = ClinicalEvent(
                id="e1",
                type=event_type,
                occurred_at=datetime(2024, 1, 15, tzinfo=UTC),
                source="urn:test",
                thread_key="t",
                dedup_key="d",
                lifecycle=lifecycle,
            )
            for level in PhiLevel:
                title, _, _ = compose(event, level, templates)
                assert title and "{" not in title and "[" not in title


def write_templates(tmp_path: Path, change: dict[str, Any]) -> Path:
    doc = yaml.safe_load((mappings_dir() / "templates.yaml").read_text(encoding="utf-8"))
    doc["events"]["order.placed"].update(change)
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "json_path"),
    [
        ({"title": "New order for {patient_name}"}, "$.events['order.placed'].title"),
        ({"summary": "Ordered [by [{attending}]]"}, "$.events['order.placed'].summary"),
        ({"summary": "Ordered [by {attending}"}, "$.events['order.placed'].summary"),
        ({"summary": "Ordered {attending"}, "$.events['order.placed'].summary"),
        ({"title": "Order for {observation}"}, "$.events['order.placed'].title"),
        ({"colour": "red"}, "$.events['order.placed']"),
    ],
)
def test_bad_templates_are_rejected_naming_file_and_place(
    tmp_path: Path, change: dict[str, Any], json_path: str
) -> None:
    path = write_templates(tmp_path, change)
    with pytest.raises(MappingError) as caught:
        Templates.load(path)
    assert (caught.value.source, caught.value.path) == (str(path), json_path)


def test_templates_load_from_a_site_file(tmp_path: Path, events: dict[str, ClinicalEvent]) -> None:
    site = Templates.load(write_templates(tmp_path, {"title": "Order[ for {patient}]: {subject}"}))
    assert compose(events["ORM NW"], PhiLevel.LIMITED, site)[0] == "Order for A.T.: Blood count"


def test_templates_schema_event_types_are_the_catalogue() -> None:
    schema = json.loads((mappings_dir() / "templates.schema.json").read_text(encoding="utf-8"))
    assert set(schema["$defs"]["eventType"]["enum"]) == {t.value for t in EventType}


def test_the_schemas_know_every_event_type_of_the_catalogue() -> None:
    import json

    from bridge.events import EventType
    from bridge.mapping import mappings_dir

    for name in ("schema.json", "templates.schema.json"):
        text = json.dumps(json.loads((mappings_dir() / name).read_text()))
        missing = [t.value for t in EventType if f'"{t.value}"' not in text]
        assert missing == [], name
