"""Strict validation with hl7apy (bridge/hl7/validation.py): findings become 0357 codes with locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ValidationError
from bridge.hl7.reader import parse, split_messages
from bridge.hl7.validation import validate_strict

CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "hl7v2"
TABLE_0357 = {100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 205, 206, 207}

MSH = "MSH|^~\\&|SEND|FAC|RECV|RFAC|20240102030405||{type}|C-1|P|{version}\r"
EVN = "EVN|A01|20240102030405\r"
PID = "PID|1||MRN1^^^HOSP^MR||DOE^JANE||19800101|F\r"
PV1 = "PV1|1|I|4E^136^B\r"


def _message(
    *, type_: str = "ADT^A01^ADT_A01", version: str = "2.5", evn: str = EVN, pid: str = PID, pv1: str = PV1
) -> bytes:
    return (MSH.format(type=type_, version=version) + evn + pid + pv1).encode()


def _finding(data: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate_strict(parse(data))
    return caught.value


def test_valid_adt_a01_passes() -> None:
    validate_strict(parse(_message()))


def test_event_sharing_a_structure_is_validated_against_it() -> None:
    # ADT^A04 without MSH-9.3 uses the ADT_A01 structure (table 0354); hl7apy alone would not know.
    validate_strict(parse(_message(type_="ADT^A04")))


@pytest.mark.parametrize("version", ["00", "9.9", "2.8.10000000000000000000000000000000000000000000000000", ""])
def test_unsupported_version_is_code_203(version: str) -> None:
    finding = _finding(_message(version=version))
    assert finding.code == 203
    assert finding.location == ("MSH", 1, 12)


def test_unknown_message_type_is_code_200() -> None:
    finding = _finding(_message(type_="XYZ^Q99"))
    assert finding.code == 200
    assert finding.location == ("MSH", 1, 9)


def test_missing_required_field_is_code_101_at_that_field() -> None:
    finding = _finding(_message(pid="PID|1||||DOE^JANE\r"))
    assert finding.code == 101
    assert finding.location == ("PID", 1, 3)


def test_bad_data_type_is_code_102_at_that_field() -> None:
    finding = _finding(_message(pid="PID|ONE||MRN1^^^HOSP^MR||DOE^JANE\r"))
    assert finding.code == 102
    assert finding.location == ("PID", 1, 1)
    assert "ONE" not in str(finding)


def test_value_too_long_is_code_104() -> None:
    finding = _finding(_message(pv1="PV1|1|I|" + "W" * 40 + "\r"))
    assert finding.code == 104
    assert finding.location == ("PV1", 1, 3)


def test_missing_required_segment_is_code_100() -> None:
    finding = _finding(_message(pv1=""))
    assert finding.code == 100
    assert finding.location == ("PV1", 1, 0)


def test_finding_names_the_segment_occurrence() -> None:
    data = _message() + b"OBX|1|NM|GLU||5.2||||||F\rOBX|ONE|NM|K||7.1||||||F\r"
    finding = _finding(data)
    assert finding.code == 102
    assert finding.location == ("OBX", 2, 1)


def test_unknown_segment_is_code_100() -> None:
    finding = _finding(_message() + b"QQQ|1\r")
    assert finding.code == 100
    assert finding.location == ("QQQ", 1, 0)


@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared/corpus is not present")
@pytest.mark.parametrize("name", ["hapi-hl7v2/adt_a03.txt", "nhapi/adt_a03.txt", "nhapi/omd_o03.txt"])
def test_corpus_v2_5_messages_pass_or_map_to_table_0357(name: str) -> None:
    (raw,) = split_messages((CORPUS / name).read_bytes())
    message = parse(raw)
    assert message.version == "2.5"
    try:
        validate_strict(message)
    except ValidationError as finding:
        assert finding.code in TABLE_0357
        assert finding.location is None or finding.location[0].isalnum()
