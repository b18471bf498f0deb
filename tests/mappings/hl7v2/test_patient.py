"""Golden tests of mappings/hl7v2/patient.yaml: person-level ADT (register, update, delete, merge, move).

Every name and number is invented (Testpatient^Alpha, facility TESTHOSP). A merge names both
identities in its links, "authority|value", never by name.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.events import ClinicalEvent

SITE = ("TESTHOSP",)


def seg(name: str, fields: dict[int, str]) -> str:
    """A segment with the given fields (1-based); the others empty. Not for MSH."""
    values = [""] * (max(fields) + 1)
    values[0] = name
    for index, value in fields.items():
        values[index] = value
    return "|".join(values)


def msh(trigger: str, version: str, facility: str = "TESTHOSP") -> str:
    return f"MSH|^~\\&|ADTAPP|{facility}|BRIDGE|TESTHOSP|20240201090000||ADT^{trigger}|CTL-{trigger}|P|{version}"


PID_ALPHA = seg(
    "PID",
    {
        1: "1",
        3: "5550001^^^OTHERHOSP^MR~7000123^^^TESTHOSP^MR",
        5: "Testpatient^Alpha",
        7: "19800521",
        8: "F",
    },
)

ALPHA = {
    "mrn": {"value": "7000123", "authority": "TESTHOSP", "type": "MR"},
    "identifiers": [
        {"value": "5550001", "authority": "OTHERHOSP", "type": "MR"},
        {"value": "7000123", "authority": "TESTHOSP", "type": "MR"},
    ],
    "family": "Testpatient",
    "given": "Alpha",
    "birth_date": "1980-05-21",
    "sex": "F",
}
NO_VISIT = {
    "visit_number": None,
    "patient_class": None,
    "location": {"facility": None, "unit": None, "room": None, "bed": None},
    "prior_location": None,
    "attending": None,
    "admitted_at": None,
    "discharged_at": None,
}
PATIENT_SUBJECT = {
    "kind": "patient",
    "key": None,
    "code": None,
    "text": None,
    "status": None,
    "start": None,
    "end": None,
    "detail": None,
    "observations": [],
}


def person_message(trigger: str, version: str, *extra: str) -> str:
    return "\n".join([msh(trigger, version), f"EVN|{trigger}|20240201085500", PID_ALPHA, *extra, "ZPD|1|site"])


def fields_of(event: ClinicalEvent) -> dict[str, Any]:
    dumped = event.model_dump(mode="json")
    for caller_given in ("id", "source", "origin", "dedup_key"):
        dumped.pop(caller_given)
    return dumped


def expected(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "patient.updated",
        "severity": "info",
        "occurred_at": "2024-02-01T08:55:00Z",
        "patient": ALPHA,
        "encounter": NO_VISIT,
        "subject": PATIENT_SUBJECT,
        "thread_key": "pat:TESTHOSP:7000123",
        "lifecycle": "new",
        "links": {},
        "schema_version": "1",
    }
    event.update(overrides)
    return event


def test_a28_registers_the_person_in_the_patient_thread(map_one: Any) -> None:
    event = map_one(person_message("A28", "2.4", "PD1|||Testclinic"), mrn_authorities=SITE)
    assert fields_of(event) == expected(type="patient.registered")
    # "{type}:{thread_key}:{occurred_at}:{group}:{digest}"
    assert event.dedup_key.startswith("patient.registered:pat:TESTHOSP:7000123:2024-02-01T08:55:00+00:00:1:")


def test_a29_deletes_the_person_and_strikes_the_registration(map_one: Any) -> None:
    event = map_one(person_message("A29", "2.5.1"), mrn_authorities=SITE)
    assert fields_of(event) == expected(severity="notice", lifecycle="cancel", links={"cancels": "patient.registered"})


def test_a31_updates_the_person_and_an_empty_pv1_is_no_visit(map_one: Any) -> None:
    # 2.6: A31 carries a PV1 with nothing but the class "N" (not applicable).
    event = map_one(person_message("A31", "2.6", 'PV1|1|N||""'), mrn_authorities=SITE)
    assert fields_of(event) == expected(encounter={**NO_VISIT, "patient_class": "N"})


def test_a60_allergy_update_is_a_patient_update_in_the_visit_thread(map_one: Any) -> None:
    # 2.7: an allergy added during a visit; the IAM segments themselves are not extracted.
    pv1 = seg("PV1", {1: "1", 2: "I", 3: "4E&1.2.3&ISO^412^B^TESTHOSP", 19: "V-1001^^^TESTHOSP^VN"})
    iam = "IAM|1|DA|^Penicillin|SV||A|||||||||20240201"
    event = map_one(person_message("A60", "2.7", pv1, iam), mrn_authorities=SITE)
    assert fields_of(event) == expected(
        encounter={
            **NO_VISIT,
            "visit_number": "V-1001",
            "patient_class": "I",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"},
        },
        thread_key="enc:TESTHOSP:V-1001",
    )


def test_a40_merges_each_pid_mrg_group_and_names_both_identities(map_hl7: Any) -> None:
    # 2.5.1: two merges in one message; MRG-1 repeats like PID-3 (the site's MR is not the first).
    text = "\n".join(
        [
            msh("A40", "2.5.1"),
            "EVN|A40|20240201085500",
            PID_ALPHA,
            "PD1|||Testclinic",
            "MRG|5550999^^^OTHERHOSP^MR~7000999^^^TESTHOSP^MR~X-1^^^TESTHOSP^PI",
            "PV1|1|N",
            seg("PID", {1: "2", 3: "7000456^^^TESTHOSP^MR", 5: "Testpatient^Beta", 7: "19700101", 8: "M"}),
            "MRG|7000888^^^TESTHOSP^MR",
            "ZMG|1",
        ]
    )
    alpha, beta = map_hl7(text, mrn_authorities=SITE)
    assert (alpha.id, beta.id) == ("msg1-1", "msg1-2")
    assert fields_of(alpha) == expected(
        type="patient.merged",
        severity="notice",
        encounter={**NO_VISIT, "patient_class": "N"},
        links={"replaces": "TESTHOSP|7000999", "replaced_by": "TESTHOSP|7000123"},
    )
    assert fields_of(beta) == expected(
        type="patient.merged",
        severity="notice",
        patient={
            "mrn": {"value": "7000456", "authority": "TESTHOSP", "type": "MR"},
            "identifiers": [{"value": "7000456", "authority": "TESTHOSP", "type": "MR"}],
            "family": "Testpatient",
            "given": "Beta",
            "birth_date": "1970-01-01",
            "sex": "M",
        },
        thread_key="pat:TESTHOSP:7000456",
        links={"replaces": "TESTHOSP|7000888", "replaced_by": "TESTHOSP|7000456"},
    )
    # "{type}:{thread_key}:{occurred_at}:{links.replaces}:{digest}": each merge is keyed by the identity it replaces.
    assert alpha.dedup_key.split(":")[-2] == "TESTHOSP|7000999" and beta.dedup_key.split(":")[-2] == "TESTHOSP|7000888"


def test_two_records_merged_into_one_survivor_at_the_same_time_are_two_facts(map_one: Any) -> None:
    # Two A40s, each its own message, name the same survivor and the same EVN-2 time: only MRG-1 differs.
    def merge(control: str, prior: str) -> Any:
        text = "\n".join([msh("A40", "2.5.1"), "EVN|A40|20240201085500", PID_ALPHA, f"MRG|{prior}"])
        return map_one(text.replace("|CTL-A40|", f"|{control}|"), mrn_authorities=SITE)

    first, second = merge("C1", "7000999^^^TESTHOSP^MR"), merge("C2", "7000888^^^TESTHOSP^MR")
    assert first.links["replaced_by"] == second.links["replaced_by"] == "TESTHOSP|7000123"
    assert first.dedup_key != second.dedup_key
    assert merge("C3", "7000999^^^TESTHOSP^MR").dedup_key == first.dedup_key  # the first re-sent


@pytest.mark.parametrize(
    ("mrg1", "authorities", "replaces"),
    [
        # No MR: never the social security number; the site's authority, else an untyped identifier.
        ("123-45-6789^^^SSA^SS~7000999^^^TESTHOSP", (), "TESTHOSP|7000999"),
        ("123-45-6789^^^SSA^SS~7000999^^^TESTHOSP", SITE, "TESTHOSP|7000999"),
        ("P-1^^^TESTHOSP^PPN~7000999^^^TESTHOSP^PI", (), "TESTHOSP|7000999"),
        # Only sensitive identifiers: the merge names no prior identity (MRG-4 is empty too).
        ("123-45-6789^^^SSA^SS~D1234^^^DMV^DL", SITE, None),
    ],
)
def test_a40_never_names_a_social_security_or_passport_number_as_the_prior_identity(
    map_one: Any, mrg1: str, authorities: tuple[str, ...], replaces: str | None
) -> None:
    text = "\n".join([msh("A40", "2.5.1"), "EVN|A40|20240201085500", PID_ALPHA, f"MRG|{mrg1}"])
    event = map_one(text, mrn_authorities=authorities)
    assert event.links.get("replaces") == replaces


def test_a40_without_site_authorities_takes_the_first_mr_of_each(map_one: Any) -> None:
    text = "\n".join(
        [
            msh("A40", "2.6"),
            "EVN|A40|20240201085500",
            PID_ALPHA,
            "MRG|5550999^^^OTHERHOSP^MR~7000999^^^TESTHOSP^MR",
        ]
    )
    event = map_one(text)
    assert event.links == {"replaces": "OTHERHOSP|5550999", "replaced_by": "OTHERHOSP|5550001"}
    assert event.thread_key == "pat:OTHERHOSP:5550001"


def test_a40_in_23_without_authorities_names_bare_numbers(map_one: Any) -> None:
    # 2.3 feeds often send bare numbers: the MRN is scoped by the sender for the thread only.
    text = "\n".join(
        [
            msh("A40", "2.3", facility="TESTCLINIC"),
            "EVN|A40|20240201085500||01",
            seg("PID", {1: "1", 3: "1765431", 5: "Testpatient^Gamma^J", 7: "19700101", 8: "M"}),
            "MRG|1765475||||||",
        ]
    )
    event = map_one(text)
    assert fields_of(event) == expected(
        type="patient.merged",
        severity="notice",
        patient={
            "mrn": {"value": "1765431", "authority": None, "type": None},
            "identifiers": [{"value": "1765431", "authority": None, "type": None}],
            "family": "Testpatient",
            "given": "Gamma",
            "birth_date": "1970-01-01",
            "sex": "M",
        },
        thread_key="pat:TESTCLINIC:1765431",
        links={"replaces": "1765475", "replaced_by": "1765431"},
    )


def test_a40_with_empty_mrg1_falls_back_to_the_prior_external_id(map_one: Any) -> None:
    # 2.4: MRG-1 is "" and MRG-4 (prior patient ID, "external", deprecated) names the record.
    text = person_message("A40", "2.4", 'MRG|""|||EXT-77^^^OTHERHOSP')
    assert map_one(text, mrn_authorities=SITE).links == {
        "replaces": "OTHERHOSP|EXT-77",
        "replaced_by": "TESTHOSP|7000123",
    }


@pytest.mark.parametrize(
    ("trigger", "version"), [("A18", "2.3"), ("A30", "2.3"), ("A34", "2.4"), ("A36", "2.4"), ("A39", "2.5")]
)
def test_withdrawn_merge_triggers_merge_like_a40(map_one: Any, trigger: str, version: str) -> None:
    text = person_message(trigger, version, "MRG|7000999^^^TESTHOSP^MR")
    assert fields_of(map_one(text, mrn_authorities=SITE)) == expected(
        type="patient.merged",
        severity="notice",
        links={"replaces": "TESTHOSP|7000999", "replaced_by": "TESTHOSP|7000123"},
    )


def test_a41_merges_accounts_prior_account_into_the_patients_account(map_one: Any) -> None:
    # 2.8: MRG-1 empty, MRG-3 the prior account; PID-18 the surviving account.
    pid = PID_ALPHA + "|" * 10 + "ACC-77^^^TESTHOSP^AN"
    text = "\n".join([msh("A41", "2.8"), "EVN|A41|20240201085500", pid, "MRG|||ACC-70^^^TESTHOSP^AN"])
    event = map_one(text, mrn_authorities=SITE)
    assert fields_of(event) == expected(
        type="patient.merged",
        severity="notice",
        encounter={**NO_VISIT, "visit_number": "ACC-77"},
        thread_key="enc:TESTHOSP:ACC-77",
        links={"replaces": "TESTHOSP|ACC-70", "replaced_by": "TESTHOSP|ACC-77"},
    )


def test_a41_without_accounts_names_the_patient_records(map_one: Any) -> None:
    text = person_message("A41", "2.5.1", "MRG|7000999^^^TESTHOSP^MR")
    assert map_one(text, mrn_authorities=SITE).links == {
        "replaces": "TESTHOSP|7000999",
        "replaced_by": "TESTHOSP|7000123",
    }


def test_a42_merges_visits_prior_visit_into_the_visit(map_one: Any) -> None:
    # 2.6: MRG-5 prior visit number; the surviving visit is PV1-19.
    pv1 = seg("PV1", {1: "1", 2: "I", 3: "4E^412^B^TESTHOSP", 19: "V-1001^^^TESTHOSP^VN"})
    event = map_one(person_message("A42", "2.6", "MRG|7000123^^^TESTHOSP^MR||||V-0999^^^TESTHOSP^VN", pv1))
    assert fields_of(event) == expected(
        type="patient.merged",
        severity="notice",
        patient={**ALPHA, "mrn": {"value": "5550001", "authority": "OTHERHOSP", "type": "MR"}},
        encounter={
            **NO_VISIT,
            "visit_number": "V-1001",
            "patient_class": "I",
            "location": {"facility": "TESTHOSP", "unit": "4E", "room": "412", "bed": "B"},
        },
        thread_key="enc:TESTHOSP:V-1001",
        links={"replaces": "TESTHOSP|V-0999", "replaced_by": "TESTHOSP|V-1001"},
    )


@pytest.mark.parametrize(
    ("trigger", "version"),
    [
        ("A43", "2.5.1"),
        ("A44", "2.6"),
        ("A45", "2.7"),
        ("A46", "2.3"),
        ("A47", "2.8"),
        ("A48", "2.4"),
        ("A49", "2.5"),
        ("A50", "2.6"),
        ("A51", "2.7"),
    ],
)
def test_identifiers_accounts_or_visits_moved_or_changed_are_a_patient_update_notice(
    map_one: Any, trigger: str, version: str
) -> None:
    text = person_message(trigger, version, "MRG|7000999^^^TESTHOSP^MR")
    assert fields_of(map_one(text, mrn_authorities=SITE)) == expected(severity="notice")


def test_a45_moves_a_visit_to_this_patient_in_the_visits_thread(map_one: Any) -> None:
    # 2.5.1: MRG names the patient the visit came from; the PV1 is the visit that moved.
    pv1 = seg("PV1", {1: "1", 2: "O", 19: "V-3003^^^TESTHOSP^VN"})
    event = map_one(person_message("A45", "2.5.1", "MRG|7000999^^^TESTHOSP^MR||||V-3003", pv1), mrn_authorities=SITE)
    assert (event.type, event.severity, event.lifecycle, event.links) == ("patient.updated", "notice", "new", {})
    assert (event.encounter.visit_number, event.thread_key) == ("V-3003", "enc:TESTHOSP:V-3003")
