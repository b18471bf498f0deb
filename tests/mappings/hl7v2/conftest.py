"""Shared fixtures of the HL7 v2 golden tests (one module per mapping file in this folder).

Golden tests write a SYNTHETIC message in the test, map it with the bundled mappings
and compare the event(s) field by field. Helpers are fixtures (importlib mode: a test
module cannot import this conftest):

* ``mapper``: the bundled mappings, loaded once per session (``Mapper.load()``);
* ``map_hl7``: ``map_hl7(text, *, mrn_authorities=(), critical_flags=None, message_id="msg1")``
  parses ``text`` (segments separated by newlines or CR; leading blanks of each line
  are dropped, so a message can be written as an indented triple-quoted string) and
  returns the list of ClinicalEvents the mappings make of it;
* ``map_one``: the same, asserting exactly one event and returning it;
* ``parse_hl7``: just the parsed ``Message`` of such a text;
* ``received_at``: the receipt time every mapped event gets (the fallback of occurred_at).

Every name and number in the golden tests is invented (Testpatient^Alpha, TESTHOSP).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol

import pytest

from bridge.events import ClinicalEvent
from bridge.hl7.reader import Message, parse
from bridge.mapping import Mapper, MappingOptions

#: When every golden message is "received"; occurred_at falls back to it when no timestamp parses.
RECEIVED_AT = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
#: The event source every golden event carries.
SOURCE = "urn:ehr-bridge:hl7v2:golden"


class MapHL7(Protocol):
    def __call__(
        self,
        text: str,
        *,
        mrn_authorities: Iterable[str] = (),
        critical_flags: Iterable[str] | None = None,
        message_id: str = "msg1",
    ) -> list[ClinicalEvent]: ...


class MapOne(Protocol):
    def __call__(
        self,
        text: str,
        *,
        mrn_authorities: Iterable[str] = (),
        critical_flags: Iterable[str] | None = None,
        message_id: str = "msg1",
    ) -> ClinicalEvent: ...


def _message(text: str) -> Message:
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return parse(("\r".join(line for line in lines if line) + "\r").encode())


@pytest.fixture(scope="session")
def mapper() -> Mapper:
    """The bundled HL7 v2 mappings with default options."""
    return Mapper.load()


@pytest.fixture(scope="session")
def received_at() -> datetime:
    return RECEIVED_AT


@pytest.fixture(scope="session")
def parse_hl7() -> Callable[[str], Message]:
    """Parse a message written as text (newline or CR between segments, indentation ignored)."""
    return _message


@pytest.fixture(scope="session")
def map_hl7(mapper: Mapper) -> MapHL7:
    """Map a message written as text with the bundled mappings; site options build (and cache) another Mapper."""
    cache: dict[tuple[tuple[str, ...], frozenset[str] | None], Mapper] = {}

    def with_options(mrn_authorities: tuple[str, ...], critical: frozenset[str] | None) -> Mapper:
        if not mrn_authorities and critical is None:
            return mapper
        key = (mrn_authorities, critical)
        if key not in cache:
            options = MappingOptions(mrn_authorities=mrn_authorities)
            if critical is not None:
                options = MappingOptions(mrn_authorities=mrn_authorities, critical_flags=critical)
            cache[key] = Mapper.load(options)
        return cache[key]

    def run(
        text: str,
        *,
        mrn_authorities: Iterable[str] = (),
        critical_flags: Iterable[str] | None = None,
        message_id: str = "msg1",
    ) -> list[ClinicalEvent]:
        critical = frozenset(critical_flags) if critical_flags is not None else None
        message = _message(text)
        return with_options(tuple(mrn_authorities), critical).map_hl7(
            message,
            message_id=message_id,
            source=SOURCE,
            received_at=RECEIVED_AT,
            origin={"listener": "golden", "control_id": message.control_id},
        )

    return run


@pytest.fixture(scope="session")
def map_one(map_hl7: MapHL7) -> MapOne:
    """Like ``map_hl7``, for a message that must make exactly one event."""

    def run(
        text: str,
        *,
        mrn_authorities: Iterable[str] = (),
        critical_flags: Iterable[str] | None = None,
        message_id: str = "msg1",
    ) -> ClinicalEvent:
        events = map_hl7(text, mrn_authorities=mrn_authorities, critical_flags=critical_flags, message_id=message_id)
        assert len(events) == 1, [(e.type, e.subject.key) for e in events]
        return events[0]

    return run
