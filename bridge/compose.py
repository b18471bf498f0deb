"""What a channel may see of an event, and how it reads: PHI reduction and the wording from templates.

:func:`redact` reduces an event to a channel's PHI level (HIPAA minimum
necessary, REFERENCE.md §5); :func:`compose` words the reduced event with the
clinician-reviewed templates in ``mappings/templates/<locale>.yaml``, in the
channel's locale and for its kind (the adapter type). Placeholders are always
filled from the reduced event, so a template cannot leak what the channel's
level removed.

The template language is logic-less, and so sandboxed by construction:
``{placeholder}`` from a fixed list and optional ``[ ... ]`` parts, nothing
else (no expressions, no attribute access, no code). A site can reword
anything without being able to reach a value the list does not offer. A
wording may have variants by the subject's status (``by_status``: a list of
status codes and the title or summary for them), a lookup rather than logic:
an order discontinued (DC) does not read as one cancelled.

Every level shows the minimum: the event, the location down to room and bed,
what happened, the severity and the time. What each level adds or removes:

* ``full``: everything.
* ``limited``: initials instead of names and the MRN's last 4 characters
  (``…2345``, kept only when the MRN is longer than 4), sex, attending,
  clinical content; no birth date, no full MRN, no other identifiers, no
  visit number. The identities of a merge are cut to their last 4 as well.
* ``none``: no patient at all (no name, MRN, birth date, sex, identifiers),
  no visit number, no attending, no dates of admission or discharge, no
  ``detail`` (free text), and result lines cut to their name, flags and
  critical mark (no values).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypeAlias

from bridge.channels import PhiLevel
from bridge.errors import MappingError
from bridge.events import (
    ClinicalEvent,
    Encounter,
    EventType,
    Identifier,
    Lifecycle,
    Location,
    Observation,
    Patient,
    Subject,
    link_types,
    type_matches,
)
from bridge.mapping import layer, mappings_dir, read_schema, read_yaml, sender_local, validate_document

__all__ = ["Templates", "compose", "redact", "template_locales"]

#: OBX-8 flag (Table 0078) that says the line is normal; every other flag makes it worth a mention.
_NORMAL_FLAGS = frozenset({"N", ""})
#: Links that name a patient identity ("authority|value"): a merge's prior and surviving record.
_IDENTITY_LINKS = ("replaces", "replaced_by")
#: Marks a value cut to its end, as in "…2345".
_TAIL = "…"


# --- redaction ------------------------------------------------------------------------------------


def _pseudonym(value: str, hash_key: bytes | None) -> str:
    data = value.encode("utf-8")
    digest = hmac.new(hash_key, data, hashlib.sha256) if hash_key else hashlib.sha256(data)
    return f"k:{digest.hexdigest()[:32]}"


def _initial(name: str | None) -> str | None:
    letter = next((c for c in name or "" if c.isalpha()), None)
    return letter.upper() if letter is not None else None


def _last4(value: str) -> str | None:
    # Four characters of a short MRN would be most of it: those are not shown at all.
    value = value.strip()
    return f"{_TAIL}{value[-4:]}" if len(value) > 4 else None


def _mrn_tail(mrn: Identifier | None) -> Identifier | None:
    tail = _last4(mrn.value) if mrn is not None else None
    return None if mrn is None or tail is None else mrn.model_copy(update={"value": tail})


def _reduce(event: ClinicalEvent, level: PhiLevel) -> ClinicalEvent:
    """The event's content at ``level``: what templates may read. Keys untouched; links cut to what is shown."""
    if level == PhiLevel.FULL:
        return event
    p = event.patient
    enc = event.encounter
    subject = event.subject
    links = {name: value for name, value in event.links.items() if link_types(value) is not None}
    if level == PhiLevel.LIMITED:
        patient = Patient(mrn=_mrn_tail(p.mrn), given=_initial(p.given), family=_initial(p.family), sex=p.sex)
        encounter = enc.model_copy(update={"visit_number": None})
        for name in _IDENTITY_LINKS:
            tail = _last4(event.links[name].rpartition("|")[2]) if name in event.links else None
            if tail is not None:
                links[name] = tail
    else:
        patient = Patient()
        encounter = Encounter(patient_class=enc.patient_class, location=enc.location, prior_location=enc.prior_location)
        if subject is not None:
            subject = subject.model_copy(
                update={
                    # Free text may name the patient: values and details stay above this level.
                    "detail": None,
                    "observations": tuple(
                        Observation(code=o.code, text=o.text, flags=o.flags, critical=o.critical)
                        for o in subject.observations
                    ),
                }
            )
    return event.model_copy(update={"patient": patient, "encounter": encounter, "subject": subject, "links": links})


def redact(event: ClinicalEvent, level: PhiLevel, *, hash_key: bytes | None = None) -> ClinicalEvent:
    """The event as a channel at ``level`` may see it (see the module docstring for each level)."""
    if level == PhiLevel.FULL:
        return event
    reduced = _reduce(event, level)
    subject: Subject | None = reduced.subject
    if subject is not None and subject.key is not None:
        subject = subject.model_copy(update={"key": _pseudonym(subject.key, hash_key)})
    # A link to event types carries no PHI; a webhook receiver needs it readable to know what to strike.
    links = {
        name: value if link_types(value) is not None else _pseudonym(value, hash_key)
        for name, value in event.links.items()
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
        "bed",
        "attending",
        "subject",
        "subject_status",
        "detail",
        "start",
        "end",
        "observations",
        "abnormal_observations",
        "critical_observations",
        "cancels",
        "merged_from",
        "merged_into",
        "severity",
        "type",
        "time",
    }
)

#: Wording variants of an entry, by the lifecycle they word.
_VARIANTS = {"cancelled": Lifecycle.CANCEL, "corrected": Lifecycle.CORRECT, "updated": Lifecycle.UPDATE}
_LABELS = {"corrected": Lifecycle.CORRECT, "cancelled": Lifecycle.CANCEL}
_DEFAULT_FORMATS = {"time": "%Y-%m-%d %H:%M %Z", "date": "%Y-%m-%d"}

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
    #: Event type globs the line is for; empty: every type.
    types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Wording:
    title: _Text
    summary: _Text
    #: ``by_status``: (statuses, wording) in file order; statuses casefolded.
    by_status: tuple[tuple[frozenset[str], _Wording], ...] = ()

    def for_status(self, status: str | None) -> _Wording:
        """The wording for a subject of ``status``: the first ``by_status`` item that lists it, else this one."""
        key = (status or "").strip().casefold()
        return next((wording for statuses, wording in self.by_status if key in statuses), self)


@dataclass(frozen=True, slots=True)
class _Entry:
    wording: dict[Lifecycle, _Wording]
    facts: tuple[_Fact, ...] | None


@dataclass(frozen=True, slots=True)
class _Locale:
    """One compiled locale file."""

    entries: dict[str, _Entry]
    #: Channel kind → event type → the entry with that kind's overrides layered in.
    kinds: dict[str, dict[str, _Entry]]
    facts: tuple[_Fact, ...]
    labels: dict[Lifecycle, str]
    event_names: dict[str, str]
    patient_classes: dict[str, str]
    sexes: dict[str, str]
    severities: dict[str, str]
    formats: dict[str, str]

    def entry(self, type_name: str, kind: str | None) -> _Entry | None:
        own = self.kinds.get(kind, {}).get(type_name) if kind is not None else None
        return own if own is not None else self.entries.get(type_name)


def _templates_dir() -> Path:
    return mappings_dir() / "templates"


def _site_files(extra_paths: Iterable[Path]) -> list[Path]:
    """``templates/<locale>.yaml`` in each extra mapping folder, in the order given."""
    return [p for extra in extra_paths if extra.is_dir() for p in sorted((extra / "templates").glob("*.yaml"))]


def template_locales(extra_paths: Iterable[Path] = ()) -> frozenset[str]:
    """Locales with a wording file: the bundled ones and the site's (``templates/<locale>.yaml`` in extra folders)."""
    files = [*_templates_dir().glob("*.yaml"), *_site_files(extra_paths)]
    return frozenset(p.stem for p in files)


class Templates:
    """The compiled wording of every locale, from ``mappings/templates/`` and the site's overrides."""

    def __init__(self, locales: dict[str, _Locale], *, timezone: tzinfo = UTC) -> None:
        self._locales = locales
        self.timezone = timezone

    @classmethod
    def load(cls, extra_paths: Iterable[Path] = (), *, timezone: tzinfo = UTC) -> Templates:
        """The bundled locales, each with the site's ``templates/<locale>.yaml`` layered over it.

        A site file is layered key by key (``bridge.mapping.layer``): an event type's
        entry changes only in the keys the site gives; a site file for a locale that
        is not bundled is a new locale, complete on its own. ``timezone`` is where
        ``{time}``, ``{start}`` and ``{end}`` are told. Raises MappingError naming the file (the
        last one layered) and the JSON path.
        """
        files: dict[str, list[Path]] = {}
        for path in [*sorted(_templates_dir().glob("*.yaml")), *_site_files(extra_paths)]:
            files.setdefault(path.stem, []).append(path)
        schema = read_schema(_templates_dir() / "schema.json")
        locales: dict[str, _Locale] = {}
        for locale, paths in files.items():
            doc: Any = None
            for path in paths:
                part = read_yaml(path)
                doc = part if doc is None else layer(doc, part)
            source = str(paths[-1])
            validate_document(doc, schema, source)
            locales[locale] = _compile_locale(doc, source)
        return cls(locales, timezone=timezone)

    @classmethod
    def from_documents(cls, docs: dict[str, dict[str, Any]], *, timezone: tzinfo = UTC) -> Templates:
        """Compile already schema-valid documents, by locale (placeholders are checked here)."""
        return cls(
            {locale: _compile_locale(doc, f"templates/{locale}") for locale, doc in docs.items()}, timezone=timezone
        )

    @property
    def locales(self) -> frozenset[str]:
        return frozenset(self._locales)

    def covers(self, event_type: EventType, locale: str = "en") -> bool:
        """True when the event type has its own wording in ``locale`` (else a generic one is used)."""
        return event_type.value in self._locale(locale).entries

    def label(self, lifecycle: Lifecycle, locale: str = "en") -> str | None:
        """How a post of ``lifecycle`` is marked (corrections and cancellations), or None."""
        return self._locale(locale).labels.get(lifecycle)

    def _locale(self, locale: str) -> _Locale:
        try:
            return self._locales[locale]
        except KeyError:
            known = ", ".join(sorted(self._locales))
            raise MappingError(f"no templates for locale {locale!r} (known: {known})") from None


def _compile_locale(doc: dict[str, Any], source: str) -> _Locale:
    entries = {name: _compile_entry(spec, source, f"$.events['{name}']") for name, spec in doc["events"].items()}
    kinds: dict[str, dict[str, _Entry]] = {}
    for kind, spec in doc.get("channels", {}).items():
        kinds[kind] = {}
        for name, patch in spec["events"].items():
            where = f"$.channels.{kind}.events['{name}']"
            merged = layer(doc["events"].get(name, {}), patch)
            if "title" not in merged:
                raise MappingError(
                    f"{name} has no default entry to layer over: give a title", source=source, path=where
                )
            kinds[kind][name] = _compile_entry(merged, source, where)
    return _Locale(
        entries=entries,
        kinds=kinds,
        facts=_compile_facts(doc["facts"], source, "$.facts"),
        labels={_LABELS[key]: text for key, text in doc["labels"].items()},
        event_names=dict(doc.get("event_names", {})),
        patient_classes=dict(doc.get("patient_classes", {})),
        sexes=dict(doc.get("sexes", {})),
        severities=dict(doc.get("severities", {})),
        formats={**_DEFAULT_FORMATS, **doc.get("formats", {})},
    )


def _compile_entry(spec: dict[str, Any], source: str, where: str) -> _Entry:
    wording = {Lifecycle.NEW: _compile_wording(spec, source, where)}
    for key, lifecycle in _VARIANTS.items():
        if key in spec:
            wording[lifecycle] = _compile_wording(spec[key], source, f"{where}.{key}")
    own = _compile_facts(spec["facts"], source, f"{where}.facts") if "facts" in spec else None
    return _Entry(wording, own)


def _compile_wording(spec: dict[str, Any], source: str, where: str) -> _Wording:
    # A by_status item replaces the title, the summary or both; what it does not give is the wording's own.
    by_status = tuple(
        (
            frozenset(status.strip().casefold() for status in item["status"]),
            _compile_wording(
                {"title": item.get("title", spec["title"]), "summary": item.get("summary", spec.get("summary", ""))},
                source,
                f"{where}.by_status[{i}]",
            ),
        )
        for i, item in enumerate(spec.get("by_status", ()))
    )
    return _Wording(
        title=_compile_text(spec["title"], source, f"{where}.title", _PLACEHOLDERS),
        summary=_compile_text(spec.get("summary", ""), source, f"{where}.summary", _PLACEHOLDERS),
        by_status=by_status,
    )


def _compile_facts(specs: list[dict[str, Any]], source: str, where: str) -> tuple[_Fact, ...]:
    facts: list[_Fact] = []
    for i, spec in enumerate(specs):
        for_each = spec.get("for_each")
        names = _PLACEHOLDERS | {"observation"} if for_each else _PLACEHOLDERS
        value = _compile_text(spec["value"], source, f"{where}[{i}].value", names)
        facts.append(_Fact(spec["label"], value, for_each, tuple(spec.get("types", ()))))
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


def _bed(loc: Location) -> str | None:
    # "4E-12": how a ward names a bed; a unit alone is not a bed.
    if not (loc.room or loc.bed):
        return None
    return "-".join(p for p in (loc.unit, loc.room, loc.bed) if p)


def _identity(link: str | None) -> str | None:
    """A merge link as shown: "value (authority)" from "authority|value"; a cut "…2345" as it is."""
    if not link:
        return None
    authority, _, value = link.rpartition("|")
    return f"{value} ({authority})" if authority else value


def _cancels(link: str | None, names: dict[str, str]) -> str | None:
    types = link_types(link) if link else None
    if types is None:
        return None
    return "/".join(dict.fromkeys(names.get(t, t) for t in types))


def _when(text: str | None, formats: dict[str, str], zone: tzinfo) -> str | None:
    """An ISO date or date-time in the locale's format; a date as it is, a time told in ``zone`` (see _moment)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return text
    if len(text) <= 10:
        # A date is a day, wherever it is read: never shifted by a time zone.
        return _moment(value, formats["date"], None)
    return _moment(value, formats["time"], zone)


def _moment(value: datetime, fmt: str, zone: tzinfo | None) -> str:
    """``value`` in ``zone`` (None: as it is), in the locale's format ``fmt``.

    HL7 mapping gives times without offset the sender's zone, so a naive time is rare (a FHIR
    dateTime without offset, an event made by hand): it is taken to be in ``zone`` already, by
    the mapping's rule for daylight saving time (bridge.mapping.sender_local): the offset before
    the change, so a time in the repeated hour is its first occurrence and one in the skipped
    hour (02:30 on the day clocks go forward) is told as the moment it names (03:30), never as a
    time no clock showed. A time the zone cannot hold (year 9999 told west of UTC) is shown in
    ISO 8601 as it is: a post must never fail over the way a time is told.
    """
    try:
        if zone is not None:
            if value.tzinfo is None:
                value = sender_local(value, zone)
            value = value.astimezone(zone)
        return value.strftime(fmt)
    except (OverflowError, ValueError):
        return value.isoformat()


def _values(event: ClinicalEvent, level: PhiLevel, loc: _Locale, zone: tzinfo) -> dict[str, str | None]:
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
        "birth_date": _when(p.birth_date, loc.formats, zone),
        "sex": loc.sexes.get(p.sex, p.sex) if p.sex else None,
        "visit_number": enc.visit_number,
        "patient_class": loc.patient_classes.get(patient_class, patient_class) if patient_class else None,
        "location": enc.location.display or None,
        "prior_location": prior or None,
        "unit": enc.location.unit,
        "facility": enc.location.facility,
        "bed": _bed(enc.location),
        "attending": attending or None,
        "subject": (subject.text or subject.code) if subject is not None else None,
        "subject_status": subject.status if subject is not None else None,
        "detail": subject.detail if subject is not None else None,
        "start": _when(subject.start, loc.formats, zone) if subject is not None else None,
        "end": _when(subject.end, loc.formats, zone) if subject is not None else None,
        "observations": _join([_observation_line(o) for o in observations]),
        "abnormal_observations": _join([_observation_line(o) for o in observations if _is_abnormal(o)]),
        "critical_observations": _join([_observation_line(o) for o in observations if o.critical]),
        "cancels": _cancels(event.links.get("cancels"), loc.event_names),
        "merged_from": _identity(event.links.get("replaces")),
        "merged_into": _identity(event.links.get("replaced_by")),
        "severity": loc.severities.get(event.severity.value, event.severity.value),
        "type": event.type.value,
        "time": _moment(event.occurred_at, loc.formats["time"], zone),
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
    event: ClinicalEvent,
    level: PhiLevel,
    templates: Templates,
    *,
    locale: str = "en",
    kind: str | None = None,
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """Title, summary and facts of ``event`` for a channel at ``level``, from the reduced event only.

    ``locale`` picks the wording file, ``kind`` (the channel's adapter type) its
    overrides for that kind of channel, if it has any.
    """
    loc = templates._locale(locale)
    view = _reduce(event, level)
    values = _values(view, level, loc, templates.timezone)
    entry = loc.entry(view.type.value, kind)
    if entry is None:
        title, summary, fact_specs = view.type.value, "", loc.facts
    else:
        wording = entry.wording.get(view.lifecycle, entry.wording[Lifecycle.NEW])
        wording = wording.for_status(view.subject.status if view.subject is not None else None)
        title, summary = _sentence(wording.title.render(values)), _sentence(wording.summary.render(values))
        fact_specs = entry.facts if entry.facts is not None else loc.facts
    facts: list[tuple[str, str]] = []
    observations = view.subject.observations if view.subject is not None else ()
    for fact in fact_specs:
        if fact.types and not type_matches(view.type.value, fact.types):
            continue
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
