"""Declarative FHIR resource → ClinicalEvent mapping: load, check and compile ``mappings/fhir/*.yaml``; apply.

A FHIR mapping file is data only: FHIRPath expressions (fhirpathpy) that say
which resources it takes, which facts matter, which event a version makes and
where each field of the event comes from. Its format is documented in
``mappings/fhir.schema.json`` and by the bundled files. The events have the
shape of those from HL7 v2 (bridge/mapping.py), so one route serves both.

Loading validates every file against the schema, checks each expression's
syntax, variables and functions, and compiles it once, so a broken file fails
at start-up with its name and JSON path, never at the first notification.

A resource is mapped with the version the bridge saw before (``%previous``):
the file's ``compare`` entries say which facts matter, so an update storm that
changes none of them makes no event, and rules read which ones changed
(``%changed``). Mapping never raises on odd content: an expression that fails
on a resource counts as empty (and is logged by file and path, never content).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import structlog
from antlr4 import CommonTokenStream, InputStream, ParseTreeWalker  # type: ignore[import-untyped]
from fhirpathpy import apply_parsed_path
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from bridge.assembly import EVENT_FACTS, Facts, Found, Observation, Parts, Verdict, assemble_event
from bridge.errors import MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity
from bridge.mapping import MappingOptions, compile_mappings, mappings_dir

__all__ = ["FhirMapper", "fhir_instant"]

log = structlog.get_logger(__name__)

_DEFAULT_OPTIONS = MappingOptions()

#: Variables every expression may read: the resource, the version seen before it ([] the first
#: time), the subscription topic URL ([] without one), the names of the ``compare`` entries that
#: differ from the version seen before ([] the first time) and the site's MRN systems
#: (``mapping.mrn_authorities``, preferred in that order; [] when none are configured).
_BASE_VARS = frozenset({"resource", "previous", "topic", "changed", "mrn_systems"})
#: What a ``compare`` entry may read: one version at a time, never the other one.
_COMPARE_VARS = frozenset({"resource", "topic", "mrn_systems"})
#: Set from the observation lines, for rules and everything after them.
_RULE_VARS = frozenset({"critical", "abnormal"})
#: Defined by fhirpathpy itself.
_BUILTIN_VARS = frozenset({"context", "ucum"})
#: Names a ``let`` must not take.
_RESERVED = _BASE_VARS | _RULE_VARS | _BUILTIN_VARS

#: Placeholders of key and link templates that are facts of the event being built (as in the
#: HL7 mappings); any other placeholder is a FHIRPath expression on the resource.
_FACTS = EVENT_FACTS

_PLACEHOLDER_RE = re.compile(r"\{([^{}]+)\}")
#: The ``Type/id`` of a reference (relative, absolute or versioned); FHIR ids are [A-Za-z0-9-.]{1,64}.
_REFERENCE_TAIL_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")

_IDENTIFIER_PARTS = ("value", "authority", "type")
_PERSON_PARTS = ("id", "family", "given", "prefix")
_LINE_TEXTS = ("code", "text", "value", "units", "reference_range", "status")


def fhir_instant(text: str) -> datetime | None:
    """An aware datetime from a FHIR instant or a dateTime with a time; None for a date or less.

    A dateTime with a time carries an offset (FHIR datatypes §dateTime); one without is taken as UTC.
    A date (``2026-10-25``) is a day, not a moment: as midnight UTC it would be told as ``01:00`` in
    Berlin or on the day before in New York, so the event takes its next time source, else its
    receipt time (docs/configuration.md, ``mapping.sender_timezone``). A value with no UTC
    equivalent (year 9999 at -14:00, year 1 at +14:00) is None too, rather than carry a time no
    channel can show.
    """
    text = text.strip()
    if "T" not in text:
        return None
    try:
        value = datetime.fromisoformat(text)
        value = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        value.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return value


def _as_text(item: Any) -> str | None:
    """A FHIRPath result item as text; complex elements (objects, lists) have none."""
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, str):
        item = item.strip()
        return item or None
    if isinstance(item, Decimal):
        return format(item, "f")
    if isinstance(item, int | float):
        return str(item)
    if isinstance(item, dict | list) or item is None:
        return None
    # fhirpathpy's own date, time and quantity values print as FHIRPath literals.
    return str(item) or None


def _truthy(result: list[Any]) -> bool:
    """FHIRPath singleton evaluation (spec §4.5): one true boolean, or one non-boolean item, holds."""
    if len(result) != 1:
        return False
    item = result[0]
    return item is True or not isinstance(item, bool)


def _reference_tail(reference: str) -> str | None:
    m = _REFERENCE_TAIL_RE.search(reference)
    return m.group(1) if m else None


# --- FHIRPath checks at load ----------------------------------------------------------------------

Evaluator = Callable[[Any, Mapping[str, Any]], list[Any]]


class _SyntaxErrors:
    """An ANTLR error listener that keeps the first syntax error.

    fhirpathpy's own ``parse`` installs a listener that ignores errors, so
    ``status == 'final'`` would compile into an expression that is always empty.
    The camelCase names are ANTLR's ErrorListener protocol, called by name.
    """

    def __init__(self) -> None:
        self.first: str | None = None

    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        if self.first is None:
            self.first = f"column {column + 1}: {msg}"

    def reportAmbiguity(self, *args: Any) -> None:
        """Ambiguity is not an error: the FHIRPath grammar resolves it by rule order."""

    def reportAttemptingFullContext(self, *args: Any) -> None:
        """A parser strategy notice, not an error."""

    def reportContextSensitivity(self, *args: Any) -> None:
        """A parser strategy notice, not an error."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    """One expression parsed: its syntax error, or the %variables and functions it uses and its evaluator."""

    error: str | None
    names: tuple[tuple[str, str], ...] = ()
    run: Evaluator | None = None


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> _Parsed:
    """Parse once, strictly (fhirpathpy's own ``compile`` parses leniently, and a second time).

    The mapping files repeat their patient and encounter blocks, so the cache
    makes loading them cost one parse per distinct expression; an evaluator is
    stateless and safe to share.
    """
    listener = _SyntaxErrors()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    tree = parser.entireExpression()  # type: ignore[no-untyped-call]  # generated ANTLR code has no annotations
    if listener.first is not None:
        return _Parsed(listener.first)
    # The same tree fhirpathpy's parse builds: its listener over the expression below EOF.
    builder = ASTPathListener()  # type: ignore[no-untyped-call]  # fhirpathpy leaves it unannotated
    ParseTreeWalker().walk(builder, tree.expression())
    parsed = builder.parentStack[0]

    def run(resource: Any, env: Mapping[str, Any]) -> list[Any]:
        return cast(list[Any], apply_parsed_path(resource, parsed, env))  # type: ignore[no-untyped-call]

    return _Parsed(None, tuple(_names_used(parsed)), run)


def _names_used(node: Any) -> Iterator[tuple[str, str]]:
    """("variable", name) and ("function", name) for every %variable and function call in a parsed tree."""
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    children = node.get("children") or []
    if kind == "ExternalConstant":
        name = children[0].get("text") if children else str(node.get("terminalNodeText", ["", ""])[-1])
        yield "variable", str(name).strip("'`")
    elif kind == "Functn" and children:
        yield "function", str(children[0].get("text", ""))
    for child in children:
        yield from _names_used(child)


# --- compiled pieces ------------------------------------------------------------------------------


class _Ctx:
    """One mapping in progress: the FHIRPath environment and the facts of the event so far."""

    __slots__ = ("env", "facts", "resource_type", "source")

    def __init__(self, source: str, resource_type: str, env: dict[str, Any]) -> None:
        self.source = source
        self.resource_type = resource_type
        self.env = env
        self.facts: Facts = {}


@dataclass(frozen=True, slots=True)
class _Expr:
    """A compiled FHIRPath expression and where it is written."""

    text: str
    where: str
    run: Evaluator

    def __call__(self, ctx: _Ctx, focus: Any) -> list[Any]:
        try:
            return list(self.run(focus, ctx.env))
        except Exception as exc:
            # The evaluator meets arbitrary content from outside (a string where a list was
            # expected, an unexpected type to lower()): that is an empty result, not a failure.
            log.warning(
                "fhir.mapping.expression_failed",
                mapping=ctx.source,
                path=self.where,
                resource_type=ctx.resource_type,
                error=type(exc).__name__,
            )
            return []


Getter = Callable[[_Ctx, Any], "str | None"]
ListGetter = Callable[[_Ctx, Any], list[str]]
CompositeGetter = Callable[[_Ctx, Any], list[Parts]]


@dataclass(frozen=True, slots=True)
class _Let:
    name: str
    expr: _Expr
    #: Look the resulting references up in the context (and contained resources).
    resolve: bool
    #: Keep only resources of this type.
    resource_type: str | None


@dataclass(frozen=True, slots=True)
class _Match:
    resource_type: str
    where: _Expr | None


@dataclass(frozen=True, slots=True)
class _Rule:
    when: _Expr | None
    type: EventType
    severity: Severity
    severity_rules: tuple[tuple[_Expr, Severity], ...]
    lifecycle: Lifecycle
    links: tuple[tuple[str, tuple[Getter, ...]], ...]


@dataclass(slots=True)
class _Lines:
    """Observation lines: one per element of ``source``."""

    source: _Expr
    texts: dict[str, Getter]
    flags: ListGetter | None
    critical: _Expr | None
    abnormal_flags: frozenset[str]


@dataclass(slots=True)
class _File:
    """One mapping file, compiled."""

    source: str
    name: str
    matches: tuple[_Match, ...]
    lets: tuple[_Let, ...]
    #: (name, expression): a list entry is named by its own text.
    compare: tuple[tuple[str, _Expr], ...]
    rules: tuple[_Rule, ...]
    thread_key: tuple[Getter, ...]
    dedup_key: tuple[Getter, ...]
    occurred_at: tuple[Getter, ...] = ()
    texts: dict[str, Getter] = field(default_factory=dict)
    mrn: CompositeGetter | None = None
    identifiers: CompositeGetter | None = None
    attending: CompositeGetter | None = None
    location: dict[str, Getter] = field(default_factory=dict)
    prior_location: dict[str, Getter] = field(default_factory=dict)
    subject_kind: str | None = None
    lines: _Lines | None = None

    def fits(self, ctx: _Ctx, resource: dict[str, Any]) -> bool:
        for m in self.matches:
            if m.resource_type == resource.get("resourceType") and (m.where is None or _truthy(m.where(ctx, resource))):
                return True
        return False


class _Compiler:
    """Turns one validated mapping document into closures; errors name the file and the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> MappingError:
        return MappingError(message, source=self.source, path=where)

    # expressions

    def expr(self, text: str, where: str, names: frozenset[str]) -> _Expr:
        try:
            parsed = _parse(text)
        except Exception as exc:
            # The ANTLR runtime raises its own exception types on some malformed input.
            raise self.fail(where, f"not a FHIRPath expression: {text!r}") from exc
        if parsed.error is not None or parsed.run is None:
            raise self.fail(where, f"not a FHIRPath expression ({parsed.error}): {text!r}")
        for kind, name in parsed.names:
            if kind == "variable" and name not in names | _BUILTIN_VARS:
                known = ", ".join(f"%{n}" for n in sorted(names))
                raise self.fail(where, f"unknown variable %{name} (known here: {known})")
            if kind == "function" and name not in invocation_registry:
                raise self.fail(where, f"FHIRPath function {name}() is not supported by fhirpathpy")
        return _Expr(text, where, parsed.run)

    def one(self, text: str, where: str, names: frozenset[str]) -> Getter:
        """The first item's text of an expression, or a template when the text has {placeholders}."""
        if _PLACEHOLDER_RE.search(text):
            return self.template(text, where, names, facts=frozenset())
        expr = self.expr(text, where, names)

        def get(ctx: _Ctx, focus: Any) -> str | None:
            for item in expr(ctx, focus):
                value = _as_text(item)
                if value is not None:
                    return value
            return None

        return get

    def many(self, text: str, where: str, names: frozenset[str]) -> ListGetter:
        expr = self.expr(text, where, names)

        def get(ctx: _Ctx, focus: Any) -> list[str]:
            return [v for v in (_as_text(i) for i in expr(ctx, focus)) if v is not None]

        return get

    def template(self, text: str, where: str, names: frozenset[str], *, facts: frozenset[str]) -> Getter:
        """A template whose value exists only when every placeholder has one.

        A placeholder is a fact of the event (when ``facts`` allows it) or a FHIRPath expression.
        """
        parts: list[str | Getter] = []
        pos = 0
        for m in _PLACEHOLDER_RE.finditer(text):
            parts.append(text[pos : m.start()])
            inner = m.group(1).strip()
            if inner in facts:
                parts.append(_fact(inner))
            elif facts and inner in _FACTS:
                raise self.fail(where, f"{{{inner}}} is not known yet where this template is rendered")
            else:
                parts.append(self.one(inner, f"{where}{{{inner}}}", names))
            pos = m.end()
        parts.append(text[pos:])
        if any(("{" in p or "}" in p) for p in parts if isinstance(p, str)):
            raise self.fail(where, f"unbalanced braces in template {text!r}")

        def render(ctx: _Ctx, focus: Any) -> str | None:
            out: list[str] = []
            for part in parts:
                if isinstance(part, str):
                    out.append(part)
                    continue
                value = part(ctx, focus)
                if value is None:
                    return None
                out.append(value)
            return "".join(out)

        return render

    def templates(
        self, spec: str | list[str], where: str, names: frozenset[str], facts: frozenset[str] = _FACTS
    ) -> tuple[Getter, ...]:
        items = [spec] if isinstance(spec, str) else spec
        return tuple(self.template(t, f"{where}[{i}]", names, facts=facts) for i, t in enumerate(items))

    # values: an expression, a template, or {from, join, map}; a list of those is a list of fallbacks

    def value(self, spec: Any, where: str, names: frozenset[str]) -> Getter:
        alternatives = spec if isinstance(spec, list) else [spec]
        getters = [
            self._alternative(alt, f"{where}[{i}]" if isinstance(spec, list) else where, names)
            for i, alt in enumerate(alternatives)
        ]
        if len(getters) == 1:
            return getters[0]

        def get(ctx: _Ctx, focus: Any) -> str | None:
            for getter in getters:
                value = getter(ctx, focus)
                if value is not None:
                    return value
            return None

        return get

    def _alternative(self, spec: Any, where: str, names: frozenset[str]) -> Getter:
        if isinstance(spec, str):
            return self.one(spec, where, names)
        froms = spec["from"] if isinstance(spec["from"], list) else [spec["from"]]
        join: str | None = spec.get("join")
        table: dict[str, str] = {str(k): str(v) for k, v in spec.get("map", {}).items()}
        sources: list[Getter] = []
        for i, text in enumerate(froms):
            at = f"{where}.from[{i}]" if isinstance(spec["from"], list) else f"{where}.from"
            sources.append(
                self._joined(self.many(text, at, names), join) if join is not None else self.one(text, at, names)
            )

        def get(ctx: _Ctx, focus: Any) -> str | None:
            for source in sources:
                value = source(ctx, focus)
                if value is not None:
                    # A code without an entry in the table passes unchanged: a local code is shown
                    # as sent rather than dropped.
                    return table.get(value, value)
            return None

        return get

    @staticmethod
    def _joined(getter: ListGetter, sep: str) -> Getter:
        def get(ctx: _Ctx, focus: Any) -> str | None:
            return sep.join(getter(ctx, focus)) or None

        return get

    # composites: identifiers and persons read part by part from one element

    def composite(self, spec: Any, where: str, names: frozenset[str], parts: Sequence[str]) -> CompositeGetter:
        alternatives = spec if isinstance(spec, list) else [spec]
        compiled: list[tuple[list[_Expr], bool, list[tuple[str, Getter]]]] = []
        for i, alt in enumerate(alternatives):
            at = f"{where}[{i}]" if isinstance(spec, list) else where
            froms = alt["from"] if isinstance(alt["from"], list) else [alt["from"]]
            sources = [
                self.expr(t, f"{at}.from[{j}]" if isinstance(alt["from"], list) else f"{at}.from", names)
                for j, t in enumerate(froms)
            ]
            getters = [(p, self.value(alt[p], f"{at}.{p}", names)) for p in parts if p in alt]
            compiled.append((sources, bool(alt.get("all", False)), getters))

        def get(ctx: _Ctx, focus: Any) -> list[Parts]:
            for sources, every, getters in compiled:
                for source in sources:
                    found: list[Parts] = []
                    for element in source(ctx, focus):
                        values = {name: getter(ctx, element) for name, getter in getters}
                        if any(v is not None for v in values.values()):
                            found.append(values)
                            if not every:
                                return found
                    if found:
                        return found
            return []

        return get


def _fact(name: str) -> Getter:
    return lambda ctx, focus: ctx.facts.get(name)


def _one(getter: CompositeGetter | None, ctx: _Ctx, focus: Any) -> Parts | None:
    found = getter(ctx, focus) if getter is not None else []
    return found[0] if found else None


def _compile_file(doc: dict[str, Any], source: str) -> _File:
    c = _Compiler(source)
    matches = tuple(
        _Match(
            m["resourceType"],
            c.expr(m["where"], f"$.match[{i}].where", frozenset({"resource"})) if "where" in m else None,
        )
        for i, m in enumerate(doc["match"])
    )
    names = set(_BASE_VARS)
    lets: list[_Let] = []
    for name, spec in doc.get("let", {}).items():
        where = f"$.let.{name}"
        if name in _RESERVED:
            raise c.fail(where, f"%{name} is reserved")
        if isinstance(spec, str):
            lets.append(_Let(name, c.expr(spec, where, frozenset(names)), False, None))
        else:
            lets.append(
                _Let(name, c.expr(spec["resolve"], f"{where}.resolve", frozenset(names)), True, spec.get("type"))
            )
        names.add(name)
    # The comparison reads one version at a time: only the version itself (as the focus or %resource).
    spec_compare = doc.get("compare", ())
    if isinstance(spec_compare, dict):
        compare = tuple((name, c.expr(text, f"$.compare.{name}", _COMPARE_VARS)) for name, text in spec_compare.items())
    else:
        compare = tuple((text, c.expr(text, f"$.compare[{i}]", _COMPARE_VARS)) for i, text in enumerate(spec_compare))
    line_names = frozenset(names)
    all_names = frozenset(names | _RULE_VARS)
    compiled = _File(
        source=source,
        name=Path(source).name,
        matches=matches,
        lets=tuple(lets),
        compare=compare,
        rules=tuple(_compile_rule(c, r, f"$.rules[{i}]", all_names) for i, r in enumerate(doc["rules"])),
        # The thread key is rendered before the digest and itself exist.
        thread_key=c.templates(doc["thread_key"], "$.thread_key", all_names, _FACTS - {"thread_key", "digest"}),
        dedup_key=c.templates(doc["dedup_key"], "$.dedup_key", all_names),
    )
    if "occurred_at" in doc:
        spec = doc["occurred_at"]
        alternatives = spec if isinstance(spec, list) else [spec]
        compiled.occurred_at = tuple(c.value(a, f"$.occurred_at[{i}]", all_names) for i, a in enumerate(alternatives))
    patient = doc.get("patient", {})
    for key in ("family", "given", "birth_date", "sex"):
        if key in patient:
            compiled.texts[f"patient.{key}"] = c.value(patient[key], f"$.patient.{key}", all_names)
    if "mrn" in patient:
        compiled.mrn = c.composite(patient["mrn"], "$.patient.mrn", all_names, _IDENTIFIER_PARTS)
    if "identifiers" in patient:
        compiled.identifiers = c.composite(
            patient["identifiers"], "$.patient.identifiers", all_names, _IDENTIFIER_PARTS
        )
    encounter = doc.get("encounter", {})
    for key in ("visit_number", "patient_class", "admitted_at", "discharged_at"):
        if key in encounter:
            compiled.texts[f"encounter.{key}"] = c.value(encounter[key], f"$.encounter.{key}", all_names)
    for key in ("location", "prior_location"):
        target = compiled.location if key == "location" else compiled.prior_location
        for part, spec in encounter.get(key, {}).items():
            target[part] = c.value(spec, f"$.encounter.{key}.{part}", all_names)
    if "attending" in encounter:
        compiled.attending = c.composite(encounter["attending"], "$.encounter.attending", all_names, _PERSON_PARTS)
    subject = doc.get("subject")
    if subject is not None:
        compiled.subject_kind = subject["kind"]
        for key in ("key", "code", "text", "status", "start", "end", "detail"):
            if key in subject:
                compiled.texts[f"subject.{key}"] = c.value(subject[key], f"$.subject.{key}", all_names)
    observations = doc.get("observations")
    if observations is not None:
        compiled.lines = _Lines(
            source=c.expr(observations["from"], "$.observations.from", line_names),
            texts={
                key: c.value(observations[key], f"$.observations.{key}", line_names)
                for key in _LINE_TEXTS
                if key in observations
            },
            flags=c.many(observations["flags"], "$.observations.flags", line_names)
            if "flags" in observations
            else None,
            critical=c.expr(observations["critical"], "$.observations.critical", line_names)
            if "critical" in observations
            else None,
            abnormal_flags=frozenset(f.upper() for f in observations.get("abnormal_flags", ())),
        )
    return compiled


def _compile_rule(c: _Compiler, spec: dict[str, Any], where: str, names: frozenset[str]) -> _Rule:
    links: list[tuple[str, tuple[Getter, ...]]] = []
    for name, value in spec.get("links", {}).items():
        links.append((name, c.templates(value, f"{where}.links.{name}", names)))
    return _Rule(
        when=c.expr(spec["when"], f"{where}.when", names) if "when" in spec else None,
        type=EventType(spec["type"]),
        severity=Severity(spec["severity"]),
        severity_rules=tuple(
            (c.expr(s["when"], f"{where}.severity_rules[{i}].when", names), Severity(s["severity"]))
            for i, s in enumerate(spec.get("severity_rules", ()))
        ),
        lifecycle=Lifecycle(spec.get("lifecycle", Lifecycle.NEW.value)),
        links=tuple(links),
    )


# --- applying a compiled file ---------------------------------------------------------------------


class _Resolver:
    """Finds referenced resources among those that came with the notification or were fetched.

    Context keys are references as written (``Patient/1``) or full URLs (a Bundle
    entry's ``fullUrl``); a reference is looked up as written, then by its
    ``Type/id`` (absolute, relative and versioned references all meet there),
    and a ``#id`` among the resource's contained resources.
    """

    def __init__(self, resource: Mapping[str, Any], context: Mapping[str, Any] | None) -> None:
        self._by_reference: dict[str, dict[str, Any]] = {}
        for key, found in (context or {}).items():
            if not isinstance(found, dict):
                continue
            self._by_reference.setdefault(key, found)
            tail = _reference_tail(key)
            if tail is not None:
                self._by_reference.setdefault(tail, found)
            own_type, own_id = found.get("resourceType"), found.get("id")
            if isinstance(own_type, str) and isinstance(own_id, str):
                self._by_reference.setdefault(f"{own_type}/{own_id}", found)
        contained = resource.get("contained")
        self._contained = {
            f"#{c['id']}": c
            for c in (contained if isinstance(contained, list) else [])
            if isinstance(c, dict) and isinstance(c.get("id"), str)
        }

    def __call__(self, reference: str) -> dict[str, Any] | None:
        if reference.startswith("#"):
            return self._contained.get(reference)
        found = self._by_reference.get(reference)
        if found is None:
            tail = _reference_tail(reference)
            found = self._by_reference.get(tail) if tail is not None else None
        return found


class FhirMapper:
    """The compiled FHIR mapping files, in the order they are tried."""

    def __init__(self, files: Sequence[_File], options: MappingOptions) -> None:
        self._files = tuple(files)
        self._critical = frozenset(f.upper() for f in options.critical_flags)
        self._mrn_systems = list(options.mrn_authorities)
        self._by_type: dict[str, tuple[_File, ...]] = {}
        for f in self._files:
            for resource_type in dict.fromkeys(m.resource_type for m in f.matches):
                self._by_type[resource_type] = (*self._by_type.get(resource_type, ()), f)

    @property
    def sources(self) -> tuple[str, ...]:
        """The loaded files, in the order they are tried."""
        return tuple(f.source for f in self._files)

    @classmethod
    def load(cls, options: MappingOptions = _DEFAULT_OPTIONS) -> FhirMapper:
        """Load, validate and compile ``mappings/fhir/*.yaml`` and the FHIR files of ``options.extra_paths``.

        Which extra files are FHIR files, and how overlays layer, is :func:`bridge.mapping.load_mappings`'
        rule. The first file whose match fits a resource maps it. Raises
        MappingError naming the file and JSON path.
        """
        base = mappings_dir()
        return cls(compile_mappings("fhir", options.extra_paths, base / "fhir.schema.json", _compile_file), options)

    @classmethod
    def from_documents(
        cls, docs: Sequence[tuple[str, dict[str, Any]]], options: MappingOptions = _DEFAULT_OPTIONS
    ) -> FhirMapper:
        """Compile already validated documents (name, content); for tools and tests."""
        return cls([_compile_file(doc, name) for name, doc in docs], options)

    def _file_for(self, resource: dict[str, Any], ctx: _Ctx) -> _File | None:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return None
        for f in self._by_type.get(resource_type, ()):
            ctx.source = f.name
            if f.fits(ctx, resource):
                return f
        return None

    def matches(self, resource: dict[str, Any]) -> bool:
        """True when some mapping file takes this resource (even if this version makes no event)."""
        if not isinstance(resource, dict):
            return False
        ctx = _Ctx("", str(resource.get("resourceType", "")), self._env(resource))
        return self._file_for(resource, ctx) is not None

    def map_resource(
        self,
        resource: dict[str, Any],
        *,
        message_id: str,
        source: str,
        received_at: datetime,
        origin: dict[str, str],
        previous: dict[str, Any] | None = None,
        context: Mapping[str, dict[str, Any]] | None = None,
        topic: str | None = None,
    ) -> list[ClinicalEvent]:
        """The events of one resource version; [] when no file takes it or nothing that matters changed.

        ``previous`` is the version the bridge saw before (None the first time),
        ``context`` the resources that came with it or were fetched, by reference
        or full URL, and ``topic`` the subscription topic URL.
        """
        if not isinstance(resource, dict):
            return []
        ctx = _Ctx("", str(resource.get("resourceType", "")), self._env(resource))
        spec = self._file_for(resource, ctx)
        if spec is None:
            return []
        changed: list[str] = []
        if previous is not None and spec.compare:
            changed = self._changed(spec, ctx, resource, previous, topic)
            if not changed:
                return []
        ctx.env = self._env(resource, previous=previous, topic=topic, changed=changed)
        resolve = _Resolver(resource, context)
        for let in spec.lets:
            found = let.expr(ctx, resource)
            if let.resolve:
                found = self._resolved(found, resolve, let.resource_type)
            ctx.env[let.name] = found
        lines = self._lines(spec, ctx)
        ctx.env["critical"] = any(line.critical for line in lines)
        ctx.env["abnormal"] = any(line.abnormal for line in lines)
        rule = next((r for r in spec.rules if r.when is None or _truthy(r.when(ctx, resource))), None)
        if rule is None:
            return []
        return [self._event(spec, rule, ctx, resource, lines, message_id, source, origin, received_at)]

    def _env(
        self,
        resource: Any,
        *,
        previous: dict[str, Any] | None = None,
        topic: str | None = None,
        changed: list[str] | None = None,
    ) -> dict[str, Any]:
        """The variables every expression may read (``_BASE_VARS``)."""
        return {
            "resource": resource,
            "previous": previous if isinstance(previous, dict) else [],
            "topic": topic or [],
            "changed": changed or [],
            "mrn_systems": self._mrn_systems,
        }

    def _changed(
        self, spec: _File, ctx: _Ctx, resource: dict[str, Any], previous: dict[str, Any], topic: str | None
    ) -> list[str]:
        """The names of the compared facts that differ between the two versions; [] is an update storm."""
        now_env = self._env(resource, topic=topic)
        then_env = self._env(previous, topic=topic)
        changed: list[str] = []
        for name, expr in spec.compare:
            ctx.env = now_env
            now = expr(ctx, resource)
            ctx.env = then_env
            if now != expr(ctx, previous):
                changed.append(name)
        return changed

    @staticmethod
    def _resolved(found: list[Any], resolve: _Resolver, resource_type: str | None) -> list[dict[str, Any]]:
        resources: list[dict[str, Any]] = []
        for item in found:
            reference = _as_text(item)
            hit = resolve(reference) if reference is not None else None
            if hit is None or (resource_type is not None and hit.get("resourceType") != resource_type):
                continue
            if not any(hit is r for r in resources):
                resources.append(hit)
        return resources

    def _lines(self, spec: _File, ctx: _Ctx) -> list[Observation]:
        lines_spec = spec.lines
        if lines_spec is None:
            return []
        lines: list[Observation] = []
        for element in lines_spec.source(ctx, ctx.env["resource"]):
            if not isinstance(element, dict):
                continue
            values = {key: getter(ctx, element) for key, getter in lines_spec.texts.items()}
            flags = tuple(lines_spec.flags(ctx, element)) if lines_spec.flags is not None else ()
            upper = {f.upper() for f in flags}
            critical = not upper.isdisjoint(self._critical) or (
                lines_spec.critical is not None and _truthy(lines_spec.critical(ctx, element))
            )
            abnormal = critical or not upper.isdisjoint(lines_spec.abnormal_flags)
            lines.append(Observation(values, flags, critical, abnormal))
        return lines

    def _event(
        self,
        spec: _File,
        rule: _Rule,
        ctx: _Ctx,
        resource: dict[str, Any],
        lines: list[Observation],
        message_id: str,
        source: str,
        origin: dict[str, str],
        received_at: datetime,
    ) -> ClinicalEvent:
        severity = next((s for cond, s in rule.severity_rules if _truthy(cond(ctx, resource))), rule.severity)
        texts = {key: getter(ctx, resource) for key, getter in spec.texts.items()}
        mrn = _one(spec.mrn, ctx, resource)
        identifiers = spec.identifiers(ctx, resource) if spec.identifiers is not None else []
        location = {part: getter(ctx, resource) for part, getter in spec.location.items()}
        prior = {part: getter(ctx, resource) for part, getter in spec.prior_location.items()}
        found = Found(
            texts=texts,
            mrn=mrn,
            identifiers=identifiers,
            location={k: v for k, v in location.items() if v is not None},
            prior_location={k: v for k, v in prior.items() if v is not None} or None,
            attending=_one(spec.attending, ctx, resource),
            subject_kind=spec.subject_kind,
            observations=lines,
            occurred_at=self._occurred(spec, ctx, resource),
        )
        return assemble_event(
            found,
            Verdict(rule.type, severity, rule.lifecycle),
            # One version of one resource is one fact: at most one event, numbered like the HL7 ones.
            event_id=f"{message_id}-1",
            message_id=message_id,
            source=source,
            origin=origin,
            received_at=received_at,
            facts=ctx.facts,
            thread_key=lambda: _first_rendered(spec.thread_key, ctx, resource),
            dedup_key=lambda: _first_rendered(spec.dedup_key, ctx, resource),
            links=lambda: {
                name: value for name, getters in rule.links if (value := _first_rendered(getters, ctx, resource))
            },
        )

    @staticmethod
    def _occurred(spec: _File, ctx: _Ctx, resource: dict[str, Any]) -> datetime | None:
        for getter in spec.occurred_at:
            text = getter(ctx, resource)
            parsed = fhir_instant(text) if text is not None else None
            if parsed is not None:
                return parsed
        return None


def _first_rendered(templates: Sequence[Getter], ctx: _Ctx, focus: Any) -> str | None:
    for template in templates:
        value = template(ctx, focus)
        if value is not None:
            return value
    return None
