"""Shared fixtures: synthetic clinical events and journal entries, an opened SQLite store, and the check that
every event the mappers build fits the JSON Schema of its catalogue type.

Every value here is invented (no real patient, no real facility), so tests can
print or snapshot what they build without disclosing anything.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

import bridge.fhir.mapping
import bridge.mapping
from bridge.assembly import assemble_event
from bridge.catalogue import EventSchemaError, validate_event
from bridge.events import (
    ClinicalEvent,
    Encounter,
    EventType,
    Identifier,
    Location,
    Patient,
    Severity,
    Subject,
)
from bridge.store import JournalEntry, MessageStatus
from bridge.store.sqlite import SQLiteStore

#: The one synthetic patient every default event is about.
SYNTHETIC_PATIENT = Patient(
    mrn=Identifier(value="MRN-TEST-0001", authority="TESTHOSP"),
    family="Testpatient",
    given="Alpha",
    birth_date="1970-01-01",
    sex="F",
)

#: The default encounter: facility TESTHOSP, unit ICU, inpatient.
SYNTHETIC_ENCOUNTER = Encounter(
    visit_number="V-TEST-0001",
    patient_class="I",
    location=Location(facility="TESTHOSP", unit="ICU", room="101", bed="A"),
)


@pytest.fixture
def make_event() -> Callable[..., ClinicalEvent]:
    """A factory of valid ``ClinicalEvent``s; keyword arguments override any field.

    Each call gets a fresh ``id`` and ``dedup_key`` (so events are neither
    duplicates nor id clashes unless a test asks for it); the ``thread_key``
    is the same for every call, as for events of one encounter.
    """
    counter = itertools.count(1)

    def factory(**overrides: Any) -> ClinicalEvent:
        n = next(counter)
        fields: dict[str, Any] = {
            "id": f"evt-{n:04d}",
            "type": EventType.ENCOUNTER_ADMITTED,
            "severity": Severity.NOTICE,
            "occurred_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            "source": "urn:ehr-bridge:test",
            "patient": SYNTHETIC_PATIENT,
            "encounter": SYNTHETIC_ENCOUNTER,
            "subject": Subject(kind="encounter", key="V-TEST-0001"),
            "thread_key": "TESTHOSP|V-TEST-0001",
            "dedup_key": f"dedup-{n:04d}",
        }
        fields.update(overrides)
        return ClinicalEvent(**fields)

    return factory


@pytest.fixture
def make_entry() -> Callable[..., JournalEntry]:
    """A factory of ACCEPTED journal entries received now; keyword arguments override any field.

    Each call gets a fresh ``id`` and MSH-10 ``control_id``, so two entries are
    duplicates only when a test gives them the same control id.
    """
    counter = itertools.count(1)

    def factory(**overrides: Any) -> JournalEntry:
        n = next(counter)
        fields: dict[str, Any] = {
            "id": f"msg-{n:04d}",
            "listener": "test",
            "transport": "mllp",
            "received_at": time.time(),
            "raw": b"MSH|^~\\&|TESTAPP|TESTHOSP|||20250102030405||ADT^A01|CTRL|P|2.5\r",
            "status": MessageStatus.ACCEPTED,
            "ack_code": "AA",
            "control_id": f"CTRL{n:04d}",
            "sending_application": "TESTAPP",
            "sending_facility": "TESTHOSP",
            "message_type": "ADT^A01",
            "peer": "127.0.0.1:40000",
        }
        fields.update(overrides)
        return JournalEntry(**fields)

    return factory


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where the test's SQLite database lives (WAL needs a real file)."""
    return tmp_path / "bridge.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SQLiteStore]:
    """An opened ``SQLiteStore`` on a fresh file, closed after the test."""
    s = SQLiteStore(db_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "off_catalogue(reason): the test's own synthetic mapping makes events outside the catalogue on purpose"
        " (a mapping-engine test); they are not validated against the catalogue's JSON Schemas",
    )


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """Undo what a CLI command run in-process did to logging (``configure`` sets global levels).

    Regression: ``simulate`` sets the level to error; later tests capturing warnings saw nothing.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def events_fit_the_catalogue(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every event the HL7 v2 and FHIR mappers build in a test is validated against its type's JSON Schema.

    ``bridge.assembly.assemble_event`` is where both mappers build events; it is
    wrapped in both mapper modules. A misfit does not raise inside the mapper
    (where a boundary could turn it into a NAK and hide it): it is collected, and
    the test fails at teardown naming each event, type and JSON path. Events a
    test builds itself as ``ClinicalEvent(...)`` are not the bridge's and are not checked,
    nor are those of a test marked ``off_catalogue`` (an engine test whose synthetic
    rule pairs, say, a type with a lifecycle the catalogue does not allow).
    """
    misfits: list[str] = []
    if request.node.get_closest_marker("off_catalogue") is not None:
        yield misfits
        return

    def checked(*args: Any, **kwargs: Any) -> ClinicalEvent:
        event = assemble_event(*args, **kwargs)
        try:
            validate_event(event)
        except EventSchemaError as exc:
            misfits.append(str(exc))  # list.append is atomic: mappers running in threads are fine
        return event

    monkeypatch.setattr(bridge.mapping, "assemble_event", checked)
    monkeypatch.setattr(bridge.fhir.mapping, "assemble_event", checked)
    yield misfits
    if misfits:
        shown = "\n  ".join(misfits[:20])
        more = f"\n  ... and {len(misfits) - 20} more" if len(misfits) > 20 else ""
        pytest.fail(
            f"{len(misfits)} mapped event(s) do not fit their catalogue schema (mappings/catalogue.yaml):"
            f"\n  {shown}{more}",
            pytrace=False,
        )
