"""Golden tests of mappings/hl7v2/oul.yaml (OUL^R21, R22, R23) and oul_r24.yaml (OUL^R24).

The lab-automation result messages carry the same reports as ORU^R01 with their
segments in another order (specimen and container first, the ORC after its OBR),
so they map to the same events as oru.yaml, which both files have as their base.
Every name and number is invented.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bridge.events import ClinicalEvent
from bridge.mapping import mappings_dir

PID_ALPHA = "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
PV1_WARD = "PV1|1|I|4E^136^B^TESTHOSP||||||||||||||||V555^^^TESTHOSP"


def msh(trigger: str, version: str) -> str:
    return f"MSH|^~\\&|ANALYZER|TESTLAB|LIS|TESTHOSP|20240115103000||OUL^{trigger}|CTRL1|P|{version}"


def obr(set_id: int, filler: str, service: str, status: str) -> str:
    """An OBR with placer PL<n>^CPOE, filler ``filler``, OBR-22 (reported) and OBR-25 (status)."""
    return f"OBR|{set_id}|PL{set_id}^CPOE|{filler}|{service}" + "|" * 18 + f"20240115101500|||{status}"


def report(event: ClinicalEvent) -> tuple[Any, ...]:
    """What a report event says: type, severity, lifecycle, links, subject, observations, patient, thread, time."""
    s = event.subject
    assert s is not None
    return (
        event.type.value,
        event.severity.value,
        event.lifecycle.value,
        event.links,
        (s.kind, s.key, s.code, s.text, s.status),
        [(o.code, o.value, o.flags, o.status, o.critical) for o in s.observations],
        event.patient.mrn.value if event.patient.mrn else None,
        (event.encounter.visit_number, event.encounter.location.unit),
        event.thread_key,
        event.occurred_at.isoformat(),
    )


AT = "2024-01-15T10:15:00+00:00"
ENCOUNTER = ("V555", "4E")
THREAD = "enc:TESTHOSP:V555"


def test_r22_v25_specimen_observations_are_not_results_and_each_obr_is_a_report(map_hl7: Any) -> None:
    # Two specimens; the first has two orders. The ORC follows its OBR; SPM/SAC/INV and their OBX come first.
    events = map_hl7(
        f"""
        {msh("R22", "2.5")}
        {PID_ALPHA}
        {PV1_WARD}
        SPM|1|SP1&LIS||SER^Serum^HL70487
        OBX|1|NM|VOL^Specimen volume||2|mL|||||F
        SAC|||C1^LIS
        INV|SUB1^Substance|OK^Ok
        {obr(1, "FL1^LIS", "GLU^Glucose", "F")}
        ORC|SC|PL1^CPOE|FL1^LIS||CM
        TQ1|1||||||20240115080000
        OBX|1|NM|GLU^Glucose||5.1|mmol/L|3.9-5.5|N|||F
        NTE|1||auto-verified
        {obr(2, "FL2^LIS", "K^Potassium", "F")}
        ORC|SC|PL2^CPOE|FL2^LIS||CM
        OBX|1|NM|K^Potassium||6.9|mmol/L|3.5-5.1|HH|||F
        ZZZ|1|ignored
        SPM|2|SP2&LIS||UR^Urine^HL70487
        OBX|1|CWE|COL^Colour||YEL^Yellow^L||||||F
        {obr(3, "FL3^LIS", "UA^Urinalysis", "P")}
        ORC|SC|PL3^CPOE|FL3^LIS||IP
        OBX|1|NM|PH^pH||""||5-8||||P
        """
    )
    assert [report(e) for e in events] == [
        (
            "result.final",
            "notice",
            "new",
            {},
            ("result", "LIS:FL1", "GLU", "Glucose", "F"),
            [("GLU", "5.1", ("N",), "F", False)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
        (
            "result.critical",
            "critical",
            "new",
            {},
            ("result", "LIS:FL2", "K", "Potassium", "F"),
            [("K", "6.9", ("HH",), "F", True)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
        (
            "result.preliminary",
            "info",
            "new",
            {},
            ("result", "LIS:FL3", "UA", "Urinalysis", "P"),
            [("PH", None, (), "P", False)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
    ]


def test_r23_v27_container_oriented_reports_map_like_r22(map_hl7: Any) -> None:
    # One specimen, two containers, one order each; v2.7 flags are CWE.
    events = map_hl7(
        f"""
        {msh("R23", "2.7")}
        {PID_ALPHA}
        {PV1_WARD}
        SPM|1|SP1&LIS||BLD^Whole blood^HL70487
        SAC|||C1^LIS
        {obr(1, "FL1^LIS", "HGB^Haemoglobin", "C")}
        ORC|SC|PL1^CPOE|FL1^LIS
        OBX|1|NM|HGB^Haemoglobin||9.0|g/dL|12-16|L^Low^HL70078|||C
        SAC|||C2^LIS
        INV|SUB2^Substance
        {obr(2, "FL2^LIS", "PLT^Platelets", "F")}
        ORC|SC|PL2^CPOE|FL2^LIS
        OBX|1|NM|PLT^Platelets||||150-400||||W
        """
    )
    assert [report(e) for e in events] == [
        (
            "result.corrected",
            "warning",
            "correct",
            {"corrects": "LIS:FL1"},
            ("result", "LIS:FL1", "HGB", "Haemoglobin", "C"),
            [("HGB", "9.0", ("L",), "C", False)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
        (
            "result.retracted",
            "notice",
            "cancel",
            {"cancels": "LIS:FL2"},
            ("result", "LIS:FL2", "PLT", "Platelets", "F"),
            [("PLT", None, (), "W", False)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
    ]


def test_r21_v24_container_before_each_report(map_hl7: Any) -> None:
    # v2.4 (R21 withdrawn in v2.5): { [SAC [{OBX}]] [OBR] [ORC] ... {OBX} }; no visit: the patient's thread.
    events = map_hl7(
        f"""
        {msh("R21", "2.4")}
        {PID_ALPHA}
        SAC|||C1^LIS
        OBX|1|NM|TEMP^Container temperature||4|Cel|||||F
        {obr(1, "FL1^LIS", "CRP^C reactive protein", "F")}
        ORC|RE|PL1^CPOE|FL1^LIS
        OBX|1|NM|CRP^C reactive protein||12|mg/L|<5|H|||F
        """
    )
    assert [report(e) for e in events] == [
        (
            "result.final",
            "warning",
            "new",
            {},
            ("result", "LIS:FL1", "CRP", "C reactive protein", "F"),
            [("CRP", "12", ("H",), "F", False)],
            "12345",
            (None, None),
            "pat:TESTHOSP:12345",
            AT,
        )
    ]


def test_r24_v28_order_oriented_every_obx_of_the_order_is_an_observation(map_hl7: Any) -> None:
    # The specimen sits inside the order, before the results: an OBX after a SPM cannot be told
    # from a result, so every OBX up to the next OBR belongs to the order's report.
    events = map_hl7(
        f"""
        {msh("R24", "2.8")}
        {PID_ALPHA}
        {PV1_WARD}
        {obr(1, "FL1^LIS", "LIP^Lipid panel", "F")}
        ORC|SC|PL1^CPOE|FL1^LIS||CM
        TQ1|1||||||20240115080000
        SPM|1|SP1&LIS||SER^Serum^HL70487
        OBX|1|CWE|SPC^Specimen condition||LIP^Lipaemic^L||||||F
        SAC|||C1^LIS
        INV|SUB1^Substance
        OBX|2|NM|CHOL^Cholesterol||5.2|mmol/L|<5.0|H|||F
        OBX|3|NM|TRIG^Triglycerides||1.1|mmol/L|<1.7|N|||F
        {obr(2, "", "ALB^Albumin", "")}
        ORC|SC|PL2^CPOE||
        OBX|1|NM|ALB^Albumin||40|g/L|35-52|N|||P
        """
    )
    assert [report(e) for e in events] == [
        (
            "result.final",
            "warning",
            "new",
            {},
            ("result", "LIS:FL1", "LIP", "Lipid panel", "F"),
            [
                ("SPC", "Lipaemic", (), "F", False),
                ("CHOL", "5.2", ("H",), "F", False),
                ("TRIG", "1.1", ("N",), "F", False),
            ],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
        (
            "result.preliminary",
            "info",
            "new",
            {},
            # No filler number: the placer's (OBR-2), scoped by its namespace.
            ("result", "CPOE:PL2", "ALB", "Albumin", None),
            [("ALB", "40", ("N",), "P", False)],
            "12345",
            ENCOUNTER,
            THREAD,
            AT,
        ),
    ]


def test_r22_with_the_orc_before_the_obr_keeps_the_orc_with_its_report(map_one: Any) -> None:
    # Some senders write OUL like ORU (ORC first): the report still has its ORC and observations.
    event = map_one(
        f"""
        {msh("R22", "2.5.1")}
        {PID_ALPHA}
        {PV1_WARD}
        ORC|SC|PL1^CPOE|FL1^LIS||CM
        OBR|1|||GLU^Glucose
        TQ1|1||||||20240115080000
        OBX|1|NM|GLU^Glucose||5.1|mmol/L|3.9-5.5|N|||F
        SPM|1|SP1&LIS||SER^Serum^HL70487
        SPM|2|SP2&LIS||SER^Serum^HL70487
        """
    )
    assert report(event) == (
        "result.final",
        "notice",
        "new",
        {},
        ("result", "LIS:FL1", "GLU", "Glucose", None),
        [("GLU", "5.1", ("N",), "F", False)],
        "12345",
        ENCOUNTER,
        THREAD,
        "2024-01-15T10:30:00+00:00",
    )


@pytest.mark.parametrize("name", ["oul.yaml", "oul_r24.yaml"])
def test_oul_files_take_everything_but_their_match_and_grouping_from_oru(name: str) -> None:
    # A result must mean the same whatever message carries it: an OUL file is oru.yaml with
    # other messages and another grouping, and overrides nothing else (no rule, key or field).
    doc = yaml.safe_load((mappings_dir() / "hl7v2" / name).read_text(encoding="utf-8"))
    assert doc["base"] == "oru.yaml"
    assert set(doc) <= {"base", "description", "match", "for_each"}
