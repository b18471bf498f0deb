"""PHI reduction per channel level and the wording from mappings/templates/<locale>.yaml.

Events come from synthetic HL7 messages through the real mapper, so the tests
cover what channels will actually receive. Every name and number is invented.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge.channels import PhiLevel
from bridge.compose import Templates, compose, redact, template_locales
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Identifier, Lifecycle, Subject
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
    "ADT^A40": message("ADT^A40", "MRG|MRN0042^^^TESTHOSP^MR"),
}
TEMPLATES = mappings_dir() / "templates"


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


def test_limited_keeps_initials_last_4_of_the_mrn_sex_location_attending_and_results(
    events: dict[str, ClinicalEvent],
) -> None:
    event = redact(events["ORU critical"], PhiLevel.LIMITED)
    p = event.patient
    assert (p.given, p.family, p.birth_date, p.sex, p.identifiers) == ("A", "T", None, "F", ())
    assert p.mrn == Identifier(value="…4711", authority="TESTHOSP", type="MR")
    assert event.encounter.visit_number is None
    assert event.encounter.location.display == "TESTHOSP/ICU/12/A"
    assert event.encounter.attending is not None and event.encounter.attending.family == "Doctor"
    assert event.subject is not None and event.subject.observations[0].value == "6.8"


@pytest.mark.parametrize("mrn", ["4711", "711", " 4711 "])
def test_limited_shows_nothing_of_an_mrn_of_4_characters_or_fewer(make_event: Any, mrn: str) -> None:
    event = make_event(patient=make_event().patient.model_copy(update={"mrn": Identifier(value=mrn)}))
    assert redact(event, PhiLevel.LIMITED).patient.mrn is None


def test_none_keeps_no_patient_but_the_location_down_to_the_bed_and_result_names(
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
    assert (enc.visit_number, enc.attending, enc.location.display) == (None, None, "TESTHOSP/ICU/12/A")
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


def test_none_drops_the_free_text_detail(make_event: Any) -> None:
    event = make_event(type=EventType.MEDICATION_ORDERED, subject=Subject(kind="medication", detail="5 mg PO"))
    reduced = redact(event, PhiLevel.NONE)
    assert reduced.subject is not None and reduced.subject.detail is None
    limited = redact(event, PhiLevel.LIMITED)
    assert limited.subject is not None and limited.subject.detail == "5 mg PO"


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


@pytest.mark.parametrize("level", [PhiLevel.LIMITED, PhiLevel.NONE])
def test_merge_identities_are_pseudonyms_in_the_event(events: dict[str, ClinicalEvent], level: PhiLevel) -> None:
    event = events["ADT^A40"]
    assert set(event.links) == {"replaces", "replaced_by"}
    reduced = redact(event, level)
    assert all(value.startswith("k:") for value in reduced.links.values())
    assert "MRN0042" not in reduced.model_dump_json()


# --- compose --------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize("name", list(MESSAGES))
def test_limited_never_shows_the_name_full_mrn_visit_or_birth_date(
    events: dict[str, ClinicalEvent], templates: Templates, name: str, locale: str
) -> None:
    text = everything(*compose(events[name], PhiLevel.LIMITED, templates, locale=locale))
    for secret in (FAMILY, GIVEN, MRN, VISIT, "1980", "OTHER99", "MRN0042"):
        assert secret not in text


@pytest.mark.parametrize("locale", ["en", "de"])
@pytest.mark.parametrize("name", list(MESSAGES))
def test_none_shows_no_name_mrn_or_birth_date(
    events: dict[str, ClinicalEvent], templates: Templates, name: str, locale: str
) -> None:
    text = everything(*compose(events[name], PhiLevel.NONE, templates, locale=locale))
    for secret in (FAMILY, GIVEN, "A.T.", MRN, "4711", VISIT, "1980", "Doctor", "6.8", "0042"):
        assert secret not in text


@pytest.mark.parametrize("name", ["ADT^A01", "ORU critical", "ORM NW"])
def test_full_shows_name_and_mrn(events: dict[str, ClinicalEvent], templates: Templates, name: str) -> None:
    title, _, facts = compose(events[name], PhiLevel.FULL, templates)
    assert f"{FAMILY}, {GIVEN} ({MRN})" in title
    assert ("MRN", MRN) in facts


@pytest.mark.parametrize(
    ("name", "level", "locale", "title"),
    [
        ("ADT^A01", PhiLevel.FULL, "en", f"Admitted: {FAMILY}, {GIVEN} ({MRN}) · Bed ICU-12-A"),
        ("ADT^A01", PhiLevel.LIMITED, "en", "Admitted: A.T. (…4711) · Bed ICU-12-A"),
        ("ADT^A01", PhiLevel.NONE, "en", "Admitted · Bed ICU-12-A"),
        ("ADT^A01", PhiLevel.NONE, "de", "Aufnahme · Bett ICU-12-A"),
        ("ADT^A11", PhiLevel.NONE, "en", "Admission/visit cancelled · Bed ICU-12-A"),
        ("ADT^A11", PhiLevel.NONE, "de", "Aufnahme/Anmeldung storniert · Bett ICU-12-A"),
        (
            "ORU critical",
            PhiLevel.LIMITED,
            "en",
            "CRITICAL result: Basic metabolic panel · A.T. (…4711) · Bed ICU-12-A",
        ),
        ("ORU critical", PhiLevel.NONE, "de", "Kritischer Befund: Basic metabolic panel · Bett ICU-12-A"),
        ("ORU withdrawn", PhiLevel.NONE, "en", "Result withdrawn: Blood count · Bed ICU-12-A"),
        ("ORM NW", PhiLevel.NONE, "en", "New order: Blood count · Bed ICU-12-A"),
        ("ADT^A40", PhiLevel.NONE, "en", "Patient records merged"),
    ],
)
def test_title_drops_optional_parts_without_a_value(
    events: dict[str, ClinicalEvent], templates: Templates, name: str, level: PhiLevel, locale: str, title: str
) -> None:
    assert compose(events[name], level, templates, locale=locale)[0] == title


def test_admission_summary_reads_as_a_sentence(events: dict[str, ClinicalEvent], templates: Templates) -> None:
    assert compose(events["ADT^A01"], PhiLevel.LIMITED, templates)[1] == (
        "Inpatient admission to TESTHOSP/ICU/12/A under Dr Test Doctor."
    )
    assert compose(events["ADT^A01"], PhiLevel.NONE, templates)[1] == "Inpatient admission to TESTHOSP/ICU/12/A."
    assert compose(events["ADT^A01"], PhiLevel.NONE, templates, locale="de")[1] == (
        "Aufnahme (stationär) auf TESTHOSP/ICU/12/A."
    )


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


@pytest.mark.parametrize(
    ("level", "merged"),
    [
        (PhiLevel.FULL, [("Merged from", "MRN0042 (TESTHOSP)"), ("Merged into", "MRN4711 (TESTHOSP)")]),
        (PhiLevel.LIMITED, [("Merged from", "…0042"), ("Merged into", "…4711")]),
        (PhiLevel.NONE, []),
    ],
)
def test_a_merge_names_both_identities_as_far_as_the_level_allows(
    events: dict[str, ClinicalEvent], templates: Templates, level: PhiLevel, merged: list[tuple[str, str]]
) -> None:
    facts = compose(events["ADT^A40"], level, templates)[2]
    assert [f for f in facts if f[0].startswith("Merged")] == merged


@pytest.mark.parametrize("level", list(PhiLevel))
def test_every_level_shows_event_location_severity_and_time(
    events: dict[str, ClinicalEvent], templates: Templates, level: PhiLevel
) -> None:
    title, _, facts = compose(events["ORU critical"], level, templates)
    assert title.startswith("CRITICAL result") and "Bed ICU-12-A" in title
    assert ("Location", "TESTHOSP/ICU/12/A") in facts
    assert ("Time", "2024-01-15 10:30 UTC") in facts  # MSH-7: this ORU has no OBR-22


def test_time_is_told_in_the_deployment_time_zone(events: dict[str, ClinicalEvent]) -> None:
    berlin = Templates.load(timezone=ZoneInfo("Europe/Berlin"))
    facts = dict(compose(events["ADT^A01"], PhiLevel.NONE, berlin, locale="de")[2])
    assert facts["Zeitpunkt"] == "15.01.2024 11:25 CET"


@pytest.mark.parametrize(
    ("start", "shown"),
    [
        ("2024-07-01T08:30:00", "2024-07-01 08:30 CEST"),  # naive: the sender's local time, taken as the site's
        ("2024-07-01T06:30:00+00:00", "2024-07-01 08:30 CEST"),
        ("2024-07-01", "2024-07-01"),
        ("next week", "next week"),
    ],
)
def test_an_appointment_start_is_formatted_in_the_deployment_time_zone(make_event: Any, start: str, shown: str) -> None:
    berlin = Templates.load(timezone=ZoneInfo("Europe/Berlin"))
    event = make_event(type=EventType.APPOINTMENT_BOOKED, subject=Subject(kind="appointment", start=start))
    assert dict(compose(event, PhiLevel.NONE, berlin)[2])["Starts"] == shown


def test_an_appointment_end_is_a_placeholder_formatted_like_the_start(make_event: Any) -> None:
    berlin = Templates.load(timezone=ZoneInfo("Europe/Berlin"))
    subject = Subject(kind="appointment", start="2024-07-01T06:30:00+00:00", end="2024-07-01T09:00:00")
    event = make_event(type=EventType.APPOINTMENT_RESCHEDULED, lifecycle=Lifecycle.CORRECT, subject=subject)
    _, summary, facts = compose(event, PhiLevel.NONE, berlin)
    assert (dict(facts)["Starts"], dict(facts)["Ends"]) == ("2024-07-01 08:30 CEST", "2024-07-01 09:00 CEST")
    assert "to 2024-07-01 08:30 CEST (until 2024-07-01 09:00 CEST)" in summary
    # Without an end the optional part goes, and so does the line.
    without = make_event(type=EventType.APPOINTMENT_BOOKED, subject=subject.model_copy(update={"end": None}))
    assert "Ends" not in dict(compose(without, PhiLevel.NONE, berlin)[2])


# --- wording by the subject's status (by_status) ---------------------------------------------------


def order_cancelled(make_event: Any, status: str | None) -> ClinicalEvent:
    return make_event(
        type=EventType.ORDER_CANCELLED,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "TESTHOSP:ORD9"},
        subject=Subject(kind="order", key="TESTHOSP:ORD9", code="CBC", text="Blood count", status=status),
    )


@pytest.mark.parametrize(
    ("status", "locale", "title", "summary"),
    [
        # Cancelled (ORC-1 CA, OC, CR; FHIR cancelled, entered in error): it never held.
        ("CA", "en", "Order cancelled: Blood count", "Blood count was cancelled; disregard the earlier order notice."),
        (None, "en", "Order cancelled: Blood count", "Blood count was cancelled; disregard the earlier order notice."),
        # Discontinued: the order held until now; nobody is told to disregard it.
        (
            "DC",
            "en",
            "Order discontinued: Blood count",
            "Blood count was discontinued: it held until now and no longer applies from now on.",
        ),
        ("od", "en", "Order discontinued: Blood count", None),  # codes match whatever their case
        ("revoked", "en", "Order discontinued: Blood count", None),  # a FHIR status as sent
        (
            "DC",
            "de",
            "Anforderung abgesetzt: Blood count",
            "Blood count: abgesetzt; galt bis jetzt, ab jetzt nicht mehr.",
        ),
        ("CA", "de", "Anforderung storniert: Blood count", None),
    ],
)
def test_an_order_discontinued_does_not_read_as_one_cancelled(
    make_event: Any, templates: Templates, status: str | None, locale: str, title: str, summary: str | None
) -> None:
    got = compose(order_cancelled(make_event, status), PhiLevel.NONE, templates, locale=locale)
    assert got[0].startswith(title), got[0]
    if summary is not None:
        assert got[1] == summary
    if status is not None and status.upper() in ("DC", "OD", "DR", "REVOKED"):
        assert "disregard" not in got[1] and "hinfällig" not in got[1]


@pytest.mark.parametrize(
    ("status", "title", "summary"),
    [
        # Not authenticated (TXA-17 DI, DO, IP, IN, PA; FHIR preliminary, registered, partial).
        *(
            (s, "Document in progress: Discharge summary", "Not authenticated yet, its content may still change.")
            for s in ("DI", "DO", "IP", "IN", "PA", "preliminary", "registered", "partial")
        ),
        ("AU", "Document available: Discharge summary", "Ready to read in the record."),
        ("LA", "Document available: Discharge summary", "Ready to read in the record."),
        ("final", "Document available: Discharge summary", "Ready to read in the record."),
        (None, "Document available: Discharge summary", "Ready to read in the record."),
    ],
)
def test_a_document_not_authenticated_yet_is_not_ready_to_read(
    make_event: Any, templates: Templates, status: str | None, title: str, summary: str
) -> None:
    subject = Subject(kind="document", key="DOC1", code="DS", text="Discharge summary", status=status)
    event = make_event(type=EventType.DOCUMENT_AVAILABLE, subject=subject)
    assert compose(event, PhiLevel.NONE, templates)[:2] == (title, summary)


def test_by_status_of_a_lifecycle_variant_words_that_lifecycle_only(make_event: Any, templates: Templates) -> None:
    subject = Subject(kind="document", key="DOC1", code="DS", text="Discharge summary", status="AU")
    available = make_event(type=EventType.DOCUMENT_AVAILABLE, subject=subject)
    changed = make_event(
        type=EventType.DOCUMENT_AVAILABLE, lifecycle=Lifecycle.CORRECT, links={"corrects": "DOC1"}, subject=subject
    )
    assert compose(available, PhiLevel.NONE, templates)[0] == "Document available: Discharge summary"
    assert compose(changed, PhiLevel.NONE, templates)[0] == "Document authenticated: Discharge summary"
    dictated = changed.model_copy(update={"subject": subject.model_copy(update={"status": "PA"})})
    assert compose(dictated, PhiLevel.NONE, templates)[:2] == (
        "Document status changed: Discharge summary",
        "The document's status changed (PA); this replaces the earlier notice.",
    )


def test_a_by_status_item_keeps_what_it_does_not_give_and_the_first_match_wins(make_event: Any) -> None:
    doc = bundled("en")
    doc["events"]["order.cancelled"]["by_status"] = [
        {"status": ["DC"], "summary": "Stopped[: {subject}]."},
        {"status": ["dc", "CA"], "title": "Never shown for DC"},
    ]
    templates = Templates.from_documents({"en": doc})
    title, summary, _ = compose(order_cancelled(make_event, "DC"), PhiLevel.NONE, templates)
    assert (title, summary) == ("Order cancelled: Blood count · Bed ICU-101-A", "Stopped: Blood count.")
    assert compose(order_cancelled(make_event, "CA"), PhiLevel.NONE, templates)[0] == "Never shown for DC"


@pytest.mark.parametrize(
    ("change", "json_path"),
    [
        ({"by_status": [{"status": ["DC"], "title": "{nope}"}]}, "$.events['order.placed'].by_status[0].title"),
        ({"by_status": [{"status": ["DC"]}]}, "$.events['order.placed'].by_status[0]"),
        ({"by_status": [{"status": [], "title": "x"}]}, "$.events['order.placed'].by_status[0].status"),
    ],
)
def test_bad_by_status_items_are_rejected_naming_the_place(
    tmp_path: Path, change: dict[str, Any], json_path: str
) -> None:
    folder = site_folder(tmp_path, "en", {"events": {"order.placed": change}})
    with pytest.raises(MappingError) as caught:
        Templates.load([folder])
    assert caught.value.path == json_path


def test_facts_with_types_appear_only_for_those_types(events: dict[str, ClinicalEvent], templates: Templates) -> None:
    assert ("Order", "Blood count") in compose(events["ORM NW"], PhiLevel.NONE, templates)[2]
    assert [label for label, _ in compose(events["ORU final"], PhiLevel.NONE, templates)[2] if label == "Order"] == []


@pytest.mark.parametrize(
    ("locale", "corrected", "cancelled"), [("en", "Corrected", "Cancelled"), ("de", "Korrigiert", "Storniert")]
)
def test_labels_of_corrections_and_cancellations_are_in_the_locale(
    templates: Templates, locale: str, corrected: str, cancelled: str
) -> None:
    assert templates.label(Lifecycle.CORRECT, locale) == corrected
    assert templates.label(Lifecycle.CANCEL, locale) == cancelled
    assert templates.label(Lifecycle.NEW, locale) is None
    assert templates.label(Lifecycle.UPDATE, locale) is None


def test_an_unknown_locale_is_an_error_naming_the_known_ones(
    events: dict[str, ClinicalEvent], templates: Templates
) -> None:
    with pytest.raises(MappingError, match=r"'fr'.*de, en"):
        compose(events["ADT^A01"], PhiLevel.NONE, templates, locale="fr")


# --- the template files ---------------------------------------------------------------------------


def bundled(locale: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((TEMPLATES / f"{locale}.yaml").read_text(encoding="utf-8"))
    return doc


def test_the_bundled_locales_are_english_and_german() -> None:
    assert template_locales() == {"en", "de"}
    assert Templates.load().locales == {"en", "de"}


@pytest.mark.parametrize("locale", ["en", "de"])
def test_every_event_type_has_wording_and_a_name(templates: Templates, locale: str) -> None:
    assert [t for t in EventType if not templates.covers(t, locale)] == []
    assert set(bundled(locale)["event_names"]) == {t.value for t in EventType}


def test_both_locales_have_the_same_structure() -> None:
    def shape(doc: dict[str, Any]) -> Any:
        return (
            {name: sorted(entry) for name, entry in doc["events"].items()},
            [{k: v for k, v in fact.items() if k != "label"} for fact in doc["facts"]],
            sorted(doc["patient_classes"]),
            sorted(doc["sexes"]),
        )

    assert shape(bundled("de")) == shape(bundled("en"))


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
                for locale in ("en", "de"):
                    title, _, _ = compose(event, level, templates, locale=locale)
                    assert title and "{" not in title and "[" not in title


def site_folder(tmp_path: Path, locale: str, doc: dict[str, Any]) -> Path:
    folder = tmp_path / "site"
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / f"{locale}.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    ("change", "json_path"),
    [
        ({"title": "New order for {patient_name}"}, "$.events['order.placed'].title"),
        ({"summary": "Ordered [by [{attending}]]"}, "$.events['order.placed'].summary"),
        ({"summary": "Ordered [by {attending}"}, "$.events['order.placed'].summary"),
        ({"summary": "Ordered {attending"}, "$.events['order.placed'].summary"),
        ({"title": "Order for {observation}"}, "$.events['order.placed'].title"),
        ({"title": "Order for {patient.family}"}, "$.events['order.placed'].title"),
        ({"colour": "red"}, "$.events['order.placed']"),
    ],
)
def test_bad_site_templates_are_rejected_naming_file_and_place(
    tmp_path: Path, change: dict[str, Any], json_path: str
) -> None:
    folder = site_folder(tmp_path, "en", {"events": {"order.placed": change}})
    with pytest.raises(MappingError) as caught:
        Templates.load([folder])
    assert (caught.value.source, caught.value.path) == (str(folder / "templates" / "en.yaml"), json_path)


def test_a_site_file_rewords_one_entry_and_keeps_the_rest(tmp_path: Path, events: dict[str, ClinicalEvent]) -> None:
    folder = site_folder(tmp_path, "en", {"events": {"order.placed": {"title": "Order[ for {patient}]: {subject}"}}})
    site = Templates.load([folder])
    title, summary, _ = compose(events["ORM NW"], PhiLevel.LIMITED, site)
    assert title == "Order for A.T.: Blood count"
    assert summary == compose(events["ORM NW"], PhiLevel.LIMITED, Templates.load())[1]
    # Other locales and entries are the bundled ones.
    assert compose(events["ADT^A01"], PhiLevel.NONE, site, locale="de")[0] == "Aufnahme · Bett ICU-12-A"


def test_a_site_file_may_add_a_locale(tmp_path: Path, events: dict[str, ClinicalEvent]) -> None:
    doc = bundled("en")
    doc["events"]["encounter.admitted"]["title"] = "Admis[ : {patient}]"
    folder = site_folder(tmp_path, "fr", doc)
    assert template_locales([folder]) == {"en", "de", "fr"}
    site = Templates.load([folder])
    assert compose(events["ADT^A01"], PhiLevel.LIMITED, site, locale="fr")[0] == "Admis : A.T."


def test_a_new_site_locale_must_be_complete(tmp_path: Path) -> None:
    folder = site_folder(tmp_path, "fr", {"events": {"order.placed": {"title": "Commande"}}})
    with pytest.raises(MappingError) as caught:
        Templates.load([folder])
    assert caught.value.source == str(folder / "templates" / "fr.yaml")


def test_a_channel_kind_override_applies_to_that_kind_only(events: dict[str, ClinicalEvent]) -> None:
    doc = bundled("en")
    doc["channels"] = {
        "slack": {"events": {"result.critical": {"summary": "Call the lab[: {critical_observations}]."}}}
    }
    templates = Templates.from_documents({"en": doc})
    event = events["ORU critical"]
    slack = compose(event, PhiLevel.NONE, templates, kind="slack")
    plain = compose(event, PhiLevel.NONE, templates, kind="inbox")
    assert slack[1] == "Call the lab: Potassium HH."
    assert plain[1] == "Potassium HH. Needs review now."
    assert slack[0] == plain[0]  # the title was not overridden: it stays the default one
    assert compose(event, PhiLevel.NONE, templates)[1] == plain[1]


def test_a_site_file_may_override_wording_per_channel_kind(tmp_path: Path, events: dict[str, ClinicalEvent]) -> None:
    folder = site_folder(
        tmp_path, "de", {"channels": {"slack": {"events": {"encounter.admitted": {"title": "Neu auf Station"}}}}}
    )
    site = Templates.load([folder])
    assert compose(events["ADT^A01"], PhiLevel.NONE, site, locale="de", kind="slack")[0] == "Neu auf Station"
    assert compose(events["ADT^A01"], PhiLevel.NONE, site, locale="de", kind="webhook")[0] == "Aufnahme · Bett ICU-12-A"


def test_a_channel_kind_override_is_checked_like_any_entry(tmp_path: Path) -> None:
    folder = site_folder(tmp_path, "en", {"channels": {"slack": {"events": {"order.placed": {"title": "{nope}"}}}}})
    with pytest.raises(MappingError) as caught:
        Templates.load([folder])
    assert caught.value.path == "$.channels.slack.events['order.placed'].title"


def test_templates_schema_event_types_are_the_catalogue() -> None:
    schema = json.loads((TEMPLATES / "schema.json").read_text(encoding="utf-8"))
    assert set(schema["$defs"]["eventType"]["enum"]) == {t.value for t in EventType}


# --- times: the sender's zone in, the site's zone out (review #4 findings 11 and 17) ----------------------

A01_AT_8 = (
    "MSH|^~\\&|ADT|HOSP|X|Y|20261122080000||ADT^A01|c1|P|2.5",
    "EVN|A01|20261122080000",
    "PID|1||MRN1^^^HOSP^MR||Testpatient^Alpha||19800101|F",
    "PV1|1|I|4E^12^1^HOSP||||||||||||||||V1^^^HOSP",
)
S12_AT_14 = (
    "MSH|^~\\&|S|HOSP|X|Y|20261122080000||SIU^S12|c2|P|2.5",
    "SCH|A1^S|A1^S|||||ECHO^Echo||||||||||||||||||Booked",
    "PID|1||MRN1^^^HOSP^MR||Testpatient^Alpha||19800101|F",
    "AIS|1||ECHO^Echo|20261203140000",
)
RECEIVED = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_local_hl7_times_are_shown_as_the_sender_wrote_them_in_the_sites_zone() -> None:
    # The review's repro (/tmp/rev/t2.py): at Europe/Berlin an A01 at EVN 08:00 showed 09:00.
    from bridge.config import parse_config
    from bridge.mapping import MappingOptions

    settings = parse_config({"templates": {"timezone": "Europe/Berlin"}}, env={})
    mapper = Mapper.load(MappingOptions.from_config(settings.mapping))
    berlin = Templates.load(timezone=settings.templates.zone)
    shown: dict[str, dict[str, str]] = {}
    for name, segments in (("admission", A01_AT_8), ("booking", S12_AT_14)):
        raw = ("\r".join(segments) + "\r").encode()
        (event,) = mapper.map_hl7(parse(raw), message_id=name, source="urn:test", received_at=RECEIVED, origin={})
        shown[name] = dict(compose(event, PhiLevel.FULL, berlin)[2])
    assert shown["admission"]["Time"] == "2026-11-22 08:00 CET"
    assert shown["booking"]["Starts"] == "2026-12-03 14:00 CET"
    assert shown["booking"]["Time"] == "2026-11-22 08:00 CET"


@pytest.mark.parametrize(
    ("zone", "occurred_at", "start", "time", "starts"),
    [
        pytest.param(
            "Pacific/Kiritimati",
            datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
            "9999-12-31T23:00:00+00:00",
            "9999-12-31T23:00:00+00:00",
            "9999-12-31T23:00:00+00:00",
            id="year-10000-east",
        ),
        pytest.param(
            "America/New_York",
            datetime(1, 1, 1, 1, 0, tzinfo=UTC),
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T01:00:00+00:00",
            "0001-01-01T00:00:00+14:00",
            id="year-0-west",
        ),
        pytest.param(
            "Europe/Berlin",
            datetime(2024, 7, 1, 8, 30),  # naive: taken to be in the site's zone
            "9999-12-31T23:59:59-14:00",
            "2024-07-01 08:30 CEST",
            "9999-12-31T23:59:59-14:00",
            id="naive-and-year-10000-west",
        ),
    ],
)
def test_compose_never_fails_on_a_time_the_zone_cannot_hold(
    make_event: Any, zone: str, occurred_at: datetime, start: str, time: str, starts: str
) -> None:
    # /tmp/rev/sim4: compose raised OverflowError, the worker retried and dead-lettered, simulate crashed.
    templates = Templates.load(timezone=ZoneInfo(zone))
    event = make_event(
        type=EventType.APPOINTMENT_BOOKED,
        occurred_at=occurred_at,
        subject=Subject(kind="appointment", start=start),
    )
    facts = dict(compose(event, PhiLevel.NONE, templates)[2])
    assert (facts["Time"], facts["Starts"]) == (time, starts)


def test_a_date_is_never_shifted_by_a_time_zone(make_event: Any) -> None:
    # A FHIR dateTime without a time (Appointment or Encounter.period) is a day in every zone.
    for zone in ("Pacific/Kiritimati", "Pacific/Pago_Pago"):
        event = make_event(type=EventType.APPOINTMENT_BOOKED, subject=Subject(kind="appointment", start="2024-07-01"))
        assert dict(compose(event, PhiLevel.NONE, Templates.load(timezone=ZoneInfo(zone)))[2])["Starts"] == "2024-07-01"


# --- daylight saving time and dates: a Berlin sender shown in other zones (review #2 finding 11) ----


def mapped_in_berlin(*segments: str) -> ClinicalEvent:
    from bridge.mapping import MappingOptions

    mapper = Mapper.load(MappingOptions(sender_timezone=ZoneInfo("Europe/Berlin")))
    raw = ("\r".join(segments) + "\r").encode()
    (event,) = mapper.map_hl7(parse(raw), message_id="dst", source="urn:test", received_at=RECEIVED, origin={})
    return event


@pytest.mark.parametrize(
    ("msh7", "start", "zone", "time", "starts"),
    [
        pytest.param(
            "20261025021500",
            "20261025021500+0100",
            "Europe/Berlin",
            "2026-10-25 02:15 CEST",
            "2026-10-25 02:15 CET",
            id="fold-first-then-offset-given",
        ),
        pytest.param(
            "20261025021500",
            "20261025021500+0100",
            "UTC",
            "2026-10-25 00:15 UTC",
            "2026-10-25 01:15 UTC",
            id="fold-shown-in-utc",
        ),
        pytest.param(
            "20260329023000",
            "20260329023000+0200",
            "Europe/Berlin",
            "2026-03-29 03:30 CEST",
            "2026-03-29 01:30 CET",
            id="gap-the-moment-it-names",
        ),
        pytest.param(
            "20260329023000", "20260329023000", "UTC", "2026-03-29 01:30 UTC", "2026-03-29 01:30 UTC", id="gap-in-utc"
        ),
        pytest.param(
            "20261025000000", "20261025", "UTC", "2026-10-24 22:00 UTC", "2026-10-25", id="date-start-sender-berlin"
        ),
        pytest.param(
            "20261101013000",
            "20261101",
            "America/New_York",
            "2026-10-31 20:30 EDT",
            "2026-11-01",
            id="date-start-in-new-york",
        ),
    ],
)
def test_times_of_a_berlin_sender_across_dst_shown_in_the_sites_zone(
    msh7: str, start: str, zone: str, time: str, starts: str
) -> None:
    msh = f"MSH|^~\\&|S|HOSP|X|Y|{msh7}||SIU^S12|c3|P|2.5"
    event = mapped_in_berlin(msh, *S12_AT_14[1:-1], f"AIS|1||ECHO^Echo|{start}")
    facts = dict(compose(event, PhiLevel.NONE, Templates.load(timezone=ZoneInfo(zone)))[2])
    assert (facts["Time"], facts["Starts"]) == (time, starts)


@pytest.mark.parametrize(
    ("zone", "naive", "shown"),
    [
        ("Europe/Berlin", datetime(2026, 10, 25, 2, 15), "2026-10-25 02:15 CEST"),  # fold: the first
        ("Europe/Berlin", datetime(2026, 3, 29, 2, 30), "2026-03-29 03:30 CEST"),  # gap: never "02:30 CET"
        ("America/New_York", datetime(2026, 11, 1, 1, 30), "2026-11-01 01:30 EDT"),
        ("America/New_York", datetime(2026, 3, 8, 2, 30), "2026-03-08 03:30 EDT"),
    ],
)
def test_a_naive_time_follows_the_mappings_dst_rule(make_event: Any, zone: str, naive: datetime, shown: str) -> None:
    event = make_event(occurred_at=naive)
    assert dict(compose(event, PhiLevel.NONE, Templates.load(timezone=ZoneInfo(zone)))[2])["Time"] == shown


@pytest.mark.parametrize(
    ("zone", "time"),
    [
        ("UTC", "2026-10-25 06:30 UTC"),
        ("Europe/Berlin", "2026-10-25 07:30 CET"),
        ("America/New_York", "2026-10-25 02:30 EDT"),
    ],
)
def test_a_day_precision_event_time_is_never_shown_as_midnight_or_the_day_before(zone: str, time: str) -> None:
    # EVN-2 names the day only: the event time is MSH-7 (07:30 in Berlin), not 2026-10-24 22:00 UTC.
    msh = "MSH|^~\\&|ADT|HOSP|X|Y|20261025073000||ADT^A01|c4|P|2.5"
    event = mapped_in_berlin(msh, "EVN|A01|20261025", *A01_AT_8[2:])
    assert dict(compose(event, PhiLevel.NONE, Templates.load(timezone=ZoneInfo(zone)))[2])["Time"] == time
