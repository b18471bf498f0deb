"""assemble_event: its digests are SHA-256 of the repr of the plain content, as stored events expect."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.assembly import Facts, Found, Observation, Verdict, assemble_event, digest
from bridge.events import EventType, Lifecycle, Severity

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _found(subject_kind: str | None, observations: list[Observation]) -> Found:
    texts = {
        "patient.family": "Testpatient",
        "patient.given": "Alpha",
        "encounter.visit_number": "V1",
        "subject.key": "LAB:123",
        "subject.code": "GLU",
        "subject.text": "Glucose 'fasting'",
        "subject.detail": "line\nbreak",
    }
    return Found(
        texts=texts,
        mrn={"value": "M1", "authority": "HOSP", "type": "MR"},
        identifiers=[
            {"value": "M1", "authority": "HOSP", "type": "MR"},
            {"value": None, "authority": "X", "type": None},
        ],
        location={"facility": "F", "unit": "ICU", "room": None, "bed": "2"},
        prior_location=None,
        attending={"id": "D1", "family": "Testdoctor", "given": None, "prefix": None},
        subject_kind=subject_kind,
        observations=observations,
        occurred_at=None,
    )


@pytest.mark.parametrize("subject_kind", ["result", None])
def test_digests_are_those_of_the_plain_content(subject_kind: str | None) -> None:
    obs = [Observation({"code": "GLU", "value": "12.5", "status": "F"}, ("HH",), True, True)]
    found = _found(subject_kind, obs)
    facts: Facts = {}
    event = assemble_event(
        found,
        Verdict(EventType.RESULT_FINAL, Severity.CRITICAL, Lifecycle.NEW),
        event_id="e1",
        message_id="m1",
        source="urn:test",
        origin={},
        received_at=RECEIVED,
        facts=facts,
        thread_key=lambda: None,
        dedup_key=lambda: None,
        links=lambda: {},
    )
    plain = event.model_dump(mode="python")
    patient: dict[str, Any] = {
        "mrn": {"value": "M1", "authority": "HOSP", "type": "MR"},
        "identifiers": [{"value": "M1", "authority": "HOSP", "type": "MR"}],
        "family": "Testpatient",
        "given": "Alpha",
        "birth_date": None,
        "sex": None,
    }
    encounter: dict[str, Any] = {
        "visit_number": "V1",
        "patient_class": None,
        "location": {"facility": "F", "unit": "ICU", "room": None, "bed": "2"},
        "prior_location": None,
        "attending": {"id": "D1", "family": "Testdoctor", "given": None, "prefix": None},
        "admitted_at": None,
        "discharged_at": None,
    }
    subject: dict[str, Any] | None = None
    if subject_kind is not None:
        subject = {
            "kind": "result",
            "key": "LAB:123",
            "code": "GLU",
            "text": "Glucose 'fasting'",
            "status": None,
            "observations": [o.plain() for o in obs],
            "detail": "line\nbreak",
        }
        assert plain["subject"]["detail"] == "line\nbreak"
    expected = digest({"type": "result.final", "patient": patient, "encounter": encounter, "subject": subject})
    assert facts["digest"] == expected
    assert facts["subject_digest"] == (digest(subject) if subject is not None else None)
