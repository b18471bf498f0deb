"""Dry runs over message files: what the mappings make of them, and what each channel would receive.

``ehr-bridge map`` and ``ehr-bridge simulate`` are thin shells over this module.

* :class:`Mappings` holds the loaded mapping files of both families and maps one
  HL7 v2 message or FHIR resource; when nothing comes of it, it says why, as
  precisely as the mapping files allow: not readable, no mapping file for the
  type, a file but no rule for these values (naming the fields its rules test),
  or nothing to map (no segment of the kind that makes an event).
* :func:`survey` walks files and folders and maps every message in them;
  :class:`Summary` counts the result per message type and event type.
* :func:`simulate` puts each HL7 v2 message through the real intake (parse,
  header checks, mapping, routing, duplicate detection and the one commit) into
  a throwaway store, then claims each channel's deliveries in order and builds the
  channel worker's post and the adapter's rendered request. Nothing is sent: each
  claimed delivery is marked delivered under a made-up id (``post-1``, ...), and the
  store records what the worker records of a send (:func:`bridge.delivery.recorded_send`:
  an edit keeps the id of the post it edits; a correction that turns a post more severe
  gets its alert as a delivery of its own, claimed next), so threads, the edits of
  corrections and their alerts show as they would.

Pseudonyms (keys below PHI ``full``) are keyed with a random key per run, never a
plain hash that a list of visit numbers would reverse. ``simulate`` shows them as
``k:1``, ``k:2``, ... in order of appearance, so its output is the same every run.

Nothing here logs or prints message content: reasons name message types, fields
and short codes (ORC-1 ``XO``), never patient data. Only :func:`render_payload`'s
output (``--payload``) carries what the channel's PHI level lets it see.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from bridge.channels import PhiLevel, Post, SendResult
from bridge.compose import redact
from bridge.config import ListenerConfig, MappingConfig, Settings
from bridge.delivery import alert_for, recorded_send
from bridge.errors import ParseError, ValidationError
from bridge.events import ClinicalEvent, Lifecycle
from bridge.fhir.mapping import FhirMapper
from bridge.hl7 import parse, split_messages
from bridge.hl7.header import check_header
from bridge.hl7.reader import Message
from bridge.intake import RawMessage
from bridge.mapping import Mapper, MappingOptions, load_mappings, mappings_dir
from bridge.routing import Route
from bridge.runtime import Runtime
from bridge.store import EventStatus, MessageStatus

__all__ = [
    "ChannelView",
    "Dropped",
    "Mappings",
    "MessageView",
    "Outcome",
    "Posted",
    "Report",
    "Simulation",
    "Source",
    "Summary",
    "format_simulation",
    "format_summary",
    "format_table",
    "input_files",
    "read_sources",
    "render_payload",
    "reports_json",
    "simulate",
    "survey",
]

HL7: Final = "hl7v2"
FHIR: Final = "fhir"

_BOM = b"\xef\xbb\xbf"
#: An HL7 field value short and plain enough to be a table code (ORC-1 ``XO``, OBX-11 ``C``, PV1-2 ``I``),
#: so a reason may name it. Anything else could be patient data and is not printed.
_HL7_CODE = re.compile(r"[A-Za-z0-9]{1,4}")
#: A FHIR status code (``entered-in-error``).
_FHIR_CODE = re.compile(r"[a-z][a-z-]{0,31}")


class Outcome(StrEnum):
    """What came of one message or resource."""

    #: One event or more.
    MAPPED = "mapped"
    #: Not HL7 v2 or FHIR JSON, or not well-formed (the reader's or the header check's error).
    UNREADABLE = "unreadable"
    #: No mapping file takes this message type (or resource type).
    NO_MAPPING = "no mapping file"
    #: A mapping file takes it, but none of its rules fits these values.
    NO_RULE = "no rule fits"
    #: A mapping file takes it, but the message has nothing it makes events of (an ORU without OBR).
    NO_EVENTS = "nothing to map"


# --- inputs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """One message or resource read from a file, or why the file gave none (``index`` 0)."""

    path: Path
    #: 1-based position in the file; 0 when the file as a whole could not be read.
    index: int
    hl7: bytes | None = None
    resource: dict[str, Any] | None = None
    error: str = ""
    #: How output names the file: relative to the folder named on the command line.
    name: str = ""

    @property
    def label(self) -> str:
        name = self.name or str(self.path)
        return f"{name}#{self.index}" if self.index else name


def input_files(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """(file, name to show) of the files named, and of every file under the folders named.

    Folders are walked recursively, in name order, hidden entries skipped; a file in
    a folder is shown relative to that folder, a file named directly as given.
    """
    found: list[tuple[Path, str]] = []
    for path in paths:
        if not path.is_dir():
            found.append((path, str(path)))
            continue
        for p in sorted(path.rglob("*")):
            relative = p.relative_to(path)
            if p.is_file() and not any(part.startswith(".") for part in relative.parts):
                found.append((p, str(relative)))
    return found


def read_sources(path: Path, name: str = "") -> list[Source]:
    """The messages of an HL7 v2 file (batches and concatenations split as intake does) or a FHIR JSON file's resources.

    A file whose first character is ``{`` is read as FHIR JSON (a resource, or a Bundle's
    entries); anything else as HL7 v2, so a file that is neither fails in the HL7 reader,
    which says why.
    """
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [Source(path, 0, error=f"cannot read the file: {exc.strerror or type(exc).__name__}", name=name)]
    if data.removeprefix(_BOM).lstrip().startswith(b"{"):
        return _fhir_sources(path, name, data)
    parts = split_messages(data)
    if not parts:
        return [Source(path, 0, error="empty file", name=name)]
    return [Source(path, n, hl7=part, name=name) for n, part in enumerate(parts, start=1)]


def _fhir_sources(path: Path, name: str, data: bytes) -> list[Source]:
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except ValueError:
        return [Source(path, 0, error="not HL7 v2, and not valid JSON", name=name)]
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        return [Source(path, 0, error="JSON without a resourceType: not a FHIR resource", name=name)]
    if doc["resourceType"] != "Bundle":
        return [Source(path, 1, resource=doc, name=name)]
    entries = doc.get("entry")
    resources = [
        entry["resource"]
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and isinstance(entry["resource"].get("resourceType"), str)
    ]
    if not resources:
        return [Source(path, 0, error="FHIR Bundle without resources", name=name)]
    return [Source(path, n, resource=r, name=name) for n, r in enumerate(resources, start=1)]


# --- mapping with reasons -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What the mappings made of one message or resource."""

    path: Path
    index: int
    #: ``hl7v2``, ``fhir``, or "" when the input could not be read as either.
    format: str
    #: ``ADT^A01`` (MSH-9.1^9.2) or the FHIR resourceType; "" when unknown.
    message_type: str
    #: MSH-9.1 or the resourceType: what decides whether the catalogue covers it.
    family: str
    #: Well-formed, and of a family some mapping file takes: counts towards the mapped share.
    catalogued: bool
    outcome: Outcome
    #: Why nothing was mapped; "" when something was.
    reason: str = ""
    events: tuple[ClinicalEvent, ...] = ()
    #: How output names the file (see :class:`Source`).
    name: str = ""

    @property
    def label(self) -> str:
        name = self.name or str(self.path)
        return f"{name}#{self.index}" if self.index else name


@dataclass(frozen=True, slots=True)
class _HL7File:
    name: str
    doc: dict[str, Any]
    mapper: Mapper


@dataclass(frozen=True, slots=True)
class _FhirFile:
    name: str
    doc: dict[str, Any]
    mapper: FhirMapper


class Mappings:
    """The mapping files of both families as configured, with enough of their source to explain a miss.

    Each family is loaded on first use: ``simulate`` needs only the HL7 v2 files.
    """

    def __init__(self, config: MappingConfig) -> None:
        self._options = MappingOptions.from_config(config)

    @functools.cached_property
    def hl7(self) -> Mapper:
        return Mapper.load(self._options)

    @functools.cached_property
    def fhir(self) -> FhirMapper:
        return FhirMapper.load(self._options)

    @functools.cached_property
    def _hl7_files(self) -> list[_HL7File]:
        # The documents the mapper is built from, one mapper per file: the first whose match fits is
        # the file that takes a message, as in the mapper itself.
        docs = load_mappings(HL7, self._options.extra_paths, mappings_dir() / "schema.json")
        return [_HL7File(Path(src).name, doc, Mapper.from_documents([(src, doc)], self._options)) for src, doc in docs]

    @functools.cached_property
    def _fhir_files(self) -> list[_FhirFile]:
        docs = load_mappings(FHIR, self._options.extra_paths, mappings_dir() / "fhir.schema.json")
        return [
            _FhirFile(Path(src).name, doc, FhirMapper.from_documents([(src, doc)], self._options)) for src, doc in docs
        ]

    @functools.cached_property
    def families(self) -> tuple[str, ...]:
        """MSH-9.1 codes some HL7 v2 mapping file takes (ADT, ORU, ...): the catalogue's families."""
        return tuple(sorted({m["message"] for f in self._hl7_files for m in f.doc["match"]}))

    @functools.cached_property
    def resource_types(self) -> tuple[str, ...]:
        """FHIR resource types some FHIR mapping file takes."""
        return tuple(sorted({m["resourceType"] for f in self._fhir_files for m in f.doc["match"]}))

    def map_source(self, source: Source, *, received_at: datetime, fallback: str = "iso-8859-1") -> Report:
        if source.hl7 is not None:
            report = self._map_hl7(source, received_at=received_at, fallback=fallback)
        elif source.resource is not None:
            report = self._map_fhir(source, received_at=received_at)
        else:
            report = Report(source.path, source.index, "", "", "", False, Outcome.UNREADABLE, source.error)
        return dataclasses.replace(report, name=source.name)

    def _map_hl7(self, source: Source, *, received_at: datetime, fallback: str = "iso-8859-1") -> Report:
        assert source.hl7 is not None
        try:
            message = parse(source.hl7, fallback=fallback)
        except ParseError as exc:
            return Report(source.path, source.index, HL7, "", "", False, Outcome.UNREADABLE, f"not HL7 v2: {_why(exc)}")
        kind = _message_type(message)
        try:
            check_header(message)
        except ValidationError as exc:
            reason = f"header rejected: {_why(exc)}"
            return Report(source.path, source.index, HL7, kind, "", False, Outcome.UNREADABLE, reason)
        events = self.hl7.map_hl7(
            message,
            message_id=f"map-{source.index}",
            source="urn:ehr-bridge:map",
            received_at=received_at,
            origin={"file": source.path.name},
        )
        code = message.message_code
        catalogued = code in self.families
        if events:
            return Report(source.path, source.index, HL7, kind, code, catalogued, Outcome.MAPPED, "", tuple(events))
        outcome, reason = self.explain_hl7(message)
        return Report(source.path, source.index, HL7, kind, code, catalogued, outcome, reason)

    def explain_hl7(self, message: Message) -> tuple[Outcome, str]:
        """Why a well-formed message made no event (call only when it made none)."""
        code, trigger = message.message_code, message.trigger
        kind = _message_type(message)
        taken = next((f for f in self._hl7_files if f.mapper.matches(message)), None)
        if taken is None:
            if code not in self.families:
                return Outcome.NO_MAPPING, f"no mapping file for {code} messages"
            versions = [
                v
                for f in self._hl7_files
                for m in f.doc["match"]
                if m["message"] == code and trigger in m["triggers"]
                for v in m.get("versions", ())
            ]
            if versions:
                # MSH-12 passed the header check: a version number, nothing else.
                return (
                    Outcome.NO_MAPPING,
                    f"{kind} is mapped for versions {', '.join(versions)} only, not {message.version}",
                )
            return Outcome.NO_MAPPING, f"no mapping file takes {kind}"
        for_each = taken.doc.get("for_each")
        if isinstance(for_each, dict):
            anchor = str(for_each.get("segment", ""))
            if anchor and not message.segments_named(anchor):
                return Outcome.NO_EVENTS, f"{taken.name}: no {anchor} segment (it makes one event per {anchor})"
        paths: dict[str, None] = {}
        tests: set[str] = set()
        for rule in taken.doc.get("rules", ()):
            if isinstance(rule, dict) and isinstance(rule.get("when"), dict):
                _tested(rule["when"], paths, tests)
        facts: list[str] = []
        if "trigger" in tests:
            facts.append(f"trigger {trigger or '(none)'}")
        facts.extend(f"{p}={_values(message, p)}" for p in paths)
        observations = taken.doc.get("observations")
        if isinstance(observations, dict):
            for test in ("status", "flags"):
                path = observations.get(test)
                if test in tests and isinstance(path, str) and path not in paths:
                    facts.append(f"{path}={_values(message, path)}")
        detail = f" ({'; '.join(facts)})" if facts else ""
        return Outcome.NO_RULE, f"{taken.name}: no rule fits{detail}"

    def _map_fhir(self, source: Source, *, received_at: datetime) -> Report:
        resource = source.resource
        assert resource is not None
        kind = str(resource.get("resourceType", ""))
        catalogued = kind in self.resource_types
        events = self.fhir.map_resource(
            resource,
            message_id=f"map-{source.index}",
            source="urn:ehr-bridge:map",
            received_at=received_at,
            origin={"file": source.path.name},
        )
        made = functools.partial(Report, source.path, source.index, FHIR, kind, kind, catalogued)
        if events:
            return made(Outcome.MAPPED, "", tuple(events))
        taken = next((f for f in self._fhir_files if f.mapper.matches(resource)), None)
        if taken is None:
            if catalogued:
                return made(
                    Outcome.NO_MAPPING, f"no mapping file takes this {kind} (their match conditions do not hold)"
                )
            return made(Outcome.NO_MAPPING, f"no mapping file for {kind}")
        status = resource.get("status")
        detail = f" (status {status})" if isinstance(status, str) and _FHIR_CODE.fullmatch(status) else ""
        return made(Outcome.NO_RULE, f"{taken.name}: no rule fits{detail}")


def _why(exc: ParseError | ValidationError) -> str:
    return f"{exc.code} {exc}"


def _message_type(message: Message) -> str:
    return f"{message.message_code}^{message.trigger}".rstrip("^")


def _tested(condition: dict[str, Any], paths: dict[str, None], tests: set[str]) -> None:
    """Collect what a rule's condition reads: field paths, the trigger, observation status or flags."""
    for key, value in condition.items():
        if key == "trigger":
            tests.add("trigger")
        elif key == "any_of" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    _tested(part, paths, tests)
        elif key == "not" and isinstance(value, dict):
            _tested(value, paths, tests)
        elif key in ("any_observation", "all_observations") and isinstance(value, dict):
            tests.update(t for t in ("status", "flags") if t in value)
        else:
            paths[key] = None


def _values(message: Message, path: str) -> str:
    """The distinct values of ``path`` in every segment of its kind, when they are codes; never other content."""
    name = path.split("-", 1)[0]
    seen: dict[str, None] = {}
    try:
        for seg in message.segments_named(name):
            value = seg.get(path).strip()
            if value and value != '""':
                seen[value if _HL7_CODE.fullmatch(value) else "(text)"] = None
    except ValueError:
        return "?"
    return ",".join(seen) if seen else "(empty)"


def survey(
    paths: Iterable[Path], mappings: Mappings, *, received_at: datetime, fallback: str = "iso-8859-1"
) -> Iterator[Report]:
    """Map every message and resource in ``paths`` (files, and folders walked recursively)."""
    for path, name in input_files(paths):
        for source in read_sources(path, name):
            yield mappings.map_source(source, received_at=received_at, fallback=fallback)


# --- summary --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts over a survey; ``mapped``/``eligible`` per format give the share the acceptance asks for."""

    files: int
    #: Messages and resources read, and files that gave none.
    total: int
    #: (format, message type) → well-formed messages (and resources).
    messages: Counter[tuple[str, str]]
    #: event type → events.
    events: Counter[str]
    #: Everything that made no event, in input order.
    unmapped: tuple[Report, ...]
    #: format → well-formed messages of the catalogue's families (the share's denominator).
    eligible: Counter[str]
    #: format → those of them that made at least one event.
    mapped: Counter[str]
    families: tuple[str, ...]
    resource_types: tuple[str, ...]

    @classmethod
    def of(cls, reports: Iterable[Report], mappings: Mappings) -> Summary:
        files: set[Path] = set()
        total = 0
        messages: Counter[tuple[str, str]] = Counter()
        events: Counter[str] = Counter()
        eligible: Counter[str] = Counter()
        mapped: Counter[str] = Counter()
        unmapped: list[Report] = []
        for report in reports:
            files.add(report.path)
            total += 1
            if report.outcome is not Outcome.UNREADABLE:
                messages[(report.format, report.message_type)] += 1
            events.update(e.type.value for e in report.events)
            if report.catalogued:
                eligible[report.format] += 1
                if report.outcome is Outcome.MAPPED:
                    mapped[report.format] += 1
            if report.outcome is not Outcome.MAPPED:
                unmapped.append(report)
        return cls(
            files=len(files),
            total=total,
            messages=messages,
            events=events,
            unmapped=tuple(unmapped),
            eligible=eligible,
            mapped=mapped,
            # Only for the formats present: reading the other family's files would cost time for nothing.
            families=mappings.families if eligible[HL7] else (),
            resource_types=mappings.resource_types if eligible[FHIR] else (),
        )

    def share(self, fmt: str = HL7) -> float | None:
        """Percentage of the well-formed messages of the catalogue's families that made an event."""
        total = self.eligible[fmt]
        return 100.0 * self.mapped[fmt] / total if total else None


def format_summary(summary: Summary) -> str:
    lines = [
        f"Files: {summary.files}; messages and resources: {summary.total}; events: {sum(summary.events.values())}",
        "",
    ]
    for fmt, what, families in (
        (HL7, "well-formed HL7 v2 messages of the catalogue's families", summary.families),
        (FHIR, "FHIR resources of the catalogue's types", summary.resource_types),
    ):
        share = summary.share(fmt)
        if share is not None:
            lines.append(
                f"Mapped: {summary.mapped[fmt]} of {summary.eligible[fmt]} {what} ({', '.join(families)}): {share:.1f}%"
            )
    if lines[-1]:
        lines.append("")
    lines.append("Well-formed messages and resources by type:")
    lines.extend(_counts({("FHIR " if f == FHIR else "") + t: n for (f, t), n in sorted(summary.messages.items())}))
    lines += ["", "Events by type:"]
    lines.extend(_counts(dict(sorted(summary.events.items()))))
    lines += ["", f"Not mapped: {len(summary.unmapped)}"]
    for outcome in (Outcome.UNREADABLE, Outcome.NO_MAPPING, Outcome.NO_RULE, Outcome.NO_EVENTS):
        group = [r for r in summary.unmapped if r.outcome is outcome]
        if not group:
            continue
        lines.append(f"  {outcome.value} ({len(group)}):")
        lines.extend(f"    {_listed(label, kind, reason)}" for label, kind, reason in _grouped(group))
    return "\n".join(lines) + "\n"


def _listed(label: str, kind: str, reason: str) -> str:
    return f"{label}  {kind}: {reason}" if kind else f"{label}: {reason}"


def _counts(counts: dict[str, int]) -> list[str]:
    if not counts:
        return ["  (none)"]
    width = max(len(k) for k in counts)
    return [f"  {k:<{width}}  {n:>5}" for k, n in counts.items()]


def _grouped(reports: Sequence[Report]) -> list[tuple[str, str, str]]:
    """(label, type, reason) with the messages of one file that share type and reason on one line (``f#1-3,7``)."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for r in reports:
        groups.setdefault((r.name or str(r.path), r.message_type, r.reason), []).append(r.index)
    out: list[tuple[str, str, str]] = []
    for (name, kind, reason), indexes in groups.items():
        label = f"{name}#{_ranges(indexes)}" if any(indexes) else name
        out.append((label, kind, reason))
    return out


def _ranges(numbers: list[int]) -> str:
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


# --- event listings -------------------------------------------------------------------------------


def reports_json(reports: Iterable[Report], phi: PhiLevel, *, hash_key: bytes) -> list[dict[str, Any]]:
    """``map``'s JSON: per message its events (reduced to ``phi``, keyed with ``hash_key``), or why it has none."""
    out: list[dict[str, Any]] = []
    for r in reports:
        item: dict[str, Any] = {"file": str(r.path), "message": r.index, "type": r.message_type}
        if r.outcome is Outcome.UNREADABLE:
            item["error"] = r.reason
        else:
            item["events"] = [redact(e, phi, hash_key=hash_key).model_dump(mode="json") for e in r.events]
            if r.reason:
                item["reason"] = r.reason
        out.append(item)
    return out


_TABLE_HEAD = ("FILE", "TYPE", "EVENT", "SEVERITY", "LIFECYCLE", "THREAD", "SUBJECT", "LOCATION")
#: Free-text cells (subject, location) are cut here; the JSON output has everything.
_CELL = 40


def format_table(reports: Iterable[Report], phi: PhiLevel, *, hash_key: bytes) -> str:
    """One row per event: no patient names, identifiers (thread, subject key) only as ``phi`` allows.

    Below ``full`` they are pseudonyms keyed with ``hash_key``.
    """
    rows: list[tuple[str, ...]] = []
    missing: list[Report] = []
    for r in reports:
        if not r.events:
            missing.append(r)
        for event in r.events:
            seen = redact(event, phi, hash_key=hash_key)
            subject = seen.subject
            about = (
                " ".join(p for p in (subject.kind, _short(subject.key), subject.text or subject.code) if p)
                if subject
                else ""
            )
            rows.append(
                (
                    r.label,
                    r.message_type,
                    seen.type.value,
                    seen.severity.value,
                    seen.lifecycle.value,
                    _short(seen.thread_key) or "",
                    about,
                    seen.encounter.location.display,
                )
            )
    lines = _aligned([_TABLE_HEAD, *((*row[:6], _cut(row[6]), _cut(row[7])) for row in rows)])
    if missing:
        lines += ["", f"No events ({len(missing)}):"]
        lines.extend(f"  {_listed(label, kind, reason)}" for label, kind, reason in _grouped(missing))
    return "\n".join(lines) + "\n"


def _short(key: str | None) -> str | None:
    # A pseudonym (k: + 32 hex) is opaque; 12 digits tell rows apart on a screen.
    return key[:14] if key and key.startswith("k:") else key


def _cut(text: str) -> str:
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _aligned(rows: Sequence[Iterable[str]]) -> list[str]:
    table = [list(r) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]


# --- simulation -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageView:
    """One input message and what intake made of it."""

    source: str
    message_type: str
    #: MSA-1 of the ACK intake answered with; "" for a file simulate could not read.
    ack: str
    #: "2 events", or why there are none.
    outcome: str


@dataclass(frozen=True, slots=True)
class Posted:
    """What one channel would show for one event."""

    #: The made-up id of what was sent (``post-1``): what later posts reply to; an edit is recorded
    #: under the id of the post it edits (:func:`bridge.delivery.recorded_send`).
    ref: str
    source: str
    event_type: str
    severity: str
    lifecycle: str
    occurred_at: str
    title: str
    summary: str
    facts: tuple[tuple[str, str], ...]
    #: The post this one replies to (its thread's first post), when the channel threads.
    thread_ref: str | None
    #: The post this one edits (a correction) or strikes (a cancellation), when the channel edits.
    original_ref: str | None
    #: The adapter's rendered request, as compact JSON.
    payload: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message or event the channel does not get, and why."""

    source: str
    #: The message type, or the event type.
    what: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelView:
    name: str
    type: str
    phi: str
    #: Language of the wording the channel's worker composes with.
    locale: str
    posts: tuple[Posted, ...]
    dropped: tuple[Dropped, ...]


@dataclass(frozen=True, slots=True)
class Simulation:
    messages: tuple[MessageView, ...]
    channels: tuple[ChannelView, ...]


@dataclass(slots=True)
class _Event:
    id: str
    event: ClinicalEvent
    status: EventStatus
    #: Why it is a duplicate; "" otherwise.
    duplicate_of: str = ""


@dataclass(slots=True)
class _Message:
    source: str
    message_type: str = ""
    ack: str = ""
    #: Why nothing of it reaches any channel; "" when it made events.
    dropped: str = ""
    events: list[_Event] = dataclasses.field(default_factory=list)


async def simulate(settings: Settings, paths: Sequence[Path]) -> Simulation:
    """Run ``paths`` through intake, routing and rendering with ``settings``, in a temporary store; send nothing.

    The store, not the config's, lives in a temporary folder removed afterwards. HL7 v2
    messages go through the first configured listener's intake (its charset fallback and
    validation); FHIR JSON files are listed as not simulated.
    """
    with tempfile.TemporaryDirectory(prefix="ehr-bridge-simulate-") as tmp:
        runtime = Runtime(_offline(settings, Path(tmp)))
        await runtime.store.open()
        try:
            return await _run(runtime, paths)
        finally:
            await runtime.stop()


def _offline(settings: Settings, folder: Path) -> Settings:
    listener = settings.listeners[0] if settings.listeners else ListenerConfig(name="simulate", port=None)
    return settings.model_copy(
        update={
            # A throwaway store: durability buys nothing here, so no fsync per message.
            "store": settings.store.model_copy(update={"path": folder / "simulate.db", "synchronous": "NORMAL"}),
            "listeners": [listener],
        }
    )


async def _run(runtime: Runtime, paths: Sequence[Path]) -> Simulation:
    store = runtime.store
    listener = runtime.settings.listeners[0]
    mappings = Mappings(runtime.settings.mapping)
    messages: list[_Message] = []
    #: journal id → the input's label and its stable id in the output (msg-1, ...).
    by_journal: dict[str, _Message] = {}
    renames: dict[str, str] = {}
    for path, name in input_files(paths):
        for source in read_sources(path, name):
            message = _Message(source.label)
            messages.append(message)
            if source.hl7 is None:
                message.message_type = str(source.resource.get("resourceType", "")) if source.resource else ""
                message.dropped = source.error or "not simulated: simulate reads HL7 v2 (use `ehr-bridge map` for FHIR)"
                continue
            await runtime.intake.accept(RawMessage(listener.name, source.hl7, "simulate"))
            ((journal_id, status, ack, error, kind),) = await store.query(
                "SELECT id, status, ack_code, error, message_type FROM journal ORDER BY rowid DESC LIMIT 1"
            )
            by_journal[journal_id] = message
            renames[journal_id] = f"msg-{len(renames) + 1}"
            message.message_type, message.ack = kind, ack
            if status == MessageStatus.REJECTED:
                message.dropped = f"rejected: {error}"
            elif status == MessageStatus.DUPLICATE:
                message.dropped = await _duplicate_message(runtime, journal_id, by_journal)
            else:
                message.events = await _events(runtime, journal_id, by_journal)
                if not message.events:
                    message.dropped = _no_events(mappings, source.hl7, listener.charset_fallback)
    # Keyed as the store's secret keys them in production, and the key dies with the run.
    key = secrets.token_bytes(32)
    for worker in runtime.dispatcher.workers.values():
        worker.hash_key = key
    rename, label = _renamer(renames), _labeller()

    def stable(text: str) -> str:
        return label(rename(text))

    channels = [await _channel(runtime, name, messages, stable) for name in runtime.settings.channels]
    views = tuple(
        MessageView(
            m.source,
            m.message_type,
            m.ack,
            m.dropped or _events_made(m.events),
        )
        for m in messages
    )
    return Simulation(views, tuple(channels))


def _events_made(events: list[_Event]) -> str:
    made = f"{len(events)} event{'s' if len(events) != 1 else ''}"
    duplicates = sum(1 for e in events if e.status is EventStatus.DUPLICATE)
    return f"{made} ({duplicates} duplicate)" if duplicates else made


async def _duplicate_message(runtime: Runtime, journal_id: str, by_journal: dict[str, _Message]) -> str:
    rows = await runtime.store.query(
        "SELECT o.id FROM journal d JOIN journal o ON o.control_id = d.control_id"
        " AND o.sending_application = d.sending_application AND o.sending_facility = d.sending_facility"
        " AND o.body_digest = d.body_digest AND o.status IN (?, ?) AND o.rowid < d.rowid"
        " WHERE d.id = ? ORDER BY o.rowid LIMIT 1",
        (MessageStatus.ACCEPTED.value, MessageStatus.UNMAPPED.value, journal_id),
    )
    first = by_journal[rows[0][0]].source if rows else "an earlier message"
    return f"duplicate message: same sender, control ID and content as {first}"


async def _events(runtime: Runtime, journal_id: str, by_journal: dict[str, _Message]) -> list[_Event]:
    rows = await runtime.store.query(
        "SELECT e.id, e.status, e.body, ("
        "  SELECT o.message_id FROM events o WHERE o.dedup_key = e.dedup_key AND o.status != ? AND o.seq < e.seq"
        "  ORDER BY o.seq LIMIT 1)"
        " FROM events e WHERE e.message_id = ? ORDER BY e.seq",
        (EventStatus.DUPLICATE.value, journal_id),
    )
    found: list[_Event] = []
    for event_id, status, body, first in rows:
        item = _Event(event_id, ClinicalEvent.model_validate_json(body), EventStatus(status))
        if item.status is EventStatus.DUPLICATE:
            earlier = by_journal[first].source if first in by_journal else "an earlier message"
            item.duplicate_of = f"duplicate event: the same {item.event.type.value} as from {earlier}"
        found.append(item)
    return found


def _no_events(mappings: Mappings, payload: bytes, fallback: str) -> str:
    try:
        message = parse(payload, fallback=fallback)
    except ParseError as exc:  # intake parsed it, so this does not happen; say so rather than guess
        return f"not HL7 v2: {_why(exc)}"
    _, reason = mappings.explain_hl7(message)
    return f"not mapped: {reason}"


async def _channel(runtime: Runtime, name: str, messages: list[_Message], stable: Callable[[str], str]) -> ChannelView:
    cfg = runtime.settings.channels[name]
    worker = runtime.dispatcher.workers[name]
    adapter = runtime.adapters[name]
    posts: list[Posted] = []
    delivered: set[str] = set()
    sources = {e.id: m.source for m in messages for e in m.events}
    # One at a time: the store hands out the lowest pending delivery whose thread has nothing
    # open before it, so posts come in input order and each sees the ones before it as posted.
    while claimed := await runtime.store.claim(name, now=time.time(), limit=1):
        for delivery in claimed:
            post = worker.post_for(delivery)
            ref = f"post-{len(posts) + 1}"
            # Exactly what the worker records of a send: an edit keeps the id of the post it edits.
            external_id, root = recorded_send(post, SendResult(external_id=ref), threads=adapter.supports_threads)
            edits = external_id != ref
            # A correction that edits and turns more severe gets its alert as a delivery of its own,
            # which the store creates with this outcome and hands out next (a new post in the thread).
            alert = edits and alert_for(post, delivery.original_severity) is not None
            await runtime.store.mark_delivered(delivery.id, external_id=external_id, thread_root=root, alert=alert)
            delivered.add(delivery.event.id)
            source = sources.get(delivery.event.id, "")
            posts.append(_posted(post, ref, source, edits=edits, render=adapter.render, stable=stable))
    routes = [r for r in runtime.router.routes if name in r.channels]
    dropped: list[Dropped] = []
    for m in messages:
        if m.dropped:
            dropped.append(Dropped(m.source, m.message_type, m.dropped))
        for e in m.events:
            if e.id in delivered:
                continue
            reason = e.duplicate_of or _not_routed(
                e.event, routes, runtime.router.also(e.event), routed_elsewhere=e.status is EventStatus.ROUTED
            )
            dropped.append(Dropped(m.source, e.event.type.value, reason))
    return ChannelView(name, cfg.type, cfg.phi.value, worker.locale, tuple(posts), tuple(dropped))


def _posted(
    post: Post, ref: str, source: str, *, edits: bool, render: Callable[[Post], Any], stable: Callable[[str], str]
) -> Posted:
    event = post.event
    return Posted(
        ref=ref,
        source=source,
        event_type=event.type.value,
        severity=event.severity.value,
        lifecycle=event.lifecycle.value,
        occurred_at=event.occurred_at.isoformat(),
        title=stable(post.title),
        summary=stable(post.summary),
        facts=tuple((stable(k), stable(v)) for k, v in post.facts),
        thread_ref=post.thread_ref,
        original_ref=post.original_ref if edits else None,
        payload=stable(render_payload(render(post))),
    )


def _not_routed(event: ClinicalEvent, routes: list[Route], also: tuple[str, ...], *, routed_elsewhere: bool) -> str:
    """Why no route brings ``event`` to this channel: the filters the closest of its routes fails."""
    if not routes:
        return "no route sends anything to this channel"
    misses = [(route, route.misses(event, also)) for route in routes]
    route, failed = min(misses, key=lambda pair: len(pair[1]))
    why = f"route {route.name}: {'; '.join(failed)}"
    return why if routed_elsewhere else f"no route matched ({why})"


_PSEUDONYM = re.compile(r"\bk:[0-9a-f]{32}\b")


def _labeller() -> Callable[[str], str]:
    """Replace each pseudonym (``k:`` and 32 hex digits) with ``k:1``, ``k:2``, ... in order of first appearance.

    The same pseudonym gets the same label throughout the run, so threads and keys still tell
    apart; the labels depend only on the order of the input, not on the run's random key.
    """
    labels: dict[str, str] = {}

    def label(text: str) -> str:
        return _PSEUDONYM.sub(lambda m: labels.setdefault(m.group(0), f"k:{len(labels) + 1}"), text)

    return label


def _renamer(renames: dict[str, str]) -> Callable[[str], str]:
    """Replace the store's time-ordered random message ids (and the event and delivery ids made of them)."""
    if not renames:
        return lambda text: text
    pattern = re.compile("|".join(re.escape(k) for k in renames))

    def rename(text: str) -> str:
        return pattern.sub(lambda m: renames[m.group(0)], text)

    return rename


def render_payload(payload: Any) -> str:
    """An adapter's rendered request as compact JSON: dataclasses as objects, JSON bodies parsed."""
    return json.dumps(_plain(payload), ensure_ascii=False, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, bytes):
        try:
            return json.loads(value)
        except ValueError:
            return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def format_simulation(simulation: Simulation, *, payload: bool = False) -> str:
    """The per-channel view: what each channel would post, with which PHI level, and what it does not get."""
    lines = [
        f"Simulated {len(simulation.messages)} message(s); nothing was sent. "
        "Ids are numbered in input order (msg-1, post-1, ...).",
        "",
        "Messages:",
    ]
    lines.extend(
        _aligned(
            [
                (f"  {m.source}", m.message_type or "-", f"ACK {m.ack}" if m.ack else "-", m.outcome)
                for m in simulation.messages
            ]
        )
    )
    for channel in simulation.channels:
        lines += ["", f"Channel {channel.name} ({channel.type}, PHI {channel.phi}, locale {channel.locale})"]
        lines.append(f"  Posted: {len(channel.posts)}")
        for post in channel.posts:
            lines.append(
                f"    {post.ref}  {post.event_type}  {post.severity}  {post.lifecycle}  {post.occurred_at}"
                f"  from {post.source}"
            )
            if post.original_ref is not None:
                verb = "strikes" if post.lifecycle == Lifecycle.CANCEL.value else "edits"
                lines.append(f"      {verb} {post.original_ref}")
            elif post.thread_ref is not None:
                lines.append(f"      in the thread of {post.thread_ref}")
            lines.append(f"      title: {post.title}")
            if post.summary:
                lines.append(f"      summary: {post.summary}")
            lines.extend(f"      {label}: {value}" for label, value in post.facts)
            if payload:
                lines.append(f"      payload: {post.payload}")
        lines.append(f"  Dropped: {len(channel.dropped)}")
        lines.extend(f"    {d.source}  {d.what or '-'}: {d.reason}" for d in channel.dropped)
    return "\n".join(lines) + "\n"
