"""The bundled mappings against the shared corpus of third-party HL7 v2 files.

Skipped when ``../shared/corpus`` is not checked out next to the repository.
Messages are keyed on MSH-9, never on file names (some names do not match the
content). Nothing here prints message content: the corpus holds realistic names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.errors import ParseError
from bridge.events import ClinicalEvent
from bridge.hl7.reader import Message, parse, split_messages
from bridge.mapping import Mapper

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "hl7v2"
BAD_INPUTS = "bad-inputs"

#: ORC-1 order controls (Table 0119) the bundled orders.yaml and pharmacy.yaml turn into an event
#: (placed, cancelled, status changed, changed, replaced, held, released); other controls
#: (OK accepted, UA unable to accept, RE observations to follow, ...) are mapped to nothing on purpose.
ORDER_CONTROLS_WITH_EVENTS = frozenset(
    {"NW", "RO", "CA", "OC", "CR", "DC", "OD", "DR", "SC", "XO", "XX", "XR", "RP", "RU", "RQ"}
    | {"HD", "OH", "HR", "RL", "OE", "OR"}
)
#: Message types whose events are one per ORC (orders.yaml, pharmacy.yaml), and one per OBR (results).
ORDER_MESSAGES = frozenset({"ORM", "OML", "OMG", "OMI", "OMD", "RDE"})
RESULT_MESSAGES = frozenset({"ORU", "OUL"})

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not checked out")


def corpus_files(*, bad: bool) -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = [
        p
        for p in sorted(CORPUS.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.tsv" and not p.name.startswith("LICENSE")
    ]
    return [p for p in files if (BAD_INPUTS in p.parts) is bad]


def messages(path: Path) -> list[Message]:
    parsed: list[Message] = []
    for raw in split_messages(path.read_bytes()):
        try:
            parsed.append(parse(raw))
        except ParseError:
            continue  # not well-formed: the reader's tests cover the rejection
    return parsed


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper.load()


def map_message(mapper: Mapper, message: Message, index: int) -> int:
    events = mapper.map_hl7(
        message,
        message_id=f"corpus-{index}",
        source="urn:ehr-bridge:hl7v2:corpus",
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
        origin={"listener": "corpus"},
    )
    for n, event in enumerate(events, start=1):
        assert event.id == f"corpus-{index}-{n}"
        assert event.thread_key and event.dedup_key
    return len(events)


def expects_events(message: Message) -> bool:
    if message.message_code in ORDER_MESSAGES:
        controls = {seg.get_rep(1).strip() for seg in message.segments_named("ORC")}
        return not controls.isdisjoint(ORDER_CONTROLS_WITH_EVENTS)
    if message.message_code in RESULT_MESSAGES:
        return bool(message.segments_named("OBR"))
    return True


@pytest.mark.parametrize("path", corpus_files(bad=False), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_messages_of_mapped_types_yield_events_and_others_none(mapper: Mapper, path: Path) -> None:
    for index, message in enumerate(messages(path)):
        count = map_message(mapper, message, index)
        where = f"message {index} ({message.message_code}^{message.trigger})"
        if not mapper.matches(message):
            assert count == 0, where
        elif expects_events(message):
            assert count >= 1, where
        else:
            assert count == 0, where


def from_elsewhere(raw: bytes) -> bytes:
    """The same message with another sending facility (MSH-4); the rest byte for byte."""
    end = min((i for i in (raw.find(b"\r"), raw.find(b"\n")) if i >= 0), default=len(raw))
    separator = raw[3:4]
    fields = raw[:end].split(separator)
    if len(fields) > 3:
        fields[3] = b"ELSEWHERE"
    return separator.join(fields) + raw[end:]


def events_of(mapper: Mapper, raw: bytes) -> list[ClinicalEvent]:
    try:
        message = parse(raw)
    except ParseError:
        return []
    return mapper.map_hl7(
        message,
        message_id="corpus",
        source="urn:ehr-bridge:hl7v2:corpus",
        received_at=datetime(2024, 1, 1, tzinfo=UTC),
        origin={"listener": "corpus"},
    )


@pytest.mark.parametrize("path", corpus_files(bad=False), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_visit_threads_do_not_depend_on_the_sending_facility(mapper: Mapper, path: Path) -> None:
    # A lab and the ADT system send the same visit from two facilities; only the visit's authority scopes it.
    for index, raw in enumerate(split_messages(path.read_bytes())):
        here, there = events_of(mapper, raw), events_of(mapper, from_elsewhere(raw))
        assert len(here) == len(there), f"message {index}"
        for a, b in zip(here, there, strict=True):
            if a.encounter.visit_number is not None:
                assert a.thread_key.startswith("enc:"), f"message {index}"
                assert a.thread_key == b.thread_key, f"message {index}"


def test_corpus_covers_every_mapped_family(mapper: Mapper) -> None:
    seen = {m.message_code for path in corpus_files(bad=False) for m in messages(path) if mapper.matches(m)}
    assert seen == {"ADT", "ORU", "ORM", "OML", "SIU", "MDM", "OUL", "OMG", "OMD", "RDE"}


@pytest.mark.parametrize("path", corpus_files(bad=True), ids=lambda p: p.name[:48])
def test_fuzzed_inputs_that_parse_map_without_raising(mapper: Mapper, path: Path) -> None:
    for index, message in enumerate(messages(path)):
        map_message(mapper, message, index)


#: Inside an order of these messages, a PID, PV1, PV2 or AL1 opens the order's prior results (oml.yaml).
PRIOR_RESULT_OPENERS = frozenset({"PID", "PV1", "PV2", "AL1"})


@pytest.mark.parametrize("name", ["OML-O21-03.hl7", "OMG-O19-01.hl7", "OMG-O19-02.hl7"])
def test_corpus_prior_results_inside_an_order_make_no_events(mapper: Mapper, name: str) -> None:
    path = CORPUS / "microsoft-fhir-converter" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in the corpus")
    (message,) = messages(path)
    segments = [seg.name for seg in message.segments]
    first_order = segments.index("ORC")
    prior = next(i for i in range(first_order, len(segments)) if segments[i] in PRIOR_RESULT_OPENERS)
    events = events_of(mapper, path.read_bytes())
    # One event per ORC before the prior results, none for the earlier orders after them (OML-O21-03
    # and OMG-O19-02 carry an old cancellation there: no order of this message was cancelled).
    assert len(events) == segments[first_order:prior].count("ORC") >= 1
    assert "order.cancelled" not in {e.type.value for e in events}
    # The prior results' visits are not the patient's visit.
    patient_visit = message.segments_named("PV1")[0].get_rep(19, 1, 1, 0)
    assert {e.encounter.visit_number for e in events} == {patient_visit}
