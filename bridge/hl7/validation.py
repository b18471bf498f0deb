"""Opt-in strict validation of a parsed message against its declared HL7 version, with hl7apy.

hl7apy is 30-45x slower than the lazy reader (REFERENCE.md §1.9), so this runs
only for channels that ask for it. It works in three passes, so that the first
finding carries the most precise ERR-2 location hl7apy allows:

1. the declared version (MSH-12) and message structure (MSH-9) must be known;
2. each segment is parsed and validated on its own, so a finding names the
   segment occurrence and, by re-parsing growing prefixes, the field;
3. the whole message is parsed into its groups (``find_groups=True``) and
   validated, which catches missing required segments and groups.

hl7apy raises its own exception types and, for bad values, plain ``ValueError``;
all of them are turned into :class:`bridge.errors.ValidationError` here, once.
"""

from __future__ import annotations

import re
from typing import Any

import hl7apy
from hl7apy import exceptions as hl7apy_errors
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message as Hl7apyMessage
from hl7apy.parser import parse_segment, parse_segments
from hl7apy.validation import Validator

from bridge.errors import ValidationError
from bridge.hl7.reader import Message, Segment

__all__ = ["validate_strict"]

_STRICT = VALIDATION_LEVEL.STRICT
# "PID_3" / "MSH_9" name a field; a bare "PV1" names a segment; anything longer is a group.
_FIELD_NAME = re.compile(r"([A-Z][A-Z0-9]{2})_([0-9]+)")
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
# hl7apy names the parent and child of a finding as "PARENT.CHILD" (e.g. "PID.PID_3",
# "PV1_7.XCN_1", "ADT_A01.PV1"); it is the only place its findings say where they are.
_PARENT_CHILD = re.compile(r"(?:child|for) ([A-Z0-9_]+)\.([A-Z0-9_]+)")

Location = tuple[str, int, int]

# HL7 v2.5 table 0354: events that share a message structure, for the families the
# bridge maps. Only consulted when MSH-9.3 is empty and CODE_TRIGGER is not a structure.
_EVENT_STRUCTURE: dict[str, dict[str, str]] = {
    "ADT": {
        **dict.fromkeys(("A01", "A04", "A08", "A13"), "ADT_A01"),
        **dict.fromkeys(("A05", "A14", "A28", "A31"), "ADT_A05"),
        **dict.fromkeys(("A06", "A07"), "ADT_A06"),
        **dict.fromkeys(("A09", "A10", "A11"), "ADT_A09"),
        **dict.fromkeys(("A21", "A22", "A23", "A25", "A26", "A27", "A29", "A32", "A33"), "ADT_A21"),
        **dict.fromkeys(("A34", "A35", "A36", "A46", "A47", "A48", "A49"), "ADT_A30"),
        **dict.fromkeys(("A39", "A40", "A41", "A42"), "ADT_A39"),
        **dict.fromkeys(("A43", "A44"), "ADT_A43"),
        **dict.fromkeys(("A50", "A51"), "ADT_A50"),
        **dict.fromkeys(("A52", "A53", "A55"), "ADT_A52"),
        **dict.fromkeys(("A61", "A62"), "ADT_A61"),
    },
    "SIU": {f"S{n}": "SIU_S12" for n in range(12, 27)},
    "MDM": {f"T{n:02d}": "MDM_T01" if n % 2 else "MDM_T02" for n in range(1, 12)},
    "BAR": {"P01": "BAR_P01", "P05": "BAR_P05", "P02": "BAR_P02", "P06": "BAR_P06"},
    "PPR": dict.fromkeys(("PC1", "PC2", "PC3"), "PPR_PC1"),
    "RDE": {"O11": "RDE_O11", "O25": "RDE_O11"},
    "REF": dict.fromkeys(("I12", "I13", "I14", "I15"), "REF_I12"),
}


def validate_strict(message: Message) -> None:
    """Raise :class:`ValidationError` for the first problem hl7apy finds; return when the message is valid."""
    version = message.version
    if version not in hl7apy.SUPPORTED_LIBRARIES:
        raise ValidationError(
            f"HL7 version {version[:20]!r} is not supported for validation",
            code=203,
            location=("MSH", 1, 12),
        )
    encoding_chars = _encoding_chars(message)
    skeleton = _hl7apy_message(message, version, encoding_chars)
    occurrences: dict[str, int] = {}
    for segment in message.segments:
        occurrence = occurrences[segment.name] = occurrences.get(segment.name, 0) + 1
        _check_segment(segment, occurrence, version, encoding_chars)
    # hl7apy needs CR separators and nothing else; the segments are already normalised.
    text = "\r".join(segment.raw for segment in message.segments) + "\r"
    try:
        # What parse_message does, but with the structure resolved above rather than
        # read from MSH-9.3, which parse_message would need and many senders omit.
        skeleton.children = parse_segments(text, version, encoding_chars, _STRICT, skeleton.reference, find_groups=True)
        Validator.validate(skeleton)
    except Exception as exc:  # the hl7apy boundary: every finding or slip becomes a ValidationError
        raise _translate(exc, None) from exc


def _encoding_chars(message: Message) -> dict[str, str]:
    d = message.delimiters
    chars = {
        "FIELD": d.field,
        "COMPONENT": d.component,
        "REPETITION": d.repetition,
        "ESCAPE": d.escape,
        "SUBCOMPONENT": d.subcomponent,
        "GROUP": "\r",
        "SEGMENT": "\r",
    }
    if d.truncation:
        chars["TRUNCATION"] = d.truncation
    if not all(chars.values()):
        # hl7apy cannot represent a message that lacks one of the four classic delimiters.
        raise ValidationError(
            "MSH-2 lacks encoding characters required by the standard", code=102, location=("MSH", 1, 2)
        )
    return chars


def _structure_candidates(message: Message) -> list[str]:
    """Structure names to try, best first: MSH-9.3, then CODE_TRIGGER, then table 0354.

    Before v2.3.1 there is no MSH-9.3, and even later many senders leave it out;
    hl7apy only knows structures (ADT_A01), not the events that share one (A04, A08).
    """
    code, trigger = message.message_code, message.trigger
    names = [message.structure] if message.structure else []
    if trigger:
        names.append(f"{code}_{trigger}")
    shared = _EVENT_STRUCTURE.get(code, {}).get(trigger)
    if shared:
        names.append(shared)
    return names or [code]


def _hl7apy_message(message: Message, version: str, encoding_chars: dict[str, str]) -> Any:
    """An empty hl7apy message of the right structure, or ValidationError(200)."""
    names = _structure_candidates(message)
    for name in names:
        try:
            return Hl7apyMessage(name, version=version, validation_level=_STRICT, encoding_chars=encoding_chars)
        except hl7apy_errors.InvalidName:
            continue
        except Exception as exc:  # the hl7apy boundary
            raise _translate(exc, ("MSH", 1, 9)) from exc
    raise ValidationError(
        f"message type {names[0][:20]!r} is not defined in HL7 v{version}", code=200, location=("MSH", 1, 9)
    )


def _check_segment(segment: Segment, occurrence: int, version: str, encoding_chars: dict[str, str]) -> None:
    try:
        parsed = parse_segment(segment.raw, version=version, encoding_chars=encoding_chars, validation_level=_STRICT)
        Validator.validate(parsed)
    except Exception as exc:  # the hl7apy boundary
        field = _failing_field(segment, version, encoding_chars)
        raise _translate(exc, (segment.name, occurrence, field)) from exc


def _failing_field(segment: Segment, version: str, encoding_chars: dict[str, str]) -> int:
    """The first field whose addition makes the segment fail to parse; 0 when parsing never fails.

    hl7apy's exceptions do not say where they happened, so the segment is re-parsed
    with one more field at a time. It runs only after a failure, on one segment.
    """
    fs = encoding_chars["FIELD"]
    parts = segment.raw.split(fs)
    # MSH-1 is the separator itself, so split index i holds MSH-(i+1).
    shift = 1 if segment.name == "MSH" else 0
    for index in range(1 + shift, len(parts)):
        if not parts[index]:
            continue
        try:
            parse_segment(
                fs.join(parts[: index + 1]),
                version=version,
                encoding_chars=encoding_chars,
                validation_level=_STRICT,
            )
        except Exception:  # the hl7apy boundary: any failure marks this field
            return index + shift
    return 0


def _location_from(text: str, where: Location | None) -> Location | None:
    """An ERR-2 location from the ``PARENT.CHILD`` names in an hl7apy finding.

    A 3-letter parent is a segment, so the child is its field; a ``SEG_n`` parent is
    a field, so the child is a component of it; any longer parent is a message or
    group, whose child is a segment (or a group, which has no ERR-2 form). The
    segment occurrence comes from ``where`` when it is about the same segment.
    """
    found = _PARENT_CHILD.search(text)
    if found is None:
        return where
    parent, child = found.groups()
    field = None
    if _SEGMENT_NAME.fullmatch(parent):
        field = _FIELD_NAME.fullmatch(child)
    elif _FIELD_NAME.fullmatch(parent):
        field = _FIELD_NAME.fullmatch(parent)
    if field is not None:
        segment, number = field.group(1), int(field.group(2))
        occurrence = where[1] if where is not None and where[0] == segment else 1
        return (segment, occurrence, number)
    if _SEGMENT_NAME.fullmatch(child):
        return (child, 1, 0)
    return where if where is not None and where[2] else None


def _element_name(element: Any) -> str:
    return str(getattr(element, "name", "") or "")


def _translate(exc: BaseException, where: Location | None) -> ValidationError:
    """Map one hl7apy exception to the closest table 0357 code, with the best location known."""
    text = str(exc)[:200]
    if isinstance(exc, hl7apy_errors.UnsupportedVersion):
        return ValidationError(f"HL7 version not supported: {text}", code=203, location=("MSH", 1, 12))
    if isinstance(exc, hl7apy_errors.ValidationError):
        location = _location_from(text, where)
        if text.startswith("Datatype"):
            return ValidationError(text, code=102, location=location)
        if text.startswith("Missing required child") and location is not None and location[2]:
            return ValidationError(text, code=101, location=location)
        # Missing or surplus segments and groups, children the structure does not allow.
        return ValidationError(text, code=100, location=location)
    if isinstance(exc, hl7apy_errors.MaxLengthReached):
        return ValidationError(f"value too long (max {exc.limit})", code=104, location=where)
    if isinstance(exc, hl7apy_errors.MaxChildLimitReached):
        child = exc.child
        name = _element_name(child)
        if getattr(child, "classname", "") in ("Segment", "Group"):
            # Too many of one segment: the limit counts within a group, so which
            # occurrence in the whole message broke it is unknown; name it in the text only.
            return ValidationError(f"{name or 'segment'} repeats more often than allowed", code=100)
        return ValidationError(text, code=102, location=where)
    if isinstance(exc, hl7apy_errors.InvalidName):
        if exc.cls == "Message":
            return ValidationError(text, code=200, location=("MSH", 1, 9))
        if exc.cls == "Segment":
            return ValidationError(text, code=100, location=(where[0], where[1], 0) if where else None)
        return ValidationError(text, code=102, location=where)
    if isinstance(exc, hl7apy_errors.OperationNotAllowed) and "unknown" in text:
        # Strict mode refuses elements the version does not define: a field past the
        # end of the segment definition, or a segment the structure cannot place.
        code = 102 if where is not None and where[2] else 100
        return ValidationError(f"element not defined in this HL7 version: {text}", code=code, location=where)
    if isinstance(exc, ValueError):
        # hl7apy's ValueError quotes the offending value: patient data never goes into error text.
        return ValidationError("value does not match its data type", code=102, location=where)
    if isinstance(exc, hl7apy_errors.InvalidDataType | hl7apy_errors.ChildNotValid):
        return ValidationError(text, code=102, location=where)
    if isinstance(exc, hl7apy_errors.ParserError | hl7apy_errors.InvalidEncodingChars):
        return ValidationError(text, code=100, location=where)
    return ValidationError(f"validator failed ({type(exc).__name__})", code=207, location=where)
