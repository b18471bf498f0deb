"""HL7 v2 acknowledgements: the ACK (or NAK) a receiver sends back for one inbound message.

The rules are those of REFERENCE.md §1.3: sender and receiver swapped, a new
MSH-10, MSH-11/12 copied, MSA-2 = inbound MSH-10, and the ACK's own MSH-15/16
set to NE because acknowledging an acknowledgement loops forever. Errors are
reported in ERR-2/ERR-3 from v2.5 on and in ERR-1 before that. When the bytes
could not be parsed at all, :func:`build_nak_from_bytes` salvages what it can
from the raw MSH so the sender still learns which message failed.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from enum import StrEnum
from time import time_ns
from typing import Literal

from bridge.errors import HL7Error, ParseError
from bridge.hl7.reader import Delimiters, Message, escape, read_delimiters

__all__ = [
    "AckCode",
    "ack_code",
    "build_ack",
    "build_nak_from_bytes",
    "new_control_id",
]

Outcome = Literal["accept", "error", "reject"]

# HL7 table 0357 display texts, used as ERR-3.2 / ERR-1.4.2.
_TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}
# MSA-3 is ST(80) in v2.3-v2.6 and ERR-8 TX(250) in v2.5+: cut here, so that a
# strict sender does not reject the very ACK that explains its error.
_MSA3_MAX = 80
_ERR8_MAX = 250
_STANDARD = Delimiters("|", "^", "~", "\\", "&", None)
_DEFAULT_VERSION = "2.5"
_VERSION_NUMBER = re.compile(r"\d+(?:\.\d+)*")
# Control characters (0x1C in particular ends an MLLP frame) never go back on the wire.
_CONTROL = dict.fromkeys([*range(0x20), 0x7F])
_CONTROL_TO_SPACE = dict.fromkeys([*range(0x20), 0x7F], " ")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class AckCode(StrEnum):
    """MSA-1 acknowledgement codes, HL7 table 0008."""

    #: Original mode (or enhanced application ACK): accepted and processed.
    AA = "AA"
    #: Original mode: the message has an error; the sender should fix it, not resend it.
    AE = "AE"
    #: Original mode: rejected (MSH-9/11/12 unacceptable, or a receiver problem); resend later.
    AR = "AR"
    #: Enhanced mode accept ACK: committed to safe storage; the sender may stop resending.
    CA = "CA"
    #: Enhanced mode accept ACK: the message has an error.
    CE = "CE"
    #: Enhanced mode accept ACK: rejected.
    CR = "CR"


def ack_code(accepted: Outcome, enhanced: bool) -> AckCode:
    """The MSA-1 code for an outcome, in enhanced (CA/CE/CR) or original (AA/AE/AR) mode."""
    if accepted == "accept":
        return AckCode.CA if enhanced else AckCode.AA
    if accepted == "error":
        return AckCode.CE if enhanced else AckCode.AE
    return AckCode.CR if enhanced else AckCode.AR


def new_control_id() -> str:
    """A unique MSH-10 of 20 characters (the ST limit from v2.5): 48 bits of milliseconds, 52 random bits.

    Crockford base32 keeps it to [0-9A-Z], which no HL7 delimiter can collide with,
    and the time prefix makes IDs sort by creation for whoever reads a log.
    """
    value = (time_ns() // 1_000_000 & (1 << 48) - 1) << 52 | int.from_bytes(os.urandom(7), "big") >> 4
    chars = []
    for _ in range(20):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _version_key(version: str) -> tuple[int, ...] | None:
    """Numeric version tuple (``"2.5.1"`` → (2, 5, 1)); None when there is no number at all.

    Each part is capped at six digits so that fuzzed values like ``2.8.1000…0`` stay cheap.
    """
    match = _VERSION_NUMBER.search(version)
    if match is None:
        return None
    return tuple(int(part[:6]) for part in match.group(0).split("."))


def _uses_err_2(version: str) -> bool:
    key = _version_key(version)
    # An unreadable version gets the current form: ERR-1 is backward compatibility only.
    return key is None or key >= (2, 5)


def _timestamp(now: datetime) -> str:
    # A naive datetime carries no offset; the bridge's clock is UTC, so say so.
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.strftime("%Y%m%d%H%M%S%z")


def _clean(value: str) -> str:
    return value.translate(_CONTROL)


def _one_line(text: str) -> str:
    """Error text for MSA-3/ERR-8: control characters become spaces, runs of spaces one."""
    return " ".join(text.translate(_CONTROL_TO_SPACE).split())


def _msa_text(outcome: Outcome, error: HL7Error | None) -> str:
    if outcome == "accept":
        return ""
    text = str(error) if error is not None else ("message rejected" if outcome == "reject" else "message error")
    return _one_line(text)[:_MSA3_MAX]


def _err_segment(d: Delimiters, version: str, error: HL7Error | None) -> str:
    code = error.code if error is not None else 207
    label = _TABLE_0357.get(code, "Application error")
    location = error.location if error is not None else None
    c = d.component
    where: list[str] = []
    if location is not None:
        seg, seq, field = location
        where = [escape(seg, d), str(seq)] + ([str(field)] if field else [])
    if _uses_err_2(version):
        coded = c.join([str(code), escape(label, d), "HL70357"])
        fields = ["ERR", "", c.join(where), coded, "E"]
        if error is not None:
            # ERR-8 user message: MSA-3 was withdrawn in v2.7, so the text travels here too.
            fields += ["", "", "", escape(_one_line(str(error))[:_ERR8_MAX], d)]
        return d.field.join(fields)
    # v2.1-v2.4 ERR-1 "Error Code and Location": SEG^seq^field^code&text&system.
    s = d.subcomponent
    coded = s.join([str(code), escape(label, d), "HL70357"]) if s else str(code)
    while len(where) < 3:
        where.append("")
    return d.field.join(["ERR", c.join([*where, coded])])


def _assemble(
    d: Delimiters,
    header: dict[int, str],
    code: AckCode,
    inbound_control_id: str,
    outcome: Outcome,
    error: HL7Error | None,
    version: str,
) -> str:
    """The ACK text: MSH from ``header`` (field number → encoded text), MSA, and ERR unless accepted."""
    last = max(header)
    msh = ["MSH", d.encoding_characters] + [header.get(n, "") for n in range(3, last + 1)]
    segments = [
        d.field.join(msh),
        d.field.join(
            ["MSA", code.value, inbound_control_id]
            + ([escape(_msa_text(outcome, error), d)] if outcome != "accept" else [])
        ),
    ]
    if outcome != "accept":
        segments.append(_err_segment(d, version, error))
    return "\r".join(segments) + "\r"


def build_ack(
    message: Message,
    outcome: Outcome,
    *,
    control_id: str,
    now: datetime,
    error: HL7Error | None = None,
) -> bytes:
    """The ACK for a parsed inbound message, encoded with the message's own codec."""
    d = message.delimiters
    msh = message.segments[0]

    def raw(n: int) -> str:
        # Copied fields are taken as sent (still escaped, components kept) so the
        # sender recognises its own identifiers byte for byte.
        return _clean(d.repetition.join(msh.repetitions(n)))

    version = message.version
    trigger_reps = msh.repetitions(9)
    trigger_components = trigger_reps[0].split(d.component) if trigger_reps else []
    trigger = _clean(trigger_components[1]) if len(trigger_components) > 1 else ""
    header = {
        3: raw(5),
        4: raw(6),
        5: raw(3),
        6: raw(4),
        7: _timestamp(now),
        9: d.component.join(["ACK", trigger, "ACK"]),
        10: escape(control_id, d),
        11: raw(11) or "P",
        12: raw(12) or _DEFAULT_VERSION,
        15: "NE",
        16: "NE",
    }
    charset = raw(18)
    if charset:
        header[18] = charset
    text = _assemble(
        d,
        header,
        ack_code(outcome, message.enhanced_mode),
        raw(10),
        outcome,
        error,
        version or _DEFAULT_VERSION,
    )
    return text.encode(message.encoding, errors="replace")


class _Salvage:
    """What could be read from the raw MSH of bytes that did not parse."""

    __slots__ = ("delimiters", "fields", "inbound")

    def __init__(self, delimiters: Delimiters, fields: list[str], inbound: Delimiters) -> None:
        self.delimiters = delimiters  # what the NAK is written with
        self.fields = fields  # index == spec field number, text as sent
        self.inbound = inbound  # what the sender's values are split with

    def copy(self, n: int) -> str:
        """Field ``n`` for the NAK: as sent when the sender's delimiters are ours, else escaped whole."""
        value = _clean(self.fields[n]) if n < len(self.fields) else ""
        return value if self.inbound is self.delimiters else escape(value, self.delimiters)

    def component(self, n: int, index: int) -> str:
        """Component ``index`` of the first repetition of field ``n``, ready for the NAK like :meth:`copy`."""
        value = _clean(self.fields[n]) if n < len(self.fields) else ""
        if self.inbound.repetition:
            value = value.split(self.inbound.repetition)[0]
        parts = value.split(self.inbound.component)
        part = parts[index - 1] if index <= len(parts) else ""
        return part if self.inbound is self.delimiters else escape(part, self.delimiters)


def _standard_avoiding(fs: str) -> Delimiters:
    """The usual ``^~\\&``, with any character that clashes with this field separator replaced."""
    spare = iter(c for c in "#$%*!" if c != fs)
    chars = [c if c != fs else next(spare) for c in "^~\\&"]
    return Delimiters(fs, chars[0], chars[1], chars[2], chars[3], None)


def _salvage(data: bytes) -> _Salvage | None:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    start = data.find(b"MSH")
    if start < 0 or len(data) < start + 5:
        return None
    body = data[start:]
    fs = chr(body[3])
    if not ("!" <= fs <= "~") or fs.isalnum():
        return None
    cut = min(p for p in (body.find(b"\r"), body.find(b"\n"), len(body)) if p >= 0)
    # latin-1 keeps every byte as one char, so salvaged values go back exactly as they came.
    fields = body[:cut].decode("latin-1").split(fs)
    fields.insert(1, fs)
    try:
        inbound = read_delimiters(body)
    except ParseError:
        # The encoding characters cannot be trusted: "^" is by far the most common
        # component separator, good enough to find the trigger event; values are
        # then escaped whole with delimiters of our own.
        ours = _standard_avoiding(fs)
        return _Salvage(ours, fields, Delimiters(fs, "^" if fs != "^" else ours.component, "", "", "", None))
    return _Salvage(inbound, fields, inbound)


def build_nak_from_bytes(
    data: bytes,
    outcome: Literal["error", "reject"],
    *,
    control_id: str,
    now: datetime,
    error: HL7Error,
) -> bytes:
    """The best NAK the raw bytes allow.

    MSH-3..6, 9, 10, 11, 12, 15 and 16 are salvaged with whatever delimiters can be
    recovered; without a usable MSH the NAK is generic (MSA-2 empty, v2.5), which
    still tells the sender its message was received and refused (REFERENCE.md §1.4).
    """
    salvaged = _salvage(data)
    if salvaged is None:
        salvaged = _Salvage(_STANDARD, ["MSH", "|", "^~\\&"], _STANDARD)
    d = salvaged.delimiters
    version = salvaged.component(12, 1)
    enhanced = bool(salvaged.copy(15).strip() or salvaged.copy(16).strip())
    header = {
        3: salvaged.copy(5),
        4: salvaged.copy(6),
        5: salvaged.copy(3),
        6: salvaged.copy(4),
        7: _timestamp(now),
        9: d.component.join(["ACK", salvaged.component(9, 2), "ACK"]),
        10: escape(control_id, d),
        11: salvaged.copy(11) or "P",
        12: salvaged.copy(12) or _DEFAULT_VERSION,
        15: "NE",
        16: "NE",
    }
    text = _assemble(
        d,
        header,
        ack_code(outcome, enhanced),
        salvaged.copy(10),
        outcome,
        error,
        version or _DEFAULT_VERSION,
    )
    return text.encode("latin-1", errors="replace")
