"""Golden tests of mappings/hl7v2/orders.yaml: ORM^O01, OML^O21/O33/O35, OMG^O19, OMI^O23, OMD^O03.

Each test writes a synthetic message (every name and number invented) and compares
the event(s) field by field. Fixtures (``map_hl7``, ``map_one``) come from this
folder's conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import ClinicalEvent

PID_ALPHA = "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
PV1_WARD = "PV1|1|I|4E^136^B^TESTHOSP||||1234^Doctor^Test||||||||||||V555^^^TESTHOSP"


def msh(code: str, trigger: str, version: str, control: str = "CTRL1", facility: str = "WARD") -> str:
    return f"MSH|^~\\&|CPOE|{facility}|LIS|TESTHOSP|20240115103000||{code}^{trigger}|{control}|P|{version}"


def orc(control: str, placer: str = "PL1^CPOE", filler: str = "", status: str = "", at: str = "20240115100000") -> str:
    """ORC-1 order control, ORC-2 placer, ORC-3 filler, ORC-5 order status, ORC-9 date/time of transaction."""
    return f"ORC|{control}|{placer}|{filler}||{status}||||{at}"


def golden(event: ClinicalEvent) -> dict[str, Any]:
    """Every field of the event but its ids, source, origin and dedup key (tested on their own)."""
    return event.model_dump(mode="json", exclude={"id", "source", "origin", "dedup_key", "schema_version"})


def order_event(event: ClinicalEvent) -> tuple[Any, ...]:
    """What an order event says: type, severity, lifecycle, links, subject, patient, thread, time."""
    s = event.subject
    assert s is not None
    return (
        event.type.value,
        event.severity.value,
        event.lifecycle.value,
        event.links,
        (s.kind, s.key, s.code, s.text, s.status),
        event.patient.mrn.value if event.patient.mrn else None,
        event.thread_key,
        event.occurred_at.isoformat(),
    )


AT = "2024-01-15T10:00:00+00:00"
THREAD = "enc:TESTHOSP:V555"


# --- ORM^O01 --------------------------------------------------------------------------------------


def test_orm_v23_new_order_is_placed(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("ORM", "O01", "2.3")}
        {PID_ALPHA}
        {PV1_WARD}
        ZPV|1|site specific
        ORC|NW|PL1^CPOE||GRP1^CPOE|IP||^^^20240115110000^^R||20240115100000|||1234^Doctor^Test
        OBR|1|PL1^CPOE||CBC^Blood count^L|||20240115090000
        NTE|1||before breakfast
        DG1|1||R50.9^Fever^I10
        """
    )
    assert golden(event) == {
        "type": "order.placed",
        "severity": "info",
        "occurred_at": "2024-01-15T10:00:00Z",
        "patient": {
            "mrn": {"value": "12345", "authority": "TESTHOSP", "type": "MR"},
            "identifiers": [{"value": "12345", "authority": "TESTHOSP", "type": "MR"}],
            "family": "Testpatient",
            "given": "Alpha",
            "birth_date": "1980-05-21",
            "sex": "F",
        },
        "encounter": {
            "visit_number": "V555",
            "patient_class": "I",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "136", "bed": "B"},
            "prior_location": None,
            "attending": {"id": "1234", "family": "Doctor", "given": "Test", "prefix": None},
            "admitted_at": None,
            "discharged_at": None,
        },
        "subject": {
            "kind": "order",
            "key": "CPOE:PL1",
            "code": "CBC",
            "text": "Blood count",
            "status": "IP",
            "start": None,
            "end": None,
            "detail": None,
            "observations": [],
        },
        "thread_key": THREAD,
        "lifecycle": "new",
        "links": {},
    }


@pytest.mark.parametrize(
    ("version", "detail", "code", "text"),
    [
        ("2.4", "RXO|AMOX500^Amoxicillin 500 mg^LOCAL|500||mg", "AMOX500", "Amoxicillin 500 mg"),  # pharmacy order
        ("2.5", "ODS|D||NPO^Nothing by mouth^LOCAL", "NPO", "Nothing by mouth"),  # diet order
        ("2.6", "RQD|1|HIP1^Hip implant^LOCAL", "HIP1", "Hip implant"),  # non-stock requisition
    ],
)
def test_orm_order_details_other_than_obr_give_what_is_ordered(
    map_one: Any, version: str, detail: str, code: str | None, text: str
) -> None:
    event = map_one(f"{msh('ORM', 'O01', version)}\n{PID_ALPHA}\n{PV1_WARD}\n{orc('NW')}\n{detail}")
    assert order_event(event) == (
        "order.placed",
        "info",
        "new",
        {},
        ("order", "CPOE:PL1", code, text, None),
        "12345",
        THREAD,
        AT,
    )


def test_a_diets_free_text_instruction_is_detail_never_the_text(map_one: Any) -> None:
    # ODS-4 is free text (it may name anyone); channels below full PHI never see the detail.
    event = map_one(f"{msh('ORM', 'O01', '2.6')}\n{PID_ALPHA}\n{PV1_WARD}\n{orc('NW')}\nODS|P|||no pork~halal")
    assert event.subject is not None
    assert (event.subject.code, event.subject.text, event.subject.detail) == (None, None, "no pork; halal")


# --- order controls and statuses ---------------------------------------------------------------------

PLACED = ("order.placed", "info", "new", {})
CANCELLED = ("order.cancelled", "notice", "cancel", {"cancels": "CPOE:PL1"})
CHANGED = ("order.changed", "info", "correct", {"corrects": "CPOE:PL1"})
#: A status change that is progress: a reply in the order's thread, the order's post stands as ordered.
PROGRESS = ("order.changed", "info", "update", {})
COMPLETED = ("order.completed", "info", "update", {})


@pytest.mark.parametrize(
    ("control", "status", "expected", "subject_status"),
    [
        ("NW", "", PLACED, None),
        ("RO", "SC", PLACED, "SC"),  # the replacement order of a replace
        # A cancellation's status says cancelled (CA, OC, CR) or discontinued (DC, OD, DR): ORC-5 when it
        # is CA or DC, else the order control.
        ("CA", "", CANCELLED, "CA"),
        ("CA", "IP", CANCELLED, "CA"),  # the status before the cancellation is not what happened
        ("OC", "CA", CANCELLED, "CA"),
        ("CR", "", CANCELLED, "CR"),
        ("DC", "", CANCELLED, "DC"),
        ("OD", "DC", CANCELLED, "DC"),
        ("DR", "", CANCELLED, "DR"),
        ("SC", "CA", CANCELLED, "CA"),
        ("SC", "DC", CANCELLED, "DC"),
        ("SC", "CM", COMPLETED, "CM"),
        ("SC", "IP", PROGRESS, "IP"),
        ("SC", "A", PROGRESS, "A"),
        ("SC", "SC", PROGRESS, "SC"),
        ("SC", "", PROGRESS, None),
        ("SC", "HD", CHANGED, "HD"),  # put on hold: the order itself changed, as with OH
        ("SC", "RP", CHANGED, "RP"),  # replaced, as with RU
        ("XO", "", CHANGED, None),
        ("XX", "SC", CHANGED, "SC"),
        ("XR", "SC", CHANGED, "SC"),
        ("RP", "", CHANGED, None),  # the replaced order of a replace
        ("RU", "RP", CHANGED, "RP"),
        ("RQ", "RP", CHANGED, "RP"),
        ("HD", "", CHANGED, None),
        ("OH", "HD", CHANGED, "HD"),
        ("HR", "HD", CHANGED, "HD"),
        ("RL", "", CHANGED, None),
        ("OE", "IP", CHANGED, "IP"),
        ("OR", "IP", CHANGED, "IP"),
    ],
)
@pytest.mark.parametrize(("code", "trigger", "version"), [("ORM", "O01", "2.4"), ("OML", "O21", "2.5.1")])
def test_order_control_and_status_decide_the_event(
    map_one: Any,
    code: str,
    trigger: str,
    version: str,
    control: str,
    status: str,
    expected: tuple[str, str, str, dict[str, str]],
    subject_status: str | None,
) -> None:
    event = map_one(
        f"""
        {msh(code, trigger, version)}
        {PID_ALPHA}
        {PV1_WARD}
        {orc(control, filler="F77^LIS", status=status)}
        TQ1|1||||||20240115110000
        OBR|1|PL1^CPOE|F77^LIS|CBC^Blood count
        """
    )
    assert order_event(event) == (
        *expected,
        ("order", "CPOE:PL1", "CBC", "Blood count", subject_status),
        "12345",
        THREAD,
        AT,
    )


#: Acknowledgements, refusals, requests for numbers or status, parent/child, links and refills (see orders.yaml).
SILENT_CONTROLS = [
    "OK",
    "UA",
    "UC",
    "UD",
    "UH",
    "UR",
    "UM",
    "UX",
    "UF",
    "DE",
    "RE",
    "RR",
    "NA",
    "SN",
    "SS",
    "SR",
    "PA",
    "CH",
    "CN",
    "LI",
    "UN",
    "RF",
    "AF",
    "DF",
    "FU",
    "OF",
]


@pytest.mark.parametrize("control", [*SILENT_CONTROLS, ""])
def test_order_controls_that_change_nothing_on_the_ward_make_no_event(
    map_hl7: Any, parse_hl7: Any, mapper: Any, control: str
) -> None:
    text = f"{msh('OML', 'O21', '2.6')}\n{PID_ALPHA}\n{orc(control, status='IP')}\nOBR|1|PL1^CPOE||CBC^Blood count"
    assert map_hl7(text) == []
    assert mapper.matches(parse_hl7(text))


# --- OML^O21: several orders in one message -----------------------------------------------------------


def test_oml_v251_each_orc_is_one_order_with_its_own_control(map_hl7: Any) -> None:
    events = map_hl7(
        f"""
        {msh("OML", "O21", "2.5.1")}
        {PID_ALPHA}
        {PV1_WARD}
        IN1|1|PLAN1
        {orc("NW", "PL1^CPOE")}
        TQ1|1||||||20240115110000
        OBR|1|PL1^CPOE||CBC^Blood count
        OBX|1|NM|TEMP^Body temperature||38.5|Cel|||||F
        SPM|1|SP1&CPOE||BLD^Whole blood^HL70487
        {orc("CA", "PL2^CPOE", status='""')}
        OBR|1|PL2^CPOE||BMP^Basic metabolic panel
        {orc("OK", "PL3^CPOE")}
        OBR|1|PL3^CPOE||CRP^C reactive protein
        {orc("SC", "PL4^CPOE", "F4^LIS", "CM", at="20240115120000")}
        OBR|1|PL4^CPOE|F4^LIS|K^Potassium
        ZOR|1|ignored
        {orc("XO", "PL5^CPOE")}
        OBR|1|PL5^CPOE||GLU^Glucose
        """
    )
    assert [order_event(e) for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "CBC", "Blood count", None), "12345", THREAD, AT),
        (
            "order.cancelled",
            "notice",
            "cancel",
            {"cancels": "CPOE:PL2"},
            ("order", "CPOE:PL2", "BMP", "Basic metabolic panel", "CA"),
            "12345",
            THREAD,
            AT,
        ),
        (
            *COMPLETED,
            ("order", "CPOE:PL4", "K", "Potassium", "CM"),
            "12345",
            THREAD,
            "2024-01-15T12:00:00+00:00",
        ),
        (
            "order.changed",
            "info",
            "correct",
            {"corrects": "CPOE:PL5"},
            ("order", "CPOE:PL5", "GLU", "Glucose", None),
            "12345",
            THREAD,
            AT,
        ),
    ]


def test_the_orders_after_a_pid_are_that_patients(map_hl7: Any) -> None:
    # ORM has no prior results: a PID after an order can only be the next patient (see oml.yaml for OML).
    events = map_hl7(
        f"""
        {msh("ORM", "O01", "2.5")}
        {PID_ALPHA}
        {PV1_WARD}
        {orc("NW", "PL1^CPOE")}
        OBR|1|PL1^CPOE||CBC^Blood count
        PID|1||67890^^^TESTHOSP^MR||Testpatient^Gamma
        {orc("NW", "PL2^CPOE")}
        OBR|1|PL2^CPOE||CBC^Blood count
        """
    )
    assert [(e.patient.given, e.encounter.visit_number, e.thread_key) for e in events] == [
        ("Alpha", "V555", THREAD),
        ("Gamma", None, "pat:TESTHOSP:67890"),
    ]


# --- OML and OMG: prior results inside an order (oml.yaml) -------------------------------------------

#: A prior result: an EARLIER order of the patient (its ORC, OBR, results), sent along with a new one.
PRIOR_ORDERS = """
    ORC|SC|OLD1^CPOE|OF1^LIS||CM||||20231201090000
    OBR|1|OLD1^CPOE|OF1^LIS|K^Potassium|||20231201080000|||||||||||||||20231201090000|||F
    OBX|1|NM|K^Potassium||6.9|mmol/L|3.5-5.1|HH|||F
    ORC|CA|OLD2^CPOE|OF2^LIS||CA||||20231201090000
    OBR|1|OLD2^CPOE|OF2^LIS|NA^Sodium|||20231201080000|||||||||||||||20231201090000|||X
    """


@pytest.mark.parametrize(
    "opener",
    [
        "PV1|1|I|ICU^1^1^OLDHOSP||||||||||||||||V111^^^OLDHOSP",  # PATIENT_VISIT_PRIOR
        "PID|1||99999^^^OLDHOSP^MR||Testpatient^Omega",  # PATIENT_PRIOR: not a new patient
        "PV2|||R50.9^Fever",
        "AL1|1|DA|PEN^Penicillin",
    ],
)
@pytest.mark.parametrize(("code", "trigger", "version"), [("OML", "O21", "2.5.1"), ("OMG", "O19", "2.6")])
def test_prior_results_inside_an_order_make_no_event(
    map_hl7: Any, code: str, trigger: str, version: str, opener: str
) -> None:
    events = map_hl7(
        f"""
        {msh(code, trigger, version)}
        {PID_ALPHA}
        {PV1_WARD}
        AL1|1|DA|LATEX^Latex
        {orc("NW", "PL1^CPOE")}
        OBR|1|PL1^CPOE||CBC^Blood count
        {opener}
        {PRIOR_ORDERS}
        """
    )
    # Only the new order; the old potassium (completed) and sodium (cancelled) are not news, and the
    # order stays in the patient's visit, not the prior result's.
    assert [order_event(e) for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "CBC", "Blood count", None), "12345", THREAD, AT),
    ]
    assert [(e.patient.given, e.encounter.location.unit) for e in events] == [("Alpha", "4E")]


def test_orders_after_prior_results_are_mapped_again_from_what_may_only_follow_them(map_hl7: Any) -> None:
    # OML^O33: the next specimen (SPM) starts new orders; OML^O21: the order's FT1 / BLG close its prior results.
    events = map_hl7(
        f"""
        {msh("OML", "O33", "2.6")}
        {PID_ALPHA}
        {PV1_WARD}
        SPM|1|SP1&CPOE||SER^Serum^HL70487
        {orc("NW", "PL1^CPOE")}
        OBR|1|PL1^CPOE||ALT^Alanine aminotransferase
        PV1|1|I|ICU^1^1^OLDHOSP||||||||||||||||V111^^^OLDHOSP
        {PRIOR_ORDERS}
        SPM|2|SP2&CPOE||UR^Urine^HL70487
        {orc("NW", "PL2^CPOE")}
        OBR|1|PL2^CPOE||UA^Urinalysis
        """
    )
    assert [order_event(e)[:5] for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "ALT", "Alanine aminotransferase", None)),
        (*PLACED, ("order", "CPOE:PL2", "UA", "Urinalysis", None)),
    ]
    assert {e.thread_key for e in events} == {THREAD}
    events = map_hl7(
        f"""
        {msh("OML", "O21", "2.5.1")}
        {PID_ALPHA}
        {PV1_WARD}
        {orc("NW", "PL1^CPOE")}
        OBR|1|PL1^CPOE||CBC^Blood count
        AL1|1|DA|PEN^Penicillin
        {PRIOR_ORDERS}
        FT1|1|||20240115100000||CG|CBC
        {orc("DC", "PL3^CPOE")}
        OBR|1|PL3^CPOE||CRP^C reactive protein
        """
    )
    assert [order_event(e)[:5] for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "CBC", "Blood count", None)),
        (
            "order.cancelled",
            "notice",
            "cancel",
            {"cancels": "CPOE:PL3"},
            ("order", "CPOE:PL3", "CRP", "C reactive protein", "DC"),
        ),
    ]


def test_a_new_order_whose_obr_has_results_is_an_earlier_order_and_makes_no_event(map_hl7: Any) -> None:
    # Prior results need no PID, PV1 or AL1 before them: an ORC NW whose OBR-25 says results exist
    # (A, P, C, R, F) is not a new order. A new order's result status may be O, I or S.
    obr = "OBR|1|PL{n}^CPOE||CBC^Blood count" + "|" * 21 + "{status}"  # OBR-25
    events = map_hl7(
        "\n".join(
            [
                msh("OML", "O21", "2.5.1"),
                PID_ALPHA,
                PV1_WARD,
                *(
                    f"{orc('NW', f'PL{n}^CPOE')}\n{obr.format(n=n, status=status)}"
                    for n, status in enumerate(["", "O", "S", "I", "A", "P", "C", "R", "F"], start=1)
                ),
            ]
        )
    )
    assert [e.subject.key for e in events if e.subject] == ["CPOE:PL1", "CPOE:PL2", "CPOE:PL3", "CPOE:PL4"]


# --- the other order messages -------------------------------------------------------------------------


def test_oml_o33_v26_specimen_first_orders(map_hl7: Any) -> None:
    events = map_hl7(
        f"""
        {msh("OML", "O33", "2.6")}
        {PID_ALPHA}
        {PV1_WARD}
        SPM|1|SP1&CPOE||SER^Serum^HL70487
        OBX|1|NM|VOL^Specimen volume||5|mL|||||F
        {orc("NW", "PL1^CPOE")}
        OBR|1|PL1^CPOE||ALT^Alanine aminotransferase
        {orc("NW", "PL2^CPOE")}
        OBR|2|PL2^CPOE||AST^Aspartate aminotransferase
        SPM|2|SP2&CPOE||UR^Urine^HL70487
        {orc("DC", "PL3^CPOE")}
        OBR|1|PL3^CPOE||UA^Urinalysis
        """
    )
    assert [order_event(e) for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "ALT", "Alanine aminotransferase", None), "12345", THREAD, AT),
        (*PLACED, ("order", "CPOE:PL2", "AST", "Aspartate aminotransferase", None), "12345", THREAD, AT),
        (
            "order.cancelled",
            "notice",
            "cancel",
            {"cancels": "CPOE:PL3"},
            ("order", "CPOE:PL3", "UA", "Urinalysis", "DC"),
            "12345",
            THREAD,
            AT,
        ),
    ]


def test_oml_o35_v27_container_first_orders(map_hl7: Any) -> None:
    events = map_hl7(
        f"""
        {msh("OML", "O35", "2.7")}
        {PID_ALPHA}
        {PV1_WARD}
        SPM|1|SP1&CPOE||BLD^Whole blood^HL70487
        SAC|||C1^CPOE
        {orc("NW", "PL1^CPOE")}
        TQ1|1||||||20240115110000
        OBR|1|PL1^CPOE||HBA1C^Haemoglobin A1c
        SAC|||C2^CPOE
        {orc("SC", "PL2^CPOE", "F2^LIS", "IP")}
        OBR|1|PL2^CPOE|F2^LIS|FBC^Full blood count
        """
    )
    assert [order_event(e) for e in events] == [
        (*PLACED, ("order", "CPOE:PL1", "HBA1C", "Haemoglobin A1c", None), "12345", THREAD, AT),
        (
            *PROGRESS,
            ("order", "CPOE:PL2", "FBC", "Full blood count", "IP"),
            "12345",
            THREAD,
            AT,
        ),
    ]


@pytest.mark.parametrize(
    ("code", "trigger", "version", "tail"),
    [
        ("OMG", "O19", "2.8", "OBR|1|PL1^CPOE||ECHO^Echocardiogram\nPRT|1|AD||RP^Referring provider"),
        ("OMI", "O23", "2.5", "OBR|1|PL1^CPOE||CTHEAD^CT head\nIPC|ACC1|RP1|SIUID1|SPS1"),
    ],
)
def test_general_and_imaging_orders(map_one: Any, code: str, trigger: str, version: str, tail: str) -> None:
    event = map_one(f"{msh(code, trigger, version)}\n{PID_ALPHA}\n{PV1_WARD}\n{orc('NW', status='SC')}\n{tail}")
    service, text = tail.split("\n")[0].split("|")[4].split("^")
    assert order_event(event) == (*PLACED, ("order", "CPOE:PL1", service, text, "SC"), "12345", THREAD, AT)


def test_omd_o03_v25_diet_and_tray_orders(map_hl7: Any) -> None:
    events = map_hl7(
        f"""
        {msh("OMD", "O03", "2.5")}
        {PID_ALPHA}
        {PV1_WARD}
        {orc("XO", "PL1^DIET")}
        TQ1|1||||||20240115120000
        ODS|D||DIAB^Diabetic diet^LOCAL~LS^Low salt^LOCAL|no sugar
        ODS|S||PROT^Protein supplement^LOCAL
        {orc("NW", "PL2^DIET")}
        ODT|EARLY^Early tray^LOCAL
        """
    )
    assert [order_event(e) for e in events] == [
        (
            "order.changed",
            "info",
            "correct",
            {"corrects": "DIET:PL1"},
            ("order", "DIET:PL1", "DIAB", "Diabetic diet", None),
            "12345",
            THREAD,
            AT,
        ),
        (*PLACED, ("order", "DIET:PL2", "EARLY", "Early tray", None), "12345", THREAD, AT),
    ]


def test_an_order_message_without_orc_makes_no_event(map_hl7: Any) -> None:
    # OML^O21 requires the ORC: without an order control nothing says what happened.
    assert map_hl7(f"{msh('OML', 'O21', '2.5.1')}\n{PID_ALPHA}\nOBR|1|PL1^CPOE||CBC^Blood count") == []


# --- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order_control", "obr", "key"),
    [
        ("ORC|NW|PL1^CPOE|F1^LIS", "OBR|1|PLX^OTHER||CBC", "CPOE:PL1"),  # placer, in its namespace
        ("ORC|NW|PL1|F1^LIS", "OBR|1|||CBC", "WARD:PL1"),  # no namespace: the sender's facility
        ("ORC|NW||F1^LIS", "OBR|1|||CBC", "LIS:F1"),  # no placer: the filler's
        ("ORC|NW", "OBR|1|PL9^CPOE||CBC", "CPOE:PL9"),  # numbers only on the OBR
        ('ORC|NW|""', "OBR|1|||CBC", "CTRL7-1"),  # no number anywhere: the message and the place
    ],
)
def test_order_key_falls_back_from_placer_to_filler_to_the_message(
    map_one: Any, order_control: str, obr: str, key: str
) -> None:
    event = map_one(f"{msh('ORM', 'O01', '2.5', control='CTRL7')}\n{PID_ALPHA}\n{order_control}\n{obr}")
    assert event.subject is not None and event.subject.key == key


def test_each_change_with_new_content_is_a_new_fact_and_the_same_change_resent_is_not(map_one: Any) -> None:
    def mapped(control: str, orc_line: str) -> ClinicalEvent:
        return map_one(f"{msh('OML', 'O21', '2.6', control=control)}\n{PID_ALPHA}\n{orc_line}\nOBR|1|||CBC")

    in_process = mapped("C1", orc("SC", filler="F1^LIS", status="IP"))
    resent = mapped("C2", orc("SC", filler="F1^LIS", status="IP"))  # the same message, a new control ID
    some_results = mapped("C3", orc("SC", filler="F1^LIS", status="A"))
    assert in_process.dedup_key == resent.dedup_key
    assert some_results.dedup_key != in_process.dedup_key
    # Placed, cancelled and completed happen once per order number, whatever else differs.
    placed = mapped("C4", orc("NW", status="IP"))
    placed_again = mapped("C5", orc("NW", status="SC", at="20240115110000"))
    assert placed.dedup_key == placed_again.dedup_key
    done = mapped("C6", orc("SC", filler="F1^LIS", status="CM"))
    done_again = mapped("C7", orc("SC", filler="F1^LIS", status="CM", at="20240115120000"))
    assert done.dedup_key == done_again.dedup_key


def test_a_change_back_to_an_earlier_state_is_a_new_fact_and_a_resend_from_another_bed_is_not(map_one: Any) -> None:
    def mapped(control: str, orc_line: str, pv1: str = PV1_WARD) -> ClinicalEvent:
        return map_one(f"{msh('ORM', 'O01', '2.5', control=control)}\n{PID_ALPHA}\n{pv1}\n{orc_line}\nOBR|1|||CBC")

    held = mapped("C1", orc("HD", status="HD", at="20240115110000"))
    released = mapped("C2", orc("RL", status="IP", at="20240115120000"))
    held_again = mapped("C3", orc("HD", status="HD", at="20240115130000"))
    assert len({held.dedup_key, released.dedup_key, held_again.dedup_key}) == 3
    # The same message re-sent (new control ID) after the patient moved to another bed of the same visit:
    # what the order says did not change, so neither does its key.
    moved = PV1_WARD.replace("4E^136^B", "ICU^2^A")
    resent = mapped("C4", orc("HD", status="HD", at="20240115130000"), pv1=moved)
    assert resent.encounter.location.unit == "ICU"
    assert resent.dedup_key == held_again.dedup_key
