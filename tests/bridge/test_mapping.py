"""The bundled HL7 v2 mappings and the engine that applies them, on synthetic messages.

Every name and number below is invented ("Testpatient^Alpha", facility TESTHOSP).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bridge.config import parse_config
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity
from bridge.hl7.reader import Message, parse
from bridge.mapping import (
    Mapper,
    MappingOptions,
    hl7_date,
    hl7_datetime,
    hl7_timestamp,
    load_mappings,
    mappings_dir,
)

RECEIVED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

MSH_ADT = "MSH|^~\\&|ADTAPP|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ADT^{trigger}|CTRL{trigger}|P|2.5.1"
EVN = "EVN|{trigger}|20240115102500-0500"
PID = "PID|1||999^^^OTHERHOSP^PI~12345^^^TESTHOSP&1.2.3&ISO^MR||Testpatient&van^Alpha^B||19800521|F||||||||||ACCT77"
# PV1: 2 class, 3 location, 6 prior location, 7 attending, 19 visit number, 44/45 admit/discharge.
PV1 = (
    "PV1|1|I|4E^136^B^TESTHOSP|||3W^301^A^TESTHOSP|1234^Doctor&Dr^Test^^^Dr||||||||||||V555"
    + "|" * 25
    + "20240115102000|20240120080000"
)


def hl7(*segments: str) -> Message:
    return parse(("\r".join(segments) + "\r").encode())


def adt(trigger: str, *segments: str) -> Message:
    return hl7(MSH_ADT.format(trigger=trigger), EVN.format(trigger=trigger), *segments)


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper.load()


def run(mapper: Mapper, message: Message, message_id: str = "msg1") -> list[ClinicalEvent]:
    return mapper.map_hl7(
        message,
        message_id=message_id,
        source="urn:ehr-bridge:hl7v2:test",
        received_at=RECEIVED,
        origin={"listener": "test", "control_id": "C1"},
    )


def one(mapper: Mapper, message: Message) -> ClinicalEvent:
    events = run(mapper, message)
    assert len(events) == 1
    return events[0]


# --- ADT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "event_type", "severity", "lifecycle", "links"),
    [
        ("A01", EventType.ENCOUNTER_ADMITTED, Severity.NOTICE, Lifecycle.NEW, {}),
        ("A02", EventType.ENCOUNTER_TRANSFERRED, Severity.NOTICE, Lifecycle.NEW, {}),
        ("A03", EventType.ENCOUNTER_DISCHARGED, Severity.NOTICE, Lifecycle.NEW, {}),
        ("A04", EventType.ENCOUNTER_ARRIVED, Severity.NOTICE, Lifecycle.NEW, {}),
        ("A08", EventType.ENCOUNTER_UPDATED, Severity.INFO, Lifecycle.NEW, {}),
        (
            "A11",
            EventType.ENCOUNTER_CANCELLED,
            Severity.NOTICE,
            Lifecycle.CANCEL,
            # A11 cancels the admit/visit notification: an admission (A01) or a registration (A04).
            {"cancels": "encounter.admitted,encounter.arrived"},
        ),
        (
            "A12",
            EventType.ENCOUNTER_CANCELLED,
            Severity.NOTICE,
            Lifecycle.CANCEL,
            {"cancels": "encounter.transferred"},
        ),
        (
            "A13",
            EventType.ENCOUNTER_CANCELLED,
            Severity.NOTICE,
            Lifecycle.CANCEL,
            {"cancels": "encounter.discharged"},
        ),
    ],
)
def test_adt_trigger_maps_to_its_event_type_lifecycle_and_links(
    mapper: Mapper,
    trigger: str,
    event_type: EventType,
    severity: Severity,
    lifecycle: Lifecycle,
    links: dict[str, str],
) -> None:
    event = one(mapper, adt(trigger, PID, PV1))
    assert (event.type, event.severity, event.lifecycle, event.links) == (
        event_type,
        severity,
        lifecycle,
        links,
    )
    assert event.thread_key == "enc:V555"
    assert event.subject is not None and event.subject.kind == "encounter"


def test_adt_extracts_patient_fields_with_the_mr_identifier_as_mrn(mapper: Mapper) -> None:
    patient = one(mapper, adt("A01", PID, PV1)).patient
    assert patient.mrn is not None
    assert (patient.mrn.value, patient.mrn.authority, patient.mrn.type) == ("12345", "TESTHOSP", "MR")
    assert [i.value for i in patient.identifiers] == ["999", "12345"]
    # XPN-1 is FN: the surname is its first subcomponent.
    assert (patient.family, patient.given, patient.birth_date, patient.sex) == (
        "Testpatient",
        "Alpha",
        "1980-05-21",
        "F",
    )


def test_adt_extracts_encounter_location_attending_and_times(mapper: Mapper) -> None:
    enc = one(mapper, adt("A02", PID, PV1)).encounter
    assert (enc.visit_number, enc.patient_class) == ("V555", "I")
    assert (enc.location.facility, enc.location.unit, enc.location.room, enc.location.bed) == (
        "TESTHOSP",
        "4E",
        "136",
        "B",
    )
    assert enc.prior_location is not None and enc.prior_location.unit == "3W"
    assert enc.attending is not None
    assert (enc.attending.id, enc.attending.family, enc.attending.given, enc.attending.prefix) == (
        "1234",
        "Doctor",
        "Test",
        "Dr",
    )
    # Without an offset: the sender's local time, in mapping.sender_timezone (here the default, UTC).
    assert (enc.admitted_at, enc.discharged_at) == ("2024-01-15T10:20:00+00:00", "2024-01-20T08:00:00+00:00")


def test_mrn_falls_back_to_the_first_identifier_without_an_mr_type(mapper: Mapper) -> None:
    event = one(mapper, adt("A01", "PID|1||777^^^LAB^PI~888^^^LAB^AN||Testpatient^Beta", PV1))
    assert event.patient.mrn is not None and event.patient.mrn.value == "777"


def test_visit_number_falls_back_to_the_account_number(mapper: Mapper) -> None:
    event = one(mapper, adt("A01", PID, "PV1|1|O|CLINIC^^^TESTHOSP"))
    assert event.encounter.visit_number == "ACCT77"
    assert event.thread_key == "enc:ACCT77"


def pv1_with_visit(visit: str) -> str:
    return "PV1|1|I|4E^136^B^TESTHOSP" + "|" * 16 + visit


def pid_with_account(account: str) -> str:
    return "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha" + "|" * 13 + account


@pytest.mark.parametrize(
    ("visit", "account", "thread_key"),
    [
        ("V555^^^ADTHOSP", "", "enc:ADTHOSP:V555"),
        ("V555^^^ADTHOSP&1.2.3&ISO^VN", "", "enc:ADTHOSP:V555"),
        ("V555", "", "enc:V555"),
        ("V555^^^&1.2.3&ISO", "", "enc:V555"),
        ("", "ACCT77^^^BILLING^AN", "enc:BILLING:ACCT77"),
        ("", "ACCT77", "enc:ACCT77"),
        ('""', "ACCT77^^^BILLING", "enc:BILLING:ACCT77"),
        ("^^^ADTHOSP", "ACCT77", "enc:ACCT77"),
        # Each number keeps its own authority: PID-18's never scopes PV1-19, nor the other way round.
        ("V555", "ACCT77^^^BILLING", "enc:V555"),
        ("V555^^^ADTHOSP", "ACCT77^^^BILLING", "enc:ADTHOSP:V555"),
        ("^^^ADTHOSP", "", "pat:TESTHOSP:12345"),
    ],
)
def test_visit_thread_is_scoped_by_the_visit_numbers_own_authority(
    mapper: Mapper, visit: str, account: str, thread_key: str
) -> None:
    event = one(mapper, adt("A01", pid_with_account(account), pv1_with_visit(visit)))
    assert event.thread_key == thread_key


def test_missing_pv1_does_not_fail_and_threads_on_the_patient(mapper: Mapper) -> None:
    event = one(mapper, adt("A08", "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha"))
    assert event.encounter.visit_number is None
    assert event.encounter.attending is None
    assert event.thread_key == "pat:TESTHOSP:12345"


def test_mrn_without_authority_threads_on_the_sending_facility(mapper: Mapper) -> None:
    event = one(mapper, adt("A08", "PID|1||12345||Testpatient^Alpha"))
    assert event.thread_key == "pat:TESTHOSP:12345"


def test_mrn_without_authority_or_sending_facility_threads_on_the_mrn(mapper: Mapper) -> None:
    msh = MSH_ADT.replace("|ADTAPP|TESTHOSP|", "|ADTAPP||").format(trigger="A08")
    event = one(mapper, hl7(msh, EVN.format(trigger="A08"), "PID|1||12345||Testpatient^Alpha"))
    assert event.thread_key == "pat:12345"


def test_message_without_patient_or_visit_threads_on_its_control_id(mapper: Mapper) -> None:
    assert one(mapper, adt("A08", "PID|1")).thread_key == "msg:CTRLA08"


def test_adt_without_pid_makes_no_event_but_is_taken(mapper: Mapper) -> None:
    # One event per PID (A17 swaps two patients): no PID, no patient, no event; the message is still
    # matched, so it is accepted and not journalled as unmapped.
    message = adt("A08", PV1)
    assert run(mapper, message) == []
    assert mapper.matches(message)


def from_facility(msh: str, facility: str) -> str:
    fields = msh.split("|")
    fields[3] = facility
    return "|".join(fields)


def test_same_visit_number_of_two_authorities_does_not_share_a_thread(mapper: Mapper) -> None:
    here = one(mapper, adt("A01", PID, pv1_with_visit("V555^^^HOSP_A")))
    there = one(mapper, adt("A01", PID, pv1_with_visit("V555^^^HOSP_B")))
    assert (here.thread_key, there.thread_key) == ("enc:HOSP_A:V555", "enc:HOSP_B:V555")
    # Otherwise identical content: only the thread (and so the dedup key) tells them apart.
    assert here.dedup_key != there.dedup_key


def test_the_sending_facility_does_not_scope_the_visit(mapper: Mapper) -> None:
    visit = pv1_with_visit("V555^^^HOSP")
    here = one(mapper, hl7(from_facility(MSH_ADT.format(trigger="A01"), "ADT1"), EVN.format(trigger="A01"), PID, visit))
    there = one(
        mapper, hl7(from_facility(MSH_ADT.format(trigger="A02"), "ADT2"), EVN.format(trigger="A02"), PID, visit)
    )
    assert here.thread_key == there.thread_key == "enc:HOSP:V555"


@pytest.mark.parametrize(
    ("evn", "msh_time", "expected"),
    [
        (
            "EVN|A01|20240115102500-0500",
            "20240115103000",
            datetime(2024, 1, 15, 10, 25, tzinfo=timezone(-timedelta(hours=5))),
        ),
        ("EVN|A01|||||20240115090000", "20240115103000", datetime(2024, 1, 15, 9, 0, tzinfo=UTC)),
        (
            "EVN|A01",
            "20240115103000+0100",
            datetime(2024, 1, 15, 10, 30, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("EVN|A01|not-a-time", "20240115103000", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("EVN|A01", "garbage", RECEIVED),
    ],
)
def test_occurred_at_is_the_first_time_that_parses(mapper: Mapper, evn: str, msh_time: str, expected: datetime) -> None:
    msh = MSH_ADT.format(trigger="A01").replace("|20240115103000|", f"|{msh_time}|")
    assert one(mapper, hl7(msh, evn, PID, PV1)).occurred_at == expected


def test_hl7_null_is_no_value(mapper: Mapper) -> None:
    event = one(mapper, adt("A08", 'PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||""|""'))
    assert (event.patient.birth_date, event.patient.sex) == (None, None)


def test_escaped_delimiters_in_names_are_unescaped(mapper: Mapper) -> None:
    event = one(mapper, adt("A01", "PID|1||12345^^^TESTHOSP^MR||Test\\T\\patient^Al\\S\\pha"))
    assert (event.patient.family, event.patient.given) == ("Test&patient", "Al^pha")


@pytest.mark.parametrize(
    "segments",
    [
        ("PID",),
        ("PID|", "PV1|"),
        ("PID|||^^^^MR", "PV1|||^^^", "ZZZ|odd|content"),
        ("PID|1||~~~", "PV1|1|I|~~||||~"),
        ("NTE|1|free text", "PID|1", "PV1|1|I|4E^136\\E\\^B^TESTHOSP"),
    ],
)
def test_odd_content_never_raises(mapper: Mapper, segments: tuple[str, ...]) -> None:
    event = one(mapper, adt("A01", *segments))
    assert event.type is EventType.ENCOUNTER_ADMITTED


def test_event_ids_source_and_origin_come_from_the_caller(mapper: Mapper) -> None:
    event = run(mapper, adt("A01", PID, PV1), message_id="j42")[0]
    assert event.id == "j42-1"
    assert event.source == "urn:ehr-bridge:hl7v2:test"
    assert event.origin == {"listener": "test", "control_id": "C1"}


def test_adt_resent_under_a_new_control_id_has_the_same_dedup_key(mapper: Mapper) -> None:
    first = one(mapper, adt("A01", PID, PV1))
    msh = MSH_ADT.format(trigger="A01").replace("CTRLA01", "RESENT9").replace("20240115103000", "20240115110000")
    again = one(mapper, hl7(msh, EVN.format(trigger="A01"), PID, PV1))
    assert first.dedup_key == again.dedup_key


def test_readmission_after_a_cancel_is_a_new_fact(mapper: Mapper) -> None:
    first = one(mapper, adt("A01", PID, PV1))
    later = one(mapper, hl7(MSH_ADT.format(trigger="A01"), "EVN|A01|20240116080000", PID, PV1))
    assert first.dedup_key != later.dedup_key


# --- ORU ------------------------------------------------------------------------------------------

MSH_ORU = "MSH|^~\\&|LAB|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ORU^R01^ORU_R01|{control}|P|2.5.1"
ORU_PID = "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
ORU_PV1 = "PV1|1|I|ICU^12^A^TESTHOSP||||1234^Doctor^Test" + "|" * 12 + "V555"


def obr(set_id: int, filler: str, status: str = "", placer: str = "") -> str:
    return f"OBR|{set_id}|{placer}|{filler}|BMP^Basic metabolic panel" + "|" * 21 + status


def obx(set_id: int, code: str, value: str, flags: str, status: str, value_type: str = "NM") -> str:
    return f"OBX|{set_id}|{value_type}|{code}^{code} test||{value}|mmol/L|3.5-5.1|{flags}|||{status}"


def oru(*groups: str, control: str = "LAB1") -> Message:
    return hl7(MSH_ORU.format(control=control), ORU_PID, ORU_PV1, *groups)


@pytest.mark.parametrize(
    ("observations", "obr_status", "event_type", "severity", "lifecycle"),
    [
        (
            [("K", "6.8", "HH", "F"), ("NA", "140", "N", "F")],
            "F",
            EventType.RESULT_CRITICAL,
            Severity.CRITICAL,
            Lifecycle.NEW,
        ),
        ([("K", "2.1", "LL", "P")], "P", EventType.RESULT_CRITICAL, Severity.CRITICAL, Lifecycle.NEW),
        (
            [("K", "4.0", "N", "F"), ("NA", "140", "N", "F")],
            "",
            EventType.RESULT_FINAL,
            Severity.NOTICE,
            Lifecycle.NEW,
        ),
        ([("K", "4.0", "N", "P")], "F", EventType.RESULT_FINAL, Severity.NOTICE, Lifecycle.NEW),
        ([("K", "5.4", "H", "F")], "F", EventType.RESULT_FINAL, Severity.WARNING, Lifecycle.NEW),
        ([("K", "4.0", "N", "P")], "P", EventType.RESULT_PRELIMINARY, Severity.INFO, Lifecycle.NEW),
        (
            [("K", "4.0", "N", "F"), ("NA", "140", "", "P")],
            "",
            EventType.RESULT_PRELIMINARY,
            Severity.INFO,
            Lifecycle.NEW,
        ),
        ([("K", "4.0", "N", "C")], "F", EventType.RESULT_CORRECTED, Severity.NOTICE, Lifecycle.CORRECT),
        ([("K", "6.9", "HH", "C")], "C", EventType.RESULT_CORRECTED, Severity.CRITICAL, Lifecycle.CORRECT),
        ([("K", "4.0", "N", "W")], "F", EventType.RESULT_RETRACTED, Severity.NOTICE, Lifecycle.CANCEL),
        (
            [("K", "", "", "D"), ("NA", "", "", "D")],
            "",
            EventType.RESULT_RETRACTED,
            Severity.NOTICE,
            Lifecycle.CANCEL,
        ),
        (
            [("K", "", "", "D"), ("NA", "140", "N", "F")],
            "",
            EventType.RESULT_CORRECTED,
            Severity.NOTICE,
            Lifecycle.CORRECT,
        ),
        ([], "", EventType.RESULT_PRELIMINARY, Severity.INFO, Lifecycle.NEW),
    ],
)
def test_oru_event_type_follows_result_status_and_flags(
    mapper: Mapper,
    observations: list[tuple[str, str, str, str]],
    obr_status: str,
    event_type: EventType,
    severity: Severity,
    lifecycle: Lifecycle,
) -> None:
    lines = [obx(i, code, value, flags, status) for i, (code, value, flags, status) in enumerate(observations, 1)]
    event = one(mapper, oru("ORC|RE|PL1|FL1", obr(1, "FL1", obr_status, "PL1"), *lines))
    assert (event.type, event.severity, event.lifecycle) == (event_type, severity, lifecycle)


def test_correction_links_to_the_subject_key(mapper: Mapper) -> None:
    event = one(mapper, oru(obr(1, "FL1", "C"), obx(1, "K", "4.0", "N", "C")))
    assert event.links == {"corrects": "TESTHOSP:FL1"}


def test_withdrawn_result_links_to_the_subject_key_it_cancels(mapper: Mapper) -> None:
    event = one(mapper, oru(obr(1, "FL1", "F"), obx(1, "K", "4.0", "N", "W")))
    assert event.links == {"cancels": "TESTHOSP:FL1"}


def test_critical_flags_are_configurable(mapper: Mapper) -> None:
    message = oru(obr(1, "FL1", "F"), obx(1, "K", "5.4", "H", "F"))
    assert one(mapper, message).type is EventType.RESULT_FINAL
    site = Mapper.load(MappingOptions(critical_flags=frozenset({"HH", "LL", "AA", "H"})))
    event = one(site, message)
    assert event.type is EventType.RESULT_CRITICAL
    assert event.subject is not None and event.subject.observations[0].critical


@pytest.mark.parametrize(
    ("flags", "event_type", "severity"),
    [
        ("HH^Critical high^HL70078", EventType.RESULT_CRITICAL, Severity.CRITICAL),
        ("A^Abnormal^HL70078^^^^2.5", EventType.RESULT_FINAL, Severity.WARNING),
        ("N^Normal^HL70078~HH^Critical high^HL70078", EventType.RESULT_CRITICAL, Severity.CRITICAL),
    ],
)
def test_coded_abnormal_flags_of_v25_and_later_are_read_by_their_code(
    mapper: Mapper, flags: str, event_type: EventType, severity: Severity
) -> None:
    # Regression: OBX-8 is a CWE from v2.5 on; the whole field was taken as the flag, so HH^... was not critical.
    event = one(mapper, oru(obr(1, "FL1", "F"), obx(1, "K", "6.8", flags, "F")))
    assert event.type is event_type
    assert event.severity is severity
    assert event.subject is not None
    assert all("^" not in f for o in event.subject.observations for f in o.flags)


def test_observation_fields_are_extracted(mapper: Mapper) -> None:
    line = "OBX|1|NM|K^Potassium^LN||6.8~6.9|mmol/L^millimole per liter^UCUM|3.5-5.1|HH~A|||F"
    event = one(mapper, oru(obr(1, "FL1", "F"), line))
    assert event.subject is not None
    o = event.subject.observations[0]
    assert (o.code, o.text, o.value, o.units, o.reference_range, o.flags, o.status, o.critical) == (
        "K",
        "Potassium",
        "6.8, 6.9",
        "mmol/L",
        "3.5-5.1",
        ("HH", "A"),
        "F",
        True,
    )


@pytest.mark.parametrize(
    ("value_type", "value", "shown"),
    [
        ("CWE", "123^E. coli^SCT~456^Klebsiella^SCT", "E. coli, Klebsiella"),
        ("CE", "POS^^LOCAL", "POS"),
        ("SN", "<^10", "<10"),
        ("SN", "^1^:^128", "1:128"),
        ("SN", "^182", "182"),
        ("ST", "see note", "see note"),
    ],
)
def test_observation_values_read_by_value_type(mapper: Mapper, value_type: str, value: str, shown: str) -> None:
    event = one(mapper, oru(obr(1, "FL1", "F"), f"OBX|1|{value_type}|X^X test||{value}||||||F"))
    assert event.subject is not None and event.subject.observations[0].value == shown


def test_each_obr_makes_one_event_with_its_own_observations(mapper: Mapper) -> None:
    events = run(
        mapper,
        oru(
            "ORC|RE|PL1|FL1",
            obr(1, "FL1", "F"),
            "NTE|1||comment",
            obx(1, "K", "6.8", "HH", "F"),
            "ORC|RE|PL2|FL2",
            obr(2, "FL2", "F"),
            obx(1, "NA", "140", "N", "F"),
            obx(2, "CL", "101", "N", "F"),
        ),
        message_id="m7",
    )
    assert [e.id for e in events] == ["m7-1", "m7-2"]
    assert [e.type for e in events] == [EventType.RESULT_CRITICAL, EventType.RESULT_FINAL]
    assert [e.subject.key for e in events if e.subject] == ["TESTHOSP:FL1", "TESTHOSP:FL2"]
    assert [[o.code for o in e.subject.observations] for e in events if e.subject] == [["K"], ["NA", "CL"]]
    assert {e.thread_key for e in events} == {"enc:V555"}


@pytest.mark.parametrize(
    ("orc", "obr_line", "key"),
    [
        ("ORC|RE|PL1|FL1", obr(1, "FLOBR", "F", "PLOBR"), "TESTHOSP:FLOBR"),
        ("ORC|RE|PL1|FL1", obr(1, "FLOBR^LAB2", "F", "PLOBR"), "LAB2:FLOBR"),
        ("ORC|RE|PL1|FL1", obr(1, "", "F", "PLOBR"), "TESTHOSP:PLOBR"),
        ("ORC|RE|PL1|FL1", obr(1, "", "F"), "TESTHOSP:FL1"),
        ("ORC|RE|PL1", obr(1, "", "F"), "TESTHOSP:PL1"),
        ("NTE|1||no order control", obr(3, "", "F"), "LAB1-3"),
        ("NTE|1||no order control", "OBR||||BMP", "LAB1-1"),
    ],
)
def test_result_subject_key_falls_back_from_filler_to_placer_to_message(
    mapper: Mapper, orc: str, obr_line: str, key: str
) -> None:
    event = one(mapper, oru(orc, obr_line, obx(1, "K", "4.0", "N", "F")))
    assert event.subject is not None and event.subject.key == key


def test_an_obr_without_orc_does_not_inherit_the_previous_orc(mapper: Mapper) -> None:
    events = run(mapper, oru("ORC|RE|PL1|FL1", obr(1, "", "F"), obr(2, "", "F")))
    assert [e.subject.key for e in events if e.subject] == ["TESTHOSP:FL1", "LAB1-2"]


def test_results_of_two_patients_in_one_message_keep_their_patient(mapper: Mapper) -> None:
    events = run(
        mapper,
        oru(
            obr(1, "FL1", "F"),
            obx(1, "K", "4.0", "N", "F"),
            "PID|1||67890^^^TESTHOSP^MR||Testpatient^Gamma",
            "PV1|1|O|CLINIC^^^TESTHOSP" + "|" * 16 + "V777",
            obr(1, "FL2", "F"),
            obx(1, "K", "4.1", "N", "F"),
        ),
    )
    assert [e.patient.given for e in events] == ["Alpha", "Gamma"]
    assert [e.thread_key for e in events] == ["enc:V555", "enc:V777"]


def test_the_next_patient_never_inherits_the_previous_visit(mapper: Mapper) -> None:
    events = run(
        mapper,
        oru(
            obr(1, "FL1", "F"),
            "PID|1||67890^^^TESTHOSP^MR||Testpatient^Gamma",
            obr(1, "FL2", "F"),
        ),
    )
    assert [(e.encounter.visit_number, e.thread_key) for e in events] == [
        ("V555", "enc:V555"),
        (None, "pat:TESTHOSP:67890"),
    ]
    assert events[1].encounter.attending is None


def test_same_result_resent_has_the_same_dedup_key_and_final_differs_from_preliminary(mapper: Mapper) -> None:
    preliminary = one(mapper, oru(obr(1, "FL1", "P"), obx(1, "K", "4.0", "N", "P"), control="A"))
    resent = one(mapper, oru(obr(1, "FL1", "P"), obx(1, "K", "4.0", "N", "P"), control="B"))
    final = one(mapper, oru(obr(1, "FL1", "F"), obx(1, "K", "4.0", "N", "F"), control="C"))
    assert preliminary.dedup_key == resent.dedup_key
    assert final.dedup_key != preliminary.dedup_key


def test_oru_without_obr_yields_no_events(mapper: Mapper) -> None:
    message = oru(obx(1, "K", "4.0", "N", "F"))
    assert run(mapper, message) == []
    assert mapper.matches(message)


# --- orders ---------------------------------------------------------------------------------------


def order_header(facility: str, code: str = "ORM", trigger: str = "O01") -> str:
    return f"MSH|^~\\&|CPOE|{facility}|LAB|TESTHOSP|20240115103000||{code}^{trigger}|ORD1|P|2.5.1"


def order(code: str, trigger: str, *orcs: str) -> Message:
    return hl7(order_header("TESTHOSP", code, trigger), ORU_PID, ORU_PV1, *orcs)


@pytest.mark.parametrize(("code", "trigger"), [("ORM", "O01"), ("OML", "O21")])
@pytest.mark.parametrize(
    ("control", "event_type", "lifecycle", "links"),
    [
        ("NW", EventType.ORDER_PLACED, Lifecycle.NEW, {}),
        ("CA", EventType.ORDER_CANCELLED, Lifecycle.CANCEL, {"cancels": "TESTHOSP:PL1"}),
        ("OC", EventType.ORDER_CANCELLED, Lifecycle.CANCEL, {"cancels": "TESTHOSP:PL1"}),
        ("DC", EventType.ORDER_CANCELLED, Lifecycle.CANCEL, {"cancels": "TESTHOSP:PL1"}),
        ("XO", EventType.ORDER_CHANGED, Lifecycle.CORRECT, {"corrects": "TESTHOSP:PL1"}),
        ("OH", EventType.ORDER_CHANGED, Lifecycle.CORRECT, {"corrects": "TESTHOSP:PL1"}),
        # A status change to IP is progress: a reply in the order's thread, not an edit of the order.
        ("SC", EventType.ORDER_CHANGED, Lifecycle.UPDATE, {}),
    ],
)
def test_order_control_decides_placed_changed_or_cancelled(
    mapper: Mapper,
    code: str,
    trigger: str,
    control: str,
    event_type: EventType,
    lifecycle: Lifecycle,
    links: dict[str, str],
) -> None:
    event = one(mapper, order(code, trigger, f"ORC|{control}|PL1|FL1||IP", "OBR|1|PL1|FL1|CBC^Blood count"))
    assert (event.type, event.lifecycle, event.links) == (event_type, lifecycle, links)
    assert event.subject is not None
    assert (event.subject.kind, event.subject.key, event.subject.code, event.subject.text) == (
        "order",
        "TESTHOSP:PL1",
        "CBC",
        "Blood count",
    )


def test_each_orc_makes_one_order_event(mapper: Mapper) -> None:
    events = run(
        mapper,
        order("ORM", "O01", "ORC|NW|PL1", "OBR|1|PL1||CBC", "ORC|CA|PL2", "OBR|1|PL2||BMP", "ORC|OK|PL3"),
    )
    assert [(e.type, e.subject.key if e.subject else None) for e in events] == [
        (EventType.ORDER_PLACED, "TESTHOSP:PL1"),
        (EventType.ORDER_CANCELLED, "TESTHOSP:PL2"),
    ]


def test_same_accession_number_from_two_labs_is_two_subjects(mapper: Mapper) -> None:
    # The thread spans every sender of a visit: a correction from one lab must not edit another lab's post.
    result = (ORU_PID, ORU_PV1, obr(1, "F100", "F"), obx(1, "K", "4.0", "N", "F"))
    lab1 = one(mapper, hl7(from_facility(MSH_ORU.format(control="A1"), "LAB1"), *result))
    lab2 = one(mapper, hl7(from_facility(MSH_ORU.format(control="A2"), "LAB2"), *result))
    assert lab1.thread_key == lab2.thread_key
    assert lab1.subject is not None and lab2.subject is not None
    assert lab1.subject.key != lab2.subject.key


def test_same_placer_number_from_two_ordering_facilities_is_two_orders(mapper: Mapper) -> None:
    # The thread is the whole encounter now, so the sender no longer scopes the order number through it.
    ward = one(mapper, hl7(order_header("WARD"), ORU_PID, ORU_PV1, "ORC|NW|1001", "OBR|1|1001||CBC"))
    clinic = one(mapper, hl7(order_header("CLINIC"), ORU_PID, ORU_PV1, "ORC|NW|1001", "OBR|1|1001||BMP"))
    assert ward.thread_key == clinic.thread_key
    assert ward.dedup_key != clinic.dedup_key


@pytest.mark.parametrize(
    ("request_orc", "confirm_orc", "same_fact"),
    [
        ("ORC|CA|1001^CPOE", "ORC|CR|1001^CPOE|F77^LAB", True),
        ("ORC|CA|1001^CPOE", "ORC|CR|1001^OTHERCPOE|F77^LAB", False),
        # Without a namespace the number is scoped by its sender, and placer and filler send from two facilities.
        ("ORC|CA|1001", "ORC|CR|1001|F77", False),
    ],
)
def test_cancel_request_and_its_confirmation_are_one_fact_within_the_order_numbers_namespace(
    mapper: Mapper, request_orc: str, confirm_orc: str, same_fact: bool
) -> None:
    request = one(mapper, hl7(order_header("WARD"), ORU_PID, ORU_PV1, request_orc, "OBR|1|1001||CBC"))
    confirmation = one(mapper, hl7(order_header("LAB1"), ORU_PID, ORU_PV1, confirm_orc, "OBR|1|1001||CBC"))
    assert request.type is confirmation.type is EventType.ORDER_CANCELLED
    assert (request.dedup_key == confirmation.dedup_key) is same_fact


def test_resent_new_order_has_the_same_dedup_key(mapper: Mapper) -> None:
    first = one(mapper, order("ORM", "O01", "ORC|NW|PL1^CPOE", "OBR|1|PL1||CBC"))
    again = one(mapper, order("ORM", "O01", "ORC|NW|PL1^CPOE||||||20240115110000", "OBR|1|PL1||CBC"))
    assert first.dedup_key == again.dedup_key


def test_unmapped_order_control_yields_no_event_but_the_message_is_mapped(mapper: Mapper) -> None:
    message = order("ORM", "O01", "ORC|OK|PL1", "OBR|1|PL1||CBC")
    assert run(mapper, message) == []
    assert mapper.matches(message)


# --- threads across message families --------------------------------------------------------------


@pytest.mark.parametrize(("visit", "thread_key"), [("V555^^^HOSP", "enc:HOSP:V555"), ("V555", "enc:V555")])
def test_results_and_orders_join_the_admission_thread_of_the_same_visit(
    mapper: Mapper, visit: str, thread_key: str
) -> None:
    # Regression: the key was scoped by MSH-4, the lab's own facility, so results never joined the admission.
    pv1 = pv1_with_visit(visit)
    admission = one(
        mapper, hl7(from_facility(MSH_ADT.format(trigger="A01"), "ADT1"), EVN.format(trigger="A01"), PID, pv1)
    )
    result = one(
        mapper,
        hl7(
            from_facility(MSH_ORU.format(control="R1"), "LAB1"),
            ORU_PID,
            pv1,
            obr(1, "FL1", "F"),
            obx(1, "K", "4.0", "N", "F"),
        ),
    )
    placed = one(mapper, hl7(order_header("CPOE1"), ORU_PID, pv1, "ORC|NW|PL1", "OBR|1|PL1||CBC"))
    assert admission.thread_key == result.thread_key == placed.thread_key == thread_key


# --- matching -------------------------------------------------------------------------------------


# ADT^A20 (bed status) and ADT^A24 (link patient information) are left unmapped on purpose (adt.yaml, patient.yaml).
@pytest.mark.parametrize("message_type", ["ADT^A20", "SIU^S23", "ADT^A24", "MDM^T12", "ORU^W01"])
def test_unmapped_message_types_yield_nothing(mapper: Mapper, message_type: str) -> None:
    message = hl7(f"MSH|^~\\&|X|TESTHOSP|Y|TESTHOSP|20240115103000||{message_type}|U1|P|2.5", PID, PV1)
    assert run(mapper, message) == []
    assert not mapper.matches(message)


def write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def bundled(name: str) -> dict[str, Any]:
    """A bundled file's document as the mapper gets it: with its ``base`` (and the base's base) under it."""
    docs = {Path(source).name: doc for source, doc in load_mappings("hl7v2", [], mappings_dir() / "schema.json")}
    loaded = docs[name]
    assert isinstance(loaded, dict)
    return loaded


def test_extra_file_with_a_bundled_name_replaces_it(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["rules"] = [{"when": {"trigger": ["A01"]}, "type": "encounter.admitted", "severity": "warning"}]
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),)))
    assert [Path(s).name for s in site.sources] == [Path(s).name for s in Mapper.load().sources]
    assert str(tmp_path / "adt.yaml") in site.sources
    assert one(site, adt("A01", PID, PV1)).severity is Severity.WARNING
    assert run(site, adt("A03", PID, PV1)) == []


def test_extra_folder_files_come_after_the_bundled_ones(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["match"] = [{"message": "ADT", "triggers": ["A01", "A20"]}]
    doc["rules"] = [{"type": "encounter.updated", "severity": "info"}]
    write(tmp_path / "site-adt.yaml", doc)
    site = Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    # A01 is still taken by the bundled adt.yaml; A20 falls through to the site file.
    assert one(site, adt("A01", PID, PV1)).type is EventType.ENCOUNTER_ADMITTED
    assert one(site, adt("A20", PID, PV1)).type is EventType.ENCOUNTER_UPDATED


@pytest.mark.parametrize(("versions", "fits"), [(["2.5*"], True), (["2.3", "2.4"], False), (["2.*"], True)])
def test_versions_glob_restricts_the_match(tmp_path: Path, versions: list[str], fits: bool) -> None:
    doc = bundled("adt.yaml")
    doc["match"] = [{"message": "ADT", "triggers": ["A01"], "versions": versions}]
    site = Mapper.from_documents([("only-25.yaml", doc)])
    assert site.matches(adt("A01", PID)) is fits


# --- the schema and the compiler ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "json_path"),
    [
        (lambda d: d["patient"].update(sex="PID-X"), "$.patient.sex"),
        (lambda d: d["rules"][0].update(type="encounter.exploded"), "$.rules[0].type"),
        (lambda d: d["rules"][1].update(colour="red"), "$.rules[1]"),
        (lambda d: d["match"][0].pop("triggers"), "$.match[0]"),
        (lambda d: d["patient"]["identifiers"].update(value="XCN-1"), "$.patient.identifiers.value"),
        (lambda d: d.update(thread_key=["enc:{encounter.ward}"]), "$.thread_key[0]"),
        (lambda d: d.update(dedup_key="{type}:{PID-3.1"), "$.dedup_key[0]"),
        (lambda d: d["patient"]["identifiers"].update(field="PID-3[2]"), "$.patient.identifiers.field"),
    ],
)
def test_a_bad_mapping_file_is_rejected_naming_file_and_json_path(
    tmp_path: Path, change: Callable[[dict[str, Any]], object], json_path: str
) -> None:
    doc = bundled("adt.yaml")
    change(doc)
    path = write(tmp_path / "broken.yaml", doc)
    with pytest.raises(MappingError) as caught:
        Mapper.load(MappingOptions(extra_paths=(path,)))
    assert caught.value.source == str(path)
    assert caught.value.path == json_path
    assert "broken.yaml" in str(caught.value) and json_path in str(caught.value)


def test_invalid_yaml_is_a_mapping_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("match: [unclosed\n", encoding="utf-8")
    with pytest.raises(MappingError, match=r"bad\.yaml"):
        Mapper.load(MappingOptions(extra_paths=(path,)))


def test_every_bundled_file_is_valid_against_the_schema() -> None:
    # A fragment (_*.yaml) is only a base; every other file, with its bases under it, is a mapping.
    docs = load_mappings("hl7v2", [], mappings_dir() / "schema.json")  # validates each one
    assert sorted(p.name for p in (mappings_dir() / "hl7v2").glob("_*.yaml")) == [
        "_adt.yaml",
        "_orders.yaml",
        "_visit.yaml",
    ]
    assert [Path(source).name for source, _ in docs] == [
        "adt.yaml",
        "mdm.yaml",
        "oml.yaml",
        "orders.yaml",
        "oru.yaml",
        "oul.yaml",
        "oul_r24.yaml",
        "patient.yaml",
        "pharmacy.yaml",
        "siu.yaml",
    ]


def test_schema_event_types_are_the_catalogue() -> None:
    schema = json.loads((mappings_dir() / "schema.json").read_text(encoding="utf-8"))
    assert set(schema["$defs"]["eventType"]["enum"]) == {t.value for t in EventType}


def test_mappings_dir_is_the_checkout_folder_outside_a_wheel() -> None:
    assert mappings_dir() == Path(__file__).resolve().parents[2] / "mappings"


# --- HL7 dates and times --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "date", "iso"),
    [
        ("19800521", "1980-05-21", "1980-05-21"),
        ("198005", "1980-05", "1980-05"),
        ("1980", "1980", "1980"),
        ("202401151030", "2024-01-15", "2024-01-15T10:30:00"),
        ("20240115103000.25+0100", "2024-01-15", "2024-01-15T10:30:00.250+01:00"),
        ("20240115103000-0000", "2024-01-15", "2024-01-15T10:30:00+00:00"),
        ("20241315", "20241315", "20241315"),
        ("2024-01-15", "2024-01-15", "2024-01-15"),
        ("unknown", "unknown", "unknown"),
        ("20240115103000+2500", "20240115103000+2500", "20240115103000+2500"),
    ],
)
def test_hl7_dates_normalise_to_iso_or_stay_raw(text: str, date: str, iso: str) -> None:
    assert (hl7_date(text), hl7_datetime(text)) == (date, iso)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20240115", None),  # a day is not a moment (review #2 finding 11)
        ("2024011510", datetime(2024, 1, 15, 10, 0, tzinfo=UTC)),
        ("20240115103000", datetime(2024, 1, 15, 10, 30, tzinfo=UTC)),
        ("20240115103000-0500", datetime(2024, 1, 15, 15, 30, tzinfo=UTC)),
        ("202401", None),
        ("", None),
    ],
)
def test_hl7_timestamp_needs_an_hour_and_takes_naive_as_utc(text: str, expected: datetime | None) -> None:
    assert hl7_timestamp(text) == expected


def test_a_fhir_mapping_file_among_the_extra_paths_is_left_to_the_fhir_mapper(tmp_path: Path) -> None:
    # Regression: a FHIR file listed on its own reached the HL7 loader and failed its schema.
    folder = tmp_path / "fhir"
    folder.mkdir()
    (folder / "site-encounter.yaml").write_text("match: {resourceType: Encounter}\n")
    loaded = Mapper.load(MappingOptions(extra_paths=(folder / "site-encounter.yaml", folder)))
    assert all("site-encounter" not in source for source in loaded.sources)


@pytest.mark.parametrize(
    ("extra", "family", "expected"),
    [
        ("site", "hl7v2", {"adt-site.yaml", "lab-site.yaml"}),
        ("site", "fhir", {"encounter-site.yaml"}),
        # Regression: a folder that is itself named fhir was read by neither loader.
        ("site/fhir", "fhir", {"encounter-site.yaml"}),
        ("site/fhir", "hl7v2", set()),
        ("site/fhir/encounter-site.yaml", "fhir", {"encounter-site.yaml"}),
        ("site/fhir/encounter-site.yaml", "hl7v2", set()),
        ("site/adt-site.yaml", "hl7v2", {"adt-site.yaml"}),
        ("site/adt-site.yaml", "fhir", set()),
    ],
)
def test_one_rule_decides_which_extra_mapping_files_are_hl7_and_which_fhir(
    tmp_path: Path, extra: str, family: str, expected: set[str]
) -> None:
    from bridge.mapping import _extra_files

    for name in ("site/adt-site.yaml", "site/hl7v2/lab-site.yaml", "site/fhir/encounter-site.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    files = _extra_files(family, [tmp_path / extra])  # type: ignore[arg-type]
    assert {p.name for p in files} == expected


# --- site layering and the site's MRN authorities -----------------------------------------------------

PID_TWO_MRS = "PID|1||111^^^OTHERHOSP^MR~222^^^TESTHOSP^MR~333^^^LAB^PI||Testpatient^Alpha"


@pytest.mark.parametrize(
    ("authorities", "expected"),
    [
        ((), "111"),  # no site setting: the first MR
        (("TESTHOSP",), "222"),
        (("NOWHERE", "OTHERHOSP"), "111"),
        (("NOWHERE",), "111"),  # none of the site's: the first MR still
        (("LAB",), "111"),  # an authority of a non-MR identifier never makes it the MRN
    ],
)
def test_mrn_is_the_mr_of_the_sites_authority(authorities: tuple[str, ...], expected: str) -> None:
    mapper = Mapper.load(MappingOptions(mrn_authorities=authorities))
    event = one(mapper, adt("A01", PID_TWO_MRS, PV1))
    assert event.patient.mrn is not None
    assert event.patient.mrn.value == expected


def test_overlay_changes_one_part_of_a_bundled_file_without_copying_it(tmp_path: Path) -> None:
    # The site reads the visit number from PV1-50 (alternate visit ID) and silences A08.
    write(
        tmp_path / "site" / "adt.yaml",
        {
            "extends": "adt.yaml",
            "encounter": {"visit_number": "PV1-50.1"},
            "rules_first": [{"when": {"trigger": ["A08"]}, "type": "encounter.updated", "severity": "info"}],
        },
    )
    mapper = Mapper.load(MappingOptions(extra_paths=(tmp_path / "site",)))
    pv1 = PV1 + "|" * 5 + "ALT9"
    event = one(mapper, adt("A01", PID, pv1))
    assert event.encounter.visit_number == "ALT9"
    # Everything else is the bundled file's: the MRN, the location, the rule for A01.
    assert event.type is EventType.ENCOUNTER_ADMITTED
    assert event.patient.mrn is not None and event.patient.mrn.value == "12345"
    assert event.encounter.location.unit == "4E"
    assert one(mapper, adt("A08", PID, pv1)).severity is Severity.INFO
    assert mapper.sources.count(str(tmp_path / "site" / "adt.yaml")) == 1
    assert len(mapper.sources) == len(Mapper.load().sources)


def test_overlay_null_removes_a_key(tmp_path: Path) -> None:
    write(tmp_path / "no-prior.yaml", {"extends": "adt.yaml", "encounter": {"prior_location": None}})
    mapper = Mapper.load(MappingOptions(extra_paths=(tmp_path / "no-prior.yaml",)))
    assert one(mapper, adt("A02", PID, PV1)).encounter.prior_location is None
    assert one(Mapper.load(), adt("A02", PID, PV1)).encounter.prior_location is not None


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        ({"extends": "nosuch.yaml"}, "$.extends", "not a mapping file loaded before it"),
        ({"extends": "adt.yaml", "rules_first": {"type": "x"}}, "$.rules_first", "must be a list"),
        ({"extends": "adt.yaml", "for_each": "each"}, "$.for_each", ""),
    ],
)
def test_bad_overlay_names_the_overlay_and_the_place(
    tmp_path: Path, doc: dict[str, Any], path: str, message: str
) -> None:
    overlay = write(tmp_path / "bad.yaml", doc)
    with pytest.raises(MappingError) as err:
        Mapper.load(MappingOptions(extra_paths=(overlay,)))
    assert err.value.source == str(overlay)
    assert err.value.path == path
    assert message in str(err.value)


# --- fallbacks of composite fields and of links (SIU: AIL-3 else PV1-3; MDM: TXA-13 else own key) -----


def test_a_list_of_composite_fields_is_fallbacks_the_first_with_a_value_wins(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["encounter"]["location"] = [
        {"field": "PV1-6", "unit": "PL-1.1", "room": "PL-2.1"},
        {"field": "PV1-3", "unit": "PL-1.1", "bed": "PL-3.1"},
    ]
    doc["encounter"]["attending"] = [{"field": "PV1-8", "id": "XCN-1"}, {"field": "PV1-7", "id": "XCN-1"}]
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),)))
    first = one(site, adt("A01", PID, PV1))  # PV1-6 (3W/301) is given, PV1-8 is not
    assert first.encounter.location.model_dump() == {"facility": None, "unit": "3W", "room": "301", "bed": None}
    assert first.encounter.attending is not None and first.encounter.attending.id == "1234"
    no_prior = PV1.replace("|3W^301^A^TESTHOSP|1234^Doctor&Dr^Test^^^Dr|", '|""|1234^Doctor&Dr^Test^^^Dr|5678^Other')
    second = one(site, adt("A01", PID, no_prior))
    assert second.encounter.location.model_dump() == {"facility": None, "unit": "4E", "room": None, "bed": "B"}
    assert second.encounter.attending is not None and second.encounter.attending.id == "5678"


@pytest.mark.off_catalogue("an engine test: a correct encounter.updated carrying both link kinds")
def test_a_list_of_link_templates_is_fallbacks_the_first_that_renders_wins(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    # A type whose correction links to a subject key (the catalogue fixture checks every event).
    doc["subject"]["kind"] = "result"
    doc["rules"] = [
        {
            "type": "result.corrected",
            "severity": "notice",
            "lifecycle": "correct",
            "links": {"corrects": ["alt:{PV1-50.1}", "{subject.key}"]},
        }
    ]
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),)))
    assert one(site, adt("A08", PID, PV1 + "|" * 5 + "ALT9")).links == {"corrects": "alt:ALT9"}
    assert one(site, adt("A08", PID, PV1)).links == {"corrects": "V555"}


def test_a_bad_template_in_a_list_of_links_names_its_place(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["rules"][0]["links"] = {"corrects": ["{subject.key}", "{encounter.ward}"]}
    path = write(tmp_path / "broken.yaml", doc)
    with pytest.raises(MappingError) as caught:
        Mapper.load(MappingOptions(extra_paths=(path,)))
    assert caught.value.path == "$.rules[0].links.corrects[1]"


# --- identifiers as links (patient.yaml: MRG-1, the prior patient identifier list, repeats) --------


@pytest.mark.off_catalogue("an engine test: patient.merged on the ADT file's encounter subject")
def test_an_identifier_link_reads_authority_and_value_of_the_chosen_repetition(tmp_path: Path) -> None:
    doc = bundled("patient.yaml")
    doc["rules"] = [
        {
            "type": "patient.merged",
            "severity": "notice",
            "links": {
                "replaces": [
                    {
                        "field": "MRG-1",
                        "repetition": {"where": "CX-5", "in": ["MR"], "authority": "CX-4.1"},
                        "value": "CX-1",
                        "authority": "CX-4.1",
                    },
                    {"field": "MRG-4", "value": "CX-1", "authority": "CX-4.1"},
                ],
                "replaced_by": {"field": "PID-3", "value": "CX-1"},
            },
        }
    ]
    path = write(tmp_path / "patient.yaml", doc)
    site = Mapper.load(MappingOptions(extra_paths=(path,)))
    mrg = "MRG|77^^^OTHERHOSP^PI~55^^^OTHERHOSP^MR~66^^^TESTHOSP^MR"
    # Without site authorities the first MR wins; no authority part reads the value alone.
    assert one(site, adt("A40", PID, mrg)).links == {"replaces": "OTHERHOSP|55", "replaced_by": "999"}
    own = Mapper.load(MappingOptions(extra_paths=(path,), mrn_authorities=("TESTHOSP",)))
    assert one(own, adt("A40", PID, mrg)).links["replaces"] == "TESTHOSP|66"
    # MRG-1 empty (""): the next fallback; an identifier without authority is its value alone.
    assert one(site, adt("A40", PID, 'MRG|""|||44')).links["replaces"] == "44"
    assert "replaces" not in one(site, adt("A40", PID, "MRG|")).links


def test_a_bad_identifier_link_names_its_place(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["rules"][0]["links"] = {"replaces": ["{MRG-1.1}", {"field": "MRG-1", "value": "XCN-1"}]}
    path = write(tmp_path / "broken.yaml", doc)
    with pytest.raises(MappingError) as caught:
        Mapper.load(MappingOptions(extra_paths=(path,)))
    assert caught.value.path == "$.rules[0].links.replaces[1].value"


# --- a rule's own dedup key (orders: placed once, but every change with new content is news) -------


def test_a_rules_own_dedup_key_wins_over_the_files(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["dedup_key"] = ["file:{subject.key}"]
    doc["rules"] = [
        {"when": {"trigger": ["A08"]}, "type": "encounter.updated", "severity": "info", "dedup_key": "rule:{digest}"},
        {"when": {"trigger": ["A08"]}, "type": "encounter.updated", "severity": "info"},
        {"type": "encounter.admitted", "severity": "notice", "dedup_key": ["rule:{PV1-50.1}", "rule:{subject.key}"]},
    ]
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),)))
    updated = one(site, adt("A08", PID, PV1))
    assert updated.dedup_key.startswith("rule:") and updated.dedup_key != "rule:V555"
    assert one(site, adt("A01", PID, PV1)).dedup_key == "rule:V555"
    doc["rules"] = doc["rules"][1:2]
    plain = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "plain" / "adt.yaml", doc),)))
    assert one(plain, adt("A08", PID, PV1)).dedup_key == "file:V555"


def test_a_bad_template_in_a_rules_dedup_key_names_its_place(tmp_path: Path) -> None:
    doc = bundled("adt.yaml")
    doc["rules"][0]["dedup_key"] = ["{type}:{subject.key}", "{type}:{encounter.ward}"]
    path = write(tmp_path / "broken.yaml", doc)
    with pytest.raises(MappingError) as caught:
        Mapper.load(MappingOptions(extra_paths=(path,)))
    assert caught.value.path == "$.rules[0].dedup_key[1]"


# --- base: and fragments (a file built on another file's resolved document; _*.yaml only a base) ----

REAL_SCHEMA = mappings_dir() / "schema.json"
OBR_FINAL = "OBR|1|PL1^CPOE|FL1^LIS|GLU^Glucose" + "|" * 18 + "20240115101500|||F"
OBX_GLUCOSE = "OBX|1|NM|GLU^Glucose||5.1|mmol/L|3.9-5.5|N|||F"


def lab(code: str, trigger: str) -> Message:
    msh = f"MSH|^~\\&|LIS|TESTLAB|BRIDGE|TESTHOSP|20240115103000||{code}^{trigger}|CTRL9|P|2.5.1"
    return hl7(msh, PID, PV1, OBR_FINAL, OBX_GLUCOSE)


@pytest.fixture
def own_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty bundled ``hl7v2/`` folder (with the real schema) in place of ``mappings/``, to write files in."""
    root = tmp_path / "bundled"
    (root / "hl7v2").mkdir(parents=True)
    (root / "schema.json").write_bytes(REAL_SCHEMA.read_bytes())
    monkeypatch.setattr("bridge.mapping.mappings_dir", lambda: root)
    return root / "hl7v2"


#: The real adt.yaml, read before a test puts a bundled folder of its own in place.
ADT_DOC = bundled("adt.yaml")


def split_adt() -> tuple[dict[str, Any], dict[str, Any]]:
    """adt.yaml as a fragment (patient, visit, thread: not a mapping alone) and the rest of it."""
    full = json.loads(json.dumps(ADT_DOC))
    shared = {k: full[k] for k in ("patient", "encounter", "thread_key")}
    return shared, {k: v for k, v in full.items() if k not in shared}


def names(docs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {Path(source).name: doc for source, doc in docs}


def test_a_file_with_a_fragment_as_base_is_the_fragment_with_its_own_keys_over_it(own_bundled: Path) -> None:
    shared, rest = split_adt()
    write(own_bundled / "_shared.yaml", shared)  # no match, no rules: never validated alone
    write(own_bundled / "visits.yaml", {"base": "_shared.yaml", **rest})
    docs = names(load_mappings("hl7v2", [], REAL_SCHEMA))
    assert docs == {"visits.yaml": ADT_DOC}
    event = one(Mapper.load(), adt("A01", PID, PV1))
    assert (event.type, event.encounter.visit_number, event.thread_key) == (
        EventType.ENCOUNTER_ADMITTED,
        "V555",
        "enc:V555",
    )
    assert event.patient.mrn is not None and event.patient.mrn.value == "12345"


def test_a_base_may_have_a_base_whatever_the_order_of_their_names(own_bundled: Path) -> None:
    shared, rest = split_adt()
    write(own_bundled / "_shared.yaml", shared)
    write(own_bundled / "visits.yaml", {"base": "_shared.yaml", **rest})
    # Sorted before its base; a list replaces, a mapping merges, null removes, rules_first comes first.
    leave_rule = {"when": {"trigger": ["A21"]}, "type": "encounter.updated", "severity": "info"}
    write(
        own_bundled / "a-leave.yaml",
        {
            "base": "visits.yaml",
            "match": [{"message": "ADT", "triggers": ["A21", "A22"]}],
            "encounter": {"prior_location": None, "visit_number": "PV1-50.1"},
            "rules_first": [leave_rule],
        },
    )
    docs = names(load_mappings("hl7v2", [], REAL_SCHEMA))
    assert list(docs) == ["a-leave.yaml", "visits.yaml"]  # tried by file name, as ever
    leave, visits = docs["a-leave.yaml"], docs["visits.yaml"]
    assert leave["rules"] == [leave_rule, *visits["rules"]]
    assert leave["encounter"] == {
        **{k: v for k, v in visits["encounter"].items() if k != "prior_location"},
        "visit_number": "PV1-50.1",
    }
    assert leave["patient"] == visits["patient"] == shared["patient"]
    assert visits == ADT_DOC  # the base is as it was
    leave["patient"]["family"] = "PID-9"  # and shares nothing with the file built on it
    assert visits["patient"]["family"] == "PID-5.1.1"
    mapper = Mapper.load()
    assert one(mapper, adt("A21", PID, PV1 + "|" * 5 + "ALT9")).type is EventType.ENCOUNTER_UPDATED
    assert one(mapper, adt("A22", PID, PV1 + "|" * 5 + "ALT9")).encounter.visit_number == "ALT9"
    assert one(mapper, adt("A01", PID, PV1)).encounter.visit_number == "V555"


@pytest.mark.parametrize(
    ("files", "failing", "cycle"),
    [
        ({"_a.yaml": "_b.yaml", "_b.yaml": "_a.yaml", "x.yaml": "_a.yaml"}, "_b.yaml", "_a.yaml -> _b.yaml -> _a.yaml"),
        ({"x.yaml": "x.yaml"}, "x.yaml", "x.yaml -> x.yaml"),
    ],
)
def test_a_cycle_of_bases_is_an_error_naming_the_file_and_its_base(
    own_bundled: Path, files: dict[str, str], failing: str, cycle: str
) -> None:
    for name, base in files.items():
        write(own_bundled / name, {"base": base})
    with pytest.raises(MappingError) as caught:
        load_mappings("hl7v2", [], REAL_SCHEMA)
    assert caught.value.source == str(own_bundled / failing)
    assert caught.value.path == "$.base"
    assert cycle in str(caught.value)


def test_an_unknown_base_of_a_bundled_file_is_an_error_naming_the_file_and_its_base(own_bundled: Path) -> None:
    write(own_bundled / "visits.yaml", {"base": "_nosuch.yaml"})
    with pytest.raises(MappingError) as caught:
        load_mappings("hl7v2", [], REAL_SCHEMA)
    assert (caught.value.source, caught.value.path) == (str(own_bundled / "visits.yaml"), "$.base")
    assert "'_nosuch.yaml', which is not a bundled file" in str(caught.value)


@pytest.mark.parametrize(
    ("files", "path", "message"),
    [
        # A site file's base is a file loaded before it: not a later one.
        ({"a.yaml": {"base": "b.yaml"}, "b.yaml": {"base": "oru.yaml"}}, "$.base", "not a mapping file loaded before"),
        ({"a.yaml": {"base": ["oru.yaml"]}}, "$.base", "not a mapping file loaded before"),
        ({"a.yaml": {"base": "oru.yaml", "extends": "oru.yaml"}}, "$.base", "not both"),
        # The bundled files built on a fragment are resolved: a change to it would change none of them.
        ({"a.yaml": {"extends": "_visit.yaml", "thread_key": "x"}}, "$.extends", "_visit.yaml is a fragment"),
        ({"_visit.yaml": {"thread_key": "x"}}, "$", "_visit.yaml is a fragment"),
    ],
)
def test_a_bad_base_of_a_site_file_names_the_file_and_the_place(
    tmp_path: Path, files: dict[str, dict[str, Any]], path: str, message: str
) -> None:
    for name, doc in files.items():
        write(tmp_path / name, doc)
    with pytest.raises(MappingError) as caught:
        Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    bad = next(iter(files))  # the first by name: the one loaded first
    assert (caught.value.source, caught.value.path) == (str(tmp_path / bad), path)
    assert message in str(caught.value)


def test_a_fragment_is_never_tried_even_when_it_could_map_a_message(tmp_path: Path) -> None:
    assert all(not Path(source).name.startswith("_") for source in Mapper.load().sources)
    # A site fragment that is a whole mapping of A20 (which no bundled file takes) maps nothing ...
    whole = {
        **ADT_DOC,
        "match": [{"message": "ADT", "triggers": ["A20"]}],
        "rules": [{"type": "encounter.updated", "severity": "info"}],
    }
    write(tmp_path / "_beds.yaml", whole)
    site = Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert not site.matches(adt("A20", PID, PV1))
    assert all(not Path(source).name.startswith("_") for source in site.sources)
    # ... until a file has it as its base.
    write(tmp_path / "beds.yaml", {"base": "_beds.yaml"})
    site = Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert one(site, adt("A20", PID, PV1)).type is EventType.ENCOUNTER_UPDATED
    assert site.sources[-1] == str(tmp_path / "beds.yaml")


def test_a_site_file_based_on_a_bundled_one_maps_a_new_message_type_without_copying_it(tmp_path: Path) -> None:
    # The site's lab sends its results as ZRU^R01: oru.yaml's reading of them, under another match.
    write(tmp_path / "zru.yaml", {"base": "oru.yaml", "match": [{"message": "ZRU", "triggers": ["R01"]}]})
    site = Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert site.sources == (*Mapper.load().sources, str(tmp_path / "zru.yaml"))
    assert not Mapper.load().matches(lab("ZRU", "R01"))
    zru, oru = one(site, lab("ZRU", "R01")), one(site, lab("ORU", "R01"))
    assert zru.type is oru.type is EventType.RESULT_FINAL
    assert zru.model_dump(exclude={"subject", "dedup_key"}) == oru.model_dump(exclude={"subject", "dedup_key"})
    assert zru.subject is not None and zru.subject.key == "LIS:FL1"


def test_an_overlay_changes_the_file_it_extends_not_the_bundled_files_based_on_it(tmp_path: Path) -> None:
    # oul.yaml is built on the bundled oru.yaml when the bundled files load, before any site file.
    everything_preliminary = {"type": "result.preliminary", "severity": "info"}
    write(tmp_path / "oru-site.yaml", {"extends": "oru.yaml", "rules_first": [everything_preliminary]})
    site = Mapper.load(MappingOptions(extra_paths=(tmp_path,)))
    assert one(site, lab("ORU", "R01")).type is EventType.RESULT_PRELIMINARY
    assert one(site, lab("OUL", "R22")).type is EventType.RESULT_FINAL


# --- the sender's time zone (review #4 finding 11) and times without a UTC equivalent (finding 17) ---------

BERLIN = ZoneInfo("Europe/Berlin")
SIU_S12 = (
    "MSH|^~\\&|SCHED|TESTHOSP|BRIDGE|TESTHOSP|20261122080000||SIU^S12|CTRLS|P|2.5.1",
    "SCH|A1^SCHED|A1^SCHED|||||ECHO^Echo||||||||||||||||||Booked",
    "PID|1||MRN1^^^TESTHOSP^MR||Testpatient^Alpha||19800101|F",
    "AIS|1||ECHO^Echo|{start}",
)


def admission(evn_time: str) -> Message:
    return hl7(MSH_ADT.format(trigger="A01"), f"EVN|A01|{evn_time}", PID, PV1)


def booking(start: str) -> Message:
    return hl7(*SIU_S12[:-1], SIU_S12[-1].format(start=start))


@pytest.mark.parametrize(
    ("evn_time", "occurred_at"),
    [
        ("20261122080000", datetime(2026, 11, 22, 8, 0, tzinfo=BERLIN)),  # naive: the sender's local time
        ("20260722080000", datetime(2026, 7, 22, 8, 0, tzinfo=BERLIN)),  # summer time: +02:00
        ("20261122080000-0500", datetime(2026, 11, 22, 13, 0, tzinfo=UTC)),  # an offset given wins
    ],
)
def test_naive_hl7_times_are_read_in_the_senders_time_zone(evn_time: str, occurred_at: datetime) -> None:
    berlin = Mapper.load(MappingOptions(sender_timezone=BERLIN))
    event = one(berlin, admission(evn_time))
    assert event.occurred_at == occurred_at
    assert event.occurred_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("start", "zone", "expected"),
    [
        ("20261203140000", BERLIN, "2026-12-03T14:00:00+01:00"),
        ("20260603140000", BERLIN, "2026-06-03T14:00:00+02:00"),
        ("20261203140000", UTC, "2026-12-03T14:00:00+00:00"),
        ("20261203140000-0500", BERLIN, "2026-12-03T14:00:00-05:00"),  # as sent, offset and all
        ("20261203", BERLIN, "2026-12-03"),  # a day is a day: no zone
    ],
)
def test_a_datetime_field_without_offset_takes_the_senders_offset_on_that_day(
    start: str, zone: Any, expected: str
) -> None:
    event = one(Mapper.load(MappingOptions(sender_timezone=zone)), booking(start))
    assert event.subject is not None and event.subject.start == expected


def test_the_sender_time_zone_defaults_to_the_templates_time_zone_of_the_config() -> None:
    settings = parse_config({"templates": {"timezone": "Europe/Berlin"}}, env={})
    options = MappingOptions.from_config(settings.mapping)
    assert options.sender_timezone == BERLIN
    assert one(Mapper.load(options), admission("20261122080000")).occurred_at.hour == 8
    own = parse_config({"templates": {"timezone": "Europe/Berlin"}, "mapping": {"sender_timezone": "UTC"}}, env={})
    assert MappingOptions.from_config(own.mapping).sender_timezone == UTC


@pytest.mark.parametrize(
    "text",
    [
        "99991231235959-1400",  # UTC would be in year 10000
        "00010101000000+1400",  # UTC would be in year 0
        "99991231235959.9999-2359",
    ],
)
def test_a_timestamp_without_a_utc_equivalent_is_none(text: str) -> None:
    assert hl7_timestamp(text) is None
    assert hl7_timestamp(text, BERLIN) is None


def test_a_naive_timestamp_at_the_edge_of_time_is_none_where_the_sender_zone_pushes_it_over() -> None:
    assert hl7_timestamp("0001010100") == datetime(1, 1, 1, tzinfo=UTC)
    assert hl7_timestamp("0001010100", BERLIN) is None  # local midnight of year 1 is year 0 in UTC
    assert hl7_timestamp("99991231235959", BERLIN) == datetime(9999, 12, 31, 23, 59, 59, tzinfo=BERLIN)


def test_an_event_time_without_a_utc_equivalent_falls_back_to_the_next_source_then_receipt(mapper: Mapper) -> None:
    # /tmp/rev/sim4 of the review: EVN-2 at year 9999 and -1400 crashed compose (astimezone) downstream.
    msh = MSH_ADT.format(trigger="A01")
    event = one(mapper, hl7(msh, "EVN|A01|99991231235959-1400", PID, PV1))
    assert event.occurred_at == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)  # MSH-7
    edge = msh.replace("20240115103000", "00010101000000+1400")
    assert one(mapper, hl7(edge, "EVN|A01|99991231235959-1400", PID, PV1)).occurred_at == RECEIVED
    event.occurred_at.astimezone(UTC)  # every event time converts


# --- errors in rules an overlay puts first name the overlay's own place (finding 18) ---------------------

GOOD_RULE = {"when": {"trigger": ["A08"]}, "type": "encounter.updated", "severity": "info"}


def load_error(*paths: Path) -> MappingError:
    with pytest.raises(MappingError) as err:
        Mapper.load(MappingOptions(extra_paths=paths))
    return err.value


@pytest.mark.parametrize(
    ("doc", "path", "message"),
    [
        pytest.param(
            {"extends": "adt.yaml", "rules_first": [GOOD_RULE, {**GOOD_RULE, "type": "encounter.updatedd"}]},
            "$.rules_first[1].type",
            "'encounter.updatedd' is not one of",
            id="schema",
        ),
        pytest.param(
            {"extends": "adt.yaml", "rules_first": [{**GOOD_RULE, "dedup_key": "{nope}"}]},
            "$.rules_first[0].dedup_key[0]",
            "unknown placeholder {nope}",
            id="compile",
        ),
        pytest.param(
            {"extends": "adt.yaml", "rules_first": [GOOD_RULE], "rules": [GOOD_RULE, {"type": "encounter.nope"}]},
            "$.rules[1]",
            "'severity' is a required property",
            id="own-rules-after-rules-first",
        ),
        pytest.param(
            {"base": "adt.yaml", "match": [{"message": "ZDT", "triggers": ["A01"]}], "rules_first": [{"type": "x"}]},
            "$.rules_first[0]",
            "'severity' is a required property",
            id="based-file",
        ),
    ],
)
def test_an_error_in_an_overlays_rules_names_the_overlay_and_its_own_json_path(
    tmp_path: Path, doc: dict[str, Any], path: str, message: str
) -> None:
    overlay = write(tmp_path / "site.yaml", doc)
    error = load_error(overlay)
    assert (error.source, error.path) == (str(overlay), path)
    assert str(error).startswith(f"{overlay}:{path}: {message}")


def test_an_error_in_an_earlier_overlays_rules_first_names_that_overlay(tmp_path: Path) -> None:
    # Two overlays of adt.yaml: the later one's rules come first, then the earlier one's, then adt.yaml's.
    first = write(tmp_path / "a.yaml", {"extends": "adt.yaml", "rules_first": [GOOD_RULE, {"type": "nope"}]})
    second = write(tmp_path / "b.yaml", {"extends": "adt.yaml", "rules_first": [GOOD_RULE, GOOD_RULE, GOOD_RULE]})
    error = load_error(first, second)
    assert (error.source, error.path) == (str(first), "$.rules_first[1]")
    assert str(error).startswith(f"{first}:$.rules_first[1]: 'severity' is a required property")


# --- skipped stretches of a grouping (OML's prior results), repetition choices, subject and link facts ---


def grouping_doc(**for_each: Any) -> dict[str, Any]:
    """A minimal order mapping: one event per ORC, keyed by ORC-2, located by the nearest PV1."""
    return {
        "match": [{"message": "OML", "triggers": ["O21"]}],
        "for_each": {"segment": "ORC", **for_each},
        "encounter": {"location": {"field": "PV1-3", "unit": "PL-1.1"}},
        "subject": {"kind": "order", "key": "ORC-2.1"},
        "thread_key": "msg:{MSH-10}",
        "dedup_key": "{type}:{subject.key}",
        "rules": [{"type": "order.placed", "severity": "info"}],
    }


OML_HEADER = "MSH|^~\\&|CPOE|TESTHOSP|LIS|TESTHOSP|20240115103000||OML^O21|CTRL5|P|2.5.1"


def test_a_skip_from_segment_after_an_anchor_skips_up_to_a_resume_at_segment() -> None:
    mapper = Mapper.from_documents(
        [("lab.yaml", grouping_doc(skip_from=["PV1", "AL1"], resume_at=["SPM"], ends_before=["PID"]))]
    )
    message = hl7(
        OML_HEADER,
        ORU_PID,
        "PV1|1|I|4E",  # before any ORC: the patient's visit
        "ORC|NW|A",
        "OBR|1|A||CBC",
        "PV1|1|I|OLDWARD",  # after an ORC: opens a skipped stretch (prior results)
        "ORC|SC|OLD1||CM",
        "OBR|1|OLD1||K",
        "AL1|1|DA|PEN",
        "ORC|CA|OLD2",
        "SPM|1|SP2",  # resumes
        "ORC|NW|B",
        "PID|2||67890^^^TESTHOSP^MR",  # ends_before: the next patient; their PV1 is context again
        "PV1|1|I|3W",
        "ORC|NW|C",
    )
    events = run(mapper, message)
    assert [(e.subject and e.subject.key, e.encounter.location.unit) for e in events] == [
        ("A", "4E"),
        ("B", "4E"),
        ("C", "3W"),
    ]


def test_without_skip_from_every_anchor_is_an_event() -> None:
    mapper = Mapper.from_documents([("lab.yaml", grouping_doc())])
    message = hl7(OML_HEADER, ORU_PID, "PV1|1|I|4E", "ORC|NW|A", "PV1|1|I|OLDWARD", "ORC|SC|OLD1||CM")
    assert [e.subject and e.subject.key for e in run(mapper, message)] == ["A", "OLD1"]


@pytest.mark.parametrize(
    "for_each",
    [
        {"skip_from": ["ORC"]},
        {"skip_from": ["PV1"], "resume_at": ["PV1"]},
        {"skip_from": ["PID"], "ends_before": ["PID"]},
        {"skip_from": ["OBR"], "with_leading": ["OBR"]},
    ],
)
def test_a_skip_from_segment_that_has_another_role_is_an_error(for_each: dict[str, Any]) -> None:
    with pytest.raises(MappingError) as caught:
        Mapper.from_documents([("lab.yaml", grouping_doc(**for_each))])
    assert caught.value.path == "$.for_each.skip_from"


def identifier_doc(mrn: dict[str, Any], mrn_repetition: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = bundled("adt.yaml")
    doc["patient"]["mrn"] = mrn
    doc.pop("mrn_repetition", None)
    if mrn_repetition is not None:
        doc["mrn_repetition"] = mrn_repetition
    return doc


@pytest.mark.parametrize(
    ("choice", "pid3", "authorities", "expected"),
    [
        # Without then/never: the wanted type, else the first (as before).
        ({"where": "CX-5", "in": ["MR"]}, "1^^^A^AN~2^^^B", (), "1"),
        # then: those types, and untyped ones, before any other type.
        ({"where": "CX-5", "in": ["MR"], "then": ["PI"]}, "1^^^A^AN~2^^^B", (), "2"),
        ({"where": "CX-5", "in": ["MR"], "then": ["PI"]}, "1^^^A^AN~2^^^B^PI~3^^^C", (), "2"),
        # With authority: the site's authorities before then-types, and first among the wanted ones.
        ({"where": "CX-5", "in": ["MR"], "authority": "CX-4.1", "then": ["PI"]}, "2^^^B^PI~1^^^A^AN", ("A",), "1"),
        ({"where": "CX-5", "in": ["MR"], "authority": "CX-4.1"}, "1^^^A^MR~2^^^B^MR", ("B",), "2"),
        # never: never taken, even as the last resort; globs and any case.
        ({"where": "CX-5", "in": ["MR"], "never": ["SS"]}, "1^^^A^SS~2^^^B^AN", (), "2"),
        ({"where": "CX-5", "in": ["MR"], "never": ["SS", "NN???"]}, "1^^^A^ss~2^^^B^NNDEU", (), None),
        ({"where": "CX-5", "in": ["MR"], "never": ["NN???"]}, "1^^^A^NNDEUX", (), "1"),
    ],
)
def test_a_where_choice_ranks_repetitions_and_never_takes_an_excluded_one(
    tmp_path: Path, choice: dict[str, Any], pid3: str, authorities: tuple[str, ...], expected: str | None
) -> None:
    doc = identifier_doc({"field": "PID-3", "repetition": choice, "value": "CX-1"})
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),), mrn_authorities=authorities))
    found = one(site, adt("A01", f"PID|1||{pid3}||Testpatient^Alpha", PV1)).patient.mrn
    assert (found.value if found is not None else None) == expected


def test_repetition_mrn_is_the_files_mrn_repetition(tmp_path: Path) -> None:
    choice = {"where": "CX-5", "in": ["XX"], "never": ["MR"]}
    doc = identifier_doc({"field": "PID-3", "repetition": "mrn", "value": "CX-1"}, choice)
    site = Mapper.load(MappingOptions(extra_paths=(write(tmp_path / "adt.yaml", doc),)))
    pid = "PID|1||1^^^A^MR~2^^^A^XX||Testpatient^Alpha"
    assert one(site, adt("A01", pid, PV1)).patient.mrn.value == "2"  # type: ignore[union-attr]
    # The bundled files share _visit.yaml's: never a social security number.
    ssn_first = "PID|1||123-45-6789^^^SSA^SS~M1^^^TESTHOSP||Testpatient^Alpha"
    assert one(Mapper.load(), adt("A01", ssn_first, PV1)).patient.mrn.value == "M1"  # type: ignore[union-attr]


def test_repetition_mrn_without_an_mrn_repetition_is_an_error_naming_its_place() -> None:
    doc = identifier_doc({"field": "PID-3", "repetition": "mrn", "value": "CX-1"})
    with pytest.raises(MappingError) as caught:
        Mapper.from_documents([("adt.yaml", doc)])
    assert caught.value.path == "$.patient.mrn.repetition"


def test_subject_digest_covers_the_subject_only() -> None:
    digests = []
    for pv1 in (PV1, PV1.replace("4E^136^B", "ICU^1^A")):
        doc = grouping_doc()
        doc["dedup_key"] = "{subject_digest}|{digest}"
        event = one(Mapper.from_documents([("lab.yaml", doc)]), hl7(OML_HEADER, ORU_PID, pv1, "ORC|NW|A"))
        digests.append(event.dedup_key.split("|"))
    (subject_here, all_here), (subject_there, all_there) = digests
    assert subject_here == subject_there and all_here != all_there


def test_the_links_are_facts_of_the_dedup_key_only() -> None:
    doc = grouping_doc()
    doc["rules"] = [
        {"type": "order.cancelled", "severity": "notice", "lifecycle": "cancel", "links": {"cancels": "k:{ORC-2.1}"}}
    ]
    doc["dedup_key"] = ["{type}:{links.cancels}:{links.replaces}", "{type}:{links.cancels}"]
    event = one(Mapper.from_documents([("lab.yaml", doc)]), hl7(OML_HEADER, ORU_PID, "ORC|CA|A"))
    assert (event.links, event.dedup_key) == ({"cancels": "k:A"}, "order.cancelled:k:A")
    for key, template in (("thread_key", "t:{links.cancels}"), ("thread_key", "t:{subject_digest}")):
        broken = {**grouping_doc(), key: template}
        with pytest.raises(MappingError, match="unknown placeholder"):
            Mapper.from_documents([("lab.yaml", broken)])
    linked = grouping_doc()
    linked["rules"] = [{"type": "order.placed", "severity": "info", "links": {"x": "{links.cancels}"}}]
    with pytest.raises(MappingError, match="unknown placeholder"):
        Mapper.from_documents([("lab.yaml", linked)])


# --- daylight saving time and dates in the sender's zone (review #2 finding 11) -------------------

NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("text", "zone", "utc", "iso"),
    [
        # Clocks go back: the repeated hour is its first occurrence (the offset before the change).
        ("20261025021500", BERLIN, datetime(2026, 10, 25, 0, 15, tzinfo=UTC), "2026-10-25T02:15:00+02:00"),
        ("20261025021500+0200", BERLIN, datetime(2026, 10, 25, 0, 15, tzinfo=UTC), "2026-10-25T02:15:00+02:00"),
        ("20261025021500+0100", BERLIN, datetime(2026, 10, 25, 1, 15, tzinfo=UTC), "2026-10-25T02:15:00+01:00"),
        ("20261101013000", NEW_YORK, datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "2026-11-01T01:30:00-04:00"),
        ("20261101013000-0500", NEW_YORK, datetime(2026, 11, 1, 6, 30, tzinfo=UTC), "2026-11-01T01:30:00-05:00"),
        # Clocks go forward: a time no clock showed is a clock not yet put forward (the offset before).
        ("20260329023000", BERLIN, datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "2026-03-29T02:30:00+01:00"),
        ("20260329033000", BERLIN, datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "2026-03-29T03:30:00+02:00"),
        ("20260329023000+0200", BERLIN, datetime(2026, 3, 29, 0, 30, tzinfo=UTC), "2026-03-29T02:30:00+02:00"),
        ("20260308023000", NEW_YORK, datetime(2026, 3, 8, 7, 30, tzinfo=UTC), "2026-03-08T02:30:00-05:00"),
        ("2026032902", BERLIN, datetime(2026, 3, 29, 1, 0, tzinfo=UTC), "2026-03-29T02:00:00+01:00"),
    ],
)
def test_a_naive_time_at_a_dst_change_takes_the_offset_before_the_change(
    text: str, zone: Any, utc: datetime, iso: str
) -> None:
    value = hl7_timestamp(text, zone)
    assert value is not None
    # A fixed offset: a ZoneInfo time in a fold or gap never equals a UTC time (PEP 495), this one does.
    assert isinstance(value.tzinfo, timezone)
    assert value == utc
    assert hl7_datetime(text, zone) == iso


@pytest.mark.parametrize(
    ("evn_time", "expected"),
    [
        ("20261025021500", datetime(2026, 10, 25, 0, 15, tzinfo=UTC)),  # first 02:15
        ("20261025021500+0100", datetime(2026, 10, 25, 1, 15, tzinfo=UTC)),  # the second, as sent
        ("20260329023000", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),  # in the gap: kept, +01:00
        ("20261025", datetime(2024, 1, 15, 9, 30, tzinfo=UTC)),  # a day only: MSH-7 (10:30 in Berlin)
        ("2026102512", datetime(2026, 10, 25, 11, 0, tzinfo=UTC)),  # an hour is a moment
    ],
)
def test_the_event_time_of_a_berlin_sender_across_dst_and_at_day_precision(evn_time: str, expected: datetime) -> None:
    event = one(Mapper.load(MappingOptions(sender_timezone=BERLIN)), admission(evn_time))
    assert event.occurred_at == expected


def test_a_day_precision_event_time_falls_back_to_msh7_else_the_receipt_time() -> None:
    berlin = Mapper.load(MappingOptions(sender_timezone=BERLIN))
    msh7 = datetime(2024, 1, 15, 10, 30, tzinfo=BERLIN)
    lab = "OBR|1||F1|BMP^Basic metabolic panel" + "|" * 18 + "20261025|||F"
    assert one(berlin, oru(lab, obx(1, "K", "4.0", "N", "F"))).occurred_at == msh7  # OBR-22 a day only
    dated = MSH_ADT.format(trigger="A01").replace("20240115103000", "20240115")
    assert one(berlin, hl7(dated, "EVN|A01|20261025", PID, PV1)).occurred_at == RECEIVED
