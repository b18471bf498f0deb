"""Golden tests of mappings/hl7v2/pharmacy.yaml: RDE^O11 (RDE^O01 in v2.3) and RDE^O25.

Each test writes a synthetic message (every name, drug code and number invented) and
compares the event(s) field by field. Fixtures (``map_hl7``, ``map_one``) come from
this folder's conftest.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import ClinicalEvent

PID_ALPHA = "PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
PV1_WARD = "PV1|1|I|4E^136^B^TESTHOSP||||1234^Doctor^Test||||||||||||V555^^^TESTHOSP"
THREAD = "enc:TESTHOSP:V555"
AT = "2024-01-15T10:00:00+00:00"


def msh(trigger: str, version: str, control: str = "CTRL1") -> str:
    return f"MSH|^~\\&|PHARM|TESTHOSP|CPOE|TESTHOSP|20240115103000||RDE^{trigger}|{control}|P|{version}"


def orc(control: str, placer: str = "PL1^CPOE", status: str = "") -> str:
    """ORC-1 order control, ORC-2 placer, ORC-3 the pharmacy's number, ORC-5 status, ORC-9 transaction time."""
    return f"ORC|{control}|{placer}|RX1^PHARM||{status}||||20240115100000"


#: An encoded order (v2.5+): timing in TQ1, give code, amount and units in RXE, route in RXR.
ENCODED = """
    TQ1|1||Q6H&Every 6 hours&HL70335
    RXO|AMOX^Amoxicillin^LOCAL|500||mg^milligram^UCUM
    RXR|PO^Oral^HL70162
    RXE||AMOX500^Amoxicillin 500 mg capsule^LOCAL|500||mg^milligram^UCUM|CAP^Capsule^LOCAL
    TQ1|1||Q6H&Every 6 hours&HL70335
    RXR|PO^Oral^HL70162
"""


def medication(event: ClinicalEvent) -> tuple[Any, ...]:
    """What a medication event says: type, severity, lifecycle, links, subject, patient, thread, time."""
    s = event.subject
    assert s is not None
    return (
        event.type.value,
        event.severity.value,
        event.lifecycle.value,
        event.links,
        (s.kind, s.key, s.code, s.text, s.status, s.detail),
        event.patient.mrn.value if event.patient.mrn else None,
        event.thread_key,
        event.occurred_at.isoformat(),
    )


def test_rde_o11_v25_new_order_is_a_medication_ordered_with_dose_route_and_frequency(map_one: Any) -> None:
    event = map_one(
        f"""
        {msh("O11", "2.5")}
        {PID_ALPHA}
        {PV1_WARD}
        AL1|1|DA|PEN^Penicillin
        {orc("NW", status="IP")}
        {ENCODED}
        ZRX|1|ignored
        """
    )
    assert event.model_dump(mode="json", exclude={"id", "source", "origin", "dedup_key", "schema_version"}) == {
        "type": "medication.ordered",
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
            "kind": "medication",
            "key": "CPOE:PL1",
            "code": "AMOX500",
            "text": "Amoxicillin 500 mg capsule",
            "status": "IP",
            "start": None,
            "end": None,
            "detail": "500 milligram Oral Q6H",
            "observations": [],
        },
        "thread_key": THREAD,
        "lifecycle": "new",
        "links": {},
    }


def test_rde_o01_v23_timing_is_read_from_rxe_1(map_one: Any) -> None:
    # v2.3 names the encoded order RDE^O01; there is no TQ1: RXE-1 is the quantity/timing (TQ).
    event = map_one(
        f"""
        {msh("O01", "2.3")}
        {PID_ALPHA}
        {PV1_WARD}
        {orc("NW", placer="PL2^CPOE")}
        RXE|1^Q8H&0800,1600,2400|PARA1G^Paracetamol 1 g^LOCAL|1||G^gram^ISO+
        RXR|IV^Intravenous^HL70162
        """
    )
    assert medication(event) == (
        "medication.ordered",
        "info",
        "new",
        {},
        ("medication", "CPOE:PL2", "PARA1G", "Paracetamol 1 g", None, "1 gram Intravenous Q8H"),
        "12345",
        THREAD,
        AT,
    )


def test_rde_o25_v28_refill_authorization_request_of_two_orders(map_hl7: Any) -> None:
    # A refill request (RF) asks the prescriber; it changes nothing on the ward. A new order in the
    # same message is a medication ordered.
    events = map_hl7(
        f"""
        {msh("O25", "2.8")}
        {PID_ALPHA}
        {PV1_WARD}
        {orc("RF", placer="PL1^CPOE")}
        {ENCODED}
        {orc("NW", placer="PL2^CPOE")}
        TQ1|1||BID
        RXE||MET500^Metformin 500 mg tablet^LOCAL|500||mg
        RXR|PO
        """
    )
    assert [medication(e) for e in events] == [
        (
            "medication.ordered",
            "info",
            "new",
            {},
            ("medication", "CPOE:PL2", "MET500", "Metformin 500 mg tablet", None, "500 mg PO BID"),
            "12345",
            THREAD,
            AT,
        )
    ]


ORDERED = ("medication.ordered", "info", "new", {})
CANCELLED = ("order.cancelled", "notice", "cancel", {"cancels": "CPOE:PL1"})
CHANGED = ("order.changed", "info", "correct", {"corrects": "CPOE:PL1"})
PROGRESS = ("order.changed", "info", "update", {})
COMPLETED = ("order.completed", "info", "update", {})


@pytest.mark.parametrize(
    ("control", "status", "expected", "subject_status"),
    [
        ("NW", "", ORDERED, None),
        ("RO", "", ORDERED, None),
        # Cancelled (CA, OC, CR) or discontinued (DC, OD, DR): ORC-5 CA or DC, else the order control.
        ("CA", "", CANCELLED, "CA"),
        ("OC", "CA", CANCELLED, "CA"),
        ("CR", "CA", CANCELLED, "CA"),
        ("DC", "", CANCELLED, "DC"),
        ("DC", "IP", CANCELLED, "DC"),
        ("OD", "DC", CANCELLED, "DC"),
        ("DR", "DC", CANCELLED, "DC"),
        ("DR", "", CANCELLED, "DR"),
        ("SC", "DC", CANCELLED, "DC"),
        ("SC", "CM", COMPLETED, "CM"),
        ("SC", "HD", CHANGED, "HD"),
        ("SC", "IP", PROGRESS, "IP"),  # the pharmacy is at work on it: the order stands as ordered
        ("XO", "", CHANGED, None),
        ("XX", "IP", CHANGED, "IP"),
        ("XR", "IP", CHANGED, "IP"),
        ("RU", "RP", CHANGED, "RP"),
        ("OH", "HD", CHANGED, "HD"),
        ("OE", "IP", CHANGED, "IP"),
        ("OK", "IP", None, None),
        ("RF", "", None, None),
        ("AF", "", None, None),
        ("DF", "", None, None),
        ("FU", "", None, None),
        ("OF", "", None, None),
        ("UF", "", None, None),
        ("UA", "", None, None),
        ("DE", "", None, None),
    ],
)
@pytest.mark.parametrize(("trigger", "version"), [("O11", "2.4"), ("O11", "2.6"), ("O25", "2.7")])
def test_order_control_and_status_decide_the_event(
    map_hl7: Any,
    trigger: str,
    version: str,
    control: str,
    status: str,
    expected: tuple[str, str, str, dict[str, str]] | None,
    subject_status: str | None,
) -> None:
    events = map_hl7(f"{msh(trigger, version)}\n{PID_ALPHA}\n{PV1_WARD}\n{orc(control, status=status)}\n{ENCODED}")
    if expected is None:
        assert events == []
        return
    (event,) = events
    assert medication(event) == (
        *expected,
        (
            "medication",
            "CPOE:PL1",
            "AMOX500",
            "Amoxicillin 500 mg capsule",
            subject_status,
            "500 milligram Oral Q6H",
        ),
        "12345",
        THREAD,
        AT,
    )


@pytest.mark.parametrize(
    ("segments", "detail"),
    [
        # Units and route by their text; else both by their codes; missing parts drop from the end.
        (["RXE||X^Drug X|2||TAB^tablet", "RXR|PO^Oral", "TQ1|1||TID"], "2 tablet Oral TID"),
        (["RXE||X^Drug X|2||TAB", "RXR|PO", "TQ1|1||TID"], "2 TAB PO TID"),
        (["RXE||X^Drug X|2||TAB^tablet", "RXR|C38288", "TQ1|1||TID"], "2 TAB C38288 TID"),
        (["RXE||X^Drug X|2||TAB^tablet", "RXR|PO^Oral"], "2 tablet Oral"),
        (["RXE||X^Drug X|2||TAB^tablet"], "2 tablet"),
        (["RXE||X^Drug X|2||TAB"], "2 TAB"),
        # Nothing encoded yet: as requested (RXO-2 amount, RXO-4 units).
        (["RXO|X^Drug X|250||mg^milligram", "RXR|IV^Intravenous", "RXE||X^Drug X"], "250 milligram Intravenous"),
        (["RXO|X^Drug X|250||mg", "RXE||X^Drug X"], "250 mg"),
        (["RXE||X^Drug X||||TAB^tablet", "RXR|PO^Oral"], None),
    ],
)
def test_detail_is_dose_units_route_and_frequency_as_far_as_given(
    map_one: Any, segments: list[str], detail: str | None
) -> None:
    body = "\n".join(segments)
    event = map_one(f"{msh('O11', '2.5')}\n{PID_ALPHA}\n{orc('NW')}\n{body}")
    assert event.subject is not None
    assert (event.subject.code, event.subject.text, event.subject.detail) == ("X", "Drug X", detail)


def test_the_same_change_resent_is_one_fact_and_a_new_change_another(map_one: Any) -> None:
    def mapped(control: str, order_control: str, amount: str) -> ClinicalEvent:
        return map_one(
            f"{msh('O11', '2.6', control=control)}\n{PID_ALPHA}\n{orc(order_control)}\n"
            f"RXE||AMOX500^Amoxicillin 500 mg capsule|{amount}||mg\nRXR|PO"
        )

    first, resent, other = mapped("C1", "XO", "500"), mapped("C2", "XO", "500"), mapped("C3", "XO", "1000")
    assert first.dedup_key == resent.dedup_key != other.dedup_key
    assert mapped("C4", "NW", "500").dedup_key == mapped("C5", "NW", "1000").dedup_key


def test_a_change_back_to_an_earlier_state_is_a_new_fact(map_one: Any) -> None:
    # Held, released, held again: the third message has the content of the first but its own
    # transaction time (ORC-9), so it is not dropped as a duplicate; the same message re-sent
    # under a new control ID keeps its time and is.
    def mapped(control: str, order_control: str, status: str, at: str) -> ClinicalEvent:
        return map_one(
            f"{msh('O11', '2.5', control=control)}\n{PID_ALPHA}\n{PV1_WARD}\n"
            f"ORC|{order_control}|PL1^CPOE|RX1^PHARM||{status}||||{at}\n{ENCODED}"
        )

    held = mapped("C1", "HD", "HD", "20240115110000")
    released = mapped("C2", "RL", "IP", "20240115120000")
    held_again = mapped("C3", "HD", "HD", "20240115130000")
    assert [e.type.value for e in (held, released, held_again)] == ["order.changed"] * 3
    assert len({held.dedup_key, released.dedup_key, held_again.dedup_key}) == 3
    assert mapped("C4", "HD", "HD", "20240115130000").dedup_key == held_again.dedup_key
