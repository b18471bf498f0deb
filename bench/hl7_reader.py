"""Benchmark: the lazy ER7 reader against python-hl7's full parse and a raw split floor.

For one ADT and one ORU from the shared corpus (synthetic stand-ins when the corpus
is absent) it prints messages per second for:

* ``hl7.parse``: python-hl7 parses the whole message, then the fields the mappings
  read are turned into strings. This is the baseline (1.00x) of the same run.
* ``lazy parse``: :func:`bridge.hl7.reader.parse` plus the same fields
  (MSH-9, MSH-10, PID-3, PID-5, PV1-3, and OBX-5/8/11 of every OBX).
* ``lazy parse + MSH only``: what the ACK and the duplicate check read (MSH-3, 4, 9, 10).
* ``bytes.split``: ``raw.split(b"|")``, the floor no reader can beat.

Each figure is the median of ``REPEATS`` timed batches, each batch sized to last
about ``BATCH_SECONDS``. Nothing is asserted; the whole run takes a few seconds.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import hl7

from bridge.hl7.reader import parse, split_messages

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "hl7v2"
SAMPLES = (("ADT", "hapi-hl7v2/ADT_A01.txt"), ("ORU", "mirth-connect/donkey/small.hl7"))
REPEATS = 7
BATCH_SECONDS = 0.12

_SYNTHETIC_MSH = "MSH|^~\\&|LAB|HOSP|BRIDGE|HOSP|20240102030405||{type}|BENCH-1|P|2.5.1\r"
_SYNTHETIC_BODY = {
    "ADT": "EVN|A01|20240102030405\r"
    "PID|1||MRN1^^^HOSP^MR~NHS9^^^NHS^NH||TEST^PATIENT^Q||19800101|F|||1 MAIN ST^^TOWN^ST^00000\r"
    "PV1|1|I|4E^136^B^HOSP||||1234^ATTENDING^A|||MED||||1|||1234^ATTENDING^A|IP|V1|||||||||||||||||||||||||"
    "20240102030405\r",
    "ORU": "PID|1||MRN1^^^HOSP^MR||TEST^PATIENT^Q||19800101|F\r"
    "PV1|1|I|4E^136^B^HOSP\r"
    "ORC|RE|ORD1|FIL1\r"
    "OBR|1|ORD1|FIL1|CHEM7^Chemistry panel^L|||20240102030000\r"
    + "".join(f"OBX|{n}|NM|{n}^Analyte {n}^L||{n}.5|mmol/L|1-10|{'HH' if n == 3 else 'N'}|||F\r" for n in range(1, 15)),
}


def _sample(kind: str, relative: str) -> tuple[bytes, str]:
    path = CORPUS / relative
    if path.is_file():
        return split_messages(path.read_bytes())[0], relative
    text = _SYNTHETIC_MSH.format(type="ADT^A01^ADT_A01" if kind == "ADT" else "ORU^R01^ORU_R01")
    return (text + _SYNTHETIC_BODY[kind]).encode(), "synthetic (corpus absent)"


def _lazy(raw: bytes) -> list[str]:
    message = parse(raw)
    touched = [message.get("MSH-9"), message.control_id, message.get("PID-3")]
    touched += [message.get("PID-5"), message.get("PV1-3")]
    for obx in message.segments_named("OBX"):
        touched += [obx.get_rep(5), obx.get_rep(8), obx.get_rep(11)]
    return touched


def _lazy_msh_only(raw: bytes) -> list[str]:
    """What the ACK and duplicate check need before a mapping runs."""
    message = parse(raw)
    return [message.control_id, message.trigger, message.sending_application, message.sending_facility]


def _python_hl7(raw: bytes) -> list[str]:
    message = hl7.parse(raw, encoding="utf-8")
    segment_ids = {str(segment[0]) for segment in message}
    msh, pid, pv1 = message.segment("MSH"), message.segment("PID"), message.segment("PV1")
    touched = [str(msh(9)), str(msh(10)), str(pid(3)), str(pid(5)), str(pv1(3))]
    # python-hl7 raises KeyError for an absent segment type; an ADT simply has no OBX.
    for obx in message.segments("OBX") if "OBX" in segment_ids else ():
        touched += [str(obx(5)), str(obx(8)), str(obx(11))]
    return touched


def _split_floor(raw: bytes) -> list[bytes]:
    return raw.split(b"|")


def _per_message_seconds(work: Callable[[bytes], object], raw: bytes) -> float:
    """Median seconds per call over REPEATS batches, each batch calibrated to ~BATCH_SECONDS."""
    count, elapsed = 1, 0.0
    while elapsed < BATCH_SECONDS / 4:
        count *= 4
        start = time.perf_counter()
        for _ in range(count):
            work(raw)
        elapsed = time.perf_counter() - start
    count = max(1, int(count * BATCH_SECONDS / elapsed))
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(count):
            work(raw)
        samples.append((time.perf_counter() - start) / count)
    return statistics.median(samples)


def run() -> None:
    """Measure and print; the baseline is python-hl7 measured in this same run."""
    contenders: tuple[tuple[str, Callable[[bytes], object]], ...] = (
        ("hl7.parse + fields", _python_hl7),
        ("lazy parse + fields", _lazy),
        ("lazy parse + MSH only", _lazy_msh_only),
        ('bytes.split(b"|")', _split_floor),
    )
    python = platform.python_version()
    print(f"hl7_reader: messages/s on one core, median of {REPEATS} batches (Python {python})")
    for kind, relative in SAMPLES:
        raw, source = _sample(kind, relative)
        # Both readers must agree on what they extract before their speed means anything.
        assert len(_lazy(raw)) == len(_python_hl7(raw))
        segments = raw.count(b"\r")
        print(f"\n{kind}  {source}  ({segments} segments, {len(raw)} bytes)")
        baseline = 0.0
        for label, work in contenders:
            seconds = _per_message_seconds(work, raw)
            baseline = baseline or seconds
            print(f"  {label:<22} {1 / seconds:>12,.0f}/s {seconds * 1e6:>10.1f} µs {baseline / seconds:>9.2f}x")


if __name__ == "__main__":
    run()
