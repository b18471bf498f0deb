"""Golden tests of mappings/hl7v2/mdm.yaml: MDM T01-T11, one synthetic message per trigger, field by field.

Every name and number is invented (Testpatient^Alpha, TESTHOSP, DOCSYS). The document
content (OBX-5) carries canaries: no event may repeat it. The lifecycle tests at the end
commit the mapped events to a real SQLite store and check which delivered post a status
change or an addendum edits and a cancellation strikes.
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

PID = "PID|1||999^^^OTHERHOSP^PI~12345^^^TESTHOSP^MR||Testpatient^Alpha||19800521|F"
PV1 = "PV1|1|I|4E^136^B^TESTHOSP||||4321^Doctor^Test^^^Dr||||||||||||V777^^^TESTHOSP^VN"
#: The document's content: never part of an event.
CONTENT = (
    "OBX|1|TX|DS-TEXT^Discharge summary^L||CANARY-CONTENT-1 recovered well||||||F",
    "OBX|2|TX|DS-TEXT^Discharge summary^L||CANARY-CONTENT-2 follow-up in two weeks||||||F",
    "ZDS|1|site-specific|ignored",
)


def mdm(trigger: str, version: str, txa: str, *content: str, facility: str = "TESTHOSP", evn: str = "") -> str:
    """An MDM message of the synthetic patient's visit V777: MSH, EVN, PID, PV1, then the TXA and any content."""
    return "\n".join(
        (
            f"MSH|^~\\&|DOCSYS|{facility}|BRIDGE|TESTHOSP|20240316101700-0500||MDM^{trigger}|{trigger}-0001|P|{version}",
            f"EVN|{trigger}|{evn}",
            PID,
            PV1,
            txa,
            *content,
        )
    )


# v2.5.1 with the COMMON_ORDER group (ORC, OBR) before the TXA: TXA-2 is IS (the code only),
# TXA-4 activity time, TXA-6 origination, TXA-12 unique document number (EI), TXA-17 status.
T02 = mdm(
    "T02",
    "2.5.1",
    "ORC|RE|ORD-1^CPOE\nOBR|1|ORD-1^CPOE||DS^Discharge summary^L\n"
    "TXA|1|DS|TX|20240316101500-0500|4321^Doctor^Test|20240316100000-0500||||||DOC-1^DOCSYS|||||AU",
    *CONTENT,
    evn="20240316101600-0500",
)

#: What every MDM golden event carries unless its case says otherwise.
AVAILABLE: dict[str, Any] = {
    "type": EventType.DOCUMENT_AVAILABLE,
    "severity": Severity.NOTICE,
    "lifecycle": Lifecycle.NEW,
    "links": {},
    "subject": {
        "kind": "document",
        "key": "DOCSYS:DOC-1",
        "code": "DS",
        "text": "DS",
        "status": "AU",
        "start": None,
        "end": None,
        "detail": "Discharge summary",
        "observations": (),
    },
    "mrn": {"value": "12345", "authority": "TESTHOSP", "type": "MR"},
    "visit": "V777",
    "location": {"facility": "TESTHOSP", "unit": "4E", "room": "136", "bed": "B"},
    "attending": {"id": "4321", "family": "Doctor", "given": "Test", "prefix": "Dr"},
    "thread_key": "enc:TESTHOSP:V777",
    "occurred_at": datetime(2024, 3, 16, 10, 15, tzinfo=EST),
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
    """AVAILABLE with some fields changed; ``subject`` changes are merged into its subject."""
    subject = {**AVAILABLE["subject"], **changes.pop("subject", {})}
    return {**AVAILABLE, "subject": subject, **changes}


AMENDED = {"type": EventType.DOCUMENT_AMENDED, "lifecycle": Lifecycle.CORRECT}

CASES = [
    pytest.param(T02, expected(), id="T02-original-with-content-v2.5.1"),
    pytest.param(
        # v2.3: no order group, no content (so no title); dictated, not yet signed.
        mdm("T01", "2.3", "TXA|1|DS|TX|20240316101500-0500|4321^Doctor^Test|||||||DOC-1^DOCSYS|||||DI"),
        expected(subject={"status": "DI", "detail": None}),
        id="T01-original-v2.3",
    ),
    pytest.param(
        # A status change edits the document's own post. TXA-4 is "": the origination time.
        mdm("T03", "2.4", 'TXA|1|DS|TX|""||20240316100000-0500||||||DOC-1^DOCSYS|||||LA'),
        expected(
            lifecycle=Lifecycle.CORRECT,
            links={"corrects": "DOCSYS:DOC-1"},
            subject={"status": "LA", "detail": None},
            occurred_at=datetime(2024, 3, 16, 10, 0, tzinfo=EST),
        ),
        id="T03-status-change-v2.4",
    ),
    pytest.param(
        mdm("T04", "2.6", "TXA|1|DS|TX|20240316101500-0500||||||||DOC-1^DOCSYS|||||AU", *CONTENT),
        expected(lifecycle=Lifecycle.CORRECT, links={"corrects": "DOCSYS:DOC-1"}),
        id="T04-status-change-with-content-v2.6",
    ),
    pytest.param(
        # v2.7: TXA-2 is a CWE with code and text. TXA-13 names the parent: its post is edited.
        mdm(
            "T05",
            "2.7",
            "TXA|1|11490-0^Discharge summary^LN|TX|20240317090000-0500||||||||DOC-2^DOCSYS|DOC-1^DOCSYS||||AU",
        ),
        expected(
            **AMENDED,
            links={"corrects": "DOCSYS:DOC-1"},
            subject={"key": "DOCSYS:DOC-2", "code": "11490-0", "text": "Discharge summary", "detail": None},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T05-addendum-v2.7",
    ),
    pytest.param(
        mdm(
            "T06",
            "2.8",
            "TXA|1|11490-0^Discharge summary^LN|TX|20240317090000-0500||||||||DOC-2^DOCSYS|DOC-1^DOCSYS||||AU",
            *CONTENT,
        ),
        expected(
            **AMENDED,
            links={"corrects": "DOCSYS:DOC-1"},
            subject={"key": "DOCSYS:DOC-2", "code": "11490-0", "text": "Discharge summary"},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T06-addendum-with-content-v2.8",
    ),
    pytest.param(
        # No parent document: the edit edits the document's own post.
        mdm("T07", "2.5", "TXA|1|DS|TX|20240317090000-0500||||||||DOC-1^DOCSYS|||||PA"),
        expected(
            **AMENDED,
            links={"corrects": "DOCSYS:DOC-1"},
            subject={"status": "PA", "detail": None},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T07-edit-v2.5",
    ),
    pytest.param(
        # Numbers without namespace: both scoped by the sending facility, alike.
        mdm("T08", "2.5.1", "TXA|1|DS|TX|20240317090000-0500||||||||DOC-3|DOC-1||||AU", *CONTENT),
        expected(
            **AMENDED,
            links={"corrects": "TESTHOSP:DOC-1"},
            subject={"key": "TESTHOSP:DOC-3"},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T08-edit-with-content-v2.5.1",
    ),
    pytest.param(
        # No sending facility either: bare numbers.
        mdm("T09", "2.6", "TXA|1|DS|TX|20240317090000-0500||||||||DOC-4|DOC-1||||AU", facility=""),
        expected(
            **AMENDED,
            links={"corrects": "DOC-1"},
            subject={"key": "DOC-4", "detail": None},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T09-replacement-v2.6",
    ),
    pytest.param(
        # The parent is "" (HL7 null): the replacement edits the document's own post.
        mdm("T10", "2.8", 'TXA|1|DS|TX|20240317090000-0500||||||||DOC-5^DOCSYS|""||||AU', *CONTENT),
        expected(
            **AMENDED,
            links={"corrects": "DOCSYS:DOC-5"},
            subject={"key": "DOCSYS:DOC-5"},
            occurred_at=datetime(2024, 3, 17, 9, 0, tzinfo=EST),
        ),
        id="T10-replacement-with-content-v2.8",
    ),
    pytest.param(
        # No activity or origination time: the event time of EVN-2 (naive, so UTC).
        mdm("T11", "2.5", "TXA|1|DS|TX|||||||||DOC-1^DOCSYS|||||DI", evn="20240318070000"),
        expected(
            type=EventType.DOCUMENT_CANCELLED,
            lifecycle=Lifecycle.CANCEL,
            links={"cancels": "DOCSYS:DOC-1"},
            subject={"status": "DI", "detail": None},
            occurred_at=datetime(2024, 3, 18, 7, 0, tzinfo=UTC),
        ),
        id="T11-cancel-v2.5",
    ),
]


@pytest.mark.parametrize(("text", "want"), CASES)
def test_golden(map_one: MapOne, text: str, want: dict[str, Any]) -> None:
    assert fields(map_one(text)) == want


@pytest.mark.parametrize("status", ["DI", "DO", "IP", "IN", "PA"])
@pytest.mark.parametrize("trigger", ["T01", "T02"])
def test_a_document_not_yet_authenticated_is_posted_and_says_its_status(
    map_one: MapOne, trigger: str, status: str
) -> None:
    # Dictated, documented, in progress, incomplete or pre-authenticated: posted (the care team may wait
    # for it), with TXA-17 as subject.status for the wording; the T03/T04 to AU or LA then edits the post.
    event = map_one(
        T02.replace("MDM^T02", f"MDM^{trigger}").replace("DOC-1^DOCSYS|||||AU", f"DOC-1^DOCSYS|||||{status}")
    )
    assert event.subject is not None
    assert (event.type, event.lifecycle, event.subject.key, event.subject.status) == (
        EventType.DOCUMENT_AVAILABLE,
        Lifecycle.NEW,
        "DOCSYS:DOC-1",
        status,
    )
    signed = map_one(T02.replace("MDM^T02", "MDM^T04"))
    assert (signed.lifecycle, signed.links, signed.subject and signed.subject.status) == (
        Lifecycle.CORRECT,
        {"corrects": "DOCSYS:DOC-1"},
        "AU",
    )


def test_t02_carries_the_patient(map_one: MapOne) -> None:
    event = map_one(T02)
    assert (event.patient.family, event.patient.given, event.patient.birth_date) == (
        "Testpatient",
        "Alpha",
        "1980-05-21",
    )
    assert event.encounter.patient_class == "I"


@pytest.mark.parametrize("trigger", ["T02", "T04", "T06", "T08", "T10"])
def test_the_document_content_never_reaches_the_event(map_one: MapOne, trigger: str) -> None:
    event = map_one(T02.replace("MDM^T02", f"MDM^{trigger}"))
    assert event.subject is not None and event.subject.observations == ()
    assert "CANARY" not in event.model_dump_json()
    assert "CANARY" not in repr(event.to_cloudevent())


def test_without_txa_times_or_evn_the_message_time_dates_the_event(map_one: MapOne) -> None:
    text = mdm("T01", "2.3", "TXA|1|DS|TX|||||||||DOC-1^DOCSYS|||||DI").replace("EVN|T01|\n", "")
    assert map_one(text).occurred_at == datetime(2024, 3, 16, 10, 17, tzinfo=EST)


def test_without_a_visit_the_document_threads_on_the_patient(map_one: MapOne) -> None:
    event = map_one(T02.replace(PV1 + "\n", ""))
    assert (event.thread_key, event.encounter.visit_number, event.encounter.attending) == (
        "pat:TESTHOSP:12345",
        None,
        None,
    )


def test_document_queries_are_not_mapped(map_hl7: MapHL7, mapper: Mapper, parse_hl7: Callable[[str], Message]) -> None:
    text = T02.replace("MDM^T02", "MDM^T12")
    assert map_hl7(text) == []
    assert not mapper.matches(parse_hl7(text))


def test_a_document_resent_under_a_new_control_id_is_the_same_fact_and_a_second_edit_a_new_one(
    map_one: MapOne,
) -> None:
    assert map_one(T02.replace("T02-0001", "T02-0002")).dedup_key == map_one(T02).dedup_key
    edit = "TXA|1|DS|TX|{}||||||||DOC-1^DOCSYS|||||AU"
    first = map_one(mdm("T08", "2.5", edit.format("20240317090000"), *CONTENT))
    second = map_one(mdm("T08", "2.5", edit.format("20240317113000"), *CONTENT))
    assert first.dedup_key != second.dedup_key


# --- lifecycle in the store: an addendum or status change edits the document's post, T11 strikes it ----------

DAY = 86_400.0
EntryFactory = Callable[..., JournalEntry]


async def commit(store: SQLiteStore, make_entry: EntryFactory, *events: ClinicalEvent) -> None:
    await store.commit_message(make_entry(), [(e, [NewDelivery("chan")]) for e in events], dedup_window=DAY)


async def deliver_head(store: SQLiteStore, external_id: str) -> None:
    """Claim the head of the thread and record it as posted under ``external_id``."""
    (head,) = await store.claim("chan", now=time.time(), limit=10)
    await store.mark_delivered(head.id, external_id=external_id, thread_root=False)


@pytest.mark.parametrize(
    ("trigger", "txa_12_13", "lifecycle"),
    [
        pytest.param("T06", "DOC-2^DOCSYS|DOC-1^DOCSYS", Lifecycle.CORRECT, id="addendum-edits-the-original"),
        pytest.param("T10", "DOC-3^DOCSYS|DOC-1^DOCSYS", Lifecycle.CORRECT, id="replacement-edits-the-original"),
        pytest.param("T04", "DOC-1^DOCSYS|", Lifecycle.CORRECT, id="status-change-edits-the-document"),
        pytest.param("T11", "DOC-1^DOCSYS|", Lifecycle.CANCEL, id="cancel-strikes-the-document"),
    ],
)
async def test_a_later_message_finds_the_post_of_the_original_document(
    store: SQLiteStore,
    make_entry: EntryFactory,
    map_one: MapOne,
    trigger: str,
    txa_12_13: str,
    lifecycle: Lifecycle,
) -> None:
    # Another document of the same visit is posted first, then the original (DOC-1).
    other = map_one(T02.replace("DOC-1^DOCSYS", "DOC-9^DOCSYS"), message_id="other")
    original = map_one(T02, message_id="original")
    assert other.thread_key == original.thread_key
    await commit(store, make_entry, other, original)
    await deliver_head(store, "post-other")
    await deliver_head(store, "post-original")
    later = map_one(
        mdm(trigger, "2.5.1", f"TXA|1|DS|TX|20240317090000-0500||||||||{txa_12_13}||||AU", *CONTENT),
        message_id="later",
    )
    await commit(store, make_entry, later)

    (claimed,) = await store.claim("chan", now=time.time(), limit=10)

    assert claimed.event.id == later.id
    assert claimed.event.lifecycle is lifecycle
    assert claimed.original_ref == "post-original"
