"""HL7 v2 for the bridge: the lazy ER7 reader, ACK building, and opt-in strict validation."""

from __future__ import annotations

from bridge.hl7.ack import AckCode, ack_code, build_ack, build_nak_from_bytes, new_control_id
from bridge.hl7.reader import (
    Delimiters,
    FieldPath,
    Message,
    Segment,
    escape,
    parse,
    parse_path,
    read_delimiters,
    split_messages,
    unescape,
)
from bridge.hl7.validation import validate_strict

__all__ = [
    "AckCode",
    "Delimiters",
    "FieldPath",
    "Message",
    "Segment",
    "ack_code",
    "build_ack",
    "build_nak_from_bytes",
    "escape",
    "new_control_id",
    "parse",
    "parse_path",
    "read_delimiters",
    "split_messages",
    "unescape",
    "validate_strict",
]
