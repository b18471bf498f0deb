"""What a channel may see of an event, and how it reads: PHI reduction and the wording from templates.

:func:`redact` reduces an event to a channel's PHI level (HIPAA minimum
necessary, REFERENCE.md §5); :func:`compose` words the reduced event with the
clinician-reviewed templates in ``mappings/templates.yaml``. Placeholders are
always filled from the reduced event, so a template cannot leak what the
channel's level removed.

What each level keeps:

* ``full``: everything.
* ``limited``: initials instead of names, the year of birth, sex, location,
  attending, clinical content; no MRN, no other identifiers, no visit number.
* ``none``: no patient at all, no visit number, no attending, no dates of
  admission or discharge, the location cut to facility and unit, and result
  lines cut to their name, flags and critical mark (no values).

The thread, dedup and subject keys (and link values that are not event types
or comma-separated lists of them, like A11's) may carry MRNs, visit and
accession numbers. Below ``full`` they are replaced by a stable pseudonym:
``k:`` and 32 hex digits of SHA-256 over the original, or of HMAC-SHA-256 when
the deployment passes a ``hash_key``. The core routes and threads on the
original event, so the channel needs only a stable opaque value. Visit numbers
are few enough to guess, so only the keyed form resists a dictionary attack.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, TypeAlias

from bridge.channels import PhiLevel
from bridge.errors import MappingError
from bridge.events import (
    ClinicalEvent,
    Encounter,
    EventType,
    Lifecycle,
    Location,
    Observation,
    Patient,
    Subject,
)
from bridge.mapping import load_document, mappings_dir

__all__ = ["Templates", "compose", "redact"]

_EVENT_TYPES = frozenset(t.value for t in EventType)
#: OBX-8 flag (Table 0078) that says the line is normal; every other flag makes it worth a mention.
_NORMAL_FLAGS = frozenset({"N", ""})


# --- redaction ------------------------------------------------------------------------------------


def _pseudonym(value: str, hash_key: bytes | None) -> str:
    data = value.encode("utf-8")
    digest = hmac.new(hash_key, data, hashlib.sha256) if hash_key else hashlib.sha256(data)
    return f"k:{digest.hexdigest()[:32]}"


def _names_event_types(value: str) -> bool:
    # A link to event types carries no PHI; a webhook receiver needs it readable to know what to strike.
    return all(part in _EVENT_TYPES for part in value.split(","))


def _initial(name: str | None) -> str | None:
    letter = next((c for c in name or "" if c.isalpha()), None)
    return letter.upper() if letter is not None else None


def _birth_year(birth_date: str | None) -> str | None:
    # Only an ISO date is known to start with its year; raw text could be anything, so it goes.
    if birth_date and len(birth_date) >= 4 and birth_date[:4].isdigit():
        return birth_date[:4]
    return None


def _reduce(event: ClinicalEvent, level: PhiLevel) -> ClinicalEvent:
    """The event's content at ``level``; keys and links untouched."""
    if level == PhiLevel.FULL:
        return event
    p = event.patient
    enc = event.encounter
    subject = event.subject
    if level == PhiLevel.LIMITED:
        patient = Patient(
            given=_initial(p.given),
            family=_initial(p.family),
            birth_date=_birth_year(p.birth_date),
            sex=p.sex,
        )
        encounter = enc.model_copy(update={"visit_number": None})
    else:
        patient = Patient()

        def cut(loc: Location | None) -> Location | None:
            return None if loc is None else Location(facility=loc.facility, unit=loc.unit)

        encounter = Encounter(
            patient_class=enc.patient_class,
            location=cut(enc.location) or Location(),
            prior_location=cut(enc.prior_location),
        )
        if subject is not None:
            subject = subject.model_copy(
                update={
                    "observations": tuple(
                        Observation(code=o.code, text=o.text, flags=o.flags, critical=o.critical)
                        for o in subject.observations
                    )
                }
            )
    return event.model_copy(update={"patient": patient, "encounter": encounter, "subject": subject})


def redact(event: ClinicalEvent, level: PhiLevel, *, hash_key: bytes | None = None) -> ClinicalEvent:
    """The event as a channel at ``level`` may see it (see the module docstring for each level)."""
    if level == PhiLevel.FULL:
        return event
    reduced = _reduce(event, level)
    subject: Subject | None = reduced.subject
    if subject is not None and subject.key is not None:
        subject = subject.model_copy(update={"key": _pseudonym(subject.key, hash_key)})
    links = {
        name: value if _names_event_types(value) else _pseudonym(value, hash_key) for name, value in event.links.items()
    }
    return reduced.model_copy(
        update={
            "subject": subject,
            "thread_key": _pseudonym(event.thread_key, hash_key),
            "dedup_key": _pseudonym(event.dedup_key, hash_key),
            "links": links,
        }
    )


# --- templates ------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\{([^{}\[\]]*)\}|\[|\]")
_SPACES_RE = re.compile(r"[ \t]{2,}")

#: Placeholders a template may use; ``observation`` only in a ``for_each`` fact.
_PLACEHOLDERS = frozenset(
    {
        "patient",
        "mrn",
        "birth_date",
        "sex",
        "visit_number",
        "patient_class",
        "location",
        "prior_location",
        "unit",
        "facility",
        "attending",
        "subject",
        "subject_status",
        "observations",
        "abnormal_observations",
        "critical_observations",
        "severity",
        "type",
        "time",
    }
)

# A compiled template: literal text, a placeholder name, or an optional group of those.
_Part: TypeAlias = str | tuple[str] | list["_Part"]


@dataclass(frozen=True, slots=True)
class _Text:
    parts: tuple[_Part, ...]

    def render(self, values: dict[str, str | None]) -> str:
        return _render(self.parts, values) or ""


def _render(parts: tuple[_Part, ...] | list[_Part], values: dict[str, str | None]) -> str | None:
    """The text, or None when a placeholder has no value (which drops the enclosing optional part)."""
    out: list[str] = []
    missing = False
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, tuple):
            value = values.get(part[0])
            if value:
                out.append(value)
            else:
                missing = True
        else:
            out.append(_render(part, values) or "")
    return None if missing else "".join(out)


def _compile_text(text: str, source: str, where: str, names: frozenset[str]) -> _Text:
    root: list[_Part] = []
    stack: list[list[_Part]] = [root]
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        literal = text[pos : m.start()]
        if "{" in literal or "}" in literal:
            raise MappingError(f"unbalanced braces in {text!r}", source=source, path=where)
        if literal:
            stack[-1].append(literal)
        token = m.group(0)
        if token == "[":
            if len(stack) > 1:
                raise MappingError(f"optional parts [ ] do not nest: {text!r}", source=source, path=where)
            group: list[_Part] = []
            stack[-1].append(group)
            stack.append(group)
        elif token == "]":
            if len(stack) == 1:
                raise MappingError(f"']' without '[' in {text!r}", source=source, path=where)
            stack.pop()
        else:
            name = m.group(1).strip()
            if name not in names:
                known = ", ".join(sorted(names))
                raise MappingError(f"unknown placeholder {{{name}}} (known: {known})", source=source, path=where)
            stack[-1].append((name,))
        pos = m.end()
    tail = text[pos:]
    if "{" in tail or "}" in tail:
        raise MappingError(f"unbalanced braces in {text!r}", source=source, path=where)
    if len(stack) > 1:
        raise MappingError(f"'[' without ']' in {text!r}", source=source, path=where)
    if tail:
        root.append(tail)
    # Top-level placeholders render as empty text when missing; only [ ] parts are dropped.
    return _Text(tuple(p if not isinstance(p, tuple) else [p] for p in root))


@dataclass(frozen=True, slots=True)
class _Fact:
    label: str
    value: _Text
    for_each: str | None


@dataclass(frozen=True, slots=True)
class _Wording:
    title: _Text
    summary: _Text


@dataclass(frozen=True, slots=True)
class _Entry:
    wording: dict[Lifecycle, _Wording]
    facts: tuple[_Fact, ...] | None


class Templates:
    """The compiled wording of every event type, from ``mappings/templates.yaml``."""

    def __init__(self, entries: dict[str, _Entry], facts: tuple[_Fact, ...], patient_classes: dict[str, str]) -> None:
        self._entries = entries
        self._facts = facts
        self._patient_classes = patient_classes

    @classmethod
    def load(cls, path: Path | None = None) -> Templates:
        """Load and check ``path`` (default: the bundled templates). Raises MappingError naming the place."""
        base = mappings_dir()
        path = path if path is not None else base / "templates.yaml"
        doc = load_document(path, base / "templates.schema.json")
        return cls.from_document(doc, source=str(path))

    @classmethod
    def from_document(cls, doc: dict[str, Any], *, source: str = "templates") -> Templates:
        """Compile an already schema-valid document (placeholders are checked here)."""
        facts = _compile_facts(doc["facts"], source, "$.facts")
        entries: dict[str, _Entry] = {}
        for type_name, spec in doc["events"].items():
            where = f"$.events['{type_name}']"
            wording = {Lifecycle.NEW: _compile_wording(spec, source, where)}
            for key, lifecycle in (("cancelled", Lifecycle.CANCEL), ("corrected", Lifecycle.CORRECT)):
                if key in spec:
                    wording[lifecycle] = _compile_wording(spec[key], source, f"{where}.{key}")
            own = _compile_facts(spec["facts"], source, f"{where}.facts") if "facts" in spec else None
            entries[type_name] = _Entry(wording, own)
        return cls(entries, facts, dict(doc.get("patient_classes", {})))

    def covers(self, event_type: EventType) -> bool:
        """True when the event type has its own wording (else a generic one is used)."""
        return event_type.value in self._entries

    def _wording(self, event: ClinicalEvent) -> tuple[_Wording | None, tuple[_Fact, ...]]:
        entry = self._entries.get(event.type.value)
        if entry is None:
            return None, self._facts
        wording = entry.wording.get(event.lifecycle, entry.wording[Lifecycle.NEW])
        return wording, entry.facts if entry.facts is not None else self._facts


def _compile_wording(spec: dict[str, Any], source: str, where: str) -> _Wording:
    return _Wording(
        title=_compile_text(spec["title"], source, f"{where}.title", _PLACEHOLDERS),
        summary=_compile_text(spec.get("summary", ""), source, f"{where}.summary", _PLACEHOLDERS),
    )


def _compile_facts(specs: list[dict[str, Any]], source: str, where: str) -> tuple[_Fact, ...]:
    facts: list[_Fact] = []
    for i, spec in enumerate(specs):
        for_each = spec.get("for_each")
        names = _PLACEHOLDERS | {"observation"} if for_each else _PLACEHOLDERS
        facts.append(_Fact(spec["label"], _compile_text(spec["value"], source, f"{where}[{i}].value", names), for_each))
    return tuple(facts)


# --- composition ----------------------------------------------------------------------------------


def _observation_line(o: Observation) -> str:
    parts = (o.text or o.code, o.value, o.units, " ".join(o.flags) or None)
    return " ".join(p for p in parts if p)


def _is_abnormal(o: Observation) -> bool:
    return o.critical or any(f not in _NORMAL_FLAGS for f in o.flags)


def _join(lines: list[str]) -> str | None:
    return "; ".join(lines) or None


def _patient_name(p: Patient, level: PhiLevel) -> str | None:
    if level == PhiLevel.FULL:
        return ", ".join(n for n in (p.family, p.given) if n) or None
    # Below full the reduced event holds initials only: given before family, as a name is said.
    initials = [i for i in (_initial(p.given), _initial(p.family)) if i]
    return "".join(f"{i}." for i in initials) or None


def _values(event: ClinicalEvent, level: PhiLevel, patient_classes: dict[str, str]) -> dict[str, str | None]:
    p = event.patient
    enc = event.encounter
    subject = event.subject
    observations = subject.observations if subject is not None else ()
    attending = enc.attending.display if enc.attending is not None else ""
    prior = enc.prior_location.display if enc.prior_location is not None else ""
    patient_class = enc.patient_class
    return {
        "patient": _patient_name(p, level),
        "mrn": p.mrn.value if p.mrn is not None else None,
        "birth_date": p.birth_date,
        "sex": p.sex,
        "visit_number": enc.visit_number,
        "patient_class": patient_classes.get(patient_class, patient_class) if patient_class else None,
        "location": enc.location.display or None,
        "prior_location": prior or None,
        "unit": enc.location.unit,
        "facility": enc.location.facility,
        "attending": attending or None,
        "subject": (subject.text or subject.code) if subject is not None else None,
        "subject_status": subject.status if subject is not None else None,
        "observations": _join([_observation_line(o) for o in observations]),
        "abnormal_observations": _join([_observation_line(o) for o in observations if _is_abnormal(o)]),
        "critical_observations": _join([_observation_line(o) for o in observations if o.critical]),
        "severity": event.severity.value,
        "type": event.type.value,
        "time": (None if level == PhiLevel.NONE else event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    }


_SELECTIONS: dict[str, Callable[[Observation], bool]] = {
    "observations": lambda o: True,
    "abnormal_observations": _is_abnormal,
    "critical_observations": lambda o: o.critical,
}


def _tidy(text: str) -> str:
    return _SPACES_RE.sub(" ", text).strip()


def _sentence(text: str) -> str:
    text = _tidy(text)
    # Templates start some sentences with an optional part ("[{patient_class} ]admission"):
    # whichever word ends up first is capitalised.
    return text[:1].upper() + text[1:]


def compose(
    event: ClinicalEvent, level: PhiLevel, templates: Templates
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Title, summary and facts of ``event`` for a channel at ``level``, from the reduced event only."""
    view = _reduce(event, level)
    values = _values(view, level, templates._patient_classes)
    wording, fact_specs = templates._wording(view)
    if wording is None:
        title, summary = view.type.value, ""
    else:
        title, summary = _sentence(wording.title.render(values)), _sentence(wording.summary.render(values))
    facts: list[tuple[str, str]] = []
    observations = view.subject.observations if view.subject is not None else ()
    for fact in fact_specs:
        if fact.for_each is None:
            value = _tidy(fact.value.render(values))
            if value:
                facts.append((fact.label, value))
            continue
        keep = _SELECTIONS[fact.for_each]
        for o in observations:
            if keep(o):
                value = _tidy(fact.value.render({**values, "observation": _observation_line(o)}))
                if value:
                    facts.append((fact.label, value))
    return title, summary, tuple(facts)
