"""The message mix: each send gets a fresh control ID, MRN and visit number, and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.mix import CORPUS, load_workloads, make_template

ADT = (
    b"MSH|^~\\&|SEND|FAC|RECV|FAC|20260101120000||ADT^A01^ADT_A01|ORIG1|P|2.5.1\r"
    b"PID|1||M1^^^HOSP^MR~X9^^^NHS^NH||Testpatient^Alpha\r"
    b"PV1|1|I|ICU^1^1||||||||||||||||V1^^^HOSP\r"
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            ADT,
            b"MSH|^~\\&|SEND|FAC|RECV|FAC|20260101120000||ADT^A01^ADT_A01|T42|P|2.5.1\r"
            b"PID|1||PT42^^^HOSP^MR~X9^^^NHS^NH||Testpatient^Alpha\r"
            b"PV1|1|I|ICU^1^1||||||||||||||||VT42^^^HOSP\r",
        ),
        # No PID-3 and no PV1-19: only MSH-10 changes.
        (
            b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|ORIG|P|2.3\rPID|1\rOBX|1|NM|K||6.9\r",
            b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|T42|P|2.3\rPID|1\rOBX|1|NM|K||6.9\r",
        ),
    ],
)
def test_render_replaces_control_id_mrn_and_visit_only(raw: bytes, expected: bytes) -> None:
    template = make_template(raw, "test")
    assert template is not None
    assert template.render(b"T42") == expected
    assert template.frame(b"T42") == b"\x0b" + expected + b"\x1c\r"


def test_a_message_without_msh_10_is_not_a_template() -> None:
    assert make_template(b"MSH|^~\\&|A|B\r", "test") is None


def test_synthetic_workloads_stand_in_without_the_corpus(tmp_path: Path) -> None:
    workloads = load_workloads(tmp_path / "absent")
    assert {w.source for w in workloads.values()} == {"synthetic (corpus absent)"}
    assert all(t.kind == "ORU" and t.obx >= 5 for t in workloads["oru"].templates)
    stream = workloads["mix"].frames("Z")
    assert [next(stream)[0] for _ in range(3)] == [b"Z00000000", b"Z00000001", b"Z00000002"]


def test_corpus_workloads_are_adt_heavy_with_many_obx() -> None:
    if not CORPUS.is_dir():
        pytest.skip("shared corpus not present beside the repository")
    workloads = load_workloads()
    assert workloads["adt"].source == "corpus"
    kinds = [t.kind for t in workloads["mix"].templates[:10]]
    assert kinds == ["ADT"] * 8 + ["ORU"] * 2
    assert min(t.obx for t in workloads["oru"].templates) >= 5
