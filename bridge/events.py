"""The canonical clinical collaboration event and its CloudEvents 1.0 envelope.

Every inbound format is mapped to :class:`ClinicalEvent`; every outbound adapter
renders from it. Values of the enums end up in the database, the logs and the
config, so they are stable strings.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SCHEMA_VERSION",
    "ClinicalEvent",
    "Encounter",
    "EventType",
    "Identifier",
    "Lifecycle",
    "Location",
    "Observation",
    "Patient",
    "Person",
    "Severity",
    "Subject",
    "link_types",
    "type_matches",
]

#: Version of the event schema; bumped on any incompatible change of ClinicalEvent.
SCHEMA_VERSION = "1"


class EventType(StrEnum):
    """The event catalogue. Names are ``noun.past_participle``.

    ``mappings/catalogue.yaml`` is the one source of what each type means, carries, edits or
    strikes and which messages give it (docs/events.md); a test keeps this enum equal to it.
    """

    #: A person is known to the hospital, no visit yet.
    PATIENT_REGISTERED = "patient.registered"
    #: A person's demographics or identifiers changed outside a visit.
    PATIENT_UPDATED = "patient.updated"
    #: Two identities of one person merged; links name both.
    PATIENT_MERGED = "patient.merged"
    #: A bed or visit is planned before the patient arrives.
    ENCOUNTER_PREADMITTED = "encounter.preadmitted"
    #: An inpatient was admitted.
    ENCOUNTER_ADMITTED = "encounter.admitted"
    #: The patient arrived for a visit (outpatient, emergency).
    ENCOUNTER_ARRIVED = "encounter.arrived"
    #: The patient moved (a reply when it is only tracking).
    ENCOUNTER_TRANSFERRED = "encounter.transferred"
    #: A transfer is planned (bed management).
    ENCOUNTER_TRANSFER_PENDING = "encounter.transfer_pending"
    #: Discharged; the visit ended.
    ENCOUNTER_DISCHARGED = "encounter.discharged"
    #: A discharge is planned (bed management).
    ENCOUNTER_DISCHARGE_PENDING = "encounter.discharge_pending"
    #: An admission, arrival, transfer, discharge, leave or plan was cancelled; strikes its post.
    ENCOUNTER_CANCELLED = "encounter.cancelled"
    #: The patient left on leave (a reply when they return).
    ENCOUNTER_LEAVE_OF_ABSENCE = "encounter.leave_of_absence"
    #: Patient or visit details changed (high volume; usually not routed).
    ENCOUNTER_UPDATED = "encounter.updated"
    #: A result with a critical flag: needs a human now.
    RESULT_CRITICAL = "result.critical"
    #: Final results.
    RESULT_FINAL = "result.final"
    #: Results not final yet.
    RESULT_PRELIMINARY = "result.preliminary"
    #: A correction of released results; edits the result's post.
    RESULT_CORRECTED = "result.corrected"
    #: Results withdrawn (posted in error, wrong patient, test cancelled); strikes the result's post.
    RESULT_RETRACTED = "result.retracted"
    #: An order was placed.
    ORDER_PLACED = "order.placed"
    #: An order changed (edits its post) or moved on (a reply).
    ORDER_CHANGED = "order.changed"
    #: An order was cancelled or discontinued; strikes its post.
    ORDER_CANCELLED = "order.cancelled"
    #: An order is done; a reply in the thread.
    ORDER_COMPLETED = "order.completed"
    #: An appointment was booked.
    APPOINTMENT_BOOKED = "appointment.booked"
    #: An appointment got a new time; edits the booked post.
    APPOINTMENT_RESCHEDULED = "appointment.rescheduled"
    #: Other details of an appointment changed; edits the booked post.
    APPOINTMENT_MODIFIED = "appointment.modified"
    #: An appointment was cancelled; strikes the booked post.
    APPOINTMENT_CANCELLED = "appointment.cancelled"
    #: The patient did not come; a reply in the thread.
    APPOINTMENT_NOSHOW = "appointment.noshow"
    #: A clinical document is available (or its status changed: edits its post).
    DOCUMENT_AVAILABLE = "document.available"
    #: A document was amended, edited or replaced; edits the post of the document it amends.
    DOCUMENT_AMENDED = "document.amended"
    #: A document was withdrawn; strikes its post.
    DOCUMENT_CANCELLED = "document.cancelled"
    #: A medication was ordered.
    MEDICATION_ORDERED = "medication.ordered"
    #: A FHIR subscription went silent beyond twice its heartbeat period: events may be missed.
    SUBSCRIPTION_STALE = "bridge.subscription.stale"
    #: The FHIR server reports a subscription in error: it must be reactivated.
    SUBSCRIPTION_ERROR = "bridge.subscription.error"


class Severity(StrEnum):
    """How urgent an event is. Ordered: ``info < notice < warning < critical``."""

    #: Routine information, fine for a digest.
    INFO = "info"
    #: Worth seeing today (admissions, discharges, final results).
    NOTICE = "notice"
    #: Abnormal, should be seen soon.
    WARNING = "warning"
    #: Needs a human now (critical results); breaks through quiet hours.
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    def at_least(self, other: Severity) -> bool:
        return self.rank >= other.rank


_SEVERITY_RANK = {Severity.INFO: 0, Severity.NOTICE: 1, Severity.WARNING: 2, Severity.CRITICAL: 3}


class Lifecycle(StrEnum):
    """What an event does to what was posted before in its thread."""

    #: A new fact: a new post.
    NEW = "new"
    #: More information on the same subject: a reply in the thread.
    UPDATE = "update"
    #: Replaces an earlier post (``links.corrects``): the post is edited.
    CORRECT = "correct"
    #: Retracts an earlier post (``links.cancels``): the post is struck.
    CANCEL = "cancel"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Identifier(_Model):
    """An identifier with its assigning authority (HL7 CX, FHIR Identifier)."""

    value: str
    authority: str | None = None
    type: str | None = None


class Person(_Model):
    """A clinician (HL7 XCN): id plus name parts."""

    id: str | None = None
    family: str | None = None
    given: str | None = None
    prefix: str | None = None

    @property
    def display(self) -> str:
        name = " ".join(p for p in (self.prefix, self.given, self.family) if p)
        return name or (self.id or "")


class Patient(_Model):
    """The patient. Every field here is PHI; channels see them according to their PHI level."""

    mrn: Identifier | None = None
    identifiers: tuple[Identifier, ...] = ()
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None
    sex: str | None = None


class Location(_Model):
    """An HL7 PL: from general to specific, facility → unit (point of care) → room → bed."""

    facility: str | None = None
    unit: str | None = None
    room: str | None = None
    bed: str | None = None

    @property
    def display(self) -> str:
        return "/".join(p for p in (self.facility, self.unit, self.room, self.bed) if p)


class Encounter(_Model):
    """The visit: number, class (PV1-2), location (PV1-3), attending (PV1-7)."""

    visit_number: str | None = None
    patient_class: str | None = None
    location: Location = Location()
    prior_location: Location | None = None
    attending: Person | None = None
    admitted_at: str | None = None
    discharged_at: str | None = None


class Observation(_Model):
    """One result line (OBX)."""

    code: str | None = None
    text: str | None = None
    value: str | None = None
    units: str | None = None
    reference_range: str | None = None
    flags: tuple[str, ...] = ()
    status: str | None = None
    critical: bool = False


class Subject(_Model):
    """What the event is about: a result report, an order, an appointment, a document, the encounter itself.

    ``key`` identifies the subject across events (e.g. the filler order number
    of a report), so a correction or cancellation can find the original post.
    ``kind`` is one of encounter, patient, result, order, medication,
    appointment, document.
    """

    kind: str
    key: str | None = None
    code: str | None = None
    text: str | None = None
    status: str | None = None
    #: When it is planned to start and end (appointments): ISO 8601, naive is the sender's local time.
    start: str | None = None
    end: str | None = None
    #: One short qualifier a clinician needs beside the name: dose and route of a medication, a document's title.
    detail: str | None = None
    observations: tuple[Observation, ...] = ()


class ClinicalEvent(_Model):
    """The canonical, versioned clinical collaboration event."""

    id: str
    type: EventType
    severity: Severity = Severity.INFO
    occurred_at: datetime
    source: str
    patient: Patient = Patient()
    encounter: Encounter = Encounter()
    subject: Subject | None = None
    thread_key: str
    dedup_key: str
    lifecycle: Lifecycle = Lifecycle.NEW
    links: dict[str, str] = Field(default_factory=dict)
    #: Identifiers of where the event came from (control ID, listener); never content.
    origin: dict[str, str] = Field(default_factory=dict)
    schema_version: str = SCHEMA_VERSION

    def to_cloudevent(self) -> dict[str, Any]:
        """The CloudEvents 1.0 JSON envelope (structured content mode)."""
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": f"org.ehr-bridge.{self.type.value}",
            "time": self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "subject": self.thread_key,
            "datacontenttype": "application/json",
            "dataschema": f"urn:ehr-bridge:clinical-event:v{self.schema_version}",
            "data": self.model_dump(mode="json"),
        }


_EVENT_TYPE_VALUES = frozenset(t.value for t in EventType)


def link_types(value: str) -> list[str] | None:
    """The event types a link value names (``"encounter.admitted,encounter.arrived"``), or None.

    A link names either event types, comma-separated, or anything else (a subject key, an
    identity): only a value made of event types alone is the first kind.
    """
    names = [part.strip() for part in value.split(",")]
    return names if all(n in _EVENT_TYPE_VALUES for n in names) else None


def type_matches(event_type: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """True when ``event_type`` matches one of the glob ``patterns`` (``result.*``)."""
    return any(fnmatch.fnmatchcase(event_type, p) for p in patterns)
