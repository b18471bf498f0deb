"""The event catalogue: load ``mappings/catalogue.yaml``, build each type's JSON Schema, validate events, write docs.

The catalogue is the one source of what each event type means, its default
severity, the fields it carries, its lifecycles with their links, its sources
and its version. From it come ``docs/events.md`` and one JSON Schema 2020-12
per type (``docs/schemas/events/<type>.json``): the pydantic schema of
:class:`~bridge.events.ClinicalEvent` narrowed to what the type allows (its
``type``, its lifecycles and the links each one requires, its subject kinds,
and no content it does not carry). ``python -m bridge.catalogue --write``
regenerates the docs; ``--check`` fails naming what is stale.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema

from bridge.errors import BridgeError, MappingError
from bridge.events import ClinicalEvent, EventType, Lifecycle, Severity
from bridge.mapping import load_document, mappings_dir

__all__ = [
    "Catalogue",
    "EventSchemaError",
    "EventSpec",
    "FhirSource",
    "Hl7Source",
    "Link",
    "RoutesAs",
    "Stage",
    "catalogue",
    "event_schema",
    "generated_files",
    "load_catalogue",
    "main",
    "render_markdown",
    "routes_as_table",
    "stale_files",
    "validate_event",
    "write_files",
]

#: Every event type's name.
_TYPE_VALUES = frozenset(e.value for e in EventType)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: Where the generated files go, relative to the docs folder.
MARKDOWN = Path("events.md")
SCHEMAS = Path("schemas/events")

RefersTo = Literal["types", "subject", "identity"]


class EventSchemaError(BridgeError):
    """An event does not fit the JSON Schema of its type. ``path`` is the JSON path of the first problem.

    The message names the type, the event id and the path, never the content (no PHI).
    """

    def __init__(self, message: str, *, event_type: str, path: str) -> None:
        self.event_type = event_type
        self.path = path
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Link:
    """A link an event carries: its name, what its value refers to, and what the value is."""

    name: str
    refers_to: RefersTo
    value: str


@dataclass(frozen=True, slots=True)
class Stage:
    """One lifecycle a type may have: when it applies, its links, and the types of post it edits or strikes."""

    lifecycle: Lifecycle
    when: str | None
    links: tuple[Link, ...]
    #: ``all``: every link is required; ``any``: at least one.
    requires: Literal["all", "any"]
    supersedes: tuple[EventType, ...]


@dataclass(frozen=True, slots=True)
class RoutesAs:
    """Events of the type at ``severity`` or above also match the routes for ``type``."""

    severity: Severity
    type: EventType


@dataclass(frozen=True, slots=True)
class Hl7Source:
    """HL7 v2 message types and triggers (``ADT^A01``) that give the event, and how."""

    triggers: tuple[str, ...]
    note: str | None


@dataclass(frozen=True, slots=True)
class FhirSource:
    """A FHIR resource type and the statuses that give the event, and how."""

    resource: str
    statuses: tuple[str, ...]
    note: str | None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event type of the catalogue."""

    type: EventType
    version: int
    meaning: str
    severity: Severity
    subject_kinds: tuple[str, ...]
    fields: tuple[str, ...]
    stages: tuple[Stage, ...]
    hl7v2: tuple[Hl7Source, ...]
    fhir: tuple[FhirSource, ...]
    #: Set for events the bridge raises itself (not mapped from a message): by what.
    bridge: str | None
    #: Other types whose routes the type's events also match, from a severity on.
    routes_as: tuple[RoutesAs, ...] = ()


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The whole catalogue, types in the file's order."""

    version: int
    lifecycles: dict[Lifecycle, str]
    links: dict[str, str]
    references: dict[str, str]
    specific_fields: tuple[str, ...]
    types: dict[EventType, EventSpec]
    source: str


# --- loading ---------------------------------------------------------------------------------------


def load_catalogue(path: Path | None = None) -> Catalogue:
    """Read and check a catalogue file (the bundled one by default).

    Raises MappingError naming the file and the path of the first problem: the
    JSON Schema (``catalogue.schema.json``) first, then what a schema cannot say
    (every EventType present and no other, fields that exist on ClinicalEvent,
    lifecycles with the links and supersedes they need).
    """
    path = path or mappings_dir() / "catalogue.yaml"
    doc = load_document(path, mappings_dir() / "catalogue.schema.json")
    source = str(path)
    names = {t.value for t in EventType}
    unknown = sorted(set(doc["types"]) - names)
    if unknown:
        raise MappingError(f"not an EventType: {', '.join(unknown)}", source=source, path="$.types")
    missing = [t.value for t in EventType if t.value not in doc["types"]]
    if missing:
        raise MappingError(f"EventType missing from the catalogue: {', '.join(missing)}", source=source, path="$.types")
    base = _base_schema()
    specific = tuple(doc["specific_fields"])
    for i, name in enumerate(specific):
        _check_field(base, name, source, f"$.specific_fields[{i}]")
    types = {
        EventType(name): _spec(name, entry, base, set(doc["links"]), source) for name, entry in doc["types"].items()
    }
    return Catalogue(
        version=doc["version"],
        lifecycles={Lifecycle(k): v for k, v in doc["lifecycles"].items()},
        links=dict(doc["links"]),
        references=dict(doc["references"]),
        specific_fields=specific,
        types=types,
        source=source,
    )


@functools.cache
def catalogue() -> Catalogue:
    """The bundled catalogue, loaded once."""
    return load_catalogue()


def _spec(name: str, entry: dict[str, Any], base: dict[str, Any], link_names: set[str], source: str) -> EventSpec:
    where = f"$.types['{name}']"
    for i, field_name in enumerate(entry["fields"]):
        _check_field(base, field_name, source, f"{where}.fields[{i}]")
    stages = tuple(
        _stage(Lifecycle(lifecycle), spec, link_names, source, f"{where}.lifecycles.{lifecycle}")
        for lifecycle, spec in entry["lifecycles"].items()
    )
    sources = entry["sources"]
    unknown = [r["type"] for r in entry.get("routes_as", ()) if r["type"] not in _TYPE_VALUES]
    if unknown:
        raise MappingError(f"not an EventType: {', '.join(unknown)}", source=source, path=f"{where}.routes_as")
    return EventSpec(
        type=EventType(name),
        version=entry["version"],
        meaning=entry["meaning"].strip(),
        severity=Severity(entry["severity"]),
        subject_kinds=tuple(entry["subject"]),
        fields=tuple(entry["fields"]),
        stages=stages,
        hl7v2=tuple(Hl7Source(tuple(s["triggers"]), s.get("note")) for s in sources.get("hl7v2", ())),
        fhir=tuple(
            FhirSource(s["resource"], tuple(s.get("status", ())), s.get("note")) for s in sources.get("fhir", ())
        ),
        bridge=sources.get("bridge"),
        routes_as=tuple(RoutesAs(Severity(r["severity"]), EventType(r["type"])) for r in entry.get("routes_as", ())),
    )


@functools.cache
def routes_as_table() -> dict[EventType, tuple[RoutesAs, ...]]:
    """Per type of the bundled catalogue, the other types whose routes its events also match (``routes_as``)."""
    return {spec.type: spec.routes_as for spec in catalogue().types.values() if spec.routes_as}


#: The link that names what a lifecycle edits (correct) or strikes (cancel).
_TARGET_LINK = {Lifecycle.CORRECT: "corrects", Lifecycle.CANCEL: "cancels"}


def _stage(lifecycle: Lifecycle, spec: dict[str, Any], link_names: set[str], source: str, where: str) -> Stage:
    links = tuple(Link(n, s["refers_to"], " ".join(s["value"].split())) for n, s in spec.get("links", {}).items())
    unknown = [t for t in spec.get("supersedes", ()) if t not in _TYPE_VALUES]
    if unknown:
        raise MappingError(f"not an EventType: {', '.join(unknown)}", source=source, path=f"{where}.supersedes")
    supersedes = tuple(EventType(t) for t in spec.get("supersedes", ()))
    undefined = [link.name for link in links if link.name not in link_names]
    if undefined:
        raise MappingError(f"link not described under links: {', '.join(undefined)}", source=source, path=where)
    target = _TARGET_LINK.get(lifecycle)
    others = {"cancels", "corrects"} - {target} if target else {"cancels", "corrects"}
    if target is not None and (target not in {link.name for link in links} or not supersedes):
        raise MappingError(f"{lifecycle.value} needs a '{target}' link and supersedes", source=source, path=where)
    if target is None and supersedes:
        raise MappingError(f"{lifecycle.value} supersedes nothing", source=source, path=f"{where}.supersedes")
    wrong = sorted(others & {link.name for link in links})
    if wrong:
        raise MappingError(f"{lifecycle.value} carries no {', '.join(wrong)} link", source=source, path=where)
    if any(link.refers_to == "types" for link in links) and not supersedes:
        raise MappingError("a link to event types needs supersedes (the types)", source=source, path=where)
    return Stage(
        lifecycle=lifecycle,
        when=spec.get("when"),
        links=links,
        requires=spec.get("requires", "all"),
        supersedes=supersedes,
    )


def _check_field(base: dict[str, Any], name: str, source: str, where: str) -> None:
    try:
        _property(base, name)
    except KeyError:
        raise MappingError(f"'{name}' is not a field of ClinicalEvent", source=source, path=where) from None


# --- JSON Schemas ----------------------------------------------------------------------------------


@functools.cache
def _pydantic_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _simplified(ClinicalEvent.model_json_schema(mode="serialization"))
    return schema


def _simplified(node: Any) -> Any:
    """``anyOf`` of bare types (pydantic's ``str | None``) as one ``type`` list: the same schema, read faster."""
    if isinstance(node, list):
        return [_simplified(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _simplified(value) for key, value in node.items()}
    branches = out.get("anyOf")
    if branches and all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        del out["anyOf"]
        out["type"] = [b["type"] for b in branches]
    return out


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every local ``$ref`` replaced by its definition (ClinicalEvent is not recursive)."""
    if isinstance(node, list):
        return [_inlined(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _inlined(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    return {key: _inlined(value, defs) for key, value in node.items() if key != "$defs"}


def _base_schema() -> dict[str, Any]:
    """A fresh copy of the pydantic JSON Schema of ClinicalEvent (callers edit it)."""
    return copy.deepcopy(_pydantic_schema())


def _property(schema: dict[str, Any], dotted: str) -> tuple[dict[str, Any], str]:
    """The ``properties`` object holding the last part of ``dotted``, and that part's name.

    Follows ``$ref`` into ``$defs`` and the object branch of ``anyOf`` (optional
    fields). Raises KeyError when a part is not a property.
    """
    node = schema
    *parents, last = dotted.split(".")
    for part in parents:
        node = _object_of(schema, node["properties"][part])
    if last not in node.get("properties", {}):
        raise KeyError(dotted)
    props: dict[str, Any] = node["properties"]
    return props, last


def _object_of(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    for candidate in [node, *node.get("anyOf", ())]:
        if "$ref" in candidate:
            target: dict[str, Any] = root["$defs"][candidate["$ref"].rsplit("/", 1)[1]]
            return target
        if "properties" in candidate:
            found: dict[str, Any] = candidate
            return found
    raise KeyError("not an object")


def event_schema(event_type: EventType | str, cat: Catalogue | None = None) -> dict[str, Any]:
    """The JSON Schema (2020-12) of one event type, as ``model_dump(mode="json")`` of its events must fit.

    Constraints beyond ClinicalEvent's own: ``type`` is this type; ``lifecycle`` is
    one it allows, and for each lifecycle ``links`` holds exactly the links it
    carries (the required ones present, links to event types naming only the
    types it supersedes); ``subject`` is null or of an allowed kind; and the
    specific fields the type does not carry (observations, start, end, detail)
    are empty. Clinical content a feed may omit is never required.
    """
    cat = cat or catalogue()
    spec = cat.types[EventType(event_type)]
    name = spec.type.value
    base = _base_schema()
    props = base["properties"]
    props["type"] = {"const": name}
    lifecycles = [s.lifecycle.value for s in spec.stages]
    props["lifecycle"] = {"enum": lifecycles}
    required = list(base.get("required", ()))
    if Lifecycle.NEW.value in lifecycles:
        props["lifecycle"]["default"] = Lifecycle.NEW.value
    else:
        required.append("lifecycle")
    subject_def = _object_of(base, props["subject"])
    subject_def["properties"]["kind"] = {"enum": list(spec.subject_kinds)}
    for field_name in cat.specific_fields:
        if field_name in spec.fields:
            continue
        holder, last = _property(base, field_name)
        is_array = holder[last].get("type") == "array"
        holder[last] = {"type": "array", "maxItems": 0} if is_array else {"type": "null"}
        holder[last]["description"] = f"Always empty: {name} does not carry it."
    defs = base.pop("$defs")
    for unused in ("EventType", "Lifecycle"):
        defs.pop(unused, None)
    base.pop("title", None)
    base.pop("description", None)
    return {
        "$schema": DRAFT,
        "$id": f"urn:ehr-bridge:event:{name}:v{spec.version}",
        "title": name,
        "description": spec.meaning,
        **base,
        "required": required,
        "allOf": [_links_rule(name, stage) for stage in spec.stages],
        "$defs": defs,
    }


def _links_rule(name: str, stage: Stage) -> dict[str, Any]:
    """``links`` of events of this lifecycle: only its links; the required ones present; type links named well."""
    names = [link.name for link in stage.links]
    links: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}}
    if not names:
        links["description"] = f"A {stage.lifecycle.value} {name} carries no links."
        links["maxProperties"] = 0
    else:
        need = "required" if stage.requires == "all" else "at least one"
        plural = "s" if len(names) > 1 else ""
        links["description"] = f"A {stage.lifecycle.value} {name} carries the link{plural} {', '.join(names)} ({need})."
        links["propertyNames"] = {"enum": names}
        if stage.requires == "all":
            links["required"] = names
        else:
            links["minProperties"] = 1
        for link in stage.links:
            if link.refers_to == "types":
                types = [t.value for t in stage.supersedes]
                one = "(?:" + "|".join(re.escape(t) for t in types) + ")"
                links.setdefault("properties", {})[link.name] = {
                    "description": f"Comma-separated event types among {', '.join(types)}.",
                    "type": "string",
                    "pattern": f"^{one}(?: *, *{one})*$",
                }
    when: dict[str, Any] = {"properties": {"lifecycle": {"const": stage.lifecycle.value}}}
    if stage.lifecycle is not Lifecycle.NEW:
        # An event without a lifecycle is new (the model's default).
        when["required"] = ["lifecycle"]
    then: dict[str, Any] = {"properties": {"links": links}}
    if names:
        then["required"] = ["links"]
    return {"if": when, "then": then}


@functools.cache
def _validator(event_type: EventType) -> jsonschema.Draft202012Validator:
    # Resolving $ref through the referencing registry costs about a third of each validation: inline them.
    schema = event_schema(event_type)
    return jsonschema.Draft202012Validator(_inlined(schema, schema["$defs"]))


def validate_event(event: ClinicalEvent) -> None:
    """Check an event against the JSON Schema of its type (of the bundled catalogue).

    Raises EventSchemaError naming the type, the event id and the JSON path of the first problem.
    """
    validator = _validator(event.type)
    error = jsonschema.exceptions.best_match(validator.iter_errors(event.model_dump(mode="json")))
    if error is None:
        return
    path = error.json_path
    raise EventSchemaError(
        f"{event.type.value} event {event.id} does not fit its catalogue schema: {path}: {_reason(error)}",
        event_type=event.type.value,
        path=path,
    )


def _reason(error: jsonschema.exceptions.ValidationError) -> str:
    """What is wrong, without the offending content (it may be clinical); codes (lifecycle, kind) are named."""
    expected = error.validator_value
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    why = ""
    if isinstance(description, str):
        text = description.removeprefix("Always empty: ").rstrip(".")
        why = f" ({text[:1].lower()}{text[1:]})"
    match error.validator:
        case "const":
            return f"{error.instance!r} is not {expected!r}"
        case "enum" if isinstance(expected, list):
            return f"{error.instance!r} is not one of {', '.join(map(repr, expected))}"
        case "maxItems" | "maxProperties" if expected == 0:
            return f"must be empty{why}"
        case "type" if expected == "null":
            return f"must be empty{why}"
        case "type":
            return f"must be of type {expected}{why}"
        case "pattern":
            return f"does not fit{why}"
        case "minLength":
            return "must not be an empty text"
        case "required" | "additionalProperties":
            return f"{error.message}{why}"
        case "minProperties":
            return f"must have at least {expected}{why}"
        case _:
            return f"fails {error.validator}{why}"


# --- docs ------------------------------------------------------------------------------------------


def generated_files(cat: Catalogue | None = None) -> dict[Path, str]:
    """Every generated file by its path relative to the docs folder, with its content."""
    cat = cat or catalogue()
    files = {MARKDOWN: render_markdown(cat)}
    for event_type in cat.types:
        schema = event_schema(event_type, cat)
        files[SCHEMAS / f"{event_type.value}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return files


def stale_files(docs: Path, cat: Catalogue | None = None) -> list[str]:
    """What differs between ``docs`` and the generated files: stale, missing, or left over from a removed type."""
    expected = generated_files(cat)
    problems = []
    for rel, text in expected.items():
        target = docs / rel
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif target.read_text(encoding="utf-8") != text:
            problems.append(f"{target}: stale")
    schema_dir = docs / SCHEMAS
    if schema_dir.is_dir():
        for extra in sorted(schema_dir.glob("*.json")):
            if extra.relative_to(docs) not in expected:
                problems.append(f"{extra}: not a type of the catalogue")
    return problems


def write_files(docs: Path, cat: Catalogue | None = None) -> list[Path]:
    """Write the generated files under ``docs`` (and delete schemas of types that are gone); the changed paths."""
    expected = generated_files(cat)
    changed = []
    for rel, text in expected.items():
        target = docs / rel
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            changed.append(target)
    for extra in sorted((docs / SCHEMAS).glob("*.json")):
        if extra.relative_to(docs) not in expected:
            extra.unlink()
            changed.append(extra)
    return changed


_FAMILIES = {
    "patient": "Patients",
    "encounter": "Encounters",
    "result": "Results",
    "order": "Orders",
    "appointment": "Appointments",
    "document": "Documents",
    "medication": "Medication",
    "bridge": "The bridge itself",
}
_EFFECT = {Lifecycle.CORRECT: "edits", Lifecycle.CANCEL: "strikes"}
#: Shown where a lifecycle has no links or edits nothing.
_NONE = "\N{EN DASH}"
_REFERS = {"types": "event types", "subject": "a subject key", "identity": "a patient identity"}


def _anchor(text: str) -> str:
    """The GitHub anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _code(items: Iterable[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def render_markdown(cat: Catalogue | None = None) -> str:
    """docs/events.md: contents, how lifecycles and links edit and strike posts, then every type."""
    cat = cat or catalogue()
    out = [
        "# Event catalogue",
        "",
        "<!-- Generated from mappings/catalogue.yaml by `make docs` (python -m bridge.catalogue --write). "
        "Do not edit by hand: a test fails when this file and the catalogue differ. -->",
        "",
        f"Catalogue version {cat.version}. Every event is a `ClinicalEvent` (CloudEvents type "
        "`org.ehr-bridge.<type>`). Each type has a JSON Schema (2020-12) in "
        "[`schemas/events/`](schemas/events/), and every event the mappers build in the tests is validated "
        "against it. The severity shown is the default: a mapping may raise it (an abnormal result is a "
        "warning), and routes decide who sees what.",
        "",
        "## Contents",
        "",
        f"- [Lifecycle and links]({'#' + _anchor('Lifecycle and links')})",
        "",
        "| type | default severity | lifecycle | version | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in cat.types.values():
        first = spec.meaning.split(". ")[0].rstrip(".") + "."
        lifecycles = ", ".join(s.lifecycle.value for s in spec.stages)
        out.append(
            f"| [`{spec.type.value}`](#{_anchor(spec.type.value)}) | {spec.severity.value} | {lifecycles} "
            f"| {spec.version} | {_cell(first)} |"
        )
    out += ["", *_lifecycle_section(cat)]
    family = ""
    for spec in cat.types.values():
        prefix = spec.type.value.split(".")[0]
        if prefix != family:
            family = prefix
            out += [f"## {_FAMILIES.get(prefix, prefix.capitalize())}", ""]
        out += _type_section(spec)
    return "\n".join(out).rstrip("\n") + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _lifecycle_section(cat: Catalogue) -> list[str]:
    out = [
        "## Lifecycle and links",
        "",
        "Events of one thread (normally the visit) go to one thread of a channel. Each event's `lifecycle` "
        "says what it does to the posts before it:",
        "",
    ]
    out += [f"- `{lifecycle.value}`: {' '.join(text.split())}" for lifecycle, text in cat.lifecycles.items()]
    out += ["", "`links` name what an event refers to:", ""]
    out += [f"- `{name}`: {' '.join(text.split())}" for name, text in cat.links.items()]
    out += ["", "A link's value refers to one of:", ""]
    out += [f"- {_REFERS.get(kind, kind)}: {' '.join(text.split())}" for kind, text in cat.references.items()]
    out += [
        "",
        "What edits or strikes what:",
        "",
        "| event | lifecycle | link | refers to | edits or strikes the post of |",
        "|---|---|---|---|---|",
    ]
    for spec in cat.types.values():
        for stage in spec.stages:
            effect = _EFFECT.get(stage.lifecycle)
            if effect is None:
                continue
            target = next(link for link in stage.links if link.name == _TARGET_LINK[stage.lifecycle])
            out.append(
                f"| `{spec.type.value}` | {stage.lifecycle.value} | `{target.name}` | {_REFERS[target.refers_to]} "
                f"| {effect}: {_code(t.value for t in stage.supersedes)} |"
            )
    out += [
        "",
        f"Fields only some types carry ({_code(cat.specific_fields)}) are empty in every type that does not list them.",
        "",
    ]
    return out


def _type_section(spec: EventSpec) -> list[str]:
    name = spec.type.value
    out = [
        f"### `{name}`",
        "",
        " ".join(spec.meaning.split()),
        "",
        f"- **Default severity:** {spec.severity.value}",
        f"- **Subject:** {_code(spec.subject_kinds)}",
        f"- **Version:** {spec.version}",
        f"- **JSON Schema:** [`schemas/events/{name}.json`](schemas/events/{name}.json)",
        f"- **Fields:** {_code(spec.fields)}",
        "",
        "| lifecycle | when | edits or strikes | links |",
        "|---|---|---|---|",
    ]
    for stage in spec.stages:
        when = _cell(stage.when) if stage.when else ("always" if len(spec.stages) == 1 else "otherwise")
        effect = _EFFECT.get(stage.lifecycle)
        target = f"{effect} {_code(t.value for t in stage.supersedes)}" if effect else _NONE
        need = "required" if stage.requires == "all" else "at least one of them"
        links = "<br>".join(
            f"`{link.name}` ({need}; {_REFERS[link.refers_to]}): {_cell(link.value)}" for link in stage.links
        )
        out.append(f"| `{stage.lifecycle.value}` | {when} | {target} | {links or _NONE} |")
    for alias in spec.routes_as:
        out += ["", f"From severity {alias.severity.value} on, also matches the routes for `{alias.type.value}`."]
    out += ["", "**Sources**", ""]
    for h in spec.hl7v2:
        out.append(f"- HL7 v2 {_code(h.triggers)}" + (f": {h.note}" if h.note else ""))
    for f in spec.fhir:
        statuses = f" ({', '.join(f.statuses)})" if f.statuses else ""
        out.append(f"- FHIR `{f.resource}`{statuses}" + (f": {f.note}" if f.note else ""))
    if spec.bridge:
        out.append(f"- the bridge: {spec.bridge}")
    out.append("")
    return out


# --- command line ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.catalogue --write | --check [--docs DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bridge.catalogue", description="Generate or check the docs of the event catalogue."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="regenerate docs/events.md and docs/schemas/events/")
    action.add_argument("--check", action="store_true", help="exit 1 naming every generated file that is stale")
    parser.add_argument(
        "--docs", type=Path, default=mappings_dir().parent / "docs", help="the docs folder (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        cat = load_catalogue()
    except MappingError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.write:
        for path in write_files(args.docs, cat):
            print(f"wrote {path}")
        return 0
    problems = stale_files(args.docs, cat)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("run `make docs` to regenerate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
