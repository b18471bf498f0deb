"""Golden tests of mappings/hl7v2/siu.yaml: SIU S12-S26, one synthetic message per trigger, field by field.

Every name and number is invented (Testpatient^Alpha, TESTHOSP, SCHEDSYS). The
lifecycle tests at the end commit the mapped events to a real SQLite store and
check which delivered post a reschedule edits and a cancellation strikes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity
from bridge.hl7.reader import Message
from bridge.mapping import Mapper
from bridge.store import JournalEntry, NewDelivery
from bridge.store.sqlite import SQLiteStore

MapOne = Callable[..., ClinicalEvent]
MapHL7 = Callable[..., list[ClinicalEvent]]

EST = timezone(timedelta(hours=-5))

# v2.5.1: timing in TQ1 (SCH-11 is withdrawn), every resource kind, two PID-3 identifiers
# (the MR is the MRN), a visit number with its authority, a PV1 attending and location that
# the appointment's own resources (AIP, AIL) take precedence over, NTE and a Z-segment.
S12 = r"""
    MSH|^~\&|SCHEDSYS|TESTHOSP|BRIDGE|TESTHOSP|20240315083000-0500||SIU^S12^SIU_S12|S12-0001|P|2.5.1
    SCH|P-100^CPOE|APT-200^SCHEDSYS|||||FUP^Follow-up visit^L|ROUTINE^Routine^HL70276|30|min|||||||||||||||Booked
    TQ1|1||||||20240320093000-0500|20240320100000-0500
    NTE|1||Bring the medication list
    PID|1||999^^^OTHERHOSP^PI~12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
    PV1|1|O|CLINIC^^^TESTHOSP||||2222^Otherdoc^Beta||||||||||||V777^^^TESTHOSP^VN
    RGS|1|A
    AIS|1|A|CARDIO-FU^Cardiology follow-up^L|20240320093000-0500|||30|min||Booked
    AIG|1|A|ECG-1^ECG cart^L|EQ^Equipment^L
    AIL|1|A|CARD^201^^TESTHOSP|C^Clinic^HL70305||20240320093000-0500
    AIP|1|A|4321^Doctor^Test^^^Dr|ATT^Attending^L||20240320093000-0500
    ZSC|1|site-specific|ignored
"""

#: What every SIU golden event carries unless its test says otherwise.
BOOKED: dict[str, Any] = {
    "type": EventType.APPOINTMENT_BOOKED,
    "severity": Severity.INFO,
    "lifecycle": Lifecycle.NEW,
    "links": {},
    "subject": {
        "kind": "appointment",
        "key": "SCHEDSYS:APT-200",
        "code": "CARDIO-FU",
        "text": "Cardiology follow-up",
        "status": "Booked",
        "start": "2024-03-20T09:30:00-05:00",
        "end": "2024-03-20T10:00:00-05:00",
        "detail": None,
        "observations": (),
    },
    "mrn": {"value": "12345", "authority": "TESTHOSP", "type": "MR"},
    "visit": "V777",
    "location": {"facility": "TESTHOSP", "unit": "CARD", "room": "201", "bed": None},
    "attending": {"id": "4321", "family": "Doctor", "given": "Test", "prefix": "Dr"},
    "thread_key": "enc:TESTHOSP:V777",
    "occurred_at": datetime(2024, 3, 15, 8, 30, tzinfo=EST),
}


def fields(event: ClinicalEvent) -> dict[str, Any]:
    """The fields a golden test compares, in one dict (so a failure shows every difference at once)."""
    assert event.subject is not None
    return {
        "type": event.type,
        "severity": event.severity,
        "lifecycle": event.lifecycle,
        "links": event.links,
        "subject": event.subject.model_dump(),
        "mrn": event.patient.mrn.model_dump() if event.patient.mrn is not None else None,
        "visit": event.encounter.visit_number,
        "location": event.encounter.location.model_dump(),
        "attending": event.encounter.attending.model_dump() if event.encounter.attending is not None else None,
        "thread_key": event.thread_key,
        "occurred_at": event.occurred_at,
    }


def expected(**changes: Any) -> dict[str, Any]:
    """BOOKED with some fields changed; ``subject`` changes are merged into the booked subject."""
    subject = {**BOOKED["subject"], **changes.pop("subject", {})}
    return {**BOOKED, "subject": subject, **changes}


def test_s12_new_booking(map_one: MapOne) -> None:
    event = map_one(S12)
    assert fields(event) == BOOKED
    assert event.patient.family == "Testpatient" and event.patient.given == "Alpha"
    assert event.patient.birth_date == "1980-05-21"
    assert event.encounter.patient_class == "O"


def test_s13_reschedule_v23_reads_the_timing_of_sch11_and_scopes_a_bare_id_by_the_sender(map_one: MapOne) -> None:
    # v2.3: no TQ1 and no resources; SCH-11 (TQ) component 4 is the start, 5 the end.
    event = map_one(r"""
        MSH|^~\&|SCHEDSYS|TESTHOSP|BRIDGE|TESTHOSP|20240318141500||SIU^S13|S13-0001|P|2.3
        SCH||APT-200||||RESCHED|FUP^Follow-up visit||30|min|^^30^20240322110000^20240322113000||||||||||||||Booked
        PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
        PV1|1|O|CLINIC^12^^TESTHOSP||||2222^Otherdoc^Beta^^^Dr||||||||||||V777
    """)
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_RESCHEDULED,
        severity=Severity.NOTICE,
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "TESTHOSP:APT-200"},
        subject={
            "key": "TESTHOSP:APT-200",
            "code": "FUP",
            "text": "Follow-up visit",
            "start": "2024-03-22T11:00:00+00:00",
            "end": "2024-03-22T11:30:00+00:00",
        },
        location={"facility": "TESTHOSP", "unit": "CLINIC", "room": "12", "bed": None},
        attending={"id": "2222", "family": "Otherdoc", "given": "Beta", "prefix": "Dr"},
        thread_key="enc:V777",
        occurred_at=datetime(2024, 3, 18, 14, 15, tzinfo=UTC),
    )


def test_s14_modification_v24_falls_back_to_the_placer_id_and_the_visit_for_empty_resources(
    map_one: MapOne,
) -> None:
    # SCH-2 is "" (HL7 null): the placer's ID keys the appointment. AIL-3 and AIP-3 are empty:
    # the visit's location and attending. The location resource still gives the start.
    event = map_one(r"""
        MSH|^~\&|SCHEDSYS|TESTHOSP|BRIDGE|TESTHOSP|20240316090000-0500||SIU^S14|S14-0001|P|2.4
        SCH|PL-55^CPOE|""|||||""|CHECKUP^Annual checkup^L|20|min|||||||||||||||Booked
        PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
        PV1|1|O|CLINIC^^^TESTHOSP||||2222^Otherdoc^Beta||||||||||||V777^^^TESTHOSP^VN
        RGS|1|U
        AIL|1|U|""|C^Clinic^HL70305||20240321140000-0500
        AIP|1|U||ATT^Attending^L
        ZAP|whatever
    """)
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_MODIFIED,
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "CPOE:PL-55"},
        subject={
            "key": "CPOE:PL-55",
            "code": "CHECKUP",
            "text": "Annual checkup",
            "start": "2024-03-21T14:00:00-05:00",
            "end": None,
        },
        location={"facility": "TESTHOSP", "unit": "CLINIC", "room": None, "bed": None},
        attending={"id": "2222", "family": "Otherdoc", "given": "Beta", "prefix": None},
        occurred_at=datetime(2024, 3, 16, 9, 0, tzinfo=EST),
    )


def test_s15_cancellation_v26_strikes_the_appointment_by_its_key(map_one: MapOne) -> None:
    # The service has a code only: the text is the code. No TQ1 and no SCH-11: no end.
    event = map_one(r"""
        MSH|^~\&|SCHEDSYS|TESTHOSP|BRIDGE|TESTHOSP|20240319120000-0500||SIU^S15^SIU_S12|S15-0001|P|2.6
        SCH|P-100^CPOE|APT-200^SCHEDSYS||||CANC^Patient cancelled^L|FUP^Follow-up visit^L||||||||||||||||||Cancelled
        PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
        PV1|1|O|CLINIC^^^TESTHOSP||||||||||||||||V777^^^TESTHOSP^VN
        RGS|1|D
        AIS|1|D|CARDIO-FU|20240320093000-0500|||30|min||Cancelled
    """)
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_CANCELLED,
        severity=Severity.NOTICE,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "SCHEDSYS:APT-200"},
        subject={"text": "CARDIO-FU", "status": "Cancelled", "end": None},
        location={"facility": "TESTHOSP", "unit": "CLINIC", "room": None, "bed": None},
        attending=None,
        occurred_at=datetime(2024, 3, 19, 12, 0, tzinfo=EST),
    )


def test_s16_discontinuation_v27_without_sending_facility_or_visit_keys_bare_and_threads_on_the_patient(
    map_one: MapOne,
) -> None:
    event = map_one(r"""
        MSH|^~\&|SCHEDSYS||BRIDGE|TESTHOSP|20240319120000||SIU^S16^SIU_S12|S16-0001|P|2.7
        SCH||APT-300|||||PHYSIO^Physiotherapy series^L||45|min|||||||||||||||Discontinued
        TQ1|1||||||20240401080000|20240401084500
        PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
        RGS|1
        AIG|1||THERA-1^Treatment room 1^L|ROOM^Room^L||||20240401080000
    """)
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_CANCELLED,
        severity=Severity.NOTICE,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "APT-300"},
        subject={
            "key": "APT-300",
            "code": "PHYSIO",
            "text": "Physiotherapy series",
            "status": "Discontinued",
            "start": "2024-04-01T08:00:00+00:00",
            "end": "2024-04-01T08:45:00+00:00",
        },
        visit=None,
        location={"facility": None, "unit": None, "room": None, "bed": None},
        attending=None,
        thread_key="pat:TESTHOSP:12345",
        occurred_at=datetime(2024, 3, 19, 12, 0, tzinfo=UTC),
    )


def test_s17_deletion_v28_reads_coded_cwe_services(map_one: MapOne) -> None:
    event = map_one(r"""
        MSH|^~\&|SCHEDSYS|TESTHOSP|BRIDGE|TESTHOSP|20240319120000-0500||SIU^S17^SIU_S12|S17-0001|P|2.8
        SCH|P-100^CPOE|APT-200^SCHEDSYS|||||FUP^Follow-up visit^L||||||||||||||||||Deleted
        TQ1|1||||||20240320093000-0500|20240320100000-0500
        PID|1||12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F
        PV1|1|O|CLINIC^^^TESTHOSP||||||||||||||||V777^^^TESTHOSP^VN
        RGS|1|D
        AIS|1|D|93000^Electrocardiogram^C4^ECG^ECG^L|20240320093000-0500||||||Deleted
        AIP|1|D|4321^Doctor^Test^^^Dr|ATT^Attending^L||20240320093000-0500
    """)
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_CANCELLED,
        severity=Severity.NOTICE,
        lifecycle=Lifecycle.CANCEL,
        links={"cancels": "SCHEDSYS:APT-200"},
        subject={"code": "93000", "text": "Electrocardiogram", "status": "Deleted"},
        location={"facility": "TESTHOSP", "unit": "CLINIC", "room": None, "bed": None},
        occurred_at=datetime(2024, 3, 19, 12, 0, tzinfo=EST),
    )


def test_s26_noshow_is_a_reply_in_the_thread(map_one: MapOne) -> None:
    event = map_one(
        S12.replace("SIU^S12^SIU_S12|S12-0001", "SIU^S26^SIU_S12|S26-0001")
        .replace("20240315083000-0500", "20240320101500-0500")
        .replace("|Booked", "|Noshow")
    )
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_NOSHOW,
        severity=Severity.NOTICE,
        lifecycle=Lifecycle.UPDATE,
        subject={"status": "Noshow"},
        occurred_at=datetime(2024, 3, 20, 10, 15, tzinfo=EST),
    )


@pytest.mark.parametrize("trigger", ["S18", "S19", "S20", "S21", "S22"])
def test_service_or_resource_changes_modify_the_appointment(map_one: MapOne, trigger: str) -> None:
    event = map_one(S12.replace("SIU^S12^SIU_S12", f"SIU^{trigger}^SIU_S12"))
    assert fields(event) == expected(
        type=EventType.APPOINTMENT_MODIFIED,
        lifecycle=Lifecycle.CORRECT,
        links={"corrects": "SCHEDSYS:APT-200"},
    )


@pytest.mark.parametrize("trigger", ["S23", "S24", "S27"])
def test_time_slot_blocking_and_broadcasts_are_not_mapped(
    map_hl7: MapHL7, mapper: Mapper, parse_hl7: Callable[[str], Message], trigger: str
) -> None:
    text = S12.replace("SIU^S12^SIU_S12", f"SIU^{trigger}")
    assert map_hl7(text) == []
    assert not mapper.matches(parse_hl7(text))


def test_the_site_mrn_authority_picks_among_several_mrs(map_one: MapOne) -> None:
    text = S12.replace("999^^^OTHERHOSP^PI~12345^^^TESTHOSP^MR", "111^^^OTHERHOSP^MR~12345^^^TESTHOSP^MR")
    assert fields(map_one(text))["mrn"] == {"value": "111", "authority": "OTHERHOSP", "type": "MR"}
    site = map_one(text, mrn_authorities=["TESTHOSP"])
    assert fields(site)["mrn"] == BOOKED["mrn"]


def test_a_booking_resent_under_a_new_control_id_is_the_same_fact_and_a_later_reschedule_a_new_one(
    map_one: MapOne,
) -> None:
    def reschedule(message_time: str, hhmmss: str) -> ClinicalEvent:
        return map_one(
            S12.replace("SIU^S12", "SIU^S13").replace("20240315083000", message_time).replace("093000", hhmmss)
        )

    first = map_one(S12)
    assert map_one(S12.replace("S12-0001", "S12-0002")).dedup_key == first.dedup_key
    moved = reschedule("20240316083000", "113000")
    assert reschedule("20240316083000", "113000").dedup_key == moved.dedup_key
    # Moved back, then to 11:30 again: the same content as the first move, but a new fact.
    back = reschedule("20240317083000", "093000")
    again = reschedule("20240318083000", "113000")
    assert len({first.dedup_key, moved.dedup_key, back.dedup_key, again.dedup_key}) == 4


# --- lifecycle in the store: a reschedule edits the booked post, a cancellation strikes it ------------------

DAY = 86_400.0
EntryFactory = Callable[..., JournalEntry]


async def commit(store: SQLiteStore, make_entry: EntryFactory, *events: ClinicalEvent) -> None:
    await store.commit_message(make_entry(), [(e, [NewDelivery("chan")]) for e in events], dedup_window=DAY)


async def deliver_head(store: SQLiteStore, external_id: str) -> None:
    """Claim the head of the thread and record it as posted under ``external_id``."""
    (head,) = await store.claim("chan", now=time.time(), limit=10)
    await store.mark_delivered(head.id, external_id=external_id, thread_root=False)


async def booked_in_a_busy_thread(store: SQLiteStore, make_entry: EntryFactory, map_one: MapOne) -> None:
    """Another appointment of the same visit is posted first, then APT-200 as post-booked."""
    other = map_one(S12.replace("APT-200", "APT-201").replace("CARDIO-FU", "DERM-1"), message_id="other")
    booked = map_one(S12, message_id="booked")
    assert other.thread_key == booked.thread_key
    await commit(store, make_entry, other, booked)
    await deliver_head(store, "post-other")
    await deliver_head(store, "post-booked")


async def test_a_reschedule_edits_the_booked_post_of_the_same_appointment(
    store: SQLiteStore, make_entry: EntryFactory, map_one: MapOne
) -> None:
    await booked_in_a_busy_thread(store, make_entry, map_one)
    for n, message_time in enumerate(("20240316083000", "20240317083000"), start=1):
        text = S12.replace("SIU^S12", "SIU^S13").replace("20240315083000", message_time)
        rescheduled = map_one(text.replace("093000", f"1{n}3000"), message_id=f"rescheduled-{n}")
        await commit(store, make_entry, rescheduled)

        (claimed,) = await store.claim("chan", now=time.time(), limit=10)

        assert claimed.event.id == rescheduled.id
        assert claimed.event.lifecycle is Lifecycle.CORRECT
        # The second reschedule edits the same post again, not the first reschedule's.
        assert claimed.original_ref == "post-booked"
        # An edit is recorded under the id of the post it edited (bridge.delivery.recorded_send).
        await store.mark_delivered(claimed.id, external_id=claimed.original_ref, thread_root=False)


@pytest.mark.parametrize("trigger", ["S15", "S16", "S17"])
async def test_a_cancellation_strikes_the_booked_post_of_the_same_appointment(
    store: SQLiteStore, make_entry: EntryFactory, map_one: MapOne, trigger: str
) -> None:
    await booked_in_a_busy_thread(store, make_entry, map_one)
    cancelled = map_one(
        S12.replace("SIU^S12", f"SIU^{trigger}").replace("|Booked", "|Cancelled"), message_id="cancelled"
    )
    await commit(store, make_entry, cancelled)

    (claimed,) = await store.claim("chan", now=time.time(), limit=10)

    assert claimed.event.id == cancelled.id
    assert claimed.event.lifecycle is Lifecycle.CANCEL
    assert claimed.original_ref == "post-booked"
