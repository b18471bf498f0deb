"""Assembly of a ClinicalEvent from what a mapper read, shared by the HL7 v2 and FHIR mappers.

Each mapper extracts the facts of one event in its own format (HL7 paths,
FHIRPath); from there on both build the same patient, encounter and subject
trees, the same clinical digest, the same facts for key and link templates and
the same event, here, so an HL7 message and a FHIR resource that say the same
thing make the same event and digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity

__all__ = [
    "EVENT_FACTS",
    "LINK_NAMES",
    "Facts",
    "Found",
    "Observation",
    "Parts",
    "Verdict",
    "assemble_event",
    "digest",
]

#: The parts of a composite value (identifier, person, location) by name.
Parts = dict[str, "str | None"]
#: The facts of the event being built, by placeholder name, as key and link templates read them.
Facts = dict[str, "str | None"]

#: The links of the catalogue (mappings/catalogue.yaml), as facts ``links.<name>`` for dedup key templates.
LINK_NAMES = ("cancels", "corrects", "replaces", "replaced_by")

#: Placeholders of key and link templates that are facts of the event being built. ``digest``
#: covers everything extracted (patient, encounter, subject); ``subject_digest`` only the subject
#: (what a result or an order says), so the same report re-sent from another bed digests the same.
#: ``links.*`` are the links' values, known to dedup key templates only (they are rendered after
#: the thread key and the links).
EVENT_FACTS = frozenset(
    {
        "type",
        "severity",
        "occurred_at",
        "digest",
        "subject_digest",
        *(f"links.{name}" for name in LINK_NAMES),
        "thread_key",
        "subject.kind",
        "subject.key",
        "subject.code",
        "patient.mrn.value",
        "patient.mrn.authority",
        "patient.mrn.type",
        "encounter.visit_number",
        "encounter.patient_class",
        "encounter.location.facility",
        "encounter.location.unit",
    }
)


def digest(content: dict[str, Any]) -> str:
    """A short SHA-256 of plain data (dicts, lists, strings); stored with events, so it must never change."""
    # repr of plain dicts, lists and strings built in a fixed order is canonical and several
    # times cheaper than sorted JSON; the digest only has to be stable within a deployment.
    return _sha16(repr(content))


def _sha16(text: str) -> str:
    """The first 16 hex digits of SHA-256 of ``text`` (UTF-8): what :func:`digest` makes of a repr."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Observation:
    """One observation line: its texts by name (code, text, value, units, reference_range, status) and flags."""

    values: Mapping[str, str | None]
    flags: tuple[str, ...]
    critical: bool
    abnormal: bool

    @property
    def status(self) -> str | None:
        return self.values.get("status")

    def plain(self) -> dict[str, Any]:
        """The line as it stands in the event's subject (and in the digest: the key order is fixed)."""
        return {
            "code": self.values.get("code"),
            "text": self.values.get("text"),
            "value": self.values.get("value"),
            "units": self.values.get("units"),
            "reference_range": self.values.get("reference_range"),
            "flags": list(self.flags),
            "status": self.values.get("status"),
            "critical": self.critical,
        }


@dataclass(frozen=True, slots=True)
class Found:
    """What a mapper extracted for one event, in the event model's terms."""

    #: ``patient.*``, ``encounter.*`` and ``subject.*`` texts by dotted name; a missing one is None.
    texts: Mapping[str, str | None]
    mrn: Parts | None
    identifiers: list[Parts]
    #: The location as it stands in the event (the mapper decides which empty parts it keeps).
    location: Parts
    prior_location: Parts | None
    attending: Parts | None
    subject_kind: str | None
    observations: Sequence[Observation]
    #: None when the content has no usable time: the event takes the time it was received.
    occurred_at: datetime | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the first fitting rule of the mapping file made of the content."""

    type: EventType
    severity: Severity
    lifecycle: Lifecycle


def assemble_event(
    found: Found,
    verdict: Verdict,
    *,
    event_id: str,
    message_id: str,
    source: str,
    origin: dict[str, str],
    received_at: datetime,
    facts: Facts,
    thread_key: Callable[[], str | None],
    dedup_key: Callable[[], str | None],
    links: Callable[[], dict[str, str]],
) -> ClinicalEvent:
    """The event of one unit of content.

    ``facts`` is the dict the mapper's key and link templates read: it is filled
    here before ``thread_key`` is rendered; ``thread_key`` is added to it before
    ``links`` are rendered, and the links (``links.<name>``) before ``dedup_key``.
    """
    t = found.texts
    mrn = found.mrn
    patient: dict[str, Any] = {
        # Identifier.value is required: a CX or Identifier with only an authority identifies nothing.
        "mrn": mrn if mrn is not None and mrn.get("value") is not None else None,
        "identifiers": [i for i in found.identifiers if i.get("value") is not None],
        "family": t.get("patient.family"),
        "given": t.get("patient.given"),
        "birth_date": t.get("patient.birth_date"),
        "sex": t.get("patient.sex"),
    }
    encounter: dict[str, Any] = {
        "visit_number": t.get("encounter.visit_number"),
        "patient_class": t.get("encounter.patient_class"),
        "location": found.location,
        "prior_location": found.prior_location,
        "attending": found.attending,
        "admitted_at": t.get("encounter.admitted_at"),
        "discharged_at": t.get("encounter.discharged_at"),
    }
    subject: dict[str, Any] | None = None
    if found.subject_kind is not None:
        subject = {
            "kind": found.subject_kind,
            "key": t.get("subject.key"),
            "code": t.get("subject.code"),
            "text": t.get("subject.text"),
            "status": t.get("subject.status"),
            "observations": [o.plain() for o in found.observations],
        }
        # Added in catalogue v1: present only when set, so digests of earlier events stay as they were.
        for key in ("start", "end", "detail"):
            if (value := t.get(f"subject.{key}")) is not None:
                subject[key] = value
    fallback_time = received_at if received_at.tzinfo is not None else received_at.replace(tzinfo=UTC)
    occurred = found.occurred_at or fallback_time
    event_type = verdict.type.value
    # The digest covers the clinical content only (not control ID, times or origin), so the same
    # fact re-sent under a new control ID digests the same, and a changed result does not.
    # repr(subject) is the bulk of both digests (an ORU's observations): made once, it serves both,
    # and the whole is spelt exactly as repr() of the four-key dict would spell it (same digests).
    subject_repr = repr(subject)
    clinical = _sha16(
        f"{{'type': {event_type!r}, 'patient': {patient!r}, 'encounter': {encounter!r}, 'subject': {subject_repr}}}"
    )
    mrn_fields: Parts = patient["mrn"] or {}
    facts.clear()
    facts.update(
        {
            "type": event_type,
            "severity": verdict.severity.value,
            "occurred_at": occurred.isoformat(),
            "digest": clinical,
            # The subject alone (kind, key, code, text, status, observations, ...): results and orders dedup on it.
            "subject_digest": _sha16(subject_repr) if subject is not None else None,
            "subject.kind": found.subject_kind,
            "subject.key": t.get("subject.key"),
            "subject.code": t.get("subject.code"),
            "patient.mrn.value": mrn_fields.get("value"),
            "patient.mrn.authority": mrn_fields.get("authority"),
            "patient.mrn.type": mrn_fields.get("type"),
            "encounter.visit_number": encounter["visit_number"],
            "encounter.patient_class": encounter["patient_class"],
            "encounter.location.facility": found.location.get("facility"),
            "encounter.location.unit": found.location.get("unit"),
        }
    )
    # Without a resolvable template the keys fall back to this message only: never a false match.
    thread = thread_key() or f"msg:{message_id}"
    facts["thread_key"] = thread
    event_links = links()
    facts.update({f"links.{name}": event_links.get(name) for name in LINK_NAMES})
    dedup = dedup_key() or f"{event_type}:{event_id}"
    # One validation of the whole plain tree runs in pydantic-core; building the nested
    # models one by one (even with model_construct) costs several times more.
    return ClinicalEvent.model_validate(
        {
            "id": event_id,
            "type": verdict.type,
            "severity": verdict.severity,
            "occurred_at": occurred,
            "source": source,
            "patient": patient,
            "encounter": encounter,
            "subject": subject,
            "thread_key": thread,
            "dedup_key": dedup,
            "lifecycle": verdict.lifecycle,
            "links": event_links,
            "origin": dict(origin),
        }
    )
