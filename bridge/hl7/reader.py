"""The lazy HL7 v2 ER7 reader: bytes in, 1-based field access out.

A message is decoded once and split into segment strings eagerly; a segment is
split into fields only when one of its fields is first asked for, and
components, subcomponents and escapes are resolved only for the leaf that is
returned. That keeps the hot path (MSH for the ACK and dedup, plus the handful
of fields a mapping reads) far cheaper than a full parse (DESIGN.md §5).

Every failure to read the bytes as HL7 is a :class:`bridge.errors.ParseError`
carrying a table 0357 code and the MSH location, so the ACK builder can answer
precisely; no other exception escapes :func:`parse` or :func:`split_messages`.
"""

from __future__ import annotations

import codecs
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from bridge.errors import ParseError

__all__ = [
    "Delimiters",
    "FieldPath",
    "Message",
    "Segment",
    "escape",
    "parse",
    "parse_path",
    "read_delimiters",
    "split_messages",
    "unescape",
]

_BOM = b"\xef\xbb\xbf"
_LEADING_JUNK = b" \t\r\n"
# Delimiters must be printable ASCII punctuation: letters and digits would be
# read as data, and anything outside ASCII would change meaning with the codec
# chosen from MSH-18, which itself can only be found once the delimiters are known.
_DELIMITER_CHARS = frozenset(string.punctuation)
_SEGMENT_ID_CHARS = frozenset(string.ascii_uppercase + string.digits)
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
_LINE_BREAK_RUN = re.compile(r"[\r\n][\r\n \t]*")
_MSH_AT_LINE_START = re.compile(r"(?:^|[\r\n])(MSH)")
_PATH = re.compile(
    r"(?:([A-Z][A-Z0-9]{2})-)?([1-9][0-9]*)(?:\[([1-9][0-9]*)\])?(?:\.([1-9][0-9]*))?(?:\.([1-9][0-9]*))?"
)

_CHARSET_LOCATION = ("MSH", 1, 18)


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The delimiters of one message, read from MSH-1 and MSH-2.

    MSH-2 normally holds four characters; v2.7 added a fifth, the truncation
    character. Messages from old senders sometimes carry fewer than four: a
    missing delimiter is the empty string and is simply never split on (a
    default such as ``&`` would silently cut data the sender never meant to split).
    """

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str | None

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it appears on the wire."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


class FieldPath(NamedTuple):
    """A parsed field path such as ``PID-3[2].4.1``; 0 means "not given" for component and subcomponent."""

    segment: str | None
    field: int
    repetition: int
    component: int
    subcomponent: int


@lru_cache(maxsize=4096)
def parse_path(path: str) -> FieldPath:
    """Parse ``SEG-F[R].C.S`` (segment prefix optional). Raises ValueError on malformed paths.

    Mapping files are compiled once, so callers can validate their paths here at load time.
    """
    match = _PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"not an HL7 field path: {path!r} (expected e.g. 'PID-3[1].1')")
    seg, field, rep, comp, sub = match.groups()
    return FieldPath(seg, int(field), int(rep) if rep else 1, int(comp) if comp else 0, int(sub) if sub else 0)


class Segment:
    """One segment: its text is kept as received (still escaped); fields are split on first access."""

    __slots__ = ("_delimiters", "_encoding", "_fields", "name", "raw")

    def __init__(self, raw: str, delimiters: Delimiters, encoding: str) -> None:
        self.raw = raw
        self.name = raw[:3]
        self._delimiters = delimiters
        self._encoding = encoding
        self._fields: list[str] | None = None

    def __repr__(self) -> str:
        # Only the segment id: the text is patient data and must not reach logs.
        return f"<Segment {self.name}>"

    def _split(self) -> list[str]:
        fields = self.raw.split(self._delimiters.field)
        if self.name == "MSH":
            # MSH-1 *is* the field separator, so the first text after it is MSH-2;
            # inserting the separator keeps list index == spec field number.
            fields.insert(1, self._delimiters.field)
        self._fields = fields
        return fields

    def repetitions(self, field: int) -> list[str]:
        """Each repetition's raw (escaped) text; ``[]`` when the field is absent or empty."""
        fields = self._fields or self._split()
        if field < 1 or field >= len(fields):
            return []
        value = fields[field]
        if not value:
            return []
        rep = self._delimiters.repetition
        if (self.name == "MSH" and field <= 2) or not rep:
            return [value]
        return value.split(rep)

    def get_rep(self, field: int, rep: int = 1, component: int = 0, sub: int = 0) -> str:
        """Field ``field``, repetition ``rep``, component and subcomponent (1-based; 0 = whole), unescaped."""
        if field < 1 or rep < 1 or component < 0 or sub < 0:
            raise ValueError("field and repetition are 1-based; component and subcomponent are 0 or 1-based")
        fields = self._fields or self._split()
        if field >= len(fields):
            return ""
        value = fields[field]
        if not value:
            return ""
        if field < 3 and self.name == "MSH":
            # MSH-1 and MSH-2 are the delimiters themselves: never split or unescape them.
            return value if rep == 1 and component <= 1 and sub <= 1 else ""
        d = self._delimiters
        sep = d.repetition
        if sep and sep in value:
            parts = value.split(sep)
            if rep > len(parts):
                return ""
            value = parts[rep - 1]
        elif rep > 1:
            return ""
        if component:
            sep = d.component
            if sep in value:
                parts = value.split(sep)
                if component > len(parts):
                    return ""
                value = parts[component - 1]
            elif component > 1:
                return ""
            if sub:
                sep = d.subcomponent
                if sep and sep in value:
                    parts = value.split(sep)
                    if sub > len(parts):
                        return ""
                    value = parts[sub - 1]
                elif sub > 1:
                    return ""
        sep = d.escape
        if sep and sep in value:
            return unescape(value, d, self._encoding)
        return value

    def get(self, path: str) -> str:
        """``"8"``, ``"3[1].1"``, ``"5.1.2"`` or the prefixed form ``"OBX-8"``; ``""`` when absent."""
        name, field, rep, component, sub = parse_path(path)
        if name is not None and name != self.name:
            raise ValueError(f"path {path!r} names segment {name}, not {self.name}")
        return self.get_rep(field, rep, component, sub)


class Message:
    """One decoded HL7 v2 message. Build it with :func:`parse`.

    Segment texts are split eagerly; :class:`Segment` objects are made only for the
    segments someone asks for, because building one per segment would cost more than
    the whole split on a typical ORU.
    """

    __slots__ = ("_all", "_first", "_made", "_texts", "delimiters", "encoding", "raw")

    def __init__(self, raw: bytes, texts: list[str], delimiters: Delimiters, encoding: str) -> None:
        self.raw = raw
        self.delimiters = delimiters
        self.encoding = encoding
        self._texts = texts
        self._made: list[Segment | None] = [None] * len(texts)
        self._first: dict[str, int] | None = None
        self._all: list[Segment] | None = None

    def __repr__(self) -> str:
        # Identifiers only (no patient data): safe for logs and tracebacks.
        return f"<Message {self.message_code}^{self.trigger} control_id={self.control_id!r} v{self.version}>"

    def _at(self, index: int) -> Segment:
        made = self._made[index]
        if made is None:
            made = self._made[index] = Segment(self._texts[index], self.delimiters, self.encoding)
        return made

    def _first_index(self) -> dict[str, int]:
        # Reversed, so that the first occurrence of each id is the one that stays.
        last = len(self._texts) - 1
        first = {text[:3]: last - i for i, text in enumerate(reversed(self._texts))}
        self._first = first
        return first

    @property
    def segments(self) -> list[Segment]:
        """Every segment, in message order."""
        if self._all is None:
            self._all = [self._at(i) for i in range(len(self._texts))]
        return self._all

    def segments_named(self, name: str) -> list[Segment]:
        """Every segment with this id, in message order."""
        made = self._made
        return [made[i] or self._at(i) for i, text in enumerate(self._texts) if text[:3] == name]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th (1-based) segment with this id, or None."""
        if occurrence == 1:
            index = (self._first or self._first_index()).get(name)
            return None if index is None else self._at(index)
        found = [i for i, text in enumerate(self._texts) if text[:3] == name]
        if occurrence < 1 or occurrence > len(found):
            return None
        return self._at(found[occurrence - 1])

    def get(self, path: str) -> str:
        """``"PID-3[1].1"``, ``"OBX-5"``, ``"MSH-9.2"``: first segment of that id; ``""`` when absent."""
        name, field, rep, component, sub = parse_path(path)
        if name is None:
            raise ValueError(f"message paths need a segment id, e.g. 'PID-3': {path!r}")
        index = (self._first or self._first_index()).get(name)
        if index is None:
            return ""
        return (self._made[index] or self._at(index)).get_rep(field, rep, component, sub)

    @property
    def _msh(self) -> Segment:
        return self._made[0] or self._at(0)

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self._msh.get_rep(10)

    @property
    def message_code(self) -> str:
        """MSH-9.1, e.g. ``ADT``."""
        return self._msh.get_rep(9, 1, 1)

    @property
    def trigger(self) -> str:
        """MSH-9.2, e.g. ``A01``."""
        return self._msh.get_rep(9, 1, 2)

    @property
    def structure(self) -> str:
        """MSH-9.3, e.g. ``ADT_A01`` (often absent before v2.3.1)."""
        return self._msh.get_rep(9, 1, 3)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``2.5.1``."""
        return self._msh.get_rep(12, 1, 1)

    @property
    def processing_id(self) -> str:
        """MSH-11.1 (P, T or D)."""
        return self._msh.get_rep(11, 1, 1)

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return self._msh.get_rep(3, 1, 1)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1."""
        return self._msh.get_rep(4, 1, 1)

    @property
    def receiving_application(self) -> str:
        """MSH-5.1."""
        return self._msh.get_rep(5, 1, 1)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1."""
        return self._msh.get_rep(6, 1, 1)

    @property
    def accept_ack_type(self) -> str:
        """MSH-15 (table 0155: AL, NE, ER, SU)."""
        return self._msh.get_rep(15)

    @property
    def application_ack_type(self) -> str:
        """MSH-16 (table 0155: AL, NE, ER, SU)."""
        return self._msh.get_rep(16)

    @property
    def declared_charset(self) -> str:
        """MSH-18, first repetition (later repetitions name the alternates switched to by escapes)."""
        return self._msh.get_rep(18).strip()

    @property
    def enhanced_mode(self) -> bool:
        """True when MSH-15 or MSH-16 is valued: the sender expects enhanced-mode ACKs (REFERENCE.md §1.3)."""
        return bool(self.accept_ack_type.strip() or self.application_ack_type.strip())


# --- escapes -------------------------------------------------------------------------------------


def _expand(seq: str, d: Delimiters, encoding: str) -> str | None:
    """The text an escape sequence stands for, or None to keep it verbatim (HL7 v2.x §2.7)."""
    if len(seq) == 1:
        if seq in "HN":
            # Highlighting on/off: presentation only.
            return ""
        value = {
            "F": d.field,
            "S": d.component,
            "T": d.subcomponent,
            "R": d.repetition,
            "E": d.escape,
            "P": d.truncation,
        }.get(seq)
        # An escape for a delimiter this message does not have stays as sent.
        return value or None
    head = seq[0]
    if head == "X":
        try:
            return bytes.fromhex(seq[1:]).decode(encoding, errors="replace")
        except ValueError:
            return None
    if head in "CM":
        # Character-set switches (ISO 2022 style): the bytes were already decoded
        # with the message codec, so the switch itself carries nothing readable.
        return ""
    if head == ".":
        command = seq[1:3]
        if command in ("br", "sp"):
            return "\n"
        if command == "sk":
            return " "
        if command in ("fi", "nf", "in", "ti", "ce"):
            return ""
    # \Zxx\ is locally defined: its meaning belongs to the sender, so keep it as sent.
    return None


def unescape(text: str, delimiters: Delimiters, encoding: str) -> str:
    """Resolve HL7 escape sequences in one leaf value. Escapes never nest, so a single scan suffices."""
    esc = delimiters.escape
    if not esc or esc not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find(esc, pos)
        if start < 0:
            break
        end = text.find(esc, start + 1)
        if end < 0:
            break
        out.append(text[pos:start])
        seq = text[start + 1 : end]
        expanded = _expand(seq, delimiters, encoding) if seq else None
        out.append(text[start : end + 1] if expanded is None else expanded)
        pos = end + 1
    out.append(text[pos:])
    return "".join(out)


@lru_cache(maxsize=64)
def _escape_table(delimiters: Delimiters) -> dict[int, str]:
    esc = delimiters.escape
    table: dict[int, str] = {}
    pairs = (
        (delimiters.escape, "E"),
        (delimiters.field, "F"),
        (delimiters.component, "S"),
        (delimiters.repetition, "R"),
        (delimiters.subcomponent, "T"),
        (delimiters.truncation or "", "P"),
    )
    for char, code in pairs:
        if char:
            table[ord(char)] = f"{esc}{code}{esc}" if esc else " "
    # CR ends a segment and LF is read as one by sloppy receivers: never let either through raw.
    table[ord("\r")] = f"{esc}X0D{esc}" if esc else " "
    table[ord("\n")] = f"{esc}X0A{esc}" if esc else " "
    return table


def escape(text: str, delimiters: Delimiters) -> str:
    """Escape ``text`` for use as one leaf value (ST) with these delimiters.

    Without an escape character (some pre-v2.3 senders omit it) delimiters cannot
    be represented, so they become spaces rather than corrupting the structure.
    """
    return text.translate(_escape_table(delimiters))


# --- decoding --------------------------------------------------------------------------------------

# HL7 table 0211, keyed without spaces or underscores ("ISO IR100" == "ISO_IR 100").
_TABLE_0211: dict[str, str] = {
    "ASCII": "ascii",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16)},
    "ISOIR6": "ascii",
    "ISOIR100": "iso8859-1",
    "ISOIR101": "iso8859-2",
    "ISOIR109": "iso8859-3",
    "ISOIR110": "iso8859-4",
    "ISOIR144": "iso8859-5",
    "ISOIR127": "iso8859-6",
    "ISOIR126": "iso8859-7",
    "ISOIR138": "iso8859-8",
    "ISOIR148": "iso8859-9",
    "ISOIR192": "utf-8",
    # JIS X 0201 (one byte); Shift JIS is its superset and decodes it unchanged.
    "ISOIR14": "shift_jis",
    "ISOIR87": "iso2022_jp",
    "ISOIR159": "iso2022_jp_1",
    "GB18030-2000": "gb18030",
    "KSX1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODEUTF-8": "utf-8",
    # Bare UNICODE names no encoding form. The MSH that declared it was readable
    # as single-byte text, which rules out UCS-2/UTF-16; UTF-8 is the only fit.
    "UNICODE": "utf-8",
}
# Readable in a table but impossible here: an MSH readable as ASCII cannot be UTF-16/32
# (and v2.8 forbids them), and Python has no CNS 11643 codec.
_UNSUPPORTED_0211 = frozenset({"UNICODEUTF-16", "UNICODEUTF-32", "CNS11643-1992"})
_NON_ER7_CODECS = frozenset({"utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be", "utf-7"})


@lru_cache(maxsize=128)
def _resolve_charset(name: str) -> str:
    """Map an MSH-18 value or an HTTP charset to a Python codec name, or raise ParseError(103)."""
    key = re.sub(r"[\s_]", "", name.upper())
    shown = name[:32]
    if key in _UNSUPPORTED_0211:
        raise ParseError(f"character set {shown!r} cannot be carried in ER7 here", code=103, location=_CHARSET_LOCATION)
    codec = _TABLE_0211.get(key)
    if codec is None:
        # Senders often put IANA names ("UTF-8", "ISO-8859-1") in MSH-18, and an HTTP
        # Content-Type charset is always one: accept any real text codec Python knows.
        try:
            info = codecs.lookup(name.strip())
        except LookupError:
            raise ParseError(f"unknown character set {shown!r}", code=103, location=_CHARSET_LOCATION) from None
        if not getattr(info, "_is_text_encoding", True) or info.name in _NON_ER7_CODECS:
            raise ParseError(f"character set {shown!r} is not usable for ER7", code=103, location=_CHARSET_LOCATION)
        return info.name
    return codecs.lookup(codec).name


def _read_delimiters(body: bytes) -> tuple[Delimiters, int]:
    """Delimiters from MSH-1/MSH-2 of ``body`` (starting with ``MSH``) and the end of the MSH line.

    Every failure here is code 100, like a missing MSH: without usable delimiters
    there is no segment structure to speak of, let alone a field with a data type.
    """
    if len(body) < 4:
        raise ParseError("MSH is too short to hold a field separator", code=100, location=("MSH", 1, 1))
    if chr(body[3]) not in _DELIMITER_CHARS:
        raise ParseError("MSH-1 field separator is not a punctuation character", code=100, location=("MSH", 1, 1))
    line_end = body.find(b"\r")
    lf = body.find(b"\n", 0, line_end if line_end >= 0 else len(body))
    if lf >= 0:
        line_end = lf
    elif line_end < 0:
        line_end = len(body)
    sep2 = body.find(body[3:4], 4, line_end)
    if sep2 < 0:
        raise ParseError(
            "MSH-2 is not terminated by a field separator on the MSH line", code=100, location=("MSH", 1, 2)
        )
    return _delimiters_for(body[3:sep2]), line_end


@lru_cache(maxsize=64)
def _delimiters_for(header: bytes) -> Delimiters:
    """Validate MSH-1 + MSH-2 (``header`` is the separator then the encoding characters)."""
    fs, chars = chr(header[0]), header[1:].decode("latin-1")
    if not chars:
        raise ParseError("MSH-2 encoding characters are missing", code=100, location=("MSH", 1, 2))
    if len(chars) > 5:
        raise ParseError("MSH-2 holds more than five encoding characters", code=100, location=("MSH", 1, 2))
    if any(c not in _DELIMITER_CHARS for c in chars):
        raise ParseError("MSH-2 encoding characters must be punctuation", code=100, location=("MSH", 1, 2))
    if len(set(chars)) != len(chars) or fs in chars:
        raise ParseError("MSH-1/MSH-2 delimiters are not distinct", code=100, location=("MSH", 1, 2))
    padded = chars.ljust(4, "\0")
    return Delimiters(
        field=fs,
        component=padded[0],
        repetition=padded[1].strip("\0"),
        escape=padded[2].strip("\0"),
        subcomponent=padded[3].strip("\0"),
        truncation=chars[4] if len(chars) == 5 else None,
    )


def read_delimiters(data: bytes) -> Delimiters:
    """The delimiters declared by the MSH at the start of ``data``; ParseError when there are none usable."""
    body = data[3:] if data.startswith(_BOM) else data
    if not body.startswith(b"MSH"):
        raise ParseError("message does not start with an MSH segment", code=100, location=("MSH", 1, 1))
    return _read_delimiters(body)[0]


def _decode(body: bytes, declared: str, charset: str | None, fallback: str) -> tuple[str, str]:
    """Decode with the override, else MSH-18, else UTF-8 then ``fallback``. Returns (text, codec)."""
    name = charset.strip() if charset else declared
    if name:
        codec = _resolve_charset(name)
        try:
            return body.decode(codec), codec
        except UnicodeDecodeError:
            raise ParseError(f"bytes are not valid {codec} as declared", code=102, location=_CHARSET_LOCATION) from None
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    codec = _resolve_charset(fallback)
    try:
        return body.decode(codec), codec
    except UnicodeDecodeError:
        raise ParseError(f"bytes are neither UTF-8 nor {codec}", code=102, location=_CHARSET_LOCATION) from None


def _normalise(text: str, fs: str) -> str:
    """Turn CR, LF and CRLF into CR where they end a segment, and leave them alone elsewhere.

    A line break ends a segment only when a segment id and the field separator (or
    another MSH, or the end of the data) follow: NTE and FT text legitimately carry
    LF (REFERENCE.md §1.5), and splitting there would invent segments.
    """
    size = len(text)

    def boundary(match: re.Match[str]) -> str:
        end = match.end()
        if end == size:
            return "\r"
        head = text[end : end + 4]
        if head.startswith("MSH") or (
            len(head) == 4 and head[3] == fs and all(c in _SEGMENT_ID_CHARS for c in head[:3])
        ):
            return "\r"
        return match.group(0)

    return _LINE_BREAK_RUN.sub(boundary, text)


def _segment_texts(text: str, fs: str) -> list[str]:
    if "\n" in text:
        text = _normalise(text, fs)
    texts = text.split("\r")
    if " \r" in text or "\t\r" in text or text[-1:].isspace():
        # Rare: blank lines made of spaces. Checked by substring first because a
        # per-segment isspace() costs as much as the split itself.
        return [t for t in texts if t and not t.isspace()]
    return list(filter(None, texts))


def parse(data: bytes, *, charset: str | None = None, fallback: str = "iso-8859-1") -> Message:
    """Read one message. ``charset`` (e.g. from an HTTP Content-Type) overrides MSH-18.

    Raises :class:`ParseError` and nothing else, whatever the bytes.
    """
    try:
        return _parse(data, charset, fallback)
    except ParseError:
        raise
    except Exception as exc:  # the fuzz boundary: any slip in here must still become a NAK
        raise ParseError(f"unreadable HL7 ({type(exc).__name__})", code=100, location=("MSH", 1, 1)) from exc


def _parse(data: bytes, charset: str | None, fallback: str) -> Message:
    body = data[3:] if data.startswith(_BOM) else data
    if not body.startswith(b"MSH"):
        body = body.lstrip(_LEADING_JUNK)
        if not body.startswith(b"MSH"):
            raise ParseError("message does not start with an MSH segment", code=100, location=("MSH", 1, 1))
    delimiters, line_end = _read_delimiters(body)
    # MSH-18 sits inside the bytes it describes: read it from the raw MSH line (the
    # delimiters are ASCII, and latin-1 maps every byte) before choosing a codec.
    declared = ""
    msh_line = body[:line_end]
    fs = body[3:4]
    if msh_line.count(fs) >= 17:
        declared = msh_line.split(fs)[17].decode("latin-1")
        if delimiters.repetition:
            declared = declared.split(delimiters.repetition, 1)[0]
        declared = declared.strip()
    text, codec = _decode(body, declared, charset, fallback)
    return Message(data, _segment_texts(text, delimiters.field), delimiters, codec)


def split_messages(data: bytes) -> list[bytes]:
    """Split a file or stream into single messages, each with CR-terminated segments.

    Batch envelopes (FHS/BHS/BTS/FTS) are dropped and bare concatenations are cut
    at each MSH. Input without any MSH is returned whole, so the caller NAKs it.
    """
    if data.startswith(_BOM):
        data = data[3:]
    if not data.strip():
        return []
    # latin-1 maps bytes to chars one to one, so the split is byte-exact for any codec
    # whose multi-byte sequences never contain CR or LF (all that _TABLE_0211 allows).
    text = data.decode("latin-1")
    found = _MSH_AT_LINE_START.search(text)
    start = found.start(1) if found else text.find("MSH")
    if start < 0:
        return [data]
    text = text[start:]
    messages: list[list[str]] = []
    current: list[str] = []
    for seg in _segment_texts(text, text[3:4]):
        head = seg[:3]
        if head in _BATCH_SEGMENTS:
            if current:
                messages.append(current)
                current = []
            continue
        if head == "MSH":
            if current:
                messages.append(current)
            current = [seg]
        elif current:
            current.append(seg)
        # A segment outside any message (after a batch trailer, before the next MSH)
        # belongs to no message that could be ACKed; it is dropped.
    if current:
        messages.append(current)
    return [("\r".join(segs) + "\r").encode("latin-1") for segs in messages]
