"""Golden tests of mappings/hl7v2/oru.yaml: ORU^R01 and the point-of-care results ORU^R30, R31, R32.

Each test writes a synthetic message (every name and number invented) and compares
the event(s) field by field. Fixtures (``map_hl7``, ``map_one``) come from this
folder's conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import ClinicalEvent

# The one synthetic patient and visit most messages below carry.
PID_ALPHA = "PID|1||999^^^OTHERHOSP^PI~12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
PV1_ICU = "PV1|1|I|ICU^12^A^TESTHOSP||||1234^Doctor^Test^^^Dr||||||||||||V555^^^TESTHOSP"

PATIENT_ALPHA: dict[str, Any] = {
    "mrn": {"value": "12345", "authority": "TESTHOSP", "type": "MR"},
    "identifiers": [
        {"value": "999", "authority": "OTHERHOSP", "type": "PI"},
        {"value": "12345", "authority": "TESTHOSP", "type": "MR"},
    ],
    "family": "Testpatient",
    "given": "Alpha",
    "birth_date": "1980-05-21",
    "sex": "F",
}
ENCOUNTER_ICU: dict[str, Any] = {
    "visit_number": "V555",
    "patient_class": "I",
    "location": {"facility": "TESTHOSP", "unit": "ICU", "room": "12", "bed": "A"},
    "prior_location": None,
    "attending": {"id": "1234", "family": "Doctor", "given": "Test", "prefix": "Dr"},
    "admitted_at": None,
    "discharged_at": None,
}
NO_ENCOUNTER: dict[str, Any] = {
    "visit_number": None,
    "patient_class": None,
    "location": {"facility": None, "unit": None, "room": None, "bed": None},
    "prior_location": None,
    "attending": None,
    "admitted_at": None,
    "discharged_at": None,
}


def msh(trigger: str, version: str, control: str = "CTRL1") -> str:
    return f"MSH|^~\\&|LAB|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ORU^{trigger}|{control}|P|{version}"


def obr(set_id: int, filler: str, service: str, status: str, reported: str = "20240115101500") -> str:
    """An OBR with placer PL<n>^CPOE, filler ``filler`` (number^namespace), OBR-7, OBR-22 and OBR-25."""
    return f"OBR|{set_id}|PL{set_id}^CPOE|{filler}|{service}|||20240115080000" + "|" * 15 + f"{reported}|||{status}"


def obs(
    code: str,
    text: str,
    value: str | None,
    units: str | None,
    reference_range: str | None,
    flags: tuple[str, ...],
    status: str,
    critical: bool = False,
) -> dict[str, Any]:
    return {
        "code": code,
        "text": text,
        "value": value,
        "units": units,
        "reference_range": reference_range,
        "flags": list(flags),
        "status": status,
        "critical": critical,
    }


def golden(event: ClinicalEvent) -> dict[str, Any]:
    """Every field of the event but its ids, source, origin and dedup key (tested on their own)."""
    return event.model_dump(mode="json", exclude={"id", "source", "origin", "dedup_key", "schema_version"})


def result(
    type_: str,
    severity: str,
    key: str,
    code: str,
    text: str,
    status: str | None,
    observations: list[dict[str, Any]],
    *,
    lifecycle: str = "new",
    links: dict[str, str] | None = None,
    occurred_at: str = "2024-01-15T10:15:00Z",
    patient: dict[str, Any] = PATIENT_ALPHA,
    encounter: dict[str, Any] = ENCOUNTER_ICU,
    thread_key: str = "enc:TESTHOSP:V555",
) -> dict[str, Any]:
    return {
        "type": type_,
        "severity": severity,
        "occurred_at": occurred_at,
        "patient": patient,
        "encounter": encounter,
        "subject": {
            "kind": "result",
            "key": key,
            "code": code,
            "text": text,
            "status": status,
            "start": None,
            "end": None,
            "detail": None,
            "observations": observations,
        },
        "thread_key": thread_key,
        "lifecycle": lifecycle,
        "links": links or {},
    }


# --- ORU^R01 ----------------------------------------------------------------------------------------


def test_r01_v23_each_report_is_one_event_with_its_own_observations(map_hl7: Any) -> None:
    # v2.3: OBX-8 is IS; "" is no value; NTE and Z-segments in and between the groups are ignored.
    events = map_hl7(
        f"""
        {msh("R01", "2.3")}
        {PID_ALPHA}
        {PV1_ICU}
        ZPI|1|site specific
        ORC|RE|PL1^CPOE|FL1^LAB
        {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", "F")}
        NTE|1||fasting sample
        OBX|1|NM|K^Potassium||4.0|mmol/L|3.5-5.1|N|||F
        OBX|2|NM|NA^Sodium||""|mmol/L|135-145|""|||F
        ZOB|1|ignored
        ORC|RE|PL2^CPOE|FL2^LAB
        {obr(2, "FL2^LAB", "CBC^Blood count", "F", reported="20240115101700")}
        OBX|1|NM|HGB^Haemoglobin||9.1|g/dL|12-16|L|||F
        """,
        message_id="m1",
    )
    assert [e.id for e in events] == ["m1-1", "m1-2"]
    assert [golden(e) for e in events] == [
        result(
            "result.final",
            "notice",
            "LAB:FL1",
            "BMP",
            "Basic metabolic panel",
            "F",
            [
                obs("K", "Potassium", "4.0", "mmol/L", "3.5-5.1", ("N",), "F"),
                obs("NA", "Sodium", None, "mmol/L", "135-145", (), "F"),
            ],
        ),
        result(
            "result.final",
            "warning",
            "LAB:FL2",
            "CBC",
            "Blood count",
            "F",
            [obs("HGB", "Haemoglobin", "9.1", "g/dL", "12-16", ("L",), "F")],
            occurred_at="2024-01-15T10:17:00Z",
        ),
    ]


def test_r01_v251_patients_of_one_message_keep_their_own_results_and_visit(map_hl7: Any) -> None:
    # v2.5.1: OBX-8 is CWE (HH^...^HL70078): the code counts. The second patient has no visit.
    events = map_hl7(
        f"""
        {msh("R01", "2.5.1")}
        {PID_ALPHA}
        {PV1_ICU}
        {obr(1, "FL1^LAB", "K^Potassium panel", "F")}
        OBX|1|NM|K^Potassium||6.8|mmol/L|3.5-5.1|HH^Critical high^HL70078|||F
        PID|1||67890^^^TESTHOSP^MR||Testpatient^Gamma||19750101|M
        {obr(1, "FL9^LAB", "GLU^Glucose", "P", reported="")}
        OBX|1|NM|GLU^Glucose||5.5|mmol/L|3.9-5.5|N^Normal^HL70078|||P
        """
    )
    gamma = {
        "mrn": {"value": "67890", "authority": "TESTHOSP", "type": "MR"},
        "identifiers": [{"value": "67890", "authority": "TESTHOSP", "type": "MR"}],
        "family": "Testpatient",
        "given": "Gamma",
        "birth_date": "1975-01-01",
        "sex": "M",
    }
    assert [golden(e) for e in events] == [
        result(
            "result.critical",
            "critical",
            "LAB:FL1",
            "K",
            "Potassium panel",
            "F",
            [obs("K", "Potassium", "6.8", "mmol/L", "3.5-5.1", ("HH",), "F", critical=True)],
        ),
        result(
            "result.preliminary",
            "info",
            "LAB:FL9",
            "GLU",
            "Glucose",
            "P",
            [obs("GLU", "Glucose", "5.5", "mmol/L", "3.9-5.5", ("N",), "P")],
            occurred_at="2024-01-15T10:30:00Z",  # no OBR-22: the message time
            patient=gamma,
            encounter=NO_ENCOUNTER,
            thread_key="pat:TESTHOSP:67890",
        ),
    ]


def test_r01_v28_patient_and_specimen_observations_are_not_results(map_hl7: Any) -> None:
    # v2.7+: an OBX after PID describes the patient; v2.5+: the OBX after a SPM describe the specimen.
    event = map_hl7(
        f"""
        {msh("R01", "2.8")}
        {PID_ALPHA}
        OBX|1|NM|29463-7^Body weight^LN||70|kg|||||F
        {PV1_ICU}
        ORC|RE|PL1^CPOE|FL1^LAB
        {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", "F")}
        OBX|1|NM|K^Potassium||4.1|mmol/L|3.5-5.1||||F
        SPM|1|SP1&LAB||BLD^Whole blood^HL70487
        OBX|1|CWE|SPC^Specimen condition||HEM^Haemolysed^L||||||F
        """
    )
    assert [golden(e) for e in event] == [
        result(
            "result.final",
            "notice",
            "LAB:FL1",
            "BMP",
            "Basic metabolic panel",
            "F",
            [obs("K", "Potassium", "4.1", "mmol/L", "3.5-5.1", (), "F")],
        )
    ]


def test_r01_v26_correction_edits_the_post_of_the_same_report(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("R01", "2.6")}
        {PID_ALPHA}
        {PV1_ICU}
        {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", "C")}
        OBX|1|NM|K^Potassium||5.4|mmol/L|3.5-5.1|H|||C
        OBX|2|NM|NA^Sodium||140|mmol/L|135-145|N|||F
        """
    )
    assert golden(event) == result(
        "result.corrected",
        "warning",
        "LAB:FL1",
        "BMP",
        "Basic metabolic panel",
        "C",
        [
            obs("K", "Potassium", "5.4", "mmol/L", "3.5-5.1", ("H",), "C"),
            obs("NA", "Sodium", "140", "mmol/L", "135-145", ("N",), "F"),
        ],
        lifecycle="correct",
        links={"corrects": "LAB:FL1"},
    )


def test_r01_v27_withdrawn_report_strikes_the_post_of_the_same_report(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("R01", "2.7")}
        {PID_ALPHA}
        {PV1_ICU}
        {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", "F")}
        OBX|1|NM|K^Potassium||4.0|mmol/L|3.5-5.1||||W
        """
    )
    assert golden(event) == result(
        "result.retracted",
        "notice",
        "LAB:FL1",
        "BMP",
        "Basic metabolic panel",
        "F",
        [obs("K", "Potassium", "4.0", "mmol/L", "3.5-5.1", (), "W")],
        lifecycle="cancel",
        links={"cancels": "LAB:FL1"},
    )


@pytest.mark.parametrize(
    ("version", "obr_status", "lines", "expected"),
    [
        # OBX-11 / OBR-25 (Tables 0085, 0123) and OBX-8 flags decide type, severity and lifecycle.
        ("2.3", "F", ["N|||F"], ("result.final", "notice", "new", {})),
        ("2.3.1", "", ["N|||F", "N|||F"], ("result.final", "notice", "new", {})),
        ("2.4", "F", ["H|||F"], ("result.final", "warning", "new", {})),
        ("2.4", "P", ["N|||P"], ("result.preliminary", "info", "new", {})),
        ("2.5", "", ["N|||F", "|||I"], ("result.preliminary", "info", "new", {})),
        ("2.5", "I", ["A^Abnormal^HL70078|||I"], ("result.preliminary", "warning", "new", {})),
        ("2.5.1", "P", ["LL^Critical low^HL70078|||P"], ("result.critical", "critical", "new", {})),
        ("2.6", "F", ["AA|||F"], ("result.critical", "critical", "new", {})),
        ("2.6", "C", ["N|||F"], ("result.corrected", "notice", "correct", {"corrects": "LAB:FL1"})),
        ("2.7", "F", ["HH|||C"], ("result.corrected", "critical", "correct", {"corrects": "LAB:FL1"})),
        ("2.7", "", ["|||D", "N|||F"], ("result.corrected", "notice", "correct", {"corrects": "LAB:FL1"})),
        ("2.8", "", ["|||D", "|||D"], ("result.retracted", "notice", "cancel", {"cancels": "LAB:FL1"})),
        ("2.8", "F", ["N|||W", "N|||F"], ("result.retracted", "notice", "cancel", {"cancels": "LAB:FL1"})),
        ("2.5", "", [], ("result.preliminary", "info", "new", {})),
        # U: changed to final without retransmitting the values sent as preliminary.
        ("2.5", "", ["N|||U"], ("result.final", "notice", "new", {})),
        ("2.5", "", ["N|||U", "H|||F"], ("result.final", "warning", "new", {})),
        ("2.6", "", ["N|||U", "N|||P"], ("result.preliminary", "info", "new", {})),
        # OBR-25 X, or X on every line: no results, the test was cancelled; what was posted for it is struck.
        ("2.5", "X", [], ("result.retracted", "notice", "cancel", {"cancels": "LAB:FL1"})),
        ("2.5.1", "X", ["HH|||P"], ("result.retracted", "notice", "cancel", {"cancels": "LAB:FL1"})),
        ("2.6", "", ["|||X", "|||X"], ("result.retracted", "notice", "cancel", {"cancels": "LAB:FL1"})),
        ("2.6", "F", ["|||X", "N|||F"], ("result.final", "notice", "new", {})),
    ],
)
def test_r01_status_and_flag_variants(
    map_one: Any, version: str, obr_status: str, lines: list[str], expected: tuple[str, str, str, dict[str, str]]
) -> None:
    obx = "\n".join(f"OBX|{i}|NM|K{i}^Test {i}||4.{i}|mmol/L|3.5-5.1|{tail}" for i, tail in enumerate(lines, 1))
    event = map_one(
        f"""
        {msh("R01", version)}
        {PID_ALPHA}
        {PV1_ICU}
        {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", obr_status)}
        {obx}
        """
    )
    assert (event.type, event.severity, event.lifecycle, event.links) == expected
    assert event.subject is not None and event.subject.key == "LAB:FL1"


def test_r01_same_report_resent_is_one_fact_and_its_final_is_another(map_one: Any) -> None:
    def report(control: str, status: str) -> ClinicalEvent:
        return map_one(
            f"""
            {msh("R01", "2.5.1", control=control)}
            {PID_ALPHA}
            {PV1_ICU}
            {obr(1, "FL1^LAB", "BMP^Basic metabolic panel", status)}
            OBX|1|NM|K^Potassium||4.0|mmol/L|3.5-5.1||||{status}
            """
        )

    preliminary, resent, final = report("C1", "P"), report("C2", "P"), report("C3", "F")
    assert preliminary.dedup_key == resent.dedup_key
    assert final.dedup_key != preliminary.dedup_key
    assert preliminary.id == "msg1-1" and preliminary.origin == {"listener": "golden", "control_id": "C1"}


# --- ORU^R30, R31, R32: point-of-care results -------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "version", "control"),
    [
        ("R30", "2.5", "NW"),  # results without an existing order: place one
        ("R31", "2.6", "NW"),  # results for a new order
        ("R32", "2.5.1", "RE"),  # preliminary results for an existing order
    ],
)
def test_point_of_care_results_map_like_r01(map_one: Any, trigger: str, version: str, control: str) -> None:
    event = map_one(
        f"""
        {msh(trigger, version)}
        {PID_ALPHA}
        PD1|||TESTHOSP CLINIC
        {PV1_ICU}
        ORC|{control}|PL7^POC|FL7^POCT
        {obr(7, "FL7^POCT", "GLU^Glucose", "")}
        NTE|1||bedside meter
        TQ1|1||||||20240115100000
        OBX|1|NM|GLU^Glucose||2.1|mmol/L|3.9-5.5|LL|||P
        NTE|1||repeated
        OBX|2|NM|KET^Ketones||0.2|mmol/L|<0.6||||P
        """
    )
    assert golden(event) == result(
        "result.critical",
        "critical",
        "POCT:FL7",
        "GLU",
        "Glucose",
        None,
        [
            obs("GLU", "Glucose", "2.1", "mmol/L", "3.9-5.5", ("LL",), "P", critical=True),
            obs("KET", "Ketones", "0.2", "mmol/L", "<0.6", (), "P"),
        ],
    )


def test_point_of_care_result_without_order_numbers_is_keyed_by_the_message(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("R30", "2.5", control="POC42")}
        {PID_ALPHA}
        ORC|NW
        OBR|1|||GLU^Glucose
        OBX|1|NM|GLU^Glucose||5.0|mmol/L|3.9-5.5||||F
        """
    )
    assert event.subject is not None and event.subject.key == "POC42-1"
    assert (event.type, event.thread_key) == ("result.final", "pat:TESTHOSP:12345")


def test_r01_cancelled_test_without_results_says_so_in_its_status(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("R01", "2.5.1")}
        {PID_ALPHA}
        {PV1_ICU}
        {obr(1, "FL1^LAB", "K^Potassium", "X")}
        NTE|1||specimen haemolysed
        """
    )
    assert golden(event) == result(
        "result.retracted",
        "notice",
        "LAB:FL1",
        "K",
        "Potassium",
        "X",
        [],
        lifecycle="cancel",
        links={"cancels": "LAB:FL1"},
    )


def test_r01_each_correction_is_a_new_fact_even_back_to_an_earlier_value(map_one: Any) -> None:
    # Corrected to 5.4 at 10:15, to 4.0 at 11:00, back to 5.4 at 12:00: three facts. The last one
    # has the content of the first but its own report time (OBR-22), so it is not dropped.
    def corrected(control: str, value: str, reported: str) -> ClinicalEvent:
        return map_one(
            f"""
            {msh("R01", "2.6", control=control)}
            {PID_ALPHA}
            {PV1_ICU}
            {obr(1, "FL1^LAB", "K^Potassium", "C", reported=reported)}
            OBX|1|NM|K^Potassium||{value}|mmol/L|3.5-5.1||||C
            """
        )

    first = corrected("C1", "5.4", "20240115101500")
    second = corrected("C2", "4.0", "20240115110000")
    third = corrected("C3", "5.4", "20240115120000")
    assert [e.type.value for e in (first, second, third)] == ["result.corrected"] * 3
    assert len({first.dedup_key, second.dedup_key, third.dedup_key}) == 3
    # The same correction re-sent under a new control ID is the same fact.
    assert corrected("C4", "5.4", "20240115120000").dedup_key == third.dedup_key


def test_r01_the_same_critical_result_resent_from_another_bed_is_one_fact(map_one: Any) -> None:
    # The patient moved from ICU to 4E between the two sends; the visit (the thread) and the report did not.
    def critical(control: str, pv1: str) -> ClinicalEvent:
        return map_one(
            f"""
            {msh("R01", "2.5.1", control=control)}
            {PID_ALPHA}
            {pv1}
            {obr(1, "FL1^LAB", "K^Potassium", "F")}
            OBX|1|NM|K^Potassium||7.0|mmol/L|3.5-5.1|HH|||F
            """
        )

    in_icu = critical("C1", PV1_ICU)
    on_ward = critical("C2", PV1_ICU.replace("ICU^12^A", "4E^136^B"))
    assert (in_icu.type.value, on_ward.encounter.location.unit) == ("result.critical", "4E")
    assert in_icu.thread_key == on_ward.thread_key == "enc:TESTHOSP:V555"
    assert in_icu.dedup_key == on_ward.dedup_key


def test_r01_a_correction_without_obr22_resent_with_a_fresh_msh7_is_the_same_fact(map_one: Any) -> None:
    # Review 2, finding 6: without OBR-22 the key was built from MSH-7, fresh in every resend, so the
    # same correction was a new fact (and a new critical alert) each time it came.
    def corrected(control: str, sent: str, value: str) -> ClinicalEvent:
        return map_one(
            f"""
            {msh("R01", "2.6", control=control).replace("20240115103000", sent)}
            {PID_ALPHA}
            {PV1_ICU}
            {obr(1, "FL1^LAB", "K^Potassium", "C", reported="")}
            OBX|1|NM|K^Potassium||{value}|mmol/L|3.5-5.1|HH|||C
            """
        )

    first = corrected("C1", "20240115103000", "6.9")
    resent = corrected("C2", "20240115104500", "6.9")
    other = corrected("C3", "20240115110000", "7.1")

    assert first.type.value == "result.corrected"
    assert first.dedup_key == resent.dedup_key
    assert other.dedup_key != first.dedup_key
