"""Golden tests of mappings/hl7v2/adt.yaml: one synthetic visit message per trigger → the event(s), field by field.

Every name and number is invented (Testpatient^Alpha, facility TESTHOSP). Versions vary across the
cases (2.3 to 2.8); the messages carry what real feeds send: a repeating PID-3 with MRs of two
authorities, "" (HL7 null) fields and Z-segments.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import ClinicalEvent

#: The site's own assigning authority: its MR wins over the other hospital's (mapping.mrn_authorities).
SITE = ("TESTHOSP",)


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields (1-based); the others empty. Not for MSH."""
    values = [""] * (max(fields) + 1)
    values[0] = name
    for index, value in fields.items():
        values[index] = value
    return "|".join(values)


def msh(trigger: str, version: str) -> str:
    return f"MSH|^~\\&|ADTAPP|TESTHOSP|BRIDGE|TESTHOSP|20240115103000||ADT^{trigger}|CTL-{trigger}|P|{version}"


def hd_form(version: str) -> bool:
    """PL parts are HDs (namespace&id&type) since v2.7."""
    return version in ("2.7", "2.7.1", "2.8")


def pid_alpha(version: str) -> str:
    fields = {
        1: "1",
        # Another hospital's MR first, then the site's MR, then a patient internal ID of the site.
        3: "5550001^^^OTHERHOSP^MR~7000123^^^TESTHOSP^MR~X-42^^^TESTHOSP^PI",
        5: "Testpatient^Alpha^Q",
        7: "19800521",
        8: "F",
        11: "1 Test Street^^Testtown",
        18: "ACC-77^^^TESTHOSP^AN",
    }
    if version == "2.3":
        fields[2] = "EXT-9^^^OTHERHOSP"  # 2.3 "external ID": PID-3 has the MRN, so it is not read
    return seg("PID", fields)


def pv1_alpha(version: str) -> str:
    hd = hd_form(version)
    return seg(
        "PV1",
        {
            1: "1",
            2: "I",
            3: "4E&1.2.3.4.1&ISO^412^B^TESTHOSP&2.16.840.1.113883.3.999&ISO" if hd else "4E^412^B^TESTHOSP",
            6: "3W^301^A^TESTHOSP",
            7: "9001^Doctor^Test^^^Dr",
            19: "V-1001^^^TESTHOSP^VN",
            44: "20240115102000",
            45: '""',
        },
    )


def visit_message(trigger: str, version: str) -> str:
    return "\n".join(
        [
            msh(trigger, version),
            f"EVN|{trigger}|20240115102500",
            pid_alpha(version),
            "ZPI|1|site specific^stuff",
            pv1_alpha(version),
            "PV2|||^Chest pain",
            "ZPV|1|more site specific",
        ]
    )


def expected_alpha(**overrides: Any) -> dict[str, Any]:
    """The event of visit_message, as model_dump(mode="json") without id, source, origin and dedup_key."""
    event: dict[str, Any] = {
        "type": "encounter.admitted",
        "severity": "notice",
        "occurred_at": "2024-01-15T10:25:00Z",
        "patient": {
            "mrn": {"value": "7000123", "authority": "TESTHOSP", "type": "MR"},
            "identifiers": [
                {"value": "5550001", "authority": "OTHERHOSP", "type": "MR"},
                {"value": "7000123", "authority": "TESTHOSP", "type": "MR"},
                {"value": "X-42", "authority": "TESTHOSP", "type": "PI"},
            ],
            "family": "Testpatient",
            "given": "Alpha",
            "birth_date": "1980-05-21",
            "sex": "F",
        },
        "encounter": {
            "visit_number": "V-1001",
            "patient_class": "I",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"},
            "prior_location": {"facility": "TESTHOSP", "unit": "3W", "room": "301", "bed": "A"},
            "attending": {"id": "9001", "family": "Doctor", "given": "Test", "prefix": "Dr"},
            "admitted_at": "2024-01-15T10:20:00+00:00",
            "discharged_at": None,
        },
        "subject": {
            "kind": "encounter",
            "key": "V-1001",
            "code": None,
            "text": None,
            "status": None,
            "start": None,
            "end": None,
            "detail": None,
            "observations": [],
        },
        "thread_key": "enc:TESTHOSP:V-1001",
        "lifecycle": "new",
        "links": {},
        "schema_version": "1",
    }
    event.update(overrides)
    return event


def fields_of(event: ClinicalEvent) -> dict[str, Any]:
    dumped = event.model_dump(mode="json")
    for caller_given in ("id", "source", "origin", "dedup_key"):
        dumped.pop(caller_given)
    return dumped


def assert_dedup_key(event: ClinicalEvent) -> None:
    # "{type}:{thread_key}:{occurred_at}:{digest}": the digest is a 16-hex SHA-256 prefix of the content.
    prefix = f"{event.type.value}:{event.thread_key}:{event.occurred_at.isoformat()}:"
    assert event.dedup_key.startswith(prefix)
    digest = event.dedup_key.removeprefix(prefix)
    assert len(digest) == 16 and all(c in "0123456789abcdef" for c in digest)


CANCEL = "cancel"


@pytest.mark.parametrize(
    ("trigger", "version", "event_type", "severity", "lifecycle", "links"),
    [
        ("A01", "2.5.1", "encounter.admitted", "notice", "new", {}),
        ("A02", "2.3", "encounter.transferred", "notice", "new", {}),
        ("A03", "2.4", "encounter.discharged", "notice", "new", {}),
        ("A04", "2.6", "encounter.arrived", "notice", "new", {}),
        ("A05", "2.7", "encounter.preadmitted", "info", "new", {}),
        ("A06", "2.8", "encounter.transferred", "notice", "new", {}),
        ("A07", "2.3", "encounter.transferred", "notice", "new", {}),
        ("A08", "2.4", "encounter.updated", "info", "new", {}),
        # Tracking (to radiology and back, the bed kept): a reply in the visit's thread, so an A12 never strikes it.
        ("A09", "2.5.1", "encounter.transferred", "info", "update", {}),
        ("A10", "2.6", "encounter.transferred", "info", "update", {}),
        ("A11", "2.7", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.admitted,encounter.arrived"}),
        ("A12", "2.8", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.transferred"}),
        ("A13", "2.3", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.discharged"}),
        ("A14", "2.4", "encounter.preadmitted", "info", "new", {}),
        ("A15", "2.5.1", "encounter.transfer_pending", "info", "new", {}),
        ("A16", "2.6", "encounter.discharge_pending", "info", "new", {}),
        ("A21", "2.7", "encounter.leave_of_absence", "notice", "new", {}),
        ("A22", "2.8", "encounter.leave_of_absence", "notice", "update", {}),
        ("A25", "2.3", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.discharge_pending"}),
        ("A26", "2.4", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.transfer_pending"}),
        ("A27", "2.5.1", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.preadmitted"}),
        ("A38", "2.8", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.preadmitted"}),
        ("A52", "2.3", "encounter.cancelled", "notice", CANCEL, {"cancels": "encounter.leave_of_absence"}),
        ("A54", "2.5.1", "encounter.updated", "info", "new", {}),
        ("A55", "2.6", "encounter.updated", "info", "new", {}),
        ("A61", "2.7", "encounter.updated", "info", "new", {}),
        ("A62", "2.8", "encounter.updated", "info", "new", {}),
    ],
)
def test_visit_trigger_maps_to_its_event_field_by_field(
    map_one: Any,
    trigger: str,
    version: str,
    event_type: str,
    severity: str,
    lifecycle: str,
    links: dict[str, str],
) -> None:
    event = map_one(visit_message(trigger, version), mrn_authorities=SITE)
    assert fields_of(event) == expected_alpha(type=event_type, severity=severity, lifecycle=lifecycle, links=links)
    assert event.id == "msg1-1"
    assert event.origin == {"listener": "golden", "control_id": f"CTL-{trigger}"}
    assert_dedup_key(event)


def test_without_site_authorities_the_first_mr_is_the_mrn(map_one: Any) -> None:
    event = map_one(visit_message("A01", "2.5.1"))
    assert event.patient.mrn is not None
    assert event.patient.mrn.model_dump() == {"value": "5550001", "authority": "OTHERHOSP", "type": "MR"}
    # The visit, not the MRN, is the thread: the same whichever MR is picked.
    assert event.thread_key == "enc:TESTHOSP:V-1001"


def test_swap_beds_makes_one_transfer_per_patient(map_hl7: Any) -> None:
    # A17 (v2.5.1): two PID/PV1 pairs; each patient moves into the other's bed (PV1-3 new, PV1-6 old).
    text = "\n".join(
        [
            msh("A17", "2.5.1"),
            "EVN|A17|20240115110000+0100",
            seg("PID", {1: "1", 3: "7000123^^^TESTHOSP^MR", 5: "Testpatient^Alpha", 7: "19800521", 8: "F"}),
            seg(
                "PV1",
                {1: "1", 2: "I", 3: "4E^414^A^TESTHOSP", 6: "4E^412^B^TESTHOSP", 19: "V-1001^^^TESTHOSP^VN"},
            ),
            "ZBD|swap",
            seg("PID", {1: "2", 3: "7000456^^^TESTHOSP^MR", 5: "Testpatient^Beta", 7: "19700101", 8: "M"}),
            seg("PV1", {1: "1", 2: "I", 3: "4E^412^B^TESTHOSP", 6: "4E^414^A^TESTHOSP", 19: "V-2002"}),
        ]
    )
    first, second = map_hl7(text, mrn_authorities=SITE)
    assert (first.id, second.id) == ("msg1-1", "msg1-2")
    common = {
        "type": "encounter.transferred",
        "severity": "notice",
        "occurred_at": "2024-01-15T11:00:00+01:00",
        "lifecycle": "new",
        "links": {},
        "schema_version": "1",
    }
    subject = {"kind": "encounter", "code": None, "text": None, "status": None, "start": None, "end": None}
    encounter = {"patient_class": "I", "attending": None, "admitted_at": None, "discharged_at": None}
    assert fields_of(first) == {
        **common,
        "patient": {
            "mrn": {"value": "7000123", "authority": "TESTHOSP", "type": "MR"},
            "identifiers": [{"value": "7000123", "authority": "TESTHOSP", "type": "MR"}],
            "family": "Testpatient",
            "given": "Alpha",
            "birth_date": "1980-05-21",
            "sex": "F",
        },
        "encounter": {
            **encounter,
            "visit_number": "V-1001",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "414", "bed": "A"},
            "prior_location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"},
        },
        "subject": {**subject, "key": "V-1001", "detail": None, "observations": []},
        "thread_key": "enc:TESTHOSP:V-1001",
    }
    assert fields_of(second) == {
        **common,
        "patient": {
            "mrn": {"value": "7000456", "authority": "TESTHOSP", "type": "MR"},
            "identifiers": [{"value": "7000456", "authority": "TESTHOSP", "type": "MR"}],
            "family": "Testpatient",
            "given": "Beta",
            "birth_date": "1970-01-01",
            "sex": "M",
        },
        "encounter": {
            **encounter,
            "visit_number": "V-2002",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"},
            "prior_location": {"facility": "TESTHOSP", "unit": "4E", "room": "414", "bed": "A"},
        },
        "subject": {**subject, "key": "V-2002", "detail": None, "observations": []},
        # The second visit number has no authority: the deployment's single numbering.
        "thread_key": "enc:V-2002",
    }
    assert_dedup_key(first)
    assert_dedup_key(second)


def test_leave_of_absence_and_return_are_one_thread_new_then_update(map_one: Any) -> None:
    left = map_one(visit_message("A21", "2.5.1").replace("20240115102500", "20240116080000"), mrn_authorities=SITE)
    back = map_one(visit_message("A22", "2.5.1").replace("20240115102500", "20240116200000"), mrn_authorities=SITE)
    assert (left.type, left.lifecycle) == ("encounter.leave_of_absence", "new")
    assert (back.type, back.lifecycle) == ("encounter.leave_of_absence", "update")
    assert left.thread_key == back.thread_key == "enc:TESTHOSP:V-1001"
    assert left.dedup_key != back.dedup_key


def test_hl7_nulls_and_empty_fields_are_no_values(map_one: Any) -> None:
    # v2.4 admission: "" for sex, class, attending and admit time; the bed and PV1-6 empty.
    text = "\n".join(
        [
            msh("A01", "2.4"),
            'EVN|A01|""|||""|20240115101500',
            seg("PID", {1: "1", 3: "7000123^^^TESTHOSP^MR", 5: "Testpatient^Alpha", 7: "19800521", 8: '""'}),
            seg("PV1", {1: "1", 2: '""', 3: '4E^412^""^TESTHOSP', 7: '""', 19: "V-1001^^^TESTHOSP", 44: '""'}),
        ]
    )
    event = map_one(text)
    assert event.patient.sex is None
    assert event.encounter.model_dump(mode="json") == {
        "visit_number": "V-1001",
        "patient_class": None,
        "location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": None},
        "prior_location": None,
        "attending": None,
        "admitted_at": None,
        "discharged_at": None,
    }
    # EVN-2 is "": EVN-6 (event occurred) is the time.
    assert event.occurred_at.isoformat() == "2024-01-15T10:15:00+00:00"


def test_version_27_locations_read_the_first_subcomponent_of_each_part(map_one: Any) -> None:
    event = map_one(visit_message("A02", "2.8"), mrn_authorities=SITE)
    assert event.encounter.location.model_dump() == {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"}


def test_version_23_external_id_is_the_mrn_only_when_pid3_is_empty(map_one: Any) -> None:
    # Old 2.3 senders: the patient ID in PID-2 ("external ID"), PID-3 empty, no visit.
    text = "\n".join(
        [
            msh("A08", "2.3"),
            "EVN|A08|20240115102500",
            seg("PID", {1: "1", 2: "EXT-9^^^OTHERHOSP", 3: "", 5: "Testpatient^Alpha"}),
            "PV1|1|O",
        ]
    )
    event = map_one(text)
    assert event.patient.mrn is not None
    assert event.patient.mrn.model_dump() == {"value": "EXT-9", "authority": "OTHERHOSP", "type": None}
    assert event.patient.identifiers == ()
    assert event.thread_key == "pat:OTHERHOSP:EXT-9"
    assert event.subject is not None and event.subject.key is None


def test_account_number_threads_the_visit_without_pv1_19(map_one: Any) -> None:
    # v2.6 registration whose PV1 has no visit number: the account number (PID-18) is the visit.
    text = "\n".join(
        [
            msh("A04", "2.6"),
            "EVN|A04|20240115102500",
            seg("PID", {1: "1", 3: "7000123^^^TESTHOSP^MR", 5: "Testpatient^Alpha", 18: "ACC-77^^^TESTHOSP^AN"}),
            seg("PV1", {1: "1", 2: "E", 3: "ED^^^TESTHOSP"}),
        ]
    )
    event = map_one(text)
    assert (event.type, event.encounter.visit_number, event.subject and event.subject.key) == (
        "encounter.arrived",
        "ACC-77",
        "ACC-77",
    )
    assert event.thread_key == "enc:TESTHOSP:ACC-77"
    assert event.encounter.location.model_dump() == {"facility": "TESTHOSP", "unit": "ED", "room": None, "bed": None}


@pytest.mark.parametrize("trigger", ["A20", "A23", "A24", "A32", "A33", "A37", "A53"])
def test_triggers_without_a_patient_event_make_none(map_hl7: Any, parse_hl7: Any, mapper: Any, trigger: str) -> None:
    # A20 bed status (no patient), A23 delete a visit record (housekeeping), A24/A37 link/unlink records,
    # A32/A33 cancel a tracking move, A53 a return from leave (replies no cancellation can name: they would
    # strike the last real transfer, or the leave itself).
    text = visit_message(trigger, "2.5.1")
    assert map_hl7(text) == []
    assert not mapper.matches(parse_hl7(text))


def test_tracking_moves_are_replies_so_a_cancelled_transfer_names_only_real_transfers(map_one: Any) -> None:
    # A01, A02 to ICU, A09 departs to radiology, A10 arrives back, A12 cancels the transfer to ICU. The
    # A12 strikes the latest new post of encounter.transferred in the thread: the A02, never a tracking reply.
    events = [
        map_one(visit_message(trigger, "2.5.1").replace("20240115102500", at), mrn_authorities=SITE)
        for trigger, at in [
            ("A01", "20240115080000"),
            ("A02", "20240115090000"),
            ("A09", "20240115100000"),
            ("A10", "20240115110000"),
            ("A12", "20240115120000"),
        ]
    ]
    assert [(e.type.value, e.lifecycle.value, e.links) for e in events] == [
        ("encounter.admitted", "new", {}),
        ("encounter.transferred", "new", {}),
        ("encounter.transferred", "update", {}),
        ("encounter.transferred", "update", {}),
        ("encounter.cancelled", "cancel", {"cancels": "encounter.transferred"}),
    ]
    assert {e.thread_key for e in events} == {"enc:TESTHOSP:V-1001"}


def admission_with_pid3(pid3: str) -> str:
    return "\n".join(
        [
            msh("A01", "2.3"),
            "EVN|A01|20240115102500",
            seg("PID", {1: "1", 3: pid3, 5: "Testpatient^Alpha"}),
            seg("PV1", {1: "1", 2: "I", 3: "4E^412^B"}),
        ]
    )


@pytest.mark.parametrize(
    ("pid3", "authorities", "mrn"),
    [
        # No MR: never the social security number, with or without the site's authorities.
        ("123-45-6789^^^SSA^SS~MRN1^^^HOSP", (), ("MRN1", "HOSP", None)),
        ("123-45-6789^^^SSA^SS~MRN1^^^HOSP", ("HOSP",), ("MRN1", "HOSP", None)),
        # Without an MR, the site's authority before an identifier of any other (acceptable) type.
        ("A-1^^^OTHER^PI~A-2^^^HOSP^PI", ("HOSP",), ("A-2", "HOSP", "PI")),
        ("AC-9^^^HOSP^AN~A-2^^^HOSP^PI", ("HOSP",), ("AC-9", "HOSP", "AN")),
        # Else a patient number (PI, PT, PN, PE, MRT) or an untyped one before any other type.
        ("AC-9^^^HOSP^AN~A-2^^^OTHER^PT", (), ("A-2", "OTHER", "PT")),
        ("AC-9^^^HOSP^AN~A-3^^^OTHER", (), ("A-3", "OTHER", None)),
        ("AC-9^^^HOSP^AN", (), ("AC-9", "HOSP", "AN")),
        # An MR always wins, wherever it stands.
        ("123-45-6789^^^SSA^SS~A-2^^^HOSP^PI~M-1^^^OTHER^MR", ("HOSP",), ("M-1", "OTHER", "MR")),
        # Only sensitive identifiers (national, passport, driving licence, health card, insurance): no MRN.
        ("123-45-6789^^^SSA^SS~X1^^^GBR^NNGBR~P1^^^DE^PPN~D1^^^DMV^DL~H1^^^ON^HC~M1^^^CMS^MC", ("HOSP",), None),
        ("943 476 5919^^^NHS^NHSNMBR~9^^^X^ssn", (), None),
    ],
)
def test_the_mrn_is_never_a_social_security_passport_or_national_number(
    map_one: Any, pid3: str, authorities: tuple[str, ...], mrn: tuple[str, str, str | None] | None
) -> None:
    event = map_one(admission_with_pid3(pid3), mrn_authorities=authorities)
    found = event.patient.mrn
    assert (None if found is None else (found.value, found.authority, found.type)) == mrn
    if mrn is None:
        # No MRN and no visit: the thread is the message, never a key made of an SSN.
        assert event.thread_key == "msg:CTL-A01"
    else:
        assert event.thread_key == f"pat:{mrn[1]}:{mrn[0]}"
