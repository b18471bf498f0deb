"""The message mix every server in a run receives: corpus messages made unique per send.

Messages come from ``../shared/corpus/hl7v2`` (read in place; fuzz inputs skipped)
with CR segment ends, as MLLP carries them. Each send gets a fresh identity so that
no server, ours included, can treat it as a resend:

* MSH-10 (control ID) is new, so the (MSH-3, MSH-4, MSH-10) duplicate check passes;
* PID-3.1 (MRN) and PV1-19.1 (visit number) are new, so each message is a new patient
  and encounter: its events are new facts (not event duplicates) on threads of their own,
  as in a real feed with many encounters.

Three workloads: ``adt`` (every ADT in the corpus), ``oru`` (ORU with at least
:data:`MANY_OBX` OBX segments) and ``mix`` (ADT-heavy: eight ADT to two ORU, interleaved).
When the corpus is absent, synthetic messages with invented names stand in, and
:attr:`Workload.source` says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.hl7 import split_messages

__all__ = ["CORPUS", "MANY_OBX", "Template", "Workload", "load_workloads"]

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "hl7v2"
#: An ORU counts as "many OBX" from this many result lines.
MANY_OBX = 5
#: ADT to ORU in the ``mix`` workload: this many ADT, then this many ORU, repeated.
MIX_PATTERN = (8, 2)

# Slots are marked with NUL-delimited tokens while a template is built; NUL never occurs in ER7.
_SLOT = re.compile(rb"\x00([CPV])\x00")
_SB, _END = b"\x0b", b"\x1c\r"


@dataclass(frozen=True, slots=True)
class Template:
    """One message cut at the fields each send replaces: ``chunks`` interleave with ``slots``."""

    kind: str
    #: MSH-9 as sent (e.g. ``ADT^A01^ADT_A01``).
    message_type: str
    chunks: tuple[bytes, ...]
    #: ``C`` control ID, ``P`` MRN, ``V`` visit number; ``len(chunks) == len(slots) + 1``.
    slots: tuple[bytes, ...]
    obx: int
    origin: str

    def render(self, token: bytes) -> bytes:
        """The message with every slot filled from ``token`` (MSH-10 = token, MRN = P+token, visit = V+token)."""
        parts = [self.chunks[0]]
        for slot, chunk in zip(self.slots, self.chunks[1:], strict=True):
            parts.append(token if slot == b"C" else slot + token)
            parts.append(chunk)
        return b"".join(parts)

    def frame(self, token: bytes) -> bytes:
        return _SB + self.render(token) + _END


@dataclass(frozen=True, slots=True)
class Workload:
    """A named, deterministic sequence of templates."""

    name: str
    templates: tuple[Template, ...]
    #: ``corpus`` or ``synthetic (corpus absent)``.
    source: str

    def template(self, n: int) -> Template:
        return self.templates[n % len(self.templates)]

    def frames(self, tag: str, start: int = 0) -> Iterator[tuple[bytes, bytes, Template]]:
        """(control ID, framed message, its template) for sends ``start``, ``start + 1``, ...

        Control IDs are ``tag`` + 8 digits, so a tag of up to 12 characters keeps MSH-10 within 20.
        """
        n = start
        while True:
            token = f"{tag}{n:08d}".encode("ascii")
            template = self.template(n)
            yield token, template.frame(token), template
            n += 1

    @property
    def mean_bytes(self) -> float:
        return sum(len(t.render(b"X" * 12)) for t in self.templates) / len(self.templates)


def _mark_first_component(field: bytes, rep: bytes, comp: bytes, marker: bytes) -> bytes:
    """``field`` with the first component of its first repetition replaced by ``marker``."""
    first, rep_sep, others = field.partition(rep) if rep else (field, b"", b"")
    _, comp_sep, rest = first.partition(comp) if comp else (first, b"", b"")
    return marker + comp_sep + rest + rep_sep + others


def make_template(raw: bytes, origin: str) -> Template | None:
    """Cut ``raw`` (one message, CR-terminated segments) at MSH-10, PID-3.1 and PV1-19.1; None if no MSH-10."""
    segments = [s for s in raw.split(b"\r") if s]
    if not segments or not segments[0].startswith(b"MSH") or len(segments[0]) < 8:
        return None
    fs = segments[0][3:4]
    msh = segments[0].split(fs)
    if len(msh) < 12 or b"\x00" in raw:
        return None
    encoding = msh[1]
    comp, rep = encoding[0:1], encoding[1:2]
    msh[9] = b"\x00C\x00"
    out = [fs.join(msh)]
    for segment in segments[1:]:
        fields = segment.split(fs)
        if fields[0] == b"PID" and len(fields) > 3 and fields[3]:
            fields[3] = _mark_first_component(fields[3], rep, comp, b"\x00P\x00")
        elif fields[0] == b"PV1" and len(fields) > 19 and fields[19]:
            fields[19] = _mark_first_component(fields[19], rep, comp, b"\x00V\x00")
        out.append(fs.join(fields))
    marked = b"\r".join(out) + b"\r"
    pieces = _SLOT.split(marked)
    chunks, slots = tuple(pieces[0::2]), tuple(pieces[1::2])
    message_type = msh[8].decode("latin-1")
    kind = message_type[:3]
    obx = sum(1 for s in segments if s.startswith(b"OBX" + fs))
    return Template(kind, message_type, chunks, slots, obx, origin)


def _corpus_templates(root: Path) -> list[Template]:
    found: list[Template] = []
    seen: set[bytes] = set()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "bad-inputs" in path.parts or path.suffix not in (".hl7", ".txt"):
            continue
        data = path.read_bytes()
        if b"MSH" not in data:
            continue
        for raw in split_messages(data):
            if raw in seen:
                continue
            seen.add(raw)
            template = make_template(raw, str(path.relative_to(root)))
            if template is not None and template.kind in ("ADT", "ORU"):
                found.append(template)
    return found


_SYNTHETIC_ADT = (
    "MSH|^~\\&|BENCH|HOSP|EHRBRIDGE|HOSP|20260101120000||ADT^{trigger}^ADT_A01|X|P|2.5.1\r"
    "EVN|{trigger}|20260101120000\r"
    "PID|1||M1^^^HOSP^MR||Testpatient^Alpha||19700101|F|||1 Test Street^^Testtown^ST^00000\r"
    "PV1|1|I|ICU^1^1^HOSP||||1234^Testdoctor^Beta|||MED||||1|||1234^Testdoctor^Beta|IP|V1\r"
)
_SYNTHETIC_ORU = (
    "MSH|^~\\&|LAB|HOSP|EHRBRIDGE|HOSP|20260101120000||ORU^R01^ORU_R01|X|P|2.5.1\r"
    "PID|1||M1^^^HOSP^MR||Testpatient^Gamma||19700101|M\r"
    "PV1|1|I|ICU^1^1^HOSP|||||||||||||||||V1\r"
    "ORC|RE|ORD1|FIL1\r"
    "OBR|1|ORD1|FIL1|CHEM^Chemistry panel^L|||20260101110000||||||||||||||||F\r"
    + "".join(f"OBX|{n}|NM|{n}^Analyte {n}^L||{n}.5|mmol/L|1-10|{'HH' if n == 3 else 'N'}|||F\r" for n in range(1, 21))
)


def _synthetic_templates() -> list[Template]:
    raws = [_SYNTHETIC_ADT.format(trigger=t) for t in ("A01", "A08", "A08", "A03")] + [_SYNTHETIC_ORU]
    made = [make_template(r.encode("ascii"), "synthetic") for r in raws]
    return [t for t in made if t is not None]


def load_workloads(root: Path = CORPUS) -> dict[str, Workload]:
    """The ``adt``, ``oru`` and ``mix`` workloads, from the corpus at ``root`` or synthetic stand-ins."""
    templates = _corpus_templates(root) if root.is_dir() else []
    adt = [t for t in templates if t.kind == "ADT"]
    oru = [t for t in templates if t.kind == "ORU" and t.obx >= MANY_OBX]
    source = "corpus"
    if not adt or not oru:
        synthetic = _synthetic_templates()
        adt = [t for t in synthetic if t.kind == "ADT"]
        oru = [t for t in synthetic if t.kind == "ORU"]
        source = "synthetic (corpus absent)"
    n_adt, n_oru = MIX_PATTERN
    mixed: list[Template] = []
    for block in range(max(-(-len(adt) // n_adt), -(-len(oru) // n_oru))):
        mixed += [adt[(block * n_adt + i) % len(adt)] for i in range(n_adt)]
        mixed += [oru[(block * n_oru + i) % len(oru)] for i in range(n_oru)]
    return {
        "adt": Workload("adt", tuple(adt), source),
        "oru": Workload("oru", tuple(oru), source),
        "mix": Workload("mix", tuple(mixed), source),
    }
