"""Declarative HL7 v2 → ClinicalEvent mapping: load, check and compile ``mappings/hl7v2/*.yaml``; apply.

A mapping file is data only (its format is documented in ``mappings/schema.json``
and by the bundled files). Loading validates every file against the JSON Schema
and compiles each field path, template and rule into closures once, so mapping
a message does no path or template parsing. Mapping never raises on odd
content: a missing segment or an empty field is a ``None`` field, and a message
no file matches yields no events (the caller journals it as unmapped).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any, Literal, TypeVar

import jsonschema
import yaml

from bridge.assembly import EVENT_FACTS, LINK_NAMES, Facts, Found, Observation, Parts, Verdict, assemble_event
from bridge.config import MappingConfig
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity
from bridge.hl7.reader import Delimiters, Message, Segment, unescape

__all__ = [
    "Mapper",
    "MappingOptions",
    "compile_mappings",
    "hl7_date",
    "hl7_datetime",
    "hl7_timestamp",
    "layer",
    "load_document",
    "load_mappings",
    "mappings_dir",
    "read_schema",
    "read_yaml",
    "sender_local",
    "validate_document",
]


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Site settings that apply across mapping files."""

    #: OBX-8 flags (Table 0078) that make an observation critical.
    critical_flags: frozenset[str] = frozenset({"HH", "LL", "AA"})
    #: Extra mapping files or folders of ``*.yaml``, after the bundled ones (see :meth:`Mapper.load`).
    extra_paths: tuple[Path, ...] = ()
    #: Assigning authorities (HL7 CX-4.1; FHIR Identifier.system) of this site's MRNs, preferred in that order
    #: when a patient carries MRs of several authorities (a repetition choice with ``authority``).
    mrn_authorities: tuple[str, ...] = ()
    #: Time zone of HL7 times without an offset: the sender's local time (``mapping.sender_timezone``).
    sender_timezone: tzinfo = UTC

    @classmethod
    def from_config(cls, cfg: MappingConfig) -> MappingOptions:
        return cls(
            critical_flags=frozenset(cfg.critical_flags),
            extra_paths=tuple(cfg.extra_paths),
            mrn_authorities=tuple(cfg.mrn_authorities),
            sender_timezone=cfg.sender_zone,
        )


_DEFAULT_OPTIONS = MappingOptions()


def _extra_files(family: Literal["hl7v2", "fhir"], extra_paths: Iterable[Path]) -> list[Path]:
    """The site's mapping files of one family, in the order given (folders by file name).

    The one rule for both families: a file belongs to FHIR when its folder is named
    ``fhir``, else to HL7 v2. An extra folder named ``fhir`` holds FHIR files; any
    other extra folder holds HL7 files, plus the bundled layout's ``hl7v2/`` and
    ``fhir/`` subfolders.
    """
    found: list[Path] = []
    for extra in extra_paths:
        if extra.is_dir():
            candidates = [*sorted(extra.glob("*.yaml")), *sorted((extra / family).glob("*.yaml"))]
        else:
            candidates = [extra]
        found.extend(p for p in candidates if (p.parent.name == "fhir") == (family == "fhir"))
    return found


def load_mappings(
    family: Literal["hl7v2", "fhir"], extra_paths: Iterable[Path], schema_path: Path
) -> list[tuple[str, Any]]:
    """(source, validated document) of every mapping file of one family, in the order they are tried.

    Bundled files come first, by file name. A site file is then one of three things:

    * an **overlay**, when it has ``extends: <file name>``: it is layered over that
      earlier file in place, so a site changes a built-in mapping without copying it.
      Mappings merge key by key, recursively; a list or a value replaces the one
      below; ``null`` removes a key; ``rules_first`` is a list of rules tried before
      the file's own rules (e.g. to silence one trigger, or map a Z-segment);
    * a **replacement**, when it has the name of an earlier file and no ``extends``;
    * a **new file**, tried after the others.

    Any file, bundled or site, may say ``base: <file name>`` instead: it is then a
    mapping of its own that starts from that file's resolved document and is layered
    with its own keys by the overlay's rules (the base file stays as it is). A bundled
    file's base is a bundled file (a base may have a base: any depth, any order); a
    site file's base is a file loaded before it, with the overlays before it. A file
    whose name starts with ``_`` is a **fragment** (blocks several files share): only
    a base, never a mapping of its own, so it is neither tried nor validated alone.

    Every resulting mapping is validated against ``schema_path``. Raises MappingError
    naming the file (for an overlay, the overlay) and the JSON path; an error in a rule
    that an overlay or a based file put first names that file and ``$.rules_first[i]``.
    """
    return [(source, doc) for source, doc, _ in _load_mappings(family, extra_paths, schema_path)]


_Compiled = TypeVar("_Compiled")


def compile_mappings(
    family: Literal["hl7v2", "fhir"],
    extra_paths: Iterable[Path],
    schema_path: Path,
    compile_file: Callable[[dict[str, Any], str], _Compiled],
) -> list[_Compiled]:
    """:func:`load_mappings`, each document then compiled by ``compile_file(doc, source)``.

    A compile error in a rule names the file the rule came from, as validation errors do.
    """
    compiled: list[_Compiled] = []
    for source, doc, origins in _load_mappings(family, extra_paths, schema_path):
        with origins.located():
            compiled.append(compile_file(doc, source))
    return compiled


def _load_mappings(
    family: Literal["hl7v2", "fhir"], extra_paths: Iterable[Path], schema_path: Path
) -> list[tuple[str, Any, _RuleOrigins]]:
    """:func:`load_mappings`, with where the rules of each document come from."""
    schema = read_schema(schema_path)
    bundled = {p.name: (str(p), read_yaml(p)) for p in sorted((mappings_dir() / family).glob("*.yaml"))}
    resolved: dict[str, tuple[str, Any]] = {}
    for name in bundled:
        _resolve_bundled(name, bundled, resolved, ())
    docs = {name: resolved[name] for name in bundled}  # by file name: a base resolves before the files on it
    origins = {name: _RuleOrigins((), source) for name, (source, _) in docs.items()}
    for p in _extra_files(family, extra_paths):
        source, doc = str(p), read_yaml(p)
        target, base_name = (doc.get("extends"), doc.get("base")) if isinstance(doc, dict) else (None, None)
        if target is not None and base_name is not None:
            raise MappingError(
                "a file either extends another in place or is a mapping with a base, not both",
                source=source,
                path="$.base",
            )
        changed = p.name if target is None else target
        if isinstance(changed, str) and _is_fragment(changed) and changed in docs:
            # The files based on it were resolved when it was loaded: changing it now would change none of them.
            raise MappingError(
                f"{changed} is a fragment, already resolved into the files based on it: give the site a fragment"
                f" of its own ('base: {changed}'), or change the files based on it",
                source=source,
                path="$" if target is None else "$.extends",
            )
        if target is not None:
            name = _known(target, docs, source, "extends", "a mapping file loaded before it")
            docs[name] = (source, _layered(docs[name][1], doc, source))
            origins[name] = origins[name].layered(doc, source)
        elif base_name is not None:
            name = _known(base_name, docs, source, "base", "a mapping file loaded before it")
            docs[p.name] = (source, _layered(docs[name][1], doc, source))
            origins[p.name] = origins[name].layered(doc, source)
        else:
            docs[p.name] = (source, doc)
            origins[p.name] = _RuleOrigins((), source)
    mappings = [(*entry, origins[name]) for name, entry in docs.items() if not _is_fragment(name)]
    for source, doc, rules_from in mappings:
        with rules_from.located():
            validate_document(doc, schema, source)
    return mappings


_RULE_PATH_RE = re.compile(r"^\$\.rules\[(\d+)\](.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _RuleOrigins:
    """Which file each rule of a layered document comes from, so an error names that file.

    ``first``: the ``rules_first`` lists in front, frontmost first, as (file, number of rules);
    ``rest``: the file whose own ``rules`` follow them.
    """

    first: tuple[tuple[str, int], ...]
    rest: str

    def layered(self, doc: Any, source: str) -> _RuleOrigins:
        """The origins after ``doc`` (read from ``source``) is layered over this document."""
        count = len(doc.get("rules_first") or ()) if isinstance(doc, dict) else 0
        own = ((source, count),) if count else ()
        if isinstance(doc, dict) and "rules" in doc:
            return _RuleOrigins(own, source)  # its own rules (or none: null) replace those below
        return _RuleOrigins((*own, *self.first), self.rest)

    @contextlib.contextmanager
    def located(self) -> Iterator[None]:
        """Re-raise a MappingError at ``$.rules[i]`` of the merged document as the file and path of that rule."""
        try:
            yield
        except MappingError as exc:
            moved = self._moved(exc)
            if moved is None:
                raise
            raise moved from exc

    def _moved(self, exc: MappingError) -> MappingError | None:
        m = _RULE_PATH_RE.match(exc.path)
        if m is None or (not self.first and self.rest == exc.source):
            return None
        index, rest = int(m.group(1)), m.group(2)
        message = str(exc).removeprefix(f"{exc.source}:{exc.path}: " if exc.source else f"{exc.path}: ")
        for source, count in self.first:
            if index < count:
                return MappingError(message, source=source, path=f"$.rules_first[{index}]{rest}")
            index -= count
        return MappingError(message, source=self.rest, path=f"$.rules[{index}]{rest}")


def _is_fragment(name: str) -> bool:
    return name.startswith("_")


def _known(name: object, docs: dict[str, tuple[str, Any]], source: str, key: str, what: str) -> str:
    """``name`` when it is one of ``docs``; else a MappingError naming ``source`` and ``$.<key>``."""
    if not isinstance(name, str) or name not in docs:
        known = ", ".join(sorted(docs))
        raise MappingError(f"{key} {name!r}, which is not {what} (known: {known})", source=source, path=f"$.{key}")
    return name


def _resolve_bundled(
    name: str, bundled: dict[str, tuple[str, Any]], done: dict[str, tuple[str, Any]], chain: tuple[str, ...]
) -> Any:
    """The document of bundled file ``name`` with its base (and its base's base, ...) under it, memoised in ``done``."""
    if name in done:
        return done[name][1]
    source, doc = bundled[name]
    base_name = doc.get("base") if isinstance(doc, dict) else None
    if base_name is not None:
        if base_name in (*chain, name):
            cycle = " -> ".join((*chain, name, base_name))
            raise MappingError(f"base {base_name!r} makes a cycle: {cycle}", source=source, path="$.base")
        below = _resolve_bundled(
            _known(base_name, bundled, source, "base", "a bundled file"), bundled, done, (*chain, name)
        )
        doc = _layered(below, doc, source)
    done[name] = (source, doc)
    return doc


def _layered(below: Any, doc: dict[str, Any], source: str) -> Any:
    """An overlay's or a based file's ``doc`` layered over a copy of ``below`` (which other files may share)."""
    rules_first = doc.get("rules_first", [])
    if not isinstance(rules_first, list):
        raise MappingError("rules_first must be a list of rules", source=source, path="$.rules_first")
    merged = layer(copy.deepcopy(below), {k: v for k, v in doc.items() if k not in ("extends", "base", "rules_first")})
    if rules_first and isinstance(merged, dict):
        merged["rules"] = [*rules_first, *(merged.get("rules") or [])]
    return merged


def layer(base: Any, overlay: Any) -> Any:
    """``overlay`` merged over ``base``: mappings key by key, recursively; anything else replaced; None removes."""
    if not isinstance(base, dict) or not isinstance(overlay, dict):
        return overlay
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = layer(base.get(key), value)
    return merged


def mappings_dir() -> Path:
    """The folder of bundled mappings: ``bridge/_mappings`` in a wheel, else ``<repo>/mappings``."""
    package = Path(__file__).resolve().parent
    wheel = package / "_mappings"
    return wheel if wheel.is_dir() else package.parent / "mappings"


def load_document(path: Path, schema_path: Path) -> Any:
    """Read a YAML file and validate it against a JSON Schema.

    Raises MappingError naming the file and the JSON path of the first problem.
    """
    doc = read_yaml(path)
    validate_document(doc, read_schema(schema_path), str(path))
    return doc


def read_schema(schema_path: Path) -> Any:
    """A JSON Schema file; MappingError when it cannot be read."""
    try:
        return json.loads(schema_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MappingError(f"cannot read schema: {exc}", source=str(schema_path)) from exc


def read_yaml(path: Path) -> Any:
    """A YAML file; MappingError naming the file (and line) when it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise MappingError(f"not valid YAML: {exc}", source=str(path), path=where) from exc


def validate_document(doc: Any, schema: Any, source: str) -> None:
    """Raise MappingError naming ``source`` and the JSON path of the first problem of ``doc`` against ``schema``."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        raise MappingError(error.message, source=source, path=error.json_path)


# --- HL7 dates and times (DTM/TS: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]) -------------------

_TS_RE = re.compile(r"^(\d{4}(?:\d\d){0,5})(?:\.(\d{1,4}))?(?:([+-])(\d\d)(\d\d))?$")


def _ts_parts(text: str) -> tuple[datetime, int, bool] | None:
    """(value, number of date/time parts given: 1 year ... 6 seconds, whether an offset was given), or None."""
    m = _TS_RE.match(text.strip())
    if m is None:
        return None
    digits, frac, sign, oh, om = m.groups()
    tz: timezone | None = None
    if sign is not None:
        hours, minutes = int(oh), int(om)
        if hours >= 24 or minutes >= 60:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-offset if sign == "-" else offset)
    n = len(digits)
    try:
        value = datetime(
            int(digits[:4]),
            int(digits[4:6]) if n > 4 else 1,
            int(digits[6:8]) if n > 6 else 1,
            int(digits[8:10]) if n > 8 else 0,
            int(digits[10:12]) if n > 10 else 0,
            int(digits[12:14]) if n > 12 else 0,
            int(frac.ljust(6, "0")) if frac else 0,
            tzinfo=tz,
        )
    except ValueError:
        return None
    return value, (n - 2) // 2, tz is not None


def sender_local(value: datetime, zone: tzinfo) -> datetime:
    """A naive HL7 time read as the sender's local time in ``zone``, with that moment's fixed UTC offset.

    HL7 gives a time without offset no way to tell which of two readings of the clock it means, so
    one rule settles daylight saving time, the one of zoneinfo (fold=0) and of java.time, on which
    HAPI-based engines build: the offset in force BEFORE the change.
    - Clocks go back (Europe/Berlin, 2026-10-25 03:00 CEST -> 02:00 CET): 02:15 is the first 02:15,
      +02:00 (00:15 UTC). A sender that means the second one sends the offset (``+0100``), which wins.
    - Clocks go forward (2026-03-29 02:00 CET -> 03:00 CEST): 02:30 was on no clock in that zone.
      It is read as +01:00 (01:30 UTC, told 03:30 CEST): the reading of a clock not yet put forward,
      which is how such a time is made, and the moment java.time gives it. It is kept rather than
      dropped for MSH-7: the event time (EVN-2, OBR-22) is the clinical moment, MSH-7 only when the
      message was built, and a start (AIS-4) has no other source.
    The fixed offset keeps the moment unambiguous downstream: an aware time in a gap or fold never
    compares equal to one of another zone (PEP 495), and it converts the same everywhere.
    """
    offset = value.replace(tzinfo=zone, fold=0).utcoffset()
    return value.replace(tzinfo=timezone(offset)) if offset is not None else value.replace(tzinfo=zone)


def hl7_timestamp(text: str, zone: tzinfo = UTC) -> datetime | None:
    """An aware datetime from an HL7 DTM that names at least the hour, or None.

    A value without offset is the sender's local time (HL7 v2 §2.A.22), read in ``zone`` (see
    sender_local for daylight saving time). A bare date (EVN-2 ``20261025``) is None: a day is not
    a moment, and as local midnight it would be told as ``00:00``, or on the day before in a zone
    west of the sender; the event takes the next time source (MSH-7) instead, else its receipt time.
    A value with no UTC equivalent (year 9999 at -1400, year 1 at +1400) is None too, for the
    same fallback, rather than carry a time no channel can show.
    """
    parts = _ts_parts(text)
    if parts is None or parts[1] < 4:
        return None
    value, _, aware = parts
    value = value if aware else sender_local(value, zone)
    try:
        value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None
    return value


def hl7_date(text: str) -> str:
    """ISO 8601 date (``YYYY-MM-DD``; ``YYYY-MM`` or ``YYYY`` at lower precision); raw text if unparseable."""
    parts = _ts_parts(text)
    if parts is None:
        return text
    value, given, _ = parts
    if given == 1:
        return f"{value.year:04d}"
    if given == 2:
        return f"{value.year:04d}-{value.month:02d}"
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def hl7_datetime(text: str, zone: tzinfo | None = None) -> str:
    """ISO 8601 at the precision given (a date below hours); the raw text if it is not an HL7 time.

    A time without offset is the sender's local time: with ``zone`` it takes that zone's offset
    on that day (``14:00`` in Europe/Berlin is ``14:00+01:00`` in winter), so every reader of the
    event tells the same moment; without ``zone`` it stays naive.
    """
    parts = _ts_parts(text)
    if parts is None:
        return text
    value, given, aware = parts
    if given <= 3:
        return hl7_date(text)
    if not aware and zone is not None:
        value = sender_local(value, zone)
    return value.isoformat(timespec="seconds" if value.microsecond == 0 else "milliseconds")


def _as_date(text: str, zone: tzinfo) -> str:
    return hl7_date(text)


def _as_datetime(text: str, zone: tzinfo) -> str:
    return hl7_datetime(text, zone)


# --- compiled pieces ------------------------------------------------------------------------------


class _Ctx:
    """What compiled getters read: the message, the segments in scope, the current item and facts so far."""

    __slots__ = (
        "authorities",
        "fields",
        "group",
        "item",
        "item_name",
        "message",
        "observations",
        "scope",
        "trigger",
        "zone",
    )

    def __init__(
        self,
        message: Message,
        trigger: str,
        scope: dict[str, Segment],
        group: int,
        authorities: tuple[str, ...] = (),
        zone: tzinfo = UTC,
    ) -> None:
        self.message = message
        self.authorities = authorities
        #: Where times without an offset are read (the sender's time zone).
        self.zone = zone
        self.trigger = trigger
        self.scope = scope
        self.group = group
        self.item: Segment | None = None
        self.item_name = ""
        self.observations: list[Observation] = []
        self.fields: Facts = {}

    def seg(self, name: str) -> Segment | None:
        if self.item is not None and name == self.item_name:
            return self.item
        return self.scope.get(name)


Getter = Callable[[_Ctx], "str | None"]
ListGetter = Callable[[_Ctx], list[str]]
Cond = Callable[[_Ctx], bool]
CompositeGetter = Callable[[_Ctx], list[Parts]]


_PATH_RE = re.compile(r"^([A-Z][A-Z0-9]{2})-([1-9]\d*)(?:\[([1-9]\d*)\])?(?:\.([1-9]\d*)(?:\.([1-9]\d*))?)?$")
_PART_RE = re.compile(r"^([A-Z]{2,3})-([1-9]\d*)(?:\.([1-9]\d*))?$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")

#: Placeholders of value templates besides HL7 paths: the 1-based number of the group in the message.
_VALUE_NAMES = frozenset({"group"})
#: Placeholders of key and link templates besides HL7 paths: facts of the event being built.
_EVENT_NAMES = EVENT_FACTS | {"group"}
#: The facts that are the event's links: rendered after the thread key and the links, before the dedup key.
_LINK_NAMES = frozenset(f"links.{name}" for name in LINK_NAMES)


def _clean(value: str) -> str | None:
    value = value.strip()
    # "" (two double quotes) is HL7's explicit null (v2 §2.5.3): no value, same as empty.
    return value if value and value != '""' else None


@dataclass(frozen=True, slots=True)
class _Path:
    segment: str
    field: int
    rep: int | None
    component: int
    sub: int


class _Compiler:
    """Turns one validated mapping document into closures; errors name the file and the JSON path."""

    def __init__(self, source: str, mrn_repetition: dict[str, Any] | None = None) -> None:
        self.source = source
        #: The file's ``mrn_repetition``: the choice that ``repetition: mrn`` names.
        self.mrn_repetition = mrn_repetition

    def fail(self, where: str, message: str) -> MappingError:
        return MappingError(message, source=self.source, path=where)

    # paths and templates

    def path(self, text: str, where: str) -> _Path:
        m = _PATH_RE.match(text)
        if m is None:
            raise self.fail(where, f"not an HL7 path like PID-3[1].4.1: {text!r}")
        seg, fld, rep, comp, sub = m.groups()
        return _Path(seg, int(fld), int(rep) if rep else None, int(comp or 0), int(sub or 0))

    def path_getter(self, p: _Path) -> Getter:
        name, fld, rep, comp, sub = p.segment, p.field, p.rep or 1, p.component, p.sub

        def get(ctx: _Ctx) -> str | None:
            seg = ctx.seg(name)
            return None if seg is None else _clean(seg.get_rep(fld, rep, comp, sub))

        return get

    def reps_getter(self, p: _Path, where: str) -> ListGetter:
        if p.rep is not None:
            raise self.fail(where, "a path read with 'repetitions: all' must not name a repetition")
        name, fld, comp, sub = p.segment, p.field, p.component, p.sub

        def get(ctx: _Ctx) -> list[str]:
            seg = ctx.seg(name)
            if seg is None:
                return []
            values = (_clean(seg.get_rep(fld, r, comp, sub)) for r in range(1, len(seg.repetitions(fld)) + 1))
            return [v for v in values if v is not None]

        return get

    def template(self, text: str, where: str, names: frozenset[str]) -> Getter:
        """A template whose value exists only when every placeholder has one."""
        parts: list[str | Getter] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            parts.append(text[pos : m.start()])
            name = m.group(1).strip()
            if name in names:
                parts.append(_field_getter(name))
            elif _PATH_RE.match(name):
                parts.append(self.path_getter(self.path(name, where)))
            else:
                known = ", ".join(sorted(names))
                raise self.fail(where, f"unknown placeholder {{{name}}} (an HL7 path or one of: {known})")
            pos = m.end()
        parts.append(text[pos:])
        if any(("{" in p or "}" in p) for p in parts if isinstance(p, str)):
            raise self.fail(where, f"unbalanced braces in template {text!r}")
        literal = "".join(p for p in parts if isinstance(p, str))
        getters = [p for p in parts if not isinstance(p, str)]
        if not getters:
            return lambda ctx: literal or None

        def render(ctx: _Ctx) -> str | None:
            out: list[str] = []
            for part in parts:
                if isinstance(part, str):
                    out.append(part)
                    continue
                value = part(ctx)
                if value is None:
                    return None
                out.append(value)
            return "".join(out)

        return render

    def single(self, text: str, where: str) -> Getter:
        if "{" in text:
            return self.template(text, where, _VALUE_NAMES)
        return self.path_getter(self.path(text, where))

    # value sources: a path, a template, an object, or a list of those (fallbacks, first with a value wins)

    def alternatives(self, spec: Any, where: str) -> list[tuple[Any, str]]:
        if isinstance(spec, list):
            return [(s, f"{where}[{i}]") for i, s in enumerate(spec)]
        return [(spec, where)]

    def condition_of(self, spec: Any, where: str) -> Cond | None:
        if isinstance(spec, dict) and "if" in spec:
            return self.condition(spec["if"], f"{where}.if")
        return None

    def text(self, spec: Any, where: str) -> Getter:
        alts: list[tuple[Cond | None, Getter, Callable[[str, tzinfo], str] | None]] = []
        for alt, at in self.alternatives(spec, where):
            fmt: Callable[[str, tzinfo], str] | None = None
            if isinstance(alt, str):
                getter = self.single(alt, at)
            else:
                fmt = {"date": _as_date, "datetime": _as_datetime}.get(alt.get("as", "text"))
                froms = self.alternatives(alt["from"], f"{at}.from")
                if alt.get("repetitions") == "all":
                    join = alt.get("join", ", ")
                    getters = [self._joined(self.reps_getter(self.path(f, w), w), join) for f, w in froms]
                else:
                    getters = [self.single(f, w) for f, w in froms]
                getter = _first_of(getters)
            alts.append((self.condition_of(alt, at), getter, fmt))
        if len(alts) == 1 and alts[0][0] is None and alts[0][2] is None:
            return alts[0][1]

        def get(ctx: _Ctx) -> str | None:
            for cond, getter, fmt in alts:
                if cond is not None and not cond(ctx):
                    continue
                value = getter(ctx)
                if value is not None:
                    return fmt(value, ctx.zone) if fmt is not None else value
            return None

        return get

    @staticmethod
    def _joined(getter: ListGetter, sep: str) -> Getter:
        def get(ctx: _Ctx) -> str | None:
            return sep.join(getter(ctx)) or None

        return get

    def text_list(self, spec: Any, where: str) -> ListGetter:
        alts: list[tuple[Cond | None, ListGetter]] = []
        for alt, at in self.alternatives(spec, where):
            if isinstance(alt, str):
                one = self.single(alt, at)
                alts.append((None, _as_list(one)))
                continue
            for f, w in self.alternatives(alt["from"], f"{at}.from"):
                if alt.get("repetitions") == "all":
                    alts.append((self.condition_of(alt, at), self.reps_getter(self.path(f, w), w)))
                else:
                    alts.append((self.condition_of(alt, at), _as_list(self.single(f, w))))

        def get(ctx: _Ctx) -> list[str]:
            for cond, getter in alts:
                if cond is not None and not cond(ctx):
                    continue
                values = getter(ctx)
                if values:
                    return values
            return []

        return get

    def timestamp(self, spec: Any, where: str) -> Callable[[_Ctx], datetime | None]:
        getters = [self.text(s, w) for s, w in self.alternatives(spec, where)]

        def get(ctx: _Ctx) -> datetime | None:
            for getter in getters:
                value = getter(ctx)
                parsed = hl7_timestamp(value, ctx.zone) if value is not None else None
                if parsed is not None:
                    return parsed
            return None

        return get

    # composites (CX, XCN, PL): relative parts of one field, one repetition chosen

    def composite(
        self, spec: dict[str, Any] | list[dict[str, Any]], where: str, datatype: str, parts: Sequence[str]
    ) -> Callable[[_Ctx], list[dict[str, str | None]]]:
        """Getter of the chosen repetitions of a composite field as {part: value}; empty ones dropped.

        A list of such fields is a list of fallbacks: the first that has a value (AIL-3, else PV1-3).
        """
        if isinstance(spec, list):
            return _first_found([self.composite(s, f"{where}[{i}]", datatype, parts) for i, s in enumerate(spec)])
        p = self.path(spec["field"], f"{where}.field")
        if p.component:
            raise self.fail(f"{where}.field", "a composite 'field' names a field, not a component")
        name, fld, fixed = p.segment, p.field, p.rep
        rel: list[tuple[str, int, int]] = []
        for part in parts:
            if part in spec:
                rel.append((part, *self.part(spec[part], f"{where}.{part}", datatype)))
        choice = spec.get("repetition", "first")
        if choice == "all" and fixed is not None:
            raise self.fail(f"{where}.field", "'repetition: all' reads every repetition; the field must not name one")
        at = f"{where}.repetition"
        if choice == "mrn":
            if self.mrn_repetition is None:
                raise self.fail(at, "'repetition: mrn' names the file's mrn_repetition, and the file has none")
            choice, at = self.mrn_repetition, "$.mrn_repetition"
        ranked = self.ranking(choice, at, datatype) if isinstance(choice, dict) else None

        def read(raw: str, d: Delimiters, encoding: str) -> dict[str, str | None] | None:
            comps = raw.split(d.component)
            values = {part: _leaf(comps, c, s, d, encoding) for part, c, s in rel}
            return values if any(v is not None for v in values.values()) else None

        def get(ctx: _Ctx) -> list[dict[str, str | None]]:
            seg = ctx.seg(name)
            if seg is None:
                return []
            # One split of the raw repetition serves every part (and the 'where' test); the
            # reader's get_rep would re-split the whole field once per part.
            reps = seg.repetitions(fld)
            d, encoding = ctx.message.delimiters, ctx.message.encoding
            if fixed is not None:
                one = read(reps[fixed - 1], d, encoding) if fixed <= len(reps) else None
                return [one] if one is not None else []
            if choice == "all":
                found = (read(raw, d, encoding) for raw in reps)
                return [v for v in found if v is not None]
            candidates = range(len(reps)) if ranked is None else ranked(reps, ctx)
            for index in candidates:
                hit = read(reps[index], d, encoding)
                if hit is not None:
                    return [hit]
            return []

        return get

    def ranking(self, choice: dict[str, Any], at: str, datatype: str) -> Callable[[list[str], _Ctx], list[int]]:
        """The repetitions a ``where`` choice may take, best first (their indexes), as its schema describes.

        First those whose ``where`` part is ``in`` the wanted codes; then, with ``authority``,
        those of the site's authorities (mapping.mrn_authorities, in that order); then those
        whose part is in ``then`` or empty (when ``then`` is given); then any other. Within
        each tier the site's authorities come first, then the message's order. A repetition
        whose part matches a ``never`` pattern (``NN???`` globs) is never taken.
        """
        wc, ws = self.part(choice["where"], f"{at}.where", datatype)
        authority = self.part(choice["authority"], f"{at}.authority", datatype) if "authority" in choice else None
        wanted = frozenset(choice["in"])
        then = frozenset(choice.get("then", ()))
        never_exact = frozenset(n.upper() for n in choice.get("never", ()) if not _is_glob(n))
        never_globs = tuple(n.upper() for n in choice.get("never", ()) if _is_glob(n))

        def excluded(code: str) -> bool:
            code = code.upper()
            return code in never_exact or any(fnmatch.fnmatchcase(code, g) for g in never_globs)

        def ranked(reps: list[str], ctx: _Ctx) -> list[int]:
            d, encoding = ctx.message.delimiters, ctx.message.encoding
            site = {a: i for i, a in enumerate(ctx.authorities)}
            unranked = len(site)
            keys: list[tuple[int, int, int]] = []
            for index, raw in enumerate(reps):
                comps = raw.split(d.component)
                code = _leaf(comps, wc, ws, d, encoding)
                if code is not None and excluded(code):
                    continue
                owner = _leaf(comps, *authority, d, encoding) if authority is not None else None
                own = site.get(owner, unranked) if owner is not None else unranked
                if code in wanted:
                    tier = 0
                elif own < unranked:
                    tier = 1
                elif then and (code is None or code in then):
                    tier = 2
                else:
                    tier = 3
                keys.append((tier, own, index))
            return [index for _, _, index in sorted(keys)]

        return ranked

    def part(self, text: str, where: str, datatype: str) -> tuple[int, int]:
        m = _PART_RE.match(text)
        if m is None or m.group(1) != datatype:
            raise self.fail(where, f"not a component of the {datatype} field like {datatype}-4.1: {text!r}")
        return int(m.group(2)), int(m.group(3) or 0)

    # conditions

    def condition(self, spec: dict[str, Any], where: str) -> Cond:
        checks: list[Cond] = []
        for key, value in spec.items():
            at = f"{where}.{key}"
            if key == "trigger":
                checks.append(_trigger_in(frozenset(value)))
            elif key == "any_of":
                checks.append(_any_of([self.condition(s, f"{at}[{i}]") for i, s in enumerate(value)]))
            elif key == "not":
                checks.append(_negated(self.condition(value, at)))
            elif key == "any_observation":
                checks.append(_any_observation(self.observation_predicate(value)))
            elif key == "all_observations":
                checks.append(_all_observations(self.observation_predicate(value)))
            else:
                checks.append(_value_in(self.path_getter(self.path(key, at)), frozenset(value)))
        return checks[0] if len(checks) == 1 else _all_of(checks)

    def observation_predicate(self, spec: dict[str, Any]) -> Callable[[Observation], bool]:
        tests: list[Callable[[Observation], bool]] = []
        if "status" in spec:
            statuses = frozenset(spec["status"])
            tests.append(lambda o: o.status in statuses)
        if "flags" in spec:
            flags = frozenset(f.upper() for f in spec["flags"])
            tests.append(lambda o: any(f.upper() in flags for f in o.flags))
        if "critical" in spec:
            critical = bool(spec["critical"])
            tests.append(lambda o: o.critical is critical)
        if "abnormal" in spec:
            abnormal = bool(spec["abnormal"])
            tests.append(lambda o: o.abnormal is abnormal)
        return lambda o: all(t(o) for t in tests)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _trigger_in(triggers: frozenset[str]) -> Cond:
    return lambda ctx: ctx.trigger in triggers


def _value_in(getter: Getter, allowed: frozenset[str]) -> Cond:
    return lambda ctx: getter(ctx) in allowed


def _any_of(conds: list[Cond]) -> Cond:
    return lambda ctx: any(c(ctx) for c in conds)


def _all_of(conds: list[Cond]) -> Cond:
    return lambda ctx: all(c(ctx) for c in conds)


def _negated(cond: Cond) -> Cond:
    return lambda ctx: not cond(ctx)


def _any_observation(pred: Callable[[Observation], bool]) -> Cond:
    return lambda ctx: any(pred(o) for o in ctx.observations)


def _all_observations(pred: Callable[[Observation], bool]) -> Cond:
    # "All" of no observations would be vacuously true and call an empty report final.
    return lambda ctx: bool(ctx.observations) and all(pred(o) for o in ctx.observations)


def _leaf(comps: list[str], component: int, sub: int, d: Delimiters, encoding: str) -> str | None:
    """Component ``component`` (subcomponent ``sub``, 0 = whole) of a split repetition, unescaped."""
    if component > len(comps):
        return None
    value = comps[component - 1]
    if sub and value:
        subs = value.split(d.subcomponent) if d.subcomponent else [value]
        value = subs[sub - 1] if sub <= len(subs) else ""
    if d.escape and d.escape in value:
        value = unescape(value, d, encoding)
    value = value.strip()
    return value if value and value != '""' else None


def _field_getter(name: str) -> Getter:
    if name == "group":
        return lambda ctx: str(ctx.group)
    return lambda ctx: ctx.fields.get(name)


def _first_of(getters: list[Getter]) -> Getter:
    if len(getters) == 1:
        return getters[0]

    def get(ctx: _Ctx) -> str | None:
        for getter in getters:
            value = getter(ctx)
            if value is not None:
                return value
        return None

    return get


def _first_found(getters: list[CompositeGetter]) -> CompositeGetter:
    def get(ctx: _Ctx) -> list[Parts]:
        for getter in getters:
            found = getter(ctx)
            if found:
                return found
        return []

    return get


def _as_list(getter: Getter) -> ListGetter:
    def get(ctx: _Ctx) -> list[str]:
        value = getter(ctx)
        return [value] if value is not None else []

    return get


# --- one compiled mapping file --------------------------------------------------------------------

# Composite targets: the HL7 data type of the field and the parts of the event model it fills.
_IDENTIFIER = ("CX", ("value", "authority", "type"))
_PERSON = ("XCN", ("id", "family", "given", "prefix"))
_LOCATION = ("PL", ("facility", "unit", "room", "bed"))
_OBSERVATION_TEXTS = ("code", "text", "value", "units", "reference_range", "status")


@dataclass(frozen=True, slots=True)
class _Match:
    message: str
    triggers: frozenset[str]
    versions: tuple[str, ...]

    def fits(self, message: Message) -> bool:
        if message.message_code != self.message or message.trigger not in self.triggers:
            return False
        return not self.versions or any(fnmatch.fnmatchcase(message.version, v) for v in self.versions)


@dataclass(frozen=True, slots=True)
class _Grouping:
    anchor: str
    leading: frozenset[str]
    ends_before: frozenset[str]
    #: After an anchor, these open a stretch of the message that makes no events (OML's prior results) ...
    skip_from: frozenset[str] = frozenset()
    #: ... up to one of these (or an ``ends_before`` segment), where grouping resumes.
    resume_at: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Rule:
    when: Cond | None
    type: EventType
    severity: Severity
    severity_rules: tuple[tuple[Cond, Severity], ...]
    lifecycle: Lifecycle
    links: tuple[tuple[str, Getter], ...]
    #: The rule's own dedup key templates, tried instead of the file's (each change of an order is a new fact).
    dedup_key: tuple[Getter, ...] = ()


@dataclass(slots=True)
class _File:
    """One mapping file, compiled."""

    source: str
    name: str
    matches: tuple[_Match, ...]
    grouping: _Grouping | None
    rules: tuple[_Rule, ...]
    thread_key: tuple[Getter, ...]
    dedup_key: tuple[Getter, ...]
    occurred_at: Callable[[_Ctx], datetime | None] | None = None
    texts: dict[str, Getter] = field(default_factory=dict)
    identifiers: CompositeGetter | None = None
    mrn: CompositeGetter | None = None
    location: CompositeGetter | None = None
    prior_location: CompositeGetter | None = None
    attending: CompositeGetter | None = None
    subject_kind: str | None = None
    item_segment: str = ""
    item_texts: dict[str, Getter] = field(default_factory=dict)
    item_flags: ListGetter | None = None
    abnormal_flags: frozenset[str] = frozenset()

    def fits(self, message: Message) -> bool:
        return any(m.fits(message) for m in self.matches)


def _compile_file(doc: dict[str, Any], source: str) -> _File:
    c = _Compiler(source, doc.get("mrn_repetition"))
    for_each = doc["for_each"]
    grouping = None
    if isinstance(for_each, dict):
        grouping = _Grouping(
            anchor=for_each["segment"],
            leading=frozenset(for_each.get("with_leading", ())),
            ends_before=frozenset(for_each.get("ends_before", ())),
            skip_from=frozenset(for_each.get("skip_from", ())),
            resume_at=frozenset(for_each.get("resume_at", ())),
        )
        clash = grouping.skip_from & (grouping.leading | grouping.ends_before | grouping.resume_at | {grouping.anchor})
        if clash:
            raise c.fail(
                "$.for_each.skip_from",
                f"{', '.join(sorted(clash))} cannot open a skipped stretch: already the anchor, a leading,"
                " an ends_before or a resume_at segment",
            )
    compiled = _File(
        source=source,
        name=Path(source).name,
        matches=tuple(
            _Match(m["message"], frozenset(m["triggers"]), tuple(m.get("versions", ()))) for m in doc["match"]
        ),
        grouping=grouping,
        rules=tuple(_compile_rule(c, r, f"$.rules[{i}]") for i, r in enumerate(doc["rules"])),
        thread_key=tuple(
            c.template(t, f"$.thread_key[{i}]", _EVENT_NAMES - {"thread_key", "digest", "subject_digest"} - _LINK_NAMES)
            for i, t in enumerate(_as_seq(doc["thread_key"]))
        ),
        dedup_key=tuple(
            c.template(t, f"$.dedup_key[{i}]", _EVENT_NAMES) for i, t in enumerate(_as_seq(doc["dedup_key"]))
        ),
    )
    if "occurred_at" in doc:
        compiled.occurred_at = c.timestamp(doc["occurred_at"], "$.occurred_at")
    patient = doc.get("patient", {})
    for key in ("family", "given", "birth_date", "sex"):
        if key in patient:
            compiled.texts[f"patient.{key}"] = c.text(patient[key], f"$.patient.{key}")
    if "mrn" in patient:
        compiled.mrn = c.composite(patient["mrn"], "$.patient.mrn", *_IDENTIFIER)
    if "identifiers" in patient:
        compiled.identifiers = c.composite(patient["identifiers"], "$.patient.identifiers", *_IDENTIFIER)
    encounter = doc.get("encounter", {})
    for key in ("visit_number", "patient_class", "admitted_at", "discharged_at"):
        if key in encounter:
            compiled.texts[f"encounter.{key}"] = c.text(encounter[key], f"$.encounter.{key}")
    if "location" in encounter:
        compiled.location = c.composite(encounter["location"], "$.encounter.location", *_LOCATION)
    if "prior_location" in encounter:
        compiled.prior_location = c.composite(encounter["prior_location"], "$.encounter.prior_location", *_LOCATION)
    if "attending" in encounter:
        compiled.attending = c.composite(encounter["attending"], "$.encounter.attending", *_PERSON)
    subject = doc.get("subject")
    if subject is not None:
        compiled.subject_kind = subject["kind"]
        for key in ("key", "code", "text", "status", "start", "end", "detail"):
            if key in subject:
                compiled.texts[f"subject.{key}"] = c.text(subject[key], f"$.subject.{key}")
    observations = doc.get("observations")
    if observations is not None:
        compiled.item_segment = observations["segment"]
        for key in _OBSERVATION_TEXTS:
            if key in observations:
                compiled.item_texts[key] = c.text(observations[key], f"$.observations.{key}")
        if "flags" in observations:
            compiled.item_flags = c.text_list(observations["flags"], "$.observations.flags")
        compiled.abnormal_flags = frozenset(f.upper() for f in observations.get("abnormal_flags", ()))
    return compiled


def _compile_rule(c: _Compiler, spec: dict[str, Any], where: str) -> _Rule:
    return _Rule(
        when=c.condition(spec["when"], f"{where}.when") if "when" in spec else None,
        type=EventType(spec["type"]),
        severity=Severity(spec["severity"]),
        severity_rules=tuple(
            (c.condition(s["when"], f"{where}.severity_rules[{i}].when"), Severity(s["severity"]))
            for i, s in enumerate(spec.get("severity_rules", ()))
        ),
        lifecycle=Lifecycle(spec.get("lifecycle", Lifecycle.NEW.value)),
        # A list is a list of fallbacks: the first template whose placeholders all have a value, or identifier.
        links=tuple(
            (name, _compile_link(c, value, f"{where}.links.{name}")) for name, value in spec.get("links", {}).items()
        ),
        dedup_key=tuple(
            c.template(t, f"{where}.dedup_key[{i}]", _EVENT_NAMES)
            for i, t in enumerate(_as_seq(spec.get("dedup_key", [])))
        ),
    )


def _compile_link(c: _Compiler, spec: Any, where: str) -> Getter:
    """A link's value from templates and identifiers (CX fields), each a fallback of the one before.

    An identifier reads as ``authority|value`` (the FHIR token form; the value alone without an
    authority) and picks its repetition as ``patient.mrn`` does: MRG-1, the prior patient
    identifier list, repeats like PID-3, and a template can only name a fixed repetition.
    """
    getters: list[Getter] = []
    for alt, at in c.alternatives(spec, where):
        if isinstance(alt, str):
            getters.append(c.template(alt, at, _EVENT_NAMES - _LINK_NAMES))
        else:
            getters.append(_identifier_token(c.composite(alt, at, *_IDENTIFIER)))
    return _first_of(getters)


def _identifier_token(getter: CompositeGetter) -> Getter:
    def get(ctx: _Ctx) -> str | None:
        found = getter(ctx)
        value = found[0].get("value") if found else None
        if value is None:
            return None
        authority = found[0].get("authority")
        return f"{authority}|{value}" if authority else value

    return get


def _as_seq(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


# --- applying a compiled file ---------------------------------------------------------------------


def _units(message: Message, spec: _File) -> list[tuple[dict[str, Segment], list[Segment]]]:
    """The scopes of the events of one message: (segments by name, observation segments) per event.

    A group is the anchor (e.g. OBR), the leading segments just before it
    (ORC), and what follows until the next anchor, leading or ``ends_before``
    segment. Its scope is the context outside any group before it (the
    nearest PID, PV1: in ORU^R01 a PATIENT_RESULT may repeat) over the
    group's own first segments, so a PV1 nested in an order group does not
    replace the patient's visit. An ``ends_before`` segment (the next PID)
    also clears the context gathered since the message header, so the next
    patient never inherits the previous patient's visit.

    A ``skip_from`` segment after an anchor (a PV1 after the first ORC of an
    OML^O21: its prior results) ends the group before it and opens a stretch
    that makes no group and adds nothing to the context, up to a ``resume_at``
    or ``ends_before`` segment, which is then read as usual.
    """
    item = spec.item_segment
    grouping = spec.grouping
    if grouping is None:
        first: dict[str, Segment] = {}
        items: list[Segment] = []
        for seg in message.segments:
            first.setdefault(seg.name, seg)
            if seg.name == item:
                items.append(seg)
        return [(first, items)]
    anchor, leading, ends = grouping.anchor, grouping.leading, grouping.ends_before
    skip_from, resume_at = grouping.skip_from, grouping.resume_at
    outer: dict[str, Segment] = {}
    header: dict[str, Segment] | None = None
    units: list[tuple[dict[str, Segment], list[Segment]]] = []
    current: dict[str, Segment] | None = None
    current_items: list[Segment] = []
    anchored = False
    seen_anchor = False  # since the message header or the last ends_before segment
    skipping = False
    for seg in message.segments:
        name = seg.name
        if skipping:
            if name not in resume_at and name not in ends:
                continue
            skipping = False
        if name in skip_from and seen_anchor:
            if current is not None and anchored:
                units.append(({**current, **outer}, current_items))
            current, current_items, anchored, skipping = None, [], False, True
            continue
        if name == anchor and current is not None and not anchored:
            current.setdefault(name, seg)
            anchored = seen_anchor = True
            continue
        if name == anchor or name in leading or name in ends:
            if current is not None and anchored:
                units.append(({**current, **outer}, current_items))
            current, current_items, anchored = None, [], False
            if name in ends:
                if header is None:
                    header = dict(outer)
                outer = {**header, name: seg}
                seen_anchor = False
            else:
                current, anchored = {name: seg}, name == anchor
                seen_anchor = seen_anchor or anchored
            continue
        if current is None:
            outer[name] = seg
            continue
        current.setdefault(name, seg)
        if anchored and name == item:
            current_items.append(seg)
    if current is not None and anchored:
        units.append(({**current, **outer}, current_items))
    return units


@dataclass(frozen=True, slots=True)
class _Ids:
    event_id: str
    message_id: str
    source: str
    origin: dict[str, str]


class Mapper:
    """The compiled mapping files, in the order they are tried."""

    def __init__(self, files: Sequence[_File], options: MappingOptions) -> None:
        self._files = tuple(files)
        self._options = options
        self._critical = frozenset(f.upper() for f in options.critical_flags)
        self._by_code: dict[str, tuple[_File, ...]] = {}
        for f in self._files:
            for code in {m.message for m in f.matches}:
                self._by_code[code] = (*self._by_code.get(code, ()), f)

    @property
    def sources(self) -> tuple[str, ...]:
        """The loaded files, in the order they are tried."""
        return tuple(f.source for f in self._files)

    @classmethod
    def load(cls, options: MappingOptions = _DEFAULT_OPTIONS) -> Mapper:
        """Load, validate and compile the bundled mappings and ``options.extra_paths``.

        Order, overlays and replacements: :func:`load_mappings`. The first file
        whose match fits a message maps it. Raises MappingError naming the file
        and JSON path.
        """
        docs = compile_mappings("hl7v2", options.extra_paths, mappings_dir() / "schema.json", _compile_file)
        return cls(docs, options)

    @classmethod
    def from_documents(
        cls, docs: Iterable[tuple[str, dict[str, Any]]], options: MappingOptions = _DEFAULT_OPTIONS
    ) -> Mapper:
        """Compile already validated documents (name, content); for tools and tests."""
        return cls([_compile_file(doc, name) for name, doc in docs], options)

    def _file_for(self, message: Message) -> _File | None:
        for f in self._by_code.get(message.message_code, ()):
            if f.fits(message):
                return f
        return None

    def matches(self, message: Message) -> bool:
        """True when some mapping file takes this message (even if it yields no event)."""
        return self._file_for(message) is not None

    def map_hl7(
        self,
        message: Message,
        *,
        message_id: str,
        source: str,
        received_at: datetime,
        origin: dict[str, str],
    ) -> list[ClinicalEvent]:
        """The events of one parsed message; [] when no file matches or no rule fits."""
        spec = self._file_for(message)
        if spec is None:
            return []
        events: list[ClinicalEvent] = []
        trigger = message.trigger
        for index, (scope, items) in enumerate(_units(message, spec), start=1):
            ctx = _Ctx(message, trigger, scope, index, self._options.mrn_authorities, self._options.sender_timezone)
            event = self._event(
                spec,
                ctx,
                items,
                _Ids(f"{message_id}-{len(events) + 1}", message_id, source, origin),
                received_at,
            )
            if event is not None:
                events.append(event)
        return events

    def _observations(self, spec: _File, ctx: _Ctx, items: list[Segment]) -> list[Observation]:
        result: list[Observation] = []
        append = result.append
        ctx.item_name = spec.item_segment
        texts = tuple(spec.item_texts.items())
        read_flags = spec.item_flags
        critical_flags, abnormal_flags = self._critical, spec.abnormal_flags
        for seg in items:
            ctx.item = seg
            values = {key: getter(ctx) for key, getter in texts}
            flags = tuple(read_flags(ctx)) if read_flags is not None else ()
            if not flags:
                # Most lines carry no flag: neither critical nor abnormal.
                append(Observation(values, flags, False, False))
                continue
            upper = {f.upper() for f in flags}
            critical = not upper.isdisjoint(critical_flags)
            append(Observation(values, flags, critical, critical or not upper.isdisjoint(abnormal_flags)))
        ctx.item = None
        return result

    def _event(
        self, spec: _File, ctx: _Ctx, items: list[Segment], ids: _Ids, received_at: datetime
    ) -> ClinicalEvent | None:
        ctx.observations = self._observations(spec, ctx, items)
        rule = next((r for r in spec.rules if r.when is None or r.when(ctx)), None)
        if rule is None:
            return None
        severity = next((s for cond, s in rule.severity_rules if cond(ctx)), rule.severity)
        found = Found(
            texts={key: getter(ctx) for key, getter in spec.texts.items()},
            mrn=_one(spec.mrn, ctx),
            identifiers=spec.identifiers(ctx) if spec.identifiers is not None else [],
            location=_one(spec.location, ctx) or {},
            prior_location=_one(spec.prior_location, ctx),
            attending=_one(spec.attending, ctx),
            subject_kind=spec.subject_kind,
            observations=ctx.observations,
            occurred_at=spec.occurred_at(ctx) if spec.occurred_at is not None else None,
        )
        return assemble_event(
            found,
            Verdict(rule.type, severity, rule.lifecycle),
            event_id=ids.event_id,
            message_id=ids.message_id,
            source=ids.source,
            origin=ids.origin,
            received_at=received_at,
            facts=ctx.fields,
            thread_key=lambda: _first_rendered(spec.thread_key, ctx),
            dedup_key=lambda: _first_rendered(rule.dedup_key or spec.dedup_key, ctx),
            links=lambda: {name: value for name, getter in rule.links if (value := getter(ctx)) is not None},
        )


def _first_rendered(templates: Iterable[Getter], ctx: _Ctx) -> str | None:
    for template in templates:
        value = template(ctx)
        if value is not None:
            return value
    return None


def _one(getter: CompositeGetter | None, ctx: _Ctx) -> Parts | None:
    found = getter(ctx) if getter is not None else []
    return found[0] if found else None
